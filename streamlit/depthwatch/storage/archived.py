"""The archive's record in the database (schema 5): what each stream-day
held, which stream-days are archived, and each `depthwatch archive` run.

A day's counts (`SourceCounts`) are the archive's way to notice late rows: a
journal drained hours after midnight adds chunks to a day, its counts no
longer match the ones archived, and the day is archived again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa

from depthwatch.clock import DAY_US, SECOND_US
from depthwatch.records import StreamKey
from depthwatch.storage.read.cursor import stream_batches
from depthwatch.storage.schema import ARCHIVE_LOCK

# A day is finished this long after its midnight: rows of its last seconds are
# committed by then (the writer's hold and flush take seconds). Rows later
# still (a journal drained hours on) are found by their counts.
SETTLE_US = 10 * 60 * SECOND_US


def finished_before(now: int) -> int:
    """The end of the last finished UTC day (its midnight, SETTLE_US ago at least)."""
    settled = now - SETTLE_US
    return settled - settled % DAY_US


@dataclass(frozen=True)
class SourceCounts:
    """What the database held for a stream-day: a late row changes one of them."""

    chunks: int = 0  # book_chunks rows (several collectors cut different chunks)
    messages: int = 0  # book messages in them
    legacy_events: int = 0  # schema 1-3 book_events rows
    trades: int = 0  # the instrument's trades
    feed_events: int = 0  # the symbol's connects, gaps, refusals (gaps read them)
    heartbeats: int = 0  # every collector's (gaps read them)

    @property
    def has_book(self) -> bool:
        return bool(self.chunks or self.legacy_events)


COUNT_NAMES = tuple(f.name for f in fields(SourceCounts))


def day_counts(
    conn: sa.Connection, before_us: int, since_us: int = 0
) -> dict[tuple[int, int], SourceCounts]:
    """SourceCounts per (stream id, day since the epoch) of every stream-day
    in [since_us, before_us) with a recorded book message. Grouped counts over
    the tables' primary keys: no payload is read."""
    day = {"day": DAY_US, "before": before_us, "since": since_us}
    books: dict[tuple[int, int], list[int]] = {}
    for sid, d, chunks, messages in conn.execute(
        sa.text(
            """SELECT stream_id, (ts_us / :day)::int, count(*), sum(n)
               FROM book_chunks WHERE ts_us >= :since AND ts_us < :before GROUP BY 1, 2"""
        ),
        day,
    ):
        books[(sid, d)] = [int(chunks), int(messages), 0]
    for sid, d, events in conn.execute(
        sa.text(
            """SELECT s.id, (e.ts_us / :day)::int, count(*)
               FROM book_events e JOIN streams s
                 ON s.instrument_id = e.instrument_id AND s.depth = e.depth
               WHERE e.ts_us >= :since AND e.ts_us < :before GROUP BY 1, 2"""
        ),
        day,
    ):
        books.setdefault((sid, d), [0, 0, 0])[2] = int(events)
    if not books:
        return {}
    streams = {
        int(sid): (int(iid), category, symbol)
        for sid, iid, category, symbol in conn.execute(
            sa.text(
                """SELECT s.id, s.instrument_id, i.category, i.symbol
                   FROM streams s JOIN instruments i ON i.id = s.instrument_id"""
            )
        )
    }
    trades = {
        (int(iid), int(d)): int(n)
        for iid, d, n in conn.execute(
            sa.text(
                """SELECT instrument_id, (ts_us / :day)::int, count(*)
                   FROM trades WHERE ts_us >= :since AND ts_us < :before GROUP BY 1, 2"""
            ),
            day,
        )
    }
    events = {
        (category, symbol, int(d)): int(n)
        for category, symbol, d, n in conn.execute(
            sa.text(
                """SELECT category, symbol, (local_us / :day)::int, count(*)
                   FROM feed_events
                   WHERE symbol IS NOT NULL AND local_us >= :since AND local_us < :before
                   GROUP BY 1, 2, 3"""
            ),
            day,
        )
    }
    beats = {
        int(d): int(n)
        for d, n in conn.execute(
            sa.text(
                """SELECT (local_us / :day)::int, count(*) FROM collector_heartbeats
                   WHERE local_us >= :since AND local_us < :before GROUP BY 1"""
            ),
            day,
        )
    }
    counts = {}
    for (sid, d), (chunks, messages, legacy) in books.items():
        iid, category, symbol = streams[sid]
        counts[(sid, d)] = SourceCounts(
            chunks,
            messages,
            legacy,
            trades.get((iid, d), 0),
            events.get((category, symbol, d), 0),
            beats.get(d, 0),
        )
    return counts


