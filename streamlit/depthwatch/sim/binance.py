"""Binance spot (`binance`) and USDⓈ-M futures (`binance-futures`) on the
simulator's port, next to Bybit: their depth and trade streams, requests and
ground truth. The REST snapshot is in sim/binance_rest.py.

Each (venue, symbol) is its own seeded market (BinanceBook over a Market of
its own, its start price a few bps off Bybit's), published as Binance does:
no snapshot on the WebSocket, every change of the whole book as a diff event
spanning update ids U..u. Spot chains by U == previous u + 1, futures by
pu == previous u (its ids may skip). The book is FullTopic's: its diffing, its
truth (FullTruth, key `{venue}:{symbol}@depth@100ms`) and its stale states.

Paths: /{venue}/stream (combined: {"stream": name, "data": payload}, streams
from ?streams=a/b too) and /{venue}/ws (raw: the payload alone; /{venue}/ws/a/b
subscribes a and b); /{venue}/public/stream and /{venue}/public/ws alike.
Requests SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

from depthwatch.feed.bybit.topics import book_topic
from depthwatch.records import FULL_DEPTH
from depthwatch.sim.config import BinanceFault, FaultKind, SimConfig, now_ms
from depthwatch.sim.conn import Conn
from depthwatch.sim.hyperliquid_book import VENUE as HYPERLIQUID
from depthwatch.sim.hyperliquid_book import coin_key
from depthwatch.sim.market import Level
from depthwatch.sim.rest import text_response
from depthwatch.sim.topics import FullTopic, Market, Pub, trade_lots

if TYPE_CHECKING:
    from depthwatch.sim.server import BybitSimulator

SPOT = "binance"  # Tardis's exchange ids
FUTURES = "binance-futures"
VENUES = (SPOT, FUTURES)
COMBINED = "stream"  # /{venue}/stream: every frame {"stream": name, "data": payload}
RAW = "ws"  # /{venue}/ws: the payload alone
# Optional, as fstream's /public/stream (futures' depth and trades since 2026).
PUBLIC = "public/"
SPOT_DEPTH_PATH = "/api/v3/depth"
FUTURES_DEPTH_PATH = "/fapi/v1/depth"
REST_PATHS = {SPOT_DEPTH_PATH: SPOT, FUTURES_DEPTH_PATH: FUTURES}
BOOK_STREAM = "depth@100ms"  # the spelling of truth keys
# Every spelling of a venue's book stream: one book, one truth (the paces of
# @depth, 1000 ms spot and 250 ms futures, and of @depth@0ms are not kept).
DEPTH_EVENTS = {SPOT: ("depth", BOOK_STREAM), FUTURES: ("depth", BOOK_STREAM, "depth@0ms")}
TRADE_EVENTS = {SPOT: ("trade", "aggTrade"), FUTURES: ("aggTrade", "trade")}
# Each venue's start price, off Bybit's: a cross-exchange view sees a basis.
VENUE_OFFSET_BPS = {SPOT: 3, FUTURES: 6}
FIRST_ID_RANGE = (10**9, 10**10)  # a book's first update id, seeded
MAX_SPAN = 4  # update ids one event covers: 1..MAX_SPAN
MAX_SKIP = 3  # futures: ids skipped between two events: 0..MAX_SKIP
MAX_FILLS = 3  # trades one aggTrade aggregates: 1..MAX_FILLS
# A stream name: a lowercase symbol, "@", an event ("depth@100ms", "aggTrade").
STREAM_NAME = re.compile(r"[a-z0-9_]+@[A-Za-z0-9_@]+")
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS")
INVALID_REQUEST = 2  # Binance's error code of every malformed request
# rest_ahead_every: an answer waits for this many held-back events (at most
# REST_AHEAD_WAIT_S), and they are released this long after it was sent.
REST_AHEAD_EVENTS = 3
REST_AHEAD_WAIT_S = 1.0
REST_AHEAD_RELEASE_S = 0.5
MAX_AGE_CLOSE = (1000, "connection max age")


def truth_key(venue: str, symbol: str) -> str:
    """'binance-futures', 'BTCUSDT' -> 'binance-futures:btcusdt@depth@100ms';
    'hyperliquid', 'BTC' (or 'BTCUSDT') -> 'hyperliquid:BTC'."""
    if venue == HYPERLIQUID:
        return coin_key(symbol)
    return f"{venue}:{symbol.lower()}@{BOOK_STREAM}"


def book_symbol(venue: str, stream: str) -> str | None:
    """The symbol (upper case) of a venue's book stream name, None if not one."""
    symbol, _, event = stream.partition("@")
    return symbol.upper() if symbol and event in DEPTH_EVENTS[venue] else None


