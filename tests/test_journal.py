"""Database outages: rows beyond the memory bound wait in the journal on disk
and are written after recovery, in order, once; a journal left by a crash is
written at the next start; beyond the journal's cap rows are dropped as a
recorded gap and the stream resyncs. Real PostgreSQL behind a real TCP proxy
that cuts it off."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from pathlib import Path

import sqlalchemy as sa

from dbproxy import DatabaseProxy
from depthwatch.collector import Collector, register_instruments
from depthwatch.config import CollectorConfig
from depthwatch.records import FeedEvent, FeedEventKind, StreamKey
from depthwatch.sim import SimConfig, SimulatorThread
from depthwatch.storage import codec, schema
from depthwatch.storage.db import make_engine
from depthwatch.storage.read.book import book_events
from depthwatch.storage.read.streams import list_streams
from depthwatch.storage.write import BatchWriter, WriterConfig
from depthwatch.storage.write.journal import SUFFIX, Journal

from .conftest import run_cli, start_collect
from .e2e import assert_export_matches_truth
from .test_storage import STREAM, make_update, stored_messages


def scalar(engine: sa.Engine, sql: str, **params: object) -> object:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


# ---- the journal alone


def heir_writes_the_journal(
    engine: sa.Engine, journal_dir: Path, proxy: DatabaseProxy, timeout_s: float
) -> None:
    """A new writer on the same journal directory adopts what the last one
    left and writes it all; then the proxy to the database is closed."""
    heir = BatchWriter(engine, WriterConfig(flush_interval_s=0.05, journal_dir=journal_dir))
    heir.start()
    try:
        assert heir.flush_now(timeout_s=timeout_s)
    finally:
        assert heir.stop()
        proxy.close()


def test_journal_reads_back_in_order_across_segments_and_deletes_what_is_consumed(
    tmp_path, monkeypatch
):
    monkeypatch.setattr("depthwatch.storage.write.journal.SEGMENT_BYTES", 100)
    journal = Journal(tmp_path)
    records = [("book_events", f"row {i}\twith\\ttab\n") for i in range(50)]
    for i in range(0, 50, 5):
        journal.append(records[i : i + 5])
    assert len(list(tmp_path.glob(f"*{SUFFIX}"))) > 2
    read: list[tuple[str, str]] = []
    while (batch := journal.read(7)) is not None:
        read += batch.records
        journal.consume(batch)
    assert read == records
    assert journal.empty
    assert list(tmp_path.glob(f"*{SUFFIX}")) == []


def test_a_crashed_writers_segments_are_adopted_and_a_torn_record_ignored(tmp_path):
    left = Journal(tmp_path)
    left.append([("quotes", "a\n"), ("quotes", "b\n")])
    segment = next(tmp_path.glob(f"*{SUFFIX}"))
    live = Journal(tmp_path)
    assert live.adopt_orphans() == 0  # still locked by its (live) owner
    left._segments[0].file.close()  # the owner dies without consuming it
    with segment.open("ab") as torn:
        torn.write(b"quotes\tc-torn-by-a-cr")
    heir = Journal(tmp_path)
    assert heir.adopt_orphans() > 0
    batch = heir.read(10)
    assert batch is not None and batch.records == [("quotes", "a\n"), ("quotes", "b\n")]
    heir.consume(batch)
    assert heir.empty and not segment.exists()


# ---- the writer through an outage


def test_an_outage_spills_to_the_journal_and_everything_is_written_in_order_once(
    database_url, tmp_path
):
    proxy = DatabaseProxy(database_url)
    engine = make_engine(proxy.url)
    schema.upgrade(engine)
    spill_rows = 500
    writer = BatchWriter(
        engine,
        WriterConfig(flush_interval_s=0.05, spill_rows=spill_rows, journal_dir=tmp_path),
    )
    writer.start()
    try:
        writer.add_book_update(make_update(1, snapshot=True))
        assert writer.flush_now()
        proxy.cut()
        peak = 0
        for u in range(2, 12_002):
            writer.add_book_update(make_update(u))
            if u % 100 == 0:
                writer.add_feed_event(FeedEvent(FeedEventKind.ANOMALY, u, "linear", "X"))
                assert writer.has_room()  # the reader never waits during an outage
                peak = max(peak, writer.pending_rows)
                time.sleep(0.01)  # ~10,000 rows/s
        time.sleep(1.0)
        assert writer.journal_bytes > 0 and writer.stats.rows_journaled > 0
        # Bounded: what is left in memory is under the spill threshold, and it
        # never held more than a fraction of the outage's rows.
        assert writer.pending_rows < spill_rows
        assert peak < 12_000 // 2, peak
        proxy.restore()
        assert writer.flush_now(timeout_s=60)
    finally:
        assert writer.stop()
        proxy.close()
    engine = make_engine(database_url)  # the proxy is gone
    assert stored_messages(engine) == 12_001
    assert writer.stats.book_messages_written == 12_001
    assert writer.stats.flush_failures > 0
    with engine.connect() as conn:
        order = conn.execute(
            sa.text("SELECT local_us FROM feed_events WHERE kind = 'anomaly' ORDER BY id")
        ).scalars()
        assert list(order) == list(range(100, 12_001, 100))  # in order, each once
    assert list(tmp_path.glob(f"*{SUFFIX}")) == []
    engine.dispose()


def test_a_stop_during_an_outage_journals_everything_and_the_next_start_writes_it(
    database_url, tmp_path
):
    proxy = DatabaseProxy(database_url)
    engine = make_engine(proxy.url)
    schema.upgrade(engine)
    config = WriterConfig(flush_interval_s=0.05, journal_dir=tmp_path, collector_id="first")
    writer = BatchWriter(engine, config)
    writer.start()
    writer.register_stream(STREAM)  # as the collector does at start
    proxy.cut()
    for u in range(1, 3_001):
        writer.add_book_update(make_update(u, snapshot=(u == 1)))
    writer.add_feed_event(FeedEvent(FeedEventKind.DISCONNECT, 42, "linear", detail="stop"))
    # Not in the database, so not "flushed": but nothing is left in memory,
    # it is all on disk.
    assert not writer.stop(timeout_s=30)
    assert writer.pending_rows == 0
    assert list(tmp_path.glob(f"*{SUFFIX}"))
    proxy.restore()
    heir_writes_the_journal(engine, tmp_path, proxy, timeout_s=30)
    engine = make_engine(database_url)  # the proxy is gone
    assert stored_messages(engine) == 3_000
    # The event keeps the collector that saw it.
    assert scalar(engine, "SELECT collector FROM feed_events WHERE kind = 'disconnect'") == "first"
    assert list(tmp_path.glob(f"*{SUFFIX}")) == []
    engine.dispose()


def test_a_full_journal_drops_rows_as_a_recorded_gap_and_the_stream_resyncs_exact(
    database_url, tmp_path
):
    """A cap far too small for the outage: rows are dropped, never silently.
    Each stream gets a gap from its first lost row, resyncs once the database
    is back, and everything recorded rebuilds to the exchange's book."""
    symbols = ("BTCUSDT", "ETHUSDT")
    sim = SimulatorThread(
        SimConfig(symbols=symbols, rate=400, deltas=4_000, seed=9, trades_rate=0)
    ).start()
    proxy = DatabaseProxy(database_url)
    engine = make_engine(proxy.url)
    schema.upgrade(engine)
    config = CollectorConfig(
        symbols=symbols,
        ws_url=sim.sim.url("linear"),
        database_url=proxy.url,
        retention_days=0,
    )
    writer = BatchWriter(
        engine,
        WriterConfig(
            flush_interval_s=0.05,
            spill_rows=200,
            journal_dir=tmp_path,
            journal_max_bytes=150_000,
            collector_id="capped",
        ),
    )
    writer.start()
    register_instruments(config, writer)
    collector = Collector(config, writer)
    streams = [StreamKey("linear", s, 50) for s in symbols]

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run(stop))
        await asyncio.sleep(1.5)
        proxy.cut()
        # Until the journal is full (a few seconds; longer on a loaded
        # machine, where fewer messages come in that time).
        full_by = time.monotonic() + 60
        while writer.stats.rows_dropped == 0:
            assert time.monotonic() < full_by, "the cap was never reached"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # and stays full a while: rows keep being refused
        proxy.restore()
        deadline = time.monotonic() + 60
        while not all(
            sim.sim.finished(f"orderbook.50.{s.symbol}")
            and collector.books[s].valid
            and collector.books[s].last_update_id == sim.latest(f"orderbook.50.{s.symbol}").u
            and s not in writer._blocked
            for s in streams
        ):
            assert time.monotonic() < deadline, (
                f"did not recover: blocked {writer._blocked}, dropping {writer._dropping}, "
                f"journal {writer.journal_bytes}, pending {writer.pending_rows}, books "
                + ", ".join(
                    f"{s} valid={collector.books[s].valid} u={collector.books[s].last_update_id}"
                    f"/{sim.latest(f'orderbook.50.{s.symbol}').u}"
                    for s in streams
                )
            )
            assert not task.done()
            await asyncio.sleep(0.1)
        stop.set()
        await task

    try:
        asyncio.run(run())
        assert writer.stop(timeout_s=30)
    finally:
        sim.stop()
        proxy.close()
    engine = make_engine(database_url)  # the proxy is gone
    for stream in streams:
        with engine.connect() as conn:
            kinds = conn.execute(
                sa.text(
                    """SELECT kind, detail FROM feed_events
                       WHERE symbol = :s AND kind IN ('gap', 'recovered') ORDER BY local_us, id"""
                ),
                {"s": stream.symbol},
            ).all()
        assert kinds and kinds[0][0] == "gap" and "journal full" in kinds[0][1], kinds
        assert kinds[-1][0] == "recovered", kinds
        truth = sim.sim.truth(f"orderbook.50.{stream.symbol}")
        assert_export_matches_truth(engine, stream, truth)
    engine.dispose()


