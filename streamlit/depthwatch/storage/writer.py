"""The batch writer: records in, COPY batches out, on a thread of its own.

Socket readers (the asyncio loop) call the `add_*` methods, which only format a
COPY line and append it to a deque: no I/O, no lock. A writer thread drains the
deques every `flush_interval_s` and COPYs each table's rows, all in one
transaction. A COPY that meets a row already stored is redone through a
temporary staging table with `INSERT ... ON CONFLICT DO NOTHING`. That makes
every write idempotent: two collectors overlapping during a deploy, or a retry
after a failed commit, never duplicate a row. A failed flush keeps its batch and
retries it with backoff; the queue is bounded, and readers that find it full
wait (`wait_for_room`), which is counted and logged as back-pressure.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from operator import itemgetter
from pathlib import Path

import psycopg2
import psycopg2.errors
import sqlalchemy as sa

from depthwatch.clock import now_us
from depthwatch.logs import first_line
from depthwatch.records import (
    BookCheckpoint,
    BookUpdate,
    CollectorHeartbeat,
    DepthSnapshot,
    FeedEvent,
    FeedEventKind,
    Level,
    Quote,
    StreamKey,
    Trade,
)
from depthwatch.storage import schema
from depthwatch.storage.codec import decode_chunk
from depthwatch.storage.write.journal import DEFAULT_MAX_BYTES, Journal, JournalBatch
from depthwatch.storage.write.packing import BookPacker, split_due

log = logging.getLogger(__name__)

EXCHANGE = "bybit"

# Column lists in COPY order; the staging tables mirror the real ones.
COLUMNS = {
    # Schema 4 (what this writer writes); see storage/write/packing.py.
    "book_chunks": "stream_id, ts_us, u, n, snapshot, payload",
    "top_snapshots": "stream_id, ts_us, payload",
    "top_seconds": "stream_id, ts_us, last_ts_us, last_u, bid, bid_size, ask, ask_size, "
    "bid_min, ask_max, spread_bps_max, messages",
    # Schema 1-3 tables, still written by a journal an older collector left.
    "book_events": "instrument_id, depth, ts_us, local_us, match_us, u, seq, is_snapshot, "
    "bid_prices, bid_sizes, ask_prices, ask_sizes",
    "quotes": "instrument_id, depth, ts_us, local_us, u, bid_price, bid_size, ask_price, ask_size",
    "depth_snapshots": "instrument_id, depth, ts_us, local_us, u, "
    "bid_prices, bid_sizes, ask_prices, ask_sizes",
    "trades": "instrument_id, ts_us, local_us, trade_id, side, price, size, seq",
    "book_checkpoints": "instrument_id, depth, ts_us, local_us, u, seq, "
    "bid_prices, bid_sizes, ask_prices, ask_sizes",
}

# Tables whose rows the readers' thread queues as COPY lines; book messages and
# depth snapshots are queued as records and packed by the writer thread.
QUEUED_AS_LINES = ("book_checkpoints", "trades")

# Position of `ts_us` (exchange time, the partition key) in each table's COPY line.
TS_COLUMN = {
    "book_chunks": 1,
    "top_snapshots": 1,
    "top_seconds": 1,
    "book_events": 2,
    "quotes": 2,
    "depth_snapshots": 2,
    "trades": 1,
    "book_checkpoints": 2,
}

# What a COPY that meets rows already stored does with them (through the
# staging table): keep the stored row, except for a second of tops written
# again with more of its messages, where the two are merged. Every merge is
# idempotent, so a replay or an overlapping collector changes nothing.
CONFLICT_ACTIONS = {
    "top_seconds": """ON CONFLICT (stream_id, ts_us) DO UPDATE SET
        last_ts_us = greatest(t.last_ts_us, excluded.last_ts_us),
        last_u = CASE WHEN (excluded.last_ts_us, excluded.last_u) > (t.last_ts_us, t.last_u)
                      THEN excluded.last_u ELSE t.last_u END,
        bid = CASE WHEN (excluded.last_ts_us, excluded.last_u) > (t.last_ts_us, t.last_u)
                   THEN excluded.bid ELSE t.bid END,
        bid_size = CASE WHEN (excluded.last_ts_us, excluded.last_u) > (t.last_ts_us, t.last_u)
                        THEN excluded.bid_size ELSE t.bid_size END,
        ask = CASE WHEN (excluded.last_ts_us, excluded.last_u) > (t.last_ts_us, t.last_u)
                   THEN excluded.ask ELSE t.ask END,
        ask_size = CASE WHEN (excluded.last_ts_us, excluded.last_u) > (t.last_ts_us, t.last_u)
                        THEN excluded.ask_size ELSE t.ask_size END,
        bid_min = least(t.bid_min, excluded.bid_min),
        ask_max = greatest(t.ask_max, excluded.ask_max),
        spread_bps_max = greatest(t.spread_bps_max, excluded.spread_bps_max),
        messages = greatest(t.messages, excluded.messages)""",
}

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


# A stopping writer retries a dead database this long, then journals what it
# holds; it drains a journal this long, then queues the rest behind it. Both
# stay well inside the collector's final flush timeout.
STOP_RETRY_S = 5.0
# At most this many rows of a kind per flush (a backlog is written in steps).
MAX_BATCH_ROWS = 10_000
STOP_DRAIN_S = 8.0


@dataclass(frozen=True)
class WriterConfig:
    # Flushes start at most this far apart, and sooner once `batch_rows` rows
    # (not counting held ones) wait: each flush has a fixed cost (a few
    # round trips, NumPy calls), which at a slow pace is most of its cost.
    flush_interval_s: float = 0.25
    # A stream's book messages wait for a later flush until this many are
    # queued or the oldest has waited this long (storage/write/packing.py,
    # `split_due`): at a slow pace a chunk row then holds a dozen messages
    # rather than five, and a row costs ~140 bytes with its index entry.
    chunk_messages: int = 32
    chunk_hold_s: float = 0.25
    batch_rows: int = 500  # flush early once this many rows are pending
    # Readers wait beyond this (back-pressure): a second or two of the writer's
    # work flat out. Deeper, a burst only queues longer (latency, memory: a
    # queued message is an object of ~2 KB) while the reader thread takes the
    # GIL time the writer needs to catch up.
    max_pending_rows: int = 25_000
    retention_days: int = 0  # 0 keeps everything
    partitions_ahead_days: int = 2
    collector_id: str = "depthwatch"
    # While the database is unreachable (or a journal is being drained), queued
    # rows beyond this many move to the journal on disk, so memory stays bounded
    # and the sockets keep reading.
    spill_rows: int = 50_000
    journal_dir: Path | None = None  # None: no journal; readers wait instead
    journal_max_bytes: int = DEFAULT_MAX_BYTES  # beyond it rows are dropped, as a recorded gap


@dataclass
class WriterStats:
    rows_written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLUMNS, 0))
    # Rows already stored (an overlapping collector, a retried flush, a replayed
    # journal): skipped by ON CONFLICT DO NOTHING, counted apart from the written.
    rows_duplicate: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLUMNS, 0))
    feed_events_written: int = 0
    flushes: int = 0
    flush_failures: int = 0
    rows_rejected: int = 0
    rows_journaled: int = 0  # moved to the journal while the database was unreachable
    rows_dropped: int = 0  # the journal was full: dropped, recorded as gaps
    # Book messages in the chunks written, and in chunks already stored.
    book_messages_written: int = 0
    book_messages_duplicate: int = 0
    copies_with_duplicates: int = 0  # table COPYs that met rows already stored
    backpressure_waits: int = 0
    # receive-to-commit latency of book events, microseconds (most recent only)
    latencies_us: deque[int] = field(default_factory=lambda: deque(maxlen=1_000_000))

    def latency_percentiles_ms(self, *quantiles: float) -> list[float]:
        return _percentiles_ms(self.latencies_us, quantiles)


def _percentiles_ms(latencies_us: Iterable[int], quantiles: Iterable[float]) -> list[float]:
    ordered = sorted(latencies_us)
    if not ordered:
        return [float("nan") for _ in quantiles]
    return [ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000 for q in quantiles]


_PRICE = itemgetter(0)
_SIZE = itemgetter(1)


def _levels_columns(bids: list[Level], asks: list[Level]) -> str:
    """The four numeric[] columns, in COPY text form: {p1,p2}\t{s1,s2}\t..."""
    join = ",".join
    return (
        f"{{{join(map(_PRICE, bids))}}}\t{{{join(map(_SIZE, bids))}}}\t"
        f"{{{join(map(_PRICE, asks))}}}\t{{{join(map(_SIZE, asks))}}}"
    )


def _nullable(value: object) -> str:
    return "\\N" if value is None else str(value)


# "no partition of relation ... found for row": a partition dropped under the
# writer (retention elsewhere, an operator); the retry re-creates it.
MISSING_PARTITION = "23514"


def _is_outage(exc: BaseException) -> bool:
    """Whether a failed write is to be retried as a whole later (the database
    is unreachable, or a partition vanished) rather than a row being bad
    (then the batch is written row by row)."""
    error = getattr(exc, "orig", exc)
    if getattr(error, "pgcode", None) == MISSING_PARTITION and "no partition" in str(error):
        return True
    outage = (
        psycopg2.OperationalError,
        psycopg2.InterfaceError,
        sa.exc.OperationalError,
        sa.exc.InterfaceError,
        sa.exc.DisconnectionError,
        OSError,
    )
    return isinstance(exc, outage) or bool(getattr(exc, "connection_invalidated", False))


def _chunk_receive_times(line: str) -> list[int]:
    """The receive times of a `book_chunks` COPY line's messages."""
    _, ts_us, u, _, _, payload = line.rstrip("\n").split("\t")
    chunk = decode_chunk(bytes.fromhex(payload[3:]), int(ts_us), int(u))
    return [int(x) for x in chunk.local_us.tolist()]