def trade_symbol(venue: str, stream: str) -> str | None:
    symbol, _, event = stream.partition("@")
    return symbol.upper() if symbol and event in TRADE_EVENTS[venue] else None


def split_key(key: str) -> tuple[str, str] | None:
    """A truth key -> (venue, symbol); any book stream spelling is accepted.
    None if the key is not a Binance venue's."""
    venue, sep, stream = key.partition(":")
    if not sep or venue not in VENUES:
        return None
    symbol = book_symbol(venue, stream)
    return (venue, symbol) if symbol else None


def is_binance_key(key: str) -> bool:
    return key.partition(":")[0] in VENUES


def parse_ws_path(path: str, query: str) -> tuple[str, str, list[str]] | None:
    """A WebSocket path -> (venue, form, streams to subscribe at connect);
    None if it is not one of the Binance venues' paths."""
    for venue in VENUES:
        prefix = f"/{venue}/"
        if path.startswith(prefix):
            rest = path[len(prefix) :].removeprefix(PUBLIC)
            form, _, tail = rest.partition("/")
            if form == COMBINED and not tail:
                names = parse_qs(query).get("streams", [""])[0].split("/")
            elif form == RAW:
                names = tail.split("/")
            else:
                return None
            return venue, form, [n for n in names if n]
    return None


@dataclass(slots=True)
class BinancePub(Pub):
    """A Binance event under one stream name (`topic`), combined or raw."""

    def render(self, category: str) -> bytes:
        combined = category == COMBINED  # a BinanceConn's category is its form
        out = self._cache.get(combined)
        if out is None:
            msg = {"stream": self.topic, "data": self.body} if combined else self.body
            out = self._cache[combined] = orjson.dumps(msg)
        return out


class Subscribed:
    """Stream names of one market's data and their subscribers; `subscribers`
    is every connection subscribed by any name (for pacing and fault logs)."""

    market: Market
    subscribers: dict[Conn, None]
    streams: dict[str, dict[Conn, None]]

    def join(self, conn: Conn, stream: str) -> None:
        self.streams.setdefault(stream, {})[conn] = None
        self.subscribers[conn] = None

    def part(self, conn: Conn, stream: str) -> None:
        conns = self.streams.get(stream)
        if conns is not None:
            conns.pop(conn, None)
            if not conns:
                del self.streams[stream]
        if not any(conn in conns for conns in self.streams.values()):
            self.subscribers.pop(conn, None)

    def send(self, body: dict, is_book: bool, ts: int, events: Sequence[str] = ()) -> None:
        """One event to every stream (of the given events, if any) and its subscribers."""
        for stream, conns in self.streams.items():
            if events and stream.partition("@")[2] not in events:
                continue
            pub = BinancePub(stream, is_book, body, ts=ts)
            for conn in list(conns):
                conn.push(pub)


