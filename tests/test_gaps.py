"""`depthwatch gaps`: the rules of depthwatch.coverage on hand-made events and
heartbeats; the reads and the subcommand on a real database; and a run of the
real collector against the simulator with faults injected (dropped deltas,
disconnects, the collector stopped and started again), where every fault must
lie inside a reported gap and a clean stretch must report none."""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, replace

import pytest
import sqlalchemy as sa

from depthwatch import coverage as cov
from depthwatch.clock import now_us
from depthwatch.collector import Collector, Hole, find_holes, register_instruments
from depthwatch.config import CollectorConfig
from depthwatch.coverage import Gap, StreamEvent
from depthwatch.export import gaps as G
from depthwatch.export.gaps_arguments import add_gaps_arguments
from depthwatch.records import FeedEvent, FeedEventKind, StreamKey
from depthwatch.sim import FaultKind, SimConfig, SimulatorThread
from depthwatch.storage import schema
from depthwatch.storage.db import make_engine
from depthwatch.storage.read.chunks import RecordedTimes
from depthwatch.storage.read.events import heartbeats, heartbeats_kept_from, stream_events
from depthwatch.storage.read.rows import LastRecorded
from depthwatch.storage.read.streams import NotRecorded, find_stream
from depthwatch.storage.read.tops import recorded_from
from depthwatch.storage.write import BatchWriter, WriterConfig

from .e2e import stored_book_events
from .test_faults import fast_connections

S = 1_000_000  # µs
T0 = 1_700_000_000 * S
STREAM = StreamKey("linear", "BTCUSDT", 50)
RANGE = (T0, T0 + 600 * S)
EVERY_SECOND = list(range(T0, T0 + 601 * S, S))


def ev(offset_s: float, kind: str, detail: str = "") -> StreamEvent:
    return StreamEvent(T0 + round(offset_s * S), kind, detail or kind)


def gap(start_s: float, end_s: float, cause: str, detail: str = "") -> Gap:
    return Gap(
        "linear", "BTCUSDT", 50, T0 + round(start_s * S), T0 + round(end_s * S), cause, detail
    )


def spans(gaps: list[Gap]) -> list[tuple[float, float, str]]:
    """(start, end) in seconds after T0, and the cause: what the tests compare."""
    return [((g.start_us - T0) / S, (g.end_us - T0) / S, g.cause) for g in gaps]


def gaps_of(events: list[StreamEvent], beats=EVERY_SECOND, **kw) -> list[Gap]:
    return cov.stream_gaps(STREAM, events, beats, *RANGE, S, **kw)


@dataclass
class FakeRecord:
    """coverage.RecordTimes over a list of receive times."""

    times: list[int]

    def last_at_or_before(self, local_us: int) -> int | None:
        return max((t for t in self.times if t <= local_us), default=None)

    def first_after(self, local_us: int, before_us: int) -> int | None:
        return min((t for t in self.times if local_us < t < before_us), default=None)


def recorded(*offsets_s: float) -> FakeRecord:
    return FakeRecord([T0 + round(o * S) for o in offsets_s])


# --- coverage: feed events -----------------------------------------------------------
def test_a_sequence_gap_lasts_until_recovered_its_resync_opening_nothing():
    got = gaps_of([ev(10, "gap", "expected u=5, got u=6"), ev(10.1, "resync"), ev(12, "recovered")])
    assert spans(got) == [(10, 12, "gap")]
    assert got[0].detail == "expected u=5, got u=6"
    assert got[0].stream == STREAM and got[0].duration_us == 2 * S


def test_the_gap_starts_at_the_last_recorded_message_before_its_event():
    """The lost message was due after the last one recorded: the event only
    says when the loss was noticed."""
    events = [ev(10, "gap"), ev(12, "recovered"), ev(30, "book_lost"), ev(31, "recovered")]
    got = gaps_of(events, record=recorded(2, 9.5, 12, 29, 31))
    assert spans(got) == [(9.5, 12, "gap"), (29, 31, "book_lost")]


