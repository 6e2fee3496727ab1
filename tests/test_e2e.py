"""End to end: simulator -> collector -> PostgreSQL -> export, checked against
the simulator's ground truth at every message, with and without faults."""

from __future__ import annotations

import pytest

from depthwatch.config import CollectorConfig
from depthwatch.records import StreamKey
from depthwatch.sim import SimConfig, SimulatorThread

from .conftest import DATA
from .e2e import (
    ALL_TIME,
    assert_export_matches_truth,
    collect_until_caught_up,
    export_rows,
    feed_event_kinds,
    recorded_sequence,
    sim_collector_config,
)

SYMBOLS = ("BTCUSDT", "ETHUSDT")


def config_for(sim: SimulatorThread, database_url: str, **overrides) -> CollectorConfig:
    symbols = overrides.pop("symbols", SYMBOLS)
    return sim_collector_config(sim, database_url, symbols, **overrides)


def run_scenario(database_url: str, **faults) -> tuple:
    sim = SimulatorThread(
        SimConfig(symbols=SYMBOLS, rate=300, deltas=900, seed=11, trades_rate=0, **faults)
    ).start()
    try:
        run = collect_until_caught_up(sim, config_for(sim, database_url))
        for symbol in SYMBOLS:
            stream = StreamKey("linear", symbol, 50)
            truth = sim.sim.truth(f"orderbook.50.{symbol}")
            assert_export_matches_truth(run.engine, stream, truth)
        return sim, run
    finally:
        sim.stop()


def test_clean_stream_is_recorded_completely_and_exactly(database_url):
    sim, run = run_scenario(database_url)
    for symbol in SYMBOLS:
        stream = StreamKey("linear", symbol, 50)
        truth = sim.sim.truth(f"orderbook.50.{symbol}")
        recorded = recorded_sequence(run.engine, stream)
        # Every state from the subscription's snapshot on, none missing, none twice.
        first = next(i for i, t in enumerate(truth) if t.seq == recorded[0][1])
        assert [seq for _, seq, _ in recorded] == [t.seq for t in truth[first:]]
        assert [snap for _, _, snap in recorded].count(True) == 1
        quotes = export_rows(run.engine, "quotes", stream)
        assert quotes and quotes[-1]["bid_price"] == truth[-1].bids[0][0]
    assert run.collector.stats.gaps == 0
    assert run.writer.stats.rows_written["top_snapshots"] > 0
    assert_parquet_matches_csv(run.engine, StreamKey("linear", "BTCUSDT", 50))


def assert_parquet_matches_csv(engine, stream: StreamKey) -> None:
    import io
    from datetime import UTC, datetime, timedelta

    import pyarrow.parquet as pq

    from depthwatch.export.sinks import TIME_COLUMNS, ParquetSink
    from depthwatch.export.tardis import ExportRequest, export

    for kind in ("incremental_book_L2", "quotes"):
        csv_rows = export_rows(engine, kind, stream)
        request = ExportRequest(kind, "linear", stream.symbol, *ALL_TIME, depth=stream.depth)
        buffer = io.BytesIO()
        export(engine, request, ParquetSink(request.kind, buffer), progress_to=None)
        table = pq.read_table(io.BytesIO(buffer.getvalue()))
        assert table.column_names == [*csv_rows[0].keys(), *TIME_COLUMNS]
        assert table.num_rows == len(csv_rows)
        parquet_rows = table.to_pylist()
        for got, want in zip(parquet_rows, csv_rows, strict=True):
            for typed, integer in zip(TIME_COLUMNS, ("timestamp", "local_timestamp"), strict=True):
                moment = got[typed]
                assert moment.tzinfo is not None and moment.utcoffset().total_seconds() == 0
                as_us = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
                assert as_us == int(want[integer])
            for name, value in want.items():
                if name in ("exchange", "symbol", "side"):
                    assert got[name] == value
                elif name == "is_snapshot":
                    assert got[name] == (value == "true")
                elif value == "":
                    assert got[name] is None
                else:
                    assert got[name] == float(value), name


