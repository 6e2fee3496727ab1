"""incremental_book_L2 and quotes in columns, for the Parquet and Arrow
outputs (the export, the archive, `load_*`): the same rows as the row-by-row
paths (tardis._l2_rows, storage.read.book.quotes), made from the decoded
chunks' NumPy columns.

Only the decisions are made message by message: which messages apply (the
replay's rules: a snapshot always; a delta only while the book is known, in
sequence, not already applied; a message stored twice once) and whether the
range opens with the book at `start`. The rows of the messages that apply
are then cut out of the batch's level columns in one NumPy pass, so no Python
work is done per row. The book before `start` is rebuilt by BookReplay, as
the row path does it. Quotes need no decision per message: the tops of the
messages that changed one, less those equal to the quote before, in NumPy.

Ranges holding schema 1-3 rows take the row paths (l2_columns and
quote_columns return None).
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import closing
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from depthwatch.export.background import read_ahead
from depthwatch.export.replay import BookReplay
from depthwatch.storage.codec import POW10, SNAPSHOT, TOP_CHANGED, DecodedBatch
from depthwatch.storage.read import legacy
from depthwatch.storage.read.book import message_batches
from depthwatch.storage.read.streams import Stream


@dataclass(frozen=True)
class L2Columns:
    """Rows of incremental_book_L2 as columns (Tardis's, after exchange and symbol)."""

    timestamp: np.ndarray  # int64 µs
    local_timestamp: np.ndarray
    is_snapshot: np.ndarray  # bool
    is_bid: np.ndarray  # bool: "bid", else "ask"
    price: np.ndarray  # float64
    amount: np.ndarray

    def __len__(self) -> int:
        return len(self.timestamp)


def l2_columns(
    conn: sa.Connection, stream: Stream, start_us: int, end_us: int, ahead: bool = False
) -> Generator[L2Columns, None, None] | None:
    """The stream's incremental_book_L2 over [start, end) in parts; None
    when the range holds schema 1-3 rows (the row path reads those).
    `ahead`: see read_batches."""
    if legacy.has_book_events(conn, stream, start_us, end_us):
        return None
    return _parts(conn, stream, start_us, end_us, ahead)


def read_batches(
    conn: sa.Connection, stream: Stream, start_us: int, end_us: int, ahead: bool
) -> Generator[tuple[DecodedBatch, np.ndarray], None, None]:
    """storage.read.book.message_batches, with `ahead` read on a thread of its
    own while the caller works on the batch before (export.background.read_ahead;
    `conn` is the thread's until the generator ends or is closed). Measured:
    incremental_book_L2 into Arrow tables -30 % time, into Parquet (whose
    sink encodes on a third thread) -11 %, book_snapshot_25 into Parquet
    -8 %; but book_snapshot_25 into CSV +8 % (three busy threads on two
    cores) and quotes +5 %: the caller chooses (BENCHMARKS.md, issue 19)."""
    if ahead:
        return read_ahead(lambda: message_batches(conn, stream, start_us, end_us))
    return message_batches(conn, stream, start_us, end_us)


def _parts(
    conn: sa.Connection, stream: Stream, start_us: int, end_us: int, ahead: bool
) -> Generator[L2Columns, None, None]:
    before = BookReplay(conn, stream, start_us, start_us)
    for _ in before:  # the book at `start`, and whether it is known
        pass
    state = ApplyState(before.valid, before.last_u)
    opened = False
    with closing(read_batches(conn, stream, start_us, end_us, ahead)) as batches:
        for batch, order in batches:
            if not len(order):
                continue
            if not opened:
                opened = True
                if state.valid and not batch.flags[order[0]] & SNAPSHOT:
                    yield _book_at(before, start_us)
            applying = state.applying(batch, order)
            if len(applying):
                yield _rows_of(batch, applying)


class ApplyState:
    """The replay's rules (export.replay.Replay), carried from batch to
    batch: which messages apply, and where the book was lost (a gap in `u`;
    a snapshot then restores it)."""

    def __init__(self, valid: bool, last_u: int, depth: int = 0) -> None:
        self.valid = valid
        self.last_u = last_u
        self.depth = depth  # depth 1 streams are snapshots only: a jump in u is no gap
        self.last_key: tuple[int, int, int, bool] | None = None
        self.lost = False  # lost since the last message that applied

    def applying(self, batch: DecodedBatch, order: np.ndarray) -> np.ndarray:
        """The messages of `order` (apply order) that apply, in order."""
        return order[self.steps(batch, order)[0]]

    def steps(self, batch: DecodedBatch, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in `order` of the messages that apply, and for each
        whether the book was lost since the one before)."""
        us = batch.u[order]
        in_sequence = len(us) and us[0] == self.last_u + 1 and np.all(np.diff(us) == 1)
        if self.valid and in_sequence and not np.any(batch.flags[order] & SNAPSHOT):
            # The usual batch: every message the next delta, none twice.
            self.last_u = int(us[-1])
            last = order[-1]
            self.last_key = (int(batch.ts_us[last]), int(batch.seq[last]), self.last_u, False)
            lost_first = np.zeros(len(us), dtype=bool)
            lost_first[0] = self.lost
            self.lost = False
            return np.arange(len(us), dtype=np.int64), lost_first
        snapshots = ((batch.flags[order] & SNAPSHOT) != 0).tolist()
        keys = zip(
            batch.ts_us[order].tolist(),
            batch.seq[order].tolist(),
            batch.u[order].tolist(),
            snapshots,
            strict=True,
        )
        valid, last_u, last_key, lost = self.valid, self.last_u, self.last_key, self.lost
        gaps_in_snapshots = self.depth > 1
        applies: list[int] = []
        lost_before: list[bool] = []
        for k, key in enumerate(keys):
            if key == last_key:
                continue  # stored twice (two collectors)
            last_key = key
            u = key[2]
            if snapshots[k]:
                lost = lost or (valid and gaps_in_snapshots and u > last_u + 1)
                valid = True
            elif not valid or u <= last_u:
                continue  # waiting for a snapshot, or already applied
            elif u != last_u + 1:
                valid, lost = False, True  # a gap: unknown until the next snapshot
                continue
            last_u = u
            applies.append(k)
            lost_before.append(lost)
            lost = False
        self.valid, self.last_u, self.last_key, self.lost = valid, last_u, last_key, lost
        return np.array(applies, dtype=np.int64), np.array(lost_before, dtype=bool)


def _book_at(replay: BookReplay, start_us: int) -> L2Columns:
    """The book at `start` as snapshot rows stamped `start` (bids, then asks)."""
    bids, asks = replay.book.bids.top(), replay.book.asks.top()
    levels = [*bids, *asks]
    count = len(levels)
    return L2Columns(
        np.full(count, start_us, dtype=np.int64),
        np.full(count, start_us, dtype=np.int64),
        np.ones(count, dtype=bool),
        np.arange(count) < len(bids),
        np.array([float(p) for p, _ in levels], dtype=np.float64),
        np.array([float(s) for _, s in levels], dtype=np.float64),
    )


def _rows_of(batch: DecodedBatch, msg: np.ndarray) -> L2Columns:
    """The level rows of these messages, in their order: each message's bids,
    then its asks, as the exchange listed them."""
    count = batch.nb[msg] + batch.na[msg]
    total = int(count.sum())
    # Each message's levels are consecutive from its first: runs laid end to end.
    run_start = np.cumsum(count) - count
    level = np.repeat(batch.msg_first_level[msg] - run_start, count) + np.arange(total)
    return L2Columns(
        np.repeat(batch.ts_us[msg], count),
        np.repeat(batch.local_us[msg], count),
        np.repeat((batch.flags[msg] & SNAPSHOT) != 0, count),
        batch.level_is_bid[level],
        batch.prices[level],
        batch.sizes[level],
    )


@dataclass(frozen=True)
class QuoteColumns:
    """Rows of quotes as columns (Tardis's, after exchange and symbol); a
    missing side's price and amount are NaN where `has_ask`/`has_bid` is False."""

    timestamp: np.ndarray
    local_timestamp: np.ndarray
    ask_amount: np.ndarray
    ask_price: np.ndarray
    bid_price: np.ndarray
    bid_amount: np.ndarray
    has_ask: np.ndarray
    has_bid: np.ndarray

    def __len__(self) -> int:
        return len(self.timestamp)


def quote_columns(
    conn: sa.Connection, stream: Stream, start_us: int, end_us: int
) -> Generator[QuoteColumns, None, None] | None:
    """The stream's quotes over [start, end) in parts; None when the range
    holds schema 1-3 rows (the row path reads those)."""
    if legacy.has_book_events(conn, stream, start_us, end_us) or legacy.has_quotes(
        conn, stream, start_us, end_us
    ):
        return None
    return _quote_parts(conn, stream, start_us, end_us)


def _quote_parts(
    conn: sa.Connection, stream: Stream, start_us: int, end_us: int
) -> Generator[QuoteColumns, None, None]:
    last_key: np.ndarray | None = None
    for batch, order in message_batches(conn, stream, start_us, end_us, levels=False):
        msg = order[(batch.flags[order] & TOP_CHANGED) != 0]
        if not len(msg):
            continue
        bid, bid_size, ask, ask_size = batch.tops[batch.top_of[msg]].T
        chunk = batch.msg_chunk[msg]
        price_exp, size_exp = batch.price_exp[chunk], batch.size_exp[chunk]
        has_bid, has_ask = bid != 0, ask != 0
        # A quote equal to the one before is dropped. Equal as the exchange's
        # texts: the same integers at the same exponents, a zero at any, a
        # missing side as missing (what storage.read.book.quotes compares).
        key = np.column_stack(
            [
                np.where(has_ask, ask_size, -1),
                np.where(has_ask & (ask_size != 0), size_exp, -1),
                np.where(has_ask, ask, -1),
                np.where(has_ask, price_exp, -1),
                np.where(has_bid, bid, -1),
                np.where(has_bid, price_exp, -1),
                np.where(has_bid, bid_size, -1),
                np.where(has_bid & (bid_size != 0), size_exp, -1),
            ]
        )
        first = np.full_like(key[:1], -2) if last_key is None else last_key  # -2: no quote yet
        before = np.vstack([first, key[:-1]])
        new = np.any(key != before, axis=1)
        last_key = key[-1:]
        msg, new_at = msg[new], np.flatnonzero(new)
        prices, sizes = POW10[price_exp[new_at]], POW10[size_exp[new_at]]
        yield QuoteColumns(
            batch.ts_us[msg],
            batch.local_us[msg],
            ask_size[new_at] / sizes,
            ask[new_at] / prices,
            bid[new_at] / prices,
            bid_size[new_at] / sizes,
            has_ask[new_at],
            has_bid[new_at],
        )