def test_an_open_gap_ends_at_the_range_end_or_at_the_next_recorded_message():
    assert spans(gaps_of([ev(500, "book_lost")])) == [(500, 600, "book_lost")]
    # A book never valid before (its first snapshot refused) records no
    # `recovered` at its first valid snapshot: the record resuming closes it.
    got = gaps_of([ev(500, "resync")], record=recorded(499, 520, 530))
    assert spans(got) == [(499, 520, "resync")]
    assert spans(gaps_of([ev(500, "resync")], record=recorded(499, 700))) == [(499, 600, "resync")]


def test_a_resync_opens_a_gap_only_when_none_is_open():
    assert spans(gaps_of([ev(10, "resync"), ev(11, "recovered")])) == [(10, 11, "resync")]
    assert spans(gaps_of([ev(10, "book_lost"), ev(10.5, "resync"), ev(11, "recovered")])) == [
        (10, 11, "book_lost")
    ]


def test_a_recovered_first_means_the_book_was_broken_before_the_range():
    got = gaps_of([ev(30, "recovered"), ev(40, "gap"), ev(45, "recovered")])
    assert spans(got) == [(0, 30, cov.UNTRUSTED), (40, 45, "gap")]


def test_events_before_the_range_tell_what_is_open_at_its_start():
    assert spans(gaps_of([ev(-100, "resync"), ev(5, "recovered")])) == [(0, 5, "resync")]
    assert spans(gaps_of([ev(-100, "gap"), ev(-90, "recovered"), ev(5, "restart")])) == []


def test_other_kinds_open_nothing():
    kinds = ["restart", "anomaly", "malformed", "connect", "disconnect", "stall", "subscribed"]
    assert gaps_of([ev(10 + i, kind) for i, kind in enumerate(kinds)]) == []


def test_a_restart_declares_the_hole_as_collector_down():
    detail = f"{cov.DECLARED_HOLE_DETAIL}: nothing recorded after u=7 until ..."
    got = gaps_of([ev(100, "gap", detail), ev(110, "recovered")])
    assert spans(got) == [(100, 110, cov.COLLECTOR_DOWN)]


def test_rows_dropped_last_until_the_writer_records_again_whatever_the_book_does():
    """The writer drops rows while the book loses its connection and recovers:
    the record stays incomplete until the writer's own `recovered`; the
    resync it asks for (on a valid book) opens nothing of its own."""
    dropped = f"{cov.ROWS_DROPPED_DETAIL}: the database was unreachable and the journal full"
    again = f"{cov.RECORDING_AGAIN_DETAIL} from a fresh snapshot after rows were dropped"
    events = [
        ev(10, "gap", dropped),
        ev(20, "book_lost"),
        ev(21, "recovered", "snapshot u=9"),
        ev(50, "resync"),
        ev(51, "recovered", again),
        ev(80, "resync"),
        ev(81, "recovered", "snapshot u=99"),
    ]
    got = gaps_of(events)
    assert spans(got) == [(10, 51, cov.ROWS_DROPPED), (20, 21, "book_lost"), (80, 81, "resync")]
    assert spans(cov.disjoint(got)) == [(10, 51, "rows_dropped+book_lost"), (80, 81, "resync")]


# --- coverage: heartbeats --------------------------------------------------------------
def beats(*runs: tuple[int, int]) -> list[int]:
    return [T0 + s * S for a, b in runs for s in range(a, b + 1)]


def test_a_heartbeat_hole_is_collector_down():
    got = gaps_of([], beats((0, 100), (110, 600)))
    assert spans(got) == [(100, 110, cov.COLLECTOR_DOWN)]
    assert "10.0 s" in got[0].detail


