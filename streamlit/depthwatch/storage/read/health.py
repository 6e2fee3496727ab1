"""The Health page's reads: collectors heard from, commit latency, what the
database holds."""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa


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
