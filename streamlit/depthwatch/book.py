"""Exact local order books: pure logic, no I/O.

`OrderBook` holds one book (two sorted sides). `StreamBook` wraps it with the
rules that keep a recorded book honest: `u` continuity, resets on snapshots,
refusal of impossible books (crossed, a zero price, a snapshot repeating a
price), and the records derived from the book (quotes on every top-of-book
change, top-N snapshots at the end of every time bucket). Records go to a
`RecordSink`; the caller acts on the returned `Outcome` (a gap or a refusal
asks for a resync).
"""

from __future__ import annotations

import math
import zlib
from bisect import bisect_left, bisect_right, insort
from enum import Enum
from typing import Protocol

import numpy as np

from depthwatch.records import (
    FULL_DEPTH,
    PROFILE_INTERVAL_US,
    PROFILE_REACH,
    PROFILE_STEP_BPS,
    RPI_SIZES_DEPTH,
    SECOND_US,
    BookBounds,
    BookCheckpoint,
    BookProfile,
    BookUpdate,
    DepthSnapshot,
    FeedEvent,
    FeedEventKind,
    Level,
    Quote,
    StreamKey,
)


class BadLevel(ValueError):
    """A level no real book holds (a zero price)."""


class BookSide:
    """One side: levels by key, plus the keys in sorted order (best first).

    Keys are float prices, negated for bids so that index 0 is the best level
    on both sides; values keep the exchange's [price, size] strings, so what is
    written is exactly what was sent (distinct decimals of up to 15 significant
    digits map to distinct floats, which Bybit prices are). The best level is
    O(1); an insert or delete is an O(log n) bisect plus a C-speed memmove, which
    at Bybit's depths (at most 1,000 levels) beats a balanced tree in Python.
    """

    __slots__ = ("keys", "levels", "sign")

    def __init__(self, sign: float) -> None:
        self.sign = sign
        self.keys: list[float] = []
        self.levels: dict[float, Level] = {}

    def apply(self, updates: list[Level]) -> None:
        """Sizes are absolute: a known price is replaced, size 0 deletes it.
        Raises BadLevel on a zero price (the parser has refused everything
        that is not a non-negative decimal); the side is then half-applied and
        its book must be discarded."""
        keys, levels, sign = self.keys, self.levels, self.sign
        for level in updates:
            key = sign * float(level[0])
            if not key:
                raise BadLevel(f"zero price in {level!r:.80}")
            size = level[1]
            # Only a size starting with "0" or "." can be zero; most are not: skip float().
            if size[0] in "0." and float(size) == 0.0:
                if levels.pop(key, None) is not None:
                    del keys[bisect_left(keys, key)]
            else:
                if key not in levels:
                    insort(keys, key)
                levels[key] = level

    def best(self) -> Level | None:
        return self.levels[self.keys[0]] if self.keys else None

    def best_price(self) -> float | None:
        """The best price as a number (bids un-negated)."""
        return self.sign * self.keys[0] if self.keys else None

    def top(self, count: int | None = None) -> list[Level]:
        levels = self.levels
        return [levels[key] for key in self.keys[:count]]

    def clear(self) -> None:
        self.keys.clear()
        self.levels.clear()

    def __len__(self) -> int:
        return len(self.keys)


class OrderBook:
    """Two price-sorted sides of one book."""

    __slots__ = ("asks", "bids")

    def __init__(self) -> None:
        self.bids = BookSide(-1.0)
        self.asks = BookSide(1.0)

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()

    def apply_levels(self, bids: list[Level], asks: list[Level]) -> None:
        self.bids.apply(bids)
        self.asks.apply(asks)

    def best_bid(self) -> Level | None:
        return self.bids.best()

    def best_ask(self) -> Level | None:
        return self.asks.best()

    def is_crossed(self) -> bool:
        """Best bid >= best ask: no exchange's book is ever like that. Looks
        at the top only, so it is cheap enough to run after every message."""
        bids, asks = self.bids.keys, self.asks.keys
        return bool(bids) and bool(asks) and -bids[0] >= asks[0]

    def top(self, levels: int) -> tuple[list[Level], list[Level]]:
        """Best `levels` bids and asks, best first."""
        return self.bids.top(levels), self.asks.top(levels)

    def sides(self) -> tuple[list[Level], list[Level]]:
        """The whole book, best first."""
        return self.bids.top(), self.asks.top()

    def __len__(self) -> int:
        return len(self.bids) + len(self.asks)


