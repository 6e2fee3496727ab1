"""The writer thread: when to flush, what a flush takes, and what a failure does.

The thread wakes every `flush_interval_s` (from the start of one flush to the
start of the next), sooner once `batch_rows` book rows are due, and takes a
batch, oldest first: a batch whose flush failed, then the journal, then the
queues (book messages not yet due stay queued, `split_due`; the packer turns
the rest into COPY lines). tables.py writes it. A batch that cannot be written
because the database is unreachable (`is_outage`) is kept and retried with
backoff; meanwhile queued rows beyond `spill_rows` move to the journal
(`_spill`), and after recovery the journal is written before the queues.
`stop` flushes everything within the shutdown delay, journaling what a dead
database cannot take; `flush_now` and `flush_once` wait for flushes (tests,
bench/record_paced.py).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict

import sqlalchemy as sa

from depthwatch.logs import first_line
from depthwatch.records import CollectorHeartbeat, FeedEvent
from depthwatch.storage.write.batch import Batch
from depthwatch.storage.write.packing import split_due
from depthwatch.storage.write.state import WRITER_LOGGER
from depthwatch.storage.write.tables import TableWrites, is_outage

log = logging.getLogger(WRITER_LOGGER)

# A stopping writer retries a dead database this long, then journals what it
# holds; it drains a journal this long, then queues the rest behind it. Both
# stay well inside the collector's final flush timeout.
STOP_RETRY_S = 5.0
# At most this many rows of a kind per flush (a backlog is written in steps).
MAX_BATCH_ROWS = 10_000
STOP_DRAIN_S = 8.0


class Flusher(TableWrites):
    """The writer thread of a BatchWriter, its start and its stop."""

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
                if not self.journal_bytes and self._due_rows < self.config.batch_rows:
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

    def _flush(self, conn: sa.Connection | None, batch: Batch) -> tuple[sa.Connection | None, bool]:
        """Write one batch; returns the connection to keep and whether it was written.
        The caller set `_flushing` before taking the batch; this clears it."""
        try:
            if conn is None:
                conn = self._connect()
            started = time.monotonic()
            try:
                inserted = self._write(conn, batch)
            except Exception as exc:
                if is_outage(exc):
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

    def _stop_deadline_passed(self, seconds: float) -> bool:
        """Whether `seconds` have passed since the stop began: a stop must end
        within the shutdown delay, with a dead database or a long journal."""
        if self._stop_started is None:
            self._stop_started = time.monotonic()
        return time.monotonic() - self._stop_started > seconds

    # ---- what a flush takes

    def _next_batch(self) -> Batch:
        """What to write next, oldest first: a batch whose flush failed (again,
        re-ensuring every partition: one may have been dropped under it), then
        the journal, then the queues."""
        if self._held is not None:
            self._held.days = self._held.row_days()
            return self._held
        if self.journal is not None and self.journal_bytes:
            journaled = self.journal.read(MAX_BATCH_ROWS)
            if journaled is not None:
                return Batch.from_journal(journaled, self._known_days)
            self._note_journal()
        return self._take_batch()

    def _take_batch(self, everything: bool = False) -> Batch:
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
        return Batch(
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
            self._held = Batch.merged(batches)
            return
        self.stats.rows_journaled += sum(b.size for b in batches)
        self._note_journal()
