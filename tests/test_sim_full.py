"""The simulator's whole book (`orderbook.full.{symbol}` deltas and the REST
snapshot of GET /v5/market/full_orderbook) at the protocol level: a plain
WebSocket client and http.client against a SimulatorThread, no collector."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from depthwatch.feed.bybit.topics import FULL_BOOK_PATH, FULL_SNAPSHOT_LEVELS
from depthwatch.sim import FaultKind, FullBookFault, SimulatorThread, TruthState

from .e2e import one_symbol_sim

SYMBOL = "BTCUSDT"
FULL = f"orderbook.full.{SYMBOL}"
WAIT_S = 20.0  # the longest any condition is waited for

Book = tuple[dict[str, str], dict[str, str]]  # bids, asks: price -> size


def running(**overrides: Any) -> contextlib.AbstractContextManager[SimulatorThread]:
    return one_symbol_sim(SYMBOL, **overrides)


@contextmanager
def subscribed(
    sim: SimulatorThread, category: str = "spot", topic: str = FULL
) -> Iterator[ClientConnection]:
    # max_queue=None: an unread backlog would pause the client's reads and stall its close.
    with sync_connect(sim.url(category), max_queue=None) as ws:
        ws.send(json.dumps({"req_id": "s", "op": "subscribe", "args": [topic]}))
        ack = json.loads(ws.recv(WAIT_S))
        assert ack["success"] is True, ack
        yield ws


def next_delta(ws: ClientConnection) -> dict:
    while "topic" not in (msg := json.loads(ws.recv(WAIT_S))):
        pass
    assert msg["topic"] == FULL
    return msg


def read_until_done(sim: SimulatorThread, ws: ClientConnection) -> list[dict]:
    """Every message until the market stopped and its last state arrived (or
    nothing more can: the last state was withheld by drop_every)."""
    out: list[dict] = []
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            msg = json.loads(ws.recv(0.2))
        except TimeoutError:
            if sim.finished(FULL):
                last = sim.truth(FULL)[-1]
                if last.dropped or (out and out[-1]["data"]["seq"] == last.seq):
                    return out
            continue
        if msg.get("topic") == FULL:
            out.append(msg)
    raise AssertionError(f"the market did not finish within {WAIT_S} s")


def rest(sim: SimulatorThread, symbol: str = SYMBOL, category: str = "spot") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(sim.sim.config.host, sim.sim.port, timeout=WAIT_S)
    try:
        conn.request("GET", f"{FULL_BOOK_PATH}?category={category}&symbol={symbol}")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def snapshot(sim: SimulatorThread, category: str = "spot") -> dict:
    """A successful REST snapshot's `result`."""
    status, body = rest(sim, category=category)
    assert status == 200, (status, body)
    answer = json.loads(body)
    assert answer["retCode"] == 0 and answer["retMsg"] == "OK", answer
    assert list(answer) == ["retCode", "retMsg", "result", "retExtInfo", "time"]
    assert list(answer["result"]) == ["s", "b", "a", "ts", "u", "seq", "cts"]
    return answer["result"]


def apply(book: Book, data: dict) -> None:
    for side, levels in zip(book, (data["b"], data["a"]), strict=True):
        for price, size in levels:
            if Decimal(size) == 0:
                side.pop(price, None)
            else:
                side[price] = size


def from_levels(bids: list[list[str]], asks: list[list[str]]) -> Book:
    return {p: s for p, s in bids}, {p: s for p, s in asks}


def as_lists(book: Book) -> tuple[list[list[str]], list[list[str]]]:
    bids = sorted(book[0].items(), key=lambda kv: -Decimal(kv[0]))
    asks = sorted(book[1].items(), key=lambda kv: Decimal(kv[0]))
    return [list(kv) for kv in bids], [list(kv) for kv in asks]


