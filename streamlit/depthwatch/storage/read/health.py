"""The Health page's reads: collectors heard from, commit latency, what the
database holds, what the archive holds (schema 5), and whether the database
is a replica, how far behind its primary."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa

from depthwatch.clock import DAY_US


def collectors(conn: sa.Connection, since_us: int) -> pd.DataFrame:
    """The newest heartbeat of every collector heard from since `since_us`."""
    rows = conn.execute(
        sa.text(
            """SELECT DISTINCT ON (collector)
                      collector, host, pid, version, started_us, local_us, interval_s, simulated,
                      endpoint, retention_days, messages, messages_per_s, pending_rows,
                      flush_failures, commit_p50_ms, commit_p99_ms,
                      array_to_string(streams, ', ') AS streams,
                      cardinality(valid_streams) AS valid, cardinality(streams) AS total
               FROM collector_heartbeats
               WHERE local_us >= :s
               ORDER BY collector, local_us DESC"""
        ),
        {"s": since_us},
    )
    return pd.DataFrame(rows.all(), columns=list(rows.keys()))


def commit_p99_ms(conn: sa.Connection, collector: str, since_us: int) -> float | None:
    """A collector's worst per-heartbeat receive-to-commit p99 since `since_us`."""
    value = conn.execute(
        sa.text(
            """SELECT max(commit_p99_ms) FROM collector_heartbeats
               WHERE collector = :c AND local_us >= :s"""
        ),
        {"c": collector, "s": since_us},
    ).scalar()
    return None if value is None else float(value)


SIZED_TABLES = (
    "book_chunks",
    "top_seconds",
    "top_snapshots",
    "book_events",
    "quotes",
    "depth_snapshots",
    "book_checkpoints",
    "trades",
    "feed_events",
    "collector_heartbeats",
    "instruments",
    "streams",
)


def table_sizes(conn: sa.Connection) -> pd.DataFrame:
    """Bytes on disk per table, partitions and indexes included."""
    rows = conn.execute(
        sa.text(
            # pg_partition_tree lists a partitioned table's parts; a plain table
            # gets no rows there and is sized directly.
            """SELECT t.name,
                      coalesce((SELECT sum(pg_total_relation_size(p.relid))
                                FROM pg_partition_tree(to_regclass(t.name)) p),
                               pg_total_relation_size(to_regclass(t.name)))::bigint
               FROM unnest(CAST(:tables AS text[])) AS t(name)
               ORDER BY 2 DESC"""
        ),
        {"tables": list(SIZED_TABLES)},
    ).all()
    return pd.DataFrame(rows, columns=["table", "bytes"])


def oldest_snapshot_us(conn: sa.Connection, partitions: list[str]) -> int | None:
    """Exchange time of the oldest periodic snapshot, looked up partition by
    partition from the oldest (the first non-empty one answers)."""
    quote = conn.dialect.identifier_preparer.quote_identifier
    for name in partitions:
        value = conn.execute(
            # A table name cannot be a bound parameter. The names come from the
            # catalogue (schema.partition_name), and are quoted anyway: whatever
            # a caller passes is one identifier, never more SQL.
            sa.text(f"SELECT min(ts_us) FROM {quote(name)}")
        ).scalar()
        if value is not None:
            return int(value)
    return None


def archive_by_stream(conn: sa.Connection, days: list[int]) -> pd.DataFrame:
    """Per stream: its last archived day, days archived, their bytes, and of
    the finished `days` held in the database those with book messages and no
    archived_days row (waiting). One probe per stream and day, on the packed
    log's key."""
    rows = conn.execute(
        sa.text(
            """WITH probe AS (
                   SELECT s.id AS stream_id, d.day,
                          EXISTS (SELECT 1 FROM book_chunks c
                                  WHERE c.stream_id = s.id
                                    AND c.ts_us >= d.day::bigint * :day_us
                                    AND c.ts_us < (d.day::bigint + 1) * :day_us) AS recorded
                   FROM streams s CROSS JOIN unnest(CAST(:days AS integer[])) AS d(day))
               SELECT i.category, i.symbol, s.depth,
                      (SELECT max(a.day) FROM archived_days a WHERE a.stream_id = s.id),
                      (SELECT count(*) FROM archived_days a WHERE a.stream_id = s.id),
                      (SELECT coalesce(sum(a.bytes), 0) FROM archived_days a
                       WHERE a.stream_id = s.id)::bigint,
                      (SELECT count(*) FROM probe p
                       WHERE p.stream_id = s.id AND p.recorded
                         AND NOT EXISTS (SELECT 1 FROM archived_days a
                                         WHERE a.stream_id = s.id AND a.day = p.day))
               FROM streams s JOIN instruments i ON i.id = s.instrument_id
               ORDER BY 1, 2, 3"""
        ),
        {"days": days, "day_us": DAY_US},
    ).all()
    columns = ["category", "symbol", "depth", "last_day", "days_archived", "bytes", "waiting"]
    return pd.DataFrame(rows, columns=columns)


def archive_runs(conn: sa.Connection) -> pd.DataFrame:
    """The newest archive run, and the newest that failed, if any."""
    rows = conn.execute(
        sa.text(
            """(SELECT started_us, ended_us, archive_url, days_archived, days_dropped,
                       kept, failure FROM archive_runs ORDER BY id DESC LIMIT 1)
               UNION ALL
               (SELECT started_us, ended_us, archive_url, days_archived, days_dropped,
                       kept, failure FROM archive_runs WHERE failure IS NOT NULL
                ORDER BY id DESC LIMIT 1)"""
        )
    )
    return pd.DataFrame(rows.all(), columns=list(rows.keys()))


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """A hot standby's replay: what it serves is `lag_s` seconds behind its
    primary (None: it has replayed no transaction since it started)."""

    lag_s: float | None
    paused: bool  # replay paused (pg_wal_replay_pause): the lag grows until resumed


def replica_state(conn: sa.Connection) -> ReplicaState | None:
    """None on a primary. On a hot standby (a streaming read replica), its
    replay lag: 0 once it has replayed all the WAL it received (an idle
    primary sends nothing to catch up on), else the time since the primary
    committed the last transaction replayed here. A standby cut off from its
    primary has nothing left to replay and reads 0: its data's age, and
    STALE, still tell. Every function is PUBLIC-executable, so a read-only
    role may ask."""
    row = conn.execute(
        sa.text(
            """SELECT pg_is_in_recovery(),
                      CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
                           ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())
                      END::float8,
                      -- CASE, not AND: only CASE promises the order, and this
                      -- function raises an error on a primary.
                      CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END"""
        )
    ).one()
    if not row[0]:
        return None
    return ReplicaState(None if row[1] is None else max(0.0, float(row[1])), bool(row[2]))
