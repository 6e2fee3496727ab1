"""Seeded synthetic order books for the simulator.

Prices and sizes are kept as integers (ticks and lots) so the model never
rounds; they become decimal strings only when a message is rendered. Each side
is a SortedDict keyed so that ascending key order is best-first (bids use the
negated tick), which lets one code path serve both sides.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice

from sortedcontainers import SortedDict

Level = list[str]

# Defaults loosely follow Bybit's linear instruments; anything unknown gets a
# mid-priced instrument so arbitrary symbols still produce sensible books.
_DEFAULT_SPECS: dict[str, tuple[str, str, str]] = {
    # symbol: (tick size, lot size, start price)
    "BTCUSDT": ("0.10", "0.001", "60000"),
    "ETHUSDT": ("0.01", "0.01", "3000"),
    "SOLUSDT": ("0.010", "0.1", "150"),
    "XRPUSDT": ("0.0001", "1", "0.6"),
    "DOGEUSDT": ("0.00001", "1", "0.15"),
}
_FALLBACK_SPEC = ("0.01", "0.1", "100")


@dataclass(frozen=True, slots=True)
class TruthState:
    """One published state of a topic: the complete top-D book after message `u`."""

    u: int
    seq: int
    ts_ms: int
    bids: list[Level]  # best first
    asks: list[Level]  # best first
    dropped: bool = False  # withheld from clients by the drop_every fault


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    symbol: str
    tick: Decimal
    lot: Decimal
    start_price: Decimal

    @property
    def price_places(self) -> int:
        return max(0, -int(self.tick.as_tuple().exponent))

    @property
    def size_places(self) -> int:
        return max(0, -int(self.lot.as_tuple().exponent))


def spec_for(symbol: str, tick: str | None = None, lot: str | None = None) -> SymbolSpec:
    d_tick, d_lot, start = _DEFAULT_SPECS.get(symbol, _FALLBACK_SPEC)
    return SymbolSpec(symbol, Decimal(tick or d_tick), Decimal(lot or d_lot), Decimal(start))


class Formatter:
    """Integer ticks/lots -> the decimal strings Bybit sends (e.g. "16493.50")."""

    def __init__(self, spec: SymbolSpec) -> None:
        self._spec = spec
        self._prices: dict[int, str] = {}
        self._sizes: dict[int, str] = {}

    def price(self, ticks: int) -> str:
        # Prices recur constantly, so caching avoids Decimal work on the hot path.
        text = self._prices.get(ticks)
        if text is None:
            text = f"{self._spec.tick * ticks:.{self._spec.price_places}f}"
            self._prices[ticks] = text
        return text

    def size(self, lots: int) -> str:
        text = self._sizes.get(lots)
        if text is None:
            text = "0" if lots == 0 else f"{self._spec.lot * lots:.{self._spec.size_places}f}"
            self._sizes[lots] = text
        return text


# Bids are keyed by negated ticks: the lowest bid a book may hold is one tick.
MAX_BID_KEY = -1


class MarketBook:
    """A random-walk book for one symbol: never crossed, 1-10 level changes per step."""

    def __init__(self, spec: SymbolSpec, levels: int, rng: random.Random) -> None:
        self.spec = spec
        self.levels = max(levels, 2)
        self.rng = rng
        self.fmt = Formatter(spec)
        self.bids: SortedDict = SortedDict()  # -ticks -> lots
        self.asks: SortedDict = SortedDict()  # ticks -> lots
        mid = int(spec.start_price / spec.tick)
        for i in range(self.levels):
            if mid - 1 - i >= 1:  # a deep book of a cheap symbol: no bid at or below 0
                self.bids[-(mid - 1 - i)] = self._size()
            self.asks[mid + 1 + i] = self._size()

    def _size(self) -> int:
        return 1 + int(self.rng.expovariate(1 / 400))

    def best_bid(self) -> int:
        return -self.bids.keys()[0]

    def best_ask(self) -> int:
        return self.asks.keys()[0]

    def step(self) -> tuple[set[int], set[int]]:
        """Mutate the book once; return the changed keys of (bids, asks)."""
        rng = self.rng
        changed: tuple[set[int], set[int]] = (set(), set())
        wanted = rng.randint(1, 10)
        # The mid walks by trading through the touch or improving inside the spread.
        # Wide spreads fill in quickly, so the book stays tight like a liquid market.
        if rng.random() < 0.3 or self.best_ask() - self.best_bid() > 2:
            self._move_touch(changed)
        while len(changed[0]) + len(changed[1]) < wanted:
            side = rng.randrange(2)
            book = (self.bids, self.asks)[side]
            # Activity concentrates near the touch, like real books.
            idx = min(int(rng.expovariate(1 / 8)), len(book) - 1)
            key = book.keys()[idx]
            roll = rng.random()
            if roll < 0.7:
                book[key] = self._size()
            elif roll < 0.85 and len(book) > 2:
                del book[key]
            else:
                key = self._free_key(book, key)
                if side == 0 and key > MAX_BID_KEY:
                    continue  # no room below the lowest bid: nothing changed
                book[key] = self._size()
            changed[side].add(key)
        self._refill(changed)
        return changed

    def _move_touch(self, changed: tuple[set[int], set[int]]) -> None:
        rng = self.rng
        spread = self.best_ask() - self.best_bid()
        up = rng.random() < 0.5
        if spread > 1:
            # Improve inside the spread; cannot cross because spread > 1.
            if up:
                key = -(self.best_bid() + 1)
                self.bids[key] = self._size()
                changed[0].add(key)
            else:
                key = self.best_ask() - 1
                self.asks[key] = self._size()
                changed[1].add(key)
        else:
            # Trade through the touch: this is what moves the mid.
            book, side = (self.asks, 1) if up else (self.bids, 0)
            if len(book) > 2:
                key = book.keys()[0]
                del book[key]
                changed[side].add(key)

    def _free_key(self, book: SortedDict, near: int) -> int:
        # The first free key beyond `near`: away from the touch, so a new level can
        # never cross the other side. Keys are distinct integers, so along a run of
        # consecutive keys (key - index) stays the same: the run's end is found by
        # bisection, O(log^2 n), where walking it cost O(n) in a dense deep book
        # (a step at 12,000 levels a side: 0.39 ms walking, 0.08 ms so). The same
        # key as the walk found, so seeded markets are unchanged.
        key = near + 1
        if key not in book:
            return key
        keys = book.keys()
        first = book.bisect_left(key)  # keys[first] == key
        lo, hi = first + 1, len(keys)
        while lo < hi:  # the first index past the run
            mid = (lo + hi) // 2
            if keys[mid] - mid == key - first:
                lo = mid + 1
            else:
                hi = mid
        return key + lo - first

    def _refill(self, changed: tuple[set[int], set[int]]) -> None:
        # Keep roughly `levels` per side by adding/removing at the far end.
        for side, book in enumerate((self.bids, self.asks)):
            while len(book) < self.levels:
                key = book.keys()[-1] + 1 + self.rng.randrange(2)
                if side == 0 and key > MAX_BID_KEY:
                    break  # bids reach down to one tick: the side stays thinner
                book[key] = self._size()
                changed[side].add(key)
            while len(book) > self.levels + 5:
                key = book.keys()[-1]
                del book[key]
                changed[side].add(key)

    def top(self, depth: int) -> tuple[list[Level], list[Level]]:
        """The top-`depth` view straight from the model, best first."""
        fmt = self.fmt
        bids = [[fmt.price(-k), fmt.size(v)] for k, v in islice(self.bids.items(), depth)]
        asks = [[fmt.price(k), fmt.size(v)] for k, v in islice(self.asks.items(), depth)]
        return bids, asks


class DepthView:
    """The top-D view one depth topic has published, and the diff to the next one.

    Only changed keys and the keys between the old and new D-th level can enter
    or leave the view, so a diff costs O(changes), not O(D).
    """

    def __init__(self, book: MarketBook, depth: int) -> None:
        self.book = book
        self.depth = depth
        self.views: tuple[dict[int, int], dict[int, int]] = (
            dict(islice(book.bids.items(), depth)),
            dict(islice(book.asks.items(), depth)),
        )
        self.lasts: list[int | None] = [self._last(book.bids), self._last(book.asks)]

    def _last(self, book: SortedDict) -> int | None:
        return book.keys()[min(self.depth, len(book)) - 1] if book else None

    def diff(self, changed: tuple[set[int], set[int]]) -> tuple[list[Level], list[Level]]:
        """Update the view to the model's top D; return changed levels best first."""
        out: list[list[Level]] = []
        for side, book in enumerate((self.book.bids, self.book.asks)):
            view = self.views[side]
            old_last, new_last = self.lasts[side], self._last(book)
            self.lasts[side] = new_last
            keys = set(changed[side])
            # Levels pushed out of (or pulled into) the top D sit between the two
            # boundaries; removed levels are already in `changed`.
            bounds = [k for k in (old_last, new_last) if k is not None]
            if bounds:
                keys.update(book.irange(min(bounds), max(bounds)))
            side_out: list[tuple[int, int]] = []
            for key in sorted(keys):
                size = book.get(key) if new_last is not None and key <= new_last else None
                if size is not None:
                    if view.get(key) != size:
                        view[key] = size
                        side_out.append((key, size))
                elif key in view:
                    del view[key]
                    side_out.append((key, 0))
            out.append(self._levels(side, side_out))
        return out[0], out[1]

    def snapshot(self) -> tuple[list[Level], list[Level]]:
        bids, asks = (self._levels(s, sorted(self.views[s].items())) for s in (0, 1))
        return bids, asks

    def _levels(self, side: int, items: list[tuple[int, int]]) -> list[Level]:
        fmt = self.book.fmt
        sign = -1 if side == 0 else 1
        return [[fmt.price(sign * k), fmt.size(v)] for k, v in items]