@pytest.mark.parametrize(
    ("category", "symbol", "depth"),
    [("spot", "BTCUSDT", 200), ("option", "BTC-27DEC26-100000-C", 25), ("inverse", "BTCUSD", 1)],
)
def test_other_categories_and_depths_are_recorded_exactly(database_url, category, symbol, depth):
    """Spot acks echo "subscribe", option acks are COMMAND_RESP, depth 1 is
    snapshots only: each recorded book still equals the ground truth."""
    sim = SimulatorThread(
        SimConfig(symbols=(symbol,), rate=300, deltas=400, seed=5, trades_rate=0)
    ).start()
    try:
        config = config_for(
            sim,
            database_url,
            category=category,
            symbols=(symbol,),
            depths=(depth,),
            ws_url=sim.sim.url(category),
        )
        run = collect_until_caught_up(sim, config)
        stream = StreamKey(category, symbol, depth)
        truth = sim.sim.truth(f"orderbook.{depth}.{symbol}")
        states = assert_export_matches_truth(run.engine, stream, truth)
        assert len(states) > 100
        assert feed_event_kinds(run.engine).count("subscribed") == 1
        rows = export_rows(run.engine, "incremental_book_L2", stream)
        exchange = {"spot": "bybit-spot", "option": "bybit-options"}.get(category, "bybit")
        assert {r["exchange"] for r in rows} == {exchange}
        if depth == 1:
            assert all(s.is_snapshot for s in states)
    finally:
        sim.stop()


def test_dropped_deltas_cause_gaps_resyncs_and_a_fresh_snapshot(database_url):
    _sim, run = run_scenario(database_url, drop_every=97)
    assert run.collector.stats.gaps >= 2
    kinds = feed_event_kinds(run.engine)
    assert kinds.count("gap") == run.collector.stats.gaps
    # A resync for each gap a delta revealed (one a snapshot revealed, it ended).
    stats = run.collector.stats
    assert kinds.count("resync") == stats.gaps - stats.snapshot_gaps
    # Every gap ends with the snapshot that recovers the book: the dashboard's
    # shading runs from one to the other.
    assert kinds.count("recovered") == run.collector.stats.gaps
    for symbol in SYMBOLS:
        snapshots = [s for s in recorded_sequence(run.engine, StreamKey("linear", symbol, 50))]
        # one snapshot at subscription, then one after every resync of this symbol
        assert sum(1 for _, _, snap in snapshots if snap) >= 2


def test_exchange_restarts_reset_the_book(database_url):
    _sim, run = run_scenario(database_url, restart_every=250)
    assert run.collector.stats.restarts >= 2
    assert run.collector.stats.gaps == 0
    assert feed_event_kinds(run.engine).count("restart") == run.collector.stats.restarts


def test_disconnects_reconnect_and_resubscribe(database_url):
    _sim, run = run_scenario(database_url, disconnect_every=400)
    connects = sum(c.stats.connects for c in run.collector.connections)
    assert connects >= 3
    kinds = feed_event_kinds(run.engine)
    assert kinds.count("connect") == connects
    assert kinds.count("disconnect") == connects
    # Each stream's book is lost with every connection and recovered by the next
    # subscription's snapshot; the final, orderly stop loses nothing.
    assert kinds.count("book_lost") == kinds.count("recovered")
    assert kinds.count("recovered") >= 2 * len(SYMBOLS)


def test_malformed_frames_are_counted_and_lose_nothing(database_url):
    _sim, run = run_scenario(database_url, malformed_every=50)
    malformed = sum(c.stats.malformed for c in run.collector.connections)
    assert malformed >= 20
    assert run.collector.stats.gaps == 0
    assert "malformed" in feed_event_kinds(run.engine)


def test_a_stalled_connection_is_reconnected_by_the_watchdog(database_url):
    _sim, run = run_scenario(database_url, stall_after=300, stall_seconds=8)
    assert sum(c.stats.stalls for c in run.collector.connections) >= 1
    assert "stall" in feed_event_kinds(run.engine)


def test_unknown_symbol_fails_clearly_and_others_keep_running(database_url):
    sim = SimulatorThread(
        SimConfig(symbols=("BTCUSDT",), rate=300, deltas=300, seed=3, trades_rate=0)
    ).start()
    try:
        config = config_for(sim, database_url, symbols=("BTCUSDT", "NOPEUSDT"))
        stream = StreamKey("linear", "BTCUSDT", 50)
        run = collect_until_caught_up(sim, config, wait_for=[stream])
        refused = [t for c in run.collector.connections for t in c.stats.failed_topics]
        assert refused == ["orderbook.50.NOPEUSDT"]
        assert feed_event_kinds(run.engine).count("subscribe_failed") == 1
        assert_export_matches_truth(run.engine, stream, sim.sim.truth("orderbook.50.BTCUSDT"))
    finally:
        sim.stop()


@pytest.mark.parametrize("rate", [0, 50])
def test_real_bybit_archive_replayed_and_recorded_exactly(database_url, rate):
    """Real data: the rebuilt book equals the file's book after every message."""
    sim = SimulatorThread(
        SimConfig(symbols=(), rate=rate, trades_rate=0), [DATA / "xrpusdt-ob500.data.zip"]
    ).start()
    try:
        config = config_for(
            sim, database_url, symbols=("XRPUSDT",), depths=(500,), legacy_depths=True
        )
        run = collect_until_caught_up(sim, config)
        stream = StreamKey("linear", "XRPUSDT", 500)
        truth = sim.sim.truth("orderbook.500.XRPUSDT")
        assert len(truth) == 50
        states = assert_export_matches_truth(run.engine, stream, truth)
        assert len(states) == 50  # all 50 messages of the file, snapshot first
        assert states[0].is_snapshot and not any(s.is_snapshot for s in states[1:])
        assert states[0].timestamp == 1733011200691000
        assert len(states[0].bids) == 500
    finally:
        sim.stop()