def _copy_from(cursor: object, sql: str, data: str) -> None:
    # One read of the whole buffer: psycopg2 takes the GIL for every chunk it
    # reads, and each take can wait a switch interval behind the busy event
    # loop, so small chunks (the 8 KiB default) cost hundreds of milliseconds.
    cursor.copy_expert(sql, io.StringIO(data), size=len(data) + 1)  # type: ignore[attr-defined]


class BatchWriter:
    """Implements book.RecordSink (plus trades) on top of PostgreSQL."""

    def __init__(
        self, engine: sa.Engine, config: WriterConfig, clock: Callable[[], int] = now_us
    ) -> None:
        self.engine = engine
        self.config = config
        # What holds messages back and closes quiet seconds goes by this clock
        # (microseconds); bench/record_paced.py replays exchange time with it.
        self._clock = clock
        self.stats = WriterStats()
        # COPY lines the readers' thread formats itself (the rest is packed later).
        self._rows: dict[str, deque[str]] = {table: deque() for table in QUEUED_AS_LINES}
        # Book updates with the quote each made, and depth snapshots: packed
        # by the writer thread (storage/write/packing.py), not on the readers' thread.
        self._book_rows: deque[tuple[BookUpdate, Quote | None]] = deque()
        self._snapshots: deque[DepthSnapshot] = deque()
        # The quote of the update about to be added (the book sends it first).
        self._pending_quotes: dict[StreamKey, Quote] = {}
        self._stream_ids: dict[StreamKey, int] = {}
        self._packer = BookPacker(self._stream_id)
        self._events: deque[FeedEvent | CollectorHeartbeat] = deque()
        # Receive-to-commit latencies since the last heartbeat took them.
        self._recent_latencies_us: deque[int] = deque(maxlen=1_000_000)
        self._instrument_ids: dict[tuple[str, str], int] = {}
        self._known_days: set[int] = set()
        self._seen_days: set[int] = set()  # every day a queued row fell on
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_maintenance = 0.0
        self._held: _Batch | None = None  # taken from the queues, not yet committed
        self._instrument_keys: dict[int, tuple[str, str]] = {}  # id -> (category, symbol)
        self.journal = (
            Journal(config.journal_dir, config.journal_max_bytes) if config.journal_dir else None
        )
        self._outage = False  # the last flush failed
        # Rows go to the journal rather than waiting: written by the writer thread.
        self._spilling = False
        self.journal_bytes = 0  # pending in the journal, as last seen by the writer thread
        # The journal is full: new rows are refused (set by the writer thread).
        # A stream that lost a row is blocked: its rows are refused until a
        # snapshot restarts its record, so no delta is stored on top of a hole.
        # Only the readers' thread touches `_blocked`, so checking a row and
        # appending it cannot interleave with a block.
        self._dropping = False
        self._blocked: set[StreamKey] = set()

    # ---- called from the socket readers' thread: format and append, nothing else

    def _row_start(self, stream: StreamKey, exchange_us: int, local_us: int) -> str:
        """The columns every per-stream table starts with; notes the row's day."""
        self._note_day(exchange_us)
        return f"{self._instrument_id(stream)}\t{stream.depth}\t{exchange_us}\t{local_us}\t"

    def add_book_update(self, update: BookUpdate) -> None:
        quotes = self._pending_quotes
        quote = quotes.pop(update.stream, None) if quotes else None
        if (self._dropping or self._blocked) and self._refuse(
            update.stream, update.local_us, update.is_snapshot
        ):
            return
        if update.stream not in self._stream_ids:
            self._stream_id(update.stream)
        self._note_day(update.exchange_us)
        self._book_rows.append((update, quote))
        self._maybe_wake()

    def add_quote(self, quote: Quote) -> None:
        """The top of book the next update of its stream makes (StreamBook
        sends a quote just before its update); stored with that update."""
        self._pending_quotes[quote.stream] = quote

    def add_depth_snapshot(self, snapshot: DepthSnapshot) -> None:
        if (self._dropping or self._blocked) and self._refuse(snapshot.stream, snapshot.local_us):
            return
        if snapshot.stream not in self._stream_ids:
            self._stream_id(snapshot.stream)
        self._note_day(snapshot.exchange_us)
        self._snapshots.append(snapshot)

    def add_checkpoint(self, checkpoint: BookCheckpoint) -> None:
        if (self._dropping or self._blocked) and self._refuse(
            checkpoint.stream, checkpoint.local_us
        ):
            return
        self._rows["book_checkpoints"].append(
            f"{self._row_start(checkpoint.stream, checkpoint.exchange_us, checkpoint.local_us)}"
            f"{checkpoint.update_id}\t{checkpoint.sequence}\t"
            f"{_levels_columns(checkpoint.bids, checkpoint.asks)}\n"
        )

    def add_trade(self, trade: Trade) -> None:
        if self._dropping:  # no book to restart: the book streams' gaps cover the time
            self.stats.rows_dropped += 1
            return
        iid = self.instrument_id(trade.category, trade.symbol)
        self._note_day(trade.exchange_us)
        self._rows["trades"].append(
            f"{iid}\t{trade.exchange_us}\t{trade.local_us}\t"
            f"{trade.trade_id.translate(_COPY_ESCAPES)}\t{trade.side}\t{trade.price}\t"
            f"{trade.size}\t{_nullable(trade.sequence)}\n"
        )
        self._maybe_wake()

    def add_feed_event(self, event: FeedEvent) -> None:
        self._events.append(event)

    def add_heartbeat(self, heartbeat: CollectorHeartbeat) -> None:
        self._events.append(heartbeat)

    def _refuse(self, stream: StreamKey, local_us: int, snapshot: bool = False) -> bool:
        """Whether to drop a row: every row while the journal is full, then
        every row of a stream that lost one until a snapshot (which the
        collector's resync brings) restarts its record. A stream's first lost
        row records its gap."""
        if self._dropping:
            if stream not in self._blocked:
                self._blocked.add(stream)
                self._events.append(
                    FeedEvent.of_stream(
                        FeedEventKind.GAP,
                        local_us,
                        stream,
                        "rows dropped: the database was unreachable and the journal full; "
                        "not recorded until a fresh snapshot",
                    )
                )
        elif stream not in self._blocked:
            return False
        elif snapshot:
            self._blocked.discard(stream)
            log.info("%s: recording again from a fresh snapshot", stream)
            # Closes the gap (the book itself stayed exact, so it records none).
            self._events.append(
                FeedEvent.of_stream(
                    FeedEventKind.RECOVERED,
                    local_us,
                    stream,
                    "recording again from a fresh snapshot after rows were dropped",
                )
            )
            return False
        self.stats.rows_dropped += 1
        return True

    @property
    def streams_to_resync(self) -> frozenset[StreamKey]:
        """Streams whose record lost rows and that need a fresh snapshot, once
        the journal has room again (empty while it is still full)."""
        return frozenset() if self._dropping else frozenset(self._blocked)  # an atomic copy

    def take_recent_latency_ms(self) -> tuple[float | None, float | None]:
        """p50 and p99 receive-to-commit of the book events committed since the
        last call (None when nothing was committed): the heartbeat's figures."""
        recent = self._recent_latencies_us
        taken = [recent.popleft() for _ in range(len(recent))]
        if not taken:
            return None, None
        p50, p99 = _percentiles_ms(taken, (0.5, 0.99))
        return p50, p99

    @property
    def pending_rows(self) -> int:
        """Rows received and not yet committed: queued, or held by a failed flush."""
        held_batch = self._held  # one read: the writer thread may clear it meanwhile
        held = held_batch.size if held_batch is not None else 0
        return held + self._queued_rows

    @property
    def _queued_rows(self) -> int:
        return (
            len(self._book_rows)
            + len(self._snapshots)
            + sum(len(rows) for rows in self._rows.values())
        )

    def has_room(self) -> bool:
        if self.failed:
            return False
        return self._spilling or self.pending_rows < self.config.max_pending_rows

    async def wait_for_room(self) -> None:
        """Back-pressure: pause the calling reader (not the event loop) until the
        writer has caught up below the limit."""
        self.stats.backpressure_waits += 1
        if self.stats.backpressure_waits % 100 == 1:
            log.warning(
                "writer back-pressure: %d rows pending (limit %d); readers wait (%d waits so far)",
                self.pending_rows,
                self.config.max_pending_rows,
                self.stats.backpressure_waits,
            )
        while not self.has_room() and not self.failed:
            self._wake.set()
            await asyncio.sleep(0.01)

    def _maybe_wake(self) -> None:
        # is_set() first: set() takes a lock, and once a batch is due every
        # message would take it again until the writer wakes.
        if (
            len(self._book_rows) - self._held_back >= self.config.batch_rows
            and not self._wake.is_set()
        ):
            self._wake.set()

    # Book rows the last flush left queued (not due yet): they do not make
    # the next flush come sooner. Written by the writer thread only.
    _held_back = 0

    def _note_day(self, ts_us: int) -> None:
        day = ts_us // schema.DAY_US
        if day not in self._known_days:
            self._seen_days.add(day)

    def _instrument_id(self, stream: StreamKey) -> int:
        iid = self._instrument_ids.get((stream.category, stream.symbol))
        return iid if iid is not None else self.instrument_id(stream.category, stream.symbol)

    # ---- instruments: registered once per symbol, synchronously

    def instrument_id(self, category: str, symbol: str, tick_size: str | None = None) -> int:
        key = (category, symbol)
        if key in self._instrument_ids and tick_size is None:
            return self._instrument_ids[key]
        with self.engine.begin() as conn:
            iid = conn.execute(
                sa.text(
                    """INSERT INTO instruments (exchange, category, symbol, tick_size)
                       VALUES (:e, :c, :s, :t)
                       ON CONFLICT (exchange, category, symbol) DO UPDATE
                       SET tick_size = coalesce(excluded.tick_size, instruments.tick_size)
                       RETURNING id"""
                ),
                {"e": EXCHANGE, "c": category, "s": symbol, "t": tick_size},
            ).scalar_one()
        self._instrument_ids[key] = int(iid)
        self._instrument_keys[int(iid)] = key
        return int(iid)

    def register_stream(self, stream: StreamKey) -> int:
        """Note that a stream is recorded (so the dashboard lists it without
        scanning the log); returns its id, which keys the packed tables."""
        iid = self._instrument_id(stream)
        with self.engine.begin() as conn:
            sid = conn.execute(
                sa.text(
                    """WITH added AS (
                           INSERT INTO streams (instrument_id, depth) VALUES (:i, :d)
                           ON CONFLICT DO NOTHING RETURNING id)
                       SELECT id FROM added
                       UNION ALL SELECT id FROM streams WHERE instrument_id = :i AND depth = :d"""
                ),
                {"i": iid, "d": stream.depth},
            ).scalar_one()
        self._stream_ids[stream] = int(sid)
        return int(sid)

    def _stream_id(self, stream: StreamKey) -> int:
        sid = self._stream_ids.get(stream)
        return sid if sid is not None else self.register_stream(stream)

    # ---- the writer thread

    def start(self) -> None:
        with self.engine.begin() as conn:
            self._maintain_partitions(conn)
        if self.journal is not None:
            self.journal.check_writable()  # now, not at the first outage
            if self.journal.adopt_orphans():
                self._note_journal()
        self._thread = threading.Thread(
            target=self._run_guarded, name="depthwatch-writer", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Flush everything pending and stop; False if rows remain unwritten."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        left = self.pending_rows + len(self._events)
        if left:
            log.error("writer stopped with %d rows not written", left)
        journaled = self.journal_bytes
        if self.journal is not None and not (self._thread and self._thread.is_alive()):
            if journaled:
                log.error(
                    "%.1f MB of rows are not in the database: they wait in the journal %s "
                    "for the next start on this machine (lost if its disk is discarded, "
                    "as on a Render redeploy)",
                    journaled / 1e6,
                    self.journal.directory,
                )
            self.journal.close()
        return left == 0 and not journaled

    def flush_now(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything added so far is committed, held messages and
        open seconds of tops included (tests; shutdown uses stop)."""
        deadline = time.monotonic() + timeout_s
        self._draining = True
        try:
            while (
                self.pending_rows
                or self._events
                or self._flushing
                or self.journal_bytes
                or self._packer.unwritten_seconds
            ):
                if time.monotonic() > deadline:
                    return False
                self._wake.set()
                time.sleep(0.01)
            return True
        finally:
            self._draining = False

    def flush_once(self, timeout_s: float = 10.0) -> bool:
        """Wake the writer for one flush as its timer makes it (messages not
        yet due stay held, open seconds stay open) and wait for its end. For
        bench/record_paced.py, which replays time faster than the timer."""
        deadline = time.monotonic() + timeout_s
        cycles = self.flush_cycles
        self._wake.set()
        while self.flush_cycles == cycles:
            if time.monotonic() > deadline or self.failed:
                return False
            time.sleep(0.0002)
        return True

    # Set by flush_now while it waits: take every held message and write
    # every open second.
    _draining = False
    flush_cycles = 0  # wake-ups of the writer thread that ran to the end

    _flushing = False
    failed = False  # the writer thread died: nothing more can be written

    def _run_guarded(self) -> None:
        """A bug (or a disk error) must not leave a collector that reads on
        while nothing is written: say so, refuse room, and let the collector
        exit non-zero (a supervisor restarts it; the journal is picked up)."""
        try:
            self._run()
        except Exception:
            log.exception("the writer failed; no more rows can be written")
            self.failed = True
            self._spilling = False

    def _run(self) -> None:
        conn: sa.Connection | None = None
        backoff = 0.5
        cycle_started = time.monotonic()
        while True:
            # The interval runs from the start of one flush to the start of the
            # next, so a slow flush does not add a full interval of waiting.
            self._wake.wait(
                max(0.0, cycle_started + self.config.flush_interval_s - time.monotonic())
            )
            self._wake.clear()
            cycle_started = time.monotonic()
            while True:
                if (
                    self._stopping.is_set()
                    and self.journal_bytes
                    and self._stop_deadline_passed(STOP_DRAIN_S)
                ):
                    # Stopping while a journal drains: drain while the shutdown
                    # delay allows, then queue what is in memory behind the
                    # rest, in order, for the next start on this machine.
                    self._spill(everything=True)
                    return
                self._flushing = True
                batch = self._held = self._next_batch()
                if batch.empty:
                    self._held = None
                    self._flushing = False
                    break
                conn, written = self._flush(conn, batch)
                if not written:  # keep it held; back off, then try again
                    self._outage = True
                    if batch.journal is not None:
                        self._held = None  # it stays on disk; read again for the retry
                    if self._stopping.is_set():
                        if self._stop_deadline_passed(STOP_RETRY_S):
                            self._spill(everything=True)
                            return
                        self._wait_spilling(0.2, stopping=True)
                    else:
                        self._wait_spilling(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                self._outage = False
                self._log_recovery()
                self._held = None
                if batch.journal is not None and self.journal is not None:
                    self.journal.consume(batch.journal)
                    self._note_journal()
                backoff = 0.5
                self._spill()
                if (
                    not self.journal_bytes
                    and self.pending_rows - self._held_back < self.config.batch_rows
                ):
                    break
            self.flush_cycles += 1
            drained = not (
                self.pending_rows
                or self._events
                or self.journal_bytes
                or self._packer.unwritten_seconds
            )
            if self._stopping.is_set() and drained:
                self._discard(conn)
                return
            if time.monotonic() - self._last_maintenance > 3600:
                self._run_maintenance()

    def _flush(
        self, conn: sa.Connection | None, batch: _Batch
    ) -> tuple[sa.Connection | None, bool]:
        """Write one batch; returns the connection to keep and whether it was written.
        The caller set `_flushing` before taking the batch; this clears it."""
        try:
            if conn is None:
                conn = self._connect()
            started = time.monotonic()
            try:
                inserted = self._write(conn, batch)
            except Exception as exc:
                if _is_outage(exc):
                    raise
                log.exception("a batch holds a row PostgreSQL refuses; writing rows singly")
                self._discard(conn)
                conn = self._connect()
                self._write_singly(conn, batch)
                return conn, True
            duplicates = {t: len(lines) - inserted.get(t, 0) for t, lines in batch.rows.items()}
            self._record_success(batch, inserted, duplicates, batch.book_local_us)
            log.debug(
                "flushed %d rows in %.0f ms (%d pending)",
                batch.size,
                (time.monotonic() - started) * 1000,
                self.pending_rows,
            )
            return conn, True
        except Exception as exc:  # the database is unreachable: keep the batch, retry
            self.stats.flush_failures += 1
            self._log_failure(batch.size, first_line(exc))
            self._discard(conn)
            # A partition may have been dropped under us (retention of another
            # collector, an operator): forget what we knew; the retry re-ensures
            # the days of its own rows.
            self._known_days.clear()
            return None, False
        finally:
            self._flushing = False

    _outage_started: float | None = None
    _outage_logged = 0.0
    _outage_failures = 0

    def _log_failure(self, rows: int, reason: str) -> None:
        """One line when an outage starts, then one every 30 s, not one per retry."""
        now = time.monotonic()
        self._outage_failures += 1
        if self._outage_started is None:
            self._outage_started = self._outage_logged = now
            log.error("flush of %d rows failed (%s); will retry", rows, reason)
        elif now - self._outage_logged >= 30.0:
            self._outage_logged = now
            log.error(
                "database still unreachable after %.0f s (%d failed flushes; %s); "
                "journal %.1f MB, %d rows dropped",
                now - self._outage_started,
                self._outage_failures,
                reason,
                self.journal_bytes / 1e6,
                self.stats.rows_dropped,
            )

    def _log_recovery(self) -> None:
        if self._outage_started is not None:
            log.warning(
                "database reachable again after %.1f s (%d failed flushes)",
                time.monotonic() - self._outage_started,
                self._outage_failures,
            )
            self._outage_started, self._outage_failures = None, 0

    _stop_started: float | None = None

    def _stop_deadline_passed(self, seconds: float) -> bool:
        """Whether `seconds` have passed since the stop began: a stop must end
        within the shutdown delay, with a dead database or a long journal."""
        if self._stop_started is None:
            self._stop_started = time.monotonic()
        return time.monotonic() - self._stop_started > seconds

    def _connect(self) -> sa.Connection:
        conn = self.engine.connect()
        for table in COLUMNS:
            conn.execute(
                sa.text(
                    f"CREATE TEMP TABLE IF NOT EXISTS stage_{table} "
                    f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                )
            )
        conn.commit()
        return conn

    @staticmethod
    def _discard(conn: sa.Connection | None) -> None:
        """Close a connection that may be broken; always returns None."""
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except Exception:
                pass

    def _next_batch(self) -> _Batch:
        """What to write next, oldest first: a batch whose flush failed (again,
        re-ensuring every partition: one may have been dropped under it), then
        the journal, then the queues."""
        if self._held is not None:
            self._held.days = self._held.row_days()
            return self._held
        if self.journal is not None and self.journal_bytes:
            journaled = self.journal.read(MAX_BATCH_ROWS)
            if journaled is not None:
                return _Batch.from_journal(journaled, self._known_days)
            self._note_journal()
        return self._take_batch()

    def _take_batch(self, everything: bool = False) -> _Batch:
        limit = MAX_BATCH_ROWS
        book_count = len(self._book_rows) if everything else min(limit, len(self._book_rows))
        book = [self._book_rows.popleft() for _ in range(book_count)]
        now = self._clock()
        final = everything or self._stopping.is_set() or self._draining
        self._held_back = 0
        if not final:
            book, held = split_due(
                book,
                now,
                int(self.config.chunk_hold_s * 1e6),
                self.config.chunk_messages,
            )
            # Back at the front, in order: still queued (and journaled in an outage).
            self._book_rows.extendleft(reversed(held))
            self._held_back = len(held)
        snapshots = [self._snapshots.popleft() for _ in range(len(self._snapshots))]
        rows = {
            table: [q.popleft() for _ in range(len(q) if everything else min(limit, len(q)))]
            for table, q in self._rows.items()
        }
        packed = self._packer.pack(book, snapshots, now, final)
        rows.update(packed.lines)
        for reason in packed.rejected:
            self.stats.rows_rejected += 1
            log.error("rejected a book message that cannot be stored: %s", reason)
        events = [self._events.popleft() for _ in range(len(self._events))]
        # Days are read after the rows: a row's day is noted before its row is queued.
        days = set(self._seen_days) - self._known_days
        return _Batch(
            rows,
            packed.book_local_us,
            [self._feed_event_row(e) for e in events if isinstance(e, FeedEvent)],
            [asdict(e) for e in events if isinstance(e, CollectorHeartbeat)],
            days,
        )

    def _feed_event_row(self, event: FeedEvent) -> dict[str, object]:
        return {
            "local_us": event.local_us,
            "collector": self.config.collector_id,
            "connection": event.connection.replace("\x00", ""),
            "kind": str(event.kind),
            "category": event.category,
            "symbol": event.symbol,
            "depth": event.depth,
            # PostgreSQL text cannot hold NUL, which a server's close reason may.
            "detail": event.detail.replace("\x00", ""),
        }

    # ---- the journal: rows the database cannot take yet

    def _note_journal(self) -> None:
        self.journal_bytes = self.journal.pending_bytes if self.journal is not None else 0
        self._spilling = self.journal is not None and (self._outage or self.journal_bytes > 0)

    def _wait_spilling(self, seconds: float, stopping: bool = False) -> None:
        """Wait out a backoff while moving rows that pile up to the journal."""
        deadline = time.monotonic() + seconds
        while stopping or not self._stopping.is_set():
            self._spill()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.2, left)) if stopping else self._stopping.wait(min(0.2, left))

    def _spill(self, everything: bool = False) -> None:
        """While the database is unreachable or the journal is not yet drained,
        move the queues (oldest first, after a held batch from the queues) to the
        journal once they exceed `spill_rows`; `everything` at a stop that cannot
        reach the database. A full journal makes the readers refuse new rows
        (see `_refuse`); what was queued before that still goes to the journal,
        so the cap can be passed by at most one spill."""
        self._note_journal()
        journal = self.journal
        if journal is None:
            return
        if not journal.has_room(0) and not self._dropping:
            self._dropping = True
            log.error(
                "journal full (%.0f MB in %s): new rows are dropped; each stream's gap is "
                "recorded and it resyncs once there is room",
                journal.max_bytes / 1e6,
                journal.directory,
            )
        elif self._dropping and journal.has_room(journal.max_bytes // 10):
            self._dropping = False
            log.warning("journal has room again: streams that lost rows resync")
        if not (self._spilling or everything):
            return
        if not everything and self._queued_rows < self.config.spill_rows:
            return
        batches = []
        if self._held is not None and self._held.journal is None:
            batches.append(self._held)  # older than the queues: it goes first
        self._held = None
        batches.append(self._take_batch(everything=True))
        try:
            journal.append([record for batch in batches for record in batch.journal_records()])
        except OSError:
            # A full or failing disk: keep the rows in memory, held, oldest
            # first, rather than lose them; the journal is tried again later.
            log.exception(
                "journal append failed; %d rows stay in memory", sum(b.size for b in batches)
            )
            self._held = _Batch.merged(batches)
            return
        self.stats.rows_journaled += sum(b.size for b in batches)
        self._note_journal()

    def _write(self, conn: sa.Connection, batch: _Batch) -> dict[str, int]:
        """Write the batch in one transaction; returns the rows inserted per
        table (the rest were already stored). Every table is COPYd straight
        in: one round trip each. If a row is already stored (an overlapping
        collector, a retried flush, a second of tops written again), the
        transaction is redone with every table through its staging table,
        which skips or merges what is there (CONFLICT_ACTIONS)."""
        try:
            return self._write_tables(conn, batch, staged=False)
        except psycopg2.errors.UniqueViolation:
            return self._write_tables(conn, batch, staged=True)

    def _write_tables(self, conn: sa.Connection, batch: _Batch, staged: bool) -> dict[str, int]:
        inserted: dict[str, int] = {}
        with conn.begin():
            if batch.days:
                schema.ensure_partitions(conn, batch.days)
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            for table, lines in batch.rows.items():
                if not lines:
                    continue
                if staged:
                    inserted[table], messages = self._copy_staged(cursor, table, lines)
                    if inserted[table] < len(lines):
                        self.stats.copies_with_duplicates += 1
                else:
                    sql = f"COPY {table} ({COLUMNS[table]}) FROM STDIN"
                    _copy_from(cursor, sql, "".join(lines))
                    inserted[table] = len(lines)
                    messages = sum(map(_chunk_size, lines)) if table == "book_chunks" else 0
                if table == "book_chunks":
                    inserted[MESSAGES] = messages
            self._write_events(conn, batch.feed_events, batch.heartbeats, begun=True)
        return inserted

    @staticmethod
    def _write_events(
        conn: sa.Connection,
        feed_events: list[dict[str, object]],
        heartbeats: list[dict[str, object]],
        begun: bool = False,
    ) -> None:
        """Insert heartbeats and feed events (in the caller's transaction when
        `begun`, else in one of their own); both idempotent."""
        with contextlib.nullcontext() if begun else conn.begin():
            if heartbeats:
                conn.execute(
                    sa.text(
                        f"INSERT INTO collector_heartbeats ({_HEARTBEAT_COLUMNS}) "
                        f"VALUES ({', '.join(':' + c for c in _HEARTBEAT_FIELDS)}) "
                        "ON CONFLICT DO NOTHING"
                    ),
                    heartbeats,
                )
            if feed_events:
                # Feed events have no natural key; one identical in every column
                # is the same event written again (a retried commit, a replay).
                conn.execute(
                    sa.text(
                        """INSERT INTO feed_events
                           (local_us, collector, connection, kind, category, symbol, depth, detail)
                           SELECT :local_us, :collector, :connection, :kind, :category,
                                  :symbol, :depth, :detail
                           WHERE NOT EXISTS (
                               SELECT 1 FROM feed_events
                               WHERE local_us = :local_us AND collector = :collector
                                 AND connection = :connection AND kind = :kind
                                 AND category = :category
                                 AND symbol IS NOT DISTINCT FROM :symbol
                                 AND depth IS NOT DISTINCT FROM CAST(:depth AS smallint)
                                 AND detail = :detail)"""
                    ),
                    feed_events,
                )

    @staticmethod
    def _copy_staged(cursor: object, table: str, lines: list[str]) -> tuple[int, int]:
        """COPY into the table's staging table, then insert what is not there
        yet (or merge, CONFLICT_ACTIONS). Returns how many rows were inserted
        and, for book chunks, how many messages those rows hold."""
        columns = COLUMNS[table]
        _copy_from(cursor, f"COPY stage_{table} ({columns}) FROM STDIN", "".join(lines))
        action = CONFLICT_ACTIONS.get(table, "ON CONFLICT DO NOTHING")
        cursor.execute(  # type: ignore[attr-defined]
            f"INSERT INTO {table} AS t ({columns}) SELECT {columns} FROM stage_{table} "
            f"{action}" + (" RETURNING n" if table == "book_chunks" else "")
        )
        inserted = cursor.rowcount  # type: ignore[attr-defined]
        returned = cursor.fetchall() if table == "book_chunks" else []  # type: ignore[attr-defined]
        messages = sum(n for (n,) in returned) if table == "book_chunks" else inserted
        # Each stage is emptied at commit (ON COMMIT DELETE ROWS) or by rollback.
        return int(inserted), int(messages)

    def _write_singly(self, conn: sa.Connection, batch: _Batch) -> None:
        """Slow path for a batch with a bad row: each row in its own transaction,
        so one refused row costs only itself (logged and counted). Written and
        duplicate rows, and book messages' latencies, are counted as on the fast path."""
        if batch.days:
            with conn.begin():
                schema.ensure_partitions(conn, batch.days)
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        inserted = dict.fromkeys(batch.rows, 0)
        duplicates = dict.fromkeys(batch.rows, 0)
        book_local_us: list[int] = []
        for table, lines in batch.rows.items():
            for i, line in enumerate(lines):
                try:
                    with conn.begin():
                        rows, messages = self._copy_staged(cursor, table, [line])
                    if rows:
                        inserted[table] += 1
                        if table == "book_chunks":
                            inserted[MESSAGES] = inserted.get(MESSAGES, 0) + messages
                    else:
                        duplicates[table] += 1
                        continue
                except Exception as exc:
                    self.stats.rows_rejected += 1
                    log.error("rejected %s row %r: %s", table, line[:200], exc)
                    continue
                if table == "book_events":
                    book_local_us.append(batch.book_local_us[i])
                elif table == "book_chunks":
                    book_local_us += _chunk_receive_times(line)
        batch.feed_events = [e for e in batch.feed_events if self._write_alone(conn, [e], [])]
        for heartbeat in batch.heartbeats:
            self._write_alone(conn, [], [heartbeat])
        self._record_success(batch, inserted, duplicates, book_local_us)

    def _write_alone(
        self,
        conn: sa.Connection,
        feed_events: list[dict[str, object]],
        heartbeats: list[dict[str, object]],
    ) -> bool:
        """One event in its own transaction; False if PostgreSQL refused it
        (logged and counted). An outage is raised: the batch is retried."""
        try:
            self._write_events(conn, feed_events, heartbeats)
            return True
        except Exception as exc:
            if _is_outage(exc):
                raise
            self.stats.rows_rejected += 1
            log.error("rejected event %r: %s", (feed_events or heartbeats)[0], exc)
            return False

    def _record_success(
        self,
        batch: _Batch,
        inserted: dict[str, int],
        duplicates: dict[str, int],
        book_local_us: list[int],
    ) -> None:
        """Count a committed batch: rows inserted, rows already stored, and the
        receive-to-commit latency of its book events (those refused excepted)."""
        self._known_days |= batch.days
        self.stats.flushes += 1
        for table in batch.rows:
            self.stats.rows_written[table] += inserted.get(table, 0)
            self.stats.rows_duplicate[table] += duplicates.get(table, 0)
        # Book messages: those in chunks, and legacy rows of one message each.
        held = sum(map(_chunk_size, batch.rows.get("book_chunks", ()))) + len(
            batch.rows.get("book_events", ())
        )
        written = inserted.get(MESSAGES, 0) + inserted.get("book_events", 0)
        self.stats.book_messages_written += written
        self.stats.book_messages_duplicate += held - written
        self.stats.feed_events_written += len(batch.feed_events)
        committed = now_us()
        latencies = [committed - local for local in book_local_us]
        self.stats.latencies_us.extend(latencies)
        self._recent_latencies_us.extend(latencies)

    def _maintain_partitions(self, conn: sa.Connection) -> None:
        today = now_us() // schema.DAY_US
        days = set(range(today - 1, today + self.config.partitions_ahead_days + 1))
        schema.ensure_partitions(conn, days)
        self._known_days |= days
        schema.drop_expired_partitions(conn, self.config.retention_days, now_us())
        if self.config.retention_days > 0:
            # Forget dropped days on both sides, or the next batch's "days not yet
            # known" would re-create the partitions retention just dropped.
            cutoff = today - self.config.retention_days
            self._known_days = {d for d in self._known_days if d >= cutoff}
            self._seen_days = {d for d in self._seen_days if d >= cutoff}
        self._last_maintenance = time.monotonic()

    def _run_maintenance(self) -> None:
        try:
            with self.engine.begin() as conn:
                self._maintain_partitions(conn)
        except Exception:
            log.exception("partition maintenance failed")
            self._last_maintenance = time.monotonic()


_HEARTBEAT_FIELDS = tuple(f.name for f in fields(CollectorHeartbeat))
_HEARTBEAT_COLUMNS = ", ".join(_HEARTBEAT_FIELDS)


# The key of `inserted` counting the book messages in the chunks inserted.
MESSAGES = "book_messages"


def _chunk_size(line: str) -> int:
    """Messages in a book_chunks COPY line (its `n` column)."""
    return int(line.split("\t", 4)[3])


# Journal record tags of the two event kinds (table rows are tagged by table).
FEED_EVENTS = "feed_events"
HEARTBEATS = "collector_heartbeats"


@dataclass
class _Batch:
    rows: dict[str, list[str]]
    book_local_us: list[int]
    feed_events: list[dict[str, object]]  # parameter rows for the INSERT
    heartbeats: list[dict[str, object]]
    days: set[int]
    journal: JournalBatch | None = None  # where it was read from; consumed on commit

    @property
    def size(self) -> int:
        rows = sum(len(lines) for lines in self.rows.values())
        return rows + len(self.feed_events) + len(self.heartbeats)

    @classmethod
    def merged(cls, batches: list[_Batch]) -> _Batch:
        """One batch of several, in order (none read from the journal)."""
        rows: dict[str, list[str]] = {table: [] for table in COLUMNS}
        for batch in batches:
            for table, lines in batch.rows.items():
                rows[table] += lines
        return cls(
            rows,
            [local for b in batches for local in b.book_local_us],
            [event for b in batches for event in b.feed_events],
            [beat for b in batches for beat in b.heartbeats],
            set().union(*(b.days for b in batches)),
        )

    def journal_records(self) -> list[tuple[str, str]]:
        return (
            [(table, line) for table, lines in self.rows.items() for line in lines]
            + [(FEED_EVENTS, json.dumps(e) + "\n") for e in self.feed_events]
            + [(HEARTBEATS, json.dumps(h) + "\n") for h in self.heartbeats]
        )

    @classmethod
    def from_journal(cls, journaled: JournalBatch, known_days: set[int]) -> _Batch:
        rows: dict[str, list[str]] = {table: [] for table in COLUMNS}
        feed_events: list[dict[str, object]] = []
        heartbeats: list[dict[str, object]] = []
        for table, line in journaled.records:
            if table == FEED_EVENTS:
                feed_events.append(json.loads(line))
            elif table == HEARTBEATS:
                heartbeats.append(json.loads(line))
            else:
                rows[table].append(line)
        local = [int(line.split("\t", 4)[3]) for line in rows["book_events"]]
        batch = cls(rows, local, feed_events, heartbeats, set(), journaled)
        batch.days = batch.row_days() - known_days
        return batch

    @property
    def empty(self) -> bool:
        return self.size == 0

    def row_days(self) -> set[int]:
        """The days (partitions) the batch's rows fall on, read back from the
        COPY lines' exchange-time column: only needed when a flush is retried."""
        return {
            int(line.split("\t", TS_COLUMN[table] + 1)[TS_COLUMN[table]]) // schema.DAY_US
            for table, lines in self.rows.items()
            for line in lines
        }
