"""The simulator's topics: each a shared sequence of states (synthetic from a
Market, or replayed from a recording) that the server fans out to its
subscribers as Pubs."""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, overload

import orjson

from depthwatch.feed.bybit.topics import split_topic
from depthwatch.records import FULL_DEPTH, levels_of
from depthwatch.sim.config import AnyFault, FaultKind, FullBookFault, SimConfig, now_ms
from depthwatch.sim.market import DepthView, Level, MarketBook, TruthState, spec_for
from depthwatch.sim.replay import DictBook, ReplayMessage

if TYPE_CHECKING:
    from depthwatch.sim.conn import Conn


@dataclass(slots=True)
class Pub:
    """One outgoing data message, rendered lazily once per message shape."""

    topic: str
    is_book: bool
    body: dict | list | None = None  # book data or trade list; None for raw
    kind: str = "snapshot"
    ts: int = 0
    cts: int = 0
    raw: str | None = None
    dropped: bool = False
    fault: AnyFault | None = None  # a topic fault, logged when it reaches a client
    _cache: dict[bool, bytes] = field(default_factory=dict)

    def render(self, category: str) -> bytes:
        if self.raw is not None:
            return self.raw.encode()
        spot = category == "spot"
        out = self._cache.get(spot)
        if out is None:
            if not self.is_book:
                msg = {"topic": self.topic, "type": "snapshot", "ts": self.ts, "data": self.body}
            elif spot:  # spot differs only in key order
                msg = {"topic": self.topic, "ts": self.ts, "type": self.kind}
                msg |= {"data": self.body, "cts": self.cts}
            else:
                msg = {"topic": self.topic, "type": self.kind, "ts": self.ts}
                msg |= {"data": self.body, "cts": self.cts}
            out = self._cache[spot] = orjson.dumps(msg)
        return out


def book_pub(topic: str, symbol: str, kind: str, state: TruthState, ts: int) -> Pub:
    data = {"s": symbol, "b": state.bids, "a": state.asks, "u": state.u, "seq": state.seq}
    return Pub(topic, True, data, kind, ts, state.ts_ms - 1)


class Topic:
    """Shared per-topic state: subscribers, u/seq and the recorded truth."""

    def __init__(self, name: str, config: SimConfig) -> None:
        self.name = name
        self.config = config
        kind, depth, self.symbol = split_topic(name)
        self.depth = depth or 0
        self.is_book = kind == "orderbook"
        self.subscribers: dict[Conn, None] = {}
        self.truth: list[TruthState] = []
        self.u = self.seq = self.ts = 0
        self.deltas = 0  # counts deltas for drop_every
        self.last_sent = time.monotonic()
        self.has_state = False

    def top(self) -> tuple[list[Level], list[Level]]:
        raise NotImplementedError

    def fan_out(self, pub: Pub) -> None:
        """Hand a published message to the subscribers (a Binance book sends it
        under each stream name it was subscribed by, and may hold it back)."""
        for conn in list(self.subscribers):
            conn.push(pub)

    def states(self) -> Sequence[TruthState]:
        """Every recorded state, in order (truth)."""
        return self.truth

    def latest(self) -> TruthState | None:
        if not self.has_state:
            return None
        return TruthState(self.u, self.seq, self.ts, *self.top())

    def snapshot_pub(self, ts: int | None = None) -> Pub | None:
        """A snapshot of the current state with the current u and seq (late joiners).
        None for the whole book: `orderbook.full` sends deltas only, its snapshot
        comes over REST."""
        state = self.latest() if self.is_book and self.depth != FULL_DEPTH else None
        if state is None:
            return None
        return book_pub(self.name, self.symbol, "snapshot", state, ts or state.ts_ms)

    def _count_delta(self) -> bool:
        self.deltas += 1
        every = self.config.drop_every
        return bool(every) and self.deltas % every == 0

    def _record(self, dropped: bool) -> None:
        if self.config.record:
            self.truth.append(TruthState(self.u, self.seq, self.ts, *self.top(), dropped))


