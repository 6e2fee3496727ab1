"""`book_snapshot_{N}_{interval}`: the top N levels of each side, computed
from the recorded event log at any depth up to the recorded one and any
interval (not from the stored 1 s snapshots).

Tardis's rules: a row is stamped at the end of an interval bucket and holds
the book as it stood then (every message stamped before it applied); a row
comes only when the top N changed since the previous row; missing levels are
empty. Without an interval (`book_snapshot_25`), a row comes at each message
that changed the top N, stamped with that message's times. Rows' timestamps
lie in [start, end): the first is the book at `start` itself when `start` is
a bucket end. Where the book is unknown (after a gap, until the next
snapshot) no row is written; `depthwatch gaps` says where that was.
`local_timestamp` is the arrival time of the last message the row includes.

Two paths make the same rows. snapshot_blocks works a batch of messages at a
time in NumPy (export.topbook): the messages that apply and the rows'
stamps are decided in a short loop over integers, and the tops come from
TopBook. snapshot_rows replays message by message (IntBook); it serves what
TopBook does not: books deeper than TOPBOOK_MOST_LEVELS (whole books) and
ranges holding schema 1-3 rows. tests/test_topbook.py holds the two equal.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from depthwatch.export import arrays
from depthwatch.export.columnar import ApplyState, read_batches
from depthwatch.export.intbook import MISSING
from depthwatch.export.kinds import SnapshotSpec
from depthwatch.export.replay import IntBookReplay, StepKind
from depthwatch.export.topbook import Run, TopBook, Tops
from depthwatch.records import levels_of
from depthwatch.storage.codec import SNAPSHOT, DecodedBatch
from depthwatch.storage.read import legacy
from depthwatch.storage.read.streams import Stream

# Books at most this deep a side take TopBook (its matrices grow with the
# prices a book holds); deeper ones, IntBook.
TOPBOOK_MOST_LEVELS = 200
BLOCK_MESSAGES = 2048

# (timestamp, local_timestamp, price_exp, size_exp, top): `top` as
# IntBook.take_top() gives it, integers the sinks turn into decimals a batch at
# a time (snapshot_columns).
Row = tuple[int, int, int, int, tuple[int, ...]]


def snapshot_rows(replay: IntBookReplay, spec: SnapshotSpec) -> Iterator[Row]:
    """The rows of [replay.start_us, replay.end_us), from a replay not yet
    started (its book watching the top `spec.levels`)."""
    interval, end = spec.interval_us, replay.end_us
    book = replay.book
    previous: tuple[int, ...] | None = None  # the last row's top
    known = False  # whether the book (before the step's message) is known
    local = 0  # arrival time of the last message the book includes
    # Interval: the next bucket end to write. Per change: the exchange time of
    # the message just applied (-1: none), written at the next step.
    pending = -(-replay.start_us // interval) * interval if interval else -1
    for step in replay:
        kind, event = step.kind, step.event
        if kind is StepKind.START:
            known, local = True, replay.last_local_us
            if not interval:
                pending = replay.start_us
        if kind is StepKind.LOST and interval:
            # Messages are missing from before this one, at times unknown: no
            # bucket ending after the last applied message can be closed.
            known, previous = False, None
            continue
        ts = end if event is None else event.ts_us
        # The book now includes every message stamped before `ts` (and none
        # after): it closes the bucket ending at or before `ts`.
        if known and 0 <= pending <= ts and pending < end:
            top = book.take_top()
            if top != previous:
                previous = top
                yield (pending, local, book.price_exp, book.size_exp, top)
        if interval:
            if pending <= ts:
                pending = (ts // interval + 1) * interval
        else:
            pending = -1
        if kind is StepKind.LOST:
            known, previous = False, None
        elif kind is StepKind.APPLY:
            assert event is not None
            known, local = True, event.local_us
            if not interval:
                pending = event.ts_us


@dataclass(frozen=True)
class SnapshotBlock:
    """Rows in columns: stamps, arrival times, exponents, and `values` (a row
    per row: its top as IntBook.take_top() lays it out)."""

    timestamp: np.ndarray
    local_timestamp: np.ndarray
    price_exp: np.ndarray
    size_exp: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.timestamp)

    @classmethod
    def of_rows(cls, rows: list[Row]) -> SnapshotBlock:
        if not rows:
            none = np.zeros(0, dtype=np.int64)
            return cls(none, none, none, none, np.zeros((0, 0), dtype=np.int64))
        return cls(
            np.array([r[0] for r in rows], dtype=np.int64),
            np.array([r[1] for r in rows], dtype=np.int64),
            np.array([r[2] for r in rows], dtype=np.int64),
            np.array([r[3] for r in rows], dtype=np.int64),
            np.array([r[4] for r in rows], dtype=np.int64),
        )


def snapshot_blocks(
    conn: sa.Connection,
    stream: Stream,
    start_us: int,
    end_us: int,
    spec: SnapshotSpec,
    ahead: bool = False,
) -> Generator[SnapshotBlock, None, None] | None:
    """snapshot_rows' rows in blocks, made in NumPy; None for what it leaves to
    snapshot_rows (a book deeper than TOPBOOK_MOST_LEVELS, schema 1-3 rows).
    `ahead`: see columnar.read_batches."""
    if levels_of(stream.depth) > TOPBOOK_MOST_LEVELS or legacy.has_book_events(
        conn, stream, start_us, end_us
    ):
        return None
    return _blocks(conn, stream, start_us, end_us, spec, ahead)


def _blocks(
    conn: sa.Connection,
    stream: Stream,
    start_us: int,
    end_us: int,
    spec: SnapshotSpec,
    ahead: bool,
) -> Generator[SnapshotBlock, None, None]:
    before = IntBookReplay(conn, stream, start_us, start_us, spec.levels)
    for _ in before:  # the book at `start`, and whether it is known
        pass
    book = TopBook(spec.levels, before.book)
    state = ApplyState(before.valid, before.last_u, stream.depth)
    stamps = _Stamps(spec.interval_us, start_us, end_us, before.valid, before.last_local_us)
    previous: np.ndarray | None = None  # the last row's top
    with closing(read_batches(conn, stream, start_us, end_us, ahead)) as batches:
        for batch, order in batches:
            if not len(order):
                continue
            stamps.open(int(batch.ts_us[order[0]]))
            applies, lost = state.steps(batch, order)
            msg = order[applies]
            rows = stamps.rows(batch.ts_us[msg], batch.local_us[msg], lost)
            run = _run(batch, msg)
            taken = 0
            # A few thousand messages at a time, so the tops held stay a few MB.
            for first in range(0, max(1, len(msg)), BLOCK_MESSAGES):
                last = min(len(msg), first + BLOCK_MESSAGES)
                upto = int(np.searchsorted(rows.want, last))
                part = rows.cut(taken, upto, first)
                taken = upto
                block, previous = _changed(
                    part, book.advance(run.cut(first, last), part.want), previous
                )
                if len(block):
                    yield block
    stamps.open(end_us)
    rows = stamps.close(state.lost)
    none = np.zeros(0, dtype=np.int64)
    empty = Run(none.astype(bool), none, none, none, none.astype(bool), none, none)
    block, _ = _changed(rows, book.advance(empty, rows.want), previous)
    if len(block):
        yield block


@dataclass(frozen=True)
class _Candidates:
    """Rows a batch may write, each written if its top differs from the one
    before (or `fresh`: nothing written since the book was lost): stamps,
    arrival times, and the book each shows (`want`: after the batch's message
    of that index, -1 before them)."""

    timestamp: np.ndarray
    local_timestamp: np.ndarray
    want: np.ndarray
    fresh: np.ndarray

    def cut(self, start: int, end: int, first_message: int) -> _Candidates:
        """Rows [start, end), their `want` counted from message `first_message`."""
        return _Candidates(
            self.timestamp[start:end],
            self.local_timestamp[start:end],
            self.want[start:end] - first_message,
            self.fresh[start:end],
        )


class _Stamps:
    """snapshot_rows' stamping rules, over the messages that apply."""

    def __init__(self, interval: int, start: int, end: int, known: bool, local: int) -> None:
        self.interval, self.start, self.end = interval, start, end
        self.known, self.local = known, local
        self.fresh = True
        # The next bucket end to write (interval), or the start row to write.
        self.pending = -(-start // interval) * interval if interval else start
        self.opened = False
        self.held: list[tuple[int, int, int, bool]] = []

    def open(self, first_ts: int) -> None:
        """The first message in range is at `first_ts` (`end` if none): the book
        at `start`, if known, may make the first row."""
        if self.opened:
            return
        self.opened = True
        if self.known and self.pending <= first_ts and self.pending < self.end:
            self.held.append((self.pending, self.local, -1, True))
            self.fresh = False
        if self.interval and self.pending <= first_ts:
            self.pending = (first_ts // self.interval + 1) * self.interval

    def rows(self, ts: np.ndarray, local: np.ndarray, lost: np.ndarray) -> _Candidates:
        """The candidate rows up to these messages (their times and whether the
        book was lost before each), as they apply."""
        if not self.interval:
            # A row at each message, showing the book after it.
            fresh_rows = lost.copy()
            if len(fresh_rows):
                fresh_rows[0] = fresh_rows[0] or self.fresh
                self.fresh = False
            return self._take(ts, local, np.arange(len(ts), dtype=np.int64), fresh_rows)
        pending, known, last_local, fresh, interval = (
            self.pending, self.known, self.local, self.fresh, self.interval,
        )  # fmt: skip
        out = self.held
        messages = zip(ts.tolist(), local.tolist(), lost.tolist(), strict=True)
        for k, (t, lo, gap) in enumerate(messages):
            if gap:
                known, fresh = False, True
            if pending <= t:
                if known:
                    out.append((pending, last_local, k - 1, fresh))
                    fresh = False
                pending = (t // interval + 1) * interval
            known, last_local = True, lo
        self.pending, self.known, self.local, self.fresh = pending, known, last_local, fresh
        return self._take()

    def close(self, lost: bool) -> _Candidates:
        """The row the end may write, after the last message (`lost`: the book
        was lost since it)."""
        if lost:
            self.known, self.fresh = False, True
        if self.interval and self.known and self.pending < self.end:
            self.held.append((self.pending, self.local, -1, self.fresh))
        return self._take()

    def _take(
        self,
        ts: np.ndarray | None = None,
        local: np.ndarray | None = None,
        want: np.ndarray | None = None,
        fresh: np.ndarray | None = None,
    ) -> _Candidates:
        held = self.held
        self.held = []
        columns = [np.array(c, dtype=np.int64) for c in zip(*held, strict=True)] or [
            np.zeros(0, dtype=np.int64)
        ] * 4
        parts = [columns[0], columns[1], columns[2], columns[3].astype(bool)]
        if ts is not None:
            assert local is not None and want is not None and fresh is not None
            parts = [
                np.concatenate([parts[0], ts]),
                np.concatenate([parts[1], local]),
                np.concatenate([parts[2], want]),
                np.concatenate([parts[3], fresh]),
            ]
        return _Candidates(*parts)


def _run(batch: DecodedBatch, msg: np.ndarray) -> Run:
    """The levels of these messages of the batch, as TopBook takes them."""
    count = batch.nb[msg] + batch.na[msg]
    total = int(count.sum())
    run_start = np.cumsum(count) - count
    level = np.repeat(batch.msg_first_level[msg] - run_start, count) + np.arange(total)
    chunk = batch.msg_chunk[msg]
    return Run(
        (batch.flags[msg] & SNAPSHOT) != 0,
        batch.price_exp[chunk].astype(np.int64),
        batch.size_exp[chunk].astype(np.int64),
        np.repeat(np.arange(len(msg), dtype=np.int64), count),
        batch.level_is_bid[level],
        batch.ticks[level],
        batch.lots[level],
    )


def _changed(
    rows: _Candidates, tops: Tops, previous: np.ndarray | None
) -> tuple[SnapshotBlock, np.ndarray | None]:
    """The candidate rows whose top differs from the one before (the block),
    and the last candidate's top."""
    values = tops.values
    if not len(values):
        return SnapshotBlock.of_rows([]), previous
    before = np.vstack([values[:1] if previous is None else previous[None, :], values[:-1]])
    new = np.any(values != before, axis=1) | rows.fresh
    if previous is None:
        new[0] = True
    block = SnapshotBlock(
        rows.timestamp[new],
        rows.local_timestamp[new],
        tops.price_exp[new],
        tops.size_exp[new],
        values[new],
    )
    return block, values[-1]


def snapshot_columns(block: SnapshotBlock, as_text: bool) -> tuple[np.ndarray, np.ndarray, list]:
    """(timestamps, local timestamps, the level columns in header order) of
    rows: decimal texts (as_text, for CSV) or float64 (the nearest double,
    for Parquet) as Arrow arrays, null where a side is short."""
    values = block.values  # ask ticks, lots, bid keys, lots
    price_exp = _exponents(block.price_exp)
    size_exp = _exponents(block.size_exp)
    ts, local = block.timestamp, block.local_timestamp
    n = values.shape[1] // 4
    columns = []
    for i in range(n):
        bid_keys = values[:, 2 * n + i]
        columns += [
            _decimal_column(values[:, i], price_exp, as_text),
            _decimal_column(values[:, n + i], size_exp, as_text),
            _decimal_column(-bid_keys, price_exp, as_text),
            _decimal_column(values[:, 3 * n + i], size_exp, as_text),
        ]
    return ts, local, columns


def _exponents(exps: np.ndarray) -> int | np.ndarray:
    """One int when the batch has one exponent (the usual case), else the array."""
    first = int(exps[0])
    return first if bool(np.all(exps == first)) else exps


def _decimal_column(units: np.ndarray, exps: int | np.ndarray, as_text: bool) -> pa.Array:
    """One level column: `units` of 10**-exps (one exponent per row, or one
    int for all) as decimal text or float64; MISSING is null."""
    missing = units == MISSING
    if not as_text:
        scale = 10.0**exps if isinstance(exps, int) else np.power(10.0, exps)
        return arrays.numbers(units / scale, missing)  # the nearest double
    valid = arrays.validity(missing)
    data = np.zeros((len(units), 2), dtype=np.int64)  # little-endian 128-bit integers
    data[:, 0] = units
    uniform = isinstance(exps, int)
    out = None
    for exp in [exps] if uniform else np.unique(exps).tolist():
        decimals = pa.Array.from_buffers(
            pa.decimal128(38, exp), len(units), [valid, pa.py_buffer(data)]
        ).cast(pa.string())
        out = (
            decimals
            if out is None
            else pc.if_else(arrays.booleans(np.asarray(exps == exp)), decimals, out)
        )
    return out
