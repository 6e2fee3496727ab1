"""A local Bybit v5 public WebSocket server fed by synthetic or recorded books.

Design of the fan-out: every topic is one shared sequence of states (state `u`
is the same book for every subscriber). Each connection owns an outbox (a
deque with a soft limit) drained by its own sender task; the market appends
each message to the outbox of every subscriber. With `rate > 0` steps are
paced by the clock and a connection whose outbox grows past 16x the limit is
closed as a slow consumer, so one slow client cannot slow the market. With
`rate == 0` the market waits, before each step, until every subscriber of the
symbol has room, then yields to the event loop: a fast client runs up to
`queue_size` messages ahead of the slowest one before the shared sequence (and
so everyone) waits for it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from urllib.parse import parse_qs

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from depthwatch.clock import now_us
from depthwatch.feed.topics import CATEGORIES, SIMULATOR_HEADER, split_topic, valid_depths
from depthwatch.sim.market import DepthView, Level, MarketBook, TruthState, spec_for
from depthwatch.sim.replay import DictBook, ReplayMessage, load_replay

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimConfig:
    """Simulator settings. Faults (0 = off), so a collector's recovery paths can be tested:

    - drop_every N: every Nth delta of a topic is withheld from clients (u still advances,
      the state is in truth() with dropped=True), so clients see a u gap. Depth-1 change
      snapshots count as deltas.
    - restart_every N: every Nth changed state of a synthetic topic is sent as a u=1
      snapshot (seq keeps increasing). Not applied to replay topics.
    - disconnect_every N: a connection is closed (1001) once it was sent N book messages.
    - malformed_every N: after every Nth data message of a connection an extra malformed
      frame follows (alternately truncated JSON and non-JSON text).
    - stall_after N / stall_seconds S: after its Nth data message a connection sends
      nothing, pongs included, for S seconds (once); queued messages follow afterwards.
    - mute_after N: after its Nth data message a connection sends no more data (book or
      trades; they are discarded, not queued) but still answers pings and requests: a
      socket that looks alive and is useless.
    - ignore_unsubscribe_every N: every Nth unsubscribe request (counted over the whole
      server) is swallowed: no ack, the subscription stays and its data keeps coming.

    All faults combine. The three that end a connection (disconnect, stall, mute) would
    otherwise always let the one with the smallest threshold win, so when several are
    set each new connection is given one of them in turn (disconnect, stall, mute).
    Every fault that reaches a client is counted in `faults` and logged in `fault_log`.
    """

    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    host: str = "127.0.0.1"
    port: int = 0
    rate: float = 50.0  # market steps per second per symbol; 0 = as fast as clients read
    # Replayed topics start spread over one step (topic k of N, k/(N x rate) s
    # late), as an exchange's streams do, rather than all on the same tick:
    # a client then gets a frame every 1/(N x rate) s (for CPU at a pace).
    stagger: bool = False
    deltas: int = 0  # market steps per symbol before it stops; 0 = never stop
    seed: int = 0
    book_levels: int = 200  # levels per side of each symbol's model book
    tick_sizes: Mapping[str, str] = field(default_factory=dict)  # symbol -> "0.10"
    trades_rate: float = 2.0  # publicTrade messages per second per symbol; 0 = none
    drop_every: int = 0
    restart_every: int = 0
    disconnect_every: int = 0
    malformed_every: int = 0
    stall_after: int = 0
    stall_seconds: float = 0.0
    mute_after: int = 0
    ignore_unsubscribe_every: int = 0
    record: bool = True  # keep every published state for truth(); off for benchmarks
    queue_size: int = 1024
    level1_resend_s: float = 3.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class FaultKind(StrEnum):
    DROP = "drop"  # a delta withheld: the client sees a u gap
    RESTART = "restart"  # a u=1 snapshot
    DISCONNECT = "disconnect"  # the server closed the connection
    MALFORMED = "malformed"  # a frame that is not a valid message
    STALL = "stall"  # nothing at all for stall_seconds, pongs included
    MUTE = "mute"  # pongs and acks only, no data, until the client leaves
    IGNORED_UNSUBSCRIBE = "ignored_unsubscribe"  # no ack, data keeps coming


# Faults that end (or make useless) the connection they hit; see SimConfig.
CONNECTION_FAULTS = (FaultKind.DISCONNECT, FaultKind.STALL, FaultKind.MUTE)


@dataclass(frozen=True, slots=True)
class InjectedFault:
    """One fault as it reached a client, for tests to hold the client to account."""

    kind: FaultKind
    at_us: int  # wall clock, comparable with a collector's receive times
    conn_id: str = ""  # empty for topic faults (drop, restart): every subscriber had it
    topic: str = ""
    seq: int = 0  # drop, restart: the state's seq (u repeats after restarts, seq never)


@dataclass(slots=True)
class ConnRecord:
    """One client connection's life, kept after it closed (in accept order)."""

    conn_id: str
    fault: FaultKind | None  # the connection fault it was given, if any
    opened_us: int
    book_sent: int = 0  # book messages written to the socket (muted ones are not)
    closed_us: int = 0
    ended_by: FaultKind | None = None  # the fault that ended it; None = the client left


