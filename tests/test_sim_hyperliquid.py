"""The simulator's Hyperliquid venue at the protocol level: a plain WebSocket
client against a SimulatorThread that serves Bybit and Binance on the same
port, no collector. Every l2Book push is a whole top-20 snapshot; the truth
holds every published state, keyed `hyperliquid:{coin}`."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import time
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
    HYPERLIQUID,
    FaultKind,
    HyperliquidFault,
    SimulatorThread,
    TruthState,
    add_sim_arguments,
    truth_key,
)
from depthwatch.sim.config import config_from_args

from .e2e import one_symbol_sim

SYMBOL = "BTCUSDT"
COIN = "BTC"
KEY = truth_key(HYPERLIQUID, COIN)
WAIT_S = 10.0
L2_ACK: dict[str, Any] = {
    "channel": "subscriptionResponse",
    "data": {
        "method": "subscribe",
        "subscription": {"type": "l2Book", "coin": COIN, "nSigFigs": None, "mantissa": None},
    },
}


def running(**overrides: Any) -> contextlib.AbstractContextManager[SimulatorThread]:
    return one_symbol_sim(SYMBOL, **overrides)


def sub(kind: str = "l2Book", coin: str = COIN, method: str = "subscribe", **extra: Any) -> str:
    return json.dumps({"method": method, "subscription": {"type": kind, "coin": coin, **extra}})


def control(ws: ClientConnection) -> dict:
    """The next frame that is not a push (an ack, an error, a pong)."""
    while (msg := json.loads(ws.recv(WAIT_S)))["channel"] in ("l2Book", "trades"):
        pass
    return msg


@contextmanager
def connected(sim: SimulatorThread, *kinds: str) -> Iterator[ClientConnection]:
    """A connection subscribed to COIN's `kinds`, each ack checked."""
    # max_queue=None: an unread backlog would pause the client's reads and stall its close.
    with sync_connect(sim.hyperliquid_url(), max_queue=None) as ws:
        for kind in kinds:
            ws.send(sub(kind))
            assert control(ws)["channel"] == "subscriptionResponse"
        yield ws


def read_until_done(sim: SimulatorThread, ws: ClientConnection) -> list[str]:
    """Every l2Book frame (raw) until the market stopped and its last state
    arrived (or nothing more can: the last state was withheld by drop_every)."""
    out: list[str] = []
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            frame = ws.recv(0.2)
        except TimeoutError:
            if sim.finished(KEY):
                last = sim.truth(KEY)[-1]
                if last.dropped or (out and book_of(out[-1])["time"] == last.seq):
                    return out
            continue
        assert isinstance(frame, str)
        if frame.startswith('{"channel":"l2Book"'):
            out.append(frame)
    raise AssertionError(f"the market did not finish within {WAIT_S} s")


def book_of(frame: str | bytes) -> dict:
    msg = json.loads(frame)
    assert list(msg) == ["channel", "data"] and msg["channel"] == "l2Book"
    return msg["data"]


def levels(data: dict) -> tuple[list[list[str]], list[list[str]]]:
    """A push's book as the truth holds it: [price, size] lists, best first."""
    bids, asks = data["levels"]
    return [[lv["px"], lv["sz"]] for lv in bids], [[lv["px"], lv["sz"]] for lv in asks]


def by_seq(sim: SimulatorThread) -> dict[int, TruthState]:
    return {state.seq: state for state in sim.truth(KEY)}


# -- requests ------------------------------------------------------------------


