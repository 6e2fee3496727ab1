"""The simulator's Binance venues (spot `binance`, USDⓈ-M `binance-futures`) at
the protocol level: a plain WebSocket client and urllib against a
SimulatorThread that serves Bybit on the same port, no collector."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from depthwatch.sim import (
    FUTURES,
    SPOT,
    BinanceFault,
    FaultKind,
    FullBookFault,
    SimulatorThread,
    TruthState,
    add_sim_arguments,
    truth_key,
)
from depthwatch.sim.binance import MAX_SPAN
from depthwatch.sim.config import config_from_args

from .e2e import one_symbol_sim

SYMBOL = "BTCUSDT"
STREAM = "btcusdt@depth@100ms"
KEYS = {SPOT: truth_key(SPOT, SYMBOL), FUTURES: truth_key(FUTURES, SYMBOL)}
SPOT_KEYS = ["e", "E", "s", "U", "u", "b", "a"]
FUTURES_KEYS = ["e", "E", "T", "s", "U", "u", "pu", "b", "a"]
REST_PATH = {SPOT: "/api/v3/depth", FUTURES: "/fapi/v1/depth"}
WHOLE = {SPOT: 5000, FUTURES: 1000}  # the largest limit: the whole model book of 200 levels
WAIT_S = 10.0

Book = tuple[dict[str, str], dict[str, str]]  # bids, asks: price -> size


def running(**overrides: Any) -> contextlib.AbstractContextManager[SimulatorThread]:
    return one_symbol_sim(SYMBOL, **overrides)


@contextmanager
def streaming(
    sim: SimulatorThread, venue: str, *streams: str, raw: bool = False
) -> Iterator[ClientConnection]:
    # max_queue=None: an unread backlog would pause the client's reads and stall its close.
    with sync_connect(sim.binance_url(venue, raw), max_queue=None) as ws:
        if streams:
            assert request(ws, "SUBSCRIBE", list(streams)) == {"result": None, "id": 1}
        yield ws


def request(ws: ClientConnection, method: str, params: Any = None, req_id: Any = 1) -> dict:
    """Send a request; its answer (data frames before it are skipped)."""
    msg: dict[str, Any] = {"method": method, "id": req_id}
    if params is not None:
        msg["params"] = params
    ws.send(json.dumps(msg))
    return answer(ws)


def answer(ws: ClientConnection) -> dict:
    while "result" not in (msg := json.loads(ws.recv(WAIT_S))) and "error" not in msg:
        pass
    return msg


def payload(msg: dict) -> dict:
    return msg["data"] if "stream" in msg else msg


def next_event(ws: ClientConnection) -> dict:
    """The next depth event's payload (trades and answers are skipped)."""
    while payload(msg := json.loads(ws.recv(WAIT_S))).get("e") != "depthUpdate":
        pass
    return payload(msg)


def read_until_done(sim: SimulatorThread, ws: ClientConnection, venue: str) -> list[dict]:
    """Every depth event until the market stopped and its last state arrived (or
    nothing more can: the last state was withheld by drop_every)."""
    out: list[dict] = []
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            msg = payload(json.loads(ws.recv(0.2)))
        except TimeoutError:
            if sim.finished(KEYS[venue]):
                last = sim.truth(KEYS[venue])[-1]
                if last.dropped or (out and out[-1]["u"] == last.u):
                    return out
            continue
        if msg.get("e") == "depthUpdate":
            out.append(msg)
    raise AssertionError(f"the market did not finish within {WAIT_S} s")


def rest(sim: SimulatorThread, venue: str, query: str) -> tuple[int, Any, dict]:
    """(status, headers, JSON body) of a GET of the venue's depth endpoint."""
    url = f"{sim.rest_url()}{REST_PATH[venue]}?{query}"
    try:
        with urllib.request.urlopen(url, timeout=WAIT_S) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read())