def profile_step(price: float, bps: float = PROFILE_STEP_BPS) -> float:
    """A price bucket about `bps` basis points of `price` wide, rounded up to
    1, 2 or 5 times a power of ten (so buckets of every profile line up)."""
    raw = price * bps / 10_000
    if raw <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))


def bucket_of(price: float, step: float) -> int:
    """The profile bucket k holding `price` ([k * step, (k + 1) * step)). The
    float quotient of a price on an edge can fall a hair short (0.3 / 0.1 is
    2.999...): nudged by far less than any tick's share of a step."""
    quotient = price / step
    return math.floor(quotient + abs(quotient) * 1e-12)


def _side_buckets(side: BookSide, step: float, limit: float) -> tuple[int, list[float]]:
    """Sizes summed per bucket from the best level outward until `limit` (a
    price: the lowest bid or highest ask kept); (first bucket, ascending sizes).
    In NumPy but for the sizes' text: a 20,000-level book costs a few ms on
    the event loop, not tens."""
    keys, sign = side.keys, side.sign
    cut = bisect_right(keys, sign * limit)  # keys are sign * price, best first
    if not cut:
        return 0, []
    levels = side.levels
    sizes = np.array(list(map(float, [levels[key][1] for key in keys[:cut]])))
    quotients = np.array(keys[:cut]) * sign / step
    buckets = np.floor(quotients + np.abs(quotients) * 1e-12).astype(np.int64)  # bucket_of
    first = int(buckets.min())
    sums = np.bincount(buckets - first, weights=sizes)
    return first, sums.tolist()


def book_profile(
    book: OrderBook, step: float, reach: float = PROFILE_REACH
) -> tuple[int, list[float], int, list[float]]:
    """(bid_first, bid_sizes, ask_first, ask_sizes) of a BookProfile: the
    levels within `reach` (a fraction) of the mid, summed per `step` bucket."""
    bid, ask = book.bids.best_price(), book.asks.best_price()
    if bid is None and ask is None:
        return 0, [], 0, []
    mid = (bid + ask) / 2 if bid is not None and ask is not None else (bid or ask or 0.0)
    bid_first, bid_sizes = _side_buckets(book.bids, step, mid * (1 - reach))
    ask_first, ask_sizes = _side_buckets(book.asks, step, mid * (1 + reach))
    return bid_first, bid_sizes, ask_first, ask_sizes


class RecordSink(Protocol):
    """Where a StreamBook sends what it derives (the storage writer, in practice)."""

    def add_book_update(self, update: BookUpdate) -> None: ...
    def add_quote(self, quote: Quote) -> None: ...
    def add_depth_snapshot(self, snapshot: DepthSnapshot) -> None: ...
    def add_checkpoint(self, checkpoint: BookCheckpoint) -> None: ...
    def add_book_bounds(self, bounds: BookBounds) -> None: ...
    def add_book_profile(self, profile: BookProfile) -> None: ...
    def add_feed_event(self, event: FeedEvent) -> None: ...


class Outcome(Enum):
    APPLIED = "applied"  # a delta continued the book
    SNAPSHOT = "snapshot"  # the book was reset
    RESTART = "restart"  # a `u == 1` snapshot after an exchange restart
    GAP = "gap"  # continuity broke: the book is invalid until a new snapshot
    # The message made an impossible book (crossed, a zero price, a snapshot
    # repeating a price) or could not be parsed: nothing of it was written, the
    # book is invalid until a new snapshot; resync.
    REJECTED = "rejected"
    DROPPED = "dropped"  # a message arrived while the book was invalid (not written)
    # A snapshot on a valid book that skipped `u`: messages were missed before
    # it (a gap and its recovery are recorded); the book is valid again.
    JUMPED = "jumped"


# Looked up once: a member lookup on an Enum class costs ~0.2 us in Python
# 3.11, and this one is made for every delta.
_APPLIED = Outcome.APPLIED