class SynthTopic(Topic):
    def __init__(self, name: str, config: SimConfig, market: Market) -> None:
        super().__init__(name, config)
        self.market = market
        self.view = DepthView(market.book, levels_of(self.depth))
        self.updates = 0  # counts changed states for restart_every
        # A seeded, realistic-looking starting u rather than 1, which means "restart".
        self.u = random.Random(f"{config.seed}:{name}").randint(10**6, 10**8)
        self.seq, self.ts, self.has_state = market.seq, now_ms(), True
        self._record(False)

    def top(self) -> tuple[list[Level], list[Level]]:
        # Truth comes from the model itself, not from the diffed view.
        bids, asks = self.market.book.top(levels_of(self.depth))
        return self._shape(bids), self._shape(asks)

    def _shape(self, levels: list[Level]) -> list[Level]:
        """The levels as this topic sends them (RpiTopic adds the RPI size)."""
        return levels

    def advance(self, changed: tuple[set[int], set[int]], seq: int, ts: int) -> Pub | None:
        bids, asks = self.view.diff(changed)
        if not bids and not asks:
            return None  # Bybit pushes nothing when the top D did not change
        self.updates += 1
        every = self.config.restart_every
        dropped = False
        if every and self.updates % every == 0:
            self.u, kind = 1, "snapshot"
        else:
            self.u += 1
            kind = "snapshot" if self.depth == 1 else "delta"
            dropped = self._count_delta()
        self.seq, self.ts = seq, ts
        if kind == "snapshot":
            bids, asks = self.view.snapshot()
        self._record(dropped)
        state = TruthState(self.u, seq, ts, self._shape(bids), self._shape(asks))
        pub = book_pub(self.name, self.symbol, kind, state, ts)
        pub.dropped = dropped
        if dropped:
            pub.fault = FaultKind.DROP
        elif self.u == 1:
            pub.fault = FaultKind.RESTART
        return pub


def rpi_level(level: Level) -> Level:
    """A model level as `orderbook.rpi` sends it, [price, size, RPI size], split
    by its price alone (so a level keeps its kind while it lives): 5 in 8
    ordinary, 2 in 8 RPI only, 1 in 8 both (the model's size each). A removed
    level (size 0) is [price, "0", "0"]."""
    price, size = level
    if not float(size):
        return [price, "0", "0"]
    kind = zlib.crc32(price.encode()) % 8
    if kind < 5:
        return [price, size, "0"]
    return [price, "0", size] if kind < 7 else [price, size, size]


class RpiTopic(SynthTopic):
    """`orderbook.rpi.{symbol}`: the model's top RPI_LEVELS, each level with an
    ordinary and an RPI size (rpi_level); truth holds the three-element levels."""

    def _shape(self, levels: list[Level]) -> list[Level]:
        return [rpi_level(level) for level in levels]


# One state's changes per side, best first: (key, level), level None = removed.
Ops = tuple[list[tuple[int, Level | None]], list[tuple[int, Level | None]]]


class SortedLevels:
    """A whole book, per side parallel lists sorted best first: the model's keys
    (bids negated) and their [price, size] lists. Level lists are never changed
    in place, so copies share them: a copy is two C-level list copies a side,
    an update a bisection and a pointer memmove, not a re-render of the book."""

    __slots__ = ("keys", "levels")

    def __init__(self) -> None:
        self.keys: tuple[list[int], list[int]] = ([], [])
        self.levels: tuple[list[Level], list[Level]] = ([], [])

    def copy(self) -> SortedLevels:
        other = SortedLevels()
        other.keys = (self.keys[0][:], self.keys[1][:])
        other.levels = (self.levels[0][:], self.levels[1][:])
        return other

    def fold(self, ops: Ops) -> None:
        for side in (0, 1):
            keys, levels = self.keys[side], self.levels[side]
            for key, level in ops[side]:
                i = bisect_left(keys, key)
                present = i < len(keys) and keys[i] == key
                if level is None:
                    if present:
                        del keys[i], levels[i]
                elif present:
                    levels[i] = level
                else:
                    keys.insert(i, key)
                    levels.insert(i, level)