# ---- the collector process: SIGKILL during an outage, restart


def journaled_chunk_messages(line: str) -> tuple[str, list[int], list[int]]:
    """(stream id, exchange times, update ids) of a journaled book_chunks COPY line."""
    sid, ts_us, u, _n, _snapshot, payload = line.rstrip("\n").split("\t")
    chunk = codec.decode_chunk(bytes.fromhex(payload[3:]), int(ts_us), int(u))
    return sid, chunk.ts_us.tolist(), chunk.u.tolist()


def collect_process(sim_url: str, database_url: str, journal: Path) -> subprocess.Popen[str]:
    return start_collect(
        sim_url,
        database_url,
        "--symbols",
        "BTCUSDT,ETHUSDT",
        "--journal-dir",
        str(journal),
        "--spill-rows",
        "1000",
    )


def test_outage_then_sigkill_then_restart_loses_nothing_that_was_journaled(database_url, tmp_path):
    """1,000 messages/s; the database goes away; the collector keeps reading and
    journals; it is SIGKILLed mid-outage; the database comes back and a new
    collector writes the dead one's journal first. Every journaled row is
    stored, once."""
    sim = SimulatorThread(
        SimConfig(symbols=("BTCUSDT", "ETHUSDT"), rate=500, seed=3, trades_rate=0)
    ).start()
    proxy = DatabaseProxy(database_url)
    engine = make_engine(database_url)
    journal = tmp_path / "journal"
    try:
        first = collect_process(sim.sim.url("linear"), proxy.url, journal)
        deadline = time.monotonic() + 60
        while not scalar(engine, "SELECT to_regclass('book_chunks') IS NOT NULL") or not scalar(
            engine, "SELECT count(*) FROM book_chunks"
        ):
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.3)
        proxy.cut()
        time.sleep(8.0)  # ~8,000 book messages, far beyond the 1,000-row memory bound
        assert first.poll() is None  # still reading
        first.kill()
        first.communicate(timeout=10)
        journaled = [
            line.split("\t", 1)
            for segment in sorted(journal.glob(f"*{SUFFIX}"))
            for line in segment.read_text().splitlines()
        ]
        chunk_rows = [line for table, line in journaled if table == "book_chunks"]
        proxy.restore()
        second = collect_process(sim.sim.url("linear"), proxy.url, journal)
        deadline = time.monotonic() + 60
        while list(journal.glob(f"*{SUFFIX}")):
            assert second.poll() is None
            assert time.monotonic() < deadline, "the journal was not written"
            time.sleep(0.3)
        second.send_signal(signal.SIGTERM)
        _, stderr = second.communicate(timeout=30)
    finally:
        sim.stop()
        proxy.close()
    assert second.returncode == 0, stderr
    assert "left by an earlier run" in stderr
    journaled_messages = {
        (int(sid), ts, u)
        for sid, ts, u in (journaled_chunk_messages(line) for line in chunk_rows)
        for ts, u in zip(ts, u, strict=True)
    }
    assert len(journaled_messages) > 1_000
    with engine.connect() as conn:
        stored = {
            (stream.id, e.ts_us, e.u)
            for stream in list_streams(conn)
            for e in book_events(conn, stream, 0, 2**62)
        }
    assert journaled_messages <= stored
    assert re.search(r"rows journaled \d+", stderr)
    engine.dispose()


