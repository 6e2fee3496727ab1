"""Bybit v5 public messages -> normalised records. Pure: bytes in, records out.

Anything that is not exactly the shape we expect raises `MalformedMessage`
(feed/messages.py) naming what was wrong.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from depthwatch.feed.bybit.topics import book_topic, split_topic
from depthwatch.feed.messages import (
    MAX_CACHED_TOPICS,
    MAX_ID,
    MAX_SIZE_CHARS,
    MAX_TS_MS,
    MIN_TS_MS,
    BookPair,
    ControlMessage,
    MalformedMessage,
    Parsed,
    checked_levels,
    int_field,
    is_decimal,
    is_trade_id,
    ms_to_us,
    too_long,
)
from depthwatch.records import (
    RPI_DEPTH,
    RPI_LEVELS,
    RPI_SIZES_DEPTH,
    BookUpdate,
    Level,
    StreamKey,
    Trade,
)

# An `orderbook.rpi` message is two updates: its levels' ordinary sizes (for
# the RPI_DEPTH book) and their RPI sizes (RPI_SIZES_DEPTH), sharing u and times.
RpiPair = BookPair

# Failed acks name their topics like "error:handler not found,topic:orderbook.500.BTCUSDT".
_TOPIC_IN_RET_MSG = re.compile(r"topic:([A-Za-z0-9_.\-]+)")


def topics_named_in(ret_msg: str) -> list[str]:
    return _TOPIC_IN_RET_MSG.findall(ret_msg)


class FeedParser:
    """Parses the frames of one category's connections."""

    def __init__(self, category: str) -> None:
        self.category = category
        self._streams: dict[str, StreamKey] = {}

    def parse(self, raw: str | bytes, local_us: int) -> Parsed:
        # json_object inlined: this runs for every frame.
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MalformedMessage(f"not JSON ({exc!s:.120}): {raw[:80]!r}") from None
        if type(msg) is not dict:
            raise MalformedMessage(f"not a JSON object: {raw[:80]!r}")
        topic = msg.get("topic")
        if topic is None:
            return self._control(msg)
        if not isinstance(topic, str):
            raise MalformedMessage(f"topic is not a string: {topic!s:.40}")
        if topic.startswith("orderbook."):
            return self._book(topic, msg, local_us)
        if topic.startswith("publicTrade."):
            return self._trades(topic[len("publicTrade.") :], msg, local_us)
        raise MalformedMessage(f"unexpected topic {topic[:80]!r}")

    def stream_of(self, topic: str) -> StreamKey:
        stream = self._streams.get(topic)
        if stream is None:
            _, depth, symbol = split_topic(topic[:200])
            # Only the canonical spelling: "orderbook.050.X" or Unicode digits
            # would otherwise alias a real stream.
            if depth is None or book_topic(depth, symbol) != topic:
                raise MalformedMessage(f"not an orderbook topic: {topic[:80]!r}")
            stream = StreamKey(self.category, symbol, depth)
            if len(self._streams) >= MAX_CACHED_TOPICS:
                self._streams.clear()
            self._streams[topic] = stream
        return stream

    def _book(self, topic: str, msg: dict, local_us: int) -> BookUpdate | RpiPair:
        try:
            stream = self.stream_of(topic)
        except ValueError as exc:
            raise MalformedMessage(str(exc)) from None
        try:
            kind = msg.get("type")
            if kind != "delta" and kind != "snapshot":
                raise MalformedMessage(f"{topic}: type is {str(kind)[:40]!r}")
            data = msg.get("data")
            if type(data) is not dict:
                raise MalformedMessage(f"{topic}: data is not an object")
            if data.get("s") != stream.symbol:
                raise MalformedMessage(f"{topic}: data.s is {str(data.get('s'))[:40]!r}")
            u, seq, ts, cts = data.get("u"), data.get("seq"), msg.get("ts"), msg.get("cts")
            # `type(x) is int` on the hot path: also refuses bools, which are ints.
            if type(u) is not int or type(seq) is not int or type(ts) is not int:
                int_field(u, f"{topic} u")
                int_field(seq, f"{topic} seq")
                int_field(ts, f"{topic} ts")
            if not MIN_TS_MS <= ts <= MAX_TS_MS:  # type: ignore[operator]
                raise MalformedMessage(f"{topic}: ts {ts} is not a time in milliseconds")
            if not (0 < u <= MAX_ID and 0 <= seq <= MAX_ID):  # type: ignore[operator]
                raise MalformedMessage(f"{topic}: u {u} or seq {seq} out of range")
            if stream.depth == RPI_DEPTH:
                is_snapshot = kind == "snapshot"
                return _rpi_pair(stream, is_snapshot, data, u, seq, ts, cts, local_us)  # type: ignore[arg-type]
            # A snapshot holds at most `depth` levels a side; a delta at most twice
            # that (every level deleted and as many new ones inserted).
            most = stream.depth if kind == "snapshot" else 2 * stream.depth
            return BookUpdate(
                stream,
                kind == "snapshot",
                checked_levels(data.get("b"), topic, "bids", most),
                checked_levels(data.get("a"), topic, "asks", most),
                u,  # type: ignore[arg-type]
                seq,  # type: ignore[arg-type]
                ts * 1000,  # type: ignore[operator]
                None if cts is None else ms_to_us(cts, f"{topic} cts"),
                local_us,
            )
        except MalformedMessage as exc:
            # A message of a known shape for this stream, but unusable: name
            # the stream, whose book has now missed an update.
            exc.stream = stream
            raise

    def _trades(self, symbol: str, msg: dict, local_us: int) -> list[Trade]:
        data = msg.get("data")
        if not isinstance(data, list):
            raise MalformedMessage("publicTrade: data is not a list")
        trades = []
        for item in data:
            if not isinstance(item, dict):
                raise MalformedMessage("publicTrade: trade is not an object")
            side = item.get("S")
            if side not in ("Buy", "Sell"):
                raise MalformedMessage(f"publicTrade: side {side!r}")
            if item.get("s") != symbol:
                raise MalformedMessage(f"publicTrade.{symbol}: trade for {item.get('s')!r}")
            price, size, trade_id = item.get("p"), item.get("v"), item.get("i")
            if not (is_decimal(price) and is_decimal(size) and is_trade_id(trade_id)):
                raise MalformedMessage(f"publicTrade: bad trade {item!r:.120}")
            seq = item.get("seq")
            trades.append(
                Trade(
                    self.category,
                    symbol,
                    trade_id,  # type: ignore[arg-type]
                    "buy" if side == "Buy" else "sell",
                    price,  # type: ignore[arg-type]
                    size,  # type: ignore[arg-type]
                    ms_to_us(item.get("T"), "publicTrade T"),
                    local_us,
                    None if seq is None else int_field(seq, "publicTrade seq"),
                )
            )
        return trades

    @staticmethod
    def _control(msg: dict) -> ControlMessage:
        try:
            return FeedParser._control_fields(msg)
        except (AttributeError, TypeError) as exc:
            raise MalformedMessage(f"bad control message ({exc}): {str(msg)[:80]}") from None

    @staticmethod
    def _control_fields(msg: dict) -> ControlMessage:
        op = msg.get("op")
        if msg.get("type") == "COMMAND_RESP":  # option-category ack shape
            data = msg.get("data") or {}
            return ControlMessage(
                op=str(op or "subscribe"),
                success=bool(msg.get("success")),
                ret_msg=str(msg.get("ret_msg", "")),
                req_id=str(msg.get("req_id", "")),
                conn_id=str(msg.get("conn_id", "")),
                success_topics=[str(t) for t in data.get("successTopics") or []],
                fail_topics=[str(t) for t in data.get("failTopics") or []],
            )
        if not isinstance(op, str):
            raise MalformedMessage(f"neither data nor control: {str(msg)[:80]}")
        return ControlMessage(
            op=op,
            success=bool(msg.get("success", op == "pong")),
            ret_msg=str(msg.get("ret_msg", "")),
            req_id=str(msg.get("req_id", "")),
            conn_id=str(msg.get("conn_id", "")),
            fail_topics=topics_named_in(str(msg.get("ret_msg", "")))
            if not msg.get("success", True)
            else [],
        )


