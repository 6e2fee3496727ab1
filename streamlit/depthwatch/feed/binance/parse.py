"""Binance combined-stream frames and REST depth answers -> records. Pure.

A depth event becomes a `BinanceDelta`: a `BookUpdate` whose `sequence` is
Binance's final update id `u`, carrying its first id `U` and (futures) the
previous event's `pu` for the sync rule (feed/binance/sync.py); the rule
numbers the deltas it passes on (`update_id`), as Binance's ids are not
consecutive. Trades are Binance's `trade` events (Tardis's source for both
markets); futures trades that are no market trade (insurance fund, ADL) are
left out as Tardis leaves them out.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from depthwatch.feed.binance.topics import DEPTH_SUFFIX, FUTURES, INVALID_SYMBOL, TRADE_SUFFIX
from depthwatch.feed.messages import (
    MAX_CACHED_TOPICS,
    MAX_ID,
    MAX_SNAPSHOT_LEVELS,
    MAX_TS_MS,
    MIN_TS_MS,
    ControlMessage,
    MalformedMessage,
    Parsed,
    SnapshotRefused,
    checked_levels,
    int_field,
    is_decimal,
    json_object,
    ms_to_us,
)
from depthwatch.records import FULL_DEPTH, BookUpdate, StreamKey, Trade


@dataclass(slots=True)
class BinanceDelta(BookUpdate):
    """A diff depth event: `sequence` is its final update id `u`."""

    first_id: int = 0  # `U`
    previous_id: int | None = None  # futures' `pu`: the previous event's `u`


# Futures trades with these `X` are no trade between two orders of the book.
_NOT_MARKET_TRADES = frozenset(("INSURANCE_FUND", "ADL", "NA"))


def _update_id(value: object, what: str) -> int:
    number = int_field(value, what)
    if not 0 < number <= MAX_ID:
        raise MalformedMessage(f"{what} {number} out of range")
    return number


def _time_ms(value: object, what: str) -> int:
    ms = int_field(value, what)
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        raise MalformedMessage(f"{what} {ms} is not a time in milliseconds")
    return ms


class BinanceParser:
    """Parses the frames of one market's connections (`category`: binance or
    binance-futures)."""

    def __init__(self, category: str) -> None:
        self.category = category
        self.futures = category == FUTURES
        self._streams: dict[str, StreamKey] = {}

    def parse(self, raw: bytes, local_us: int) -> Parsed:
        msg = json_object(raw)
        name = msg.get("stream")
        if name is None:
            return self._control(msg, raw)
        if not isinstance(name, str):
            raise MalformedMessage(f"stream is not a string: {name!s:.40}")
        data = msg.get("data")
        if name.endswith(DEPTH_SUFFIX):
            stream = self.stream_of(name)
            try:
                return self._depth(stream, name, data, local_us)
            except MalformedMessage as exc:
                exc.stream = stream  # this stream's update is lost
                raise
        if name.endswith(TRADE_SUFFIX):
            return self._trades(name, data, local_us)
        if name.startswith("!"):  # e.g. "!serverShutdown": the connection ends soon
            return None
        raise MalformedMessage(f"unexpected stream {name[:80]!r}")

    def stream_of(self, topic: str) -> StreamKey:
        stream = self._streams.get(topic)
        if stream is None:
            symbol = topic[: -len(DEPTH_SUFFIX)] if topic.endswith(DEPTH_SUFFIX) else ""
            # Only the canonical spelling (lower case): "BTCUSDT@depth@100ms"
            # would otherwise alias a real stream.
            if not symbol or not symbol.isascii() or not symbol.isalnum() or not symbol.islower():
                raise MalformedMessage(f"not a depth stream: {topic[:80]!r}")
            stream = StreamKey(self.category, symbol.upper(), FULL_DEPTH)
            if len(self._streams) >= MAX_CACHED_TOPICS:
                self._streams.clear()
            self._streams[topic] = stream
        return stream

    def _depth(self, stream: StreamKey, name: str, data: object, local_us: int) -> BinanceDelta:
        if type(data) is not dict:
            raise MalformedMessage(f"{name}: data is not an object")
        if data.get("e") != "depthUpdate":
            raise MalformedMessage(f"{name}: event is {str(data.get('e'))[:40]!r}")
        if data.get("s") != stream.symbol:
            raise MalformedMessage(f"{name}: s is {str(data.get('s'))[:40]!r}")
        first = _update_id(data.get("U"), f"{name} U")
        last = _update_id(data.get("u"), f"{name} u")
        if first > last:
            raise MalformedMessage(f"{name}: U {first} after u {last}")
        previous = _update_id(data.get("pu"), f"{name} pu") if self.futures else None
        if previous is not None and previous >= first:
            raise MalformedMessage(f"{name}: pu {previous} not before U {first}")
        exchange_ms = _time_ms(data.get("E"), f"{name} E")
        match_us = ms_to_us(data.get("T"), f"{name} T") if self.futures else None
        return BinanceDelta(
            stream,
            False,
            checked_levels(data.get("b"), name, "bids", MAX_SNAPSHOT_LEVELS),
            checked_levels(data.get("a"), name, "asks", MAX_SNAPSHOT_LEVELS),
            0,  # numbered by the sync rule
            last,
            exchange_ms * 1000,
            match_us,
            local_us,
            first,
            previous,
        )

    def _trades(self, name: str, data: object, local_us: int) -> list[Trade]:
        if type(data) is not dict or data.get("e") != "trade":
            raise MalformedMessage(f"{name}: not a trade event")
        symbol = data.get("s")
        if not isinstance(symbol, str) or symbol.lower() + TRADE_SUFFIX != name:
            raise MalformedMessage(f"{name}: trade for {str(symbol)[:40]!r}")
        if self.futures and data.get("X", "MARKET") in _NOT_MARKET_TRADES:
            return []
        trade_id = _update_id(data.get("t"), f"{name} t")
        price, size, maker = data.get("p"), data.get("q"), data.get("m")
        if not (is_decimal(price) and is_decimal(size) and isinstance(maker, bool)):
            raise MalformedMessage(f"{name}: bad trade {data!r:.120}")
        return [
            Trade(
                self.category,
                symbol,
                str(trade_id),
                "sell" if maker else "buy",  # the buyer made the order: a seller took it
                price,  # type: ignore[arg-type]
                size,  # type: ignore[arg-type]
                ms_to_us(data.get("T"), f"{name} T"),
                local_us,
                trade_id,
            )
        ]

    @staticmethod
    def _control(msg: dict, raw: bytes) -> ControlMessage:
        """`{"result": null, "id": 1}`, or `{"error": {"code", "msg"}, "id": 1}`:
        the whole request succeeded or failed (Binance names no topic)."""
        if "id" not in msg or ("result" not in msg and "error" not in msg):
            raise MalformedMessage(f"neither data nor an answer: {raw[:80]!r}")
        error = msg.get("error")
        req_id = "" if msg.get("id") is None else str(msg.get("id"))
        if error is None:
            return ControlMessage(op="", success=True, req_id=req_id)
        detail = (
            f"code {error.get('code')}: {error.get('msg')}" if isinstance(error, dict) else error
        )
        return ControlMessage(op="", success=False, ret_msg=str(detail)[:300], req_id=req_id)


def parse_depth_snapshot(raw: bytes, stream: StreamKey, local_us: int, futures: bool) -> BookUpdate:
    """A REST depth answer -> a snapshot BookUpdate (`sequence`: lastUpdateId;
    numbered and timed by the sync when it starts the book). Spot's answer
    has no time: the receive time stands in until then."""
    what = f"{stream.symbol} depth"
    msg = json_object(raw, f"{what}: ")
    if "code" in msg and "lastUpdateId" not in msg:
        raise SnapshotRefused(f"{what}: code {msg.get('code')!s:.20}: {str(msg.get('msg'))[:200]}")
    last = _update_id(msg.get("lastUpdateId"), f"{what} lastUpdateId")
    exchange_us = ms_to_us(msg.get("E"), f"{what} E") if futures else local_us
    return BookUpdate(
        stream,
        True,
        checked_levels(msg.get("bids"), what, "bids", MAX_SNAPSHOT_LEVELS),
        checked_levels(msg.get("asks"), what, "asks", MAX_SNAPSHOT_LEVELS),
        0,
        last,
        exchange_us,
        ms_to_us(msg.get("T"), f"{what} T") if futures else None,
        local_us,
    )


def error_code(body: bytes) -> tuple[int | None, str]:
    """(code, msg) of a Binance error answer; (None, "") for anything else."""
    try:
        msg = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, ""
    if not isinstance(msg, dict) or not isinstance(msg.get("code"), int):
        return None, ""
    return msg["code"], str(msg.get("msg", ""))[:200]


def is_invalid_symbol(body: bytes) -> bool:
    return error_code(body)[0] == INVALID_SYMBOL
