"""Hyperliquid's coins in the simulator: each coin's `l2Book` (its published
states, ground truth and stream faults) and its `trades`. The requests and
connections are in sim/hyperliquid.py.

A coin is a configured symbol without its trailing USDT/USDC/USD (BTCUSDT ->
BTC), its own seeded market (a Market of its own, its start price
VENUE_OFFSET_BPS off Bybit's), published as Hyperliquid does: every market step
the whole top LEVELS a side to every subscriber, changed or not, with no
sequence number and no checksum; its `time` (ms) rises strictly from one
published state to the next. Truth: every published state, u = 1, 2, ... and
seq = ts_ms = its `time`, under the key `hyperliquid:{coin}` (coin_key).
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import orjson

from depthwatch.feed.bybit.topics import book_topic
from depthwatch.sim.config import FaultKind, HyperliquidFault, SimConfig, now_ms
from depthwatch.sim.market import Level, TruthState
from depthwatch.sim.topics import Market, Pub, Topic, trade_lots

if TYPE_CHECKING:
    from depthwatch.sim.conn import Conn
    from depthwatch.sim.server import BybitSimulator

VENUE = "hyperliquid"  # Tardis's exchange id
WS_PATH = "/hyperliquid/ws"  # wss://api.hyperliquid.xyz/ws
LEVELS = 20  # levels a side of every l2Book push (Hyperliquid's default, not `fast`)
QUOTES = ("USDT", "USDC", "USD")  # stripped from a symbol to make its coin
VENUE_OFFSET_BPS = 9  # the start price off Bybit's: a cross-exchange view sees a basis
BACKLOG = 10  # trades the first `trades` push after a subscription repeats
MAX_FILLS = 3  # fills of one taker order: 1..MAX_FILLS, one hash and time
TID_BITS = 50  # Hyperliquid's tid: "a 50-bit hash of (buyer_oid, seller_oid)"


def coin_of(symbol: str) -> str:
    """'BTCUSDT' -> 'BTC' (also from ...USDC and ...USD); a coin stays itself."""
    for quote in QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)]
    return symbol


def coin_key(coin: str) -> str:
    """A coin's truth key: 'BTC' (or 'BTCUSDT') -> 'hyperliquid:BTC'."""
    return f"{VENUE}:{coin_of(coin)}"


def is_hyperliquid_key(key: str) -> bool:
    return key.partition(":")[0] == VENUE


@dataclass(slots=True)
class HyperliquidPub(Pub):
    """A Hyperliquid push: {"channel": "l2Book" (a book) or "trades", "data": body}."""

    def render(self, category: str) -> bytes:
        out = self._cache.get(True)
        if out is None:
            channel = "l2Book" if self.is_book else "trades"
            out = self._cache[True] = orjson.dumps({"channel": channel, "data": self.body})
        return out