def test_a_stop_while_the_journal_drains_leaves_the_rest_in_order_for_the_next_start(
    database_url, tmp_path
):
    """SIGTERM right after an outage: the stop does not try to drain a large
    journal inside the shutdown delay; what is left (and what is in memory,
    behind it) is written by the next start. Every row once."""
    proxy = DatabaseProxy(database_url)
    engine = make_engine(proxy.url)
    schema.upgrade(engine)
    writer = BatchWriter(
        engine, WriterConfig(flush_interval_s=0.05, spill_rows=100, journal_dir=tmp_path)
    )
    writer.start()
    writer.register_stream(STREAM)  # as the collector does at start
    proxy.cut()
    for u in range(1, 40_001):
        writer.add_book_update(make_update(u, snapshot=(u == 1)))
        if u % 1_000 == 0:
            time.sleep(0.05)
    time.sleep(0.5)
    assert writer.journal_bytes > 0
    proxy.restore()
    started = time.monotonic()
    writer.stop(timeout_s=30)  # drains what it can within its budget, journals the rest
    assert time.monotonic() - started < 15  # inside the collector's final flush timeout
    assert writer.pending_rows == 0
    heir_writes_the_journal(engine, tmp_path, proxy, timeout_s=60)
    engine = make_engine(database_url)  # the proxy is gone
    assert stored_messages(engine) == 40_000
    assert list(tmp_path.glob(f"*{SUFFIX}")) == []
    engine.dispose()


