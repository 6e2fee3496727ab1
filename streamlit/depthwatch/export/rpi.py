"""`incremental_book_L2_rpi`: the rows of an `orderbook.rpi` stream's two
books (records.RPI_DEPTH, the ordinary sizes; RPI_SIZES_DEPTH, the RPI sizes)
joined again, each level with both sizes: the two replays side by side."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence

import sqlalchemy as sa

from depthwatch.book import OrderBook
from depthwatch.export.replay import BookReplay, Step, StepKind
from depthwatch.records import RPI_SIZES_DEPTH
from depthwatch.storage.read.rows import BookEventRow
from depthwatch.storage.read.streams import NotRecorded, Stream, find_stream


def rpi_l2_rows(
    conn: sa.Connection,
    stream: Stream,
    start_us: int,
    end_us: int,
    tick: Callable[[int, int], None],
) -> Iterator[tuple]:
    """incremental_book_L2 rows with each level's RPI size after its size: the
    rpi book and its rpi-sizes companion replayed side by side. One frame made
    both books' messages (the collector keeps or refuses them together), so
    their replays step alike. The writer may commit one book's newest rows a
    flush before the other's: a tail only one replay has is left for a later
    read. Any other step where they differ is a broken record, refused in one
    line rather than joined wrongly."""
    sizes = find_stream(conn, stream.category, stream.symbol, RPI_SIZES_DEPTH)
    plain = BookReplay(conn, stream, start_us, end_us)
    rpi = BookReplay(conn, sizes, start_us, end_us)
    plain_steps, rpi_steps = iter(plain), iter(rpi)
    start = start_us
    last_local_us = 0
    for step, rpi_step in itertools.zip_longest(plain_steps, rpi_steps):
        if not _same_step(step, rpi_step):
            rest = [s for s in (step, rpi_step, *plain_steps, *rpi_steps) if s is not None]
            if all(s.kind is StepKind.END or _newer(s, last_local_us) for s in rest):
                return  # one book's newest messages, committed a flush ahead
            raise NotRecorded(f"{stream.symbol}: the rpi and rpi-sizes books' records differ")
        assert step is not None and rpi_step is not None  # _same_step
        event, rpi_event = step.event, rpi_step.event
        if event is None or rpi_event is None:
            continue
        if step.kind is StepKind.START and not event.is_snapshot:
            rows = [
                (start, start, True, side, price, size, rpi_size)
                for side, price, size, rpi_size in _joined_book(plain.book, rpi.book)
            ]
        elif step.kind is StepKind.APPLY:
            ts, local, snap = event.ts_us, event.local_us, event.is_snapshot
            last_local_us = local
            rows = [
                (ts, local, snap, side, price, size, rpi_size)
                for side, price, size, rpi_size in _joined_event(event, rpi_event)
            ]
        else:
            continue
        tick(len(rows), event.ts_us)
        yield from rows


def _same_step(a: Step[BookEventRow] | None, b: Step[BookEventRow] | None) -> bool:
    """Whether the two books' replays are at the same step of the same message."""
    if a is None or b is None or a.kind is not b.kind:
        return False
    if a.event is None or b.event is None:
        return a.event is None and b.event is None
    return (a.event.u, a.event.local_us) == (b.event.u, b.event.local_us)


def _newer(step: Step[BookEventRow], than_local_us: int) -> bool:
    return step.event is not None and step.event.local_us > than_local_us


JoinedLevel = tuple[str, str, str, str]  # side, price, size, RPI size


def _join_side(
    side: str, plain: Iterable[Sequence[str]], rpi: Iterable[Sequence[str]], ordered: bool
) -> list[JoinedLevel]:
    """One side's levels with both sizes ("0" where a book lacks the price),
    keyed by number: the two books' prices are the same texts unless their
    packed exponents differ. `ordered`: sorted best first (a snapshot's
    levels); otherwise in the order sent (a delta's, the same in both)."""
    rpi_sizes = {float(price): (price, size) for price, size in rpi}
    joined = [
        (side, price, size, rpi_sizes.pop(float(price), (price, "0"))[1]) for price, size in plain
    ]
    joined += [(side, price, "0", size) for price, size in rpi_sizes.values()]
    if ordered:
        joined.sort(key=lambda level: float(level[1]), reverse=side == "bid")
    return joined


def _joined_book(plain: OrderBook, rpi: OrderBook) -> list[JoinedLevel]:
    return _join_side("bid", plain.bids.top(), rpi.bids.top(), True) + _join_side(
        "ask", plain.asks.top(), rpi.asks.top(), True
    )


def _joined_event(plain: BookEventRow, rpi: BookEventRow) -> list[JoinedLevel]:
    snap = plain.is_snapshot
    return _join_side(
        "bid",
        zip(plain.bid_prices, plain.bid_sizes, strict=True),
        zip(rpi.bid_prices, rpi.bid_sizes, strict=True),
        snap,
    ) + _join_side(
        "ask",
        zip(plain.ask_prices, plain.ask_sizes, strict=True),
        zip(rpi.ask_prices, rpi.ask_sizes, strict=True),
        snap,
    )
