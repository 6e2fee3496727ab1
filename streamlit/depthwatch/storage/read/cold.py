"""Days no longer in PostgreSQL: a stream's days that `depthwatch archive
--hot-days` dropped, read from the archive's copy of their log
(archive/log.py) by the readers of history, so an export, `depthwatch gaps`,
`book_at` or the History page reads a range across the seam as if it were all
in the database.

A day is cold when its stream-day is archived (`archived_days`, which also
says where) and the database holds no partition of it: `--hot-days` drops a
day's partitions together, after every stream of it is archived. Hot days are
read from the database only, cold days from the archive only; the readers
merge the two in the database's order. feed_events and collector_heartbeats
are not partitioned and may outlive a cold day, so their rows on cold days
are taken from the archive alone.

Nothing here runs for a stream with no cold day: the live pages never open
the archive.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from depthwatch.archive.layout import StreamDay
from depthwatch.archive.log import LogTable, log_path, read_log
from depthwatch.clock import DAY_US
from depthwatch.records import StreamKey
from depthwatch.storage.schema import existing_partition_days

if TYPE_CHECKING:
    import pyarrow as pa

    from depthwatch.archive.store import ArchiveStore
    from depthwatch.storage.read.streams import Stream


class ArchiveUnreadable(RuntimeError):
    """A cold day's log cannot be read from the archive (one line saying why)."""


@dataclass(frozen=True)
class ColdDay:
    stream: StreamKey  # whose log holds it
    day: int  # days since the epoch
    url: str  # the archive holding it (archived_days.archive_url)
    messages: int  # book messages archived for it (archived_days.messages)
    trades: int