def test_a_heartbeat_hole_starts_at_the_last_message_its_collector_recorded():
    """The collector beat at 100 s and recorded until 100.4 s; what is recorded
    later (103.5 s) is another collector's."""
    got = gaps_of([], beats((0, 100), (110, 600)), record=recorded(99, 100.4, 103.5, 111))
    assert spans(got) == [(100.4, 110, cov.COLLECTOR_DOWN)]
    assert spans(gaps_of([], beats((50, 600)), record=recorded(10))) == [
        (0, 50, cov.COLLECTOR_DOWN)
    ]


def test_a_hole_of_three_intervals_is_tolerated():
    assert gaps_of([], beats((0, 100), (103, 600))) == []


def test_before_the_first_and_after_the_last_heartbeat():
    assert spans(gaps_of([], beats((50, 600)))) == [(0, 50, cov.COLLECTOR_DOWN)]
    assert spans(gaps_of([], beats((0, 500)))) == [(500, 600, cov.COLLECTOR_DOWN)]
    assert spans(gaps_of([], [])) == [(0, 600, cov.COLLECTOR_DOWN)]
    # The nearest heartbeats outside the range count.
    assert gaps_of([], beats((-1, -1), (2, 600), (601, 601))) == []


def test_heartbeats_not_kept_say_nothing():
    """Before the oldest heartbeat kept, holes are not looked for."""
    assert spans(gaps_of([], beats((300, 600)), heartbeats_from_us=T0 + 300 * S)) == []
    assert spans(gaps_of([], beats((300, 600)), heartbeats_from_us=T0 + 200 * S)) == [
        (200, 300, cov.COLLECTOR_DOWN)
    ]
    assert gaps_of([], [], heartbeats_from_us=T0 + 900 * S) == []


def test_nothing_before_the_first_recorded_message_is_a_gap():
    beats_late = beats((200, 600))  # the very first collector started at 200 s
    first = T0 + 201 * S
    everything = gaps_of([], beats_late)
    assert spans(everything) == [(0, 200, "collector_down")]
    assert gaps_of([], beats_late, recorded_from_us=first) == []
    shaded = cov.window_spans([], beats_late, *RANGE, S, recorded_from_us=first)
    assert [(s.start_ms, s.end_ms, s.cause) for s in shaded] == [
        (T0 / 1000, first / 1000, cov.NOT_RECORDED_YET)
    ]
    # Holes after the first message stay.
    later = beats((200, 300), (320, 600))
    assert spans(gaps_of([], later, recorded_from_us=first)) == [(300, 320, "collector_down")]


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        cov.stream_gaps(STREAM, [], [], *RANGE, 0)
    assert cov.stream_gaps(STREAM, [ev(1, "gap")], [], T0, T0, S) == []


# --- coverage: merging -------------------------------------------------------------------
def test_merging_joins_touching_gaps_of_the_same_cause_only():
    merged = cov.merge_same_cause(
        [gap(0, 10, "gap", "a"), gap(10, 20, "gap", "b"), gap(5, 8, "gap"), gap(1, 2, "x")]
    )
    assert merged == [gap(0, 20, "gap", "a"), gap(1, 2, "x")]


def test_disjoint_joins_overlapping_causes_per_stream():
    other = replace(gap(5, 15, "gap"), symbol="ETHUSDT")
    got = cov.disjoint(
        [gap(0, 10, "gap", "a"), gap(8, 12, "collector_down", "b"), gap(12, 13, "gap", "a"), other]
    )
    assert got == [gap(0, 13, "gap+collector_down", "a; b"), other]


def test_collector_and_events_of_one_restart_make_one_gap():
    detail = f"{cov.DECLARED_HOLE_DETAIL}: ..."
    events = [ev(99.5, "gap", detail), ev(110.2, "recovered")]
    got = cov.disjoint(gaps_of(events, beats((0, 100), (110, 600))))
    assert spans(got) == [(99.5, 110.2, cov.COLLECTOR_DOWN)]


