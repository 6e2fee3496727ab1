"""Hyperliquid's feed, piece by piece, on real messages (tests/data/hyperliquid,
sources in its README): whole `l2Book` snapshots turned into a snapshot and
then the changes between pushes, which rebuild every push exactly; repeats
that make no record; a new subscription starting from a snapshot again;
malformed pushes refused naming their stream; trades, acks, pongs, errors;
the wire's requests. The path from the simulator into PostgreSQL is
tests/test_hyperliquid.py."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest

from depthwatch.book import OrderBook
from depthwatch.feed.hyperliquid.parse import HyperliquidParser
from depthwatch.feed.hyperliquid.wire import HyperliquidWire
from depthwatch.feed.messages import ControlMessage, MalformedMessage
from depthwatch.feed.registry import TARDIS_EXCHANGE, venue_of
from depthwatch.records import BookUpdate, StreamKey

DATA = Path(__file__).parent / "data" / "hyperliquid"
BTC = StreamKey("hyperliquid", "BTC", 20)


def real_push() -> dict:
    return json.loads((DATA / "l2book.json").read_bytes())


def frame(message: dict) -> bytes:
    return json.dumps(message).encode()


def levels_of(message: dict) -> tuple[list[list[str]], list[list[str]]]:
    bids, asks = message["data"]["levels"]
    return [[lv["px"], lv["sz"]] for lv in bids], [[lv["px"], lv["sz"]] for lv in asks]


def moved(message: dict, rng: random.Random) -> dict:
    """The next block: a few sizes changed, a level gone, one new a side, time on."""
    out = copy.deepcopy(message)
    bids, asks = out["data"]["levels"]
    for side, away in ((bids, -1), (asks, 1)):
        for level in rng.sample(side, 3):
            level["sz"] = f"{float(level['sz']) + rng.randint(1, 9) / 1000:.5f}"
        side.pop(rng.randrange(len(side)))
        worst = float(side[-1]["px"])
        side.append({"px": f"{worst + away:.1f}", "sz": "0.25", "n": 1})
    out["data"]["time"] += rng.randint(400, 700)
    return out


def test_pushes_become_a_snapshot_then_deltas_that_rebuild_every_push():
    parser = HyperliquidParser("hyperliquid")
    rng = random.Random(5)
    message = real_push()
    book = OrderBook()
    numbers = []
    for i in range(40):
        update = parser.parse(frame(message), 1_700_000_000_000_000 + i)
        assert isinstance(update, BookUpdate) and update.stream == BTC
        assert update.is_snapshot == (i == 0)
        assert update.sequence == message["data"]["time"]
        assert update.exchange_us == message["data"]["time"] * 1000
        if update.is_snapshot:
            book.clear()
        else:
            assert len(update.bids) + len(update.asks) < 20  # the changes, not the book
        book.apply_levels(update.bids, update.asks)
        assert book.sides() == levels_of(message), f"push {i}"
        numbers.append(update.update_id)
        message = moved(message, rng)
    assert numbers == list(range(1, 41))


def test_a_repeated_or_frozen_push_makes_no_record():
    parser = HyperliquidParser("hyperliquid")
    message = real_push()
    first = parser.parse(frame(message), 1)
    assert parser.parse(frame(message), 2) is None
    later = copy.deepcopy(message)
    later["data"]["time"] += 500  # the same book a block later
    assert parser.parse(frame(later), 3) is None
    assert parser.books["BTC"].repeats == 2
    next_push = moved(later, random.Random(1))
    update = parser.parse(frame(next_push), 4)
    assert isinstance(first, BookUpdate) and isinstance(update, BookUpdate)
    assert update.update_id == first.update_id + 1 and not update.is_snapshot


def test_a_new_subscription_starts_from_a_snapshot_and_numbers_go_on():
    parser = HyperliquidParser("hyperliquid")
    ack = (DATA / "subscription_response.json").read_bytes()
    assert parser.parse(ack, 1) == ControlMessage(op="subscribe", success=True)
    message = real_push()
    parser.parse(frame(message), 2)
    message = moved(message, random.Random(2))
    parser.parse(frame(message), 3)
    parser.parse(ack, 4)  # a resync (unsubscribe + subscribe) or a reconnect
    message = moved(message, random.Random(3))
    again = parser.parse(frame(message), 5)
    assert isinstance(again, BookUpdate) and again.is_snapshot and again.update_id == 3
    assert (again.bids, again.asks) == levels_of(message)


def _broken(change) -> bytes:
    message = real_push()
    change(message["data"])
    return frame(message)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["levels"].pop(),
        lambda d: d["levels"][0].append({"px": "1.0", "sz": "1", "n": 1}),  # 21 bids
        lambda d: d["levels"][0][0].update(sz="0.0"),
        lambda d: d["levels"][1][1].update(px=d["levels"][1][0]["px"]),
        lambda d: d["levels"][0][0].update(px="1e5"),
        lambda d: d["levels"][0][0].pop("sz"),
        lambda d: d.update(time="1751427259657"),
        lambda d: d.update(levels={"bids": []}),
    ],
    ids=[
        "one-side",
        "21-levels",
        "zero-size",
        "repeated-price",
        "exponent",
        "no-size",
        "time",
        "dict",
    ],
)
def test_malformed_pushes_are_refused_naming_their_stream(change):
    with pytest.raises(MalformedMessage) as caught:
        HyperliquidParser("hyperliquid").parse(_broken(change), 1)
    assert caught.value.stream == BTC


def test_time_going_backwards_is_refused():
    parser = HyperliquidParser("hyperliquid")
    message = real_push()
    parser.parse(frame(message), 1)
    message["data"]["time"] -= 1
    message["data"]["levels"][0][0]["sz"] = "9.0"
    with pytest.raises(MalformedMessage, match="before"):
        parser.parse(frame(message), 2)


@pytest.mark.parametrize("file", ["trades.json", "trades_multi_no_users.json"])
def test_real_trades_parse_with_the_takers_side(file):
    message = json.loads((DATA / file).read_bytes())
    trades = HyperliquidParser("hyperliquid").parse(frame(message), 1)
    assert isinstance(trades, list) and len(trades) == len(message["data"])
    for trade, item in zip(trades, message["data"], strict=True):
        assert (trade.symbol, trade.price, trade.size) == (item["coin"], item["px"], item["sz"])
        assert trade.side == ("buy" if item["side"] == "B" else "sell")
        assert trade.trade_id == str(item["tid"]) and trade.exchange_us == item["time"] * 1000


def test_pongs_and_errors_are_control_messages():
    parser = HyperliquidParser("hyperliquid")
    pong = parser.parse((DATA / "pong.json").read_bytes(), 1)
    assert isinstance(pong, ControlMessage) and pong.is_pong
    error = parser.parse(b'{"channel":"error","data":"Invalid subscription"}', 1)
    assert isinstance(error, ControlMessage) and not error.success
    assert "Invalid subscription" in error.ret_msg
    with pytest.raises(MalformedMessage):
        parser.parse(b'{"channel":"candle","data":{}}', 1)


def test_the_wire_subscribes_one_coin_per_request_and_pings():
    wire = HyperliquidWire("hyperliquid")
    assert wire.args_per_request == 1 and wire.ping_interval_s == 50.0
    assert json.loads(wire.request("subscribe", [wire.book_topic(BTC)], "x")) == {
        "method": "subscribe",
        "subscription": {"type": "l2Book", "coin": "BTC"},
    }
    assert json.loads(wire.request("unsubscribe", [wire.trade_topic("ETH")], "x")) == {
        "method": "unsubscribe",
        "subscription": {"type": "trades", "coin": "ETH"},
    }
    assert json.loads(wire.ping("c")) == {"method": "ping"}
    assert wire.topic_fields("l2Book:BTC") == ("BTC", 20)
    assert wire.snapshot_on_subscribe("l2Book:BTC") and not wire.snapshot_on_subscribe("trades:BTC")
    assert TARDIS_EXCHANGE["hyperliquid"] == "hyperliquid"
    assert venue_of("hyperliquid").ws_url == "wss://api.hyperliquid.xyz/ws"