class FullTruth(Sequence[TruthState]):
    """The whole-book topic's recorded states, held as each state's changes plus
    a whole copy every CHECKPOINT_EVERY states (and wherever the book was
    replaced): 20,000 levels copied per step cost 0.5 ms and 200 KB a state.
    A state is rebuilt when read, from its checkpoint; iterating rebuilds each
    from the one before. Appended on the simulator's thread and read from
    others: a state's data is stored before its entry in `meta` makes it seen.
    """

    CHECKPOINT_EVERY = 128

    def __init__(self) -> None:
        self.meta: list[tuple[int, int, int, bool]] = []  # u, seq, ts_ms, dropped
        self.ops: list[Ops] = []
        self.checkpoints: dict[int, SortedLevels] = {}

    def append(
        self, u: int, seq: int, ts: int, dropped: bool, ops: Ops | None, book: SortedLevels
    ) -> None:
        """Record the state `book` is in after `ops` (None: the book was replaced)."""
        i = len(self.meta)
        if ops is None or i % self.CHECKPOINT_EVERY == 0:
            self.checkpoints[i] = book.copy()
            ops = ([], [])
        self.ops.append(ops)
        self.meta.append((u, seq, ts, dropped))

    def __len__(self) -> int:
        return len(self.meta)

    def _walk(self, start: int, stop: int) -> Iterator[TruthState]:
        """States start..stop-1, folded forward from the checkpoint at or before start."""
        base = start
        while base not in self.checkpoints:
            base -= 1
        book = self.checkpoints[base].copy()
        for i in range(base, stop):
            if i != base:
                checkpoint = self.checkpoints.get(i)
                if checkpoint is not None:
                    book = checkpoint.copy()
                else:
                    book.fold(self.ops[i])
            if i >= start:
                u, seq, ts, dropped = self.meta[i]
                bids, asks = book.levels
                yield TruthState(u, seq, ts, bids[:], asks[:], dropped)

    def __iter__(self) -> Iterator[TruthState]:
        return self._walk(0, len(self.meta))

    @overload
    def __getitem__(self, index: int) -> TruthState: ...

    @overload
    def __getitem__(self, index: slice) -> list[TruthState]: ...

    def __getitem__(self, index: int | slice) -> TruthState | list[TruthState]:
        n = len(self.meta)
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return list(self._walk(start, stop)) if start < stop else []
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("truth index out of range")
        return next(self._walk(index, index + 1))