def test_two_overlapping_collectors_record_each_message_once_and_exactly(database_url):
    """A deploy: the new collector starts while the old one still runs, then the
    old one stops. Every message is stored once, and the export stays exact."""
    import asyncio
    import time

    import sqlalchemy as sa

    from depthwatch.collector import Collector, register_instruments
    from depthwatch.storage import schema
    from depthwatch.storage.db import make_engine
    from depthwatch.storage.write import BatchWriter, WriterConfig

    sim = SimulatorThread(
        SimConfig(symbols=SYMBOLS, rate=300, deltas=1_200, seed=21, trades_rate=0)
    ).start()
    engine = make_engine(database_url)
    try:
        config = config_for(sim, database_url)
        schema.upgrade(engine)
        writers = [
            BatchWriter(engine, WriterConfig(flush_interval_s=0.05, collector_id=f"c{i}"))
            for i in range(2)
        ]
        for writer in writers:
            writer.start()
            register_instruments(config, writer)
        old, new = (Collector(config, writer) for writer in writers)

        async def deploy() -> None:
            stop_old, stop_new = asyncio.Event(), asyncio.Event()
            old_task = asyncio.create_task(old.run(stop_old))
            await asyncio.sleep(1.0)
            new_task = asyncio.create_task(new.run(stop_new))
            await asyncio.sleep(1.5)  # both running
            stop_old.set()
            await old_task
            deadline = time.monotonic() + 60
            while not all(
                sim.sim.finished(f"orderbook.50.{s}")
                and new.books[StreamKey("linear", s, 50)].last_update_id
                == sim.latest(f"orderbook.50.{s}").u
                for s in SYMBOLS
            ):
                assert time.monotonic() < deadline, "new collector did not catch up"
                await asyncio.sleep(0.05)
            stop_new.set()
            await new_task

        asyncio.run(deploy())
        assert all(writer.stop(timeout_s=30) for writer in writers)
        assert sum(w.stats.copies_with_duplicates for w in writers) > 0  # they did overlap
        for symbol in SYMBOLS:
            stream = StreamKey("linear", symbol, 50)
            recorded = recorded_sequence(engine, stream)
            seqs = [seq for _, seq, snapshot in recorded if not snapshot]
            assert len(seqs) == len(set(seqs))  # no delta stored twice
            truth = sim.sim.truth(f"orderbook.50.{symbol}")
            first = next(i for i, t in enumerate(truth) if t.seq == recorded[0][1])
            assert sorted(set(seqs) | {recorded[0][1]}) == [t.seq for t in truth[first:]]
            assert_export_matches_truth(engine, stream, truth)
        with engine.connect() as conn:
            collectors = conn.execute(
                sa.text("SELECT DISTINCT collector FROM feed_events ORDER BY 1")
            ).scalars()
            assert list(collectors) == ["c0", "c1"]
    finally:
        sim.stop()
        engine.dispose()


def test_the_collector_beats_and_says_its_data_is_simulated(database_url):
    """Heartbeats every interval with the streams and their validity; the
    simulator's handshake marks the data simulated without any flag."""
    import sqlalchemy as sa

    sim = SimulatorThread(SimConfig(symbols=SYMBOLS, rate=100, deltas=300, seed=2)).start()
    try:
        config = config_for(sim, database_url, heartbeat_interval_s=0.2)
        assert not config.simulated
        run = collect_until_caught_up(sim, config)
    finally:
        sim.stop()
    with run.engine.connect() as conn:
        beats = conn.execute(
            sa.text(
                """SELECT simulated, streams, valid_streams, messages, interval_s, endpoint
                   FROM collector_heartbeats ORDER BY local_us"""
            )
        ).all()
        registered = conn.execute(sa.text("SELECT count(*) FROM streams")).scalar_one()
    assert len(beats) >= 5  # 300 steps at 100/s: about 3 s of 0.2 s beats
    assert all(b.streams == [f"linear:{s}@50" for s in SYMBOLS] for b in beats)
    assert beats[-1].simulated and beats[-1].interval_s == pytest.approx(0.2)
    assert beats[-1].endpoint == sim.sim.url("linear")
    assert any(b.valid_streams == b.streams for b in beats)
    assert [b.messages for b in beats] == sorted(b.messages for b in beats)
    assert registered == len(SYMBOLS)
