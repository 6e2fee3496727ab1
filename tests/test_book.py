"""The book: property tests against a naive reference, and the continuity rules."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from depthwatch.book import OrderBook, Outcome, StreamBook
from depthwatch.records import (
    BookCheckpoint,
    BookUpdate,
    DepthSnapshot,
    FeedEvent,
    FeedEventKind,
    Quote,
    StreamKey,
)

STREAM = StreamKey("linear", "BTCUSDT", 50)


class Sink:
    def __init__(self) -> None:
        self.updates: list[BookUpdate] = []
        self.quotes: list[Quote] = []
        self.snapshots: list[DepthSnapshot] = []
        self.events: list[FeedEvent] = []
        self.checkpoints: list[BookCheckpoint] = []

    def add_book_update(self, update: BookUpdate) -> None:
        self.updates.append(update)

    def add_quote(self, quote: Quote) -> None:
        self.quotes.append(quote)

    def add_depth_snapshot(self, snapshot: DepthSnapshot) -> None:
        self.snapshots.append(snapshot)

    def add_checkpoint(self, checkpoint: BookCheckpoint) -> None:
        self.checkpoints.append(checkpoint)

    def add_feed_event(self, event: FeedEvent) -> None:
        self.events.append(event)


def reference_apply(book: dict[Decimal, str], levels: list[list[str]]) -> None:
    """The obviously-correct book: a dict keyed by exact Decimal prices."""
    for price, size in levels:
        if Decimal(size) == 0:
            book.pop(Decimal(price), None)
        else:
            book[Decimal(price)] = size


def reference_sides(bids: dict, asks: dict) -> tuple[list, list]:
    return (
        [[str(p), bids[p]] for p in sorted(bids, reverse=True)],
        [[str(p), asks[p]] for p in sorted(asks)],
    )


def canonical(levels: list[list[str]]) -> list[tuple[Decimal, str]]:
    return [(Decimal(p), s) for p, s in levels]


# Prices on a 0.01 tick, some sizes zero (deletes), sizes as decimal strings.
prices = st.integers(min_value=1, max_value=400).map(lambda t: f"{Decimal(t) / 100 + 100:.2f}")
sizes = st.one_of(
    st.just("0"),
    st.integers(min_value=1, max_value=10_000).map(lambda n: f"{Decimal(n) / 1000}"),
)
levels = st.lists(st.tuples(prices, sizes).map(list), max_size=30)


@settings(max_examples=300, deadline=None)
@given(snapshot_bids=levels, snapshot_asks=levels, deltas=st.lists(st.tuples(levels, levels)))
def test_order_book_matches_reference(snapshot_bids, snapshot_asks, deltas):
    book = OrderBook()
    ref_bids: dict[Decimal, str] = {}
    ref_asks: dict[Decimal, str] = {}
    book.apply_levels(snapshot_bids, snapshot_asks)
    reference_apply(ref_bids, snapshot_bids)
    reference_apply(ref_asks, snapshot_asks)
    for bids, asks in deltas:
        book.apply_levels(bids, asks)
        reference_apply(ref_bids, bids)
        reference_apply(ref_asks, asks)
        got_bids, got_asks = book.sides()
        want_bids, want_asks = reference_sides(ref_bids, ref_asks)
        assert canonical(got_bids) == canonical(want_bids)
        assert canonical(got_asks) == canonical(want_asks)
        best_bid = max(ref_bids) if ref_bids else None
        best_ask = min(ref_asks) if ref_asks else None
        assert (Decimal(book.best_bid()[0]) if book.best_bid() else None) == best_bid
        assert (Decimal(book.best_ask()[0]) if book.best_ask() else None) == best_ask
        assert book.is_crossed() == (
            best_bid is not None and best_ask is not None and best_bid >= best_ask
        )
        top_bids, top_asks = book.top(5)
        assert canonical(top_bids) == canonical(want_bids[:5])
        assert canonical(top_asks) == canonical(want_asks[:5])


def update(u, bids=(), asks=(), snapshot=False, ts_ms=1_000, depth=50):
    return BookUpdate(
        StreamKey("linear", "BTCUSDT", depth),
        snapshot,
        [list(x) for x in bids],
        [list(x) for x in asks],
        u,
        u * 10,
        ts_ms * 1000,
        ts_ms * 1000 - 500,
        ts_ms * 1000 + 700,
    )


def test_snapshot_then_consecutive_deltas_are_applied_and_logged():
    sink = Sink()
    book = StreamBook(STREAM, sink)
    assert book.apply(update(100, [("10.0", "1")], [("11.0", "2")], snapshot=True)) is (
        Outcome.SNAPSHOT
    )
    assert book.apply(update(101, [("10.5", "3")])) is Outcome.APPLIED
    assert book.apply(update(102, [], [("11.0", "0")])) is Outcome.APPLIED
    assert book.book.sides() == ([["10.5", "3"], ["10.0", "1"]], [])
    assert [u.update_id for u in sink.updates] == [100, 101, 102]


def test_gap_invalidates_until_next_snapshot_and_writes_nothing_built_on_it():
    sink = Sink()
    book = StreamBook(STREAM, sink)
    book.apply(update(1_000, [("10.0", "1")], [("11.0", "2")], snapshot=True))
    book.apply(update(1_001, [("10.1", "1")]))
    assert book.apply(update(1_003, [("10.2", "1")])) is Outcome.GAP
    assert not book.valid
    assert book.apply(update(1_004, [("10.3", "1")])) is Outcome.DROPPED
    assert [e.kind for e in sink.events] == [FeedEventKind.GAP]
    assert "expected u=1002, got u=1003" in sink.events[0].detail
    written = [u.update_id for u in sink.updates]
    assert written == [1_000, 1_001]
    assert book.apply(update(1_010, [("9.0", "1")], [("9.5", "1")], snapshot=True)) is (
        Outcome.SNAPSHOT
    )
    assert book.valid and book.book.sides() == ([["9.0", "1"]], [["9.5", "1"]])
    assert book.apply(update(1_011, [("9.1", "2")])) is Outcome.APPLIED
    # The snapshot that ended the gap is recorded as the recovery.
    assert [e.kind for e in sink.events] == [FeedEventKind.GAP, FeedEventKind.RECOVERED]


def test_recovered_only_after_a_valid_book_was_lost():
    sink = Sink()
    book = StreamBook(STREAM, sink)
    book.apply(update(5, [("10.0", "1")], [("11.0", "2")], snapshot=True))
    book.apply(update(6, [("10.0", "2")]))
    book.apply(update(6, [("10.0", "2")], [("11.0", "2")], snapshot=True))  # a resend
    assert sink.events == []  # first subscription and a valid book's new snapshot
    book.invalidate()  # the connection was lost
    book.apply(update(20, [("10.0", "3")], [("11.0", "2")], snapshot=True))
    assert [e.kind for e in sink.events] == [FeedEventKind.RECOVERED]
    assert sink.events[0].symbol == STREAM.symbol and sink.events[0].depth == STREAM.depth


def test_a_snapshot_that_jumps_u_on_a_valid_book_records_the_updates_missed():
    """A silence probe's unsubscribe and subscribe while the market moves: the
    server sends none of the deltas between, and the book, still valid, hears
    of them only from the snapshot's u. The gap runs from the last message
    applied (when they began to be missed) to the snapshot that recovers it."""
    sink = Sink()
    book = StreamBook(STREAM, sink)
    book.apply(update(100, [("10.0", "1")], [("11.0", "2")], snapshot=True, ts_ms=1_000))
    book.apply(update(101, [("10.1", "1")], ts_ms=1_001))
    jump = update(105, [("10.4", "1")], [("11.0", "2")], snapshot=True, ts_ms=1_009)
    assert book.apply(jump) is Outcome.JUMPED
    assert book.valid and book.book.sides() == ([["10.4", "1"]], [["11.0", "2"]])
    assert book.apply(update(106, [("10.5", "1")], ts_ms=1_010)) is Outcome.APPLIED
    gap, recovered = sink.events
    assert (gap.kind, gap.local_us) == (FeedEventKind.GAP, 1_001_700)  # u=101's arrival
    assert gap.detail == "snapshot u=105 after u=101: 3 updates missed"
    assert (recovered.kind, recovered.local_us) == (FeedEventKind.RECOVERED, jump.local_us)
    assert [u.update_id for u in sink.updates] == [100, 101, 105, 106]  # the snapshot kept


def test_a_snapshot_that_does_not_jump_u_records_nothing():
    """The state after the last delta (a quiet market's probe), or the next one
    (the delta it holds arrived as the snapshot): nothing was missed. Depth 1
    is snapshots only, which Bybit conflates: a jump there misses nothing."""
    sink = Sink()
    book = StreamBook(STREAM, sink)
    book.apply(update(100, [("10.0", "1")], [("11.0", "2")], snapshot=True))
    book.apply(update(101, [("10.1", "1")]))
    assert book.apply(update(101, [("10.1", "1")], [("11.0", "2")], snapshot=True)) is (
        Outcome.SNAPSHOT
    )
    assert book.apply(update(102, [("10.2", "1")], [("11.0", "2")], snapshot=True)) is (
        Outcome.SNAPSHOT
    )
    top = StreamBook(StreamKey("linear", "BTCUSDT", 1), sink)
    for u in (7, 9, 30):
        outcome = top.apply(update(u, [("10.0", "1")], [("11.0", "1")], snapshot=True, depth=1))
        assert outcome is Outcome.SNAPSHOT
    assert sink.events == []


def test_u1_snapshot_is_a_restart_not_a_gap():
    sink = Sink()
    book = StreamBook(STREAM, sink)
    book.apply(update(500, [("10.0", "1")], [("11.0", "1")], snapshot=True))
    book.apply(update(501, [("10.0", "2")]))
    assert book.apply(update(1, [("20.0", "1")], [("21.0", "1")], snapshot=True)) is (
        Outcome.RESTART
    )
    assert book.apply(update(2, [("20.5", "1")])) is Outcome.APPLIED
    assert [e.kind for e in sink.events] == [FeedEventKind.RESTART]
    assert book.book.best_bid() == ["20.5", "1"]


def test_depth1_repeated_snapshots_with_same_u_are_not_gaps():
    sink = Sink()
    book = StreamBook(StreamKey("linear", "BTCUSDT", 1), sink)
    for ts in (1_000, 4_000, 7_000):
        outcome = book.apply(
            update(42, [("10.0", "1")], [("11.0", "1")], snapshot=True, ts_ms=ts, depth=1)
        )
        assert outcome is Outcome.SNAPSHOT
    assert sink.events == []
    assert len(sink.updates) == 3
    assert len(sink.quotes) == 1  # the top of book never changed


def test_a_crossed_book_is_refused_once_per_run_and_recovered_by_a_snapshot():
    sink = Sink()
    book = StreamBook(STREAM, sink)
    book.apply(update(1, [("10.0", "1")], [("11.0", "1")], snapshot=True))
    assert book.apply(update(2, [("11.0", "1")])) is Outcome.REJECTED  # bid == ask
    assert not book.valid
    assert book.apply(update(3, [("11.5", "1")])) is Outcome.DROPPED  # waiting: no event
    crossed = update(4, [("12.0", "1")], [("11.0", "1")], snapshot=True)
    assert book.apply(crossed) is Outcome.DROPPED  # a crossed snapshot is refused too
    assert book.apply(update(5, [("10.0", "1")], [("11.0", "1")], snapshot=True)) is (
        Outcome.SNAPSHOT
    )
    assert book.apply(update(6, [("12.0", "1")])) is Outcome.REJECTED  # crossed again
    anomalies = [e for e in sink.events if e.kind is FeedEventKind.ANOMALY]
    assert len(anomalies) == 2
    assert "u=2" in anomalies[0].detail and "u=6" in anomalies[1].detail
    assert [u.update_id for u in sink.updates] == [1, 5]  # nothing of a crossed book


def test_quotes_only_when_top_of_book_changes():
    sink = Sink()
    book = StreamBook(STREAM, sink)
    book.apply(update(1, [("10.0", "1"), ("9.0", "1")], [("11.0", "1")], snapshot=True))
    book.apply(update(2, [("9.0", "5")]))  # below the top: no quote
    book.apply(update(3, [("10.0", "2")]))  # best bid size changed
    book.apply(update(4, [], [("10.5", "1")]))  # new best ask
    got = [(q.update_id, q.bid_price, q.bid_size, q.ask_price, q.ask_size) for q in sink.quotes]
    assert got == [
        (1, "10.0", "1", "11.0", "1"),
        (3, "10.0", "2", "11.0", "1"),
        (4, "10.0", "2", "10.5", "1"),
    ]


def test_depth_snapshots_are_stamped_at_bucket_ends_with_the_book_before_the_crossing_message():
    sink = Sink()
    book = StreamBook(STREAM, sink, snapshot_interval_us=1_000_000, snapshot_levels=1)
    book.apply(update(1, [("10.0", "1"), ("9.0", "1")], [("11.0", "1")], snapshot=True, ts_ms=500))
    book.apply(update(2, [("10.0", "2")], ts_ms=900))
    book.apply(update(3, [("10.0", "3")], ts_ms=1_200))  # crosses 1.000 s
    book.apply(update(4, [("10.0", "4")], ts_ms=3_700))  # crosses 2.000 and 3.000 s
    stamps = [(s.exchange_us, s.update_id, s.bids) for s in sink.snapshots]
    assert stamps == [
        (1_000_000, 2, [["10.0", "2"]]),
        (3_000_000, 3, [["10.0", "3"]]),
    ]


def test_no_depth_snapshot_from_an_invalid_book():
    sink = Sink()
    book = StreamBook(STREAM, sink, snapshot_interval_us=1_000_000)
    book.apply(update(1, [("10.0", "1")], [("11.0", "1")], snapshot=True, ts_ms=500))
    book.apply(update(5, [("10.0", "2")], ts_ms=1_500))  # gap
    book.apply(update(6, [("10.0", "2")], ts_ms=2_500))  # dropped
    assert sink.snapshots == []


def test_a_book_left_waiting_for_its_snapshot_asks_for_a_resync_again():
    from depthwatch.collector import SNAPSHOT_RETRY_US, Collector
    from depthwatch.config import CollectorConfig

    collector = Collector(CollectorConfig(symbols=("BTCUSDT",)), Sink())  # type: ignore[arg-type]
    t0 = 1_000_000_000

    def at(u, offset_us, snapshot=False):
        upd = update(u, [("10.0", str(u))], [("11.0", "1")], snapshot=snapshot)
        upd.local_us = t0 + offset_us
        return collector.on_book_update(upd)

    assert at(1, 0, snapshot=True) is False
    assert at(3, 1) is True  # the gap: resync
    assert at(4, 2) is False  # dropped while the snapshot is on its way
    assert at(5, SNAPSHOT_RETRY_US - 1) is False
    assert at(6, SNAPSHOT_RETRY_US + 2) is True  # overdue: ask again
    assert at(7, SNAPSHOT_RETRY_US + 3) is False  # and wait another full period
    assert at(8, 2 * SNAPSHOT_RETRY_US + 3) is True
    assert at(20, 2 * SNAPSHOT_RETRY_US + 4, snapshot=True) is False
    assert collector.books[STREAM].dropping_since_us is None
    assert collector.stats.dropped == 5 and collector.stats.gaps == 1


def test_whole_book_checkpoints_are_stamped_at_their_own_boundaries():
    sink = Sink()
    book = StreamBook(
        STREAM,
        sink,
        snapshot_interval_us=1_000_000,
        snapshot_levels=1,
        checkpoint_interval_us=10_000_000,
    )
    book.apply(update(1, [("10.0", "1"), ("9.0", "1")], [("11.0", "1")], snapshot=True, ts_ms=500))
    book.apply(update(2, [("10.0", "2")], ts_ms=9_500))
    book.apply(update(3, [("10.0", "3")], ts_ms=10_100))  # crosses 10 s
    book.apply(update(4, [("8.0", "1")], ts_ms=15_000))
    book.apply(update(5, [("10.0", "5")], ts_ms=31_000))  # crosses 20 s and 30 s
    got = [(c.exchange_us, c.update_id, c.sequence, c.bids, c.asks) for c in sink.checkpoints]
    assert got == [
        (10_000_000, 2, 20, [["10.0", "2"], ["9.0", "1"]], [["11.0", "1"]]),
        (30_000_000, 4, 40, [["10.0", "3"], ["9.0", "1"], ["8.0", "1"]], [["11.0", "1"]]),
    ]
    assert all(len(s.bids) == 1 for s in sink.snapshots)  # depth snapshots stay top-N


def test_a_whole_book_profile_sums_levels_per_bucket_within_its_reach():
    from depthwatch.book import OrderBook, book_profile, bucket_of, profile_step

    assert profile_step(60_000.0) == 10.0  # 1 bp is 6, rounded up to 1-2-5
    assert profile_step(0.02) == 0.000002
    assert bucket_of(0.3, 0.1) == 3 and bucket_of(0.29, 0.1) == 2  # 0.3 / 0.1 is 2.999...
    assert bucket_of(60_000.0, 10.0) == 6_000 and bucket_of(59_999.99, 10.0) == 5_999
    book = OrderBook()
    book.apply_levels(
        [["99.9", "1"], ["99.5", "2"], ["98.1", "4"], ["90", "100"]],  # 90 is beyond 5 %
        [["100.1", "3"], ["100.2", "0.5"], ["104.9", "7"], ["106", "100"]],
    )
    bid_first, bid_sizes, ask_first, ask_sizes = book_profile(book, 1.0, 0.05)
    assert (bid_first, bid_sizes) == (98, [4.0, 3.0])  # [98, 99): 98.1; [99, 100): 99.9 + 99.5
    assert ask_first == 100 and ask_sizes == [3.5, 0.0, 0.0, 0.0, 7.0]
    empty = OrderBook()
    assert book_profile(empty, 1.0) == (0, [], 0, [])
    one_sided = OrderBook()
    one_sided.apply_levels([], [["50", "1"]])
    assert book_profile(one_sided, 1.0) == (0, [], 50, [1.0])


def test_only_a_whole_book_emits_profiles_at_each_interval():
    from depthwatch.records import FULL_DEPTH, BookProfile

    class ProfileSink(Sink):
        def __init__(self) -> None:
            super().__init__()
            self.profiles: list[BookProfile] = []

        def add_book_profile(self, profile: BookProfile) -> None:
            self.profiles.append(profile)

        def add_book_bounds(self, bounds: object) -> None:
            pass

    for depth, expected in ((FULL_DEPTH, 3), (50, 0)):
        sink = ProfileSink()
        stream = StreamKey("spot", "BTCUSDT", depth)
        book = StreamBook(stream, sink, profile_interval_us=2_000_000)
        t0 = 1_700_000_000_000_000
        snap = BookUpdate(stream, True, [["100", "1"]], [["101", "2"]], 1, 1, t0, None, t0)
        book.apply(snap)
        for i in range(1, 8):  # a delta a second: profiles at 2, 4 and 6 s
            t = t0 + i * 1_000_000
            book.apply(BookUpdate(stream, False, [["99", str(i)]], [], 1 + i, 1 + i, t, None, t))
        assert len(sink.profiles) == expected
        if expected:
            assert [p.exchange_us - t0 for p in sink.profiles] == [2_000_000, 4_000_000, 6_000_000]
            first = sink.profiles[0]
            # As the book stood before the delta at 2 s: 99 held the size of the one at 1 s.
            assert first.update_id == 2 and first.step == profile_step_of(100.0)  # the best bid
            assert sum(first.bid_sizes) == 2.0 and sum(first.ask_sizes) == 2.0


def profile_step_of(price: float) -> float:
    from depthwatch.book import profile_step

    return profile_step(price)


def test_whole_books_profile_on_different_seconds_of_the_interval():
    from depthwatch.records import FULL_DEPTH

    offsets = {
        StreamBook(StreamKey("spot", f"S{i:02d}USDT", FULL_DEPTH), Sink())._profile_offset_us
        for i in range(20)
    }
    assert len(offsets) >= 5 and all(o % 1_000_000 == 0 and 0 <= o < 10_000_000 for o in offsets)
