"""Versioned schema, daily partitions and retention.

Every change to the schema is a new entry in MIGRATIONS; `upgrade` applies the
missing ones in one transaction under an advisory lock, so any number of
collectors (Render runs old and new side by side during a deploy) can start at
once against one database.

Timestamps are bigint microseconds since the epoch (the Tardis convention): exact,
cheap to COPY, and what the export writes. Time-series tables are partitioned by
day on the exchange timestamp `ts_us`.
"""

from __future__ import annotations

import calendar
import logging
import time
from dataclasses import dataclass

import sqlalchemy as sa

from depthwatch.clock import DAY_US
from depthwatch.storage import sql_functions

log = logging.getLogger(__name__)


# Arbitrary constants naming our advisory locks (pg_advisory_xact_lock takes a bigint).
SCHEMA_LOCK = 0x64657074_6801
PARTITION_LOCK = 0x64657074_6802
ARCHIVE_LOCK = 0x64657074_6803  # held by a `depthwatch archive` run for its whole length

PARTITIONED_TABLES = (
    "book_events",
    "quotes",
    "depth_snapshots",
    "trades",
    "book_checkpoints",
    "book_chunks",
    "top_snapshots",
    "top_seconds",
    "book_profiles",
)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


# The columns the schema 1-3 book tables (book_events, quotes, depth_snapshots,
# book_checkpoints) share: whose book a row is (instrument, depth), its
# exchange and receive times; and, in those holding levels, a book's levels as
# parallel numeric arrays. Part of migrations 1 and 2, so never changed: a new
# table writes its own columns.
_STREAM_ROW = """instrument_id integer NOT NULL,
                depth smallint NOT NULL,
                ts_us bigint NOT NULL,
                local_us bigint NOT NULL,"""