# --- the wording coverage tells events apart by ------------------------------------------
def test_the_writer_and_the_collector_word_their_events_as_coverage_reads_them():
    writer = BatchWriter(make_engine("postgresql://u@127.0.0.1:9/none"), WriterConfig())
    writer._dropping = True
    assert writer._refuse(STREAM, T0)
    writer._dropping = False
    assert not writer._refuse(STREAM, T0 + S, snapshot=True)
    dropped, again = list(writer._events)
    assert isinstance(dropped, FeedEvent) and isinstance(again, FeedEvent)
    assert (dropped.kind, again.kind) == (FeedEventKind.GAP, FeedEventKind.RECOVERED)
    assert dropped.detail.startswith(cov.ROWS_DROPPED_DETAIL)
    assert again.detail.startswith(cov.RECORDING_AGAIN_DETAIL)

    collector = Collector(CollectorConfig(ws_url="ws://127.0.0.1:9"), writer)
    collector.declare_hole(Hole(STREAM, LastRecorded(T0, 7)))
    declared = writer._events[-1]
    assert isinstance(declared, FeedEvent) and declared.kind == FeedEventKind.GAP
    assert declared.detail.startswith(cov.DECLARED_HOLE_DETAIL)


# --- reads and the subcommand on a real database ------------------------------------------
def insert_stream(conn: sa.Connection, symbol: str, depth: int = 50) -> None:
    iid = conn.execute(
        sa.text(
            "INSERT INTO instruments (exchange, category, symbol) "
            "VALUES ('bybit', 'linear', :s) ON CONFLICT DO NOTHING RETURNING id"
        ),
        {"s": symbol},
    ).scalar()
    if iid is None:
        iid = conn.execute(sa.text("SELECT id FROM instruments WHERE symbol = :s"), {"s": symbol})
        iid = iid.scalar_one()
    conn.execute(
        sa.text("INSERT INTO streams (instrument_id, depth) VALUES (:i, :d)"),
        {"i": iid, "d": depth},
    )


def insert_event(conn: sa.Connection, t_us: int, kind: str, symbol: str | None, detail: str = ""):
    conn.execute(
        sa.text(
            """INSERT INTO feed_events (local_us, collector, connection, kind, category, symbol,
                                        depth, detail)
               VALUES (:t, 'c', 'linear-0', :k, 'linear', :s, :d, :x)"""
        ),
        {"t": t_us, "k": kind, "s": symbol, "d": None if symbol is None else 50, "x": detail},
    )


def insert_beats(conn: sa.Connection, times_us: list[int], streams: list[str]) -> None:
    conn.execute(
        sa.text(
            """INSERT INTO collector_heartbeats (collector, local_us, host, pid, version,
                   started_us, interval_s, simulated, endpoint, retention_days, messages,
                   messages_per_s, pending_rows, flush_failures, streams, valid_streams)
               VALUES ('c', :t, 'h', 1, 'v', 0, 1.0, true, 'ws://sim', 0, 0, 0, 0, 0, :s, :s)"""
        ),
        [{"t": t, "s": streams} for t in times_us],
    )


@pytest.fixture
def hand_made(engine: sa.Engine) -> sa.Engine:
    """BTCUSDT: a gap 100-110 s, a heartbeat hole 300-320 s; ETHUSDT: clean."""
    schema.upgrade(engine)
    keys = ["linear:BTCUSDT@50", "linear:ETHUSDT@50"]
    with engine.begin() as conn:
        insert_stream(conn, "BTCUSDT")
        insert_stream(conn, "ETHUSDT")
        insert_beats(conn, beats((-10, 300), (320, 600)), keys)
        insert_event(conn, T0 - 5 * S, "connect", None)
        insert_event(conn, T0 + 100 * S, "gap", "BTCUSDT", "expected u=5, got u=7")
        insert_event(conn, T0 + 100 * S, "disconnect", None)
        insert_event(conn, T0 + 101 * S, "resync", "BTCUSDT")
        insert_event(conn, T0 + 110 * S, "recovered", "BTCUSDT", "snapshot u=9")
        insert_event(conn, T0 + 200 * S, "restart", "ETHUSDT")
    return engine