def snapshot(sim: SimulatorThread, venue: str, limit: int | None = None) -> dict:
    status, headers, body = rest(sim, venue, f"symbol={SYMBOL}&limit={limit or WHOLE[venue]}")
    assert status == 200, body
    assert int(headers["X-MBX-USED-WEIGHT-1M"]) > 0
    return body


def apply(book: Book, event: dict) -> None:
    for side, levels in zip(book, (event["b"], event["a"]), strict=True):
        for price, size in levels:
            if Decimal(size) == 0:
                side.pop(price, None)
            else:
                side[price] = size


def from_levels(bids: list[list[str]], asks: list[list[str]]) -> Book:
    return dict(map(tuple, bids)), dict(map(tuple, asks))  # type: ignore[arg-type]


def as_lists(book: Book) -> tuple[list[list[str]], list[list[str]]]:
    bids = sorted(book[0].items(), key=lambda kv: -Decimal(kv[0]))
    asks = sorted(book[1].items(), key=lambda kv: Decimal(kv[0]))
    return [list(kv) for kv in bids], [list(kv) for kv in asks]


def synced(venue: str, snap: dict, events: list[dict]) -> Iterator[tuple[int, Book]]:
    """Binance's documented way to keep a local book, from a snapshot and the
    events buffered since subscribing: (u, book) after every applied event.
    Spot: drop u <= lastUpdateId; the first applied has U <= lastUpdateId + 1
    <= u, each next U == previous u + 1. Futures: drop u < lastUpdateId; the
    first applied has U <= lastUpdateId <= u, each next pu == previous u."""
    last = snap["lastUpdateId"]
    book = from_levels(snap["bids"], snap["asks"])
    prev: int | None = None
    for event in events:
        if venue == SPOT:
            if event["u"] <= last:
                continue
            bridged = event["U"] <= last + 1 <= event["u"]
            assert bridged if prev is None else event["U"] == prev + 1, (last, prev, event)
        else:
            if event["u"] < last:
                continue
            bridged = event["U"] <= last <= event["u"]
            assert bridged if prev is None else event["pu"] == prev, (last, prev, event)
        apply(book, event)
        prev = event["u"]
        yield prev, book


def drain(ws: ClientConnection, quiet_s: float) -> list[dict]:
    """The depth events that arrive until none has for `quiet_s`."""
    out = []
    with contextlib.suppress(TimeoutError):
        while True:
            msg = payload(json.loads(ws.recv(quiet_s)))
            if msg.get("e") == "depthUpdate":
                out.append(msg)
    return out


def by_u(sim: SimulatorThread, venue: str) -> dict[int, TruthState]:
    return {state.u: state for state in sim.truth(KEYS[venue])}


def breaks(venue: str, events: list[dict]) -> list[tuple[dict, dict]]:
    """Consecutive events that do not chain as the venue documents."""
    if venue == SPOT:
        return [(a, b) for a, b in itertools.pairwise(events) if b["U"] != a["u"] + 1]
    return [(a, b) for a, b in itertools.pairwise(events) if b["pu"] != a["u"]]


# -- requests ------------------------------------------------------------------


