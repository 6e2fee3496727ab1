"""The archive's record in the database (schema 5): what each stream-day
held, which stream-days are archived, and each `depthwatch archive` run.

A day's counts (`SourceCounts`) are the archive's way to notice late rows: a
journal drained hours after midnight adds chunks to a day, its counts no
longer match the ones archived, and the day is archived again.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import sqlalchemy as sa

from depthwatch.clock import DAY_US
from depthwatch.storage.schema import ARCHIVE_LOCK


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


def day_counts(conn: sa.Connection, before_us: int) -> dict[tuple[int, int], SourceCounts]:
    """SourceCounts per (stream id, day since the epoch) of every stream-day
    before `before_us` with a recorded book message. Grouped counts over the
    tables' primary keys: no payload is read."""
    day = {"day": DAY_US, "before": before_us}
    books: dict[tuple[int, int], list[int]] = {}
    for sid, d, chunks, messages in conn.execute(
        sa.text(
            """SELECT stream_id, (ts_us / :day)::int, count(*), sum(n)
               FROM book_chunks WHERE ts_us < :before GROUP BY 1, 2"""
        ),
        day,
    ):
        books[(sid, d)] = [int(chunks), int(messages), 0]
    for sid, d, events in conn.execute(
        sa.text(
            """SELECT s.id, (e.ts_us / :day)::int, count(*)
               FROM book_events e JOIN streams s
                 ON s.instrument_id = e.instrument_id AND s.depth = e.depth
               WHERE e.ts_us < :before GROUP BY 1, 2"""
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
                   FROM trades WHERE ts_us < :before GROUP BY 1, 2"""
            ),
            day,
        )
    }
    events = {
        (category, symbol, int(d)): int(n)
        for category, symbol, d, n in conn.execute(
            sa.text(
                """SELECT category, symbol, (local_us / :day)::int, count(*)
                   FROM feed_events WHERE symbol IS NOT NULL AND local_us < :before
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
                   WHERE local_us < :before GROUP BY 1"""
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
    conn: sa.Connection, run_id: int, days_archived: int, failure: str | None, now_us: int
) -> None:
    conn.execute(
        sa.text(
            """UPDATE archive_runs SET ended_us = :now, days_archived = :days, failure = :failure
               WHERE id = :id"""
        ),
        {"now": now_us, "days": days_archived, "failure": failure, "id": run_id},
    )