class BinanceBook(Subscribed, FullTopic):
    """One venue's whole book of one symbol: FullTopic's book, diffs and truth,
    published as Binance's depth events. Binance has no seq: a state's seq is
    its u. Never delisted, never restarted (no u=1 lineage on Binance)."""

    def __init__(self, venue: str, config: SimConfig, market: Market) -> None:
        self.venue = venue
        self.futures = venue == FUTURES
        symbol = market.book.spec.symbol
        self.ids = random.Random(f"{config.seed}:{venue}:{symbol}:ids")
        self.start_u = self.ids.randint(*FIRST_ID_RANGE)
        market.seq = self.start_u  # FullTopic's first state takes its seq from the market
        super().__init__(book_topic(FULL_DEPTH, symbol), config, market)
        self.name = truth_key(venue, symbol)
        self.streams = {}
        self.events = 0  # changed states, for binance_pu_break_every
        self.holds = 0  # REST answers holding the events back (rest_ahead_every)
        self.held: list[Pub] = []
        self.enough_held = asyncio.Event()

    def _first_u(self) -> int:
        return self.start_u

    def _listed_at(self, step: int) -> bool:
        return True

    def join(self, conn: Conn, stream: str) -> None:
        super().join(conn, stream)
        self.on_join()  # rest_stale_every answers older than this subscriber's events

    def advance(self, changed: tuple[set[int], set[int]], seq: int, ts: int) -> Pub | None:
        ops = self._changes(changed)
        if ops is None:
            return None  # Binance sends nothing when nothing changed
        self._keep_prev()
        self.events += 1
        prev = self.u
        first = prev + 1 + (self.ids.randint(0, MAX_SKIP) if self.futures else 0)
        last = first + self.ids.randint(1, MAX_SPAN) - 1
        chained = prev
        dropped = self._count_delta()
        fault: BinanceFault | FaultKind | None = FaultKind.DROP if dropped else None
        every = self.config.binance_pu_break_every
        if not dropped and every and self.events % every == 0:
            fault = BinanceFault.PU_BREAK
            if self.futures:
                chained = prev - 1
            else:
                first, last = first + 1, max(last, first + 1)
        self.u = self.seq = last
        bids, asks = self._apply(ops)
        # Futures: the matching engine's time (T) a little before the event's (E).
        transaction_ms = ts - (self.ids.randint(0, 3) if self.futures else 0)
        self.ts = ts
        self._record(dropped, ops)
        body = self._payload(first, chained, transaction_ms, bids, asks)
        return BinancePub(self.name, True, body, ts=ts, dropped=dropped, fault=fault)

    def _payload(
        self, first: int, chained: int, transaction_ms: int, bids: list[Level], asks: list[Level]
    ) -> dict:
        body: dict = {"e": "depthUpdate", "E": self.ts}
        if self.futures:
            body["T"] = transaction_ms
        body |= {"s": self.symbol, "U": first, "u": self.u}
        if self.futures:
            body["pu"] = chained
        return body | {"b": bids, "a": asks}

    def fan_out(self, pub: Pub) -> None:
        if self.holds:
            self.held.append(pub)
            if len(self.held) >= REST_AHEAD_EVENTS:
                self.enough_held.set()
            return
        assert isinstance(pub.body, dict)
        self.send(pub.body, True, pub.ts)

    def hold(self) -> None:
        """Hold the events back from every subscriber until release()."""
        if not self.holds:
            self.held.clear()
            self.enough_held.clear()
        self.holds += 1

    def release(self) -> None:
        self.holds -= 1
        if not self.holds:
            held, self.held = self.held, []
            for pub in held:
                self.fan_out(pub)


class BinanceTrades(Subscribed):
    """One venue's trades of one symbol: each taker order drawn as the Bybit
    markets draw theirs, sent as its fills (@trade) and one aggTrade."""

    def __init__(self, venue: str, config: SimConfig, market: Market) -> None:
        self.venue, self.market = venue, market
        self.futures = venue == FUTURES
        self.subscribers, self.streams = {}, {}
        rng = random.Random(f"{config.seed}:{venue}:{market.book.spec.symbol}:trade-ids")
        self.trade_id = rng.randint(*FIRST_ID_RANGE)
        self.agg_id = rng.randint(*FIRST_ID_RANGE)

    def publish(self, ts: int) -> None:
        market = self.market
        buy, ticks, lots = market.draw_trade()
        more = market.trade_rng.randint(1, MAX_FILLS) - 1
        fills = [lots] + [trade_lots(market.trade_rng) for _ in range(more)]
        fmt, symbol = market.book.fmt, market.book.spec.symbol
        price, maker = fmt.price(ticks), not buy  # a taker buy: the buyer is not the maker
        first = self.trade_id + 1
        for lots_filled in fills:
            self.trade_id += 1
            trade = {"e": "trade", "E": ts, "s": symbol, "t": self.trade_id, "p": price}
            trade["q"] = fmt.size(lots_filled)
            if self.futures:
                trade |= {"T": ts, "X": "MARKET", "m": maker}
            else:
                trade |= {"T": ts, "m": maker, "M": True}
            self.send(trade, False, ts, ("trade",))
        self.agg_id += 1
        agg = {"e": "aggTrade", "E": ts, "s": symbol, "a": self.agg_id, "p": price}
        agg |= {"q": fmt.size(sum(fills)), "f": first, "l": self.trade_id, "T": ts, "m": maker}
        if not self.futures:
            agg["M"] = True
        self.send(agg, False, ts, ("aggTrade",))

    async def run(self, rate: float) -> None:
        if rate <= 0:
            return
        await self.market.started.wait()
        while not self.market.finished:
            await asyncio.sleep(1 / rate)
            if self.streams:
                self.publish(now_ms())


