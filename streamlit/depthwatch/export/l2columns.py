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
from depthwatch.storage.codec import SNAPSHOT
from depthwatch.storage.read import legacy
from depthwatch.storage.read.book import Messages, messages
from depthwatch.storage.read.streams import Stream

MESSAGES_PER_PART = 50_000  # messages that apply, cut out together


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
    valid, last_u = before.valid, before.last_u
    last_key: tuple[int, int, int, bool] | None = None
    opened = False
    applying: list[tuple[Messages, int]] = []
    for view, i in messages(conn, stream, start_us, end_us):
        snapshot = bool(view.flags[i] & SNAPSHOT)
        u = view.u[i]
        key = (view.ts[i], view.seq[i], u, snapshot)
        if key == last_key:
            continue  # stored twice (two collectors)
        last_key = key
        if not opened:
            opened = True
            if valid and not snapshot:
                yield _book_at(before, start_us)
        if snapshot:
            valid = True
        elif not valid or u <= last_u:
            continue  # waiting for a snapshot, or already applied
        elif u != last_u + 1:
            valid = False  # a gap: unknown until the next snapshot
            continue
        last_u = u
        applying.append((view, i))
        if len(applying) >= MESSAGES_PER_PART:
            yield _rows_of(applying)
            applying = []
    if applying:
        yield _rows_of(applying)


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


def _rows_of(applying: list[tuple[Messages, int]]) -> L2Columns:
    """The level rows of these messages, in their order: each message's bids,
    then its asks, as the exchange listed them."""
    parts = []
    start = 0
    for end in range(1, len(applying) + 1):
        if end == len(applying) or applying[end][0] is not applying[start][0]:
            view = applying[start][0]
            parts.append(_rows_of_batch(view, [i for _, i in applying[start:end]]))
            start = end
    if len(parts) == 1:
        return parts[0]
    return L2Columns(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in L2Columns.__dataclass_fields__)
    )


def _rows_of_batch(view: Messages, indices: list[int]) -> L2Columns:
    batch = view.batch
    msg = np.asarray(indices, dtype=np.int64)
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
