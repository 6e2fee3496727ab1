"""The sinks an export's rows go to: Tardis CSV, Arrow tables of the Parquet
layout, and Parquet files of those tables. Rows come as tuples (`write`),
as typed Arrow columns (`write_columns`: the kinds made in columns) or as
book_snapshot blocks (`write_block`); export.tardis decides which."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, Protocol, TextIO

from depthwatch.export import arrays, kinds
from depthwatch.export.background import BackgroundWriter
from depthwatch.export.kinds import ExportKind
from depthwatch.export.snapshots import SnapshotBlock, snapshot_columns

if TYPE_CHECKING:
    import pyarrow as pa

    from depthwatch.export.tardis import ExportRequest

Row = tuple  # one data row without the constant exchange and symbol columns


class RowSink(Protocol):
    def begin(self, request: ExportRequest) -> None:
        """The rows that follow are `request`'s (its exchange and symbol)."""

    def write(self, rows: list[Row]) -> None: ...
    def write_block(self, block: SnapshotBlock) -> None: ...
    def close(self) -> None: ...


def _csv_value(value: object) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


class CsvSink:
    """Tardis CSV: one header row, then the rows; empty fields for missing values."""

    def __init__(self, kind: str, out: TextIO) -> None:
        self.out = out
        self.prefix = ""
        self.exchange_symbol: tuple[str, str] = ("", "")
        spec = ExportKind.parse(kind)
        self.names = spec.header().split(",")
        # book_snapshot rows hold integers: made decimal a batch at a time, in Arrow.
        self.snapshots = spec.snapshot is not None
        # Gap details are free text: quoted where needed (Tardis's kinds never need it).
        self.quoted = csv.writer(out, lineterminator="\n") if spec.family == kinds.GAPS else None
        # book_snapshot text is made and written on a thread of its own.
        self.background = BackgroundWriter() if self.snapshots else None
        out.write(spec.header() + "\n")

    def begin(self, request: ExportRequest) -> None:
        self.prefix = f"{request.exchange},{request.symbol},"
        self.exchange_symbol = (request.exchange, request.symbol)

    def write(self, rows: list[Row]) -> None:
        prefix = self.prefix
        if self.quoted is not None:
            self.quoted.writerows((*self.exchange_symbol, *row) for row in rows)
            return
        if self.snapshots:
            self.write_block(SnapshotBlock.of_rows(rows))
            return
        lines = (prefix + ",".join(map(_csv_value, row)) + "\n" for row in rows)
        text = "".join(lines)
        self._write(lambda: self.out.write(text))

    def write_block(self, block: SnapshotBlock) -> None:
        """book_snapshot rows in a block, made text on the writer thread."""
        exchange, symbol = self.exchange_symbol
        self._write(lambda: self.out.write(self._snapshot_lines(block, exchange, symbol)))

    def _write(self, write: Callable[[], object]) -> None:
        if self.background is None:
            write()
        else:
            self.background.submit(write)

    def _snapshot_lines(self, block: SnapshotBlock, exchange: str, symbol: str) -> str:
        import pyarrow as pa
        import pyarrow.csv as pa_csv

        ts, local, levels = snapshot_columns(block, as_text=True)
        rows = len(block)
        names = [arrays.constant(exchange, rows), arrays.constant(symbol, rows)]
        times = [arrays.numbers(ts), arrays.numbers(local)]
        table = pa.Table.from_arrays([*names, *times, *levels], names=self.names)
        text = io.BytesIO()
        options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
        pa_csv.write_csv(table, text, options)  # nulls (short sides) come out empty
        return text.getvalue().decode("ascii")

    def close(self) -> None:
        try:
            if self.background is not None:
                self.background.close()
        finally:
            self.out.flush()


# Parquet only: `timestamp` and `local_timestamp` again as timestamp[us, UTC].
TIME_COLUMNS = {"exchange_time": "timestamp", "local_time": "local_timestamp"}
GAP_TIME_COLUMNS = {"start_time": "start_timestamp", "end_time": "end_timestamp"}