def test_subscribe_list_unsubscribe_and_the_error_answers() -> None:
    with running(deltas=20) as sim, streaming(sim, SPOT) as ws:
        assert request(ws, "SUBSCRIBE", [STREAM, "btcusdt@trade"], 7) == {"result": None, "id": 7}
        event = next_event(ws)
        listed = request(ws, "LIST_SUBSCRIPTIONS", req_id=8)
        assert listed == {"result": [STREAM, "btcusdt@trade"], "id": 8}
        assert request(ws, "UNSUBSCRIBE", [STREAM, "btcusdt@trade"], "x") == {
            "result": None,
            "id": "x",
        }
        assert request(ws, "LIST_SUBSCRIPTIONS", req_id=9) == {"result": [], "id": 9}
        ws.send("{not json")
        errors = [answer(ws)]
        errors.append(request(ws, "SUBSCRIBE", STREAM, 4))  # params not a list
        errors.append(request(ws, "SUBSCRIBE", [STREAM, 5], 5))  # not all strings
        errors.append(request(ws, "SUBSCRIBE", ["BTCUSDT@depth"], 6))  # not lowercase
        errors.append(request(ws, "SUBSCRIBE", ["btcusdt"], 10))  # no event
        errors.append(request(ws, "SUBSCRIBE", [STREAM], -1))  # not an unsigned id
        errors.append(request(ws, "PING", [], 11))
        ws.send(json.dumps({"params": [STREAM], "id": 12}))  # no method
        errors.append(answer(ws))
        # Well formed, of a symbol not listed (or a stream spot has not): silently nothing.
        quiet = ["nopeusdt@depth@100ms", "btcusdt@depth@0ms", "btcusdt@kline_1m"]
        assert request(ws, "SUBSCRIBE", quiet, 13) == {"result": None, "id": 13}
        with pytest.raises(TimeoutError):
            ws.recv(0.5)
        assert request(ws, "LIST_SUBSCRIPTIONS", req_id=14)["result"] == quiet
    assert list(event) == SPOT_KEYS
    assert [e["id"] for e in errors] == [None, 4, 5, 6, 10, None, 11, 12]
    for error in errors:
        assert list(error) == ["error", "id"] and error["error"]["code"] == 2
        assert error["error"]["msg"].startswith("Invalid request: ")
    assert "`BTCUSDT@depth`" in errors[3]["error"]["msg"]
    assert "unknown variant `PING`" in errors[6]["error"]["msg"]


def test_streams_of_the_path_raw_and_combined_and_refused_handshakes() -> None:
    with running(deltas=30, trades_rate=50) as sim:
        url = sim.binance_url(FUTURES, raw=True) + "/btcusdt@depth@0ms/btcusdt@aggTrade"
        with sync_connect(url, max_queue=None) as ws:
            raw = [json.loads(ws.recv(WAIT_S)) for _ in range(3)]
            listed = request(ws, "LIST_SUBSCRIPTIONS")
        url = sim.binance_url(SPOT) + "?streams=btcusdt@depth/btcusdt@trade"
        public = url.replace("/binance/", "/binance/public/")  # as fstream's /public/stream
        with sync_connect(url, max_queue=None) as ws:
            combined = json.loads(ws.recv(WAIT_S))
        with sync_connect(public, max_queue=None) as ws:
            assert json.loads(ws.recv(WAIT_S))["stream"] in ("btcusdt@depth", "btcusdt@trade")
        for path, status in (("/binance/stream?streams=BTC@depth", 400), ("/binance/x", 404)):
            with pytest.raises(InvalidStatus) as refused:
                sync_connect(f"ws://127.0.0.1:{sim.sim.port}{path}").close()
            assert refused.value.response.status_code == status
    assert all(msg["e"] in ("depthUpdate", "aggTrade") and "stream" not in msg for msg in raw)
    assert listed["result"] == ["btcusdt@depth@0ms", "btcusdt@aggTrade"]
    assert list(combined) == ["stream", "data"]
    assert combined["stream"] in ("btcusdt@depth", "btcusdt@trade")


def test_ignore_unsubscribe_every_swallows_the_request() -> None:
    with running(rate=50, ignore_unsubscribe_every=1) as sim, streaming(sim, SPOT, STREAM) as ws:
        ws.send(json.dumps({"method": "UNSUBSCRIBE", "params": [STREAM], "id": 2}))
        later = [json.loads(ws.recv(WAIT_S)) for _ in range(5)]
        faults = dict(sim.sim.faults)
    assert all(msg["stream"] == STREAM for msg in later)  # no answer, data keeps coming
    assert faults == {FaultKind.IGNORED_UNSUBSCRIBE: 1}


# -- the depth stream ----------------------------------------------------------


