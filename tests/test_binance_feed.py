"""Binance's feed, piece by piece: the parser on real recorded frames
(tests/data/binance, sources in its README), both markets' sync rules on real
recorded event sequences with their real REST snapshots, and every way the
documented procedure can meet a snapshot (older, newer, straddling, a hole,
a repeat); the REST source's URLs and refusals. The whole path from the
simulator into PostgreSQL is tests/test_binance.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from depthwatch.feed.binance.parse import BinanceDelta, BinanceParser, parse_depth_snapshot
from depthwatch.feed.binance.rest import BinanceSnapshots, futures_limit
from depthwatch.feed.binance.sync import BinanceFuturesRule, BinanceSpotRule
from depthwatch.feed.binance.wire import BinanceWire
from depthwatch.feed.messages import ControlMessage, MalformedMessage, SnapshotRefused
from depthwatch.feed.registry import TARDIS_EXCHANGE, venue_of
from depthwatch.feed.sync import DeltaSync, SyncState
from depthwatch.records import FULL_DEPTH, BookUpdate, StreamKey

DATA = Path(__file__).parent / "data" / "binance"
LOCAL_US = 1_700_000_000_000_000


def frames(name: str) -> list[bytes]:
    return [line.encode() for line in (DATA / name).read_text().splitlines() if line.strip()]


def parse_all(parser: BinanceParser, name: str) -> list[BinanceDelta]:
    out = []
    for i, raw in enumerate(frames(name)):
        parsed = parser.parse(raw, LOCAL_US + i)
        assert isinstance(parsed, BinanceDelta)
        out.append(parsed)
    return out


def rest_snapshot(name: str, stream: StreamKey, futures: bool) -> BookUpdate:
    return parse_depth_snapshot((DATA / name).read_bytes(), stream, LOCAL_US - 1, futures)


def test_a_real_futures_depth_event_becomes_a_delta_with_its_ids_and_times():
    raw = (DATA / "futures_depth_update.json").read_bytes()
    delta = BinanceParser("binance-futures").parse(raw, LOCAL_US)
    data = json.loads(raw)["data"]
    assert isinstance(delta, BinanceDelta)
    assert delta.stream == StreamKey("binance-futures", "SUSHIUSDT", FULL_DEPTH)
    assert not delta.is_snapshot
    assert (delta.first_id, delta.sequence, delta.previous_id) == (data["U"], data["u"], data["pu"])
    assert (delta.exchange_us, delta.match_us) == (data["E"] * 1000, data["T"] * 1000)
    assert (delta.bids, delta.asks) == (data["b"], data["a"])


def test_a_real_spot_depth_event_has_no_previous_id_nor_match_time():
    delta = BinanceParser("binance").parse((DATA / "spot_depth_update.json").read_bytes(), 1)
    assert isinstance(delta, BinanceDelta)
    assert delta.stream == StreamKey("binance", "NKNUSDT", FULL_DEPTH)
    assert delta.previous_id is None and delta.match_us is None
    assert delta.first_id <= delta.sequence


@pytest.mark.parametrize(
    ("file", "category", "side", "trade_id"),
    [
        ("spot_trade.json", "binance", "sell", "705291099"),  # m=true: the seller took it
        ("spot_trade_doc_current.json", "binance", None, None),
        ("futures_trade.json", "binance-futures", "sell", "173525189"),
    ],
)
def test_real_trades_parse_with_the_takers_side(file, category, side, trade_id):
    raw = (DATA / file).read_bytes()
    message = json.loads(raw)
    if "stream" not in message:  # the documented payload alone: wrap it as combined
        raw = json.dumps({"stream": message["s"].lower() + "@trade", "data": message}).encode()
        message = json.loads(raw)
    data = message["data"]
    (trade,) = BinanceParser(category).parse(raw, LOCAL_US)  # type: ignore[misc]
    assert trade.symbol == data["s"] and trade.price == data["p"] and trade.size == data["q"]
    assert trade.side == ("sell" if data["m"] else "buy")
    assert trade.exchange_us == data["T"] * 1000
    if side is not None:
        assert (trade.side, trade.trade_id) == (side, trade_id)


def test_futures_trades_that_are_no_market_trade_are_left_out_as_tardis_does():
    message = json.loads((DATA / "futures_trade.json").read_bytes())
    message["data"]["X"] = "INSURANCE_FUND"
    assert BinanceParser("binance-futures").parse(json.dumps(message).encode(), 1) == []


def test_answers_to_requests_are_control_messages_for_the_whole_request():
    parser = BinanceParser("binance")
    ok = parser.parse((DATA / "subscribe_response.json").read_bytes(), 1)
    assert ok == ControlMessage(op="", success=True, req_id="1")
    refused = parser.parse((DATA / "error_response.json").read_bytes(), 1)
    assert isinstance(refused, ControlMessage) and not refused.success
    assert refused.req_id == "2" and "invalid stream" in refused.ret_msg
    assert parser.parse(b'{"stream":"!serverShutdown","data":{"e":"serverShutdown"}}', 1) is None


def _broken(change: dict) -> bytes:
    message = json.loads((DATA / "futures_depth_update.json").read_bytes())
    message["data"].update(change)
    return json.dumps(message).encode()


@pytest.mark.parametrize(
    "change",
    [
        {"U": 600859607424},  # after u
        {"pu": 600859605926},  # not before U
        {"u": "600859607423"},
        {"pu": None},
        {"s": "BTCUSDT"},
        {"e": "trade"},
        {"b": [["7.6", "1e5"]]},
        {"a": [["nan", "1"]]},
        {"E": 17},
    ],
)
def test_malformed_depth_events_are_refused_naming_their_stream(change):
    with pytest.raises(MalformedMessage) as caught:
        BinanceParser("binance-futures").parse(_broken(change), 1)
    assert caught.value.stream == StreamKey("binance-futures", "SUSHIUSDT", FULL_DEPTH)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"stream":"SUSHIUSDT@depth@100ms","data":{}}',  # not the canonical name
        b'{"stream":"sushiusdt@kline_1m","data":{}}',
        b'{"id":1}',
    ],
)
def test_frames_that_are_no_binance_message_are_refused_without_a_stream(raw):
    with pytest.raises(MalformedMessage) as caught:
        BinanceParser("binance-futures").parse(raw, 1)
    assert caught.value.stream is None


def test_the_real_futures_sequence_syncs_at_its_bridge_and_chains_to_the_end():
    """Lines 1-3 end before lastUpdateId and are dropped; line 4 (U == L)
    starts; every later pu is the previous u (README of tests/data/binance)."""
    deltas = parse_all(BinanceParser("binance-futures"), "futures_depth_sequence.jsonl")
    stream = deltas[0].stream
    sync = DeltaSync(BinanceFuturesRule())
    steps = [sync.on_delta(deltas[0])]
    assert steps[0].fetch
    for delta in deltas[1:3]:
        assert not sync.on_delta(delta).apply
    snapshot = rest_snapshot("futures_rest_depth.json", stream, futures=True)
    # Every event buffered so far is older: it waits for line 4.
    assert sync.on_snapshot(snapshot, sync.generation).apply == []
    applied: list[BookUpdate] = []
    for delta in deltas[3:]:
        applied += sync.on_delta(delta).apply
    assert applied[0] is snapshot and applied[1] is deltas[3]
    assert [u.sequence for u in applied[1:]] == [d.sequence for d in deltas[3:]]
    numbers = [u.update_id for u in applied]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert sync.state is SyncState.SYNCED


def test_the_real_spot_sequence_drops_what_the_snapshot_holds_and_chains():
    deltas = parse_all(BinanceParser("binance"), "spot_depth_sequence.jsonl")
    sync = DeltaSync(BinanceSpotRule())
    sync.on_delta(deltas[0])
    sync.on_delta(deltas[1])
    snapshot = rest_snapshot("spot_rest_depth.json", deltas[0].stream, futures=False)
    applied = list(sync.on_snapshot(snapshot, sync.generation).apply)
    for delta in deltas[2:]:
        applied += sync.on_delta(delta).apply
    assert applied[0] is snapshot and applied[1:] == deltas[1:]
    numbers = [u.update_id for u in applied]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    # The snapshot takes the time of the event it ends at (u == lastUpdateId).
    assert deltas[0].sequence == snapshot.sequence
    assert snapshot.exchange_us == deltas[0].exchange_us


def synced_after_event_4(rule: type) -> tuple[DeltaSync, list[BinanceDelta], list[BookUpdate]]:
    """A sync of the real sequence of `rule`'s market, started from a snapshot
    at event 4's u with event 5 buffered; (sync, parsed events, what it applied)."""
    name, category = (
        ("spot_depth_sequence.jsonl", "binance")
        if rule is BinanceSpotRule
        else ("futures_depth_sequence.jsonl", "binance-futures")
    )
    deltas = parse_all(BinanceParser(category), name)
    sync = DeltaSync(rule())
    sync.on_delta(deltas[5])
    snapshot = BookUpdate(deltas[5].stream, True, [], [], 0, deltas[4].sequence, 1, None, 1)
    return sync, deltas, sync.on_snapshot(snapshot, sync.generation).apply