# Time columns: integer microseconds, or the same typed (TIME_COLUMNS).
DELTA_ENCODED = frozenset(
    [*TIME_COLUMNS, *TIME_COLUMNS.values(), *GAP_TIME_COLUMNS, *GAP_TIME_COLUMNS.values()]
)


class ArrowSink:
    """The rows as Arrow tables of the Parquet layout: Tardis's columns
    (integer microsecond timestamps; prices and amounts float64, exact for
    decimals of up to 15 significant digits; missing levels null), then
    TIME_COLUMNS. A table per GROUP_CELLS values (at most GROUP_ROWS rows; a
    book_snapshot_25 row has 104), or per symbol, handed to `on_table` or kept
    for table(): what waits for a table stays ~45 MB at most, whatever the kind."""

    GROUP_ROWS = 100_000
    # Rows given as Python tuples (trades, gaps, schema 1-3 books) cost ~10x
    # their Arrow size while they wait: tables of at most this many (a trades
    # export peaked at 199 MB with 100k, 158 MB with 50k; its file +10 %).
    TUPLE_GROUP_ROWS = 50_000
    GROUP_CELLS = 600_000

    def __init__(self, kind: str, on_table: Callable[[pa.Table], None] | None = None) -> None:
        import pyarrow as pa

        self.pa = pa
        self.on_table = on_table
        self.tables: list[pa.Table] = []
        self.exchange = self.symbol = ""
        spec = ExportKind.parse(kind)
        self.names = spec.header().split(",")[2:]
        types = {
            "timestamp": pa.int64(),
            "local_timestamp": pa.int64(),
            "is_snapshot": pa.bool_(),
            "side": pa.string(),
            "id": pa.string(),
            "depth": pa.int64(),
            "start_timestamp": pa.int64(),
            "end_timestamp": pa.int64(),
            "cause": pa.string(),
            "detail": pa.string(),
        }
        self.types = [types.get(name, pa.float64()) for name in self.names]
        fields = [("exchange", pa.string()), ("symbol", pa.string())]
        fields += list(zip(self.names, self.types, strict=True))
        # After Tardis's columns, the two times typed, for pandas and Arrow users.
        self.typed_times = GAP_TIME_COLUMNS if spec.family == kinds.GAPS else TIME_COLUMNS
        self.typed_from = [2 + self.names.index(f) for f in self.typed_times.values()]
        fields += [(name, pa.timestamp("us", tz="UTC")) for name in self.typed_times]
        self.schema = pa.schema(fields)
        self.group_rows = max(1_000, min(self.GROUP_ROWS, self.GROUP_CELLS // len(self.names)))
        self.snapshots = spec.snapshot is not None
        self.pending: list[Row] = []
        self.pending_columns: list[list[pa.Array]] = []  # written as columns, not yet a table

    def begin(self, request: ExportRequest) -> None:
        self._flush_all()  # a table holds one symbol's rows
        self.exchange, self.symbol = request.exchange, request.symbol

    def write(self, rows: list[Row]) -> None:
        if self.snapshots:
            self.write_block(SnapshotBlock.of_rows(rows))
            return
        if self.pending_columns:
            self._flush_columns(whole_groups_only=False)  # in the order written
        self.pending.extend(rows)
        if len(self.pending) >= min(self.group_rows, self.TUPLE_GROUP_ROWS):
            self._flush()

    def write_columns(self, columns: list[pa.Array]) -> None:
        """Rows given as Tardis's columns after exchange and symbol, typed as
        the schema (a kind made in columns: export.columnar)."""
        if self.pending:
            self._flush()
        self.pending_columns.append(columns)
        if sum(len(part[0]) for part in self.pending_columns) >= self.group_rows:
            self._flush_columns()

    def write_block(self, block: SnapshotBlock) -> None:
        """book_snapshot rows in a block."""
        ts, local, levels = snapshot_columns(block, as_text=False)
        self.write_columns([arrays.numbers(ts), arrays.numbers(local), *levels])

    def _flush_all(self) -> None:
        if self.pending:
            self._flush()
        if self.pending_columns:
            self._flush_columns(whole_groups_only=False)

    def _flush_columns(self, whole_groups_only: bool = True) -> None:
        """The columns written as tables of group_rows rows; the rest kept for
        the next (a row group each costs the file's writer ~2 KB a column
        until it closes), unless it is the last."""
        pa, parts = self.pa, self.pending_columns
        self.pending_columns = []
        columns = [pa.concat_arrays([part[k] for part in parts]) for k in range(len(parts[0]))]
        rows = len(columns[0])
        for start in range(0, rows, self.group_rows):
            if whole_groups_only and start + self.group_rows > rows:
                self.pending_columns = [[c.slice(start) for c in columns]]
                return
            self._emit([c.slice(start, self.group_rows) for c in columns])

    def _flush(self) -> None:
        rows = self.pending
        self.pending = []
        # Prices and amounts come as the exchange's decimal text; an empty
        # field (a missing level) is null.
        columns = [
            arrays.column([row[index] for row in rows], kind)
            for index, kind in enumerate(self.types)
        ]
        self._emit(columns)

    def _emit(self, data: list[pa.Array]) -> None:
        """A table of these columns (Tardis's after exchange and symbol)."""
        pa, rows = self.pa, len(data[0])
        columns = [arrays.constant(self.exchange, rows), arrays.constant(self.symbol, rows), *data]
        columns += [columns[i].cast(pa.timestamp("us", tz="UTC")) for i in self.typed_from]
        table = pa.Table.from_arrays(columns, schema=self.schema)
        if self.on_table is not None:
            self.on_table(table)
        else:
            self.tables.append(table)

    def table(self) -> pa.Table:
        """Every row kept (without `on_table`), as one table."""
        return self.pa.concat_tables(self.tables) if self.tables else self.schema.empty_table()

    def close(self) -> None:
        self._flush_all()


class ParquetSink:
    """The Parquet file of ArrowSink's tables, zstd, a row group per table.

    Encodings chosen by measuring (bench/bench_archive.py, BENCHMARKS.md):
    times as DELTA_BINARY_PACKED (a message's rows share its times, and the
    next message's differ by little), everything else dictionary-encoded (a
    day's prices and amounts repeat). An L2 file went from 47 to ~24 bytes a
    book message; Parquet readers decode both without being told.

    Tables are encoded and written on a thread of their own (one waits at
    most), overlapping the making of the next."""

    def __init__(self, kind: str, out: BinaryIO) -> None:
        import pyarrow.parquet as pq

        self.background = BackgroundWriter(depth=1)
        self.tables = ArrowSink(kind, self._write)
        times = [f.name for f in self.tables.schema if f.name in DELTA_ENCODED]
        self.writer = pq.ParquetWriter(
            out,
            self.tables.schema,
            compression="zstd",
            use_dictionary=[f.name for f in self.tables.schema if f.name not in times],
            column_encoding=dict.fromkeys(times, "DELTA_BINARY_PACKED"),
        )

    def _write(self, table: pa.Table) -> None:
        self.background.submit(lambda: self.writer.write_table(table))

    def begin(self, request: ExportRequest) -> None:
        self.tables.begin(request)

    def write(self, rows: list[Row]) -> None:
        self.tables.write(rows)

    def write_columns(self, columns: list[pa.Array]) -> None:
        self.tables.write_columns(columns)

    def write_block(self, block: SnapshotBlock) -> None:
        self.tables.write_block(block)

    def close(self) -> None:
        try:
            try:
                self.tables.close()
            finally:
                self.background.close()
        finally:
            self.writer.close()