class FullTopic(Topic):
    """`orderbook.full.{symbol}`: every change of the market's whole book as a
    delta, never a snapshot (the client fetches one over REST, answered from
    this topic's state: `state`, `stale_state`).

    The published book is kept here (`book`, with `sizes` to compare against)
    rather than read from the model: a full reset holds the step's changes
    back (the book stays as it was while only the lineage restarts) and a
    delisted book is empty while the model walks on. Updates cost O(changes).
    Truth goes to `log` (a FullTruth), not to the base class's list.
    """

    def __init__(self, name: str, config: SimConfig, market: Market) -> None:
        super().__init__(name, config)
        self.market = market
        self.book = SortedLevels()
        self.sizes: tuple[dict[int, int], dict[int, int]] = ({}, {})
        # Keys the model changed that the published book may not have yet.
        self.pending: tuple[set[int], set[int]] = (set(), set())
        self.log = FullTruth()
        self.updates = 0  # changed states, for restart_every and full_reset_every
        self.u = self._first_u()
        self.seq, self.ts, self.has_state = market.seq, now_ms(), True
        self.listed = self._listed_at(market.steps)
        if self.listed:
            self._load()
        else:
            self.u = 1  # created while delisted: what REST would say
        self._record(False, None)
        # For rest_stale_every: the topic's first state; the state before the
        # current one (kept only with that fault on: a copy a step); and the
        # one before the latest subscriber's join state, older than every delta
        # that subscriber buffers.
        self.first = self.state()
        self.prev: TruthState | None = None
        self.before_join: TruthState | None = None

    def _first_u(self) -> int:
        """A seeded, realistic-looking starting u rather than 1, which means "restart"."""
        return random.Random(f"{self.config.seed}:{self.name}").randint(10**6, 10**8)

    def states(self) -> Sequence[TruthState]:
        return self.log

    def top(self) -> tuple[list[Level], list[Level]]:
        bids, asks = self.book.levels
        return bids[:], asks[:]

    def state(self, limit: int | None = None) -> TruthState:
        """The current state, at most `limit` levels a side (a REST answer)."""
        bids, asks = self.book.levels
        return TruthState(self.u, self.seq, self.ts, bids[:limit], asks[:limit])

    def stale_state(self) -> TruthState:
        return self.before_join or self.first

    def on_join(self) -> None:
        self.before_join = self.prev

    def _record(self, dropped: bool, ops: Ops | None = None) -> None:
        if self.config.record:
            self.log.append(self.u, self.seq, self.ts, dropped, ops, self.book)

    def _listed_at(self, step: int) -> bool:
        # Delisted from market step delist_after + 1, relisted relist_after steps later.
        cfg = self.config
        if not cfg.delist_after or step <= cfg.delist_after:
            return True
        return bool(cfg.relist_after) and step > cfg.delist_after + cfg.relist_after

    def _load(self) -> None:
        """Publish the model's whole book as it is now (creation, relisting)."""
        model = self.market.book
        for side, levels in enumerate((model.bids, model.asks)):
            sign = -1 if side == 0 else 1
            self.book.keys[side][:] = levels.keys()
            self.book.levels[side][:] = [
                [model.fmt.price(sign * k), model.fmt.size(v)] for k, v in levels.items()
            ]
            self.sizes[side].clear()
            self.sizes[side].update(levels)
            self.pending[side].clear()

    def _clear(self) -> None:
        for side in (0, 1):
            self.book.keys[side].clear()
            self.book.levels[side].clear()
            self.sizes[side].clear()
            self.pending[side].clear()

    def _diff(self) -> Ops:
        """Where the model differs from the published book, best first; O(changes),
        as only the pending keys are looked at."""
        model = self.market.book
        out: Ops = ([], [])
        for side, levels in enumerate((model.bids, model.asks)):
            sizes, sign = self.sizes[side], -1 if side == 0 else 1
            for key in sorted(self.pending[side]):
                new = levels.get(key, 0)
                if new != sizes.get(key, 0):
                    level = [model.fmt.price(sign * key), model.fmt.size(new)] if new else None
                    out[side].append((key, level))
        return out

    def _changes(self, changed: tuple[set[int], set[int]]) -> Ops | None:
        """The step's changes to the published book; None when there are none."""
        for side in (0, 1):
            self.pending[side].update(changed[side])
        ops = self._diff()
        if not ops[0] and not ops[1]:
            self.pending[0].clear()
            self.pending[1].clear()
            return None
        return ops

    def _apply(self, ops: Ops) -> tuple[list[Level], list[Level]]:
        """Fold a diff into the published book; return it as the delta's levels."""
        self.book.fold(ops)
        model = self.market.book
        out: tuple[list[Level], list[Level]] = ([], [])
        for side, levels in enumerate((model.bids, model.asks)):
            sizes, sign = self.sizes[side], -1 if side == 0 else 1
            for key, level in ops[side]:
                if level is None:
                    del sizes[key]
                    out[side].append([model.fmt.price(sign * key), "0"])
                else:
                    sizes[key] = levels[key]  # the diff was taken from the model this step
                    out[side].append(level)
            self.pending[side].clear()
        return out

    def advance(self, changed: tuple[set[int], set[int]], seq: int, ts: int) -> Pub | None:
        listed = self._listed_at(self.market.steps)
        if listed != self.listed:
            return self._relist(seq, ts) if listed else self._delist(seq, ts)
        if not listed:
            return None  # delisted: the model walks on, nothing is published
        ops = self._changes(changed)
        if ops is None:
            return None  # Bybit pushes nothing when the book did not change
        self.updates += 1
        cfg = self.config
        self._keep_prev()
        fault: AnyFault | None = None
        dropped = False
        bids: list[Level] = []
        asks: list[Level] = []
        if cfg.restart_every and self.updates % cfg.restart_every == 0:
            # A service restart: the new lineage's first delta carries the step.
            self.u, fault = 1, FaultKind.RESTART
            bids, asks = self._apply(ops)
        elif cfg.full_reset_every and self.updates % cfg.full_reset_every == 0:
            # Only the lineage restarts; the step's changes stay pending for u=2.
            self.u, fault, ops = 1, FullBookFault.FULL_RESET, ([], [])
        else:
            self.u += 1
            dropped = self._count_delta()
            fault = FaultKind.DROP if dropped else None
            bids, asks = self._apply(ops)
        return self._emit(seq, ts, bids, asks, fault, ops, dropped)

    def _delist(self, seq: int, ts: int) -> Pub:
        self._keep_prev()
        self.listed = False
        self._clear()
        self.u = 1
        return self._emit(seq, ts, [], [], FullBookFault.DELIST, None)

    def _relist(self, seq: int, ts: int) -> Pub:
        # The book comes back whole but the delta is empty: only REST has it.
        self._keep_prev()
        self.listed = True
        self._load()
        self.u = 1
        return self._emit(seq, ts, [], [], FullBookFault.RELIST, None)

    def _keep_prev(self) -> None:
        if self.config.rest_stale_every:
            self.prev = self.state()

    def _emit(
        self,
        seq: int,
        ts: int,
        bids: list[Level],
        asks: list[Level],
        fault: AnyFault | None,
        ops: Ops | None,
        dropped: bool = False,
    ) -> Pub:
        self.seq, self.ts = seq, ts
        self._record(dropped, ops)
        pub = book_pub(self.name, self.symbol, "delta", TruthState(self.u, seq, ts, bids, asks), ts)
        pub.dropped, pub.fault = dropped, fault
        return pub