class ColdLog:
    """The cold days of a stream (or of an instrument's trades) and the
    reads of their log files."""

    def __init__(self, days: list[ColdDay]) -> None:
        self.days = days  # oldest first, one per day
        self._day_set = frozenset(d.day for d in days)

    def __bool__(self) -> bool:
        return bool(self.days)

    def is_cold(self, t_us: int) -> bool:
        """Whether the moment falls on a cold day."""
        return t_us // DAY_US in self._day_set

    def days_in(self, start_us: int, end_us: int) -> list[ColdDay]:
        return [d for d in self.days if start_us < (d.day + 1) * DAY_US and d.day * DAY_US < end_us]

    def rows(
        self,
        table: LogTable,
        start_us: int,
        end_us: int,
        newest_first: bool = False,
        columns: list[str] | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        """The cold rows of `table` with start <= time < end, as tuples of
        `columns` (None: the table's), in time order, read a row group at a
        time (with `newest_first`, from the newest, a day at a time).
        ArchiveUnreadable if a day's file cannot be read."""
        days = self.days_in(start_us, end_us)
        for day in reversed(days) if newest_first else days:
            groups = self._day_groups(day, table, start_us, end_us, columns)
            for part in reversed(list(groups)) if newest_first else groups:
                rows = zip(*(c.to_pylist() for c in part.columns), strict=True)
                yield from reversed(list(rows)) if newest_first else rows

    def _day_groups(
        self,
        day: ColdDay,
        table: LogTable,
        start_us: int,
        end_us: int,
        columns: list[str] | None,
    ) -> Iterator[pa.Table]:
        from depthwatch.archive.store import StoreError

        path = log_path(StreamDay.of(day.stream, day.day), table)
        try:
            yield from read_log(_store(day.url), path, table, start_us, end_us, columns)
        except FileNotFoundError:
            raise ArchiveUnreadable(
                f"{path} is missing from {day.url}, and the day is no longer in the "
                "database (`depthwatch archive --verify` lists what else is lost)"
            ) from None
        except (OSError, StoreError) as exc:
            raise ArchiveUnreadable(f"cannot read {path} from {day.url}: {exc}") from None

    def volume(self, start_us: int, end_us: int) -> ColdVolume:
        """The cold part of [start, end): its messages and trades, each cold
        day's counts prorated by the share of it in range (for estimates)."""
        messages = trades = 0.0
        first = last = None
        for day in self.days_in(start_us, end_us):
            low, high = max(start_us, day.day * DAY_US), min(end_us, (day.day + 1) * DAY_US)
            share = (high - low) / DAY_US
            messages += day.messages * share
            trades += day.trades * share
            first = low if first is None else first
            last = high - 1
        return ColdVolume(round(messages), round(trades), first, last)

    def first_time(self, table: LogTable) -> int | None:
        """The time of `table`'s first row over every cold day."""
        return self._end_time(table, newest_first=False)

    def last_time(self, table: LogTable) -> int | None:
        """The time of `table`'s last row over every cold day."""
        return self._end_time(table, newest_first=True)

    def _end_time(self, table: LogTable, newest_first: bool) -> int | None:
        forever = (self.days[-1].day + 1) * DAY_US if self.days else 0
        row = next(self.rows(table, 0, forever, newest_first, [table.time_column]), None)
        return None if row is None else int(row[0])


def least(*times: int | None) -> int | None:
    """The earliest of the times given (None: not known)."""
    return min((t for t in times if t is not None), default=None)


def greatest(*times: int | None) -> int | None:
    """The latest of the times given (None: not known)."""
    return max((t for t in times if t is not None), default=None)


@dataclass(frozen=True)
class ColdVolume:
    messages: int
    trades: int
    first_us: int | None  # the cold part's first and last moment
    last_us: int | None

    @property
    def span_us(self) -> int:
        return 0 if self.first_us is None or self.last_us is None else self.last_us - self.first_us


NO_COLD_DAYS = ColdLog([])


def cold_log(conn: sa.Connection, stream: Stream) -> ColdLog:
    """The stream's cold days."""
    return _cold_days(conn, [stream])


def instrument_cold_log(conn: sa.Connection, streams: list[Stream]) -> ColdLog:
    """The cold days of an instrument's trades: a cold day of any of its
    streams (each stream-day's log holds the instrument's trades); the
    deepest stream's log is read for a day that several hold."""
    return _cold_days(conn, sorted(streams, key=lambda s: -s.depth))


def _cold_days(conn: sa.Connection, streams: list[Stream]) -> ColdLog:
    """Cold days of these streams, the first stream's taken for a day several hold."""
    if not streams:
        return NO_COLD_DAYS
    # A database the archive never ran on (or older than schema 5) has none.
    if conn.execute(sa.text("SELECT to_regclass('archived_days')")).scalar() is None:
        return NO_COLD_DAYS
    rows = conn.execute(
        sa.text(
            """SELECT stream_id, day, archive_url, messages, trades FROM archived_days
               WHERE stream_id = ANY(:ids) ORDER BY day"""
        ),
        {"ids": [s.id for s in streams]},
    ).all()
    if not rows:
        return NO_COLD_DAYS
    hot = existing_partition_days(conn)
    rank = {s.id: i for i, s in enumerate(streams)}
    key = {s.id: s.stream_key for s in streams}
    taken: dict[int, tuple[int, ColdDay]] = {}
    for sid, day, url, messages, trades in rows:
        if int(day) in hot:
            continue
        cold = ColdDay(key[sid], int(day), url, int(messages), int(trades))
        if int(day) not in taken or rank[sid] < taken[int(day)][0]:
            taken[int(day)] = (rank[sid], cold)
    return ColdLog([taken[d][1] for d in sorted(taken)])


@functools.lru_cache(maxsize=8)
def _store(url: str) -> ArchiveStore:
    """The archive at `url`, opened once per process (reads retry briefly: a
    reader waiting minutes on a dead store helps nobody)."""
    from depthwatch.archive.store import StoreError, open_store

    try:
        return open_store(url, retry_for_s=10.0)
    except StoreError as exc:
        raise ArchiveUnreadable(str(exc)) from None