class HyperliquidBook(Topic):
    """One coin's l2Book: the model's top LEVELS a side, published whole every
    market step (run). Faults: drop_every (a snapshot sent to nobody, kept in
    truth as dropped), hyperliquid_repeat_every (a snapshot sent twice) and
    hyperliquid_freeze_after/_seconds (the last snapshot re-sent, same `time`,
    while the market walks on unpublished). Never delisted, never restarted."""

    def __init__(self, coin: str, config: SimConfig, market: Market) -> None:
        super().__init__(book_topic(LEVELS, market.book.spec.symbol), config)
        self.name, self.coin, self.market = coin_key(coin), coin, market
        self.salt = f"{config.seed}:{coin}:"  # of the levels' order counts
        self.snapshots = 0  # snapshots made by market steps (not the join snapshots)
        self.frozen_until = 0.0  # monotonic; 0 = not frozen
        self.froze = False  # the freeze happens once
        self.resends = 0  # frozen re-sends
        self.has_state = True
        self.current, self.last_pub = self._next_state(now_ms(), False)

    def top(self) -> tuple[list[Level], list[Level]]:
        return self.current.bids, self.current.asks

    def latest(self) -> TruthState:
        return self.current

    def snapshot_pub(self, ts: int | None = None) -> HyperliquidPub:
        """The latest published state's frame (a new subscriber's first push)."""
        return self.last_pub

    def _count(self, price: str, size: str) -> int:
        """A level's order count `n`, seeded by the level: 1 to 3, mostly 1."""
        return 1 + zlib.crc32(f"{self.salt}{price}:{size}".encode()) % 8 // 3

    def _levels(self, levels: list[Level]) -> list[dict]:
        return [{"px": px, "sz": sz, "n": self._count(px, sz)} for px, sz in levels]

    def _next_state(self, now: int, dropped: bool) -> tuple[TruthState, HyperliquidPub]:
        """Publish the model's top as the next state (u + 1, time > the last)."""
        self.u += 1
        self.seq = self.ts = max(now, self.ts + 1)
        bids, asks = self.market.book.top(LEVELS)
        state = TruthState(self.u, self.seq, self.ts, bids, asks)
        if self.config.record:
            self.truth.append(replace(state, dropped=True) if dropped else state)
        levels = [self._levels(bids), self._levels(asks)]
        body = {"coin": self.coin, "time": self.ts, "levels": levels}
        return state, HyperliquidPub(self.name, True, body, ts=self.ts, dropped=dropped)

    def advance(self, now: int) -> HyperliquidPub:
        """The push of one market step (the book has stepped already)."""
        cfg = self.config
        if self.frozen_until:
            if time.monotonic() < self.frozen_until:
                self.resends += 1
                fault = HyperliquidFault.FREEZE if self.resends == 1 else None
                return replace(self.last_pub, fault=fault)  # the same frame, same time
            self.frozen_until = 0.0
        self.snapshots += 1
        dropped = self._count_delta()
        self.current, pub = self._next_state(now, dropped)
        self.last_pub = pub
        repeat = cfg.hyperliquid_repeat_every
        if dropped:
            pub.fault = FaultKind.DROP
        elif repeat and self.snapshots % repeat == 0:
            pub.fault = HyperliquidFault.REPEAT
        after = cfg.hyperliquid_freeze_after
        if after and not dropped and not self.froze and self.snapshots >= after:
            self.froze = True
            self.frozen_until = time.monotonic() + cfg.hyperliquid_freeze_seconds
        return pub

    def fan_out(self, pub: Pub) -> None:
        times = 2 if pub.fault is HyperliquidFault.REPEAT else 1
        for conn in list(self.subscribers):
            for _ in range(times):
                conn.push(pub)

    async def run(self, sim: BybitSimulator) -> None:
        """Step the coin's market until `deltas` steps, publishing every step,
        paced as the simulator paces Bybit's and Binance's markets."""
        market, cfg = self.market, self.config
        await market.started.wait()
        start, step, limit = time.monotonic(), 0, cfg.deltas
        while not limit or step < limit:
            await sim.pace(start, step + 1, set(self.subscribers))
            while cfg.rate == 0 and not self.subscribers:
                await asyncio.sleep(0.01)  # nobody reading: hold the market still
            step += 1
            market.steps = step
            market.book.step()
            sim.publish(self, self.advance(now_ms()))
        market.finished = True


def address(rng: random.Random) -> str:
    return f"0x{rng.getrandbits(160):040x}"


class HyperliquidTrades:
    """One coin's trades: each taker order drawn as the other venues draw
    theirs, pushed as its fills (one hash and time, a tid each). A new
    subscriber's first push is the last BACKLOG trades pushed before it."""

    def __init__(self, coin: str, config: SimConfig, market: Market) -> None:
        self.coin, self.market = coin, market
        self.name = f"{coin_key(coin)}:trades"
        self.subscribers: dict[Conn, None] = {}
        self.recent: deque[dict] = deque(maxlen=BACKLOG)
        self.rng = random.Random(f"{config.seed}:{VENUE}:{coin}:trade-ids")

    def backlog(self) -> HyperliquidPub:
        return HyperliquidPub(self.name, False, list(self.recent))

    def publish(self, ts: int) -> None:
        market, rng = self.market, self.rng
        buy, ticks, lots = market.draw_trade()
        more = market.trade_rng.randint(1, MAX_FILLS) - 1
        fills = [lots] + [trade_lots(market.trade_rng) for _ in range(more)]
        fmt = market.book.fmt
        tx_hash, taker = f"0x{rng.getrandbits(256):064x}", address(rng)
        trades = []
        for lots_filled in fills:
            maker = address(rng)
            trades.append(
                {
                    "coin": self.coin,
                    "side": "B" if buy else "A",
                    "px": fmt.price(ticks),
                    "sz": fmt.size(lots_filled),
                    "time": ts,
                    "hash": tx_hash,
                    "tid": rng.getrandbits(TID_BITS),
                    "users": [taker, maker] if buy else [maker, taker],  # [buyer, seller]
                }
            )
        self.recent.extend(trades)
        pub = HyperliquidPub(self.name, False, trades, ts=ts)
        for conn in list(self.subscribers):
            conn.push(pub)

    async def run(self, rate: float) -> None:
        if rate <= 0:
            return
        await self.market.started.wait()
        while not self.market.finished:
            await asyncio.sleep(1 / rate)
            if self.subscribers:
                self.publish(now_ms())