def assert_deltas_rebuild_the_last_state(msgs: list[dict], truth: list[TruthState]) -> None:
    """The first state plus every delta received is the last state."""
    book = from_levels(truth[0].bids, truth[0].asks)
    for msg in msgs:
        apply(book, msg["data"])
    assert as_lists(book) == (truth[-1].bids, truth[-1].asks)


def by_seq(sim: SimulatorThread) -> dict[int, TruthState]:
    return {state.seq: state for state in sim.truth(FULL)}


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- the stream ------------------------------------------------------------------


def test_no_snapshot_on_subscribe_deltas_chain_by_u_and_rebuild_the_truth() -> None:
    with running(deltas=150) as sim, subscribed(sim) as ws:
        msgs = read_until_done(sim, ws)
        truth = sim.truth(FULL)
        market_book = sim.sim.markets[SYMBOL].book.top(10**6)  # the market has stopped
    assert all(m["type"] == "delta" for m in msgs)  # not even the first
    assert list(msgs[0]) == ["topic", "ts", "type", "data", "cts"]  # spot's key order
    assert list(msgs[0]["data"]) == ["s", "b", "a", "u", "seq"]
    us = [m["data"]["u"] for m in msgs]
    seqs = [m["data"]["seq"] for m in msgs]
    assert us == list(range(truth[0].u + 1, truth[0].u + 1 + len(msgs)))
    assert all(b > a for a, b in itertools.pairwise(seqs))
    # From the topic's first state, every delta leads to the truth state of its seq.
    states = by_seq(sim)
    book = from_levels(truth[0].bids, truth[0].asks)
    for msg in msgs:
        apply(book, msg["data"])
        state = states[msg["data"]["seq"]]
        assert (state.u, state.dropped) == (msg["data"]["u"], False)
        assert as_lists(book) == (state.bids, state.asks)
    assert len(truth) == len(msgs) + 1
    # The truth is the model's own book, not only the topic's account of it.
    assert (truth[-1].bids, truth[-1].asks) == market_book
    assert len(truth[-1].bids) >= 200 and len(truth[-1].asks) >= 200


def test_linear_key_order_and_no_depth_one_resends() -> None:
    with running(rate=20, deltas=30, level1_resend_s=0.2) as sim, subscribed(sim, "linear") as ws:
        msgs = read_until_done(sim, ws)
        # Idle after the last step: the level-1 resend loop has nothing to send.
        try:
            extra = json.loads(ws.recv(1.0))
        except TimeoutError:
            extra = None
    assert extra is None
    assert list(msgs[0]) == ["topic", "type", "ts", "data", "cts"]
    assert all(m["type"] == "delta" for m in msgs)


def test_rest_snapshot_plus_buffered_deltas_rebuild_the_truth() -> None:
    with running(deltas=200) as sim, subscribed(sim) as ws:
        buffered = [next_delta(ws) for _ in range(5)]
        snap = snapshot(sim)
        buffered += read_until_done(sim, ws)
        latest = sim.latest(FULL)
        http_truth = rest_truth(sim)
        assert sim.sim.rest_requests == {SYMBOL: 1}
    assert latest is not None
    assert snap["s"] == SYMBOL and snap["cts"] == snap["ts"] - 1
    state = by_seq(sim)[snap["seq"]]  # the snapshot's (u, seq) are its delta's
    assert (snap["u"], snap["b"], snap["a"]) == (state.u, state.bids, state.asks)
    # Stitched by u: the buffer's deltas after the snapshot, none missing.
    later = [m["data"] for m in buffered if m["data"]["u"] > snap["u"]]
    assert [d["u"] for d in later] == list(range(snap["u"] + 1, snap["u"] + 1 + len(later)))
    book = from_levels(snap["b"], snap["a"])
    for data in later:
        apply(book, data)
    assert as_lists(book) == (latest.bids, latest.asks)
    assert http_truth == {
        "u": latest.u,
        "seq": latest.seq,
        "ts": latest.ts_ms,
        "bids": latest.bids,
        "asks": latest.asks,
    }


