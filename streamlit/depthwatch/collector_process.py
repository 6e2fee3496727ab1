"""The collector's process: `depthwatch collect` and the Render worker run
`run_collector`, which upgrades the schema, starts the writer, registers the
instruments, declares the holes an earlier collector left, runs the Collector
on its event loop until SIGTERM/SIGINT, then flushes every row received and
logs a summary (exit 0; 1 when rows could not be written).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import selectors
import signal
import time
from dataclasses import replace

from depthwatch.collector import Collector, find_holes, register_instruments
from depthwatch.config import CollectorConfig
from depthwatch.storage import schema
from depthwatch.storage.db import make_engine, resolve_database_url, wait_for_database
from depthwatch.storage.read.events import streams_kept_by_others
from depthwatch.storage.write import BatchWriter, WriterConfig

# The collector's own logger name: its lines read as before the split.
log = logging.getLogger("depthwatch.collector")

SUMMARY_TABLES = ("top_seconds", "top_snapshots", "trades")

# How long a stopping collector waits for its last rows to be committed (or,
# with the database unreachable, journaled); a service manager's shutdown
# delay must exceed it (render.yaml's maxShutdownDelaySeconds).
FINAL_FLUSH_TIMEOUT_S = 15.0


class BatchingSelector(selectors.DefaultSelector):
    """A selector that, before it would block, first sleeps until `interval`
    after its previous wake-up. At a steady pace the loop then wakes about
    1/interval times a second and reads every frame that arrived meanwhile,
    instead of waking once per frame (a wake-up costs ~30 us on a small VM,
    more than parsing a message; at 1,000 msg/s they were most of the CPU).
    The price: receive times (`local_us`) and timers are late by up to
    `interval`. A busy loop (frames always waiting) never sleeps here."""

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self._interval = interval_s
        self._last_wake = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout > 0:
            wait = self._last_wake + self._interval - time.monotonic()
            if wait > 0:
                if timeout is not None:
                    wait = min(wait, timeout)
                    timeout = max(0.0, timeout - wait)
                time.sleep(wait)
        events = super().select(timeout)
        self._last_wake = time.monotonic()
        return events


def event_loop(read_batch_s: float) -> asyncio.AbstractEventLoop:
    """The collector's loop: one wake-up per frame, or (read_batch_s > 0) at
    most one per read_batch_s under steady traffic (BatchingSelector)."""
    if read_batch_s <= 0:
        return asyncio.new_event_loop()
    return asyncio.SelectorEventLoop(BatchingSelector(read_batch_s))


def run_collector(config: CollectorConfig) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit status."""
    url = resolve_database_url(config.database_url, config.data_dir)
    engine = make_engine(url)
    wait_for_database(engine, config.database_wait_s)
    version = schema.upgrade(engine)
    log.info("database schema at version %d", version)
    writer = BatchWriter(
        engine,
        WriterConfig(
            flush_interval_s=config.flush_interval_s,
            retention_days=config.retention_days,
            retention_waits_for_archive=config.retention_waits_for_archive,
            collector_id=config.collector_id,
            journal_dir=config.journal_path,
            journal_max_bytes=int(config.journal_max_mb * 1024 * 1024),
            spill_rows=config.spill_rows,
        ),
    )
    try:
        writer.start()
    except OSError as exc:  # the journal's directory (checked now, not mid-outage)
        log.error("the journal directory %s cannot be written: %s", config.journal_path, exc)
        return 2
    symbols = register_instruments(config, writer)
    if not symbols:
        log.error("no known symbols left to collect")
        writer.stop()
        return 2
    if symbols != config.symbols:
        config = replace(config, symbols=symbols)
    collector = Collector(config, writer)
    holes, maybe_overlaps = find_holes(engine, collector)
    for hole in holes:
        collector.declare_hole(hole)

    def kept_since(since_us: int) -> set[str]:
        with engine.connect() as conn:
            return streams_kept_by_others(conn, config.collector_id, since_us)

    collector.settle_holes_later(maybe_overlaps, kept_since)
    log.info(
        "collecting %d topics over %d connection(s) from %s",
        len(config.topics()),
        len(collector.connections),
        config.endpoint,
    )
    tune_garbage_collector()
    try:
        with asyncio.Runner(loop_factory=lambda: event_loop(config.read_batch_s)) as runner:
            status = runner.run(_run_until_signal(collector))
    finally:
        # Whatever ended the loop (a signal, or a bug), write what was received;
        # a second SIGTERM/SIGINT (a supervisor and a service manager both
        # signalling) must not kill the process halfway through that write.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        flushed = writer.stop(timeout_s=FINAL_FLUSH_TIMEOUT_S)
        log_summary(collector, flushed)
    engine.dispose()
    if not flushed:
        return 1
    return status


def log_summary(collector: Collector, flushed: bool) -> None:
    w = collector.writer.stats
    log.info(
        "stopped: %d book messages received (%d dropped awaiting a snapshot); written: "
        "%d book events, %d top seconds, %d depth snapshots, %d trades; already stored "
        "(skipped): %d book events, %d top seconds, %d depth snapshots, %d trades; %s",
        sum(c.stats.book_updates for c in collector.connections),
        collector.stats.dropped,
        w.book_messages_written,
        *(w.rows_written[t] for t in SUMMARY_TABLES),
        w.book_messages_duplicate,
        *(w.rows_duplicate[t] for t in SUMMARY_TABLES),
        "everything flushed" if flushed else "ROWS NOT WRITTEN: the database did not take them",
    )
    log.info(
        "gaps %d, resyncs %d, restarts %d, malformed %d, unknown streams %d, handler errors %d, "
        "rows rejected %d, flush failures %d, rows journaled %d, rows dropped %d",
        collector.stats.gaps,
        sum(c.stats.resyncs for c in collector.connections),
        collector.stats.restarts,
        sum(c.stats.malformed for c in collector.connections),
        collector.stats.unknown_streams,
        collector.stats.handler_errors,
        w.rows_rejected,
        w.flush_failures,
        w.rows_journaled,
        w.rows_dropped,
    )
    p50, p99 = w.latency_percentiles_ms(0.5, 0.99)
    log.info("receive-to-commit latency: p50 %.1f ms, p99 %.1f ms", p50, p99)


def tune_garbage_collector() -> None:
    """Each message allocates a few dozen short-lived containers while the set of
    long-lived objects (modules, books) hardly changes. Freezing what start-up
    built keeps it out of every full collection. The young generation's
    threshold counts tracked objects allocated minus those freed, so it is
    set above what the writer's queue holds flat out (6,000 queued messages
    and a batch being packed, a dozen containers each): the queue's own
    growth then no longer triggers collections that scan every queued
    message (4 us a message at 20,000); growth that stays, cyclic garbage
    included, still does. Measured in BENCHMARKS.md."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(200_000, 20, 50)


async def _run_until_signal(collector: Collector) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await collector.run(stop)
    if collector.refused_everything and not stop.is_set():
        log.error("every subscription was refused; exiting")
        return 2
    return 0
