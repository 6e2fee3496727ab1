"""Hyperliquid (`hyperliquid`) on the simulator's port, next to Bybit and
Binance: WebSocket /hyperliquid/ws (wss://api.hyperliquid.xyz/ws), its
requests, their answers and the idle timeout. The coins' books and trades
are in sim/hyperliquid_book.py.

Requests, one subscription each (text JSON):
{"method":"subscribe"|"unsubscribe","subscription":{"type":"l2Book"|"trades","coin":"BTC"}}
and {"method":"ping"} (answered {"channel":"pong"}). A subscription is acked
{"channel":"subscriptionResponse","data":{"method":…,"subscription":{…}}}, an
l2Book one echoing its defaults ("nSigFigs":null,"mantissa":null), and then
its first push: the current book, or the last trades (BACKLOG, maybe none).
Anything else is answered {"channel":"error","data":"<text>"} and the socket
stays open; l2Book's options (nSigFigs, nLevels, mantissa) must be null, and
`fast` false, as the simulator serves the full-precision top 20 only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from websockets.asyncio.server import ServerConnection

from depthwatch.sim.config import FaultKind, HyperliquidFault
from depthwatch.sim.conn import Conn
from depthwatch.sim.hyperliquid_book import (
    VENUE,
    VENUE_OFFSET_BPS,
    WS_PATH,
    HyperliquidBook,
    HyperliquidTrades,
    coin_of,
    is_hyperliquid_key,
)
from depthwatch.sim.topics import Market

if TYPE_CHECKING:
    from depthwatch.sim.server import BybitSimulator

L2BOOK, TRADES = "l2Book", "trades"
METHODS = ("subscribe", "unsubscribe")
NULL_OPTIONS = ("nSigFigs", "nLevels", "mantissa")  # l2Book options the simulator has not
PONG = b'{"channel":"pong"}'
PARSE_ERROR = "Error parsing JSON into valid websocket request: "
IDLE_CLOSE = (1000, "idle")


class BadRequest(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True, slots=True)
class Request:
    method: str  # "subscribe", "unsubscribe" or "ping"
    kind: str = ""  # L2BOOK or TRADES
    coin: str = ""
    sent: str = ""  # the subscription as sent (compact JSON), for error texts


def parse_request(raw: str | bytes, coins: dict[str, str]) -> Request:
    """A client's request, or BadRequest with Hyperliquid's error text."""
    text = raw if isinstance(raw, str) else raw.decode(errors="replace")
    try:
        req = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest(PARSE_ERROR + text) from None
    method = req.get("method") if isinstance(req, dict) else None
    if method == "ping":
        return Request(method)
    sub = req.get("subscription") if method in METHODS else None
    if not isinstance(sub, dict):
        raise BadRequest(PARSE_ERROR + text)
    kind, coin = sub.get("type"), sub.get("coin")
    if kind not in (L2BOOK, TRADES) or not isinstance(coin, str):
        raise BadRequest(PARSE_ERROR + text)
    sent = orjson.dumps(sub).decode()
    unserved = kind == L2BOOK and (
        any(sub.get(key) is not None for key in NULL_OPTIONS) or bool(sub.get("fast"))
    )
    if coin not in coins or unserved:
        raise BadRequest(f"Invalid subscription {sent}")
    return Request(str(method), kind, coin, sent)


def ack_frame(method: str, kind: str, coin: str) -> bytes:
    sub: dict = {"type": kind, "coin": coin}
    if kind == L2BOOK:
        sub |= {"nSigFigs": None, "mantissa": None}
    data = {"method": method, "subscription": sub}
    return orjson.dumps({"channel": "subscriptionResponse", "data": data})


def error_frame(text: str) -> bytes:
    return orjson.dumps({"channel": "error", "data": text})


class HyperliquidConn(Conn):
    """A Hyperliquid client's connection: its subscriptions as (type, coin),
    closed by the server once it has sent nothing for hyperliquid_idle_timeout_s."""

    def __init__(self, venue: HyperliquidVenue, ws: ServerConnection, fault: FaultKind | None):
        super().__init__(venue.sim, ws, VENUE, fault)
        self.venue = venue
        self.subs: dict[tuple[str, str], None] = {}  # in subscription order
        self.idle: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        """(Re)start the idle clock: the client just said something."""
        if self.idle is not None:
            self.idle.cancel()
        timeout = self.sim.config.hyperliquid_idle_timeout_s
        if timeout > 0 and not self.closed:
            self.idle = asyncio.get_running_loop().call_later(timeout, self._expire)

    def _expire(self) -> None:
        if self.closed:
            return
        self.sim.injected(HyperliquidFault.IDLE, self)
        self.record.ended_by = HyperliquidFault.IDLE
        self.close_soon(*IDLE_CLOSE)

    def receive(self, raw: str | bytes) -> None:
        self._arm()
        try:
            req = parse_request(raw, self.venue.coins)
        except BadRequest as exc:
            self.push(error_frame(exc.text))
            return
        if req.method == "ping":
            self.sim.pings_received += 1
            self.push(PONG)
            return
        key = (req.kind, req.coin)
        subscribe = req.method == "subscribe"
        if subscribe == (key in self.subs):
            word = "" if subscribe else "un"
            self.push(error_frame(f"Already {word}subscribed: {req.sent}"))
            return
        self.push(ack_frame(req.method, req.kind, req.coin))  # before the data it asks for
        if subscribe:
            self.subs[key] = None
            self.venue.join(self, req.kind, req.coin)
        else:
            del self.subs[key]
            self.venue.part(self, req.kind, req.coin)

    def leave(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        for kind, coin in self.subs:
            self.venue.part(self, kind, coin)


class HyperliquidVenue:
    """Hyperliquid in one simulator: a coin per configured symbol (coin_of; the
    first symbol of a coin wins), its market, book and trades made at first use
    (a subscription; truth is not a use) or at start with prepare_full."""

    def __init__(self, sim: BybitSimulator) -> None:
        self.sim = sim
        self.coins: dict[str, str] = {}  # coin -> symbol
        for symbol in sim.config.symbols:
            self.coins.setdefault(coin_of(symbol), symbol)
        self.books: dict[str, HyperliquidBook] = {}
        self.trades: dict[str, HyperliquidTrades] = {}

    def prepare(self) -> None:
        for coin in self.coins:
            self.book(coin)

    def book(self, coin: str) -> HyperliquidBook | None:
        """The coin's book, made and set running at first use; None for a coin
        the simulator does not have."""
        found = self.books.get(coin)
        if found is None and coin in self.coins:
            cfg = self.sim.config
            market = Market(self.coins[coin], cfg, VENUE, VENUE_OFFSET_BPS)
            found = self.books[coin] = HyperliquidBook(coin, cfg, market)
            trades = self.trades[coin] = HyperliquidTrades(coin, cfg, market)
            self.sim.spawn(found.run(self.sim))
            self.sim.spawn(trades.run(cfg.trades_rate))
        return found

    def find(self, key: str) -> HyperliquidBook | None:
        """The book a truth key names ('hyperliquid:BTC'), if it was made."""
        if not is_hyperliquid_key(key):
            return None
        return self.books.get(coin_of(key.partition(":")[2]))

    def finished(self, key: str) -> bool:
        book = self.find(key)
        return bool(book and book.market.finished)

    def join(self, conn: HyperliquidConn, kind: str, coin: str) -> None:
        """Subscribe, pushing the subscription's first message (no await between
        it and joining: nothing can slip between)."""
        book = self.book(coin)
        assert book is not None  # parse_request checked the coin
        target: HyperliquidBook | HyperliquidTrades = book
        if kind == L2BOOK:
            conn.push(book.snapshot_pub())
        else:
            target = self.trades[coin]
            conn.push(target.backlog())
        target.subscribers[conn] = None
        book.market.started.set()

    def part(self, conn: HyperliquidConn, kind: str, coin: str) -> None:
        target = self.books.get(coin) if kind == L2BOOK else self.trades.get(coin)
        if target is not None:
            target.subscribers.pop(conn, None)

    def connect(self, ws: ServerConnection, fault: FaultKind | None) -> HyperliquidConn | None:
        """A Hyperliquid connection for its path; None for any other path."""
        assert ws.request is not None
        path = ws.request.path.partition("?")[0]
        return HyperliquidConn(self, ws, fault) if path == WS_PATH else None