_LEVEL_ARRAYS = """bid_prices numeric[] NOT NULL,
                bid_sizes numeric[] NOT NULL,
                ask_prices numeric[] NOT NULL,
                ask_sizes numeric[] NOT NULL,"""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "instruments, book event log, quotes, depth snapshots, trades, feed events",
        (
            """CREATE TABLE instruments (
                id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                exchange text NOT NULL,
                category text NOT NULL,
                symbol text NOT NULL,
                tick_size numeric,
                UNIQUE (exchange, category, symbol))""",
            # Lossless log: every snapshot and delta applied to a valid book, with
            # its changed levels as parallel numeric arrays (one row per message:
            # narrow enough to COPY fast, exact to the digit).
            f"""CREATE TABLE book_events (
                {_STREAM_ROW}
                match_us bigint,
                u bigint NOT NULL,
                seq bigint NOT NULL,
                is_snapshot boolean NOT NULL,
                {_LEVEL_ARRAYS}
                PRIMARY KEY (instrument_id, depth, ts_us, u, is_snapshot)
            ) PARTITION BY RANGE (ts_us)""",
            f"""CREATE TABLE quotes (
                {_STREAM_ROW}
                u bigint NOT NULL,
                bid_price numeric,
                bid_size numeric,
                ask_price numeric,
                ask_size numeric,
                PRIMARY KEY (instrument_id, depth, ts_us, u)
            ) PARTITION BY RANGE (ts_us)""",
            f"""CREATE TABLE depth_snapshots (
                {_STREAM_ROW}
                u bigint NOT NULL,
                {_LEVEL_ARRAYS}
                PRIMARY KEY (instrument_id, depth, ts_us)
            ) PARTITION BY RANGE (ts_us)""",
            """CREATE TABLE trades (
                instrument_id integer NOT NULL,
                ts_us bigint NOT NULL,
                local_us bigint NOT NULL,
                trade_id text NOT NULL,
                side text NOT NULL CHECK (side IN ('buy', 'sell')),
                price numeric NOT NULL,
                size numeric NOT NULL,
                seq bigint,
                PRIMARY KEY (instrument_id, ts_us, trade_id)
            ) PARTITION BY RANGE (ts_us)""",
            # Per collector and connection, so not deduplicated: two overlapping
            # collectors each have their own connects and gaps.
            """CREATE TABLE feed_events (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                local_us bigint NOT NULL,
                collector text NOT NULL,
                connection text NOT NULL,
                kind text NOT NULL,
                category text NOT NULL,
                symbol text,
                depth smallint,
                detail text NOT NULL)""",
            "CREATE INDEX feed_events_local_us ON feed_events (local_us)",
        ),
    ),
    Migration(
        2,
        "book checkpoints: the whole book hourly, so rebuilds start close by",
        (
            f"""CREATE TABLE book_checkpoints (
                {_STREAM_ROW}
                u bigint NOT NULL,
                seq bigint NOT NULL,
                {_LEVEL_ARRAYS}
                PRIMARY KEY (instrument_id, depth, ts_us)
            ) PARTITION BY RANGE (ts_us)""",
        ),
    ),
    Migration(
        3,
        "dashboard: collector heartbeats, a registry of recorded streams",
        (
            # One row per collector every few seconds: the health page's source, and
            # how the live page tells a silent collector (STALE) or simulated data.
            """CREATE TABLE collector_heartbeats (
                collector text NOT NULL,
                local_us bigint NOT NULL,
                host text NOT NULL,
                pid integer NOT NULL,
                version text NOT NULL,
                started_us bigint NOT NULL,
                interval_s real NOT NULL,
                simulated boolean NOT NULL,
                endpoint text NOT NULL,
                retention_days integer NOT NULL,
                messages bigint NOT NULL,
                messages_per_s real NOT NULL,
                pending_rows integer NOT NULL,
                flush_failures integer NOT NULL,
                commit_p50_ms real,
                commit_p99_ms real,
                streams text[] NOT NULL,
                valid_streams text[] NOT NULL,
                PRIMARY KEY (collector, local_us))""",
            "CREATE INDEX collector_heartbeats_local_us ON collector_heartbeats (local_us)",
            # Which (instrument, depth) streams exist, without scanning the event log.
            """CREATE TABLE streams (
                instrument_id integer NOT NULL REFERENCES instruments (id),
                depth smallint NOT NULL,
                PRIMARY KEY (instrument_id, depth))""",
            """INSERT INTO streams (instrument_id, depth)
               SELECT DISTINCT instrument_id, depth FROM depth_snapshots
               ON CONFLICT DO NOTHING""",
            # The live page reads one stream's events of the last minutes.
            "CREATE INDEX feed_events_stream ON feed_events (symbol, local_us)",
        ),
    ),
    Migration(
        4,
        "packed storage: book chunks, packed top-N snapshots, per-second tops",
        (
            # A short id per stream keys the packed tables (4 bytes, not
            # instrument + depth with padding, in every row and index entry).
            "ALTER TABLE streams ADD COLUMN id integer GENERATED ALWAYS AS IDENTITY",
            "ALTER TABLE streams ADD CONSTRAINT streams_id_key UNIQUE (id)",
            """INSERT INTO streams (instrument_id, depth)
               SELECT DISTINCT instrument_id, depth FROM book_events
               ON CONFLICT DO NOTHING""",
            # The event log, packed (storage/codec.py): one row per stream per
            # flush, never crossing a second of exchange time. Two collectors
            # cut different chunks of the same messages; readers drop repeats.
            """CREATE TABLE book_chunks (
                stream_id integer NOT NULL,
                ts_us bigint NOT NULL,
                u bigint NOT NULL,
                n integer NOT NULL,
                snapshot boolean NOT NULL,
                payload bytea NOT NULL,
                PRIMARY KEY (stream_id, ts_us, u, n, snapshot)
            ) PARTITION BY RANGE (ts_us)""",
            # The dashboard's top-N books at the end of every second, packed the
            # same way (a chunk of one snapshot message).
            """CREATE TABLE top_snapshots (
                stream_id integer NOT NULL,
                ts_us bigint NOT NULL,
                payload bytea NOT NULL,
                PRIMARY KEY (stream_id, ts_us)
            ) PARTITION BY RANGE (ts_us)""",
            # Top of book per second of exchange time (the dashboard's series):
            # the last top of the second, the extremes within it, its messages.
            """CREATE TABLE top_seconds (
                stream_id integer NOT NULL,
                ts_us bigint NOT NULL,
                last_ts_us bigint NOT NULL,
                last_u bigint NOT NULL,
                bid float8,
                bid_size float8,
                ask float8,
                ask_size float8,
                bid_min float8,
                ask_max float8,
                spread_bps_max float8,
                messages integer NOT NULL,
                PRIMARY KEY (stream_id, ts_us)
            ) PARTITION BY RANGE (ts_us)""",
            # psql readers of the packed log (storage/sql_functions.py).
            *sql_functions.STATEMENTS,
        ),
    ),
    Migration(
        5,
        "archive: which stream-days are archived, and each archive run",
        (
            # One row per archived stream-day (storage/archived.py): the
            # database's counts when it was archived (a late row changes them),
            # and what its manifest says. The manifest in the archive is the
            # proof; this row is how the Health page and retention find it fast.
            """CREATE TABLE archived_days (
                stream_id integer NOT NULL REFERENCES streams (id),
                day integer NOT NULL,
                chunks bigint NOT NULL,
                messages bigint NOT NULL,
                legacy_events bigint NOT NULL,
                trades bigint NOT NULL,
                feed_events bigint NOT NULL,
                heartbeats bigint NOT NULL,
                files integer NOT NULL,
                bytes bigint NOT NULL,
                manifest_sha256 text NOT NULL,
                archive_url text NOT NULL,
                archived_us bigint NOT NULL,
                PRIMARY KEY (stream_id, day))""",
            """CREATE TABLE archive_runs (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                started_us bigint NOT NULL,
                ended_us bigint,
                archive_url text NOT NULL,
                days_archived integer NOT NULL DEFAULT 0,
                days_dropped integer NOT NULL DEFAULT 0,
                kept text,
                failure text)""",
        ),
    ),
    Migration(
        6,
        "whole books: where a book started from a cut REST snapshot is exact",
        (
            # One row per whole-book snapshot and per checkpoint after it
            # (records.BookBounds): a few rows an hour, so a plain table, kept
            # for good (days that left for the archive are read with them;
            # the archive's log does not carry them). NULL: that side whole.
            """CREATE TABLE book_bounds (
                stream_id integer NOT NULL REFERENCES streams (id),
                ts_us bigint NOT NULL,
                u bigint NOT NULL,
                local_us bigint NOT NULL,
                bid_floor numeric,
                ask_ceiling numeric,
                PRIMARY KEY (stream_id, ts_us, u))""",
        ),
    ),
    Migration(
        7,
        "whole books: a profile every few seconds for the dashboard",
        (
            # records.BookProfile: sizes per price bucket near the mid, drawn
            # and aggregated further in SQL by the Live page. Daily partitions,
            # dropped with the rest of their day; not archived (the log is).
            """CREATE TABLE book_profiles (
                stream_id integer NOT NULL,
                ts_us bigint NOT NULL,
                local_us bigint NOT NULL,
                u bigint NOT NULL,
                step float8 NOT NULL,
                bid_first bigint NOT NULL,
                bid_sizes real[] NOT NULL,
                ask_first bigint NOT NULL,
                ask_sizes real[] NOT NULL,
                PRIMARY KEY (stream_id, ts_us)
            ) PARTITION BY RANGE (ts_us)""",
        ),
    ),
)


