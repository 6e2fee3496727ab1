"""`depthwatch gaps`: the intervals in which a stream's record is incomplete
(collector not running, sequence gaps, lost connections, refused messages,
rows the writer dropped), so that nobody reads missing data as a quiet market.

`find_gaps` is the reader (typed `coverage.Gap` records, for the Python API and
for rebuilding a book: inside a gap the book is unknown); `gap_rows` flattens
them into GAP_COLUMNS for CSV or Parquet; `run_gaps` is the subcommand (its
flags: export.gaps_arguments). Each stream's gaps are disjoint (overlapping causes joined
by "+", coverage.disjoint) and clipped to the range; times are receive times
(`local_us`), integer microseconds like Tardis's timestamps.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, TextIO

import sqlalchemy as sa

from depthwatch import coverage
from depthwatch.clock import SECOND_US, now_us, utc_datetime
from depthwatch.coverage import Gap
from depthwatch.export.kinds import GAP_COLUMNS
from depthwatch.feed.registry import TARDIS_EXCHANGE
from depthwatch.records import DEFAULT_HEARTBEAT_INTERVAL_S, depth_label
from depthwatch.storage.read.chunks import RecordedTimes
from depthwatch.storage.read.events import heartbeats, heartbeats_kept_from, stream_events
from depthwatch.storage.read.streams import NotRecorded

if TYPE_CHECKING:
    from depthwatch.storage.read.streams import Stream

log = logging.getLogger(__name__)

GapRow = tuple[str, str, int, int, int, float, str, str]
DETAIL_CHARS = 90  # of the table; CSV keeps the whole detail
DEFAULT_HEARTBEAT_US = round(DEFAULT_HEARTBEAT_INTERVAL_S * SECOND_US)


def find_gaps(
    bind: sa.Engine | sa.Connection,
    category: str,
    symbols: Sequence[str] | None,
    start_us: int,
    end_us: int,
    depth: int | None = None,
) -> list[Gap]:
    """Every gap of the category's recorded streams (of `symbols`, or all
    recorded when None; of `depth`, or every depth) in [start, end) of receive
    time, `end` no later than now; sorted by symbol, depth, then start.
    NotRecorded names a symbol (or depth) never recorded."""
    # Here, not at the top: the tops' readers bring pandas (see recorded_streams).
    from depthwatch.storage.read.tops import recorded_from

    end_us = min(end_us, now_us())
    if end_us <= start_us:
        return []
    with _connected(bind) as conn:
        streams = recorded_streams(conn, category, symbols, depth)
        kept_from = heartbeats_kept_from(conn)
        gaps: list[Gap] = []
        for stream in streams:
            recorded = RecordedTimes(conn, stream)
            cold = recorded.cold  # the stream's days read from the archive
            beats = heartbeats(conn, stream.key, start_us, end_us, cold)
            found = coverage.stream_gaps(
                stream.stream_key,
                stream_events(conn, stream, start_us, end_us, cold),
                beats.times_us,
                start_us,
                end_us,
                beats.interval_us or DEFAULT_HEARTBEAT_US,
                recorded,
                heartbeats_kept_from(conn, cold) if cold else kept_from,
                recorded_from(conn, stream, start_us, end_us),
            )
            gaps += coverage.disjoint(found)
    return sorted(gaps, key=lambda g: (g.symbol, g.depth, g.start_us))


@contextlib.contextmanager
def _connected(bind: sa.Engine | sa.Connection) -> Iterator[sa.Connection]:
    if isinstance(bind, sa.Connection):
        yield bind
    else:
        with bind.connect() as conn:
            yield conn


def recorded_streams(
    conn: sa.Connection, category: str, symbols: Sequence[str] | None, depth: int | None
) -> list[Stream]:
    """The category's recorded streams of `symbols` (None: all) at `depth`
    (None: all); NotRecorded for a symbol or depth never recorded."""
    # Here, not at the top: the dashboard's reads bring pandas, which every
    # `depthwatch` command (the collector's too) would load with the parser.
    from depthwatch.storage.read.streams import list_streams

    streams = [
        s
        for s in list_streams(conn)
        if s.category == category and (depth is None or s.depth == depth)
    ]
    at = "" if depth is None else f" at depth {depth_label(depth)}"
    if symbols is None:
        if not streams:
            raise NotRecorded(f"no {category} order book{at} has been recorded")
        return streams
    known = {s.symbol for s in streams}
    for symbol in symbols:
        if symbol not in known:
            listed = ", ".join(sorted(known)[:10]) + (", ..." if len(known) > 10 else "")
            raise NotRecorded(
                f"no {category} order book of {symbol!r}{at} has been recorded"
                + (f" (recorded: {listed})" if known else "")
            )
    wanted = set(symbols)
    return [s for s in streams if s.symbol in wanted]


def gap_rows(gaps: Sequence[Gap]) -> list[GapRow]:
    """GAP_COLUMNS of each gap: the Tardis exchange id, integer microsecond
    times, the duration in seconds (exact to the microsecond)."""
    return [
        (
            TARDIS_EXCHANGE[g.category],
            g.symbol,
            g.depth,
            g.start_us,
            g.end_us,
            g.duration_us / SECOND_US,
            g.cause,
            g.detail,
        )
        for g in gaps
    ]


def write_csv(gaps: Sequence[Gap], out: TextIO) -> None:
    """GAP_COLUMNS as CSV (a header row, then a row per gap)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(GAP_COLUMNS)
    writer.writerows(gap_rows(gaps))
    out.flush()


