"""What a BatchWriter is configured with, counts, and holds.

`WriterConfig` and `WriterStats` are public (the collector builds the one and
reports the other). `WriterState` is every field of a `BatchWriter`, declared
in one place with the thread that writes it: the readers' thread (the event
loop, intake.py) appends to the queues, the writer thread (flush.py, tables.py)
takes from them and owns the rest unless a field says otherwise. Two figures
both threads read, `pending_rows` and `_queued_rows`, are here too.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from depthwatch.clock import now_us
from depthwatch.records import (
    BookUpdate,
    CollectorHeartbeat,
    DepthSnapshot,
    FeedEvent,
    Quote,
    StreamKey,
)
from depthwatch.storage.write.batch import COLUMNS, Batch
from depthwatch.storage.write.journal import DEFAULT_MAX_BYTES, Journal
from depthwatch.storage.write.packing import BookPacker

# Every part of the writer logs under the name it had as one module, so its
# log lines (which carry the name) and any filter on them stay the same.
WRITER_LOGGER = "depthwatch.storage.writer"

# Tables whose rows the readers' thread queues as COPY lines; book messages and
# depth snapshots are queued as records and packed by the writer thread.
QUEUED_AS_LINES = ("book_checkpoints", "trades", "book_bounds", "book_profiles")


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
    # Readers wait beyond this (back-pressure; rows `split_due` holds back are
    # not counted): about a seventh of a second of the writer's work flat
    # out, which with the batch being packed meanwhile is most of a message's
    # receive-to-commit time then. Deeper, a burst only queues longer
    # (latency, memory: a queued message is an object of ~2 KB) while the
    # reader thread takes the GIL time the writer needs to catch up: at
    # 25,000, p99 1.3 s and 206 MB flat out, against 0.3 s and 130 MB
    # (BENCHMARKS.md, issue 19). At a real pace it is seconds of traffic.
    max_pending_rows: int = 6_000
    retention_days: int = 0  # 0 keeps everything
    # An archive is configured (DEPTHWATCH_ARCHIVE_URL): retention drops a day
    # only once every stream of it is archived as it is now.
    retention_waits_for_archive: bool = False
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
        return percentiles_ms(self.latencies_us, quantiles)


def percentiles_ms(latencies_us: Iterable[int], quantiles: Iterable[float]) -> list[float]:
    ordered = sorted(latencies_us)
    if not ordered:
        return [float("nan") for _ in quantiles]
    return [ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000 for q in quantiles]


class WriterState:
    """The fields of a BatchWriter, shared by its intake, flush and tables parts."""

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
        self._held: Batch | None = None  # taken from the queues, not yet committed
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

    # Book rows the last flush left queued (not due yet): they do not make
    # the next flush come sooner. Written by the writer thread only.
    _held_back = 0

    # Set by flush_now while it waits: take every held message and write
    # every open second.
    _draining = False
    flush_cycles = 0  # wake-ups of the writer thread that ran to the end

    _flushing = False
    failed = False  # the writer thread died: nothing more can be written

    # An outage as the writer thread logs it (flush.py, `_log_failure`).
    _outage_started: float | None = None
    _outage_logged = 0.0
    _outage_failures = 0

    _stop_started: float | None = None  # when the writer thread first saw the stop

    @property
    def pending_rows(self) -> int:
        """Rows received and not yet committed: queued, or held by a failed flush."""
        held_batch = self._held  # one read: the writer thread may clear it meanwhile
        held = held_batch.size if held_batch is not None else 0
        return held + self._queued_rows

    @property
    def _due_rows(self) -> int:
        """pending_rows but those `split_due` holds back for slow streams, which
        wait for time to pass, not for the writer."""
        return self.pending_rows - self._held_back

    @property
    def _queued_rows(self) -> int:
        return (
            len(self._book_rows)
            + len(self._snapshots)
            + sum(len(rows) for rows in self._rows.values())
        )

    def _stream_id(self, stream: StreamKey) -> int:
        """A stream's id, registering it if new: intake.py's, which the packer
        asks for the id of every stream it writes."""
        raise NotImplementedError