def rest_truth(sim: SimulatorThread) -> dict:
    conn = http.client.HTTPConnection(sim.sim.config.host, sim.sim.port, timeout=WAIT_S)
    try:
        conn.request("GET", f"/truth?topic={FULL}")
        response = conn.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        conn.close()


def test_rest_levels_cut_the_snapshot_and_rest_alone_creates_the_topic() -> None:
    with running(book_levels=300, rest_levels=120) as sim:
        snap = snapshot(sim)  # nobody subscribed: the topic is made for the request
        truth = sim.truth(FULL)
        whole = rest_truth(sim)
    assert len(truth) == 1 and truth[0].u == snap["u"] and truth[0].seq == snap["seq"]
    assert len(truth[0].bids) >= 300 and len(truth[0].asks) >= 300
    assert (snap["b"], snap["a"]) == (truth[0].bids[:120], truth[0].asks[:120])
    assert (whole["bids"], whole["asks"]) == (truth[0].bids, truth[0].asks)


def test_rest_errors_are_http_200_with_a_ret_code() -> None:
    with running() as sim:
        status, body = rest(sim, symbol="NOPEUSDT")
        unknown = json.loads(body)
        option = json.loads(rest(sim, category="option")[1])
        missing = json.loads(rest(sim, category="")[1])
        counted = dict(sim.sim.rest_requests)
        faults = dict(sim.sim.faults)
    assert status == 200
    assert (unknown["retCode"], unknown["retMsg"]) == (10001, "params error: symbol invalid")
    assert option["retCode"] == missing["retCode"] == 10001
    assert counted == {"NOPEUSDT": 1, SYMBOL: 2}
    assert faults == {}  # Bybit has no option full book: not a fault


def test_full_categories_refuse_the_others() -> None:
    with running(full_categories=("spot",), deltas=10) as sim:
        with sync_connect(sim.url("linear"), max_queue=None) as ws:
            ws.send(json.dumps({"req_id": "x", "op": "subscribe", "args": [FULL]}))
            ack = json.loads(ws.recv(WAIT_S))
        with sync_connect(sim.url("option"), max_queue=None) as ws:
            ws.send(json.dumps({"req_id": "o", "op": "subscribe", "args": [FULL]}))
            option_ack = json.loads(ws.recv(WAIT_S))
        linear = json.loads(rest(sim, category="linear")[1])
        spot = json.loads(rest(sim, category="spot")[1])
        with subscribed(sim, "spot") as ws:  # spot still has it
            assert next_delta(ws)["data"]["s"] == SYMBOL
        faults = dict(sim.sim.faults)
        log = [(f.kind, f.topic, bool(f.conn_id)) for f in sim.sim.fault_log]
    assert ack["success"] is False
    assert ack["ret_msg"] == f"error:handler not found,topic:{FULL}"
    assert option_ack["success"] is False and option_ack["data"]["failTopics"] == [FULL]
    assert (linear["retCode"], linear["retMsg"]) == (10001, "params error: category invalid")
    assert spot["retCode"] == 0
    assert faults == {FullBookFault.REFUSED: 2}  # linear's two; option's is Bybit's own
    assert log == [(FullBookFault.REFUSED, FULL, True), (FullBookFault.REFUSED, FULL, False)]


# -- the REST faults -----------------------------------------------------------


def test_every_nth_request_is_answered_429_or_503() -> None:
    with running(rest_429_every=3, rest_5xx_every=4) as sim:
        answers = [rest(sim) for _ in range(12)]
        faults = dict(sim.sim.faults)
        assert sim.sim.rest_requests == {SYMBOL: 12}
    statuses = [status for status, _ in answers]
    # Counted over every request; 429 is checked first (the 12th is both).
    assert statuses == [200, 200, 429, 503, 200, 429, 200, 503, 429, 200, 200, 429]
    assert json.loads(answers[2][1]) == {"retCode": 10006, "retMsg": "Too many visits!"}
    assert all(json.loads(body)["retCode"] == 0 for status, body in answers if status == 200)
    assert faults == {FullBookFault.REST_429: 4, FullBookFault.REST_5XX: 2}


