"""Bad input, fuzzed: real Bybit messages mutated into every kind of bad frame.

Pure logic (parser + book + a recording sink), routed the way the connection
and the collector route frames: a frame that does not parse is counted and,
when it names a known stream, that stream's book is invalidated and a resync
asked for; a book that refuses a message or sees a gap asks for a resync.
For every bad frame in stream A's place:

- nothing raises out of the reader, and the frame is counted;
- A's book is invalid and a resync was asked for, at once or at A's next
  message (a frame that is not JSON names no stream: the `u` check finds the loss);
- the sink received nothing derived from the bad frame: A's rows are exactly
  the clean run's rows before it;
- stream B, interleaved, is recorded exactly as in a clean run.

Then one end-to-end run: the real simulator, collector and PostgreSQL, with
bad frames slipped into one stream.
"""

from __future__ import annotations

import asyncio
import json
import time
import zipfile
from decimal import Decimal

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from depthwatch.book import Outcome, StreamBook
from depthwatch.feed.bybit.parse import FeedParser
from depthwatch.feed.messages import MAX_ERROR_CHARS, MalformedMessage
from depthwatch.records import (
    BookUpdate,
    FeedEventKind,
    StreamKey,
)

from .conftest import DATA
from .test_book import Sink

A = StreamKey("linear", "XRPUSDT", 500)
B = StreamKey("linear", "ADAUSDT", 500)


def archive_lines() -> list[bytes]:
    """50 real Bybit messages: a 500-level snapshot and 49 deltas (tests/data/README)."""
    with zipfile.ZipFile(DATA / "xrpusdt-ob500.data.zip") as archive:
        return archive.read(archive.namelist()[0]).splitlines()


A_LINES = archive_lines()
# Stream B: the same real messages under another symbol, a few ms later.
B_LINES = [
    line.replace(b"XRPUSDT", b"ADAUSDT").replace(b'"ts":17330112', b'"ts":17330113')
    for line in A_LINES
]


class Router:
    """Frames -> parser -> books, as FeedConnection._read and Collector route them."""

    def __init__(self, streams: tuple[StreamKey, ...], category: str = "linear") -> None:
        self.parser = FeedParser(category)
        self.sinks = {s: Sink() for s in streams}
        # 1 s depth snapshots and 2 s checkpoints, so the 4.8 s of data emits some.
        self.books = {s: StreamBook(s, self.sinks[s], 1_000_000, 20, 2_000_000) for s in streams}
        self.malformed: list[MalformedMessage] = []
        self.unknown = 0
        self.resyncs: list[StreamKey] = []

    def feed(self, raw: bytes | str, local_us: int) -> None:
        try:
            parsed = self.parser.parse(raw, local_us)
        except MalformedMessage as exc:
            self.malformed.append(exc)
            book = self.books.get(exc.stream) if exc.stream else None
            if book is not None and book.reject(local_us, str(exc)) is Outcome.REJECTED:
                self.resyncs.append(book.stream)
            return
        if not isinstance(parsed, BookUpdate):
            return
        book = self.books.get(parsed.stream)
        if book is None:
            self.unknown += 1
            return
        if book.apply(parsed) in (Outcome.GAP, Outcome.REJECTED):
            self.resyncs.append(parsed.stream)


def run(a_lines: list[bytes | str]) -> Router:
    """A's frames interleaved with B's clean ones."""
    router = Router((A, B))
    for i, (a, b) in enumerate(zip(a_lines, B_LINES, strict=True)):
        router.feed(a, 1_000 + 2 * i)
        router.feed(b, 1_001 + 2 * i)
    return router


CLEAN = run(list(A_LINES))


def rows(sink: Sink) -> tuple:
    """Everything a sink received, comparable."""
    return (
        [(u.update_id, u.is_snapshot, u.bids, u.asks) for u in sink.updates],
        [(q.update_id, q.bid_price, q.bid_size, q.ask_price, q.ask_size) for q in sink.quotes],
        [(s.exchange_us, s.update_id, s.bids, s.asks) for s in sink.snapshots],
        [(c.exchange_us, c.update_id, c.bids, c.asks) for c in sink.checkpoints],
        [(e.kind, e.detail) for e in sink.events],
    )