def archived(conn: sa.Connection) -> dict[tuple[int, int], tuple[SourceCounts, str]]:
    """Every archived stream-day: the counts it was archived with, and its
    manifest's sha256."""
    names = ", ".join(COUNT_NAMES)
    return {
        (int(row[0]), int(row[1])): (SourceCounts(*map(int, row[2:-1])), row[-1])
        for row in conn.execute(
            sa.text(f"SELECT stream_id, day, {names}, manifest_sha256 FROM archived_days")
        )
    }


def record_archived(
    conn: sa.Connection,
    stream_id: int,
    day: int,
    counts: SourceCounts,
    files: int,
    size: int,
    manifest_sha256: str,
    archive_url: str,
    now_us: int,
) -> None:
    names = ", ".join(COUNT_NAMES)
    values = ", ".join(f":{n}" for n in COUNT_NAMES)
    updates = ", ".join(
        f"{c} = excluded.{c}"
        for c in (*COUNT_NAMES, "files", "bytes", "manifest_sha256", "archive_url", "archived_us")
    )
    conn.execute(
        sa.text(
            f"""INSERT INTO archived_days (stream_id, day, {names}, files, bytes,
                                           manifest_sha256, archive_url, archived_us)
                VALUES (:sid, :day, {values}, :files, :bytes, :sha, :url, :now)
                ON CONFLICT (stream_id, day) DO UPDATE SET {updates}"""
        ),
        {
            "sid": stream_id,
            "day": day,
            **{n: getattr(counts, n) for n in COUNT_NAMES},
            "files": files,
            "bytes": size,
            "sha": manifest_sha256,
            "url": archive_url,
            "now": now_us,
        },
    )


def unarchived_streams(conn: sa.Connection, day: int) -> list[str]:
    """The streams with rows on `day` that are not archived as they are now
    (no archived_days row, or one made from other counts), by name
    (`linear:BTCUSDT@50`): while any is, the day's partitions stay."""
    counts = day_counts(conn, (day + 1) * DAY_US, day * DAY_US)
    done = archived(conn)
    missing = [key[0] for key, c in counts.items() if key not in done or done[key][0] != c]
    rows = conn.execute(
        sa.text(
            """SELECT i.category, i.symbol, s.depth
               FROM streams s JOIN instruments i ON i.id = s.instrument_id
               WHERE s.id = ANY(:ids)"""
        ),
        {"ids": missing},
    )
    return sorted(str(StreamKey(category, symbol, int(depth))) for category, symbol, depth in rows)


def manifests_of_day(conn: sa.Connection, day: int) -> list[tuple[StreamKey, str]]:
    """Each stream archived for `day`, with its manifest's recorded sha256."""
    rows = conn.execute(
        sa.text(
            """SELECT i.category, i.symbol, s.depth, a.manifest_sha256
               FROM archived_days a JOIN streams s ON s.id = a.stream_id
               JOIN instruments i ON i.id = s.instrument_id
               WHERE a.day = :d ORDER BY 1, 2, 3"""
        ),
        {"d": day},
    )
    return [(StreamKey(c, symbol, int(depth)), sha) for c, symbol, depth, sha in rows]


