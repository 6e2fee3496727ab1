"""Tardis.dev-compatible exports of recorded history: the rows of each kind,
handed to the sinks that write them (export.sinks: CSV, Arrow, Parquet).

Layouts: see header() (timestamps in microseconds since the epoch;
`timestamp` is exchange time, `local_timestamp` arrival time). The range
[start, end) applies to the exchange timestamp.

incremental_book_L2 never emits a delta on a broken book: it opens with the
book as it stood at `start` (emitted as `is_snapshot=true` rows stamped
`start`), and after a gap waits for the next recorded snapshot, which appears
as `is_snapshot=true` rows (export.replay decides where the book is known).
book_snapshot_N[_interval] rows come from the same replay (export.snapshots).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import sqlalchemy as sa

from depthwatch.export import arrays, kinds
from depthwatch.export.columnar import L2Columns, QuoteColumns, l2_columns, quote_columns
from depthwatch.export.kinds import ExportKind
from depthwatch.export.replay import BookReplay, IntBookReplay, StepKind
from depthwatch.export.rpi import rpi_l2_rows
from depthwatch.export.sinks import (
    ArrowSink,
    CsvSink,
    ParquetSink,
    Row,
    RowSink,
)
from depthwatch.export.snapshots import SnapshotBlock, snapshot_blocks, snapshot_rows
from depthwatch.feed.registry import TARDIS_EXCHANGE
from depthwatch.records import RPI_DEPTH, depth_label, levels_of
from depthwatch.storage.read.book import quotes
from depthwatch.storage.read.rows import BookEventRow
from depthwatch.storage.read.streams import (
    NotRecorded,
    Stream,
    find_stream,
    instrument_id,
    require_schema,
)
from depthwatch.storage.read.trades import trades

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class ExportRequest:
    kind: str
    category: str
    symbol: str
    start_us: int
    end_us: int
    depth: int | None = None  # None: the only depth recorded for this symbol
    # The kind parsed, once, when the request is made (ValueError if unknown).
    spec: ExportKind = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", ExportKind.parse(self.kind))

    @property
    def exchange(self) -> str:
        return TARDIS_EXCHANGE[self.category]


@dataclass(frozen=True)
class PlannedRequest(ExportRequest):
    """A request checked against the recording (check_requests): the
    instrument and stream it reads, so the export does not look them up again.
    Being an ExportRequest, it splits into days (dataclasses.replace) as one."""

    instrument: int = 0
    stream: Stream | None = None  # None for trades and gaps


class Progress:
    """Rows, rate, share of the range and ETA on `out`: one line redrawn in
    place on a terminal, nothing otherwise (piped or redirected output stays
    clean); at most every `every_s` seconds."""

    def __init__(
        self, requests: Sequence[ExportRequest], out: TextIO | None, every_s: float = 0.5
    ) -> None:
        self.out = out if out is not None and out.isatty() else None
        self.every_s = every_s
        self.rows = 0
        self.started = time.monotonic()
        self._last = self.started
        self._span_us = sum(max(0, r.end_us - r.start_us) for r in requests) or 1
        self._done_us = 0  # of the requests finished
        self._request: ExportRequest | None = None

    def begin(self, request: ExportRequest) -> None:
        if self._request is not None:
            self._done_us += max(0, self._request.end_us - self._request.start_us)
        self._request = request

    def tick(self, rows: int, ts_us: int) -> None:
        self.rows += rows
        now = time.monotonic()
        if self.out is None or now - self._last < self.every_s:
            return
        self._last = now
        request = self._request
        into = (
            0
            if request is None
            else min(max(0, ts_us - request.start_us), request.end_us - request.start_us)
        )
        done = min(1.0, (self._done_us + into) / self._span_us)
        elapsed = now - self.started
        eta = f"{elapsed * (1 - done) / done:,.0f} s" if done > 0 else "?"
        bar = "#" * round(done * 20)
        symbol = "" if request is None else f"{request.symbol} "
        print(
            f"\rexport {symbol}[{bar:<20}] {done:4.0%} {self.rows:,} rows "
            f"{self.rows / elapsed:,.0f} rows/s ETA {eta}   ",
            end="",
            file=self.out,
            flush=True,
        )

    def finish(self) -> None:
        if self.out is not None:
            elapsed = time.monotonic() - self.started
            print(
                f"\rexport: done, {self.rows:,} rows in {elapsed:,.1f} s"
                f" ({self.rows / max(elapsed, 1e-9):,.0f} rows/s)" + " " * 30,
                file=self.out,
                flush=True,
            )


def export(
    engine: sa.Engine,
    requests: ExportRequest | Sequence[ExportRequest],
    sink: RowSink,
    progress_to: TextIO | None = sys.stderr,
) -> int:
    """Stream the rows of each request, one after the other, into `sink`
    (closed at the end, error or not); returns the number of data rows."""
    if isinstance(requests, ExportRequest):
        requests = [requests]
    progress = Progress(requests, progress_to)
    # Closed on an error too: a Parquet writer left open would try to finish
    # its file when collected, after the caller has closed (and removed) it.
    try:
        with engine.connect() as conn:
            for request in requests:
                progress.begin(request)
                sink.begin(request)
                # Closed before the connection is given back, on an error
                # too: a part made ahead holds it on a thread of its own.
                blocks = _block_parts(conn, request, sink)
                if blocks is not None:
                    with closing(blocks):
                        for block in blocks:
                            sink.write_block(block)
                            progress.tick(len(block), int(block.timestamp[-1]))
                    continue
                parts = _column_parts(conn, request, sink)
                if parts is not None:
                    assert isinstance(sink, ArrowSink | ParquetSink)
                    with closing(parts):
                        for columns, last_us in parts:
                            sink.write_columns(columns)
                            progress.tick(len(columns[0]), last_us)
                    continue
                for chunk in _chunks(request_rows(conn, request, progress)):
                    sink.write(chunk)
    finally:
        sink.close()
    progress.finish()
    return progress.rows


def check_requests(engine: sa.Engine, requests: Sequence[ExportRequest]) -> list[PlannedRequest]:
    """Every request can be served (schema, instrument, depth, levels), checked
    before anything is written; raises NotRecorded saying why not. The plans
    returned are what to hand `export`, which then looks nothing up again."""
    with engine.connect() as conn:
        require_schema(conn)
        return [_plan(conn, request) for request in requests]


def _plan(conn: sa.Connection, request: ExportRequest) -> PlannedRequest:
    """The request with what it reads, if it can be served."""
    if isinstance(request, PlannedRequest):
        return request
    fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request) if f.init}
    if not request.spec.reads_book:
        iid = instrument_id(conn, request.category, request.symbol)
        return PlannedRequest(**fields, instrument=iid)
    depth = request.depth
    if request.spec.family == kinds.L2_RPI:
        if depth not in (None, RPI_DEPTH):
            raise NotRecorded(
                f"{request.kind}: only the rpi book has RPI sizes (--depth rpi), "
                f"not depth {depth_label(depth)}"
            )
        depth = RPI_DEPTH
    stream = find_stream(conn, request.category, request.symbol, depth)
    snapshot = request.spec.snapshot
    most = levels_of(stream.depth)
    if snapshot is not None and snapshot.levels > most:
        raise NotRecorded(
            f"{request.kind}: {request.symbol} was recorded {most} levels deep; "
            f"ask for at most book_snapshot_{most}"
        )
    return PlannedRequest(**fields, instrument=stream.instrument_id, stream=stream)


def request_rows(conn: sa.Connection, request: ExportRequest, progress: Progress) -> Iterator[Row]:
    planned = _plan(conn, request)
    family, stream = planned.spec.family, planned.stream
    if family == kinds.TRADES:
        return _trade_rows(conn, planned.instrument, planned, progress)
    if family == kinds.GAPS:
        return _gap_rows(conn, planned, progress)
    assert stream is not None  # _plan found the book's stream
    if family == kinds.L2:
        return _l2_rows(conn, stream, planned, progress)
    if family == kinds.L2_RPI:
        return rpi_l2_rows(conn, stream, planned.start_us, planned.end_us, progress.tick)
    if family == kinds.QUOTES:
        return _quote_rows(conn, stream, planned, progress)
    spec = planned.spec.snapshot
    assert spec is not None  # the book_snapshot family
    replay = IntBookReplay(conn, stream, planned.start_us, planned.end_us, spec.levels)
    return _counted(snapshot_rows(replay, spec), progress)


def _column_parts(
    conn: sa.Connection, request: ExportRequest, sink: RowSink
) -> Generator[tuple[list[pa.Array], int], None, None] | None:
    """The request's rows as Arrow columns, with the last exchange time of
    each part, for a sink that takes columns and a kind made in columns
    (incremental_book_L2 and quotes, without schema 1-3 rows); None otherwise."""
    family = request.spec.family
    if not isinstance(sink, ArrowSink | ParquetSink) or family not in (kinds.L2, kinds.QUOTES):
        return None
    planned = _plan(conn, request)
    assert planned.stream is not None  # a book kind
    span = (conn, planned.stream, planned.start_us, planned.end_us)
    if family == kinds.QUOTES:
        quote_parts = quote_columns(*span)
        return None if quote_parts is None else _arrow_parts(quote_parts, _quote_arrays)
    parts = l2_columns(*span, ahead=True)  # an Arrow or Parquet sink: columnar.read_batches
    return None if parts is None else _arrow_parts(parts, _l2_arrays)


def _block_parts(
    conn: sa.Connection, request: ExportRequest, sink: RowSink
) -> Generator[SnapshotBlock, None, None] | None:
    """A book_snapshot kind's rows in blocks made in NumPy
    (snapshots.snapshot_blocks, read ahead into Arrow and Parquet); None for other kinds
    and what it leaves to the row path."""
    if request.spec.family != kinds.BOOK_SNAPSHOT:
        return None
    planned = _plan(conn, request)
    spec = planned.spec.snapshot
    assert planned.stream is not None and spec is not None  # a book_snapshot kind
    ahead = isinstance(sink, ArrowSink | ParquetSink)  # not into CSV: columnar.read_batches
    return snapshot_blocks(conn, planned.stream, planned.start_us, planned.end_us, spec, ahead)


def _arrow_parts(
    parts: Generator[QuoteColumns, None, None] | Generator[L2Columns, None, None],
    columns_of: Callable[[Any], list[pa.Array]],
) -> Generator[tuple[list[pa.Array], int], None, None]:
    """Each non-empty part as Arrow columns, with its last exchange time.
    Whatever ends this (an error here too) closes the parts, and with them
    their reading ahead (a thread holding the connection)."""
    with closing(parts):
        for part in parts:
            if len(part):
                yield columns_of(part), int(part.timestamp[-1])


def _quote_arrays(part: QuoteColumns) -> list[pa.Array]:
    no_ask, no_bid = ~part.has_ask, ~part.has_bid
    return [
        arrays.numbers(part.timestamp),
        arrays.numbers(part.local_timestamp),
        arrays.numbers(part.ask_amount, no_ask),
        arrays.numbers(part.ask_price, no_ask),
        arrays.numbers(part.bid_price, no_bid),
        arrays.numbers(part.bid_amount, no_bid),
    ]


def _l2_arrays(part: L2Columns) -> list[pa.Array]:
    return [
        arrays.numbers(part.timestamp),
        arrays.numbers(part.local_timestamp),
        arrays.booleans(part.is_snapshot),
        arrays.choose(part.is_bid, "bid", "ask"),
        arrays.numbers(part.price),
        arrays.numbers(part.amount),
    ]


def _counted(rows: Iterator[Row], progress: Progress) -> Iterator[Row]:
    for row in rows:
        progress.tick(1, row[0])
        yield row


def export_csv(
    engine: sa.Engine, request: ExportRequest, out: TextIO, progress_to: TextIO | None = sys.stderr
) -> int:
    return export(engine, request, CsvSink(request.kind, out), progress_to)


def _chunks(rows: Iterator[Row], size: int = 5_000) -> Iterator[list[Row]]:
    buffer: list[Row] = []
    for row in rows:
        buffer.append(row)
        if len(buffer) >= size:
            yield buffer
            buffer = []
    if buffer:
        yield buffer


def _l2_rows(
    conn: sa.Connection, stream: Stream, request: ExportRequest, progress: Progress
) -> Iterator[Row]:
    replay = BookReplay(conn, stream, request.start_us, request.end_us)
    for step in replay:
        event = step.event
        if event is None:
            continue
        if step.kind is StepKind.START and not event.is_snapshot:
            # The book as it stood at `start`, so the file opens on a snapshot.
            start = request.start_us
            rows = [(start, start, True, "bid", p, s) for p, s in replay.book.bids.top()]
            rows += [(start, start, True, "ask", p, s) for p, s in replay.book.asks.top()]
        elif step.kind is StepKind.APPLY:
            rows = _event_rows(event)
        else:
            continue
        progress.tick(len(rows), event.ts_us)
        yield from rows


def _event_rows(event: BookEventRow) -> list[Row]:
    ts, local, snap = event.ts_us, event.local_us, event.is_snapshot
    return [
        (ts, local, snap, "bid", p, s)
        for p, s in zip(event.bid_prices, event.bid_sizes, strict=True)
    ] + [
        (ts, local, snap, "ask", p, s)
        for p, s in zip(event.ask_prices, event.ask_sizes, strict=True)
    ]


def _quote_rows(
    conn: sa.Connection, stream: Stream, request: ExportRequest, progress: Progress
) -> Iterator[Row]:
    return _counted(map(tuple, quotes(conn, stream, request.start_us, request.end_us)), progress)


def _gap_rows(conn: sa.Connection, request: ExportRequest, progress: Progress) -> Iterator[Row]:
    from depthwatch.export.gaps import find_gaps, gap_rows

    found = find_gaps(
        conn, request.category, [request.symbol], request.start_us, request.end_us, request.depth
    )
    for row in gap_rows(found):
        progress.tick(1, row[3])
        yield row[2:]  # the sinks write exchange and symbol


def _trade_rows(
    conn: sa.Connection, iid: int, request: ExportRequest, progress: Progress
) -> Iterator[Row]:
    return _counted(map(tuple, trades(conn, iid, request.start_us, request.end_us)), progress)