def test_the_clean_run_records_both_streams_whole():
    for stream in (A, B):
        sink = CLEAN.sinks[stream]
        assert [u.update_id for u in sink.updates] == list(range(20254869, 20254919))
        assert sink.quotes and sink.snapshots and sink.checkpoints and not sink.events
        assert CLEAN.books[stream].valid
    assert CLEAN.resyncs == [] and CLEAN.malformed == []


# ---- mutations: each turns message k of A into a frame that must be refused

BAD_DECIMALS = [
    "", " ", ".", "nan", "NaN", "inf", "-inf", "Infinity", "-1", "-0.5", "1e5", "1E-3",
    "0x10", "1,5", "1_0", "1.2.3", " 1", "1 ", "+1", "\u0663", "\u00b2", "1\x00",
    "9" * 17, "1" + "0" * 40, "0." + "1" * 40,
]  # fmt: skip
NOT_A_STRING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=2),
)
NOT_AN_INT = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)


def _msg(line: bytes) -> dict:
    return orjson.loads(line)


def _book_before(k: int) -> tuple[dict[Decimal, str], dict[Decimal, str]]:
    """A's book after messages 0..k-1 (a plain Decimal dict, independent of book.py)."""
    bids: dict[Decimal, str] = {}
    asks: dict[Decimal, str] = {}
    for line in A_LINES[:k]:
        data = _msg(line)["data"]
        for side, levels in ((bids, data["b"]), (asks, data["a"])):
            for price, size in levels:
                if Decimal(size) == 0:
                    side.pop(Decimal(price), None)
                else:
                    side[Decimal(price)] = size
    return bids, asks


@st.composite
def bad_frame(draw: st.DrawFn, k: int) -> tuple[str, bytes | str]:
    """(kind, frame): message k of A turned into bad input of one kind."""
    line = A_LINES[k]
    msg = _msg(line)
    data = msg["data"]
    kind = draw(
        st.sampled_from(
            [
                "truncated",
                "garbage",
                "missing field",
                "wrong type",
                "bad number",
                "bad level shape",
                "zero price",
                "unknown topic",
                "wrong symbol",
                "id out of range",
                "empty string",
                "crossed",
                "too many levels",
            ]
        )
    )
    if kind == "truncated":
        return kind, line[: draw(st.integers(0, len(line) - 1))]
    if kind == "garbage":
        frame = draw(
            st.one_of(
                st.binary(max_size=40),
                st.sampled_from([b"", b"null", b"[]", b"{}", b"1", b'"x"', b"\xff\xfe", b"NaN"]),
            )
        )
        return kind, frame
    if kind == "missing field":
        path = draw(
            st.sampled_from(
                [("topic",), ("type",), ("ts",), ("data",)]
                + [("data", f) for f in ("s", "b", "a", "u", "seq")]
            )
        )
        target = msg if len(path) == 1 else data
        del target[path[-1]]
    elif kind == "wrong type":
        field_name = draw(st.sampled_from(["u", "seq", "ts", "cts", "b", "a", "data", "topic"]))
        if field_name in ("u", "seq"):
            data[field_name] = draw(NOT_AN_INT)
        elif field_name in ("ts", "cts"):
            msg[field_name] = draw(NOT_AN_INT.filter(lambda v: v is not None))
        elif field_name in ("b", "a"):
            data[field_name] = draw(
                st.one_of(
                    NOT_A_STRING.filter(lambda v: not isinstance(v, list)),
                    st.text(max_size=3),
                    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
                )
            )
        elif field_name == "data":
            msg["data"] = draw(st.one_of(NOT_A_STRING, st.text(max_size=3)))
        else:
            msg["topic"] = draw(NOT_A_STRING.filter(lambda v: v is not None))
    elif kind in ("bad number", "bad level shape", "zero price", "empty string"):
        side = draw(st.sampled_from([s for s in ("b", "a") if data[s]]))
        i = draw(st.integers(0, len(data[side]) - 1))
        level = list(data[side][i])
        if kind == "bad number":
            column = draw(st.integers(0, 1))
            level[column] = draw(st.one_of(st.sampled_from(BAD_DECIMALS), NOT_A_STRING))
        elif kind == "empty string":
            level[draw(st.integers(0, 1))] = ""
        elif kind == "zero price":
            side = "b"  # a zero ask would be refused as crossed: test the price itself
            level = [draw(st.sampled_from(["0", "0.0", "0.0000", ".0", "00"])), "1"]
            i = len(data["b"])
            data["b"].append(level)
        else:
            level = draw(
                st.sampled_from([[level[0]], [*level, "1"], [], level[0], {"p": level[0]}, None, 5])
            )
        if i < len(data[side]):
            data[side][i] = level
    elif kind == "unknown topic":
        msg["topic"] = draw(
            st.sampled_from(
                [
                    "orderbook.500.NOPEUSDT",
                    "orderbook.0500.XRPUSDT",
                    "orderbook.\u0665\u0660\u0660.XRPUSDT",
                    "orderbook.500.XRPUSDT.x",
                    "orderbook..XRPUSDT",
                    "orderbook",
                    "kline.1.XRPUSDT",
                    "publicTrade.XRPUSDT",
                    "tickers.XRPUSDT",
                    "",
                    "orderbook.500." + "X" * 10_000,
                ]
            )
        )
    elif kind == "wrong symbol":
        data["s"] = draw(st.sampled_from(["ADAUSDT", "", "xrpusdt", "XRPUSDT ", None, 1]))
    elif kind == "id out of range":
        name = draw(st.sampled_from(["u", "seq", "ts", "cts"]))
        values = [-1, 2**63, 2**64 - 1, -(2**63)] + ([0] if name != "seq" else [])
        value = draw(st.sampled_from(values))
        (data if name in ("u", "seq") else msg)[name] = value
    elif kind == "crossed":
        bids, asks = _book_before(k + 1)  # as message k leaves it
        if draw(st.booleans()):
            data["b"] = [*data["b"], [str(min(asks)), "1"]]  # bid at the best ask
        else:
            data["a"] = [*data["a"], [str(max(bids)), "1"]]  # ask at the best bid
    elif kind == "too many levels":
        side = draw(st.sampled_from(["b", "a"]))
        data[side] = [["1.0001", "1"]] * (2 * A.depth + 1)
    if kind == "empty string" and draw(st.booleans()):
        target, name = draw(st.sampled_from([(msg, "topic"), (msg, "type"), (data, "s")]))
        target[name] = ""
    # The standard library's JSON writes any integer (orjson stops at 64 bits).
    return kind, json.dumps(msg).encode()