def test_spot_events_chain_by_u_and_rebuild_the_truth() -> None:
    with running(deltas=200) as sim, streaming(sim, SPOT, STREAM) as ws:
        events = read_until_done(sim, ws, SPOT)
        truth = sim.truth(KEYS[SPOT])
    assert all(list(e) == SPOT_KEYS and e["e"] == "depthUpdate" for e in events)
    assert all(e["s"] == SYMBOL for e in events)
    assert 10**9 <= truth[0].u <= 10**10 and events[0]["U"] == truth[0].u + 1
    assert not breaks(SPOT, events)
    spans = {e["u"] - e["U"] + 1 for e in events}
    assert min(spans) >= 1 and max(spans) <= MAX_SPAN and len(spans) > 1
    assert all(b["E"] >= a["E"] for a, b in itertools.pairwise(events))
    # Each event is one recorded state (seq is u: Binance has no seq).
    assert len(truth) == len(events) + 1
    book = from_levels(truth[0].bids, truth[0].asks)
    for event, state in zip(events, truth[1:], strict=True):
        apply(book, event)
        assert (state.u, state.seq, state.ts_ms, state.dropped) == (
            event["u"],
            event["u"],
            event["E"],
            False,
        )
        assert as_lists(book) == (state.bids, state.asks)


def test_futures_events_chain_by_pu_and_may_skip_ids() -> None:
    with running(deltas=200) as sim, streaming(sim, FUTURES, STREAM) as ws:
        events = read_until_done(sim, ws, FUTURES)
        truth = sim.truth(KEYS[FUTURES])
    assert all(list(e) == FUTURES_KEYS for e in events)
    assert events[0]["pu"] == truth[0].u
    assert not breaks(FUTURES, events)
    assert all(e["U"] > e["pu"] and e["u"] >= e["U"] and e["E"] >= e["T"] for e in events)
    assert any(e["U"] > e["pu"] + 1 for e in events)  # ids skipped
    assert [e["u"] for e in events] == [s.u for s in truth[1:]]
    book = from_levels(truth[0].bids, truth[0].asks)
    for event in events:
        apply(book, event)
    assert as_lists(book) == (truth[-1].bids, truth[-1].asks)


def test_a_seed_makes_the_same_events() -> None:
    def run(seed: int) -> list[list[dict]]:
        with running(deltas=40, seed=seed) as sim:
            out = []
            for venue in (SPOT, FUTURES):
                with streaming(sim, venue, STREAM) as ws:
                    out.append([e | {"E": 0, "T": 0} for e in read_until_done(sim, ws, venue)])
            return out

    first = run(3)
    assert run(3) == first != run(4)


@pytest.mark.parametrize("venue", [SPOT, FUTURES])
def test_a_client_syncing_by_binances_procedure_has_the_truth_after_every_event(
    venue: str,
) -> None:
    # Paced (300 events over 1.5 s): flat out, the client's reader thread
    # took every event while a loaded machine answered the snapshot request,
    # which then came after all but 46 of them (CI, once).
    with running(deltas=300, rate=200) as sim, streaming(sim, venue, STREAM) as ws:
        buffered = [next_event(ws) for _ in range(5)]
        snap = snapshot(sim, venue)
        buffered += read_until_done(sim, ws, venue)
        states = by_u(sim, venue)
    state = states[snap["lastUpdateId"]]  # the answer is a recorded state
    assert (snap["bids"], snap["asks"]) == (state.bids, state.asks)
    assert snap["lastUpdateId"] >= buffered[0]["u"]  # made after the first event
    applied = 0
    for u, book in synced(venue, snap, buffered):
        assert as_lists(book) == (states[u].bids, states[u].asks)
        applied += 1
    assert applied >= 50 and u == max(states)  # the snapshot came mid-way; on to the end