def upgrade(engine: sa.Engine, target: int | None = None) -> int:
    """Apply missing migrations (up to `target`, default all); returns the
    schema version now in force."""
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
        conn.execute(
            sa.text(
                """CREATE TABLE IF NOT EXISTS depthwatch_schema (
                    version integer PRIMARY KEY,
                    description text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())"""
            )
        )
        current = conn.execute(
            sa.text("SELECT coalesce(max(version), 0) FROM depthwatch_schema")
        ).scalar_one()
        for migration in MIGRATIONS:
            if migration.version <= current or (target is not None and migration.version > target):
                continue
            log.info("applying schema migration %d: %s", migration.version, migration.description)
            for statement in migration.statements:
                conn.execute(sa.text(statement))
            conn.execute(
                sa.text("INSERT INTO depthwatch_schema (version, description) VALUES (:v, :d)"),
                {"v": migration.version, "d": migration.description},
            )
            current = migration.version
    return int(current)


def schema_version(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        exists = conn.execute(sa.text("SELECT to_regclass('depthwatch_schema')")).scalar()
        if exists is None:
            return 0
        version = conn.execute(sa.text("SELECT max(version) FROM depthwatch_schema")).scalar_one()
        return int(version or 0)


def partition_name(table: str, day: int) -> str:
    return f"{table}_d{time.strftime('%Y%m%d', time.gmtime(day * 86_400))}"


def lock_partitions(conn: sa.Connection) -> None:
    """Hold the partition lock until the caller's transaction ends: no
    partition is created or dropped meanwhile (collectors and the archive)."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": PARTITION_LOCK})


def ensure_partitions(conn: sa.Connection, days: set[int]) -> None:
    """Create the daily partitions (days since the epoch) of every time-series
    table. Runs in the caller's transaction, under a lock so concurrent
    collectors do not race on the same CREATE."""
    lock_partitions(conn)
    for day in sorted(days):
        for table in PARTITIONED_TABLES:
            # Identifiers cannot be bound parameters; both parts are ours (a fixed
            # table name and digits), never user input.
            conn.execute(
                sa.text(
                    f"CREATE TABLE IF NOT EXISTS {partition_name(table, day)} "
                    f"PARTITION OF {table} FOR VALUES FROM ({day * DAY_US}) "
                    f"TO ({(day + 1) * DAY_US})"
                )
            )


def existing_partition_days(conn: sa.Connection) -> set[int]:
    """Days for which any time-series table has a partition."""
    rows = conn.execute(
        sa.text(
            """SELECT parent.relname, child.relname
               FROM pg_inherits
               JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
               JOIN pg_class child ON child.oid = pg_inherits.inhrelid
               WHERE parent.relname = ANY(:tables)"""
        ),
        {"tables": list(PARTITIONED_TABLES)},
    ).all()
    days = set()
    for _parent, child in rows:
        stamp = child.rsplit("_d", 1)[-1]
        if stamp.isdigit():
            days.add(calendar.timegm(time.strptime(stamp, "%Y%m%d")) // 86_400)
    return days


def expired_days(conn: sa.Connection, retention_days: int, now_us: int) -> list[int]:
    """Days with partitions whose whole day ended more than `retention_days`
    ago, oldest first; none for 0 (keep everything)."""
    if retention_days <= 0:
        return []
    cutoff_day = now_us // DAY_US - retention_days
    return sorted(day for day in existing_partition_days(conn) if day < cutoff_day)


def drop_days(conn: sa.Connection, days: list[int], trim_before_day: int) -> list[str]:
    """Drop every time-series partition of `days`, and trim feed_events and
    collector_heartbeats (not partitioned) before `trim_before_day`: as long
    as a day's book is kept, so is what says where its record is incomplete
    (`depthwatch gaps`)."""
    lock_partitions(conn)
    dropped = []
    for day in days:
        for table in PARTITIONED_TABLES:
            name = partition_name(table, day)
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
            dropped.append(name)
    for table in ("feed_events", "collector_heartbeats"):
        conn.execute(
            sa.text(f"DELETE FROM {table} WHERE local_us < :cutoff"),
            {"cutoff": trim_before_day * DAY_US},
        )
    return dropped


def drop_expired_partitions(conn: sa.Connection, retention_days: int, now_us: int) -> list[str]:
    """Drop partitions whose whole day ended more than `retention_days` ago
    (drop_days, trimming events and heartbeats at the same cutoff). 0 keeps
    everything."""
    days = expired_days(conn, retention_days, now_us)
    if retention_days <= 0:
        return []
    dropped = drop_days(conn, days, now_us // DAY_US - retention_days)
    if dropped:
        log.info(
            "retention: dropped %d partitions older than %d days", len(dropped), retention_days
        )
    return dropped


def partitions_oldest_first(conn: sa.Connection, table: str) -> list[str]:
    """The daily partitions of one table; their names end in _dYYYYMMDD, so
    sorting by name sorts by day."""
    names = conn.execute(
        sa.text(
            """SELECT child.relname
               FROM pg_inherits
               JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
               JOIN pg_class child ON child.oid = pg_inherits.inhrelid
               WHERE parent.relname = :t"""
        ),
        {"t": table},
    ).scalars()
    return sorted(names)