class BadRequest(Exception):
    def __init__(self, req_id: object, msg: str) -> None:
        super().__init__(msg)
        self.req_id, self.msg = req_id, msg


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    streams: list[str]
    req_id: int | str | None


def parse_request(raw: str | bytes) -> Request:
    """A client's request, or BadRequest with Binance's error text."""
    try:
        req = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(None, f"Invalid request: invalid JSON: {exc}") from None
    if not isinstance(req, dict):
        raise BadRequest(None, "Invalid request: a request is a JSON object")
    req_id = req.get("id")
    unsigned = isinstance(req_id, int) and not isinstance(req_id, bool) and req_id >= 0
    if not (req_id is None or unsigned or isinstance(req_id, str)):
        raise BadRequest(None, "Invalid request: request ID must be an unsigned integer")
    assert req_id is None or isinstance(req_id, int | str)
    method = req.get("method")
    if method is None:
        raise BadRequest(req_id, "Invalid request: missing field `method`")
    if method not in METHODS:
        expected = ", ".join(f"`{m}`" for m in METHODS)
        why = f"unknown variant `{method}`, expected one of {expected}"
        raise BadRequest(req_id, f"Invalid request: {why}")
    if method == "LIST_SUBSCRIPTIONS":
        return Request(method, [], req_id)
    params = req.get("params")
    if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
        raise BadRequest(req_id, "Invalid request: params must be a list of stream names")
    for name in params:
        if not STREAM_NAME.fullmatch(name):
            raise BadRequest(req_id, f"Invalid request: invalid stream name `{name}`")
    return Request(method, params, req_id)


def result_frame(result: list[str] | None, req_id: object) -> bytes:
    return orjson.dumps({"result": result, "id": req_id})


def error_frame(req_id: object, msg: str) -> bytes:
    return orjson.dumps({"error": {"code": INVALID_REQUEST, "msg": msg}, "id": req_id})


class BinanceConn(Conn):
    """A connection to one Binance venue; its category is its form (COMBINED or RAW)."""

    def __init__(
        self,
        venues: BinanceVenues,
        ws: ServerConnection,
        fault: FaultKind | None,
        path: tuple[str, str, list[str]],
    ) -> None:
        venue, form, streams = path
        super().__init__(venues.sim, ws, form, fault)
        self.venues, self.venue = venues, venue
        self.streams: dict[str, None] = {}  # in subscription order
        for name in streams:
            venues.subscribe(self, name)
        max_age = self.sim.config.conn_max_age_s
        loop = asyncio.get_running_loop()
        self.max_age = loop.call_later(max_age, self._expire) if max_age > 0 else None

    def _expire(self) -> None:
        if self.closed:
            return
        self.sim.injected(BinanceFault.MAX_AGE, self)
        self.record.ended_by = BinanceFault.MAX_AGE
        self.close_soon(*MAX_AGE_CLOSE)

    def receive(self, raw: str | bytes) -> None:
        try:
            req = parse_request(raw)
        except BadRequest as exc:
            self.push(error_frame(exc.req_id, exc.msg))
            return
        if req.method == "LIST_SUBSCRIPTIONS":
            self.push(result_frame(list(self.streams), req.req_id))
            return
        if req.method == "UNSUBSCRIBE" and self._ignored(req.streams):
            return
        self.push(result_frame(None, req.req_id))  # before the data it asks for
        for name in req.streams:
            if req.method == "SUBSCRIBE":
                self.venues.subscribe(self, name)
            else:
                self.venues.unsubscribe(self, name)

    def _ignored(self, streams: list[str]) -> bool:
        """ignore_unsubscribe_every: no answer, and the data keeps coming."""
        sim = self.sim
        sim.unsubscribes += 1
        every = sim.config.ignore_unsubscribe_every
        if every and sim.unsubscribes % every == 0:
            sim.injected(FaultKind.IGNORED_UNSUBSCRIBE, self, ",".join(streams))
            return True
        return False

    def leave(self) -> None:
        if self.max_age is not None:
            self.max_age.cancel()
        for name in list(self.streams):
            self.venues.unsubscribe(self, name)


