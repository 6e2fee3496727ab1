"""The simulator's REST side, on its WebSocket port: Bybit's
`GET /v5/market/full_orderbook` answered from the whole-book topic's state,
with the faults a client must survive (429, 5xx, a stale or mismatched
snapshot, a category without the endpoint), and the HTTP answers the server
gives besides its WebSocket upgrades."""

from __future__ import annotations

from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import TYPE_CHECKING

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Response

from depthwatch.feed.bybit.topics import FULL_CATEGORIES, book_topic
from depthwatch.records import FULL_DEPTH
from depthwatch.sim.config import FullBookFault, now_ms

if TYPE_CHECKING:
    from depthwatch.sim.server import BybitSimulator


def full_orderbook(sim: BybitSimulator, params: dict[str, list[str]]) -> RestAnswer:
    """A REST snapshot of the whole book, or the error or fault answering it."""
    sim.rest_total += 1
    n, cfg = sim.rest_total, sim.config
    category = params.get("category", [""])[0]
    symbol = params.get("symbol", [""])[0]
    sim.rest_requests[symbol] += 1
    name = book_topic(FULL_DEPTH, symbol) if symbol else ""
    if cfg.rest_429_every and n % cfg.rest_429_every == 0:
        sim.injected(FullBookFault.REST_429, None, name)
        body = {"retCode": 10006, "retMsg": "Too many visits!"}
        return RestAnswer(json_response(429, body), name)
    if cfg.rest_5xx_every and n % cfg.rest_5xx_every == 0:
        sim.injected(FullBookFault.REST_5XX, None, name)
        return RestAnswer(text_response(503, "Service Temporarily Unavailable\n"), name)
    if category not in FULL_CATEGORIES or category not in cfg.full_categories:
        if category in FULL_CATEGORIES:
            sim.injected(FullBookFault.REFUSED, None, name)
        return RestAnswer(rest_error("params error: category invalid"), name)
    market = sim.markets.get(symbol)
    if market is None:
        return RestAnswer(rest_error("params error: symbol invalid"), name)
    topic = sim.full_topic(market)
    if cfg.rest_stale_every and n % cfg.rest_stale_every == 0:
        state = topic.stale_state()
        sim.injected(FullBookFault.REST_STALE, None, name, state.seq)
    elif cfg.rest_mismatch_every and n % cfg.rest_mismatch_every == 0:
        state = replace(topic.state(cfg.rest_levels), u=topic.u + 1)
        sim.injected(FullBookFault.REST_MISMATCH, None, name, state.seq)
    else:
        state = topic.state(cfg.rest_levels)
    limit = cfg.rest_levels
    result: dict[str, object] = {"s": symbol, "b": state.bids[:limit], "a": state.asks[:limit]}
    result |= {"ts": state.ts_ms, "u": state.u, "seq": state.seq, "cts": state.ts_ms - 1}
    body = {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}}
    return RestAnswer(json_response(200, body | {"time": now_ms()}), name, state.seq)


@dataclass(frozen=True, slots=True)
class RestAnswer:
    response: Response
    topic: str  # for the fault log
    seq: int = 0


def json_response(status: int, body: dict) -> Response:
    return _response(status, "application/json", orjson.dumps(body))


def text_response(status: int, text: str) -> Response:
    return _response(status, "text/plain; charset=utf-8", text.encode())


def _response(status: int, content_type: str, data: bytes) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data)))])
    # websockets closes the TCP connection after any answer that is not an upgrade.
    headers["Connection"] = "close"
    return Response(status, HTTPStatus(status).phrase, headers, data)


def rest_error(message: str) -> Response:
    """Bybit's REST errors are HTTP 200 with a nonzero retCode."""
    body = {"retCode": 10001, "retMsg": message, "result": {}, "retExtInfo": {}}
    return json_response(200, body | {"time": now_ms()})