def test_acks_errors_and_pong_and_the_socket_stays_open() -> None:
    with running(symbols=(SYMBOL, "ETHUSDC"), deltas=20) as sim:
        with sync_connect(sim.hyperliquid_url(), max_queue=None) as ws:
            ws.send(sub())
            acks = [json.loads(ws.recv(WAIT_S))]
            first = book_of(ws.recv(WAIT_S))  # right after the ack: the current book
            ws.send(sub("trades"))
            acks.append(control(ws))
            backlog = json.loads(ws.recv(WAIT_S))  # right after its ack
            ws.send(sub(coin="ETH"))  # ETHUSDC's coin
            acks.append(control(ws))
            ws.send('{"method":"ping"}')
            pong = control(ws)
            requests = [
                "{not json",
                '["subscribe"]',
                '{"method":"subscribe"}',
                '{"method":"hello","subscription":{"type":"l2Book","coin":"BTC"}}',
                sub("candle"),
                '{"method":"subscribe","subscription":{"type":"l2Book"}}',
                sub(coin="XYZ"),
                sub(coin="btc"),
                sub(coin=SYMBOL),
                sub(nSigFigs=5),
                sub(mantissa=2),
                sub(fast=True),
                sub(),  # again
                sub("trades", coin="XYZ", method="unsubscribe"),
            ]
            errors = []
            for request in requests:
                ws.send(request)
                errors.append(control(ws))
            ws.send(sub(method="unsubscribe", nSigFigs=None))
            unsubscribed = control(ws)
            ws.send(sub(method="unsubscribe"))
            errors.append(control(ws))  # not subscribed any more
            ws.send(sub("trades", coin="ETH", method="unsubscribe"))
            errors.append(control(ws))
            ws.send('{"method":"ping"}')
            assert control(ws) == {"channel": "pong"}  # still open
        pings = sim.sim.pings_received
        faults = dict(sim.sim.faults)
    assert acks[0] == L2_ACK
    assert acks[1] == {
        "channel": "subscriptionResponse",
        "data": {"method": "subscribe", "subscription": {"type": "trades", "coin": COIN}},
    }
    assert acks[2]["data"]["subscription"]["coin"] == "ETH"
    assert first["coin"] == COIN and len(first["levels"][0]) == 20
    assert backlog == {"channel": "trades", "data": []}  # no trade yet (trades_rate 0)
    assert pong == {"channel": "pong"} and pings == 2
    assert unsubscribed == {
        "channel": "subscriptionResponse",
        "data": {"method": "unsubscribe", "subscription": L2_ACK["data"]["subscription"]},
    }
    assert all(list(e) == ["channel", "data"] and e["channel"] == "error" for e in errors)
    texts = [e["data"] for e in errors]
    assert texts[:6] == [
        f"Error parsing JSON into valid websocket request: {r}" for r in requests[:6]
    ]
    assert texts[6] == 'Invalid subscription {"type":"l2Book","coin":"XYZ"}'
    assert all(t.startswith("Invalid subscription {") for t in texts[7:12])
    assert texts[12] == 'Already subscribed: {"type":"l2Book","coin":"BTC"}'
    assert texts[13] == 'Invalid subscription {"type":"trades","coin":"XYZ"}'
    assert texts[14] == 'Already unsubscribed: {"type":"l2Book","coin":"BTC"}'
    assert texts[15] == 'Already unsubscribed: {"type":"trades","coin":"ETH"}'
    assert faults == {}


def test_unsubscribing_stops_the_pushes_and_other_paths_are_refused() -> None:
    with running(rate=100) as sim, connected(sim, "l2Book") as ws:
        book_of(ws.recv(WAIT_S))
        ws.send(sub(method="unsubscribe"))
        assert control(ws)["data"]["method"] == "unsubscribe"
        with pytest.raises(TimeoutError):
            ws.recv(0.3)
        with pytest.raises(InvalidStatus) as refused:
            sync_connect(f"ws://127.0.0.1:{sim.sim.port}/hyperliquid/stream").close()
    assert refused.value.response.status_code == 404


# -- l2Book ----------------------------------------------------------------------


def test_a_whole_snapshot_every_step_with_time_rising_and_the_truth_of_each() -> None:
    deltas = 200
    with running(deltas=deltas) as sim, connected(sim, "l2Book") as ws:
        frames = read_until_done(sim, ws)
        truth = sim.truth(KEY)
        latest = sim.latest(KEY)
        with urllib.request.urlopen(f"{sim.rest_url()}/truth?topic={KEY}", timeout=5) as resp:
            http_truth = json.loads(resp.read())
        assert sim.finished(KEY) and sim.truth("hyperliquid:XYZ") == []
    pushes = [book_of(frame) for frame in frames]
    # The join snapshot (the first state), then one a step, changed or not.
    assert len(pushes) == len(truth) == deltas + 1
    assert [s.u for s in truth] == list(range(1, deltas + 2))
    assert all(a["time"] < b["time"] for a, b in itertools.pairwise(pushes))
    for push, state in zip(pushes, truth, strict=True):
        assert list(push) == ["coin", "time", "levels"] and push["coin"] == COIN
        bids, asks = push["levels"]
        assert len(bids) == len(asks) == 20
        assert all(list(lv) == ["px", "sz", "n"] for lv in bids + asks)
        assert all(isinstance(lv["n"], int) and 1 <= lv["n"] <= 3 for lv in bids + asks)
        bid_px, ask_px = [Decimal(lv["px"]) for lv in bids], [Decimal(lv["px"]) for lv in asks]
        assert bid_px == sorted(bid_px, reverse=True) and ask_px == sorted(ask_px)
        assert bid_px[0] < ask_px[0] and len(set(bid_px)) == 20
        # A client replacing its book with every push has the truth of the same seq.
        assert (state.seq, state.ts_ms, state.dropped) == (push["time"], push["time"], False)
        assert levels(push) == (state.bids, state.asks)
    assert latest == truth[-1]
    assert http_truth == {
        "u": latest.u,
        "seq": latest.seq,
        "ts": latest.ts_ms,
        "bids": latest.bids,
        "asks": latest.asks,
    }
    assert KEY == "hyperliquid:BTC" == truth_key(HYPERLIQUID, SYMBOL)
    # Its own market, ~9 bps over Bybit's BTCUSDT start price (60000).
    mid = (Decimal(truth[0].bids[0][0]) + Decimal(truth[0].asks[0][0])) / 2
    assert abs(mid / 60000 - Decimal("1.0009")) < Decimal("0.0002")


