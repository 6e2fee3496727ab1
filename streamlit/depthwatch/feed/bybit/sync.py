"""Bybit's rule for stitching a REST snapshot to `orderbook.full`'s deltas."""

from __future__ import annotations

from collections.abc import Sequence

from depthwatch.feed.sync import Alignment
from depthwatch.records import BookUpdate


class BybitFullRule:
    """Bybit's "Full Order Book Synchronization Procedure" (docs/v5/websocket/
    public/full-ob.mdx): `u` rises by one per delta within a session and is 1
    after a re-initialisation; `seq` only rises, with skips. A snapshot's
    (u, seq) are those of the delta after which the book is in its state."""

    renumbers = False  # `u` is consecutive already

    def restarts(self, delta: BookUpdate) -> bool:
        return delta.update_id == 1

    def follows(self, previous: BookUpdate, delta: BookUpdate) -> bool:
        return delta.update_id == previous.update_id + 1

    def is_stale(self, previous: BookUpdate, delta: BookUpdate) -> bool:
        return delta.sequence < previous.sequence or (
            delta.update_id <= previous.update_id and delta.sequence == previous.sequence
        )

    def new_session(self, last: BookUpdate, delta: BookUpdate) -> bool:
        return delta.update_id <= last.update_id

    def align(self, snapshot: BookUpdate, buffered: Sequence[BookUpdate]) -> tuple[Alignment, int]:
        if not buffered:
            return Alignment.WAIT, 0
        # Older than the first buffered delta: what came between is unknown.
        if snapshot.sequence < buffered[0].sequence:
            return Alignment.FETCH_AGAIN, 0
        # Deltas older than the snapshot are in it already.
        start = 0
        while start < len(buffered) and buffered[start].sequence < snapshot.sequence:
            start += 1
        if start == len(buffered):
            return Alignment.WAIT, 0  # its own delta is yet to come
        head = buffered[start]
        if head.sequence != snapshot.sequence or head.update_id != snapshot.update_id:
            # No buffered delta is the snapshot's state (its delta was missed), or
            # equal seq with another u: not a state of this session's chain.
            return Alignment.FETCH_AGAIN, 0
        return Alignment.START, start + 1
