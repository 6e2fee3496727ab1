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
from typing import TextIO

import sqlalchemy as sa

from depthwatch.book import OrderBook
from depthwatch.feed.topics import TARDIS_EXCHANGE
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
    depth: int | None = None  # None: the depth recorded most for this symbol

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


def export_csv(
    engine: sa.Engine, request: ExportRequest, out: TextIO, progress_to: TextIO | None = sys.stderr
) -> int:
    """Write the export to `out`; returns the number of data rows."""
    progress = Progress(request, progress_to)
    out.write(HEADERS[request.kind] + "\n")
    with engine.connect() as conn:
        iid = queries.instrument_id(conn, request.category, request.symbol)
        if request.kind == "incremental_book_L2":
            lines = _l2_lines(conn, iid, request, progress)
        elif request.kind == "quotes":
            lines = _quote_lines(conn, iid, request, progress)
        elif request.kind == "trades":
            lines = _trade_lines(conn, iid, request, progress)
        else:
            raise ValueError(f"unknown export kind {request.kind!r}; use one of {KINDS}")
        for chunk in _chunks(lines):
            out.write(chunk)
    progress.finish()
    return progress.rows


def _chunks(lines: Iterator[str], size: int = 2_000) -> Iterator[str]:
    buffer: list[str] = []
    for line in lines:
        buffer.append(line)
        if len(buffer) >= size:
            yield "".join(buffer)
            buffer.clear()
    if buffer:
        yield "".join(buffer)


def resolve_depth(conn: sa.Connection, iid: int, request: ExportRequest) -> int:
    depths = queries.recorded_depths(conn, iid)
    if request.depth is not None:
        if request.depth not in depths:
            raise queries.NotRecorded(
                f"no depth-{request.depth} book recorded for {request.symbol}; recorded: {depths}"
            )
        return request.depth
    if not depths:
        raise queries.NotRecorded(f"no order book recorded for {request.symbol}")
    return depths[0]


def _l2_lines(
    conn: sa.Connection, iid: int, request: ExportRequest, progress: Progress
) -> Iterator[str]:
    depth = resolve_depth(conn, iid, request)
    prefix = f"{request.exchange},{request.symbol},"
    base = queries.last_snapshot_before(conn, iid, depth, request.start_us)
    book = OrderBook()
    valid = False
    last_u = 0
    in_range = False
    for event in queries.book_events(
        conn, iid, depth, request.start_us if base is None else base, request.end_us
    ):
        if not in_range and event.ts_us >= request.start_us:
            in_range = True
            if valid and not event.is_snapshot:
                # The book as it stood at `start`, so the file opens on a snapshot.
                bids, asks = book.sides()
                stamp = f"{prefix}{request.start_us},{request.start_us},true,"
                rows = _level_lines(stamp, bids, asks)
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
            flag = "true" if event.is_snapshot else "false"
            rows = _level_lines(f"{prefix}{event.ts_us},{event.local_us},{flag},", bids, asks)
            progress.tick(len(rows), event.ts_us)
            yield from rows


def _level_lines(stamp: str, bids: list[Level], asks: list[Level]) -> list[str]:
    return [f"{stamp}bid,{p},{s}\n" for p, s in bids] + [f"{stamp}ask,{p},{s}\n" for p, s in asks]


def _quote_lines(
    conn: sa.Connection, iid: int, request: ExportRequest, progress: Progress
) -> Iterator[str]:
    depth = resolve_depth(conn, iid, request)
    prefix = f"{request.exchange},{request.symbol},"
    for ts, local, ask_size, ask_price, bid_price, bid_size in queries.quotes(
        conn, iid, depth, request.start_us, request.end_us
    ):
        progress.tick(1, ts)
        yield (
            f"{prefix}{ts},{local},{ask_size or ''},{ask_price or ''},"
            f"{bid_price or ''},{bid_size or ''}\n"
        )


def _trade_lines(
    conn: sa.Connection, iid: int, request: ExportRequest, progress: Progress
) -> Iterator[str]:
    prefix = f"{request.exchange},{request.symbol},"
    for ts, local, trade_id, side, price, size in queries.trades(
        conn, iid, request.start_us, request.end_us
    ):
        progress.tick(1, ts)
        yield f"{prefix}{ts},{local},{trade_id},{side},{price},{size}\n"
