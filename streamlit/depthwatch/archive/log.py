"""The archive's copy of a stream-day's log: the database rows that every
reader of history needs, one Parquet file per table, so that a day dropped
from PostgreSQL (`--hot-days`) reads back through the same decoders as before,
byte for byte (storage/read/cold.py):

    {root}/{exchange}/_log/symbol={SYMBOL}/depth={DEPTH}/date={YYYY-MM-DD}/{table}.parquet

Why the rows and not the Tardis files: those hold prices as float64, which
loses the exchange's text (`60000.10` reads back as `60000.1`), and they
cannot restart a replay (no checkpoints, no update ids). The packed chunks
are also the smallest form of the book there is. The `_log` directory starts
with an underscore, so engines reading the Tardis kinds skip it.

Each file is sorted as its readers ask the database (LOG_TABLES' `order`),
in row groups of ROW_GROUP_ROWS, so a read of a moment opens one group.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from depthwatch.archive.layout import StreamDay

if TYPE_CHECKING:
    import pyarrow as pa

    from depthwatch.archive.store import ArchiveStore

LOG = "_log"
ROW_GROUP_ROWS = 1024  # chunk rows hold up to a second each: ~17 minutes a group


@dataclass(frozen=True)
class LogTable:
    name: str  # the file's name, and the database table it copies
    time_column: str  # the column a day and a range select on
    columns: tuple[tuple[str, str], ...]  # (name, Arrow type name), in the rows' order

    def schema(self) -> pa.Schema:
        import pyarrow as pa

        types = {
            "int16": pa.int16(),
            "int32": pa.int32(),
            "int64": pa.int64(),
            "float32": pa.float32(),
            "bool": pa.bool_(),
            "string": pa.string(),
            "binary": pa.binary(),
            "strings": pa.list_(pa.string()),
        }
        return pa.schema([(name, types[kind]) for name, kind in self.columns])

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)


CHUNKS = LogTable(
    "book_chunks",
    "ts_us",
    (
        ("ts_us", "int64"),
        ("u", "int64"),
        ("n", "int32"),
        ("snapshot", "bool"),
        ("payload", "binary"),
    ),
)
CHECKPOINTS = LogTable(
    "book_checkpoints",
    "ts_us",
    (
        ("ts_us", "int64"),
        ("local_us", "int64"),
        ("u", "int64"),
        ("seq", "int64"),
        ("bid_prices", "strings"),
        ("bid_sizes", "strings"),
        ("ask_prices", "strings"),
        ("ask_sizes", "strings"),
    ),
)
TRADES = LogTable(
    "trades",
    "ts_us",
    (
        ("ts_us", "int64"),
        ("local_us", "int64"),
        ("trade_id", "string"),
        ("side", "string"),
        ("price", "string"),  # the exchange's text, as numeric::text gives it
        ("size", "string"),
        ("seq", "int64"),
    ),
)
FEED_EVENTS = LogTable(
    "feed_events",
    "local_us",
    (
        ("id", "int64"),
        ("local_us", "int64"),
        ("kind", "string"),
        ("depth", "int16"),
        ("detail", "string"),
    ),
)
HEARTBEATS = LogTable(
    "heartbeats",
    "local_us",
    (("local_us", "int64"), ("interval_s", "float32"), ("simulated", "bool")),
)
LOG_TABLES = (CHUNKS, CHECKPOINTS, TRADES, FEED_EVENTS, HEARTBEATS)


def log_path(day: StreamDay, table: LogTable) -> str:
    """The file of `table` for the stream-day, relative to the archive's root."""
    return (
        f"{day.exchange}/{LOG}/symbol={day.symbol}/depth={day.depth}/date={day.date}/"
        f"{table.name}.parquet"
    )


def write_log_file(
    table: LogTable, batches: Iterable[Sequence[Sequence[object]]], path: Path
) -> int:
    """The rows (in the table's column order, already sorted), given a batch
    at a time, as a Parquet file at `path`; returns how many. Deterministic:
    the same rows give the same bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = table.schema()
    written = 0
    with pq.ParquetWriter(path, schema, compression="zstd", write_statistics=True) as writer:
        for rows in batches:
            columns = zip(*rows, strict=True)
            arrays = [_array(c, f.type) for c, f in zip(columns, schema, strict=True)]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema), ROW_GROUP_ROWS)
            written += len(rows)
        if not written:
            writer.write_table(schema.empty_table())
    return written


def _array(values: Sequence[object], kind: pa.DataType) -> pa.Array:
    import pyarrow as pa

    if kind == pa.binary():
        # bytea comes as memoryview, and pyarrow 26 never releases a
        # memoryview it converts: the archive grew by a day's chunks each day.
        values = [bytes(v) for v in values]  # type: ignore[call-overload]
    return pa.array(values, type=kind)


def read_log(
    store: ArchiveStore,
    path: str,
    table: LogTable,
    start_us: int,
    end_us: int,
    columns: list[str] | None = None,
) -> Iterator[pa.Table]:
    """The file's rows with start <= time < end, a row group at a time, in
    file order (of `columns`, which must hold the time column; None: all);
    groups outside the range (by their statistics) are not read.
    FileNotFoundError if the file is missing."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with store.open_input(path) as source:
        parquet = pq.ParquetFile(source)
        index = parquet.schema_arrow.get_field_index(table.time_column)
        for group in range(parquet.metadata.num_row_groups):
            stats = parquet.metadata.row_group(group).column(index).statistics
            known = stats is not None and stats.has_min_max
            if known and (stats.max < start_us or stats.min >= end_us):
                continue
            rows = parquet.read_row_group(group, columns=columns)
            times = rows.column(table.time_column)
            inside = pc.and_(pc.greater_equal(times, start_us), pc.less(times, end_us))
            rows = rows.filter(inside)
            if rows.num_rows:
                yield rows