class StreamBook:
    """One stream's book plus the continuity rules.

    Nothing built on a broken book is emitted: after a gap every delta is dropped
    (not written) until a snapshot resets the book. A message that would make
    an impossible book is refused the same way, before anything derived from
    it reaches the sink.
    """

    def __init__(
        self,
        stream: StreamKey,
        sink: RecordSink,
        snapshot_interval_us: int = 1_000_000,
        snapshot_levels: int = 50,
        checkpoint_interval_us: int = 3_600_000_000,
        profile_interval_us: int = PROFILE_INTERVAL_US,
    ) -> None:
        self.stream = stream
        self.book = OrderBook()
        self.valid = False
        # Receive time of the first delta dropped while awaiting a snapshot.
        self.dropping_since_us: int | None = None
        self.last_update_id: int | None = None
        # Set by a refused message, cleared by the next accepted snapshot: one
        # event and one resync per run of refusals (a depth-1 stream whose every
        # snapshot is crossed must not flood the log or resync 100 times a second).
        self.refusing = False
        self._sink = sink
        self._interval_us = snapshot_interval_us
        self._levels = snapshot_levels
        self._checkpoint_interval_us = checkpoint_interval_us
        self._next_boundary_us: int | None = None
        self._next_checkpoint_us: int | None = None
        self._last_local_us = 0
        self._last_sequence = 0
        self._last_quote: tuple[str | None, ...] = (None, None, None, None)
        self._last_bid: Level | None = None
        self._last_ask: Level | None = None
        # A whole book started from a cut REST snapshot: where it is exact
        # (bid floor, ask ceiling), recorded again with every checkpoint.
        self.bounds: tuple[str | None, str | None] | None = None
        # RPI orders match no other maker's, so Bybit's RPI sizes alone may
        # cross (an RPI bid at or above an RPI ask): not an impossible book.
        self.refuses_crossed = stream.depth != RPI_SIZES_DEPTH
        # A whole book is also summarised for the dashboard (BookProfile).
        self.profiles = stream.depth == FULL_DEPTH
        self._profile_interval_us = profile_interval_us
        # Streams' profiles fall on different seconds of the interval, so 20
        # whole books do not all summarise themselves in one event-loop turn.
        seconds = max(1, profile_interval_us // SECOND_US)
        self._profile_offset_us = zlib.crc32(str(stream).encode()) % seconds * SECOND_US
        self._next_profile_us: int | None = None
        self._profile_step: float | None = None

    @property
    def last_sequence(self) -> int:
        """The exchange's sequence of the last message applied (Binance: its
        update id, where `last_update_id` is the sync's number)."""
        return self._last_sequence

    def set_bounds(
        self, snapshot: BookUpdate, bid_floor: str | None, ask_ceiling: str | None
    ) -> None:
        """The snapshot just applied started a whole book exact only within
        these prices (None: that side whole); recorded now and with every
        checkpoint until the next snapshot sets it again."""
        self.bounds = (bid_floor, ask_ceiling)
        self._emit_bounds(snapshot.exchange_us, snapshot.local_us, snapshot.update_id)

    def _emit_bounds(self, exchange_us: int, local_us: int, update_id: int) -> None:
        assert self.bounds is not None
        self._sink.add_book_bounds(
            BookBounds(self.stream, exchange_us, local_us, update_id, *self.bounds)
        )

    def invalidate(self) -> None:
        """Mark the book broken (e.g. the connection dropped): wait for a snapshot."""
        self.valid = False
        self._next_boundary_us = None
        self._next_checkpoint_us = None
        self._next_profile_us = None

    def apply(self, update: BookUpdate) -> Outcome:
        if update.is_snapshot:
            outcome = self._reset(update)
            if outcome is Outcome.REJECTED or outcome is Outcome.DROPPED:
                return outcome
        elif not self.valid:
            if self.dropping_since_us is None:
                self.dropping_since_us = update.local_us
            return Outcome.DROPPED
        elif update.update_id != self.last_update_id + 1:  # type: ignore[operator]
            self._record_gap(update)
            return Outcome.GAP
        else:
            self._emit_due_snapshot(update.exchange_us)
            book = self.book
            try:
                book.apply_levels(update.bids, update.asks)
            except BadLevel as exc:
                return self._refuse(
                    update.local_us, FeedEventKind.ANOMALY, f"u={update.update_id}: {exc}"
                )
            # book.is_crossed(), inlined: this runs for every delta.
            bids, asks = book.bids.keys, book.asks.keys
            if bids and asks and -bids[0] >= asks[0] and self.refuses_crossed:
                return self._refuse_crossed(update)
            outcome = _APPLIED
        self.last_update_id = update.update_id
        self._last_local_us = update.local_us
        self._last_sequence = update.sequence
        # The quote goes first: a sink may store it with the update it belongs to.
        self._emit_quote_if_changed(update)
        self._sink.add_book_update(update)
        if self._next_boundary_us is None:
            t = update.exchange_us
            self._next_boundary_us = t - t % self._interval_us + self._interval_us
            every = self._checkpoint_interval_us
            self._next_checkpoint_us = t - t % every + every
            every = self._profile_interval_us
            self._next_profile_us = t - (t - self._profile_offset_us) % every + every
        return outcome

    def _reset(self, update: BookUpdate) -> Outcome:
        if self.valid:
            self._emit_due_snapshot(update.exchange_us)
        book = self.book
        book.clear()
        try:
            book.apply_levels(update.bids, update.asks)
        except BadLevel as exc:
            return self._refuse(
                update.local_us, FeedEventKind.ANOMALY, f"snapshot u={update.update_id}: {exc}"
            )
        # Applied to an empty book, a snapshot leaves one level per entry unless
        # it repeats a price or lists a zero size: not a book, whichever entry wins.
        if len(book.bids) != len(update.bids) or len(book.asks) != len(update.asks):
            detail = f"snapshot u={update.update_id} repeats a price or holds a zero size"
            return self._refuse(update.local_us, FeedEventKind.ANOMALY, detail)
        # Depth-1 streams send nothing but snapshots: this is their only check.
        if book.is_crossed() and self.refuses_crossed:
            return self._refuse_crossed(update)
        last = self.last_update_id
        restart = update.update_id == 1 and last not in (None, 1)
        # A snapshot that jumps `u` on a valid book: the messages between were
        # missed, though nothing said so (the server sent none of them to us,
        # e.g. between a silence probe's unsubscribe and subscribe while the
        # market moved). The book is right again, but the log lacks those
        # states: a gap from the last message applied (when they began to be
        # missed), closed right here, as the export's replay sees it. Depth 1
        # is snapshots only, and Bybit conflates them: no loss there.
        jumped = (
            self.valid
            and self.stream.depth > 1
            and last is not None
            and update.update_id > last + 1
        )
        if jumped:
            missed = update.update_id - last - 1  # type: ignore[operator]
            self._sink.add_feed_event(
                self._event_at(
                    FeedEventKind.GAP,
                    self._last_local_us,
                    f"snapshot u={update.update_id} after u={last}: {missed} updates missed",
                )
            )
        # A snapshot that ends a gap, a lost connection or a refusal closes the
        # interval the dashboard shades as untrusted.
        if (jumped or not self.valid) and last is not None:
            self._sink.add_feed_event(
                self._event(FeedEventKind.RECOVERED, update, f"snapshot u={update.update_id}")
            )
        self.valid = True
        self.refusing = False
        self.dropping_since_us = None
        if restart:
            self._sink.add_feed_event(
                self._event(
                    FeedEventKind.RESTART,
                    update,
                    f"u reset to 1 from {self.last_update_id}",
                )
            )
            return Outcome.RESTART
        return Outcome.JUMPED if jumped else Outcome.SNAPSHOT

    def _record_gap(self, update: BookUpdate) -> None:
        detail = f"expected u={self.last_update_id + 1}, got u={update.update_id}"  # type: ignore[operator]
        self.invalidate()
        self._sink.add_feed_event(self._event(FeedEventKind.GAP, update, detail))

    def _refuse_crossed(self, update: BookUpdate) -> Outcome:
        bid, ask = self.book.best_bid(), self.book.best_ask()
        detail = f"crossed book at u={update.update_id}: bid {bid} >= ask {ask}"
        return self._refuse(update.local_us, FeedEventKind.ANOMALY, detail)

    def reject(self, local_us: int, detail: str) -> Outcome:
        """A message of this stream could not be parsed: the update it carried
        is lost, so the book can no longer be trusted."""
        return self._refuse(local_us, FeedEventKind.MALFORMED, detail)

    def _refuse(self, local_us: int, kind: FeedEventKind, detail: str) -> Outcome:
        """Invalidate the book without writing anything of the message. The
        first refusal of a run is an event and asks for a resync (REJECTED);
        later ones wait for a snapshot like dropped deltas (DROPPED), so the
        caller's overdue-snapshot timer still resyncs now and then."""
        self.invalidate()
        if self.dropping_since_us is None:
            self.dropping_since_us = local_us
        if self.refusing:
            return Outcome.DROPPED
        self.refusing = True
        self._sink.add_feed_event(self._event_at(kind, local_us, detail))
        return Outcome.REJECTED

    def _emit_due_snapshot(self, exchange_us: int) -> None:
        """Before a message at `exchange_us` changes the book, the current book is
        the book at the end of every bucket that ended since the last message:
        stamp it at the latest such boundary (as Tardis does)."""
        self._emit_due_checkpoint(exchange_us)
        if self.profiles:
            self._emit_due_profile(exchange_us)
        boundary = self._next_boundary_us
        if boundary is None or exchange_us < boundary:
            return
        boundary = exchange_us - exchange_us % self._interval_us
        bids, asks = self.book.top(self._levels)
        self._sink.add_depth_snapshot(
            DepthSnapshot(
                self.stream,
                boundary,
                self._last_local_us,
                self.last_update_id or 0,
                bids,
                asks,
            )
        )
        self._next_boundary_us = boundary + self._interval_us

    def _emit_due_profile(self, exchange_us: int) -> None:
        """A whole book's profile at the latest profile interval's boundary
        that passed since the last message (as `_emit_due_snapshot` does)."""
        due = self._next_profile_us
        if due is None or exchange_us < due:
            return
        every = self._profile_interval_us
        boundary = exchange_us - (exchange_us - self._profile_offset_us) % every
        self._next_profile_us = boundary + every
        book = self.book
        if self._profile_step is None:
            price = book.bids.best_price() or book.asks.best_price()
            if price is None:
                return  # an empty book: nothing to draw, no step to choose yet
            self._profile_step = profile_step(price)
        step = self._profile_step
        self._sink.add_book_profile(
            BookProfile(
                self.stream,
                boundary,
                self._last_local_us,
                self.last_update_id or 0,
                step,
                *book_profile(book, step),
            )
        )

    def _emit_due_checkpoint(self, exchange_us: int) -> None:
        """Like a depth snapshot, but the whole book and rarely (hourly by default)."""
        due = self._next_checkpoint_us
        if due is None or exchange_us < due:
            return
        every = self._checkpoint_interval_us
        boundary = exchange_us - exchange_us % every
        bids, asks = self.book.sides()
        self._sink.add_checkpoint(
            BookCheckpoint(
                self.stream,
                boundary,
                self._last_local_us,
                self.last_update_id or 0,
                self._last_sequence,
                bids,
                asks,
            )
        )
        if self.bounds is not None:
            self._emit_bounds(boundary, self._last_local_us, self.last_update_id or 0)
        self._next_checkpoint_us = boundary + every

    def _emit_quote_if_changed(self, update: BookUpdate) -> None:
        bid, ask = self.book.best_bid(), self.book.best_ask()
        # Levels are the message's own lists, so an unchanged top is the very same
        # objects: the common case costs two identity checks.
        if bid is self._last_bid and ask is self._last_ask:
            return
        self._last_bid, self._last_ask = bid, ask
        quote = (
            bid[0] if bid else None,
            bid[1] if bid else None,
            ask[0] if ask else None,
            ask[1] if ask else None,
        )
        if quote == self._last_quote:
            return
        self._last_quote = quote
        self._sink.add_quote(
            Quote(self.stream, update.exchange_us, update.local_us, update.update_id, *quote)
        )

    def _event(self, kind: FeedEventKind, update: BookUpdate, detail: str) -> FeedEvent:
        return self._event_at(kind, update.local_us, detail)

    def _event_at(self, kind: FeedEventKind, local_us: int, detail: str) -> FeedEvent:
        return FeedEvent.of_stream(kind, local_us, self.stream, detail)
