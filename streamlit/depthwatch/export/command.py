"""What the two commands that read a recording, `depthwatch export` (cli.py)
and `depthwatch gaps` (export/gaps.py), check and answer alike: the range and
depth asked for (exit status 2 when wrong), and a read that failed for a
missing recording, an archived day the archive cannot give, or a database
gone (one error line, exit status 1). Each line goes to the calling command's
logger."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from depthwatch.export.tardis import PlannedRequest
from depthwatch.feed.registry import valid_depths
from depthwatch.logs import first_line
from depthwatch.records import FULL_DEPTH, RPI_DEPTH, RPI_SIZES_DEPTH, depth_label
from depthwatch.storage.read.book import book_bounds
from depthwatch.storage.read.cold import ArchiveUnreadable
from depthwatch.storage.read.streams import NotRecorded


def range_or_depth_refused(
    log: logging.Logger, start_us: int, end_us: int, category: str, depth: int | None
) -> bool:
    """True, after an error line, for an end not after the start or a depth
    no book of the category has (Bybit's depths, plus 500 from older archives)."""
    if end_us <= start_us:
        log.error("--end must be after --start")
        return True
    depths = valid_depths(category, legacy=True)
    if RPI_DEPTH in depths:  # recorded as two books, either of which can be read
        depths += (RPI_SIZES_DEPTH,)
    if depth is not None and depth not in depths:
        listed = ", ".join(map(depth_label, depths))
        log.error("--depth %s: %s books have depth %s", depth_label(depth), category, listed)
        return True
    return False


def warn_partial_books(
    log: logging.Logger, engine: sa.Engine, requests: list[PlannedRequest]
) -> None:
    """A warning per whole book (depth full) that was started from a cut REST
    snapshot within the range: its levels beyond the snapshot's prices are in
    the file (as deltas touched them) but the book there is not complete."""
    with engine.connect() as conn:
        for request in requests:
            stream = request.stream
            if stream is None or stream.depth != FULL_DEPTH:
                continue
            ranges = {
                b.describe()
                for b in book_bounds(conn, stream, request.start_us, request.end_us)
                if not b.whole
            }
            if ranges:
                log.warning(
                    "%s@full: the whole book is exact only within its REST snapshot's range "
                    "(%s); levels beyond it are in the file as deltas touched them, not complete",
                    request.symbol,
                    "; ".join(sorted(ranges)),
                )


READ_FAILURES = (NotRecorded, ArchiveUnreadable, sa.exc.OperationalError)


def read_failed(
    log: logging.Logger,
    exc: NotRecorded | ArchiveUnreadable | sa.exc.OperationalError,
    went_away: str,
) -> int:
    """Exit status 1, after an error line: the missing recording's (or
    archived day's) message, or for a database gone `went_away` (its %s: the
    error's first line)."""
    if isinstance(exc, NotRecorded | ArchiveUnreadable):
        log.error("%s", exc)
    else:
        log.error(went_away, first_line(exc))
    return 1
