"""A book of exact integers for readers that compute from history (the
book_snapshot exports): prices in ticks, sizes in lots, one exponent each for
the whole book, raised (never lowered) when a message brings more decimals.

Knows whether its top `levels` changed since `take_top()` last looked, from
the index of each change, so a reader asks for the top only when it moved.

Why a second book beside book.OrderBook: OrderBook holds the exchange's
[price, size] texts, since the collector receives and writes texts and the L2
export and `book_at` hand them back verbatim. This one serves the readers that
compute over the packed log, which stores integers: book_snapshot rows over
millions of messages, where turning every level back into text only to
compare tops would cost more than the replay itself. Both are fed by the one
replay (export.replay), which decides where the book is known.
"""

from __future__ import annotations

from bisect import bisect_left

from depthwatch.records import Level
from depthwatch.storage.read.book import int_levels
from depthwatch.storage.read.rows import IntBookEvent

MISSING = 0  # a level a side does not have, in take_top()'s tuple


class IntBook:
    __slots__ = ("_top", "ask_keys", "asks", "bid_keys", "bids", "dirty", "levels", "price_exp",
                 "size_exp")  # fmt: skip

    def __init__(self, levels: int) -> None:
        self.levels = levels
        # Keys sorted best first: ask ticks, and bid ticks negated.
        self.ask_keys: list[int] = []
        self.bid_keys: list[int] = []
        self.asks: dict[int, int] = {}  # key -> lots
        self.bids: dict[int, int] = {}
        self.price_exp = self.size_exp = 0
        self.dirty = True  # the top may differ from the last take_top()
        self._top: tuple[int, ...] = ()

    def clear(self) -> None:
        self.ask_keys.clear()
        self.bid_keys.clear()
        self.asks.clear()
        self.bids.clear()
        self.dirty = True

    def _rescale(self, price_exp: int, size_exp: int) -> None:
        """Raise the book's exponents to a message's."""
        if price_exp > self.price_exp:
            factor = 10 ** (price_exp - self.price_exp)
            self.ask_keys[:] = [k * factor for k in self.ask_keys]
            self.bid_keys[:] = [k * factor for k in self.bid_keys]
            self.asks = {k * factor: v for k, v in self.asks.items()}
            self.bids = {k * factor: v for k, v in self.bids.items()}
            self.price_exp = price_exp
        if size_exp > self.size_exp:
            factor = 10 ** (size_exp - self.size_exp)
            self.asks = {k: v * factor for k, v in self.asks.items()}
            self.bids = {k: v * factor for k, v in self.bids.items()}
            self.size_exp = size_exp
        self.dirty = True

    def apply(self, event: IntBookEvent) -> None:
        """The message's levels (absolute sizes, 0 deletes) onto the book."""
        if not self.asks and not self.bids:
            self.price_exp, self.size_exp = event.price_exp, event.size_exp
        elif event.price_exp > self.price_exp or event.size_exp > self.size_exp:
            self._rescale(event.price_exp, event.size_exp)
        price_up = 10 ** (self.price_exp - event.price_exp)
        size_up = 10 ** (self.size_exp - event.size_exp)
        touched = self._apply_side(
            self.bid_keys, self.bids, event.bid_ticks, event.bid_lots, -price_up, size_up
        )
        touched |= self._apply_side(
            self.ask_keys, self.asks, event.ask_ticks, event.ask_lots, price_up, size_up
        )
        if touched:
            self.dirty = True

    def _apply_side(
        self,
        keys: list[int],
        lots_of: dict[int, int],
        ticks: list[int],
        lots: list[int],
        price_factor: int,
        size_factor: int,
    ) -> bool:
        """Whether a change reached the top `levels` (an index below it when made)."""
        n = self.levels
        touched = False
        for tick, size in zip(ticks, lots, strict=True):
            key = tick * price_factor
            if size == 0:
                if key in lots_of:
                    i = bisect_left(keys, key)
                    del keys[i]
                    del lots_of[key]
                    touched = touched or i < n
            elif key in lots_of:
                lots_of[key] = size * size_factor
                touched = touched or len(keys) <= n or key <= keys[n - 1]
            else:
                i = bisect_left(keys, key)
                keys.insert(i, key)
                lots_of[key] = size * size_factor
                touched = touched or i < n
        return touched

    def load_levels(self, bids: list[Level], asks: list[Level]) -> None:
        """A whole book of decimal texts (a checkpoint), onto an empty book."""
        levels = int_levels(
            [p for p, _ in bids], [q for _, q in bids], [p for p, _ in asks], [q for _, q in asks]
        )
        self.apply(IntBookEvent(0, 0, 0, 0, True, *levels))

    def take_top(self) -> tuple[int, ...]:
        """The top `levels`: ask ticks, ask lots, bid keys (ticks negated),
        bid lots, each `levels` long, MISSING where a side is short (no tick,
        lot or key is 0). The same tuple object while the top did not change."""
        if self.dirty:
            n = self.levels
            ask_keys, bid_keys = self.ask_keys[:n], self.bid_keys[:n]
            asks = list(map(self.asks.__getitem__, ask_keys))
            bids = list(map(self.bids.__getitem__, bid_keys))
            short_asks = [MISSING] * (n - len(ask_keys))
            short_bids = [MISSING] * (n - len(bid_keys))
            self._top = (
                *ask_keys, *short_asks, *asks, *short_asks, *bid_keys, *short_bids, *bids,
                *short_bids,
            )  # fmt: skip
            self.dirty = False
        return self._top
