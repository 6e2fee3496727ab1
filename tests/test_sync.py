"""feed.sync: a delta-only stream stitched to REST snapshots, case by case
(Bybit's documented procedure) and against a reference book under random
timings of the snapshot."""

from __future__ import annotations

import random
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from depthwatch.feed.bybit.sync import BybitFullRule
from depthwatch.feed.sync import DeltaSync, SyncState, SyncStep
from depthwatch.records import FULL_DEPTH, BookUpdate, Level, StreamKey

STREAM = StreamKey("spot", "BTCUSDT", FULL_DEPTH)


def delta(u: int, seq: int, bids: list[Level] | None = None, local_us: int = 0) -> BookUpdate:
    return BookUpdate(STREAM, False, bids or [], [], u, seq, 1_700_000_000_000_000, None, local_us)


def snapshot(u: int, seq: int, bids: list[Level] | None = None, local_us: int = 0) -> BookUpdate:
    return BookUpdate(STREAM, True, bids or [], [], u, seq, 1_700_000_000_000_000, None, local_us)


def ids(updates: list[BookUpdate]) -> list[tuple[int, bool]]:
    return [(u.update_id, u.is_snapshot) for u in updates]


def started_sync() -> DeltaSync:
    sync = DeltaSync(BybitFullRule())
    step = sync.on_delta(delta(10, 100))
    assert step.fetch and not step.apply
    return sync


def test_the_first_delta_asks_for_a_snapshot_and_nothing_reaches_the_book_before_it():
    sync = started_sync()
    for u in (11, 12):
        step = sync.on_delta(delta(u, 100 + 5 * (u - 10)))
        assert not step.apply and not step.fetch
    assert sync.state is SyncState.BUFFERING and len(sync.buffer) == 3


def test_a_snapshot_matching_a_buffered_delta_starts_the_book_with_the_deltas_after_it():
    sync = started_sync()
    sync.on_delta(delta(11, 105))
    sync.on_delta(delta(12, 110))
    sync.on_delta(delta(13, 111))
    step = sync.on_snapshot(snapshot(11, 105), sync.generation)
    assert ids(step.apply) == [(11, True), (12, False), (13, False)]
    assert sync.state is SyncState.SYNCED
    assert ids(sync.on_delta(delta(14, 120)).apply) == [(14, False)]


def test_a_snapshot_older_than_the_first_buffered_delta_is_fetched_again():
    sync = started_sync()
    step = sync.on_snapshot(snapshot(9, 99), sync.generation)
    assert step.refetch and not step.apply and sync.misses == 1
    step = sync.on_snapshot(snapshot(10, 100), sync.generation)
    assert ids(step.apply) == [(10, True)]
    assert sync.misses == 0


def test_a_snapshot_newer_than_the_buffer_waits_for_its_own_delta():
    sync = started_sync()
    step = sync.on_snapshot(snapshot(12, 110), sync.generation)
    assert not step.apply and not step.refetch and sync.held is not None
    assert not sync.on_delta(delta(11, 105)).apply  # older than the snapshot: in it already
    step = sync.on_delta(delta(12, 110))
    assert ids(step.apply) == [(12, True)]
    assert ids(sync.on_delta(delta(13, 111)).apply) == [(13, False)]


def test_a_held_snapshot_whose_delta_never_came_is_fetched_again():
    sync = started_sync()
    sync.on_snapshot(snapshot(12, 110), sync.generation)
    step = sync.on_delta(delta(13, 120))  # the delta of u=12 was skipped over
    assert step.refetch and not step.apply


def test_equal_seq_with_another_u_is_fetched_again():
    sync = started_sync()
    sync.on_delta(delta(11, 105))
    step = sync.on_snapshot(snapshot(7, 105), sync.generation)
    assert step.refetch and not step.apply


def test_a_hole_in_the_buffer_restarts_it_and_a_seq_going_down_is_discarded():
    sync = started_sync()
    sync.on_delta(delta(11, 105))
    sync.on_delta(delta(13, 120))  # u=12 lost: the buffer starts over at 13
    assert [d.update_id for d in sync.buffer] == [13]
    sync.on_delta(delta(14, 90))  # seq went down: not a delta of this chain
    assert [d.update_id for d in sync.buffer] == [13]
    # A snapshot before the hole cannot start the book any more.
    assert sync.on_snapshot(snapshot(11, 105), sync.generation).refetch