@dataclass(slots=True)
class _Pub:
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


def _book_pub(topic: str, symbol: str, kind: str, state: TruthState, ts: int) -> _Pub:
    data = {"s": symbol, "b": state.bids, "a": state.asks, "u": state.u, "seq": state.seq}
    return _Pub(topic, True, data, kind, ts, state.ts_ms - 1)


class _Topic:
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

    def snapshot_pub(self, ts: int | None = None) -> _Pub | None:
        """A snapshot of the current state with the current u and seq (late joiners)."""
        state = self.latest() if self.is_book else None
        if state is None:
            return None
        return _book_pub(self.name, self.symbol, "snapshot", state, ts or state.ts_ms)

    def _count_delta(self) -> bool:
        self.deltas += 1
        every = self.config.drop_every
        return bool(every) and self.deltas % every == 0

    def _record(self, dropped: bool) -> None:
        if self.config.record:
            self.truth.append(TruthState(self.u, self.seq, self.ts, *self.top(), dropped))


class _SynthTopic(_Topic):
    def __init__(self, name: str, config: SimConfig, market: _Market) -> None:
        super().__init__(name, config)
        self.market = market
        self.view = DepthView(market.book, self.depth)
        self.updates = 0  # counts changed states for restart_every
        # A seeded, realistic-looking starting u rather than 1, which means "restart".
        self.u = random.Random(f"{config.seed}:{name}").randint(10**6, 10**8)
        self.seq, self.ts, self.has_state = market.seq, _now_ms(), True
        self._record(False)

    def top(self) -> tuple[list[Level], list[Level]]:
        # Truth comes from the model itself, not from the diffed view.
        return self.market.book.top(self.depth)

    def advance(self, changed: tuple[set[int], set[int]], seq: int, ts: int) -> _Pub | None:
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
        pub = _book_pub(self.name, self.symbol, kind, state, ts)
        pub.dropped = dropped
        if dropped:
            pub.fault = FaultKind.DROP
        elif self.u == 1:
            pub.fault = FaultKind.RESTART
        return pub


class _ReplayTopic(_Topic):
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

    def advance(self, message: ReplayMessage) -> _Pub:
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
        return _Pub(self.name, self.is_book, raw=message.raw, dropped=dropped, fault=fault)


class _Market:
    """One symbol's model book and the depth topics that publish views of it."""

    def __init__(self, symbol: str, config: SimConfig) -> None:
        rng = random.Random(f"{config.seed}:{symbol}")
        spec = spec_for(symbol, config.tick_sizes.get(symbol))
        self.book = MarketBook(spec, config.book_levels, rng)
        self.seq = rng.randint(10**9, 10**10)
        self.topics: dict[int, _SynthTopic] = {}
        self.trades: _Topic = _Topic(f"publicTrade.{symbol}", config)
        self.trade_rng = random.Random(f"{config.seed}:{symbol}:trades")
        self.last_trade_price = 0
        self.started = asyncio.Event()
        self.finished = False

    def book_conns(self) -> set[Conn]:
        return {conn for topic in self.topics.values() for conn in topic.subscribers}