def forget_archived(conn: sa.Connection, stream_id: int, day: int) -> None:
    """The stream-day is no longer archived (its manifest is gone or wrong)."""
    conn.execute(
        sa.text("DELETE FROM archived_days WHERE stream_id = :s AND day = :d"),
        {"s": stream_id, "d": day},
    )


def try_archive_lock(conn: sa.Connection) -> bool:
    """Take the archive's session lock on `conn` (held until it closes), if free."""
    return bool(
        conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": ARCHIVE_LOCK}).scalar()
    )


def start_run(conn: sa.Connection, archive_url: str, now_us: int) -> int:
    return int(
        conn.execute(
            sa.text(
                """INSERT INTO archive_runs (started_us, archive_url)
                   VALUES (:now, :url) RETURNING id"""
            ),
            {"now": now_us, "url": archive_url},
        ).scalar_one()
    )


def finish_run(
    conn: sa.Connection,
    run_id: int,
    days_archived: int,
    days_dropped: int,
    kept: str | None,
    failure: str | None,
    now_us: int,
) -> None:
    """The run's end: days written and dropped, the days past --hot-days kept
    and why (`kept`), and what failed."""
    conn.execute(
        sa.text(
            """UPDATE archive_runs SET ended_us = :now, days_archived = :days,
                      days_dropped = :dropped, kept = :kept, failure = :failure
               WHERE id = :id"""
        ),
        {
            "now": now_us,
            "days": days_archived,
            "dropped": days_dropped,
            "kept": kept,
            "failure": failure,
            "id": run_id,
        },
    )


def log_rows(
    conn: sa.Connection, table: str, stream_id: int, stream_key: StreamKey, iid: int, day: int
) -> Iterator[Sequence[Sequence[Any]]]:
    """The stream-day's rows of one table of its log (archive.log.LOG_TABLES
    names them), in the columns and order the archive keeps, a batch at a
    time (bytea as memoryview)."""
    params = {
        "s": stream_id,
        "i": iid,
        "d": stream_key.depth,
        "c": stream_key.category,
        "sym": stream_key.symbol,
        "k": str(stream_key),
        "from": day * DAY_US,
        "to": (day + 1) * DAY_US,
    }
    return stream_batches(conn, _LOG_SQL[table], params, LOG_BATCH_ROWS)


LOG_BATCH_ROWS = 1_024  # archive.log.ROW_GROUP_ROWS: a batch makes a row group

# Each in archive.log's columns and order; days by the column each table is
# partitioned (or counted, in day_counts) by.
_LOG_SQL = {
    "book_chunks": """SELECT ts_us, u, n, snapshot, payload FROM book_chunks
                      WHERE stream_id = :s AND ts_us >= :from AND ts_us < :to
                      ORDER BY ts_us, u, n, snapshot""",
    "book_checkpoints": """SELECT ts_us, local_us, u, seq, bid_prices::text[], bid_sizes::text[],
                                  ask_prices::text[], ask_sizes::text[]
                           FROM book_checkpoints
                           WHERE instrument_id = :i AND depth = :d
                             AND ts_us >= :from AND ts_us < :to
                           ORDER BY ts_us""",
    "trades": """SELECT ts_us, local_us, trade_id, side, price::text, size::text, seq
                 FROM trades WHERE instrument_id = :i AND ts_us >= :from AND ts_us < :to
                 ORDER BY ts_us, seq, trade_id""",
    "feed_events": """SELECT id, local_us, kind, depth, detail FROM feed_events
                      WHERE category = :c AND symbol = :sym AND local_us >= :from
                        AND local_us < :to AND (depth = :d OR depth IS NULL)
                      ORDER BY local_us, id""",
    "heartbeats": """SELECT local_us, interval_s, simulated FROM collector_heartbeats
                     WHERE local_us >= :from AND local_us < :to AND :k = ANY(streams)
                     ORDER BY local_us, collector""",
}