def test_u_1_restarts_the_sync_and_voids_the_book():
    sync = started_sync()
    sync.on_snapshot(snapshot(10, 100), sync.generation)
    assert sync.state is SyncState.SYNCED
    generation = sync.generation
    step = sync.on_delta(delta(1, 500))
    assert step.restarted and step.fetch and not step.apply
    assert sync.state is SyncState.BUFFERING and sync.generation == generation + 1
    # The old session's snapshot, answered late, is ignored; the new one starts.
    assert not sync.on_snapshot(snapshot(10, 100), generation).apply
    sync.on_delta(delta(2, 510))
    assert ids(sync.on_snapshot(snapshot(1, 500), sync.generation).apply) == [
        (1, True),
        (2, False),
    ]


def test_a_stale_rest_answer_after_a_restart_is_older_by_seq_and_fetched_again():
    """Bybit: after a service restart the REST snapshot may still carry the
    old session's (large) u; its seq is below the new session's."""
    sync = started_sync()
    sync.on_snapshot(snapshot(10, 100), sync.generation)
    sync.on_delta(delta(1, 500))
    assert sync.on_snapshot(snapshot(880, 400), sync.generation).refetch


def test_synced_deltas_pass_through_older_ones_are_ignored_and_gaps_reach_the_book():
    sync = started_sync()
    sync.on_snapshot(snapshot(10, 100), sync.generation)
    assert not sync.on_delta(delta(10, 100)).apply  # a repeat: ignored
    assert ids(sync.on_delta(delta(11, 101)).apply) == [(11, False)]
    # A gap is passed on: the book records it (and the collector starts over).
    assert ids(sync.on_delta(delta(13, 110)).apply) == [(13, False)]


def test_buffered_deltas_take_the_snapshots_receive_time_never_earlier():
    sync = DeltaSync(BybitFullRule())
    sync.on_delta(delta(10, 100, local_us=1_000))
    sync.on_delta(delta(11, 101, local_us=2_000))
    sync.on_delta(delta(12, 102, local_us=3_000))
    sync.on_delta(delta(13, 103, local_us=9_000))
    step = sync.on_snapshot(snapshot(10, 100, local_us=5_000), sync.generation)
    assert [u.local_us for u in step.apply] == [5_000, 5_001, 5_002, 9_000]


def test_a_snapshot_is_never_trusted_before_a_delta_vouches_for_it():
    """Its (u, seq) must be a buffered delta's: a snapshot labelled with the
    next u (Bybit's "equal seq, different u") would otherwise start a book one
    delta behind its label, and the delta it claims would be skipped."""
    sync = started_sync()  # u=10 buffered
    step = sync.on_snapshot(snapshot(11, 100), sync.generation)  # seq of u=10, u of u=11
    assert step.refetch and not step.apply
    sync.on_delta(delta(11, 105))
    step = sync.on_snapshot(snapshot(12, 105), sync.generation)
    assert step.refetch and not step.apply


def test_a_reset_forgets_the_fetch_under_way():
    """An answer to a fetch asked before a reset is ignored, even one that
    would match the new buffer."""
    sync = started_sync()
    generation = sync.generation
    sync.reset()
    assert sync.state is SyncState.IDLE
    assert sync.on_delta(delta(10, 100)).fetch
    assert not sync.on_snapshot(snapshot(10, 100), generation).apply
    assert ids(sync.on_snapshot(snapshot(10, 100), sync.generation).apply) == [(10, True)]


def test_a_new_session_whose_u_1_was_missed_restarts_the_sync():
    """Synced at u=100: deltas of a new session (u from 2, seq above ours)
    are not ignored as old u's until they pass 100 and then applied to the
    old book: the first one voids it and begins a new buffer."""
    sync = started_sync()
    sync.on_snapshot(snapshot(10, 100), sync.generation)
    sync.on_delta(delta(11, 110))
    step = sync.on_delta(delta(2, 5_002))
    assert step.restarted and step.fetch and not step.apply
    assert [d.update_id for d in sync.buffer] == [2]
    assert not sync.on_delta(delta(11, 110)).apply  # a late repeat of the old session: stale