def _rpi_pair(
    stream: StreamKey,
    is_snapshot: bool,
    data: dict,
    u: int,
    seq: int,
    ts_ms: int,
    cts: object,
    local_us: int,
) -> RpiPair:
    """An `orderbook.rpi` message's two updates: each level [price, size, RPI
    size] split into the RPI_DEPTH book's [price, size] and the
    RPI_SIZES_DEPTH book's [price, RPI size]. A delta's levels go to both
    books as sent (a size of 0 deletes, whether or not that book has the
    price); a snapshot's go only where the size is not 0, so each book's
    snapshot lists its own levels."""
    topic = f"orderbook.rpi.{stream.symbol}"
    most = RPI_LEVELS if is_snapshot else 2 * RPI_LEVELS
    plain_bids, rpi_bids = _rpi_levels(data.get("b"), topic, "bids", most, is_snapshot)
    plain_asks, rpi_asks = _rpi_levels(data.get("a"), topic, "asks", most, is_snapshot)
    match_us = None if cts is None else ms_to_us(cts, f"{topic} cts")
    sizes = StreamKey(stream.category, stream.symbol, RPI_SIZES_DEPTH)
    times = (u, seq, ts_ms * 1000, match_us, local_us)
    return (
        BookUpdate(stream, is_snapshot, plain_bids, plain_asks, *times),
        BookUpdate(sizes, is_snapshot, rpi_bids, rpi_asks, *times),
    )


def _rpi_levels(
    side: object, topic: str, what: str, most: int, is_snapshot: bool
) -> tuple[list[Level], list[Level]]:
    """Every [price, size, RPI size] checked as _levels checks a pair; the
    side split into the two books' levels (see _rpi_pair)."""
    if type(side) is not list:
        raise MalformedMessage(f"{topic} {what} is not a list")
    if len(side) > most:
        raise MalformedMessage(f"{topic} {what}: {len(side)} levels, more than {most}")
    plain: list[Level] = []
    rpi: list[Level] = []
    level: Any = None  # named in the error
    try:
        for level in side:
            price, size, rpi_size = level
            if (
                type(level) is not list
                or not price.replace(".", "", 1).isdigit()
                or not size.replace(".", "", 1).isdigit()
                or not rpi_size.replace(".", "", 1).isdigit()
                or not (price + size + rpi_size).isascii()
                or too_long(price, size)
                or len(rpi_size) > MAX_SIZE_CHARS
            ):
                raise MalformedMessage(f"bad level in {topic} {what}: {level!r:.80}")
            if not is_snapshot or float(size):
                plain.append([price, size])
            if not is_snapshot or float(rpi_size):
                rpi.append([price, rpi_size])
    except (ValueError, TypeError, AttributeError):
        raise MalformedMessage(f"bad level in {topic} {what}: {level!r:.80}") from None
    return plain, rpi