def test_venues_are_books_of_their_own_and_every_depth_spelling_is_one_truth() -> None:
    bybit = "orderbook.full.BTCUSDT"
    with running(deltas=60) as sim, streaming(sim, FUTURES, "btcusdt@depth", STREAM) as ws:
        both = [json.loads(ws.recv(WAIT_S)) for _ in range(10)]
        with streaming(sim, SPOT, STREAM) as spot:
            next_event(spot)
        with sync_connect(sim.url("linear"), max_queue=None) as bws:  # Bybit, same port
            bws.send(json.dumps({"req_id": "s", "op": "subscribe", "args": [bybit]}))
            assert json.loads(bws.recv(WAIT_S))["success"] is True
            assert json.loads(bws.recv(WAIT_S))["topic"] == bybit
        read_until_done(sim, ws, FUTURES)
        truths = [
            sim.truth(f"{FUTURES}:btcusdt@{e}") for e in ("depth", "depth@0ms", "depth@100ms")
        ]
        latest = sim.latest(KEYS[FUTURES])
        url = f"{sim.rest_url()}/truth?topic={FUTURES}:btcusdt@depth"
        with urllib.request.urlopen(url, timeout=WAIT_S) as resp:
            http_truth = json.loads(resp.read())
        tops = {key: sim.latest(key) for key in (KEYS[SPOT], KEYS[FUTURES], bybit)}
        assert sim.truth(f"{SPOT}:nopeusdt@depth") == [] and sim.latest("binance:x") is None
    # Every event comes once under each name it was subscribed by.
    streams = [msg["stream"] for msg in both]
    assert streams == ["btcusdt@depth", STREAM] * 5
    assert all(a["data"] == b["data"] for a, b in zip(both[::2], both[1::2], strict=True))
    assert truths[0] == truths[1] == truths[2] and latest == truths[0][-1]
    assert http_truth == {
        "u": latest.u,
        "seq": latest.u,
        "ts": latest.ts_ms,
        "bids": latest.bids,
        "asks": latest.asks,
    }
    # A few bps apart: a cross-exchange view sees a basis.
    mids = {k: (Decimal(s.bids[0][0]) + Decimal(s.asks[0][0])) / 2 for k, s in tops.items() if s}
    assert len(set(mids.values())) == 3
    assert all(abs(m / mids[bybit] - 1) < Decimal("0.002") for m in mids.values())


# -- trades ----------------------------------------------------------------------


def test_trades_and_agg_trades() -> None:
    streams = ("btcusdt@trade", "btcusdt@aggTrade")
    with running(rate=50, trades_rate=100) as sim:
        with streaming(sim, SPOT, *streams) as ws:
            spot = [json.loads(ws.recv(WAIT_S))["data"] for _ in range(30)]
        with streaming(sim, FUTURES, "btcusdt@aggTrade") as ws:
            futures = [json.loads(ws.recv(WAIT_S))["data"] for _ in range(5)]
    trades = [t for t in spot if t["e"] == "trade"]
    aggs = [t for t in spot if t["e"] == "aggTrade"]
    assert all(list(t) == ["e", "E", "s", "t", "p", "q", "T", "m", "M"] for t in trades)
    assert all(list(a) == ["e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"] for a in aggs)
    assert [t["t"] for t in trades] == list(range(trades[0]["t"], trades[0]["t"] + len(trades)))
    for agg in aggs:  # an aggTrade is its fills: same price and side, sizes summed
        fills = [t for t in trades if agg["f"] <= t["t"] <= agg["l"]]
        if len(fills) == agg["l"] - agg["f"] + 1:
            assert {(t["p"], t["m"]) for t in fills} == {(agg["p"], agg["m"])}
            assert sum(Decimal(t["q"]) for t in fills) == Decimal(agg["q"])
    assert all(b["a"] == a["a"] + 1 and b["f"] == a["l"] + 1 for a, b in itertools.pairwise(aggs))
    assert all(list(a) == ["e", "E", "s", "a", "p", "q", "f", "l", "T", "m"] for a in futures), (
        futures[0]
    )