BookTopic = SynthTopic | FullTopic  # RpiTopic is a SynthTopic


class ReplayTopic(Topic):
    def __init__(self, name: str, config: SimConfig, messages: list[ReplayMessage]) -> None:
        super().__init__(name, config)
        self.messages = messages
        self.book = DictBook()
        self.applied = 0  # messages folded into `book`
        self.published = 0  # messages advanced through
        self.started = asyncio.Event()
        self.finished = False

    def top(self) -> tuple[list[Level], list[Level]]:
        # Without recording, the dict book is brought up to date only when asked
        # (a late joiner's snapshot, GET /truth): replaying flat out then costs
        # the simulator almost nothing per message.
        for message in self.messages[self.applied : self.published]:
            self.book.apply(message.msg)
        self.applied = self.published
        return self.book.top(self.depth)

    def advance(self, message: ReplayMessage) -> Pub:
        dropped = False
        self.published += 1
        if self.is_book:
            data = message.msg["data"]
            self.u, self.seq, self.ts = data["u"], data.get("seq", 0), message.msg["ts"]
            self.has_state = True
            if message.msg.get("type") == "delta":
                dropped = self._count_delta()
            self._record(dropped)
        fault = FaultKind.DROP if dropped else None
        return Pub(self.name, self.is_book, raw=message.raw, dropped=dropped, fault=fault)


class Market:
    """One symbol's model book and the depth topics that publish views of it.

    Bybit's markets have no venue. Another venue's market of the same symbol is
    its own book: seeded by venue too, its start price `offset_bps` away, so a
    cross-exchange view sees a basis rather than one book twice."""

    def __init__(
        self, symbol: str, config: SimConfig, venue: str = "", offset_bps: int = 0
    ) -> None:
        key = f"{config.seed}:{venue}:{symbol}" if venue else f"{config.seed}:{symbol}"
        rng = random.Random(key)
        spec = spec_for(symbol, config.tick_sizes.get(symbol))
        if offset_bps:
            start = spec.start_price * (1 + Decimal(offset_bps) / 10_000)
            spec = replace(spec, start_price=start)
        self.book = MarketBook(spec, config.book_levels, rng)
        self.seq = rng.randint(10**9, 10**10)
        self.steps = 0  # market steps so far (delist_after counts them)
        self.topics: dict[int, BookTopic] = {}  # by depth; FULL_DEPTH: the whole book
        self.trades: Topic = Topic(f"publicTrade.{symbol}", config)
        self.trade_rng = random.Random(f"{key}:trades")
        self.last_trade_price = 0
        self.started = asyncio.Event()
        self.finished = False

    def book_conns(self) -> set[Conn]:
        return {conn for topic in self.topics.values() for conn in topic.subscribers}

    def draw_trade(self) -> tuple[bool, int, int]:
        """A taker trade at the touch: (taker buys, price in ticks, size in lots)."""
        rng = self.trade_rng
        buy = rng.random() < 0.5
        ticks = self.book.best_ask() if buy else self.book.best_bid()
        return buy, ticks, trade_lots(rng)


def trade_lots(rng: random.Random) -> int:
    """The size of one trade, in lots: mostly small, now and then large."""
    return 1 + int(rng.expovariate(1 / 50))