def test_a_stale_answer_is_older_than_every_buffered_delta() -> None:
    # Paced: the first client reads one delta only, and at rate 0 the market
    # would wait for it to read the rest.
    with running(rate=100, rest_stale_every=2) as sim, subscribed(sim) as first:
        next_delta(first)  # the topic has moved on from its first state
        with subscribed(sim) as ws:
            buffered = [next_delta(ws) for _ in range(3)]
            fresh = snapshot(sim)  # request 1: the current state
            stale = snapshot(sim)  # request 2: stale
            buffered.append(next_delta(ws))
        states = by_seq(sim)
        faults = dict(sim.sim.faults)
        logged = [(f.kind, f.seq) for f in sim.sim.fault_log]
    first_u = buffered[0]["data"]["u"]
    assert fresh["u"] >= first_u - 1  # usable: it meets the buffer
    # Stale: the state before the one this subscriber joined at, so one delta
    # is missing between it and the buffer however long the client waits.
    assert stale["u"] == first_u - 2 and stale["seq"] < buffered[0]["data"]["seq"]
    state = states[stale["seq"]]
    assert (stale["u"], stale["b"], stale["a"]) == (state.u, state.bids, state.asks)
    assert faults == {FullBookFault.REST_STALE: 1}
    assert logged == [(FullBookFault.REST_STALE, stale["seq"])]


def test_a_mismatched_answer_has_the_seq_of_a_delta_but_not_its_u() -> None:
    with running(deltas=40, rest_mismatch_every=1) as sim, subscribed(sim) as ws:
        msgs = read_until_done(sim, ws)
        answer = snapshot(sim)
        latest = sim.latest(FULL)
        faults = dict(sim.sim.faults)
    assert latest is not None
    delta = {m["data"]["seq"]: m["data"] for m in msgs}[answer["seq"]]
    assert answer["seq"] == latest.seq and delta["u"] == latest.u
    assert answer["u"] == latest.u + 1 != delta["u"]
    assert (answer["b"], answer["a"]) == (latest.bids, latest.asks)
    assert faults == {FullBookFault.REST_MISMATCH: 1}


def test_a_delayed_answer_holds_the_state_of_its_arrival() -> None:
    delay = 0.5
    with running(rate=200, deltas=20_000, rest_delay_s=delay) as sim, subscribed(sim) as ws:
        before = next_delta(ws)["data"]
        asked = time.monotonic()
        snap = snapshot(sim)
        waited = time.monotonic() - asked
        latest = sim.latest(FULL)  # when the answer came
        later = next_delta(ws)["data"]
        while later["u"] <= snap["u"]:
            later = next_delta(ws)["data"]
        state = by_seq(sim)[snap["seq"]]
        faults = dict(sim.sim.faults)
    assert latest is not None
    assert waited >= delay
    # Newer than the first buffered delta, older than what was pushed meanwhile.
    assert before["u"] <= snap["u"] < latest.u
    assert (snap["b"], snap["a"]) == (state.bids, state.asks)
    assert faults == {FullBookFault.REST_DELAY: 1}


# -- the stream's faults -------------------------------------------------------


def test_drop_every_leaves_u_gaps_in_the_full_topic() -> None:
    with running(deltas=80, drop_every=7) as sim, subscribed(sim) as ws:
        msgs = read_until_done(sim, ws)
        truth = sim.truth(FULL)
        faults = dict(sim.sim.faults)
    us = [m["data"]["u"] for m in msgs]
    gaps = [b - a for a, b in itertools.pairwise(us) if b != a + 1]
    dropped = [s.u for s in truth if s.dropped]
    assert dropped and len(dropped) == faults[FaultKind.DROP] == len(truth[1:]) // 7
    assert set(gaps) == {2} and len(gaps) == len([u for u in dropped if u < us[-1]])
    assert not set(dropped) & set(us)


