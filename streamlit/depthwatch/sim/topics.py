"""The simulator's topics: each a shared sequence of states (synthetic from a
Market, or replayed from a recording) that the server fans out to its
subscribers as Pubs."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from depthwatch.feed.topics import split_topic
from depthwatch.sim.config import FaultKind, SimConfig, now_ms
from depthwatch.sim.market import DepthView, Level, MarketBook, TruthState, spec_for
from depthwatch.sim.replay import DictBook, ReplayMessage

if TYPE_CHECKING:
    from depthwatch.sim.server import Conn


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
    fault: FaultKind | None = None  # DROP or RESTART, logged when it reaches a client
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

    def latest(self) -> TruthState | None:
        if not self.has_state:
            return None
        return TruthState(self.u, self.seq, self.ts, *self.top())

    def snapshot_pub(self, ts: int | None = None) -> Pub | None:
        """A snapshot of the current state with the current u and seq (late joiners)."""
        state = self.latest() if self.is_book else None
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
        self.view = DepthView(market.book, self.depth)
        self.updates = 0  # counts changed states for restart_every
        # A seeded, realistic-looking starting u rather than 1, which means "restart".
        self.u = random.Random(f"{config.seed}:{name}").randint(10**6, 10**8)
        self.seq, self.ts, self.has_state = market.seq, now_ms(), True
        self._record(False)

    def top(self) -> tuple[list[Level], list[Level]]:
        # Truth comes from the model itself, not from the diffed view.
        return self.market.book.top(self.depth)

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
        state = TruthState(self.u, seq, ts, bids, asks)
        pub = book_pub(self.name, self.symbol, kind, state, ts)
        pub.dropped = dropped
        if dropped:
            pub.fault = FaultKind.DROP
        elif self.u == 1:
            pub.fault = FaultKind.RESTART
        return pub


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
    """One symbol's model book and the depth topics that publish views of it."""

    def __init__(self, symbol: str, config: SimConfig) -> None:
        rng = random.Random(f"{config.seed}:{symbol}")
        spec = spec_for(symbol, config.tick_sizes.get(symbol))
        self.book = MarketBook(spec, config.book_levels, rng)
        self.seq = rng.randint(10**9, 10**10)
        self.topics: dict[int, SynthTopic] = {}
        self.trades: Topic = Topic(f"publicTrade.{symbol}", config)
        self.trade_rng = random.Random(f"{config.seed}:{symbol}:trades")
        self.last_trade_price = 0
        self.started = asyncio.Event()
        self.finished = False

    def book_conns(self) -> set[Conn]:
        return {conn for topic in self.topics.values() for conn in topic.subscribers}
