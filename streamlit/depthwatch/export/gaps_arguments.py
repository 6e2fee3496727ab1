"""The `depthwatch gaps` flags, apart from export.gaps so that building the
CLI's parser loads none of the readers (they load sqlalchemy's engine and
the storage layer: ~0.6 s of every depthwatch command's start, the
collector's included)."""

from __future__ import annotations

import argparse

from depthwatch.clock import TIME_FORMS
from depthwatch.config import add_database_arguments, book_depth
from depthwatch.export.kinds import GAP_COLUMNS
from depthwatch.feed.registry import CATEGORIES

FORMATS = ("table", "csv")


def add_gaps_arguments(parser: argparse.ArgumentParser) -> None:
    """The `depthwatch gaps` flags."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--symbols", "--symbol", help="comma-separated, e.g. BTCUSDT,ETHUSDT")
    which.add_argument(
        "--all", action="store_true", help="every recorded stream of the category (the default)"
    )
    parser.add_argument("--category", default="linear", choices=CATEGORIES)
    parser.add_argument(
        "--depth", type=book_depth, help="only this book depth (default: every depth)"
    )
    parser.add_argument(
        "--start",
        default="-1d",
        help=f"inclusive, UTC: {TIME_FORMS}; default -1d",
    )
    parser.add_argument(
        "--end", default="now", help="exclusive, the same forms as --start; default now"
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="table: aligned, UTC times, for a person (the default on a terminal); "
        f"csv: the columns {','.join(GAP_COLUMNS)}, times in microseconds (the default otherwise)",
    )
    add_database_arguments(parser)
