"""Bybit v5 public messages -> normalised records. Pure: bytes in, records out.

Anything that is not exactly the shape we expect raises `MalformedMessage`
naming what was wrong, so the connection can log it, count it and go on: a
malformed frame must never reach a book.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import orjson

from depthwatch.feed.topics import book_topic, split_topic
from depthwatch.records import (
    RPI_DEPTH,
    RPI_LEVELS,
    RPI_SIZES_DEPTH,
    BookUpdate,
    Level,
    StreamKey,
    Trade,
)

# Error messages quote the offending input; a 10 MB frame must not make a 10 MB
# log line or feed event.
MAX_ERROR_CHARS = 300


class MalformedMessage(ValueError):
    """A frame that is not a well-formed Bybit message.

    `stream` names the book stream when the frame was a JSON object with a
    well-formed orderbook topic: that stream's update is lost, so its book must
    be invalidated and resynced. Frames that are not JSON name no stream (a
    guess from garbage could be wrong); the book's `u` continuity check finds
    the loss at that stream's next message.
    """

    def __init__(self, message: str, stream: StreamKey | None = None) -> None:
        if len(message) > MAX_ERROR_CHARS:
            message = message[:MAX_ERROR_CHARS] + f"... ({len(message)} characters)"
        super().__init__(message)
        self.stream = stream


@dataclass(slots=True)
class ControlMessage:
    """An ack to subscribe/unsubscribe, or a pong."""

    op: str
    success: bool
    ret_msg: str = ""
    req_id: str = ""
    conn_id: str = ""
    success_topics: list[str] = field(default_factory=list)
    fail_topics: list[str] = field(default_factory=list)

    @property
    def is_pong(self) -> bool:
        return self.op == "pong" or (self.op == "ping" and self.ret_msg == "pong")


# An `orderbook.rpi` message is two updates: its levels' ordinary sizes (for
# the RPI_DEPTH book) and their RPI sizes (RPI_SIZES_DEPTH), sharing u and times.
RpiPair = tuple[BookUpdate, BookUpdate]
Parsed = BookUpdate | RpiPair | list[Trade] | ControlMessage

# Failed acks name their topics like "error:handler not found,topic:orderbook.500.BTCUSDT".
_TOPIC_IN_RET_MSG = re.compile(r"topic:([A-Za-z0-9_.\-]+)")


def topics_named_in(ret_msg: str) -> list[str]:
    return _TOPIC_IN_RET_MSG.findall(ret_msg)


def _is_decimal(text: object) -> bool:
    # Bybit sends plain non-negative decimals ("16493.50"); this refuses "nan",
    # "1e5", "-1", "1_0", non-ASCII digits and non-strings, which float() or
    # numeric would accept (or choke on).
    return isinstance(text, str) and text.isascii() and text.replace(".", "", 1).isdigit()


def _is_trade_id(text: object) -> bool:
    # UUIDs or numbers in practice; nothing that could break a CSV column.
    return (
        isinstance(text, str)
        and 0 < len(text) <= 64
        and text.isascii()
        and text.replace("-", "").replace("_", "").isalnum()
    )


# The book keys levels by float price: distinct decimals of up to 15
# significant digits are distinct floats, so a price may have at most 15 digits
# (16 characters with its point). Sizes are never keys; the bound only keeps
# junk out of numeric columns. Bybit's are far shorter (e.g. "16493.50", "0.006").
MAX_PRICE_CHARS = 16
MAX_SIZE_CHARS = 32


def _too_long(price: str, size: str) -> bool:
    return (
        len(price) > MAX_PRICE_CHARS
        or (len(price) == MAX_PRICE_CHARS and "." not in price)
        or len(size) > MAX_SIZE_CHARS
    )


def _levels(side: object, topic: str, what: str, most: int) -> list[Level]:
    """Check every [price, size] pair: plain non-negative ASCII decimals of
    bounded length (refusing "nan", "inf", "1e5", "-1", "", numbers that are
    not strings). The hot path of parsing: one pass, no helper calls; anything
    unexpected (a non-list, a non-string, a third element) surfaces as an
    exception turned into MalformedMessage. At most `most` levels: a side
    longer than its depth allows is refused before any work is spent on it.
    `topic` and `what` ("bids") name the side in errors only: no string is
    formatted per message."""
    if type(side) is not list:
        raise MalformedMessage(f"{topic} {what} is not a list")
    if len(side) > most:
        raise MalformedMessage(f"{topic} {what}: {len(side)} levels, more than {most}")
    try:
        for level in side:
            price, size = level
            # Lengths are checked through the pair's total, which is already at
            # hand for isascii(): one comparison per level in the common case.
            if (
                type(level) is not list
                or not price.replace(".", "", 1).isdigit()
                or not size.replace(".", "", 1).isdigit()
                or not (pair := price + size).isascii()
                or (len(pair) > MAX_PRICE_CHARS and _too_long(price, size))
            ):
                raise MalformedMessage(f"bad level in {topic} {what}: {level!r:.80}")
    except (ValueError, TypeError, AttributeError):
        raise MalformedMessage(f"bad level in {topic} {what}: {level!r:.80}") from None
    return side


# Exchange times outside these (2015 to 2100, in ms) are not times in
# milliseconds; one would also make a partition bound overflow.
MIN_TS_MS = 1_420_070_400_000
MAX_TS_MS = 4_102_444_800_000
# `u` and `seq` are stored as bigint; orjson hands over integers up to 2**64.
MAX_ID = 2**63 - 1
# Topics seen are cached with their StreamKey; a server inventing topics must
# not grow the cache without bound.
MAX_CACHED_TOPICS = 10_000


def _ms_to_us(value: object, what: str) -> int:
    ms = _int(value, what)
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        raise MalformedMessage(f"{what} {ms} is not a time in milliseconds")
    return ms * 1000


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedMessage(f"{what} is not an integer: {value!r:.40}")
    return value


def _json_object(raw: str | bytes, what: str = "") -> dict:
    """The JSON object a frame or an answer holds; MalformedMessage otherwise."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"{what}not JSON ({exc!s:.120}): {raw[:80]!r}") from None
    if not isinstance(msg, dict):
        raise MalformedMessage(f"{what}not a JSON object: {raw[:80]!r}")
    return msg