def test_restart_every_is_a_u1_delta_carrying_the_step_and_rest_follows() -> None:
    with running(deltas=60, restart_every=25) as sim, subscribed(sim) as ws:
        msgs = read_until_done(sim, ws)
        snap = snapshot(sim)
        truth = sim.truth(FULL)
        faults = dict(sim.sim.faults)
    restarts = [i for i, m in enumerate(msgs) if m["data"]["u"] == 1]
    assert len(restarts) == faults[FaultKind.RESTART] == (len(truth) - 1) // 25 >= 2
    for i in restarts:
        assert msgs[i]["type"] == "delta" and (msgs[i]["data"]["b"] or msgs[i]["data"]["a"])
    seqs = [m["data"]["seq"] for m in msgs]
    assert all(b > a for a, b in itertools.pairwise(seqs))
    tail = [m["data"]["u"] for m in msgs[restarts[-1] :]]
    assert tail == list(range(1, len(tail) + 1))
    # A restart's delta carries its changes: one chain of deltas rebuilds the book,
    assert_deltas_rebuild_the_last_state(msgs, truth)
    # and REST answers in the new lineage.
    assert (snap["u"], snap["seq"]) == (len(tail), truth[-1].seq)
    assert (snap["b"], snap["a"]) == (truth[-1].bids, truth[-1].asks)


def test_a_full_reset_is_an_empty_u1_delta_and_the_book_stays() -> None:
    with running(deltas=60, full_reset_every=20) as sim, subscribed(sim) as ws:
        msgs = read_until_done(sim, ws)
        snap = snapshot(sim)
        truth = sim.truth(FULL)
        faults = dict(sim.sim.faults)
    resets = [i for i, m in enumerate(msgs) if m["data"]["u"] == 1]
    # Every 20th changed state (a step may change nothing: same size drawn again).
    assert len(resets) == faults[FullBookFault.FULL_RESET] == (len(truth) - 1) // 20 >= 2
    states = {s.seq: s for s in truth}
    for i in resets:
        data = msgs[i]["data"]
        assert data["b"] == [] and data["a"] == []
        before, at = states[msgs[i - 1]["data"]["seq"]], states[data["seq"]]
        assert (at.u, at.bids, at.asks) == (1, before.bids, before.asks)  # book unchanged
        if i + 1 < len(msgs):
            assert msgs[i + 1]["data"]["u"] == 2  # the held-back changes come next
    assert_deltas_rebuild_the_last_state(msgs, truth)
    assert snap["u"] == truth[-1].u == len(msgs) - resets[-1]
    assert (snap["b"], snap["a"]) == (truth[-1].bids, truth[-1].asks)


def test_delisted_book_is_empty_on_the_stream_in_truth_and_over_rest() -> None:
    with running(deltas=30, delist_after=20) as sim, subscribed(sim) as ws:
        msgs = read_until_done(sim, ws)
        snap = snapshot(sim)
        truth = sim.truth(FULL)
        faults = dict(sim.sim.faults)
    last = msgs[-1]["data"]
    assert (last["u"], last["b"], last["a"]) == (1, [], [])
    assert all(m["data"]["u"] > 1 for m in msgs[:-1]) and len(msgs) == len(truth) - 1
    assert (truth[-1].u, truth[-1].bids, truth[-1].asks) == (1, [], [])
    assert (snap["u"], snap["seq"], snap["b"], snap["a"]) == (1, last["seq"], [], [])
    assert faults == {FullBookFault.DELIST: 1}


