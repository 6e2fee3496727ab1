"""The export kinds, each parsed once: `ExportKind.parse("book_snapshot_25_100ms")`
says which rows a kind string asks for and under which header, so no other
module reads the string again.

Tardis's kinds (incremental_book_L2, quotes, trades, book_snapshot_N[_INTERVAL])
keep Tardis's column names and order; `gaps` is ours (export.gaps)."""

from __future__ import annotations

from dataclasses import dataclass

from depthwatch.export.gaps import GAP_COLUMNS
from depthwatch.export.snapshots import SnapshotSpec

L2 = "incremental_book_L2"
QUOTES = "quotes"
TRADES = "trades"
GAPS = "gaps"  # not Tardis's: where the record is incomplete (export.gaps)
BOOK_SNAPSHOT = "book_snapshot"  # the family of book_snapshot_N[_INTERVAL]
KINDS = (L2, QUOTES, TRADES)  # the fixed Tardis kinds
FAMILIES = (L2, QUOTES, TRADES, BOOK_SNAPSHOT)  # what the History page offers
SNAPSHOT_KIND_HELP = "book_snapshot_N or book_snapshot_N_INTERVAL (e.g. book_snapshot_25_100ms)"

COMMON_COLUMNS = "exchange,symbol,timestamp,local_timestamp,"
HEADERS = {
    L2: COMMON_COLUMNS + "is_snapshot,side,price,amount",
    QUOTES: COMMON_COLUMNS + "ask_amount,ask_price,bid_price,bid_amount",
    TRADES: COMMON_COLUMNS + "id,side,price,amount",
}


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