# -- stream faults ---------------------------------------------------------------


@pytest.mark.parametrize("venue", [SPOT, FUTURES])
def test_drop_every_breaks_the_chain_and_truth_has_the_state(venue: str) -> None:
    with running(deltas=100, drop_every=7) as sim, streaming(sim, venue, STREAM) as ws:
        events = read_until_done(sim, ws, venue)
        truth = sim.truth(KEYS[venue])
        faults = dict(sim.sim.faults)
    dropped = [s.u for s in truth if s.dropped]
    assert dropped and len(dropped) == faults[FaultKind.DROP] == len(truth[1:]) // 7
    received = {e["u"] for e in events}
    assert not set(dropped) & received
    # Each break sits where a state was withheld (none if it was the last).
    gaps = breaks(venue, events)
    assert [b["u"] for _, b in gaps] == [
        s.u for prev, s in itertools.pairwise(truth) if prev.dropped and s.u in received
    ]


@pytest.mark.parametrize("venue", [SPOT, FUTURES])
def test_a_pu_break_is_a_broken_chain_though_nothing_was_lost(venue: str) -> None:
    with running(deltas=100, binance_pu_break_every=10) as sim:
        with streaming(sim, venue, STREAM) as ws:
            events = read_until_done(sim, ws, venue)
        truth = sim.truth(KEYS[venue])
        faults = dict(sim.sim.faults)
    gaps = breaks(venue, events)
    assert len(gaps) == faults[BinanceFault.PU_BREAK] == len(events) // 10 and not any(
        s.dropped for s in truth
    )
    if venue == SPOT:
        assert all(b["U"] == a["u"] + 2 for a, b in gaps)
    # Every event arrived: they still rebuild the book.
    book = from_levels(truth[0].bids, truth[0].asks)
    for event in events:
        apply(book, event)
    assert as_lists(book) == (truth[-1].bids, truth[-1].asks)


def test_binance_connections_suffer_the_connection_faults() -> None:
    with running(rate=100, disconnect_every=6, malformed_every=2) as sim:
        with streaming(sim, SPOT, STREAM) as ws:
            frames = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    frames.append(ws.recv(WAIT_S))
        faults = dict(sim.sim.faults)
        log = [r.ended_by for r in sim.sim.connection_log]
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    valid = [f for f in frames if f.startswith('{"stream"') and f.endswith("}}")]
    assert len(valid) == 6 and len(frames) == 9
    assert faults == {FaultKind.DISCONNECT: 1, FaultKind.MALFORMED: 3}
    assert log == [FaultKind.DISCONNECT]


def test_conn_max_age_closes_the_connection() -> None:
    with running(rate=50, conn_max_age_s=0.5) as sim:
        with streaming(sim, FUTURES, STREAM) as ws:
            opened = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(WAIT_S)
            lived = time.monotonic() - opened
        faults = dict(sim.sim.faults)
        log = [r.ended_by for r in sim.sim.connection_log]
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "connection max age")
    assert 0.4 < lived < 3
    assert faults == {BinanceFault.MAX_AGE: 1} and log == [BinanceFault.MAX_AGE]


def test_pings_and_a_client_that_does_not_pong_is_closed() -> None:
    with running(rate=50, ping_interval_s=0.5) as sim:
        with streaming(sim, SPOT, STREAM) as ws:  # websockets pongs by itself
            time.sleep(1.2)  # two pings
            assert next_event(ws)["e"] == "depthUpdate"
        frames = silent_client(sim.sim.port, "/binance/ws")
    assert 0x9 in [opcode for opcode, _ in frames]  # a ping
    opcode, body = frames[-1]
    assert opcode == 0x8 and int.from_bytes(body[:2], "big") == 1011  # keepalive timeout