def test_a_journal_directory_that_cannot_be_written_is_a_clear_error_at_start(
    database_url, tmp_path
):
    """Found at start, not at the first outage, when it would cost rows."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_cli(
        "collect",
        "--ws-url",
        "ws://127.0.0.1:9/v5/public/linear",
        "--database-url",
        database_url,
        "--journal-dir",
        str(blocker / "journal"),
    )
    assert result.returncode == 2, result.stderr
    assert "journal directory" in result.stderr and "Traceback" not in result.stderr


def test_a_writer_that_dies_stops_the_collector_instead_of_reading_on(
    database_url, monkeypatch, caplog
):
    """A bug in the writer thread: the collector must not keep reading with
    nothing written (memory would only grow); it stops, and says why."""
    sim = SimulatorThread(SimConfig(symbols=("BTCUSDT",), rate=100, seed=2, trades_rate=0)).start()
    engine = make_engine(database_url)
    schema.upgrade(engine)
    config = CollectorConfig(
        symbols=("BTCUSDT",), ws_url=sim.sim.url("linear"), database_url=database_url
    )
    writer = BatchWriter(engine, WriterConfig(flush_interval_s=0.05))

    def broken() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(writer, "_run", broken)
    writer.start()
    register_instruments(config, writer)
    collector = Collector(config, writer)

    async def run() -> None:
        await asyncio.wait_for(collector.run(asyncio.Event()), 30)

    try:
        asyncio.run(run())  # returns by itself: nobody set the stop event
    finally:
        sim.stop()
    assert writer.failed and not writer.has_room()  # readers would wait, not pile up
    assert "the writer failed: stopping" in caplog.text
    engine.dispose()
