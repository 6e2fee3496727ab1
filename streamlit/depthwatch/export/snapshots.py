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
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from depthwatch.export.intbook import MISSING
from depthwatch.export.kinds import SnapshotSpec
from depthwatch.export.replay import IntBookReplay, StepKind

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


def snapshot_columns(rows: list[Row], as_text: bool) -> tuple[list[int], list[int], list]:
    """(timestamps, local timestamps, the level columns in header order) of
    rows: decimal texts (as_text, for CSV) or float64 (the nearest double,
    for Parquet) as Arrow arrays, null where a side is short."""
    ts = [r[0] for r in rows]
    local = [r[1] for r in rows]
    values = np.array([r[4] for r in rows], dtype=np.int64)  # ask ticks, lots, bid keys, lots
    price_exp = _exponents([r[2] for r in rows])
    size_exp = _exponents([r[3] for r in rows])
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


def _exponents(exps: list[int]) -> int | np.ndarray:
    """One int when the batch has one exponent (the usual case), else an array."""
    first = exps[0]
    return first if exps.count(first) == len(exps) else np.array(exps, dtype=np.int64)


def _decimal_column(units: np.ndarray, exps: int | np.ndarray, as_text: bool) -> pa.Array:
    """One level column: `units` of 10**-exps (one exponent per row, or one
    int for all) as decimal text or float64; MISSING is null."""
    missing = units == MISSING
    if not as_text:
        scale = 10.0**exps if isinstance(exps, int) else np.power(10.0, exps)
        return pa.array(units / scale, pa.float64(), mask=missing)  # the nearest double
    valid = pa.array(~missing).buffers()[1]
    data = np.zeros((len(units), 2), dtype=np.int64)  # little-endian 128-bit integers
    data[:, 0] = units
    uniform = isinstance(exps, int)
    out = None
    for exp in [exps] if uniform else np.unique(exps).tolist():
        decimals = pa.Array.from_buffers(
            pa.decimal128(38, exp), len(units), [valid, pa.py_buffer(data)]
        ).cast(pa.string())
        out = decimals if out is None else pc.if_else(pa.array(exps == exp), decimals, out)
    return out