def test_find_gaps_reads_each_stream_in_the_range(hand_made):
    got = G.find_gaps(hand_made, "linear", None, *RANGE)
    assert [(g.symbol, *s) for g, s in zip(got, spans(got), strict=True)] == [
        ("BTCUSDT", 100, 110, "gap"),
        ("BTCUSDT", 300, 320, "collector_down"),
        ("ETHUSDT", 300, 320, "collector_down"),
    ]
    # A gap open at the range's start is seen from the events before it.
    assert spans(G.find_gaps(hand_made, "linear", ["BTCUSDT"], T0 + 105 * S, T0 + 200 * S)) == [
        (105, 110, "gap")
    ]
    with hand_made.connect() as conn:
        assert G.find_gaps(conn, "linear", ["ETHUSDT"], T0, T0 + 250 * S) == []
        events = stream_events(conn, STREAM, T0 + 105 * S, T0 + 200 * S)
        assert [(e.local_us - T0) // S for e in events] == [100, 101, 110]
        hb = heartbeats(conn, str(STREAM), T0 + 305 * S, T0 + 315 * S)
        assert [(t - T0) // S for t in hb.times_us] == [300, 320] and hb.interval_us == S
        assert heartbeats_kept_from(conn) is None


def test_find_gaps_names_what_was_never_recorded(hand_made):
    with pytest.raises(
        NotRecorded, match=r"'DOGEUSDT' has been recorded \(recorded: BTCUSDT, ETHUSDT\)"
    ):
        G.find_gaps(hand_made, "linear", ["BTCUSDT", "DOGEUSDT"], *RANGE)
    with pytest.raises(NotRecorded, match="at depth 200"):
        G.find_gaps(hand_made, "linear", ["BTCUSDT"], *RANGE, depth=200)
    with pytest.raises(NotRecorded, match="no spot order book"):
        G.find_gaps(hand_made, "spot", None, *RANGE)


def test_heartbeats_deleted_by_retention_are_no_collector_down(hand_made):
    with hand_made.begin() as conn:
        insert_event(conn, T0 - 3_600 * S, "connect", None)  # a collector ran an hour before
    with hand_made.connect() as conn:
        assert heartbeats_kept_from(conn) == T0 - 10 * S
    early = G.find_gaps(hand_made, "linear", ["ETHUSDT"], T0 - 1_800 * S, T0 + 100 * S)
    assert early == []


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_gaps_arguments(parser)
    return parser.parse_args(list(argv))


def iso(offset_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 / S + offset_s))


def test_the_subcommand_writes_csv_or_a_table(hand_made, database_url, capsys):
    db = ["--database-url", database_url]
    assert G.run_gaps(parse("--start", iso(0), "--end", iso(600), "--format", "csv", *db)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        ",".join(G.GAP_COLUMNS),
        f'bybit,BTCUSDT,50,{T0 + 100 * S},{T0 + 110 * S},10.0,gap,"expected u=5, got u=7"',
        f"bybit,BTCUSDT,50,{T0 + 300 * S},{T0 + 320 * S},20.0,collector_down,"
        "no heartbeat of a collector recording the stream for 20.0 s",
        f"bybit,ETHUSDT,50,{T0 + 300 * S},{T0 + 320 * S},20.0,collector_down,"
        "no heartbeat of a collector recording the stream for 20.0 s",
    ]
    args = parse("--symbols", "btcusdt", "--start", iso(0), "--end", iso(600), "--format", "table")
    assert G.run_gaps(replace_ns(args, database_url=database_url)) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("stream      start (UTC)")
    assert table[0].split()[-4:] == ["(UTC)", "duration", "cause", "detail"]
    assert table[1].split() == [
        "BTCUSDT@50",
        "2023-11-14",
        "22:15:00.000",
        "2023-11-14",
        "22:15:10.000",
        "10.0",
        "s",
        "gap",
        "expected",
        "u=5,",
        "got",
        "u=7",
    ]
    assert "  collector_down  no heartbeat of a collector" in table[2]
    assert table[-1] == (
        "2 gaps in BTCUSDT from 2023-11-14 22:13:20.000 to 2023-11-14 22:23:20.000 UTC, "
        "30.0 s in all"
    )


def replace_ns(args: argparse.Namespace, **changes: object) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


def test_the_subcommand_says_when_there_are_none_and_refuses_what_is_wrong(
    hand_made, database_url, capsys, caplog
):
    db = ["--database-url", database_url]
    clean = ["--symbols", "ETHUSDT", "--start", iso(0), "--end", iso(250)]
    assert G.run_gaps(parse(*clean, "--format", "table", *db)) == 0
    assert capsys.readouterr().out.startswith("no gaps in ETHUSDT from 2023-11-14")
    assert G.run_gaps(parse(*clean, "--format", "csv", *db)) == 0
    out = capsys.readouterr()
    assert out.out == ",".join(G.GAP_COLUMNS) + "\n" and "no gaps in ETHUSDT" in out.err
    assert G.run_gaps(parse("--symbols", "NOPE", *db)) == 1
    assert "'NOPE' has been recorded" in caplog.text
    assert G.run_gaps(parse("--start", "yesterday", *db)) == 2
    assert G.run_gaps(parse("--start", iso(10), "--end", iso(0), *db)) == 2
    assert G.run_gaps(parse("--depth", "7", *db)) == 2
    err = caplog.text
    assert "not an ISO 8601 time: 'yesterday'" in err and "--end must be after --start" in err
    assert "--depth 7: linear books have depth" in err


def test_durations_read_as_a_person_would_say_them():
    texts = [
        G.duration_text(round(s * S)) for s in (0.7342, 12.34, 245, 7_380, 3 * 86_400 + 4 * 3600)
    ]
    assert texts == ["0.734 s", "12.3 s", "4 min 05 s", "2 h 03 min", "3 d 04 h"]


# --- the real collector against the simulator, faults injected ---------------------------
RATE = 50  # book messages per second
BEAT_S = 0.5  # heartbeat interval: a hole is longer than 1.5 s
# A fault is timed on the simulator's thread as it happens (a disconnect after
# its last message went out): the collector may receive that last message a
# little later, which is where the gap starts. Less than one message interval:
# nothing was due in between.
SLACK_US = S // RATE


def run_collector(config: CollectorConfig, seconds: float) -> int:
    """`depthwatch collect`'s start (holes declared) and a run of `seconds`,
    in this process, with fast reconnects; returns when it stopped reading."""
    engine = make_engine(config.database_url or "")
    writer = BatchWriter(
        engine,
        WriterConfig(flush_interval_s=0.05, retention_days=0, collector_id=config.collector_id),
    )
    writer.start()
    register_instruments(config, writer)
    collector = Collector(config, writer)
    fast_connections(collector)
    holes, _overlaps = find_holes(engine, collector)
    assert not _overlaps
    for hole in holes:
        collector.declare_hole(hole)

    async def main() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run(stop))
        await asyncio.sleep(seconds)
        assert not task.done()
        stop.set()
        await task
        return now_us()

    stopped = asyncio.run(main())
    assert writer.stop(timeout_s=30)
    engine.dispose()
    return stopped


