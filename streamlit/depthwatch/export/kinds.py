"""The export kinds, each parsed once: `ExportKind.parse("book_snapshot_25_100ms")`
says which rows a kind string asks for and under which header, so no other
module reads the string again.

Tardis's kinds (incremental_book_L2, quotes, trades, book_snapshot_N[_INTERVAL])
keep Tardis's column names and order; `gaps` is ours (export.gaps). A leaf
module: the archive's layout and every reader may import it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from depthwatch.clock import SECOND_US

L2 = "incremental_book_L2"
# Not Tardis's: incremental_book_L2 of an `orderbook.rpi` book with each
# level's Retail Price Improvement size beside its ordinary one (rpi_amount).
L2_RPI = "incremental_book_L2_rpi"
QUOTES = "quotes"
TRADES = "trades"
GAPS = "gaps"  # not Tardis's: where the record is incomplete (export.gaps)
BOOK_SNAPSHOT = "book_snapshot"  # the family of book_snapshot_N[_INTERVAL]
KINDS = (L2, QUOTES, TRADES, L2_RPI)  # the fixed kinds (Tardis's, and L2_RPI)
FAMILIES = (L2, QUOTES, TRADES, BOOK_SNAPSHOT)  # what the History page offers
SNAPSHOT_KIND_HELP = "book_snapshot_N or book_snapshot_N_INTERVAL (e.g. book_snapshot_25_100ms)"

COMMON_COLUMNS = "exchange,symbol,timestamp,local_timestamp,"
HEADERS = {
    L2: COMMON_COLUMNS + "is_snapshot,side,price,amount",
    L2_RPI: COMMON_COLUMNS + "is_snapshot,side,price,amount,rpi_amount",
    QUOTES: COMMON_COLUMNS + "ask_amount,ask_price,bid_price,bid_amount",
    TRADES: COMMON_COLUMNS + "id,side,price,amount",
}


# `gaps` (export.gaps): one row per gap of a stream.
GAP_COLUMNS = (
    "exchange",
    "symbol",
    "depth",
    "start_timestamp",  # receive time, microseconds since the epoch (UTC)
    "end_timestamp",  # exclusive
    "duration_s",
    "cause",  # coverage.CAUSES, several joined by "+"
    "detail",
)

_KIND = re.compile(r"book_snapshot_(\d+)(?:_(\d+)(ms|s|m))?")
_UNIT_US = {"ms": 1_000, "s": SECOND_US, "m": 60 * SECOND_US}


@dataclass(frozen=True, slots=True)
class SnapshotSpec:
    levels: int
    interval_us: int  # 0: a row at every change of the top `levels`

    @classmethod
    def parse(cls, kind: str) -> SnapshotSpec | None:
        """The spec of a `book_snapshot_...` kind; None for other kinds.
        Raises ValueError on a malformed one."""
        if not kind.startswith("book_snapshot_"):
            return None
        found = _KIND.fullmatch(kind)
        if found is None:
            raise ValueError(
                f"{kind!r}: write book_snapshot_N or book_snapshot_N_INTERVAL, "
                "e.g. book_snapshot_25, book_snapshot_25_100ms, book_snapshot_5_1s, "
                "book_snapshot_10_1m"
            )
        levels = int(found[1])
        interval = int(found[2]) * _UNIT_US[found[3]] if found[2] is not None else 0
        if levels < 1:
            raise ValueError(f"{kind!r}: at least one level")
        if found[2] is not None and interval == 0:
            raise ValueError(f"{kind!r}: the interval must be positive")
        return cls(levels, interval)

    def header(self) -> str:
        cells = []
        for i in range(self.levels):
            cells += [f"asks[{i}].price", f"asks[{i}].amount"]
            cells += [f"bids[{i}].price", f"bids[{i}].amount"]
        return ",".join(cells)


@dataclass(frozen=True, slots=True)
class ExportKind:
    name: str  # as asked, e.g. "book_snapshot_25_100ms"
    family: str  # one of FAMILIES, or GAPS
    snapshot: SnapshotSpec | None = None  # for the book_snapshot family

    @classmethod
    def parse(cls, name: str) -> ExportKind:
        """The kind, if exportable; ValueError (saying what is) if not."""
        if name in HEADERS or name == GAPS:
            return cls(name, name)
        spec = SnapshotSpec.parse(name)  # ValueError on a malformed book_snapshot_
        if spec is None:
            raise ValueError(
                f"unknown kind {name!r}: use one of {', '.join(KINDS)}, {GAPS}, "
                f"or {SNAPSHOT_KIND_HELP}"
            )
        return cls(name, BOOK_SNAPSHOT, spec)

    @property
    def reads_book(self) -> bool:
        """Whether its rows come from a recorded book (a stream of one depth)."""
        return self.family not in (TRADES, GAPS)

    def header(self) -> str:
        """The CSV header row (Tardis's column names, in its order)."""
        if self.snapshot is not None:
            return COMMON_COLUMNS + self.snapshot.header()
        if self.family == GAPS:
            return ",".join(GAP_COLUMNS)
        return HEADERS[self.family]
