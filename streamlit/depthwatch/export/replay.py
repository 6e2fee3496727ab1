"""Replaying a stream's recorded book: the one place that decides where the
book is known, for every reader of history (exports, `book_at`, book states).

A replay of [start, end) begins at the latest point before `start` where the
whole book is known (a collector checkpoint, or an exchange snapshot), checks
`u` continuity itself, and after a gap treats the book as unknown until the
next recorded snapshot. Steps are yielded *before* their message is applied,
so a reader sees the book as it stood just before each message; `END` comes
last, with the book after the final message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

import sqlalchemy as sa

from depthwatch.book import OrderBook
from depthwatch.export.intbook import IntBook
from depthwatch.storage.read.book import (
    book_events,
    int_book_events,
    last_checkpoint_at_or_before,
    last_snapshot_before,
)
from depthwatch.storage.read.rows import BookEventRow, Checkpoint, IntBookEvent
from depthwatch.storage.read.streams import Stream


class StepKind(Enum):
    START = "start"  # the book as it stood at `start` (valid); event: the first in range, or None
    APPLY = "apply"  # an in-range message about to be applied to a valid book (or a snapshot)
    LOST = "lost"  # a gap in `u` at this message: the book was unknown since the last one applied
    END = "end"  # no more messages in range; the book holds the final state


EventT = TypeVar("EventT", BookEventRow, IntBookEvent)
BookT = TypeVar("BookT", OrderBook, IntBook)


@dataclass(slots=True)  # not frozen: one is made per message, and frozen ones cost 2.5x
class Step(Generic[EventT]):
    kind: StepKind
    event: EventT | None


class Replay(Generic[EventT, BookT]):
    """Iterate to get the Steps; `book` is the replayed book and `valid` whether
    it is known (read them at each step: they are updated between steps).
    Subclasses say which book, read by which reader of the log, and how a
    checkpoint loads into it and a message applies: BookReplay (the exchange's
    text, OrderBook), IntBookReplay (exact integers, IntBook)."""

    def __init__(
        self,
        conn: sa.Connection,
        stream: Stream,
        start_us: int,
        end_us: int,
        book: BookT,
        read: Callable[[sa.Connection, Stream, int, int], Iterator[EventT]],
    ):
        self.conn = conn
        self.stream = stream
        self.depth = stream.depth
        self.start_us = start_us
        self.end_us = end_us
        self.valid = False
        self.last_u = 0
        self.last_ts_us: int | None = None  # exchange time of the last applied message
        self.last_local_us = 0  # its arrival time
        self.book: BookT = book
        # The log's messages with from_us <= ts < end_us, in the order they apply.
        self._read: Callable[[sa.Connection, Stream, int, int], Iterator[EventT]] = read

    def _from_us(self) -> int:
        """Where to start reading: the latest whole book before `start` (a
        checkpoint is usually much closer than an exchange snapshot)."""
        conn, stream, start = self.conn, self.stream, self.start_us
        from_us = start
        snapshot_us = last_snapshot_before(conn, stream, start)
        checkpoint = last_checkpoint_at_or_before(conn, stream, start)
        if snapshot_us is not None:
            from_us = snapshot_us
        if checkpoint is not None and (snapshot_us is None or checkpoint.ts_us > snapshot_us):
            # The checkpoint is the book after message u, before any message with
            # ts >= its stamp.
            self._load(checkpoint)
            self.valid, self.last_u, from_us = True, checkpoint.u, checkpoint.ts_us
            self.last_ts_us, self.last_local_us = checkpoint.ts_us, checkpoint.local_us
        return from_us

    def _load(self, checkpoint: Checkpoint) -> None:
        raise NotImplementedError

    def _apply(self, event: EventT) -> None:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Step[EventT]]:
        from_us = self._from_us()
        in_range = False
        for event in self._read(self.conn, self.stream, from_us, self.end_us):
            if not in_range and event.ts_us >= self.start_us:
                in_range = True
                if self.valid:
                    yield Step(StepKind.START, event)
            if event.is_snapshot:
                if in_range and self.valid and self.depth > 1 and event.u > self.last_u + 1:
                    # Messages were missed before this snapshot (a reconnect):
                    # from the last applied one on, the book was unknown. (Depth 1
                    # streams are snapshots only: a jump in u is Bybit's conflation.)
                    yield Step(StepKind.LOST, event)
                if in_range:
                    yield Step(StepKind.APPLY, event)
                self.book.clear()
                self.valid = True
            elif not self.valid or event.u <= self.last_u:
                continue  # waiting for a snapshot, or a duplicate of what is applied
            elif event.u != self.last_u + 1:
                self.valid = False
                if in_range:
                    yield Step(StepKind.LOST, event)
                continue
            elif in_range:
                yield Step(StepKind.APPLY, event)
            self.last_u = event.u
            self.last_ts_us, self.last_local_us = event.ts_us, event.local_us
            self._apply(event)
        if not in_range and self.valid:
            yield Step(StepKind.START, None)
        yield Step(StepKind.END, None)


class BookReplay(Replay[BookEventRow, OrderBook]):
    """The book as the exchange wrote it: decimal texts (OrderBook)."""

    def __init__(self, conn: sa.Connection, stream: Stream, start_us: int, end_us: int):
        super().__init__(conn, stream, start_us, end_us, OrderBook(), book_events)

    def _load(self, checkpoint: Checkpoint) -> None:
        self.book.apply_levels(checkpoint.bids, checkpoint.asks)

    def _apply(self, event: BookEventRow) -> None:
        book = self.book
        book.bids.apply([[p, s] for p, s in zip(event.bid_prices, event.bid_sizes, strict=True)])
        book.asks.apply([[p, s] for p, s in zip(event.ask_prices, event.ask_sizes, strict=True)])


class IntBookReplay(Replay[IntBookEvent, IntBook]):
    """The book in exact integers (IntBook), watching its top `levels`."""

    def __init__(
        self, conn: sa.Connection, stream: Stream, start_us: int, end_us: int, levels: int
    ):
        super().__init__(conn, stream, start_us, end_us, IntBook(levels), int_book_events)

    def _load(self, checkpoint: Checkpoint) -> None:
        self.book.load_levels(checkpoint.bids, checkpoint.asks)

    def _apply(self, event: IntBookEvent) -> None:
        self.book.apply(event)
