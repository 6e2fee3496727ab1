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

import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

from depthwatch.clock import SECOND_US
from depthwatch.export.replay import BookReplay, StepKind
from depthwatch.records import Level

_KIND = re.compile(r"book_snapshot_(\d+)(?:_(\d+)(ms|s|m))?")
_UNIT_US = {"ms": 1_000, "s": SECOND_US, "m": 60 * SECOND_US}
EMPTY: Level = ["", ""]


@dataclass(frozen=True, slots=True)
class SnapshotSpec:
    levels: int
    interval_us: int  # 0: a row at every change of the top `levels`

    @classmethod
    def parse(cls, kind: str) -> SnapshotSpec | None:
        """The spec of a `book_snapshot_...` kind; None for other kinds.
        Raises ValueError on a malformed one."""
        if not kind.startswith("book_snapshot_"):
            return None
        found = _KIND.fullmatch(kind)
        if found is None:
            raise ValueError(
                f"{kind!r}: write book_snapshot_N or book_snapshot_N_INTERVAL, "
                "e.g. book_snapshot_25, book_snapshot_25_100ms, book_snapshot_5_1s, "
                "book_snapshot_10_1m"
            )
        levels = int(found[1])
        interval = int(found[2]) * _UNIT_US[found[3]] if found[2] is not None else 0
        if levels < 1:
            raise ValueError(f"{kind!r}: at least one level")
        if found[2] is not None and interval == 0:
            raise ValueError(f"{kind!r}: the interval must be positive")
        return cls(levels, interval)

    def header(self) -> str:
        cells = []
        for i in range(self.levels):
            cells += [f"asks[{i}].price", f"asks[{i}].amount"]
            cells += [f"bids[{i}].price", f"bids[{i}].amount"]
        return ",".join(cells)


Row = tuple  # (timestamp, local_timestamp, asks[0].price, asks[0].amount, bids[0].price, ...)


def snapshot_rows(replay: BookReplay, spec: SnapshotSpec) -> Iterator[Row]:
    """The rows of [replay.start_us, replay.end_us), from a replay not yet started."""
    n, interval, end = spec.levels, spec.interval_us, replay.end_us
    asks, bids = replay.book.asks, replay.book.bids
    previous: tuple[list[Level], list[Level]] | None = None  # the last row's top
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
            top = (asks.top(n), bids.top(n))
            if top != previous:
                previous = top
                yield _row(pending, local, top, n)
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


def _row(ts_us: int, local_us: int, top: tuple[list[Level], list[Level]], n: int) -> Row:
    """(timestamp, local_timestamp, then per level: ask price, ask amount, bid
    price, bid amount), empty strings where a side has fewer levels."""
    asks, bids = top
    if len(asks) < n:
        asks = asks + [EMPTY] * (n - len(asks))
    if len(bids) < n:
        bids = bids + [EMPTY] * (n - len(bids))
    return (
        ts_us,
        local_us,
        *chain.from_iterable(chain.from_iterable(zip(asks, bids, strict=True))),
    )
