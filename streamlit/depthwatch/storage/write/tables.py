"""A Batch into the tables, in one transaction; partition upkeep.

Every table's COPY lines are COPYd straight in, one round trip each. A COPY
that meets a row already stored (an overlapping collector, a retried flush, a
replayed journal, a second of tops written again) makes the transaction be
redone with every table through a per-connection temp staging table and
`INSERT ... ON CONFLICT DO NOTHING` (or a merge, `CONFLICT_ACTIONS`): every
write is idempotent, and duplicates are counted apart. A batch holding a row
PostgreSQL refuses is written row by row (`_write_singly`), so that one row
costs only itself; `is_outage` tells that apart from a database that cannot be
reached, whose batch flush.py keeps and retries whole.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from dataclasses import fields

import psycopg2
import psycopg2.errors
import sqlalchemy as sa

from depthwatch.clock import now_us, utc_day
from depthwatch.records import CollectorHeartbeat
from depthwatch.storage import archived, schema
from depthwatch.storage.write.batch import COLUMNS, Batch, chunk_receive_times, chunk_size
from depthwatch.storage.write.state import WRITER_LOGGER, WriterState

log = logging.getLogger(WRITER_LOGGER)

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

# "no partition of relation ... found for row": a partition dropped under the
# writer (retention elsewhere, an operator); the retry re-creates it.
MISSING_PARTITION = "23514"


def is_outage(exc: BaseException) -> bool:
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


def _copy_from(cursor: object, sql: str, data: str) -> None:
    # One read of the whole buffer: psycopg2 takes the GIL for every chunk it
    # reads, and each take can wait a switch interval behind the busy event
    # loop, so small chunks (the 8 KiB default) cost hundreds of milliseconds.
    cursor.copy_expert(sql, io.StringIO(data), size=len(data) + 1)  # type: ignore[attr-defined]


_HEARTBEAT_FIELDS = tuple(f.name for f in fields(CollectorHeartbeat))
_HEARTBEAT_COLUMNS = ", ".join(_HEARTBEAT_FIELDS)


# The key of `inserted` counting the book messages in the chunks inserted.
MESSAGES = "book_messages"


class TableWrites(WriterState):
    """The database side of a BatchWriter, run on the writer thread."""

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

    def _write(self, conn: sa.Connection, batch: Batch) -> dict[str, int]:
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

    def _write_tables(self, conn: sa.Connection, batch: Batch, staged: bool) -> dict[str, int]:
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
                    messages = sum(map(chunk_size, lines)) if table == "book_chunks" else 0
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

    def _write_singly(self, conn: sa.Connection, batch: Batch) -> None:
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
                    book_local_us += chunk_receive_times(line)
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
            if is_outage(exc):
                raise
            self.stats.rows_rejected += 1
            log.error("rejected event %r: %s", (feed_events or heartbeats)[0], exc)
            return False

    def _record_success(
        self,
        batch: Batch,
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
        held = sum(map(chunk_size, batch.rows.get("book_chunks", ()))) + len(
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

    # ---- partitions: the days around today at start and hourly, retention

    def _maintain_partitions(self, conn: sa.Connection) -> None:
        today = now_us() // schema.DAY_US
        days = set(range(today - 1, today + self.config.partitions_ahead_days + 1))
        schema.ensure_partitions(conn, days)
        self._known_days |= days
        self._drop_expired(conn, today)
        if self.config.retention_days > 0:
            # Forget dropped days on both sides, or the next batch's "days not yet
            # known" would re-create the partitions retention just dropped.
            cutoff = today - self.config.retention_days
            self._known_days = {d for d in self._known_days if d >= cutoff}
            self._seen_days = {d for d in self._seen_days if d >= cutoff}
        self._last_maintenance = time.monotonic()

    def _drop_expired(self, conn: sa.Connection, today: int) -> None:
        """Retention: the days past `retention_days`, but with an archive
        configured only those whose every stream is archived as it is now."""
        days = schema.expired_days(conn, self.config.retention_days, now_us())
        trim_before = today - self.config.retention_days
        if self.config.retention_waits_for_archive:
            waiting = {day: archived.unarchived_streams(conn, day) for day in days}
            waiting = {day: streams for day, streams in waiting.items() if streams}
            for day, streams in waiting.items():
                log.info(
                    "retention: keeping %s: not archived yet (%s)",
                    utc_day(day * schema.DAY_US),
                    ", ".join(streams),
                )
            days = [day for day in days if day not in waiting]
            trim_before = min([trim_before, *waiting])
        if self.config.retention_days <= 0:
            return
        dropped = schema.drop_days(conn, days, trim_before)
        if dropped:
            log.info(
                "retention: dropped %d partitions older than %d days",
                len(dropped),
                self.config.retention_days,
            )

    def _run_maintenance(self) -> None:
        try:
            with self.engine.begin() as conn:
                self._maintain_partitions(conn)
        except Exception:
            log.exception("partition maintenance failed")
            self._last_maintenance = time.monotonic()
