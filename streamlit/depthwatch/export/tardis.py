"""Tardis.dev-compatible CSV exports of recorded history.

Layouts: see HEADERS (timestamps in microseconds since the epoch; `timestamp`
is exchange time, `local_timestamp` arrival time).

The range [start, end) applies to the exchange timestamp. The L2 export never
emits a delta on a broken book: it opens with the book as it stood at `start`
(rebuilt from the last snapshot before it, emitted as `is_snapshot=true` rows
stamped `start`), checks `u` continuity itself, and after any gap waits for the
next recorded snapshot, which appears as `is_snapshot=true` rows.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol, TextIO

import sqlalchemy as sa

from depthwatch.book import OrderBook
from depthwatch.feed.topics import TARDIS_EXCHANGE, valid_depths
from depthwatch.records import Level
from depthwatch.storage import queries

KINDS = ("incremental_book_L2", "quotes", "trades")

_COMMON = "exchange,symbol,timestamp,local_timestamp,"
HEADERS = {
    "incremental_book_L2": _COMMON + "is_snapshot,side,price,amount",
    "quotes": _COMMON + "ask_amount,ask_price,bid_price,bid_amount",
    "trades": _COMMON + "id,side,price,amount",
}


@dataclass(frozen=True)
class ExportRequest:
    kind: str
    category: str
    symbol: str
    start_us: int
    end_us: int
    depth: int | None = None  # None: the only depth recorded for this symbol

    @property
    def exchange(self) -> str:
        return TARDIS_EXCHANGE[self.category]


class Progress:
    """Rows, rate and ETA on stderr, at most every `every_s` seconds."""

    def __init__(self, request: ExportRequest, out: TextIO | None, every_s: float = 2.0) -> None:
        self.request = request
        self.out = out
        self.every_s = every_s
        self.rows = 0
        self.started = time.monotonic()
        self._last = self.started

    def tick(self, rows: int, ts_us: int) -> None:
        self.rows += rows
        now = time.monotonic()
        if self.out is None or now - self._last < self.every_s:
            return
        self._last = now
        elapsed = now - self.started
        span = self.request.end_us - self.request.start_us
        done = min(1.0, max(0.0, (ts_us - self.request.start_us) / span)) if span > 0 else 1.0
        eta = elapsed * (1 - done) / done if done > 0 else float("nan")
        print(
            f"export: {self.rows:,} rows, {self.rows / elapsed:,.0f} rows/s, "
            f"{done:.0%} of the range, ETA {eta:,.0f} s",
            file=self.out,
            flush=True,
        )

    def finish(self) -> None:
        if self.out is not None:
            elapsed = time.monotonic() - self.started
            print(
                f"export: done, {self.rows:,} rows in {elapsed:,.1f} s", file=self.out, flush=True
            )


Row = tuple  # one data row without the constant exchange and symbol columns


def export(
    engine: sa.Engine,
    request: ExportRequest,
    sink: RowSink,
    progress_to: TextIO | None = sys.stderr,
) -> int:
    """Stream the export into `sink`; returns the number of data rows."""
    progress = Progress(request, progress_to)
    # Closed on an error too: a Parquet writer left open would try to finish
    # its file when collected, after the caller has closed (and removed) it.
    try:
        with engine.connect() as conn:
            iid = queries.instrument_id(conn, request.category, request.symbol)
            if request.kind == "incremental_book_L2":
                rows = _l2_rows(conn, iid, request, progress)
            elif request.kind == "quotes":
                rows = _quote_rows(conn, iid, request, progress)
            elif request.kind == "trades":
                rows = _trade_rows(conn, iid, request, progress)
            else:
                raise ValueError(f"unknown export kind {request.kind!r}; use one of {KINDS}")
            for chunk in _chunks(rows):
                sink.write(chunk)
    finally:
        sink.close()
    progress.finish()
    return progress.rows


def export_csv(
    engine: sa.Engine, request: ExportRequest, out: TextIO, progress_to: TextIO | None = sys.stderr
) -> int:
    return export(engine, request, CsvSink(request, out), progress_to)


def _chunks(rows: Iterator[Row], size: int = 5_000) -> Iterator[list[Row]]:
    buffer: list[Row] = []
    for row in rows:
        buffer.append(row)
        if len(buffer) >= size:
            yield buffer
            buffer = []
    if buffer:
        yield buffer


class RowSink(Protocol):
    def write(self, rows: list[Row]) -> None: ...
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

    def __init__(self, request: ExportRequest, out: TextIO) -> None:
        self.out = out
        self.prefix = f"{request.exchange},{request.symbol},"
        out.write(HEADERS[request.kind] + "\n")

    def write(self, rows: list[Row]) -> None:
        prefix = self.prefix
        self.out.write("".join(prefix + ",".join(map(_csv_value, row)) + "\n" for row in rows))

    def close(self) -> None:
        self.out.flush()


# Parquet only: `timestamp` and `local_timestamp` again as timestamp[us, UTC].
TIME_COLUMNS = ("exchange_time", "local_time")


class ParquetSink:
    """The same columns in Parquet: integer microsecond timestamps, prices and
    amounts as float64 (exact for decimals of up to 15 significant digits),
    then TIME_COLUMNS; row groups of ROW_GROUP_ROWS."""

    ROW_GROUP_ROWS = 100_000

    def __init__(self, request: ExportRequest, out: BinaryIO) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        self.request = request
        self.names = HEADERS[request.kind].split(",")[2:]
        types = {
            "timestamp": pa.int64(),
            "local_timestamp": pa.int64(),
            "is_snapshot": pa.bool_(),
            "side": pa.string(),
            "id": pa.string(),
        }
        self.types = [types.get(name, pa.float64()) for name in self.names]
        fields = [("exchange", pa.string()), ("symbol", pa.string())]
        fields += list(zip(self.names, self.types, strict=True))
        # After Tardis's columns, the two times typed, for pandas and Arrow users.
        fields += [(name, pa.timestamp("us", tz="UTC")) for name in TIME_COLUMNS]
        self.schema = pa.schema(fields)
        self.writer = pq.ParquetWriter(out, self.schema, compression="zstd")
        self.pending: list[Row] = []

    def write(self, rows: list[Row]) -> None:
        self.pending.extend(rows)
        if len(self.pending) >= self.ROW_GROUP_ROWS:
            self._write_group()

    def _write_group(self) -> None:
        pa, rows = self.pa, self.pending
        self.pending = []
        columns = [
            pa.array([self.request.exchange] * len(rows), pa.string()),
            pa.array([self.request.symbol] * len(rows), pa.string()),
        ]
        for index, kind in enumerate(self.types):
            values = [row[index] for row in rows]
            if kind == pa.float64():
                columns.append(pa.array(values, pa.string()).cast(pa.float64()))
            else:
                columns.append(pa.array(values, kind))
        columns += [column.cast(pa.timestamp("us", tz="UTC")) for column in columns[2:4]]
        self.writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))

    def close(self) -> None:
        if self.pending:
            self._write_group()
        self.writer.close()


def resolve_depth(conn: sa.Connection, iid: int, request: ExportRequest) -> int:
    """The requested depth, or the only one recorded; several need a choice."""
    candidates = valid_depths(request.category, legacy=True)
    depths = queries.recorded_depths(conn, iid, candidates)
    if request.depth is not None:
        if request.depth not in depths:
            raise queries.NotRecorded(
                f"no depth-{request.depth} book recorded for {request.symbol}; recorded: {depths}"
            )
        return request.depth
    if not depths:
        raise queries.NotRecorded(f"no order book recorded for {request.symbol}")
    if len(depths) > 1:
        raise queries.NotRecorded(
            f"{request.symbol} was recorded at depths {depths}: choose one with --depth"
        )
    return depths[0]


def _l2_rows(
    conn: sa.Connection, iid: int, request: ExportRequest, progress: Progress
) -> Iterator[Row]:
    depth = resolve_depth(conn, iid, request)
    book = OrderBook()
    valid = False
    last_u = 0
    in_range = False
    # Start from the latest point before `start` where the whole book is known:
    # an exchange snapshot, or (usually much closer) one of our checkpoints.
    from_us = request.start_us
    snapshot_us = queries.last_snapshot_before(conn, iid, depth, request.start_us)
    checkpoint = queries.last_checkpoint_at_or_before(conn, iid, depth, request.start_us)
    if snapshot_us is not None:
        from_us = snapshot_us
    if checkpoint is not None and (snapshot_us is None or checkpoint.ts_us > snapshot_us):
        # The checkpoint is the book after message u, before any message with
        # ts >= its stamp.
        book.apply_levels(checkpoint.bids, checkpoint.asks)
        valid, last_u, from_us = True, checkpoint.u, checkpoint.ts_us
    for event in queries.book_events(conn, iid, depth, from_us, request.end_us):
        if not in_range and event.ts_us >= request.start_us:
            in_range = True
            if valid and not event.is_snapshot:
                # The book as it stood at `start`, so the file opens on a snapshot.
                bids, asks = book.sides()
                rows = _level_rows(request.start_us, request.start_us, True, bids, asks)
                progress.tick(len(rows), event.ts_us)
                yield from rows
        if event.is_snapshot:
            book.clear()
            valid = True
        elif not valid or event.u <= last_u:
            continue  # waiting for a snapshot, or a duplicate of what is applied
        elif event.u != last_u + 1:
            valid = False  # a gap: nothing more until the next snapshot
            continue
        last_u = event.u
        bids = [list(level) for level in zip(event.bid_prices, event.bid_sizes, strict=True)]
        asks = [list(level) for level in zip(event.ask_prices, event.ask_sizes, strict=True)]
        book.apply_levels(bids, asks)
        if in_range:
            rows = _level_rows(event.ts_us, event.local_us, event.is_snapshot, bids, asks)
            progress.tick(len(rows), event.ts_us)
            yield from rows


def _level_rows(
    ts_us: int, local_us: int, is_snapshot: bool, bids: list[Level], asks: list[Level]
) -> list[Row]:
    return [(ts_us, local_us, is_snapshot, "bid", p, s) for p, s in bids] + [
        (ts_us, local_us, is_snapshot, "ask", p, s) for p, s in asks
    ]


def _quote_rows(
    conn: sa.Connection, iid: int, request: ExportRequest, progress: Progress
) -> Iterator[Row]:
    depth = resolve_depth(conn, iid, request)
    for row in queries.quotes(conn, iid, depth, request.start_us, request.end_us):
        progress.tick(1, row[0])
        yield tuple(row)


def _trade_rows(
    conn: sa.Connection, iid: int, request: ExportRequest, progress: Progress
) -> Iterator[Row]:
    for row in queries.trades(conn, iid, request.start_us, request.end_us):
        progress.tick(1, row[0])
        yield tuple(row)