def test_a_seed_makes_the_same_books() -> None:
    def run(seed: int) -> list[tuple]:
        with running(deltas=30, seed=seed) as sim, connected(sim, "l2Book") as ws:
            return [levels(book_of(frame)) for frame in read_until_done(sim, ws)]

    first = run(3)
    assert run(3) == first != run(4)


# -- trades ----------------------------------------------------------------------


def trades_of(ws: ClientConnection) -> list[dict]:
    while (msg := json.loads(ws.recv(WAIT_S)))["channel"] != "trades":
        pass
    return msg["data"]


def test_trades_and_the_backlog_a_new_subscriber_gets_first() -> None:
    with running(rate=50, trades_rate=50) as sim, connected(sim, "trades") as ws:
        assert trades_of(ws) == []  # nothing traded yet
        seen: list[dict] = []
        while len(seen) < 15:
            seen += trades_of(ws)
        with connected(sim, "trades") as late:
            backlog = trades_of(late)
            live = trades_of(late)
        while live[0] not in seen:
            seen += trades_of(ws)
    for trade in seen:
        assert list(trade) == ["coin", "side", "px", "sz", "time", "hash", "tid", "users"]
        assert trade["coin"] == COIN and trade["side"] in ("B", "A")
        assert Decimal(trade["px"]) > 0 and Decimal(trade["sz"]) > 0
        assert re.fullmatch(r"0x[0-9a-f]{64}", trade["hash"])
        assert isinstance(trade["tid"], int) and 0 <= trade["tid"] < 2**50
        assert len(trade["users"]) == 2
        assert all(re.fullmatch(r"0x[0-9a-f]{40}", user) for user in trade["users"])
    assert {t["side"] for t in seen} == {"B", "A"}
    # The late subscriber's first push: the last 10 trades sent before it joined.
    i = seen.index(live[0])
    assert len(backlog) == 10 and backlog == seen[i - 10 : i]
    # The fills of one push share a hash and a time (one taker order).
    assert len({(t["hash"], t["time"], t["side"], t["px"]) for t in live}) == 1


# -- faults ----------------------------------------------------------------------


def test_drop_every_sends_a_snapshot_to_nobody_and_truth_flags_it() -> None:
    with running(deltas=100, drop_every=7) as sim, connected(sim, "l2Book") as ws:
        pushes = [book_of(frame) for frame in read_until_done(sim, ws)]
        truth = sim.truth(KEY)
        faults = dict(sim.sim.faults)
    dropped = [s.seq for s in truth if s.dropped]
    assert len(dropped) == 100 // 7 == faults[FaultKind.DROP] and len(truth) == 101
    assert [p["time"] for p in pushes] == [s.seq for s in truth if not s.dropped]
    states = {s.seq: s for s in truth}
    assert all(levels(p) == (states[p["time"]].bids, states[p["time"]].asks) for p in pushes)


def test_repeat_every_sends_a_snapshot_twice_in_a_row() -> None:
    with running(deltas=50, hyperliquid_repeat_every=5) as sim, connected(sim, "l2Book") as ws:
        frames = read_until_done(sim, ws)
        truth = sim.truth(KEY)
        faults = dict(sim.sim.faults)
    assert len(truth) == 51 and not any(s.dropped for s in truth)  # truth has each once
    assert len(frames) == 51 + 10 and faults == {HyperliquidFault.REPEAT: 10}
    repeated = [i for i, (a, b) in enumerate(itertools.pairwise(frames)) if a == b]
    # Frame 0 is the join snapshot; step snapshot k is sent twice when k % 5 == 0.
    assert [book_of(frames[i])["time"] for i in repeated] == [s.seq for s in truth[5::5]]
    assert [book_of(f)["time"] for f in dict.fromkeys(frames)] == [s.seq for s in truth]