class BinanceVenues:
    """The Binance venues of one simulator: every configured symbol on both,
    its market, book and trades made at first use (subscription, REST, truth
    is not a use) or at start with prepare_full."""

    def __init__(self, sim: BybitSimulator) -> None:
        self.sim = sim
        self.books: dict[tuple[str, str], BinanceBook] = {}
        self.trades: dict[tuple[str, str], BinanceTrades] = {}
        self.weights: dict[str, tuple[int, int]] = {}  # venue -> (minute, REST weight used)

    def prepare(self) -> None:
        for venue in VENUES:
            for symbol in self.sim.config.symbols:
                self.book(venue, symbol)

    def book(self, venue: str, symbol: str) -> BinanceBook | None:
        """The (venue, symbol) book, made and set running at first use; None for
        a symbol the simulator does not have."""
        found = self.books.get((venue, symbol))
        if found is None and symbol in self.sim.config.symbols:
            cfg = self.sim.config
            market = Market(symbol, cfg, venue, VENUE_OFFSET_BPS[venue])
            found = self.books[venue, symbol] = BinanceBook(venue, cfg, market)
            market.topics[FULL_DEPTH] = found
            trades = self.trades[venue, symbol] = BinanceTrades(venue, cfg, market)
            self.sim.spawn(self.sim.run_market(market))
            self.sim.spawn(trades.run(cfg.trades_rate))
        return found

    def find(self, key: str) -> BinanceBook | None:
        """The book a truth key names, if it was made."""
        split = split_key(key)
        return self.books.get(split) if split else None

    def finished(self, key: str) -> bool:
        book = self.find(key)
        return bool(book and book.market.finished)

    def _target(self, venue: str, stream: str) -> Subscribed | None:
        symbol = book_symbol(venue, stream)
        if symbol is not None:
            return self.book(venue, symbol)
        symbol = trade_symbol(venue, stream)
        if symbol is not None and self.book(venue, symbol) is not None:
            return self.trades[venue, symbol]
        return None  # a stream Binance may have but the simulator has not: no data

    def subscribe(self, conn: BinanceConn, stream: str) -> None:
        conn.streams[stream] = None
        target = self._target(conn.venue, stream)
        if target is not None:
            target.join(conn, stream)
            target.market.started.set()

    def unsubscribe(self, conn: BinanceConn, stream: str) -> None:
        conn.streams.pop(stream, None)
        target = self._target(conn.venue, stream)
        if target is not None:
            target.part(conn, stream)

    def connect(self, ws: ServerConnection, fault: FaultKind | None) -> BinanceConn | None:
        """A Binance connection for a Binance path; None for any other path."""
        assert ws.request is not None
        path, _, query = ws.request.path.partition("?")
        parsed = parse_ws_path(path, query)
        return BinanceConn(self, ws, fault, parsed) if parsed else None

    @staticmethod
    def owns(path: str) -> bool:
        """A WebSocket path of a Binance venue (REST_PATHS are answered apart)."""
        return any(path.startswith(f"/{v}/") for v in VENUES)

    @staticmethod
    def check_handshake(path: str, query: str) -> Response | None:
        """A refused handshake (unknown path, bad stream name); None to go on."""
        parsed = parse_ws_path(path, query)
        if parsed is None:
            return text_response(404, "unknown path\n")
        bad = [n for n in parsed[2] if not STREAM_NAME.fullmatch(n)]
        if bad:
            return text_response(400, f"Invalid request: invalid stream name `{bad[0]}`\n")
        return None