@pytest.mark.parametrize("rule", [BinanceSpotRule, BinanceFuturesRule])
def test_a_hole_after_the_start_skips_a_number_so_the_book_sees_the_gap(rule):
    sync, deltas, (started, first) = synced_after_event_4(rule)
    assert started.is_snapshot and first is deltas[5]
    (second,) = sync.on_delta(deltas[6]).apply
    assert second.update_id == first.update_id + 1
    (after_hole,) = sync.on_delta(deltas[8]).apply  # deltas[7] lost
    assert after_hole.update_id == second.update_id + 2


@pytest.mark.parametrize("rule", [BinanceSpotRule, BinanceFuturesRule])
def test_repeats_are_dropped_and_never_numbered(rule):
    sync, deltas, _ = synced_after_event_4(rule)
    (second,) = sync.on_delta(deltas[6]).apply
    copy = dataclasses.replace(deltas[6])  # a second connection's copy
    assert sync.on_delta(copy).apply == []
    (third,) = sync.on_delta(deltas[7]).apply
    assert third.update_id == second.update_id + 1


def test_a_snapshot_older_than_the_buffer_is_fetched_again():
    deltas = parse_all(BinanceParser("binance-futures"), "futures_depth_sequence.jsonl")
    sync = DeltaSync(BinanceFuturesRule())
    sync.on_delta(deltas[6])
    old = BookUpdate(deltas[0].stream, True, [], [], 0, deltas[2].sequence, 1, None, 1)
    step = sync.on_snapshot(old, sync.generation)
    assert step.refetch and not step.apply
    spot = parse_all(BinanceParser("binance"), "spot_depth_sequence.jsonl")
    sync = DeltaSync(BinanceSpotRule())
    sync.on_delta(spot[6])
    old = BookUpdate(spot[0].stream, True, [], [], 0, spot[2].sequence, 1, None, 1)
    assert sync.on_snapshot(old, sync.generation).refetch