def test_a_frozen_book_resends_one_snapshot_while_the_market_moves() -> None:
    config = dict(rate=50, deltas=60, hyperliquid_freeze_after=5, hyperliquid_freeze_seconds=0.5)
    with running(**config) as sim, connected(sim, "l2Book") as ws:
        frames = read_until_done(sim, ws)
        truth = sim.truth(KEY)
        faults = dict(sim.sim.faults)
    frozen = truth[5]  # the 5th step snapshot (truth[0] is the first state)
    copies = [i for i, f in enumerate(frames) if book_of(f)["time"] == frozen.seq]
    # Sent, then re-sent byte for byte every step for 0.5 s (~25 steps at 50/s).
    assert copies == list(range(copies[0], copies[0] + len(copies))) and len(copies) >= 15
    assert len(set(frames[i] for i in copies)) == 1
    assert levels(book_of(frames[copies[0]])) == (frozen.bids, frozen.asks)
    # Truth: nothing published meanwhile; then the current book, time moved on.
    after = book_of(frames[copies[-1] + 1])
    assert (truth[6].u, truth[6].seq) == (frozen.u + 1, after["time"])
    assert after["time"] - frozen.seq >= 450
    assert levels(after) == (truth[6].bids, truth[6].asks) != (frozen.bids, frozen.asks)
    assert len(frames) == 61 and len(truth) == 61 - len(copies) + 1
    assert faults == {HyperliquidFault.FREEZE: 1}
    # A client replacing its book with each push: the truth of the same seq.
    states = by_seq(sim)
    for frame in frames:
        push = book_of(frame)
        assert levels(push) == (states[push["time"]].bids, states[push["time"]].asks)


def test_an_idle_connection_is_closed_and_pings_keep_one_open() -> None:
    with running(rate=20, hyperliquid_idle_timeout_s=0.5) as sim:
        with connected(sim, "l2Book") as idle, sync_connect(sim.hyperliquid_url()) as pinging:
            for _ in range(8):  # 1.6 s, pushes flowing to `idle` all the while
                pinging.send('{"method":"ping"}')
                assert json.loads(pinging.recv(WAIT_S)) == {"channel": "pong"}
                time.sleep(0.2)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    idle.recv(WAIT_S)
            pinging.send('{"method":"ping"}')
            assert json.loads(pinging.recv(WAIT_S)) == {"channel": "pong"}  # still open
        faults = dict(sim.sim.faults)
        log = list(sim.sim.connection_log)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "idle")
    assert faults == {HyperliquidFault.IDLE: 1}
    assert [r.ended_by for r in log] == [HyperliquidFault.IDLE, None]
    lived_s = (log[0].closed_us - log[0].opened_us) / 1e6
    assert 0.45 < lived_s < 1.2  # the subscription was its last word


def test_hyperliquid_connections_suffer_the_connection_faults() -> None:
    with running(rate=100, disconnect_every=6, malformed_every=2) as sim:
        with connected(sim, "l2Book") as ws:
            frames = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    frames.append(ws.recv(WAIT_S))
        faults = dict(sim.sim.faults)
        log = [r.ended_by for r in sim.sim.connection_log]
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    valid = [f for f in frames if isinstance(f, str) and f.endswith("]]}}")]
    assert len(valid) == 6 and len(frames) == 9
    assert faults == {FaultKind.DISCONNECT: 1, FaultKind.MALFORMED: 3}
    assert log == [FaultKind.DISCONNECT]


def test_the_hyperliquid_flags() -> None:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    flags = "--hyperliquid-repeat-every 3 --hyperliquid-freeze-after 4"
    flags += " --hyperliquid-freeze-seconds 2.5 --hyperliquid-idle-timeout 30"
    config = config_from_args(parser.parse_args(flags.split()))
    assert (config.hyperliquid_repeat_every, config.hyperliquid_freeze_after) == (3, 4)
    assert (config.hyperliquid_freeze_seconds, config.hyperliquid_idle_timeout_s) == (2.5, 30)
    default = config_from_args(parser.parse_args([]))
    assert (default.hyperliquid_repeat_every, default.hyperliquid_freeze_after) == (0, 0)
    assert default.hyperliquid_idle_timeout_s == 60
