"""Binance's REST order book snapshots on the simulator's port: spot's
GET /api/v3/depth and futures' GET /fapi/v1/depth, answered from the book the
venue's streams publish (sim/binance.py), with the faults a client must
survive: 418 and 429 with Retry-After, 503, a stale answer, an answer ahead
of the events, a late answer."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from typing import TYPE_CHECKING

from websockets.http11 import Response

from depthwatch.sim.binance import (
    REST_AHEAD_RELEASE_S,
    REST_AHEAD_WAIT_S,
    SPOT,
    BinanceBook,
    BinanceVenues,
    truth_key,
)
from depthwatch.sim.config import BinanceFault, FullBookFault, now_ms
from depthwatch.sim.market import TruthState
from depthwatch.sim.rest import json_response

if TYPE_CHECKING:
    from depthwatch.sim.server import BybitSimulator

DEFAULT_LIMIT = {SPOT: 100}  # futures: FUTURES_DEFAULT_LIMIT
SPOT_MAX_LIMIT = 5000
FUTURES_LIMITS = (5, 10, 20, 50, 100, 500, 1000)
FUTURES_DEFAULT_LIMIT = 500
# A snapshot's request weight by its limit: (limits up to, weight), per venue.
SPOT_WEIGHTS = ((100, 5), (500, 25), (1000, 50), (SPOT_MAX_LIMIT, 250))
FUTURES_WEIGHTS = ((50, 2), (100, 5), (500, 10), (1000, 20))
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
RETRY_AFTER_S = 1  # the Retry-After of a 418 or 429
SYMBOL_PATTERN = "^[A-Z0-9-_.]{1,20}$"
TOO_MANY = -1003  # Binance's codes
ILLEGAL_CHARS = -1100
MANDATORY_PARAM = -1102
INVALID_SYMBOL = -1121
OVERLOADED = -1008


async def depth(venues: BinanceVenues, venue: str, params: dict[str, list[str]]) -> Response:
    """The answer to one snapshot request: the book, an error, or a fault.
    Every request counts towards the rest_*_every faults (with Bybit's) and
    towards `rest_requests["{venue}:{symbol}"]`."""
    sim = venues.sim
    sim.rest_total += 1
    n, cfg = sim.rest_total, sim.config
    symbol = params.get("symbol", [""])[0]
    key = truth_key(venue, symbol) if symbol else venue  # for the fault log
    sim.rest_requests[f"{venue}:{symbol}"] += 1
    limit = _limit(venue, params.get("limit", [None])[0])
    used = _use_weight(venues, venue, _weight(venue, limit or _default_limit(venue)))
    book: BinanceBook | None = None
    held = False
    response = _refusal(n, key, venues) or _invalid(venue, symbol, limit)
    if response is None:
        book = venues.book(venue, symbol)
        if book is None:
            response = _error(400, INVALID_SYMBOL, "Invalid symbol.")
        else:
            assert limit is not None
            state, held = await _state(sim, book, n)
            response = _snapshot(book, state, min(limit, cfg.rest_levels))
    response.headers[WEIGHT_HEADER] = str(used)
    if cfg.rest_delay_s > 0:
        # Made on arrival, sent late: events pushed meanwhile are newer.
        sim.injected(FullBookFault.REST_DELAY, None, key, book.u if book else 0)
        await asyncio.sleep(cfg.rest_delay_s)
    if held:
        assert book is not None
        asyncio.get_running_loop().call_later(REST_AHEAD_RELEASE_S, book.release)
    return response


def _refusal(n: int, key: str, venues: BinanceVenues) -> Response | None:
    """The nth request's fault answer, if it has one: 418, else 429, else 503."""
    sim = venues.sim
    cfg = sim.config
    if cfg.rest_418_every and n % cfg.rest_418_every == 0:
        sim.injected(BinanceFault.REST_418, None, key)
        until = now_ms() + RETRY_AFTER_S * 1000
        return _retry_later(418, f"Way too many requests; IP banned until {until}.")
    if cfg.rest_429_every and n % cfg.rest_429_every == 0:
        sim.injected(FullBookFault.REST_429, None, key)
        msg = "Too many requests; current limit of IP request weight is 6000 per 1 MINUTE."
        return _retry_later(429, msg)
    if cfg.rest_5xx_every and n % cfg.rest_5xx_every == 0:
        sim.injected(FullBookFault.REST_5XX, None, key)
        msg = "Server is currently overloaded with other requests. Please try again later."
        return _error(503, OVERLOADED, msg)
    return None


def _invalid(venue: str, symbol: str, limit: int | None) -> Response | None:
    """Binance's 400 for a request it would not answer (but an unknown symbol)."""
    if not symbol:
        msg = "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
        return _error(400, MANDATORY_PARAM, msg)
    if not re.fullmatch(SYMBOL_PATTERN, symbol):
        return _illegal("symbol", SYMBOL_PATTERN)
    if limit is None:
        legal = f"1-{SPOT_MAX_LIMIT}" if venue == SPOT else ", ".join(map(str, FUTURES_LIMITS))
        return _illegal("limit", legal)
    return None


async def _state(sim: BybitSimulator, book: BinanceBook, n: int) -> tuple[TruthState, bool]:
    """The state the nth request is answered with, and whether the book's
    events are held back (the caller releases them once it answered)."""
    cfg = sim.config
    if cfg.rest_stale_every and n % cfg.rest_stale_every == 0:
        # Older than every event the latest subscriber buffered (FullTopic.on_join).
        state = book.stale_state()
        if book.before_join is None:
            # Joined before the book first changed: its first state is exactly
            # the book before the first event, which Binance's rule accepts.
            # Older still: an update before it, which no event covers.
            state = replace(state, u=state.u - 1, seq=state.seq - 1)
        sim.injected(FullBookFault.REST_STALE, None, book.name, state.u)
        return state, False
    if cfg.rest_ahead_every and n % cfg.rest_ahead_every == 0 and await _hold(book):
        state = book.state()
        sim.injected(BinanceFault.REST_AHEAD, None, book.name, state.u)
        return state, True
    return book.state(), False


async def _hold(book: BinanceBook) -> bool:
    """Hold the book's events back from its subscribers until REST_AHEAD_EVENTS
    were made (REST_AHEAD_WAIT_S at most). True if any were: the answer is then
    newer than every event its subscribers have, and they are released later."""
    if not book.subscribers:
        return False  # nobody to be behind
    book.hold()
    try:
        await asyncio.wait_for(book.enough_held.wait(), REST_AHEAD_WAIT_S)
    except TimeoutError:
        pass  # fewer: the market is slow or has stopped
    except BaseException:
        book.release()
        raise
    if not book.held:
        book.release()
        return False
    return True


def _snapshot(book: BinanceBook, state: TruthState, levels: int) -> Response:
    body: dict[str, object] = {"lastUpdateId": state.u}
    if book.futures:
        # E: when the answer was made; T: the time of the state's last event.
        body |= {"E": max(now_ms(), state.ts_ms), "T": state.ts_ms}
    body |= {"bids": state.bids[:levels], "asks": state.asks[:levels]}
    return json_response(200, body)


def _default_limit(venue: str) -> int:
    return DEFAULT_LIMIT.get(venue, FUTURES_DEFAULT_LIMIT)


def _limit(venue: str, text: str | None) -> int | None:
    """The request's limit (its default if none); None if Binance refuses it."""
    if text is None:
        return _default_limit(venue)
    try:
        limit = int(text)
    except ValueError:
        return None
    if venue == SPOT:
        return limit if 1 <= limit <= SPOT_MAX_LIMIT else None
    return limit if limit in FUTURES_LIMITS else None


def _weight(venue: str, limit: int) -> int:
    table = SPOT_WEIGHTS if venue == SPOT else FUTURES_WEIGHTS
    return next((w for up_to, w in table if limit <= up_to), table[-1][1])


def _use_weight(venues: BinanceVenues, venue: str, weight: int) -> int:
    """The venue's request weight used this minute, this request's included."""
    minute = now_ms() // 60_000
    at, used = venues.weights.get(venue, (minute, 0))
    used = (used if at == minute else 0) + weight
    venues.weights[venue] = (minute, used)
    return used


def _error(status: int, code: int, msg: str) -> Response:
    return json_response(status, {"code": code, "msg": msg})


def _illegal(param: str, legal: str) -> Response:
    msg = f"Illegal characters found in parameter '{param}'; legal range is '{legal}'."
    return _error(400, ILLEGAL_CHARS, msg)


def _retry_later(status: int, msg: str) -> Response:
    response = _error(status, TOO_MANY, msg)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response
