"""Recorded history for notebooks: DataFrames in Tardis's layouts, the exact
book at an instant, and the book's states over a range.

    from depthwatch import history
    quotes = history.load_quotes("BTCUSDT", "2026-11-24T10:00Z", "2026-11-24T11:00Z")
    book = history.book_at("BTCUSDT", "2026-11-24T10:30:00Z")

Times are [start, end) on the exchange's clock, in UTC: an ISO 8601 string
(naive means UTC), `now` or a span back from it (`-1h`), a datetime (naive
means UTC), or integer microseconds since the epoch. The database is
DATABASE_URL, else the embedded PostgreSQL in DEPTHWATCH_DATA_DIR (default
`.depthwatch`), as for the command line; or pass `engine=history.connect(url)`.

DataFrames hold exactly the columns of the Parquet export: Tardis's columns
(`timestamp`, `local_timestamp` int64 microseconds; prices and amounts
float64), then `exchange_time` and `local_time` as datetime64[us, UTC].
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from depthwatch.clock import SECOND_US, datetime_us, parse_time_us
from depthwatch.config import database_url_from_env, default_data_dir
from depthwatch.export.replay import BookReplay, StepKind
from depthwatch.export.sinks import ArrowSink
from depthwatch.export.tardis import ExportRequest, check_requests, export
from depthwatch.records import Level
from depthwatch.storage.db import make_engine, resolve_database_url
from depthwatch.storage.read.book import book_bounds
from depthwatch.storage.read.rows import Bounds
from depthwatch.storage.read.streams import Stream, find_stream, require_schema

Time = str | datetime | int
Symbols = str | list[str] | tuple[str, ...]

_engine: sa.Engine | None = None
# How far past `when` book_at looks for the message that confirms nothing was missed.
LOOK_AHEAD_US = 3_600 * SECOND_US


def connect(database_url: str | None = None, data_dir: str | Path | None = None) -> sa.Engine:
    """An engine on the recording: `database_url`, else DATABASE_URL, else the
    embedded PostgreSQL in `data_dir` (DEPTHWATCH_DATA_DIR, default .depthwatch)."""
    url = database_url or database_url_from_env()
    directory = Path(data_dir) if data_dir else default_data_dir()
    return make_engine(resolve_database_url(url, directory))


def _default_engine(engine: sa.Engine | None) -> sa.Engine:
    global _engine
    if engine is not None:
        return engine
    if _engine is None:
        _engine = connect()
    return _engine


def to_us(when: Time) -> int:
    """A time as integer microseconds since the epoch (see the module's doc)."""
    if isinstance(when, bool):
        raise TypeError("a time, not a bool")
    if isinstance(when, int):
        return when
    if isinstance(when, datetime):
        return datetime_us(when)
    return parse_time_us(when)


def _requests(
    kind: str, symbols: Symbols, start: Time, end: Time, category: str, depth: int | None
) -> list[ExportRequest]:
    names = [symbols] if isinstance(symbols, str) else list(symbols)
    start_us, end_us = to_us(start), to_us(end)
    if end_us <= start_us:
        raise ValueError("end must be after start")
    return [ExportRequest(kind, category, name.upper(), start_us, end_us, depth) for name in names]


def load(
    kind: str,
    symbols: Symbols,
    start: Time,
    end: Time = "now",
    *,
    category: str = "linear",
    depth: int | None = None,
    engine: sa.Engine | None = None,
) -> pd.DataFrame:
    """Any export kind as a DataFrame (incremental_book_L2, quotes, trades,
    book_snapshot_N[_interval]); several symbols one after another. Raises
    NotRecorded when a symbol, depth or the recording is missing."""
    engine = _default_engine(engine)
    requests = _requests(kind, symbols, start, end, category, depth)
    planned = check_requests(engine, requests)
    sink = ArrowSink(kind)
    export(engine, planned, sink, progress_to=None)
    return sink.table().to_pandas()


def load_book_l2(
    symbols: Symbols, start: Time, end: Time = "now", **options: object
) -> pd.DataFrame:
    """incremental_book_L2: every level change; a file opens with the book at
    `start` (is_snapshot rows), and a resync after a gap appears as a new snapshot."""
    return load("incremental_book_L2", symbols, start, end, **options)  # type: ignore[arg-type]


def load_quotes(
    symbols: Symbols, start: Time, end: Time = "now", **options: object
) -> pd.DataFrame:
    """quotes: the best bid and ask, a row whenever either changed."""
    return load("quotes", symbols, start, end, **options)  # type: ignore[arg-type]


def load_trades(
    symbols: Symbols, start: Time, end: Time = "now", **options: object
) -> pd.DataFrame:
    """trades (recorded with `--trades`)."""
    return load("trades", symbols, start, end, **options)  # type: ignore[arg-type]


def load_book_snapshots(
    symbols: Symbols,
    start: Time,
    end: Time = "now",
    levels: int = 25,
    interval: str | None = "100ms",
    **options: object,
) -> pd.DataFrame:
    """book_snapshot_{levels}_{interval}: the top levels at each interval end
    where they changed (interval None: at every change), computed from the log."""
    kind = f"book_snapshot_{levels}" + (f"_{interval}" if interval else "")
    return load(kind, symbols, start, end, **options)  # type: ignore[arg-type]


def load_gaps(
    symbols: Symbols | None,
    start: Time,
    end: Time = "now",
    *,
    category: str = "linear",
    depth: int | None = None,
    engine: sa.Engine | None = None,
) -> pd.DataFrame:
    """Where the record is incomplete (`depthwatch gaps`), per stream: the
    export's gap columns, then `start_time` and `end_time` as datetime64[us, UTC].
    `symbols` None: every recorded stream of the category."""
    from depthwatch.export.gaps import find_gaps, gap_rows
    from depthwatch.export.kinds import GAP_COLUMNS

    names = None if symbols is None else [symbols] if isinstance(symbols, str) else list(symbols)
    found = find_gaps(
        _default_engine(engine),
        category,
        None if names is None else [n.upper() for n in names],
        to_us(start),
        to_us(end),
        depth=depth,
    )
    frame = pd.DataFrame(gap_rows(found), columns=list(GAP_COLUMNS))
    for column, integer in (("start_time", "start_timestamp"), ("end_time", "end_timestamp")):
        frame[column] = pd.to_datetime(frame[integer].astype("int64"), unit="us", utc=True)
    return frame


@dataclass(frozen=True)
class Book:
    """A stream's book at `time_us`: every message stamped at or before it
    applied. `known` is False where the record cannot tell (after a sequence
    gap until the next snapshot, before the first recorded book, or where
    `depthwatch gaps` reports the collector down); then the sides are empty
    and `reason` says why.

    A whole book (depth full) started from a REST snapshot cut at so many
    levels a side is exact only within that snapshot's prices: the sides
    hold the levels at or above `bid_floor` and at or below `ask_ceiling`
    (None: that side whole), and `beyond_bounds` counts the levels recorded
    past them (those a delta touched since), left out because the levels
    between them are unknown."""

    symbol: str
    time_us: int
    known: bool
    bids: list[tuple[float, float]] = field(default_factory=list)  # (price, amount), best first
    asks: list[tuple[float, float]] = field(default_factory=list)
    reason: str = ""
    bid_floor: float | None = None
    ask_ceiling: float | None = None
    beyond_bounds: int = 0

    @property
    def time(self) -> pd.Timestamp:
        return pd.Timestamp(self.time_us, unit="us", tz="UTC")

    def frame(self) -> pd.DataFrame:
        """Both sides as rows: side, price, amount (bids best first, then asks)."""
        rows = [("bid", p, a) for p, a in self.bids] + [("ask", p, a) for p, a in self.asks]
        return pd.DataFrame(rows, columns=["side", "price", "amount"])


_SEQUENCE_GAP = "a sequence gap: the book is unknown until the next snapshot"


def _levels(side: list[Level]) -> list[tuple[float, float]]:
    return [(float(p), float(a)) for p, a in side]


def _exact_book(
    symbol: str, time_us: int, bids: list[Level], asks: list[Level], bounds: Bounds | None
) -> Book:
    """A known Book of these sides (best first), cut to `bounds`."""
    if bounds is None or bounds.whole:
        return Book(symbol, time_us, True, _levels(bids), _levels(asks))
    floor = None if bounds.bid_floor is None else float(bounds.bid_floor)
    ceiling = None if bounds.ask_ceiling is None else float(bounds.ask_ceiling)
    kept_bids = [b for b in _levels(bids) if floor is None or b[0] >= floor]
    kept_asks = [a for a in _levels(asks) if ceiling is None or a[0] <= ceiling]
    beyond = len(bids) + len(asks) - len(kept_bids) - len(kept_asks)
    return Book(symbol, time_us, True, kept_bids, kept_asks, "", floor, ceiling, beyond)


def _bounds_at(bounds: list[Bounds], ts_us: int) -> Bounds | None:
    """The bounds in force at `ts_us` (set at or before it)."""
    found = None
    for candidate in bounds:
        if candidate.ts_us > ts_us:
            break
        found = candidate
    return found


def _stream(conn: sa.Connection, symbol: str, category: str, depth: int | None) -> Stream:
    require_schema(conn)
    return find_stream(conn, category, symbol, depth)


def book_at(
    symbol: str,
    when: Time,
    *,
    category: str = "linear",
    depth: int | None = None,
    engine: sa.Engine | None = None,
) -> Book:
    """The exact book at `when` (both sides sorted, best first), or a Book with
    known=False saying why it cannot be told."""
    symbol, at_us = symbol.upper(), to_us(when)
    with _default_engine(engine).connect() as conn:
        stream = _stream(conn, symbol, category, depth)
        # The book after every message stamped <= `when`, confirmed by the next
        # message: only if that one continues `u` was nothing missed before it.
        replay = BookReplay(conn, stream, at_us + 1, at_us + 1 + LOOK_AHEAD_US)
        state: tuple[list[Level], list[Level]] | None = None
        for step in replay:
            if step.kind is StepKind.START:
                state = replay.book.sides()
                continue
            if step.kind is StepKind.LOST:
                state = None
            break
        if state is None:
            reason = (
                "no recorded book at or before this time"
                if replay.last_ts_us is None
                else _SEQUENCE_GAP
            )
            return Book(symbol, at_us, False, reason=reason)
        hole = _collector_hole(conn, category, symbol, stream.depth, at_us)
        if hole:
            return Book(symbol, at_us, False, reason=hole)
        bids, asks = state
        bounds = _bounds_at(book_bounds(conn, stream, at_us, at_us + 1), at_us)
        return _exact_book(symbol, at_us, bids, asks, bounds)


def book_states(
    symbol: str,
    start: Time,
    end: Time = "now",
    *,
    levels: int | None = None,
    category: str = "linear",
    depth: int | None = None,
    engine: sa.Engine | None = None,
) -> Iterator[Book]:
    """The book at `start`, then after each message in [start, end) (the top
    `levels` of each side, or all): a Book per state. A sequence gap yields a
    Book with known=False at the message that showed it; the next snapshot
    makes it known again."""
    symbol = symbol.upper()
    start_us, end_us = to_us(start), to_us(end)
    with _default_engine(engine).connect() as conn:
        stream = _stream(conn, symbol, category, depth)
        replay = BookReplay(conn, stream, start_us, end_us)
        book = replay.book
        applied: int | None = None  # the exchange time of the message just applied
        bounds = book_bounds(conn, stream, start_us, end_us)

        def known(time_us: int) -> Book:
            in_force = _bounds_at(bounds, time_us)
            if in_force is None or in_force.whole:
                bids, asks = book.bids.top(levels), book.asks.top(levels)
                return Book(symbol, time_us, True, _levels(bids), _levels(asks))
            # The exact levels are a prefix of each side (best first): found by
            # bisection, not by converting a 20,000-level book every state.
            floor, ceiling = in_force.bid_floor, in_force.ask_ceiling
            bid_keys, ask_keys = book.bids.keys, book.asks.keys
            exact_bids = len(bid_keys) if floor is None else bisect_right(bid_keys, -float(floor))
            exact_asks = (
                len(ask_keys) if ceiling is None else bisect_right(ask_keys, float(ceiling))
            )
            take_bids = exact_bids if levels is None else min(levels, exact_bids)
            take_asks = exact_asks if levels is None else min(levels, exact_asks)
            beyond = len(bid_keys) - exact_bids + len(ask_keys) - exact_asks
            return Book(
                symbol,
                time_us,
                True,
                _levels(book.bids.top(take_bids)),
                _levels(book.asks.top(take_asks)),
                "",
                None if floor is None else float(floor),
                None if ceiling is None else float(ceiling),
                beyond,
            )

        for step in replay:
            if applied is not None:
                yield known(applied)
                applied = None
            if step.kind is StepKind.START:
                yield known(start_us)
            elif step.kind is StepKind.LOST and step.event is not None:
                yield Book(symbol, step.event.ts_us, False, reason=_SEQUENCE_GAP)
            elif step.kind is StepKind.APPLY and step.event is not None:
                applied = step.event.ts_us


def _collector_hole(conn: sa.Connection, category: str, symbol: str, depth: int, at_us: int) -> str:
    """Why the record cannot tell the book at `at_us` though the log's book is
    valid: no collector was recording then (the log alone cannot show that
    when no message came after), or ""."""
    from depthwatch.coverage import COLLECTOR_DOWN
    from depthwatch.export.gaps import find_gaps

    for gap in find_gaps(conn, category, [symbol], at_us, at_us + 1, depth=depth):
        if COLLECTOR_DOWN in gap.cause.split("+") and gap.covers(at_us):
            return f"{COLLECTOR_DOWN}: no collector was recording ({gap.detail or 'no heartbeat'})"
    return ""