def silent_client(port: int, path: str) -> list[tuple[int, bytes]]:
    """A WebSocket client that never answers a ping: the frames it got until
    the server closed the connection, as (opcode, payload)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        assert data.startswith(b"HTTP/1.1 101")
        data = data.split(b"\r\n\r\n", 1)[1]
        while chunk := sock.recv(4096):
            data += chunk
    frames = []
    while data:  # the server's frames are unmasked and small here
        opcode, size = data[0] & 0x0F, data[1] & 0x7F
        frames.append((opcode, data[2 : 2 + size]))
        data = data[2 + size :]
    return frames


# -- REST ------------------------------------------------------------------------


def test_rest_answers_limits_and_errors() -> None:
    with running(rest_levels=20) as sim:
        spot = snapshot(sim, SPOT, limit=5)
        spot_default = rest(sim, SPOT, f"symbol={SYMBOL}")[2]
        futures = snapshot(sim, FUTURES, limit=100)  # cut at rest_levels
        errors = [
            rest(sim, SPOT, "symbol=NOPEUSDT"),
            rest(sim, FUTURES, "symbol=NOPEUSDT"),
            rest(sim, SPOT, f"symbol={SYMBOL}&limit=5001"),
            rest(sim, FUTURES, f"symbol={SYMBOL}&limit=7"),
            rest(sim, SPOT, "limit=5"),
            rest(sim, SPOT, "symbol=btcusdt"),
        ]
        truths = {venue: sim.truth(KEYS[venue]) for venue in (SPOT, FUTURES)}
        counted = dict(sim.sim.rest_requests)
        faults = dict(sim.sim.faults)
    # Nobody subscribed: the books have not moved, REST gives their first state.
    for venue, answer_ in ((SPOT, spot), (FUTURES, futures)):
        (state,) = truths[venue]
        assert answer_["lastUpdateId"] == state.u
        cut = 5 if venue == SPOT else 20
        assert (answer_["bids"], answer_["asks"]) == (state.bids[:cut], state.asks[:cut])
    assert list(spot) == ["lastUpdateId", "bids", "asks"]
    assert list(futures) == ["lastUpdateId", "E", "T", "bids", "asks"]
    assert futures["E"] >= futures["T"]
    assert len(spot_default["bids"]) == 20  # the default 100, cut at rest_levels
    assert [(status, body["code"]) for status, _, body in errors] == [
        (400, -1121),
        (400, -1121),
        (400, -1100),
        (400, -1100),
        (400, -1102),
        (400, -1100),
    ]
    assert errors[0][2]["msg"] == "Invalid symbol."
    assert counted == {
        f"{SPOT}:{SYMBOL}": 3,
        f"{FUTURES}:{SYMBOL}": 2,
        f"{SPOT}:NOPEUSDT": 1,
        f"{FUTURES}:NOPEUSDT": 1,
        f"{SPOT}:": 1,
        f"{SPOT}:btcusdt": 1,
    }
    assert faults == {}


def test_every_nth_request_is_answered_418_429_or_503() -> None:
    with running(rest_418_every=3, rest_429_every=4, rest_5xx_every=5) as sim:
        answers = [rest(sim, (SPOT, FUTURES)[i % 2], f"symbol={SYMBOL}") for i in range(12)]
        faults = dict(sim.sim.faults)
    # Counted over every request of the server; 418 first, then 429, then 503.
    statuses = [status for status, _, _ in answers]
    assert statuses == [200, 200, 418, 429, 503, 418, 200, 429, 418, 503, 200, 418]
    for status, headers, body in answers:
        if status in (418, 429):
            assert headers["Retry-After"] == "1" and body["code"] == -1003
        assert int(headers["X-MBX-USED-WEIGHT-1M"]) > 0
    assert re.fullmatch(r"Way too many requests; IP banned until \d+\.", answers[2][2]["msg"])
    assert answers[3][2]["msg"].startswith("Too many requests; ")
    assert answers[4][2]["code"] == -1008
    assert faults == {
        BinanceFault.REST_418: 4,
        FullBookFault.REST_429: 2,
        FullBookFault.REST_5XX: 2,
    }


def test_a_stale_answer_is_older_than_every_buffered_event() -> None:
    # Paced: the first client reads one event only, and at rate 0 the market
    # would wait for it to read the rest.
    with running(rate=100, rest_stale_every=2) as sim, streaming(sim, SPOT, STREAM) as first:
        next_event(first)  # the book has moved on from its first state
        with streaming(sim, SPOT, STREAM) as ws:
            buffered = [next_event(ws) for _ in range(3)]
            fresh = snapshot(sim, SPOT)  # request 1: the current state
            stale = snapshot(sim, SPOT)  # request 2: stale
        states = by_u(sim, SPOT)
        faults = dict(sim.sim.faults)
    assert fresh["lastUpdateId"] + 1 >= buffered[0]["U"]  # usable: it meets the buffer
    # Stale: no event the subscriber has bridges it, however long it waits.
    assert stale["lastUpdateId"] + 1 < buffered[0]["U"]
    state = states[stale["lastUpdateId"]]
    assert (stale["bids"], stale["asks"]) == (state.bids, state.asks)
    assert faults == {FullBookFault.REST_STALE: 1}


@pytest.mark.parametrize("venue", [SPOT, FUTURES])
def test_an_ahead_answer_is_newer_than_every_event_received(venue: str) -> None:
    with running(rate=50, deltas=20_000, rest_ahead_every=1) as sim:
        with streaming(sim, venue, STREAM) as ws:
            buffered = [next_event(ws) for _ in range(3)]
            asked = time.monotonic()
            snap = snapshot(sim, venue)
            waited = time.monotonic() - asked
            # What was sent before the answer (the held events come REST_AHEAD_RELEASE_S later).
            arrived = drain(ws, 0.1)
            buffered += arrived
            while buffered[-1]["u"] < snap["lastUpdateId"] + 5:
                buffered.append(next_event(ws))  # the held events, and on
        states = by_u(sim, venue)
        faults = dict(sim.sim.faults)
    last = snap["lastUpdateId"]
    assert all(e["u"] < last for e in buffered[: 3 + len(arrived)])
    assert waited >= 2 / 50  # at least REST_AHEAD_EVENTS steps were waited for
    assert (snap["bids"], snap["asks"]) == (states[last].bids, states[last].asks)
    # The held events follow: the documented procedure syncs.
    for u, book in synced(venue, snap, buffered):
        assert as_lists(book) == (states[u].bids, states[u].asks)
    assert faults == {BinanceFault.REST_AHEAD: 1}


def test_a_delayed_answer_holds_the_state_of_its_arrival() -> None:
    with running(rate=100, deltas=20_000, rest_delay_s=0.4) as sim:
        with streaming(sim, FUTURES, STREAM) as ws:
            next_event(ws)
            asked = time.monotonic()
            snap = snapshot(sim, FUTURES)
            waited = time.monotonic() - asked
            latest = sim.latest(KEYS[FUTURES])
        faults = dict(sim.sim.faults)
    assert latest is not None and waited >= 0.4
    assert snap["lastUpdateId"] < latest.u  # events went on meanwhile
    assert faults == {FullBookFault.REST_DELAY: 1}


# -- the CLI -------------------------------------------------------------------


def test_the_binance_fault_flags() -> None:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    flags = "--binance-pu-break-every 5 --rest-418-every 6 --rest-ahead-every 7"
    args = parser.parse_args([*flags.split(), "--conn-max-age", "30", "--ping-interval", "0"])
    config = config_from_args(args)
    assert (config.binance_pu_break_every, config.rest_418_every) == (5, 6)
    assert (config.rest_ahead_every, config.conn_max_age_s, config.ping_interval_s) == (7, 30, 0)
    assert config_from_args(parser.parse_args([])).ping_interval_s == 20