class Conn:
    """One client connection: an outbox drained by a sender task, plus fault counters."""

    def __init__(
        self,
        sim: BybitSimulator,
        ws: ServerConnection,
        category: str,
        fault: FaultKind | None = None,
    ) -> None:
        self.sim = sim
        self.ws = ws
        self.category = category
        self.conn_id = uuid.uuid4().hex[:20]
        self.fault = fault  # the connection fault this connection will suffer
        self.muted = False
        self.record = ConnRecord(self.conn_id, fault, now_us())
        self.topics: set[str] = set()
        self.out: deque[_Pub | bytes] = deque()
        self.has_data = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.closed = False
        self.book_sent = 0
        self.data_sent = 0

    def push(self, item: _Pub | bytes) -> None:
        if self.closed:
            return
        self.out.append(item)
        self.has_data.set()
        limit = self.sim.config.queue_size
        if len(self.out) >= limit:
            self.room.clear()
            if self.sim.config.rate > 0 and len(self.out) > 16 * limit:
                log.warning("closing slow consumer %s", self.conn_id)
                self.close_soon(1008, "slow consumer")

    async def wait_room(self) -> None:
        while not self.closed and len(self.out) >= self.sim.config.queue_size:
            self.room.clear()
            await self.room.wait()

    def close_soon(self, code: int, reason: str) -> None:
        self.shutdown()
        asyncio.get_running_loop().create_task(self.ws.close(code, reason))

    def shutdown(self) -> None:
        self.closed = True
        self.out.clear()
        self.room.set()  # wake a market waiting for room
        self.has_data.set()

    async def run_sender(self) -> None:
        cfg = self.sim.config
        try:
            while True:
                while not self.out and not self.closed:
                    self.has_data.clear()
                    await self.has_data.wait()
                if self.closed:
                    return
                item = self.out.popleft()
                if len(self.out) < cfg.queue_size:
                    self.room.set()
                if isinstance(item, bytes):
                    await self.ws.send(item, text=True)
                    continue
                if self.muted:
                    continue  # control frames (bytes) still go; data is discarded
                await self.ws.send(item.render(self.category), text=True)
                self.data_sent += 1
                self.book_sent += item.is_book
                self.record.book_sent = self.book_sent
                if cfg.malformed_every and self.data_sent % cfg.malformed_every == 0:
                    n = self.data_sent // cfg.malformed_every
                    await self.ws.send(_malformed(item.topic, n), text=True)
                    self.sim.injected(FaultKind.MALFORMED, self, item.topic)
                fault = self.fault
                if fault is FaultKind.DISCONNECT and self.book_sent == cfg.disconnect_every:
                    self.sim.injected(fault, self)
                    self.shutdown()
                    await self.ws.close(1001, "simulated disconnect")
                    return
                if fault is FaultKind.STALL and self.data_sent == cfg.stall_after:
                    self.sim.injected(fault, self)
                    # Silence everything, pongs included: they wait in the outbox.
                    await asyncio.sleep(cfg.stall_seconds)
                elif fault is FaultKind.MUTE and self.data_sent == cfg.mute_after:
                    self.sim.injected(fault, self)
                    self.muted = True
        except ConnectionClosed:
            self.shutdown()


def _malformed(topic: str, n: int) -> bytes:
    # Alternate a truncated frame with plain garbage: both must be survivable.
    if n % 2 == 0:
        return b"}{ not json at all"
    return orjson.dumps({"topic": topic, "type": "delta"})[:-1] + b',"data":'


