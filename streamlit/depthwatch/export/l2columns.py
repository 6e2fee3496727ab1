"""incremental_book_L2 in columns, for the Parquet and Arrow outputs (the
export, the archive, `load_book_l2`): the same rows as the row-by-row path
(tardis._l2_rows), made from the decoded chunks' NumPy columns.

Only the decisions are made message by message: which messages apply (the
replay's rules: a snapshot always; a delta only while the book is known, in
sequence, not already applied; a message stored twice once) and whether the
range opens with the book at `start`. The rows of the messages that apply
are then cut out of the batch's level columns in one NumPy pass, so no Python
work is done per row. The book before `start` is rebuilt by BookReplay, as
the row path does it.

Ranges holding schema 1-3 rows take the row path (l2_columns returns None).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from depthwatch.export.replay import BookReplay
from depthwatch.storage.codec import SNAPSHOT, DecodedBatch
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
    conn: sa.Connection, stream: Stream, start_us: int, end_us: int
) -> Iterator[L2Columns] | None:
    """The stream's incremental_book_L2 over [start, end) in parts; None
    when the range holds schema 1-3 rows (the row path reads those)."""
    if legacy.has_book_events(conn, stream, start_us, end_us):
        return None
    return _parts(conn, stream, start_us, end_us)


def _parts(conn: sa.Connection, stream: Stream, start_us: int, end_us: int) -> Iterator[L2Columns]:
    before = BookReplay(conn, stream, start_us, start_us)
    for _ in before:  # the book at `start`, and whether it is known
        pass
    state = _ApplyState(before.valid, before.last_u)
    opened = False
    for batch, order in message_batches(conn, stream, start_us, end_us):
        if not len(order):
            continue
        if not opened:
            opened = True
            if state.valid and not batch.flags[order[0]] & SNAPSHOT:
                yield _book_at(before, start_us)
        applying = state.applying(batch, order)
        if len(applying):
            yield _rows_of(batch, applying)


class _ApplyState:
    """The replay's rules (export.replay.Replay), carried from batch to
    batch: which messages apply."""

    def __init__(self, valid: bool, last_u: int) -> None:
        self.valid = valid
        self.last_u = last_u
        self.last_key: tuple[int, int, int, bool] | None = None

    def applying(self, batch: DecodedBatch, order: np.ndarray) -> np.ndarray:
        """The messages of `order` (apply order) that apply, in order."""
        snapshots = ((batch.flags[order] & SNAPSHOT) != 0).tolist()
        keys = zip(
            batch.ts_us[order].tolist(),
            batch.seq[order].tolist(),
            batch.u[order].tolist(),
            snapshots,
            strict=True,
        )
        valid, last_u, last_key = self.valid, self.last_u, self.last_key
        applies = []
        for k, key in enumerate(keys):
            if key == last_key:
                continue  # stored twice (two collectors)
            last_key = key
            u = key[2]
            if snapshots[k]:
                valid = True
            elif not valid or u <= last_u:
                continue  # waiting for a snapshot, or already applied
            elif u != last_u + 1:
                valid = False  # a gap: unknown until the next snapshot
                continue
            last_u = u
            applies.append(k)
        self.valid, self.last_u, self.last_key = valid, last_u, last_key
        return order[applies]


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