def test_the_snapshot_takes_the_exchange_time_of_the_delta_it_matched():
    """Bybit's REST `ts` may be when the answer was made: stamped so, the
    snapshot would sort after the deltas that follow it."""
    sync = DeltaSync(BybitFullRule())
    first, second = delta(10, 100), delta(11, 101)
    first.exchange_us, second.exchange_us = 1_000_000, 1_200_000
    sync.on_delta(first)
    sync.on_delta(second)
    answer = snapshot(10, 100)
    answer.exchange_us = 1_900_000
    step = sync.on_snapshot(answer, sync.generation)
    assert [u.exchange_us for u in step.apply] == [1_000_000, 1_200_000]


class Truth:
    """A toy exchange: deltas with consecutive u and skipping seq, the book
    after each, and snapshots of any past state, for the property test."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.book: dict[Decimal, str] = {}
        self.states: list[tuple[int, int, dict[Decimal, str]]] = []
        self.u, self.seq = rng.randint(1000, 5000), rng.randint(10**6, 10**7)
        self.states.append((self.u, self.seq, dict(self.book)))

    def step(self) -> BookUpdate:
        self.u += 1
        self.seq += self.rng.randint(1, 9)
        changes: list[Level] = []
        for _ in range(self.rng.randint(1, 4)):
            price = Decimal(self.rng.randint(1, 40))
            size = "0" if price in self.book and self.rng.random() < 0.3 else str(self.u)
            changes.append([str(price), size])
            if size == "0":
                self.book.pop(price, None)
            else:
                self.book[price] = size
        self.states.append((self.u, self.seq, dict(self.book)))
        return delta(self.u, self.seq, changes)

    def snapshot_of(self, index: int) -> BookUpdate:
        u, seq, book = self.states[index]
        levels = [[str(p), s] for p, s in sorted(book.items(), reverse=True)]
        return snapshot(u, seq, levels)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), lag=st.integers(-6, 3), drops=st.integers(0, 2))
def test_under_any_snapshot_timing_what_reaches_the_book_is_the_truth(seed, lag, drops):
    """Deltas arrive; whenever the sync wants one, a snapshot comes of the
    state `lag` deltas from the newest one received (older, the same, or not
    yet pushed); some deltas are lost on the way. Whatever the sync releases,
    applied to a plain dict, is the exchange's book after each delta, and the
    book is running on the last delta at the end."""
    rng = random.Random(seed)
    truth = Truth(rng)
    history = rng.randint(0, 5)  # deltas before we subscribe
    deltas = [truth.step() for _ in range(history + 30)][history:]
    sync = DeltaSync(BybitFullRule())
    book: dict[Decimal, str] = {}
    applied: list[int] = []
    lost = set(rng.sample(range(3, 12), drops))

    def follow(step: SyncStep) -> bool:
        """What the collector does: apply, and start over on a gap (the book's
        check); True when a snapshot is wanted."""
        wanted = step.fetch or step.refetch
        for update in step.apply:
            if not update.is_snapshot and update.update_id != applied[-1] + 1:
                sync.reset()
                return follow(sync.on_delta(update))
            if update.is_snapshot:
                book.clear()
            for price, size in update.bids:
                if size == "0":
                    book.pop(Decimal(price), None)
                else:
                    book[Decimal(price)] = size
            state = next(s for s in truth.states if s[0] == update.update_id)
            assert book == state[2], f"book differs after u={update.update_id}"
            applied.append(update.update_id)
        return wanted

    wants_snapshot = False
    for i, update in enumerate(deltas):
        if i in lost:
            continue
        wants_snapshot = follow(sync.on_delta(update)) or wants_snapshot
        if wants_snapshot and sync.state is SyncState.BUFFERING:
            newest = history + i + 1  # index of this delta's state in truth.states
            index = min(len(truth.states) - 1, max(0, newest + lag))
            wants_snapshot = follow(sync.on_snapshot(truth.snapshot_of(index), sync.generation))
    assert sync.state is SyncState.SYNCED
    assert applied[-1] == deltas[-1].update_id