def utc_text(t_us: int) -> str:
    """2026-11-24 10:00:00.123: milliseconds are as fine as a reader needs."""
    return utc_datetime(t_us).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def duration_text(us: int) -> str:
    """A duration as a person reads it: 0.734 s, 12.3 s, 4 min 05 s, 2 h 03 min, 3 d 04 h."""
    seconds = us / SECOND_US
    if seconds < 10:
        return f"{seconds:.3f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3_600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 86_400:
        return f"{whole // 3_600} h {whole % 3_600 // 60:02d} min"
    return f"{whole // 86_400} d {whole % 86_400 // 3_600:02d} h"


def write_table(gaps: Sequence[Gap], out: TextIO) -> None:
    """Aligned columns for a terminal: stream, UTC times, duration, cause, detail."""
    header = ("stream", "start (UTC)", "end (UTC)", "duration", "cause", "detail")
    rows = [
        (
            f"{g.symbol}@{depth_label(g.depth)}",
            utc_text(g.start_us),
            utc_text(g.end_us),
            duration_text(g.duration_us),
            g.cause,
            g.detail if len(g.detail) <= DETAIL_CHARS else g.detail[: DETAIL_CHARS - 3] + "...",
        )
        for g in gaps
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")
    out.flush()


def run_gaps(args: argparse.Namespace) -> int:
    """`depthwatch gaps`: 0 with the gaps (or a line saying there are none) on
    standard output; 1 for a symbol never recorded or a database gone; 2 for
    bad arguments."""
    from depthwatch.clock import TimeFormatError, parse_time_us
    from depthwatch.export.command import READ_FAILURES, range_or_depth_refused, read_failed
    from depthwatch.storage.db import make_engine, resolve_database_url, wait_for_database

    try:
        start_us, end_us = parse_time_us(args.start), parse_time_us(args.end)
    except TimeFormatError as exc:
        log.error("%s", exc)
        return 2
    if range_or_depth_refused(log, start_us, end_us, args.category, args.depth):
        return 2
    symbols = (
        [s.strip().upper() for s in args.symbols.split(",") if s.strip()] if args.symbols else None
    )
    engine = make_engine(resolve_database_url(args.database_url, args.data_dir), pool_size=1)
    try:
        wait_for_database(engine, args.database_wait)
        gaps = find_gaps(engine, args.category, symbols, start_us, end_us, args.depth)
        with engine.connect() as conn:
            kept_from = heartbeats_kept_from(conn)
    except READ_FAILURES as exc:
        return read_failed(log, exc, "the database went away (%s)")
    finally:
        engine.dispose()
    end_us = min(end_us, now_us())
    if kept_from is not None and kept_from > start_us:
        print(
            f"note: heartbeats are kept from {utc_text(kept_from)} UTC on; before that a "
            "collector that was not running shows only where its restart declared the hole",
            file=sys.stderr,
        )
    form = args.format or ("table" if sys.stdout.isatty() else "csv")
    what = ", ".join(symbols) if symbols else f"any recorded {args.category} stream"
    if not gaps:
        none = f"no gaps in {what} from {utc_text(start_us)} to {utc_text(end_us)} UTC"
        if form == "csv":
            write_csv(gaps, sys.stdout)
            print(none, file=sys.stderr)
        else:
            print(none)
        return 0
    if form == "csv":
        write_csv(gaps, sys.stdout)
        return 0
    write_table(gaps, sys.stdout)
    total = sum(g.duration_us for g in gaps)
    print(
        f"{len(gaps)} gap{'s' if len(gaps) != 1 else ''} in {what} from {utc_text(start_us)} "
        f"to {utc_text(end_us)} UTC, {duration_text(total)} in all"
    )
    return 0
