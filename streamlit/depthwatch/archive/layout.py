"""Where the archive keeps each file: an interface, kept stable.

    {root}/{exchange}/{kind}/symbol={SYMBOL}/depth={DEPTH}/date={YYYY-MM-DD}/{name}
    {root}/{exchange}/trades/symbol={SYMBOL}/date={YYYY-MM-DD}/{name}
    {root}/{exchange}/_manifests/symbol={SYMBOL}/depth={DEPTH}/date={YYYY-MM-DD}.json
    {root}/{exchange}/_log/symbol={SYMBOL}/depth={DEPTH}/date={YYYY-MM-DD}/{table}.parquet
    {root}/csv/{exchange}/...  the same tree again for `--format csv.gz`

`exchange` is Tardis's id (bybit, bybit-spot), `kind` Tardis's data type
(incremental_book_L2, quotes) or ours (gaps), and `name` Tardis's download
name, `{exchange}_{kind}_{YYYY-MM-DD}_{SYMBOL}.parquet` (or `.csv.gz`).

Why this shape:
- Hive partitions (`key=value` directories) are what pyarrow datasets, Polars,
  DuckDB and Spark prune by without being told the layout: a query for one
  symbol and a month opens only that symbol's and month's files.
- The kind comes first, so one glob (`{root}/bybit/quotes/**/*.parquet`)
  reads one schema; symbol before date, as Tardis, Crypto Lake and cryptofeed
  partition, because analyses select a few symbols over many days.
- A book is recorded per depth, so book kinds have a `depth=` level (a symbol
  recorded at two depths is two streams); trades have none (one tape per
  symbol).
- One file per stream, kind and UTC day, named as Tardis names its downloads,
  so a file copied out of the archive is a Tardis file by name and content.
- Manifests live under `_manifests`, and the day's log (archive/log.py)
  under `_log`: engines skip names starting with `_`.
- Tardis's gzip CSVs (`--format csv.gz`) get a tree of their own under `csv/`,
  so a dataset opened on `{root}/bybit/quotes` holds Parquet files only.
"""

from __future__ import annotations

from dataclasses import dataclass

from depthwatch.clock import DAY_US, utc_day
from depthwatch.export import kinds
from depthwatch.feed.registry import TARDIS_EXCHANGE, is_symbol
from depthwatch.records import StreamKey, depth_label

PARQUET = "parquet"
CSV_GZ = "csv.gz"
FORMATS = (PARQUET, CSV_GZ)
ARCHIVED_KINDS = (kinds.L2, kinds.QUOTES, kinds.TRADES, kinds.GAPS)  # per stream-day
MANIFESTS = "_manifests"


@dataclass(frozen=True, order=True)
class StreamDay:
    """One stream's one UTC day: what the archive writes and checks as a unit."""

    exchange: str  # Tardis's id
    symbol: str
    depth: int
    date: str  # YYYY-MM-DD (UTC)

    def __post_init__(self) -> None:
        # Recorded symbols were checked when subscribed; a path is checked again.
        if not is_symbol(self.symbol):
            raise ValueError(f"{self.symbol!r} cannot name an archive path")

    @classmethod
    def of(cls, stream: StreamKey, day: int) -> StreamDay:
        """The stream-day of `stream` on `day` (days since the epoch)."""
        exchange = TARDIS_EXCHANGE[stream.category]
        return cls(exchange, stream.symbol, stream.depth, utc_day(day * DAY_US))

    def file_path(self, kind: str, fmt: str = PARQUET) -> str:
        """The path of the day's `kind` file, relative to the archive's root."""
        name = f"{self.exchange}_{kind}_{self.date}_{self.symbol}.{fmt}"
        depth = "" if kind == kinds.TRADES else f"depth={self.depth}/"
        tree = "csv/" if fmt == CSV_GZ else ""
        return f"{tree}{self.exchange}/{kind}/symbol={self.symbol}/{depth}date={self.date}/{name}"

    def manifest_path(self) -> str:
        return (
            f"{self.exchange}/{MANIFESTS}/symbol={self.symbol}/depth={self.depth}/"
            f"date={self.date}.json"
        )

    def __str__(self) -> str:
        return f"{self.exchange} {self.symbol}@{depth_label(self.depth)} {self.date}"
