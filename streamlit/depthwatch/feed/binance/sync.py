"""Binance's "How to manage a local order book correctly", as `SyncRule`s.

Both markets: buffer the diff events, fetch a snapshot (`lastUpdateId`, L),
drop events it already holds, start from it, and from then on each event
must continue the previous one. What differs is how events chain:

- spot: an event's `U` is the previous event's `u` + 1; the first applied is
  the one with U <= L + 1 <= u (a snapshot older than the first buffered U
  is fetched again);
- USDⓈ-M futures: ids skip (they are shared), an event's `pu` is the previous
  event's `u`; the first applied has U <= L <= u, or pu == L. This rule
  takes pu <= L <= u, which is the same: between pu and U the ids are no
  update of this book, so a snapshot taken there is the book after pu.

An event already in the snapshot is applied anyway where it straddles it:
sizes are absolute, so the levels it sets end as they were at its `u`.
Binance never restarts a stream's ids; an event at or below the last `u` is
a repeat (a second connection's copy, say) and dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from depthwatch.feed.binance.parse import BinanceDelta
from depthwatch.feed.sync import Alignment
from depthwatch.records import BookUpdate


def _first(delta: BookUpdate) -> int:
    assert isinstance(delta, BinanceDelta), "Binance's rules take BinanceDelta events"
    return delta.first_id


class _BinanceRule:
    renumbers = True  # ids are not consecutive: feed.sync numbers the deltas

    def restarts(self, delta: BookUpdate) -> bool:
        return False

    def is_stale(self, previous: BookUpdate, delta: BookUpdate) -> bool:
        return delta.sequence <= previous.sequence

    def new_session(self, last: BookUpdate, delta: BookUpdate) -> bool:
        return False


class BinanceSpotRule(_BinanceRule):
    def follows(self, previous: BookUpdate, delta: BookUpdate) -> bool:
        return _first(delta) == previous.sequence + 1

    def align(self, snapshot: BookUpdate, buffered: Sequence[BookUpdate]) -> tuple[Alignment, int]:
        if not buffered:
            return Alignment.WAIT, 0
        last = snapshot.sequence
        if _first(buffered[0]) > last + 1:
            return Alignment.FETCH_AGAIN, 0  # older than the buffer: a hole between
        start = next((i for i, d in enumerate(buffered) if d.sequence > last), len(buffered))
        if start == len(buffered) and buffered[-1].sequence != last:
            return Alignment.WAIT, 0  # newer than every event yet: wait for its successor
        # The buffer chains, so U <= L + 1 <= u here (or L is the last event's u).
        return Alignment.START, start


class BinanceFuturesRule(_BinanceRule):
    def follows(self, previous: BookUpdate, delta: BookUpdate) -> bool:
        assert isinstance(delta, BinanceDelta)
        return delta.previous_id == previous.sequence

    def align(self, snapshot: BookUpdate, buffered: Sequence[BookUpdate]) -> tuple[Alignment, int]:
        if not buffered:
            return Alignment.WAIT, 0
        last = snapshot.sequence
        start = next((i for i, d in enumerate(buffered) if d.sequence >= last), len(buffered))
        if start == len(buffered):
            return Alignment.WAIT, 0
        head = buffered[start]
        assert isinstance(head, BinanceDelta)
        if head.previous_id is None or head.previous_id > last:
            return Alignment.FETCH_AGAIN, 0  # events between the snapshot and the buffer
        return Alignment.START, start