@settings(
    max_examples=400,
    derandomize=True,  # the same 400 examples every run: CI must not be a lottery
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_a_bad_frame_is_counted_resyncs_its_stream_and_writes_nothing(data):
    # Not the snapshot (index 0: see the next test) nor the last message (a
    # frame naming no stream is then found by the next message, which never comes).
    k = data.draw(st.integers(1, len(A_LINES) - 2), label="k")
    kind, frame = data.draw(bad_frame(k), label="frame")
    lines: list[bytes | str] = list(A_LINES)
    lines[k] = frame
    router = run(lines)  # raises nothing

    a_book, a_sink = router.books[A], router.sinks[A]
    # Counted: as malformed, as an unknown stream, or refused by the book.
    refused_events = [e for e in a_sink.events if e.kind is not FeedEventKind.RECOVERED]
    assert router.malformed or router.unknown or refused_events, kind
    for exc in router.malformed:
        assert len(str(exc)) <= MAX_ERROR_CHARS + 40
    # A resynced: invalid, a resync asked for, and an event saying why.
    assert not a_book.valid, kind
    assert router.resyncs.count(A) == 1, kind
    assert {e.kind for e in refused_events} <= {
        FeedEventKind.MALFORMED,
        FeedEventKind.ANOMALY,
        FeedEventKind.GAP,
    }
    assert refused_events, kind
    # Nothing derived from the bad frame: A's rows are the clean run's before it.
    u_k = 20254869 + k
    clean_updates, clean_quotes, clean_snaps, clean_checkpoints, _ = rows(CLEAN.sinks[A])
    got_updates, got_quotes, got_snaps, got_checkpoints, _ = rows(a_sink)
    assert got_updates == clean_updates[:k], kind
    assert got_quotes == [q for q in clean_quotes if q[0] < u_k], kind
    # Snapshots emitted before message k (stamped with the book before it).
    assert got_snaps == [s for s in clean_snaps if s[1] < u_k][: len(got_snaps)]
    assert all(s[1] < u_k for s in got_snaps) and all(c[1] < u_k for c in got_checkpoints)
    assert got_checkpoints == [c for c in clean_checkpoints if c[1] < u_k][: len(got_checkpoints)]
    # B untouched.
    assert rows(router.sinks[B]) == rows(CLEAN.sinks[B]), kind
    assert router.books[B].valid


@pytest.mark.parametrize(
    "frame",
    [
        A_LINES[0][:1000],  # truncated: names no stream
        A_LINES[0].replace(b'"6203"', b'"nan"', 1),
        A_LINES[0].replace(b'"b":[[', b'"b":[["1.9531","1"],[', 1),  # a price twice
        A_LINES[0].replace(b'"b":[[', b'"b":[["0","1"],[', 1),
    ],
    ids=["truncated", "nan", "duplicate price", "zero price"],
)
def test_a_bad_snapshot_leaves_the_book_waiting_and_writes_nothing(frame):
    router = run([frame, *A_LINES[1:]])
    assert not router.books[A].valid
    assert rows(router.sinks[A])[:4] == ([], [], [], [])
    assert rows(router.sinks[B]) == rows(CLEAN.sinks[B])


def test_a_duplicate_price_in_a_delta_is_applied_in_order_as_the_log_replays_it():
    """Not refused: the book, the stored message and any replay of it agree
    (the last entry wins), so no wrong book can be written."""
    msg = _msg(A_LINES[1])
    price = msg["data"]["b"][0][0]
    msg["data"]["b"] += [[price, "7"], [price, "8"]]
    router = Router((A,))
    router.feed(A_LINES[0], 1)
    router.feed(orjson.dumps(msg), 2)
    book = router.books[A]
    assert book.valid and router.resyncs == []
    written = router.sinks[A].updates[1]
    assert written.bids[-2:] == [[price, "7"], [price, "8"]]
    bids, _ = book.book.sides()
    assert [price, "8"] in bids


def test_a_ten_megabyte_frame_of_a_million_levels_is_refused_before_its_levels_are_read():
    """Refused on the count alone (the message names it): the levels are never
    looked at, so the cost is orjson's parse."""
    msg = _msg(A_LINES[1])
    msg["data"]["b"] = [[f"1.{i:06d}", "1"] for i in range(1_000_000)]
    frame = orjson.dumps(msg)
    assert len(frame) > 10_000_000
    router = run(list(A_LINES))
    router.feed(frame, 10**6)
    assert len(router.malformed) == 1
    assert "1000000 levels, more than 1000" in str(router.malformed[0])
    assert router.malformed[0].stream == A and not router.books[A].valid
    assert router.resyncs == [A]
    # One huge string: the error quotes a bounded piece of it.
    msg["data"]["b"] = [["1." + "5" * 10_000_000, "1"]]
    router.feed(orjson.dumps(msg), 10**6 + 1)
    assert len(str(router.malformed[-1])) <= MAX_ERROR_CHARS + 40


DEPTH1 = StreamKey("linear", "BTCUSDT", 1)


def depth1_snapshot(u: int, bid: str, ask: str) -> bytes:
    return orjson.dumps(
        {
            "topic": "orderbook.1.BTCUSDT",
            "type": "snapshot",
            "ts": 1_733_011_200_000 + u,
            "data": {"s": "BTCUSDT", "b": [[bid, "1"]], "a": [[ask, "2"]], "u": u, "seq": u},
            "cts": 1_733_011_200_000 + u,
        }
    )


def test_depth1_streams_are_checked_for_crossed_books_too():
    """Depth 1 sends only snapshots: the crossing check must run on snapshots."""
    router = Router((DEPTH1, B))
    frames = [
        depth1_snapshot(1, "100.0", "100.5"),
        depth1_snapshot(2, "100.5", "100.5"),  # bid == ask: refused, resync
        depth1_snapshot(3, "101.0", "100.5"),  # still crossed: waits quietly
        depth1_snapshot(4, "100.0", "100.5"),  # a good snapshot recovers
        depth1_snapshot(5, "100.1", "100.5"),
    ]
    for i, frame in enumerate(frames):
        router.feed(frame, 1_000 + i)
    sink = router.sinks[DEPTH1]
    assert [u.update_id for u in sink.updates] == [1, 4, 5]
    assert [q.bid_price for q in sink.quotes] == ["100.0", "100.1"]
    kinds = [e.kind for e in sink.events]
    assert kinds == [FeedEventKind.ANOMALY, FeedEventKind.RECOVERED]
    assert "crossed book at u=2" in sink.events[0].detail
    assert router.resyncs == [DEPTH1] and router.books[DEPTH1].valid
    assert rows(router.sinks[B]) == ([], [], [], [], [])


def test_error_messages_name_what_was_wrong():
    parser = FeedParser("linear")
    delta = b'{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1733011200000,"data":'
    cases = {
        b"\xff": "not JSON",
        delta + b'{"s":"BTCUSDT","b":[],"a":[],"u":9223372036854775808,"seq":1}}': "u 9223372",
        b'{"topic":"orderbook.1.BTCUSDT","type":"snapshot","ts":1733011200000,"data":'
        b'{"s":"BTCUSDT","b":[["1","1"],["0.9","1"]],"a":[],"u":1,"seq":1}}': "2 levels, more",
        delta + b'{"s":"BTCUSDT","b":[["12345678901234567","1"]],"a":[],"u":1,"seq":1}}': "bad",
        b'{"topic":"orderbook.050.BTCUSDT","type":"delta"}': "not an orderbook topic",
    }  # fmt: skip
    for raw, reason in cases.items():
        with pytest.raises(MalformedMessage, match=reason) as caught:
            parser.parse(raw, 0)
        named = caught.value.stream
        assert named is None or named.symbol == "BTCUSDT"


def test_invented_topics_do_not_grow_the_parser_without_bound():
    from depthwatch.feed.messages import MAX_CACHED_TOPICS

    parser = FeedParser("linear")
    for i in range(MAX_CACHED_TOPICS + 5):
        parser.stream_of(f"orderbook.50.SYM{i}")
    assert len(parser._streams) <= MAX_CACHED_TOPICS


# ---- end to end: simulator -> collector -> PostgreSQL, bad frames in one stream


def test_bad_frames_in_one_stream_resync_it_and_leave_the_others_exact(database_url):
    from depthwatch.collector import Collector, register_instruments
    from depthwatch.config import CollectorConfig
    from depthwatch.sim import BybitSimulator, SimConfig
    from depthwatch.storage import schema
    from depthwatch.storage.db import make_engine
    from depthwatch.storage.write import BatchWriter, WriterConfig

    from .e2e import assert_export_matches_truth, recorded_sequence

    symbols = ("BTCUSDT", "ETHUSDT")
    bad = StreamKey("linear", "BTCUSDT", 50)
    clean = [StreamKey("linear", "ETHUSDT", 50), StreamKey("linear", "BTCUSDT", 1)]
    bad_topic = "orderbook.50.BTCUSDT"
    sim = BybitSimulator(SimConfig(symbols=symbols, rate=200, deltas=800, seed=21, trades_rate=0))
    engine = make_engine(database_url)
    schema.upgrade(engine)
    writer = BatchWriter(
        engine, WriterConfig(flush_interval_s=0.05, retention_days=0, collector_id="fuzz")
    )
    sent: list[str] = []

    def bad_frame(name: str) -> bytes:
        """A bad frame for the bad stream, made against its latest published state
        (whatever the simulator publishes next comes after it)."""
        latest = sim.latest(bad_topic)
        assert latest is not None
        data: dict = {"s": "BTCUSDT", "b": [], "a": [], "u": latest.u + 1, "seq": latest.seq}
        if name == "nan size":
            data["b"] = [[latest.bids[0][0], "nan"]]
        elif name == "u as text":
            data["u"] = str(latest.u + 1)
        elif name == "negative price":
            data["a"] = [["-5", "1"]]
        elif name == "crossed":
            data["b"] = [[latest.asks[0][0], "1"]]  # a bid at the best ask
        elif name == "a million levels":
            data["b"] = [["1.5", "1"]] * 1_000_000  # about 11 MB
        elif name == "unknown stream":
            data["s"] = "NOPEUSDT"
        msg = {"topic": bad_topic, "type": "delta", "ts": latest.ts_ms, "data": data}
        if name == "unknown stream":
            msg["topic"] = "orderbook.50.NOPEUSDT"
        frame = orjson.dumps(msg)
        return frame[:-7] if name == "truncated" else frame

    names = [
        "truncated",
        "nan size",
        "u as text",
        "negative price",
        "crossed",
        "a million levels",
        "unknown stream",
    ]

    def handled(collector: Collector) -> int:
        """Frames the collector has refused or counted so far."""
        return (
            sum(c.stats.malformed for c in collector.connections)
            + collector.stats.refused
            + collector.stats.unknown_streams
        )

    async def main() -> Collector:
        await sim.start()
        config = CollectorConfig(
            category="linear",
            symbols=symbols,
            depths=(1, 50),
            ws_url=sim.url("linear"),
            database_url=database_url,
            retention_days=0,
            status_interval_s=3600,
        )
        register_instruments(config, writer)
        collector = Collector(config, writer)
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run(stop))
        try:
            waiting_for = -1  # handled() count that says the last frame was seen
            deadline = time.monotonic() + 90
            while True:
                await asyncio.sleep(0.02)
                assert time.monotonic() < deadline and not task.done(), "collector stalled"
                book = collector.books[bad]
                # The next bad frame once the last was seen and its resync recovered the book.
                if names and book.valid and handled(collector) >= waiting_for:
                    name = names.pop(0)
                    waiting_for = handled(collector) + 1
                    sent.append(name)
                    frame = bad_frame(name)
                    for conn in sim.conns:
                        if bad_topic in conn.topics:
                            conn.push(frame)
                if not names and handled(collector) >= waiting_for and caught_up(collector):
                    return collector
        finally:
            stop.set()
            await task
            await sim.stop()

    def caught_up(collector: Collector) -> bool:
        for stream, book in collector.books.items():
            topic = f"orderbook.{stream.depth}.{stream.symbol}"
            latest = sim.latest(topic)
            if not sim.finished(topic) or latest is None:
                return False
            if not book.valid or book.last_update_id != latest.u:
                return False
        return True

    writer.start()
    collector = asyncio.run(main())
    assert writer.stop(timeout_s=30)
    assert len(sent) == 7
    # Counted: five did not parse, the crossed one was refused by the book, the
    # unknown stream's message was counted apart.
    assert sum(c.stats.malformed for c in collector.connections) == 5
    assert collector.stats.unknown_streams == 1
    # Four unparseable frames named the stream and the crossed one was refused:
    # each invalidated the book and asked for a resync. The truncated frame named
    # no stream, and was an extra frame: `u` stayed continuous, nothing was lost.
    assert collector.stats.refused == 5
    assert sum(c.stats.resyncs for c in collector.connections) == 5
    assert collector.stats.gaps == 0
    # The bad stream, resynced, recorded exactly: every recorded message equals
    # the simulator's truth, and it was recovered by a snapshot after each resync.
    assert_export_matches_truth(engine, bad, sim.truth(bad_topic))
    snapshots = [snap for _, _, snap in recorded_sequence(engine, bad)]
    assert snapshots.count(True) == 6
    # The other streams, even the same symbol's depth 1: complete and exact.
    for stream in clean:
        topic = f"orderbook.{stream.depth}.{stream.symbol}"
        truth = sim.truth(topic)
        assert_export_matches_truth(engine, stream, truth)
        recorded = recorded_sequence(engine, stream)
        first = next(i for i, t in enumerate(truth) if t.seq == recorded[0][1])
        if stream.depth != 1:
            assert [seq for _, seq, _ in recorded] == [t.seq for t in truth[first:]]
            assert [snap for _, _, snap in recorded].count(True) == 1
    with engine.connect() as conn:
        import sqlalchemy as sa

        events = conn.execute(
            sa.text("SELECT kind, symbol, depth, detail FROM feed_events ORDER BY id")
        ).all()
    for kind, symbol, depth, _ in events:
        if kind in ("gap", "resync", "anomaly", "book_lost", "recovered"):
            assert (symbol, depth) == ("BTCUSDT", 50), (kind, symbol, depth)
    assert any(k == "anomaly" and "crossed" in d for k, _, _, d in events)
    engine.dispose()
