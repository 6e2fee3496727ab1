"""Parsing real and malformed Bybit messages (pure logic, no sockets)."""

from __future__ import annotations

import zipfile

import orjson
import pytest

from depthwatch.book import OrderBook
from depthwatch.feed.bybit.parse import FeedParser
from depthwatch.feed.messages import ControlMessage, MalformedMessage
from depthwatch.records import BookUpdate, StreamKey

from .conftest import DATA


def real_lines() -> list[bytes]:
    with zipfile.ZipFile(DATA / "xrpusdt-ob500.data.zip") as archive:
        return archive.read(archive.namelist()[0]).splitlines()


def test_real_archive_messages_parse_into_exact_updates():
    parser = FeedParser("linear")
    lines = real_lines()
    updates = [parser.parse(line, 1_700_000_000_000_000 + i) for i, line in enumerate(lines)]
    assert all(isinstance(u, BookUpdate) for u in updates)
    first = updates[0]
    assert first.is_snapshot and first.stream == StreamKey("linear", "XRPUSDT", 500)
    assert (first.update_id, first.sequence) == (20254869, 130020238981)
    assert (first.exchange_us, first.match_us) == (1733011200691000, 1733011200589000)
    assert first.bids[0] == ["1.9531", "6203"] and len(first.bids) == 500
    assert [u.update_id for u in updates] == list(range(20254869, 20254919))
    # Applying them gives the same book as applying the raw JSON naively.
    book = OrderBook()
    naive_bids: dict[str, str] = {}
    naive_asks: dict[str, str] = {}
    for update, line in zip(updates, lines, strict=True):
        book.apply_levels(update.bids, update.asks)
        data = orjson.loads(line)["data"]
        for side, levels in ((naive_bids, data["b"]), (naive_asks, data["a"])):
            for price, size in levels:
                if float(size) == 0:
                    side.pop(price, None)
                else:
                    side[price] = size
    bids, asks = book.sides()
    assert bids == [[p, s] for p, s in sorted(naive_bids.items(), key=lambda kv: -float(kv[0]))]
    assert asks == [[p, s] for p, s in sorted(naive_asks.items(), key=lambda kv: float(kv[0]))]


def test_spot_key_order_and_trades():
    parser = FeedParser("spot")
    spot = (
        b'{"topic":"orderbook.50.BTCUSDT","ts":1672304484978,"type":"delta",'
        b'"data":{"s":"BTCUSDT","b":[["16493.50","0.006"]],"a":[],"u":18521288,"seq":7961638724},'
        b'"cts":1672304484976}'
    )
    update = parser.parse(spot, 5)
    assert isinstance(update, BookUpdate) and not update.is_snapshot
    assert update.bids == [["16493.50", "0.006"]] and update.local_us == 5
    trades = parser.parse(
        b'{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1672304486868,"data":'
        b'[{"T":1672304486865,"s":"BTCUSDT","S":"Buy","v":"0.001","p":"16578.50",'
        b'"L":"PlusTick","i":"20f43950-d8dd-5b31-9112-a178eb6023af","BT":false,"seq":1}]}',
        7,
    )
    assert isinstance(trades, list) and len(trades) == 1
    t = trades[0]
    assert (t.side, t.price, t.size, t.exchange_us, t.local_us) == (
        "buy",
        "16578.50",
        "0.001",
        1672304486865000,
        7,
    )


def test_acks_and_pongs():
    parser = FeedParser("linear")
    ok = parser.parse(
        b'{"success":true,"ret_msg":"","conn_id":"c1","req_id":"r1","op":"subscribe"}', 0
    )
    assert isinstance(ok, ControlMessage) and ok.success and ok.req_id == "r1"
    failed = parser.parse(
        b'{"success":false,"ret_msg":"error:handler not found,topic:orderbook.500.BTCUSDT",'
        b'"conn_id":"c1","req_id":"","op":"subscribe"}',
        0,
    )
    assert isinstance(failed, ControlMessage) and not failed.success
    assert failed.fail_topics == ["orderbook.500.BTCUSDT"]
    pong = parser.parse(b'{"success":true,"ret_msg":"pong","conn_id":"c","op":"ping"}', 0)
    assert isinstance(pong, ControlMessage) and pong.is_pong
    option = FeedParser("option").parse(
        b'{"success":true,"conn_id":"x","data":{"failTopics":["orderbook.25.NOPE"],'
        b'"successTopics":["orderbook.25.BTC-1JAN27-100000-C"]},"type":"COMMAND_RESP"}',
        0,
    )
    assert isinstance(option, ControlMessage)
    assert option.fail_topics == ["orderbook.25.NOPE"]
    option_pong = FeedParser("option").parse(b'{"args":["1672304486868"],"op":"pong"}', 0)
    assert isinstance(option_pong, ControlMessage) and option_pong.is_pong


GOOD = {
    "topic": "orderbook.50.BTCUSDT",
    "type": "delta",
    "ts": 1_733_011_200_691,
    "data": {"s": "BTCUSDT", "b": [["1.5", "2"]], "a": [], "u": 2, "seq": 3},
    "cts": 1_733_011_200_589,
}


def variant(path: tuple[str, ...], value: object) -> bytes:
    msg = orjson.loads(orjson.dumps(GOOD))
    target = msg
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return orjson.dumps(msg)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"topic":"orderbook.50.BTCUSDT","type":"delta","data":', "not JSON"),
        (b"[1,2]", "not a JSON object"),
        (variant(("type",), "weird"), "type is 'weird'"),
        (variant(("data", "b"), [["1.5"]]), "bad level"),
        (variant(("data", "b"), [["nan", "1"]]), "bad level"),
        (variant(("data", "a"), [["1e5", "1"]]), "bad level"),
        (variant(("data", "b"), [["-1", "1"]]), "bad level"),
        (variant(("data", "u"), "2"), "u is not an integer"),
        (variant(("data", "s"), "ETHUSDT"), "data.s"),
        (variant(("ts",), None), "ts is not an integer"),
        (variant(("ts",), 1_733_011_200_691_000_000), "is not a time in milliseconds"),
        (variant(("cts",), 17), "is not a time in milliseconds"),
        (variant(("data", "b"), [["1.5", "²"]]), "bad level"),
        (variant(("data", "b"), [["\u0661.5", "1"]]), "bad level"),  # Arabic-Indic 1
        (b'{"success":true,"data":[1],"type":"COMMAND_RESP"}', "bad control message"),
        (
            b'{"topic":"publicTrade.BTCUSDT","ts":1733011200691,"data":[{"T":1733011200691,'
            b'"s":"ETHUSDT","S":"Buy","v":"1","p":"1","i":"x"}]}',
            "trade for 'ETHUSDT'",
        ),
        (
            b'{"topic":"publicTrade.BTCUSDT","ts":1733011200691,"data":[{"T":1733011200691,'
            b'"s":"BTCUSDT","S":"Buy","v":"1","p":"1","i":"a,b"}]}',
            "bad trade",
        ),
        (variant(("topic",), "orderbook.x.BTCUSDT"), "unrecognised topic"),
        (variant(("topic",), "kline.1.BTCUSDT"), "unexpected topic"),
        (b'{"hello":"world"}', "neither data nor control"),
    ],
)
def test_malformed_messages_raise_a_clear_error(raw, reason):
    with pytest.raises(MalformedMessage, match=reason):
        FeedParser("linear").parse(raw, 0)