def test_a_spot_snapshot_at_the_last_events_u_starts_at_once():
    """Nothing may follow (a quiet book): the snapshot is the book after the
    last event, and the next one chains to it."""
    deltas = parse_all(BinanceParser("binance"), "spot_depth_sequence.jsonl")
    sync = DeltaSync(BinanceSpotRule())
    sync.on_delta(deltas[3])
    sync.on_delta(deltas[4])
    at_last = BookUpdate(deltas[0].stream, True, [], [], 0, deltas[4].sequence, 1, None, 1)
    assert sync.on_snapshot(at_last, sync.generation).apply == [at_last]
    (after,) = sync.on_delta(deltas[5]).apply
    assert after.update_id == at_last.update_id + 1


def test_a_snapshot_newer_than_the_buffer_waits_for_its_successor():
    deltas = parse_all(BinanceParser("binance-futures"), "futures_depth_sequence.jsonl")
    sync = DeltaSync(BinanceFuturesRule())
    sync.on_delta(deltas[2])
    # Taken between events 4 and 5 (pu of 5 < L < U of 5): the book after 4.
    newer = BookUpdate(deltas[0].stream, True, [], [], 0, deltas[4].sequence + 1, 1, None, 1)
    assert sync.on_snapshot(newer, sync.generation).apply == []
    assert sync.on_delta(deltas[3]).apply == []
    assert sync.on_delta(deltas[4]).apply == []
    started = sync.on_delta(deltas[5]).apply
    assert started == [newer, deltas[5]]
    assert deltas[5].update_id == newer.update_id + 1


def test_the_rest_source_asks_for_allowed_limits_and_refuses_unknown_symbols():
    futures, spot = BinanceSnapshots("binance-futures"), BinanceSnapshots("binance")
    stream = StreamKey("binance-futures", "BTCUSDT", FULL_DEPTH)
    assert (
        futures.url("http://h", stream, 1000) == "http://h/fapi/v1/depth?symbol=BTCUSDT&limit=1000"
    )
    assert futures_limit(300) == 500 and futures_limit(5000) == 1000
    assert spot.url("http://h", stream, 5000).endswith("/api/v3/depth?symbol=BTCUSDT&limit=5000")
    unknown = b'{"code":-1121,"msg":"Invalid symbol."}'
    assert "Invalid symbol" in (spot.refusal(400, unknown) or "")
    assert spot.refusal(429, b'{"code":-1003,"msg":"Too many requests"}') is None
    assert spot.refusal(400, b"<html>") is None
    with pytest.raises(SnapshotRefused):
        spot.parse(unknown, stream, 1)
    snapshot = rest_snapshot("futures_rest_depth.json", stream, futures=True)
    assert snapshot.is_snapshot and snapshot.sequence == 600859605926
    assert len(snapshot.bids) == len(snapshot.asks) == 20


def test_the_wire_and_the_registry_name_binance_as_tardis_does():
    wire = BinanceWire("binance-futures")
    stream = StreamKey("binance-futures", "BTCUSDT", FULL_DEPTH)
    assert wire.book_topic(stream) == "btcusdt@depth@100ms"
    assert wire.trade_topic("BTCUSDT") == "btcusdt@trade"
    assert wire.topic_fields("btcusdt@depth@100ms") == ("BTCUSDT", FULL_DEPTH)
    assert json.loads(wire.request("subscribe", ["btcusdt@trade"], "7")) == {
        "method": "SUBSCRIBE",
        "params": ["btcusdt@trade"],
        "id": 7,
    }
    assert TARDIS_EXCHANGE["binance"] == "binance"
    assert TARDIS_EXCHANGE["binance-futures"] == "binance-futures"
    assert venue_of("binance-futures").ws_url == "wss://fstream.binance.com/public/stream"
    assert venue_of("binance").snapshot_levels == 5000