class BybitSimulator:
    """Serves /v5/public/{category} on one port, plus GET /truth?topic=..."""

    def __init__(
        self, config: SimConfig | None = None, replay_files: Iterable[str | Path] = ()
    ) -> None:
        self.config = config or SimConfig()
        self.markets = {s: _Market(s, self.config) for s in self.config.symbols}
        self.replays = {
            name: _ReplayTopic(name, self.config, msgs)
            for name, msgs in load_replay(replay_files).items()
        }
        self.conns: set[Conn] = set()
        self._server: Server | None = None
        self._tasks: list[asyncio.Task] = []
        self.port = 0
        self.pings_received = 0  # application-level pings, for tests of clients
        self.unsubscribes = 0  # unsubscribe requests, for ignore_unsubscribe_every
        self.accepted = 0  # connections, for taking turns at the connection faults
        # Every fault that reached a client, and every connection's life: the
        # account a client under test is checked against. Bounded, for long runs.
        self.faults: Counter[FaultKind] = Counter()
        self.fault_log: deque[InjectedFault] = deque(maxlen=100_000)
        self.connection_log: deque[ConnRecord] = deque(maxlen=10_000)
        cfg = self.config
        thresholds = (cfg.disconnect_every, cfg.stall_after, cfg.mute_after)
        self._conn_faults = [k for k, n in zip(CONNECTION_FAULTS, thresholds, strict=True) if n]

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self._server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            process_request=self._process_request,
            process_response=_mark_simulator,
            compression=None,  # Bybit streams are uncompressed; saves CPU on 2 cores
            max_queue=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        spawn = asyncio.get_running_loop().create_task
        self._tasks = [spawn(self._run_market(m)) for m in self.markets.values()]
        self._tasks += [spawn(self._run_trades(m)) for m in self.markets.values()]
        self._tasks += [spawn(self._run_replay(t)) for t in self.replays.values()]
        self._tasks.append(spawn(self._resend_level1()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def url(self, category: str = "linear") -> str:
        return f"ws://{self.config.host}:{self.port}/v5/public/{category}"

    # -- ground truth ------------------------------------------------------

    def _topic(self, name: str) -> _Topic | None:
        if name in self.replays:
            return self.replays[name]
        try:
            kind, depth, symbol = split_topic(name)
        except ValueError:
            return None
        market = self.markets.get(symbol)
        if market is None:
            return None
        return market.topics.get(depth or 0) if kind == "orderbook" else market.trades

    def truth(self, topic: str) -> list[TruthState]:
        """Every state the topic published (dropped ones flagged), in order."""
        found = self._topic(topic)
        return list(found.truth) if found else []

    def latest(self, topic: str) -> TruthState | None:
        """The topic's latest state. Tests call this from their own thread
        while the simulator's thread changes the book: when the truth is
        recorded (the default) the answer is the state that thread recorded
        last, never a book read while it changes (which raised KeyError)."""
        found = self._topic(topic)
        if found is None:
            return None
        if found.config.record and found.truth:
            last = found.truth[-1]
            return replace(last, dropped=False) if last.dropped else last
        return found.latest()

    def finished(self, topic: str) -> bool:
        if topic in self.replays:
            return self.replays[topic].finished
        try:
            market = self.markets.get(split_topic(topic)[2])
        except ValueError:
            return False
        return bool(market and market.finished)

    def injected(
        self, kind: FaultKind, conn: Conn | None = None, topic: str = "", seq: int = 0
    ) -> None:
        """Count and log a fault that reached a client."""
        self.faults[kind] += 1
        conn_id = conn.conn_id if conn is not None else ""
        self.fault_log.append(InjectedFault(kind, now_us(), conn_id, topic, seq))
        if conn is not None and kind in CONNECTION_FAULTS:
            conn.record.ended_by = kind

    # -- producers ---------------------------------------------------------

    def _publish(self, topic: _Topic, pub: _Pub) -> None:
        if pub.fault is not None and topic.subscribers:
            self.injected(pub.fault, None, topic.name, topic.seq)
        if pub.dropped:
            return
        topic.last_sent = time.monotonic()
        for conn in list(topic.subscribers):
            conn.push(pub)

    async def _pace(self, start: float, step: int, conns: set[Conn]) -> None:
        rate = self.config.rate
        if rate > 0:
            await asyncio.sleep(max(0.0, start + step / rate - time.monotonic()))
            return
        for conn in conns:
            await conn.wait_room()
        if step % 16 == 0:  # yielding every step would cost more than the step itself
            await asyncio.sleep(0)

    async def _run_market(self, market: _Market) -> None:
        await market.started.wait()
        start, step, limit = time.monotonic(), 0, self.config.deltas
        while not limit or step < limit:
            await self._pace(start, step + 1, market.book_conns())
            while self.config.rate == 0 and not market.book_conns():
                await asyncio.sleep(0.01)  # nobody reading: hold the market still
            step += 1
            changed = market.book.step()
            market.seq += market.book.rng.randint(1, 40)
            ts = _now_ms()
            for topic in list(market.topics.values()):
                pub = topic.advance(changed, market.seq, ts)
                if pub is not None:
                    self._publish(topic, pub)
        market.finished = True
        log.info("%s: all %d steps produced", market.book.spec.symbol, step)

    async def _run_trades(self, market: _Market) -> None:
        rate = self.config.trades_rate
        if rate <= 0:
            return
        await market.started.wait()
        rng, symbol = market.trade_rng, market.book.spec.symbol
        while not market.finished:
            await asyncio.sleep(1 / rate)
            if not market.trades.subscribers:
                continue
            ts, trades = _now_ms(), []
            for _ in range(rng.randint(1, 3)):
                buy = rng.random() < 0.5
                ticks = market.book.best_ask() if buy else market.book.best_bid()
                last = market.last_trade_price
                tick_dir = "PlusTick" if ticks > last else "MinusTick" if ticks < last else "Zero"
                if tick_dir == "Zero":
                    tick_dir = "ZeroPlusTick" if buy else "ZeroMinusTick"
                market.last_trade_price = ticks
                trade = {"T": ts, "s": symbol, "S": "Buy" if buy else "Sell"}
                trade["v"] = market.book.fmt.size(1 + int(rng.expovariate(1 / 50)))
                trade["p"] = market.book.fmt.price(ticks)
                trade |= {"L": tick_dir, "i": str(uuid.UUID(int=rng.getrandbits(128)))}
                trades.append(trade | {"BT": False, "seq": market.seq})
            self._publish(market.trades, _Pub(market.trades.name, False, trades, ts=ts))

    async def _run_replay(self, topic: _ReplayTopic) -> None:
        await topic.started.wait()
        start = time.monotonic()
        rate = self.config.rate
        if self.config.stagger and rate > 0:
            names = sorted(self.replays)
            start += names.index(topic.name) / (len(names) * rate)
        for step, message in enumerate(topic.messages, 1):
            await self._pace(start, step, set(topic.subscribers))
            self._publish(topic, topic.advance(message))
        topic.finished = True

    async def _resend_level1(self) -> None:
        # Bybit re-sends a depth-1 snapshot with the same u after quiet periods.
        every = self.config.level1_resend_s
        while True:
            await asyncio.sleep(min(0.5, every / 4))
            now = time.monotonic()
            topics = [t for m in self.markets.values() for t in m.topics.values()]
            for topic in topics + list(self.replays.values()):
                if topic.depth == 1 and topic.subscribers and now - topic.last_sent >= every:
                    pub = topic.snapshot_pub(_now_ms())
                    if pub is not None:
                        self._publish(topic, pub)

    # -- protocol ----------------------------------------------------------

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path == "/truth":
            name = parse_qs(query).get("topic", [""])[0]
            state = self.latest(name)
            if state is None:
                return _json_response(404, {"error": f"unknown topic {name!r}"})
            body = {"u": state.u, "seq": state.seq, "ts": state.ts_ms}
            return _json_response(200, body | {"bids": state.bids, "asks": state.asks})
        if _category(path) is None:
            return conn.respond(404, "unknown path\n")
        return None

    def _resolve(self, name: str, category: str) -> _Topic | None:
        """The topic to serve for a subscription, created on demand; None = not found."""
        try:
            kind, depth, symbol = split_topic(name)
        except ValueError:
            return None
        if kind == "orderbook" and depth not in valid_depths(category, legacy=True):
            return None
        if name in self.replays:
            return self.replays[name]
        market = self.markets.get(symbol)
        if market is None or kind not in ("orderbook", "publicTrade"):
            return None
        if kind == "publicTrade":
            return market.trades
        assert depth is not None
        if depth not in market.topics:
            market.topics[depth] = _SynthTopic(name, self.config, market)
        return market.topics[depth]

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        faults = self._conn_faults
        fault = faults[self.accepted % len(faults)] if faults else None
        self.accepted += 1
        conn = Conn(self, ws, _category(ws.request.path.partition("?")[0]) or "linear", fault)
        self.conns.add(conn)
        self.connection_log.append(conn.record)
        sender = asyncio.get_running_loop().create_task(conn.run_sender())
        try:
            async for raw in ws:
                self._on_message(conn, raw)
        except ConnectionClosed:
            pass
        finally:
            conn.shutdown()
            conn.record.closed_us = now_us()
            self.conns.discard(conn)
            for name in conn.topics:
                topic = self._topic(name)
                if topic is not None:
                    topic.subscribers.pop(conn, None)
            sender.cancel()

    def _on_message(self, conn: Conn, raw: str | bytes) -> None:
        try:
            req = orjson.loads(raw)
            op, req_id = req.get("op"), req.get("req_id", "")
        except (orjson.JSONDecodeError, AttributeError):
            conn.push(_ack(conn, "", "", False, "error:request not json"))
            return
        if op == "ping":
            self.pings_received += 1
            conn.push(_pong(conn, req_id))
        elif op in ("subscribe", "unsubscribe") and isinstance(req.get("args"), list):
            self._on_subscription(conn, op, req_id, [str(a) for a in req["args"]])
        else:
            conn.push(_ack(conn, req_id, str(op), False, f"error:unsupported op:{op}"))

    def _on_subscription(self, conn: Conn, op: str, req_id: str, args: list[str]) -> None:
        if op == "unsubscribe":
            self.unsubscribes += 1
            every = self.config.ignore_unsubscribe_every
            if every and self.unsubscribes % every == 0:
                # No ack and nothing unsubscribed: the data keeps coming.
                self.injected(FaultKind.IGNORED_UNSUBSCRIBE, conn, ",".join(args))
                return
        # A request mixing good and bad topics gets ONE failure ack naming every bad
        # topic ("error:<why>,topic:<t>" joined by ";") and the good ones are served.
        good, bad, errors = [], [], []
        for name in args:
            topic = self._resolve(name, conn.category)
            if topic is None:
                bad.append(name)
                errors.append(f"error:handler not found,topic:{name}")
            elif op == "subscribe" and name in conn.topics:
                bad.append(name)
                errors.append(f"error:already subscribed,topic:{name}")
            else:
                good.append((name, topic))
        conn.push(_ack(conn, req_id, op, not errors, ";".join(errors), [n for n, _ in good], bad))
        for name, topic in good:
            if op == "unsubscribe":
                conn.topics.discard(name)
                topic.subscribers.pop(conn, None)
                continue
            # No await between the join snapshot and joining: no delta can slip between.
            snapshot = topic.snapshot_pub()
            if snapshot is not None:
                conn.push(snapshot)
            topic.subscribers[conn] = None
            conn.topics.add(name)
            if isinstance(topic, _ReplayTopic):
                topic.started.set()
            elif topic.symbol in self.markets:
                self.markets[topic.symbol].started.set()


def _mark_simulator(conn: ServerConnection, request: Request, response: Response) -> None:
    """Every handshake says it is the simulator, so a collector pointed here by
    hand still marks its data SIMULATED."""
    response.headers[SIMULATOR_HEADER] = "1"


def _category(path: str) -> str | None:
    prefix = "/v5/public/"
    category = path[len(prefix) :] if path.startswith(prefix) else ""
    return category if category in CATEGORIES else None


def _json_response(status: int, body: dict) -> Response:
    data = orjson.dumps(body)
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return Response(status, "OK" if status == 200 else "Not Found", headers, data)


def _ack(
    conn: Conn,
    req_id: str,
    op: str,
    success: bool,
    ret_msg: str,
    ok_topics: list[str] | None = None,
    bad_topics: list[str] | None = None,
) -> bytes:
    if conn.category == "option":
        msg: dict = {"success": success, "conn_id": conn.conn_id}
        if req_id:
            msg["req_id"] = req_id
        data = {"failTopics": bad_topics or [], "successTopics": ok_topics or []}
        return orjson.dumps(msg | {"data": data, "type": "COMMAND_RESP"})
    if success and conn.category == "spot":
        ret_msg = op  # spot acks say "subscribe" where linear says ""
    msg = {"success": success, "ret_msg": ret_msg, "conn_id": conn.conn_id}
    return orjson.dumps(msg | {"req_id": req_id, "op": op})


def _pong(conn: Conn, req_id: str) -> bytes:
    if conn.category == "option":
        msg: dict = {"req_id": req_id} if req_id else {}
        return orjson.dumps(msg | {"args": [str(_now_ms())], "op": "pong"})
    msg = {"success": True, "ret_msg": "pong", "conn_id": conn.conn_id}
    return orjson.dumps(msg | {"req_id": req_id, "op": "ping"})


class SimulatorThread:
    """Runs a BybitSimulator on its own event loop in a daemon thread."""

    def __init__(
        self, config: SimConfig | None = None, replay_files: Iterable[str | Path] = ()
    ) -> None:
        self.sim = BybitSimulator(config, replay_files)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="bybit-sim", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.sim.start()
        except BaseException as exc:  # surfaced to start() in the caller's thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self.sim.stop()

    def start(self) -> SimulatorThread:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def url(self, category: str = "linear") -> str:
        return self.sim.url(category)

    def truth(self, topic: str) -> list[TruthState]:
        return self.sim.truth(topic)

    def latest(self, topic: str) -> TruthState | None:
        """The topic's current state, read on the simulator's own thread: its
        market changes the books while a reader on another thread walks them."""
        if not self._thread.is_alive():
            return self.sim.latest(topic)

        async def read() -> TruthState | None:
            return self.sim.latest(topic)

        return asyncio.run_coroutine_threadsafe(read(), self._loop).result(10)

    def finished(self, topic: str) -> bool:
        return self.sim.finished(topic)


# -- CLI hook ------------------------------------------------------------------


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    add("--port", type=int, default=8765, help="TCP port; 0 picks a free one (default 8765)")
    add("--symbols", default="BTCUSDT,ETHUSDT", help="comma-separated synthetic symbols")
    add("--rate", type=float, default=50.0, help="book steps/s per symbol; 0 = as fast as read")
    add("--deltas", type=int, default=0, help="steps per symbol before stopping; 0 = forever")
    add("--seed", type=int, default=0, help="random seed of the synthetic market")
    add("--book-levels", type=int, default=200, help="levels per side of the model book")
    add("--replay", action="append", default=[], metavar="PATH", help="replay a .data/.zip/.jsonl")
    add("--drop-every", type=int, default=0, help="withhold every Nth delta of a topic (gap)")
    add("--restart-every", type=int, default=0, help="every Nth update: u=1 snapshot (restart)")
    add("--disconnect-every", type=int, default=0, help="close a connection after N book msgs")
    add("--malformed-every", type=int, default=0, help="add a malformed frame every N messages")
    add("--stall-after", type=int, default=0, help="go silent after N messages on a connection")
    add("--stall-seconds", type=float, default=30.0, help="how long a stall lasts (seconds)")
    add(
        "--mute-after",
        type=int,
        default=0,
        help="after N messages on a connection send no data, but keep answering pings",
    )
    add(
        "--ignore-unsubscribe-every",
        type=int,
        default=0,
        help="swallow every Nth unsubscribe request: no ack, the data keeps coming",
    )
    add("--trades-rate", type=float, default=2.0, help="publicTrade messages/s per symbol")
    add(
        "--stagger",
        action="store_true",
        help="replays: spread the topics' start over one step, so frames arrive evenly",
    )


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        symbols=tuple(s.strip() for s in args.symbols.split(",") if s.strip()),
        host=args.host,
        port=args.port,
        rate=args.rate,
        stagger=args.stagger,
        deltas=args.deltas,
        seed=args.seed,
        book_levels=args.book_levels,
        trades_rate=args.trades_rate,
        drop_every=args.drop_every,
        restart_every=args.restart_every,
        disconnect_every=args.disconnect_every,
        malformed_every=args.malformed_every,
        stall_after=args.stall_after,
        stall_seconds=args.stall_seconds,
        mute_after=args.mute_after,
        ignore_unsubscribe_every=args.ignore_unsubscribe_every,
        record=False,  # a long-running server would otherwise grow without bound
    )


def run_sim(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code."""

    async def main() -> None:
        sim = BybitSimulator(config_from_args(args), args.replay)
        await sim.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        for category in CATEGORIES:
            log.info("simulator listening on %s", sim.url(category))
        await stop.wait()
        await sim.stop()

    asyncio.run(main())
    return 0