def test_relisted_book_comes_back_over_rest_after_an_empty_u1_delta() -> None:
    with running(deltas=60, delist_after=20, relist_after=10) as sim, subscribed(sim) as ws:
        msgs = read_until_done(sim, ws)
        snap = snapshot(sim)
        truth = sim.truth(FULL)
        faults = dict(sim.sim.faults)
    ones = [i for i, m in enumerate(msgs) if m["data"]["u"] == 1]
    delist, relist = ones  # step 21 delists, nothing for 10 steps, step 31 relists
    assert relist == delist + 1
    for i in ones:
        assert msgs[i]["data"]["b"] == [] and msgs[i]["data"]["a"] == []
    states = {s.seq: s for s in truth}
    delisted = states[msgs[delist]["data"]["seq"]]
    assert (delisted.u, delisted.bids, delisted.asks) == (1, [], [])
    relisted = states[msgs[relist]["data"]["seq"]]
    assert relisted.u == 1 and len(relisted.bids) >= 200 and len(relisted.asks) >= 200
    # The client fetches the relisted book; the deltas after it lead to the end.
    book = from_levels(relisted.bids, relisted.asks)
    for msg in msgs[relist + 1 :]:
        apply(book, msg["data"])
    assert [m["data"]["u"] for m in msgs[relist:]] == list(range(1, len(msgs) - relist + 1))
    assert as_lists(book) == (truth[-1].bids, truth[-1].asks)
    assert (snap["u"], snap["b"], snap["a"]) == (truth[-1].u, truth[-1].bids, truth[-1].asks)
    assert faults == {FullBookFault.DELIST: 1, FullBookFault.RELIST: 1}


# -- size ----------------------------------------------------------------------


def test_a_12000_level_book() -> None:
    with running(book_levels=12_000, deltas=150) as sim, subscribed(sim) as ws:
        buffered = [next_delta(ws) for _ in range(3)]
        snap = snapshot(sim)
        buffered += read_until_done(sim, ws)
        latest = sim.latest(FULL)
        snap_state = by_seq(sim)[snap["seq"]]
    assert latest is not None and len(latest.bids) >= 12_000 and len(latest.asks) >= 12_000
    # The snapshot is cut at Bybit's 10,000 levels a side.
    assert len(snap["b"]) == len(snap["a"]) == FULL_SNAPSHOT_LEVELS
    assert (snap["b"], snap["a"]) == (
        snap_state.bids[:FULL_SNAPSHOT_LEVELS],
        snap_state.asks[:FULL_SNAPSHOT_LEVELS],
    )
    # Within the snapshot's price range the stitched book is exact; beyond the
    # cut only the levels the deltas touched are known.
    book = from_levels(snap["b"], snap["a"])
    for msg in buffered:
        if msg["data"]["u"] > snap["u"]:
            apply(book, msg["data"])
    floor, ceiling = Decimal(snap["b"][-1][0]), Decimal(snap["a"][-1][0])
    bids, asks = as_lists(book)
    assert [b for b in bids if Decimal(b[0]) >= floor] == [
        b for b in latest.bids if Decimal(b[0]) >= floor
    ]
    assert [a for a in asks if Decimal(a[0]) <= ceiling] == [
        a for a in latest.asks if Decimal(a[0]) <= ceiling
    ]


def test_a_deep_book_of_a_cheap_symbol_never_bids_at_or_below_zero() -> None:
    """100.00 in ticks of 0.01 has 9,999 prices below it: a book asked for
    12,000 levels a side keeps its bids above zero (Bybit's parser, like
    ours, refuses a negative price), however the market walks."""
    import random

    from depthwatch.sim.market import MarketBook, spec_for

    book = MarketBook(spec_for("CHEAPUSDT"), 12_000, random.Random(1))
    assert len(book.asks) == 12_000 and 9_000 < len(book.bids) <= 9_999
    for _ in range(3_000):
        book.step()
    assert -book.bids.keys()[-1] >= 1  # the lowest bid: at least one tick
    bids, _ = book.top(len(book.bids))
    assert all(float(price) > 0 for price, _ in bids)
