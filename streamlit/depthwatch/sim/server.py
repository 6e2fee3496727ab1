"""A local Bybit v5 public WebSocket server fed by synthetic or recorded books,
which also speaks Binance spot and USDⓈ-M futures (sim/binance.py) and
Hyperliquid (sim/hyperliquid.py) on the same port.

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

import asyncio
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Coroutine, Iterable
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from depthwatch.clock import now_us
from depthwatch.feed.bybit.topics import (
    CATEGORIES,
    FULL_BOOK_PATH,
    FULL_CATEGORIES,
    book_topic,
    split_topic,
    valid_depths,
)
from depthwatch.feed.registry import SIMULATOR_HEADER
from depthwatch.records import FULL_DEPTH, RPI_DEPTH
from depthwatch.sim.binance import (
    COMBINED,
    RAW,
    REST_PATHS,
    BinanceVenues,
    is_binance_key,
)
from depthwatch.sim.binance_rest import depth as binance_depth
from depthwatch.sim.config import (
    BYBIT_PATH,
    CONNECTION_FAULTS,
    AnyFault,
    ConnRecord,
    FaultKind,
    FullBookFault,
    InjectedFault,
    SimConfig,
    now_ms,
)
from depthwatch.sim.conn import Conn
from depthwatch.sim.hyperliquid import HyperliquidVenue
from depthwatch.sim.hyperliquid_book import WS_PATH as HYPERLIQUID_PATH
from depthwatch.sim.hyperliquid_book import is_hyperliquid_key
from depthwatch.sim.market import TruthState
from depthwatch.sim.replay import load_replay
from depthwatch.sim.rest import full_orderbook, json_response
from depthwatch.sim.topics import FullTopic, Market, Pub, ReplayTopic, RpiTopic, SynthTopic, Topic

log = logging.getLogger(__name__)


class BybitSimulator:
    """Serves /v5/public/{category} on one port, plus GET /truth?topic=... and
    GET /v5/market/full_orderbook?category=...&symbol=... (the whole book's REST
    snapshot, answered from the same state as `orderbook.full.{symbol}`)."""

    def __init__(
        self, config: SimConfig | None = None, replay_files: Iterable[str | Path] = ()
    ) -> None:
        self.config = config or SimConfig()
        self.markets = {s: Market(s, self.config) for s in self.config.symbols}
        self.replays = {
            name: ReplayTopic(name, self.config, msgs)
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
        self.faults: Counter[AnyFault] = Counter()
        self.fault_log: deque[InjectedFault] = deque(maxlen=100_000)
        self.connection_log: deque[ConnRecord] = deque(maxlen=10_000)
        # REST snapshot requests: per symbol asked for (a client's snapshot count;
        # Binance's as "{venue}:{symbol}"), and in all, Bybit's and Binance's
        # together, the count the rest_*_every faults go by.
        self.rest_requests: Counter[str] = Counter()
        self.rest_total = 0
        self.binance = BinanceVenues(self)
        self.hyperliquid = HyperliquidVenue(self)
        cfg = self.config
        thresholds = (cfg.disconnect_every, cfg.stall_after, cfg.mute_after)
        self._conn_faults = [k for k, n in zip(CONNECTION_FAULTS, thresholds, strict=True) if n]

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        if cfg.prepare_full:
            # Before listening: a whole book of 10,000 levels a side costs
            # ~0.1 s to set up, which a subscription would otherwise wait for.
            for market in self.markets.values():
                self.full_topic(market)
            self.binance.prepare()
            self.hyperliquid.prepare()
        self._server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            process_request=self._process_request,
            process_response=_mark_simulator,
            compression=None,  # Bybit streams are uncompressed; saves CPU on 2 cores
            max_queue=None,
            ping_interval=cfg.ping_interval_s or None,
            ping_timeout=cfg.ping_interval_s or None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        for market in self.markets.values():
            self.spawn(self.run_market(market))
            self.spawn(self._run_trades(market))
        for topic in self.replays.values():
            self.spawn(self._run_replay(topic))
        self.spawn(self._resend_level1())

    def spawn(self, coro: Coroutine[object, object, None]) -> None:
        """Run a producer until stop() (Binance's markets start at first use)."""
        self._tasks.append(asyncio.get_running_loop().create_task(coro))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def url(self, category: str = "linear") -> str:
        return f"ws://{self.config.host}:{self.port}{BYBIT_PATH}{category}"

    def binance_url(self, venue: str, raw: bool = False) -> str:
        """A Binance venue's WebSocket: combined streams ({"stream", "data"} frames)
        unless `raw` (the payloads alone)."""
        return f"ws://{self.config.host}:{self.port}/{venue}/{RAW if raw else COMBINED}"

    def hyperliquid_url(self) -> str:
        return f"ws://{self.config.host}:{self.port}{HYPERLIQUID_PATH}"

    def rest_url(self) -> str:
        """The REST base of every venue: Bybit's /v5/market/..., Binance spot's
        /api/v3/depth and futures' /fapi/v1/depth."""
        return f"http://{self.config.host}:{self.port}"

    # -- ground truth ------------------------------------------------------

    def find_topic(self, name: str) -> Topic | None:
        """The topic a name is, if it was made; a Binance venue's book by its
        truth key ("binance-futures:btcusdt@depth@100ms", any depth spelling),
        a Hyperliquid coin's by its ("hyperliquid:BTC")."""
        if is_binance_key(name):
            return self.binance.find(name)
        if is_hyperliquid_key(name):
            return self.hyperliquid.find(name)
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
        found = self.find_topic(topic)
        return list(found.states()) if found else []

    def latest(self, topic: str) -> TruthState | None:
        """The topic's latest state. Tests call this from their own thread
        while the simulator's thread changes the book: when the truth is
        recorded (the default) the answer is the state that thread recorded
        last, never a book read while it changes (which raised KeyError)."""
        found = self.find_topic(topic)
        if found is None:
            return None
        states = found.states()
        if found.config.record and states:
            last = states[-1]
            return replace(last, dropped=False) if last.dropped else last
        return found.latest()

    def finished(self, topic: str) -> bool:
        if is_binance_key(topic):
            return self.binance.finished(topic)
        if is_hyperliquid_key(topic):
            return self.hyperliquid.finished(topic)
        if topic in self.replays:
            return self.replays[topic].finished
        try:
            market = self.markets.get(split_topic(topic)[2])
        except ValueError:
            return False
        return bool(market and market.finished)

    def injected(
        self, kind: AnyFault, conn: Conn | None = None, topic: str = "", seq: int = 0
    ) -> None:
        """Count and log a fault that reached a client."""
        self.faults[kind] += 1
        conn_id = conn.conn_id if conn is not None else ""
        self.fault_log.append(InjectedFault(kind, now_us(), conn_id, topic, seq))
        if conn is not None and isinstance(kind, FaultKind) and kind in CONNECTION_FAULTS:
            conn.record.ended_by = kind

    # -- producers ---------------------------------------------------------

    def publish(self, topic: Topic, pub: Pub) -> None:
        if pub.fault is not None and topic.subscribers:
            self.injected(pub.fault, None, topic.name, topic.seq)
        if pub.dropped:
            return
        topic.last_sent = time.monotonic()
        topic.fan_out(pub)

    async def pace(self, start: float, step: int, conns: set[Conn]) -> None:
        rate = self.config.rate
        if rate > 0:
            await asyncio.sleep(max(0.0, start + step / rate - time.monotonic()))
            return
        for conn in conns:
            await conn.wait_room()
        if step % 16 == 0:  # yielding every step would cost more than the step itself
            await asyncio.sleep(0)

    async def run_market(self, market: Market) -> None:
        """Step a market until `deltas` steps, publishing its topics' changes
        (a Bybit symbol's depth topics, or one Binance venue's book)."""
        await market.started.wait()
        start, step, limit = time.monotonic(), 0, self.config.deltas
        while not limit or step < limit:
            await self.pace(start, step + 1, market.book_conns())
            while self.config.rate == 0 and not market.book_conns():
                await asyncio.sleep(0.01)  # nobody reading: hold the market still
            step += 1
            market.steps = step
            changed = market.book.step()
            market.seq += market.book.rng.randint(1, 40)
            ts = now_ms()
            for topic in list(market.topics.values()):
                pub = topic.advance(changed, market.seq, ts)
                if pub is not None:
                    self.publish(topic, pub)
        market.finished = True
        log.info("%s: all %d steps produced", market.book.spec.symbol, step)

    async def _run_trades(self, market: Market) -> None:
        rate = self.config.trades_rate
        if rate <= 0:
            return
        await market.started.wait()
        rng, symbol = market.trade_rng, market.book.spec.symbol
        while not market.finished:
            await asyncio.sleep(1 / rate)
            if not market.trades.subscribers:
                continue
            ts, trades = now_ms(), []
            for _ in range(rng.randint(1, 3)):
                buy, ticks, lots = market.draw_trade()
                last = market.last_trade_price
                tick_dir = "PlusTick" if ticks > last else "MinusTick" if ticks < last else "Zero"
                if tick_dir == "Zero":
                    tick_dir = "ZeroPlusTick" if buy else "ZeroMinusTick"
                market.last_trade_price = ticks
                trade = {"T": ts, "s": symbol, "S": "Buy" if buy else "Sell"}
                trade["v"] = market.book.fmt.size(lots)
                trade["p"] = market.book.fmt.price(ticks)
                trade |= {"L": tick_dir, "i": str(uuid.UUID(int=rng.getrandbits(128)))}
                trades.append(trade | {"BT": False, "seq": market.seq})
            self.publish(market.trades, Pub(market.trades.name, False, trades, ts=ts))

    async def _run_replay(self, topic: ReplayTopic) -> None:
        await topic.started.wait()
        start = time.monotonic()
        rate = self.config.rate
        if self.config.stagger and rate > 0:
            names = sorted(self.replays)
            start += names.index(topic.name) / (len(names) * rate)
        for step, message in enumerate(topic.messages, 1):
            await self.pace(start, step, set(topic.subscribers))
            self.publish(topic, topic.advance(message))
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
                    pub = topic.snapshot_pub(now_ms())
                    if pub is not None:
                        self.publish(topic, pub)

    # -- protocol ----------------------------------------------------------

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path in REST_PATHS:
            return await binance_depth(self.binance, REST_PATHS[path], parse_qs(query))
        if self.binance.owns(path):
            return self.binance.check_handshake(path, query)
        if path == HYPERLIQUID_PATH:
            return None
        if path == FULL_BOOK_PATH:
            # Answered as of its arrival, sent after rest_delay_s: deltas pushed
            # meanwhile make the answer older than the client's latest delta.
            response = full_orderbook(self, parse_qs(query))
            delay = self.config.rest_delay_s
            if delay > 0:
                self.injected(FullBookFault.REST_DELAY, None, response.topic, response.seq)
                await asyncio.sleep(delay)
            return response.response
        if path == "/truth":
            name = parse_qs(query).get("topic", [""])[0]
            state = self.latest(name)
            if state is None:
                return json_response(404, {"error": f"unknown topic {name!r}"})
            body = {"u": state.u, "seq": state.seq, "ts": state.ts_ms}
            return json_response(200, body | {"bids": state.bids, "asks": state.asks})
        if _category(path) is None:
            return conn.respond(404, "unknown path\n")
        return None

    def full_topic(self, market: Market) -> FullTopic:
        """The symbol's whole-book topic, made at its first use (a subscription
        or a REST snapshot)."""
        topic = market.topics.get(FULL_DEPTH)
        if topic is None:
            topic = market.topics[FULL_DEPTH] = FullTopic(
                book_topic(FULL_DEPTH, market.book.spec.symbol), self.config, market
            )
        assert isinstance(topic, FullTopic)
        return topic

    def _resolve(self, name: str, category: str) -> Topic | None:
        """The topic to serve for a subscription, created on demand; None = not found."""
        try:
            kind, depth, symbol = split_topic(name)
        except ValueError:
            return None
        if kind == "orderbook" and depth not in valid_depths(category, legacy=True):
            return None
        if depth == FULL_DEPTH and category not in self.config.full_categories:
            return None
        if name in self.replays:
            return self.replays[name]
        market = self.markets.get(symbol)
        if market is None or kind not in ("orderbook", "publicTrade"):
            return None
        if kind == "publicTrade":
            return market.trades
        assert depth is not None
        if depth == FULL_DEPTH:
            return self.full_topic(market)
        if depth not in market.topics:
            kind_of_topic = RpiTopic if depth == RPI_DEPTH else SynthTopic
            market.topics[depth] = kind_of_topic(name, self.config, market)
        return market.topics[depth]

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        faults = self._conn_faults
        fault = faults[self.accepted % len(faults)] if faults else None
        self.accepted += 1
        category = _category(ws.request.path.partition("?")[0]) or "linear"
        conn: Conn = (
            self.binance.connect(ws, fault)
            or self.hyperliquid.connect(ws, fault)
            or Conn(self, ws, category, fault)
        )
        self.conns.add(conn)
        self.connection_log.append(conn.record)
        sender = asyncio.get_running_loop().create_task(conn.run_sender())
        try:
            async for raw in ws:
                conn.receive(raw)
        except ConnectionClosed:
            pass
        finally:
            conn.shutdown()
            conn.record.closed_us = now_us()
            self.conns.discard(conn)
            conn.leave()
            sender.cancel()

    def on_request(self, conn: Conn, raw: str | bytes) -> None:
        """A Bybit client's request (ping, subscribe, unsubscribe)."""
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
                if _refused_full(name, conn.category, self.config):
                    self.injected(FullBookFault.REFUSED, conn, name)
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
            if isinstance(topic, FullTopic):
                topic.on_join()
            if isinstance(topic, ReplayTopic):
                topic.started.set()
            elif topic.symbol in self.markets:
                self.markets[topic.symbol].started.set()


def _mark_simulator(conn: ServerConnection, request: Request, response: Response) -> None:
    """Every handshake says it is the simulator, so a collector pointed here by
    hand still marks its data SIMULATED."""
    response.headers[SIMULATOR_HEADER] = "1"


def _category(path: str) -> str | None:
    prefix = BYBIT_PATH
    category = path[len(prefix) :] if path.startswith(prefix) else ""
    return category if category in CATEGORIES else None


def _refused_full(name: str, category: str, config: SimConfig) -> bool:
    """A whole-book subscription Bybit would serve, refused by full_categories."""
    try:
        depth = split_topic(name)[1]
    except ValueError:
        return False
    in_bybit = category in FULL_CATEGORIES
    return depth == FULL_DEPTH and in_bybit and category not in config.full_categories


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
        return orjson.dumps(msg | {"args": [str(now_ms())], "op": "pong"})
    msg = {"success": True, "ret_msg": "pong", "conn_id": conn.conn_id}
    return orjson.dumps(msg | {"req_id": req_id, "op": "ping"})