class FeedParser:
    """Parses the frames of one category's connections."""

    def __init__(self, category: str) -> None:
        self.category = category
        self._streams: dict[str, StreamKey] = {}

    def parse(self, raw: str | bytes, local_us: int) -> Parsed:
        # _json_object inlined: this runs for every frame.
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
                _int(u, f"{topic} u")
                _int(seq, f"{topic} seq")
                _int(ts, f"{topic} ts")
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
                _levels(data.get("b"), topic, "bids", most),
                _levels(data.get("a"), topic, "asks", most),
                u,  # type: ignore[arg-type]
                seq,  # type: ignore[arg-type]
                ts * 1000,  # type: ignore[operator]
                None if cts is None else _ms_to_us(cts, f"{topic} cts"),
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
            if not (_is_decimal(price) and _is_decimal(size) and _is_trade_id(trade_id)):
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
                    _ms_to_us(item.get("T"), "publicTrade T"),
                    local_us,
                    None if seq is None else _int(seq, "publicTrade seq"),
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
    match_us = None if cts is None else _ms_to_us(cts, f"{topic} cts")
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
    try:
        for level in side:
            price, size, rpi_size = level
            if (
                type(level) is not list
                or not price.replace(".", "", 1).isdigit()
                or not size.replace(".", "", 1).isdigit()
                or not rpi_size.replace(".", "", 1).isdigit()
                or not (price + size + rpi_size).isascii()
                or _too_long(price, size)
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


class SnapshotRefused(ValueError):
    """Bybit answered a snapshot request with an error code (retCode != 0):
    an unknown symbol, or a category without the endpoint. Not retried soon."""


# A REST snapshot holds at most FULL_SNAPSHOT_LEVELS a side today; the bound
# only keeps a runaway answer from eating memory, and leaves Bybit room to grow.
MAX_SNAPSHOT_LEVELS = 200_000


def parse_full_snapshot(raw: bytes, stream: StreamKey, local_us: int) -> BookUpdate:
    """The body of `GET /v5/market/full_orderbook` -> a snapshot BookUpdate of
    `stream` (u, seq, ts and cts as a pushed message carries them). Raises
    SnapshotRefused for Bybit's error answers, MalformedMessage for anything
    not shaped like the documented answer."""
    what = f"{stream.symbol} full_orderbook"
    msg = _json_object(raw, f"{what}: ")
    code = msg.get("retCode")
    if code != 0:
        raise SnapshotRefused(f"{what}: retCode {code!s:.20}: {str(msg.get('retMsg'))[:200]}")
    result = msg.get("result")
    if type(result) is not dict:
        raise MalformedMessage(f"{what}: result is not an object")
    if result.get("s") != stream.symbol:
        raise MalformedMessage(f"{what}: result.s is {str(result.get('s'))[:40]!r}")
    u = _int(result.get("u"), f"{what} u")
    seq = _int(result.get("seq"), f"{what} seq")
    if not (0 < u <= MAX_ID and 0 <= seq <= MAX_ID):
        raise MalformedMessage(f"{what}: u {u} or seq {seq} out of range")
    cts = result.get("cts")
    return BookUpdate(
        stream,
        True,
        _levels(result.get("b"), what, "bids", MAX_SNAPSHOT_LEVELS),
        _levels(result.get("a"), what, "asks", MAX_SNAPSHOT_LEVELS),
        u,
        seq,
        _ms_to_us(result.get("ts"), f"{what} ts"),
        None if cts is None else _ms_to_us(cts, f"{what} cts"),
        local_us,
    )