def test_every_injected_fault_lies_in_a_reported_gap(database_url):
    faulty = SimulatorThread(
        SimConfig(
            symbols=("BTCUSDT",),
            rate=RATE,
            seed=5,
            trades_rate=0,
            drop_every=60,
            disconnect_every=140,
        )
    ).start()
    clean = SimulatorThread(
        SimConfig(symbols=("BTCUSDT",), rate=RATE, seed=6, trades_rate=0)
    ).start()
    base = CollectorConfig(
        symbols=("BTCUSDT",),
        database_url=database_url,
        retention_days=0,
        silence_timeout_s=2.0,
        status_interval_s=3600,
        heartbeat_interval_s=BEAT_S,
        read_batch_s=0,
    )
    engine = make_engine(database_url)
    schema.upgrade(engine)
    try:
        t0 = now_us()
        stopped = run_collector(replace(base, ws_url=faulty.url(), collector_id="first"), 7.0)
        time.sleep(3.0)  # nobody records: six heartbeat intervals
        restarted = now_us()
        t_end = run_collector(replace(base, ws_url=clean.url(), collector_id="second"), 4.0)
    finally:
        faulty.stop()
        clean.stop()

    gaps = G.find_gaps(engine, "linear", ["BTCUSDT"], t0, t_end)
    topic = "orderbook.50.BTCUSDT"
    faults = [
        f
        for f in faulty.sim.fault_log
        if t0 <= f.at_us < stopped
        and (f.kind is FaultKind.DISCONNECT or (f.kind is FaultKind.DROP and f.topic == topic))
    ]
    kinds = {
        kind: sum(f.kind is kind for f in faults) for kind in (FaultKind.DROP, FaultKind.DISCONNECT)
    }
    assert kinds[FaultKind.DROP] >= 3 and kinds[FaultKind.DISCONNECT] >= 1, kinds
    shown = "\n".join(
        f"{(g.start_us - t0) / S:.3f}-{(g.end_us - t0) / S:.3f} {g.cause}" for g in gaps
    )
    for fault in faults:
        assert any(g.start_us - SLACK_US <= fault.at_us < g.end_us for g in gaps), (
            f"{fault.kind} at {(fault.at_us - t0) / S:.3f} s in no gap:\n{shown}"
        )
    down = [g for g in gaps if g.start_us <= stopped and restarted <= g.end_us]
    assert len(down) == 1 and cov.COLLECTOR_DOWN in down[0].cause.split("+"), shown
    # ... from the last message the first collector recorded.
    stored = [e.local_us for e in stored_book_events(engine, STREAM)]
    last = max(t for t in stored if t < stopped)
    assert down[0].start_us == last, shown
    with engine.connect() as conn:
        times = RecordedTimes(conn, find_stream(conn, STREAM.category, STREAM.symbol, 50))
        assert times.last_at_or_before(stopped) == last
        assert times.first_after(last, t_end) == min(t for t in stored if t > last)
        assert times.first_after(last, restarted) is None
    causes = {c for g in gaps for c in g.cause.split("+")}
    assert {cov.SEQUENCE_GAP, cov.BOOK_LOST} <= causes, shown
    # The second collector, on a clean feed, recorded from its first snapshot on.
    recovered = down[0].end_us
    assert recovered < restarted + 2 * S, shown
    assert [g for g in gaps if g.end_us > recovered] == [], shown
    assert G.find_gaps(engine, "linear", ["BTCUSDT"], recovered, t_end) == []
    # Gaps are short: the record is complete most of the time.
    assert sum(g.duration_us for g in gaps if g is not down[0]) < (stopped - t0) / 2, shown
    # Before the stream's first recorded message nothing was missed: a range
    # reaching an hour back reports the same gaps, none before that message.
    first = min(stored)
    earlier = G.find_gaps(engine, "linear", ["BTCUSDT"], t0 - 3_600 * S, t_end)
    assert all(g.start_us >= first for g in earlier), earlier[:1]
    assert [(g.start_us, g.cause) for g in earlier] == [
        (max(g.start_us, first), g.cause) for g in gaps if g.end_us > first
    ]
    with engine.connect() as conn:
        stream = find_stream(conn, STREAM.category, STREAM.symbol, 50)
        assert recorded_from(conn, stream, t0 - 3_600 * S, t_end) == first
        assert recorded_from(conn, stream, first + 1, t_end) is None
        assert recorded_from(conn, stream, t0 - 7_200 * S, t0 - 3_600 * S) == t0 - 3_600 * S
    engine.dispose()
