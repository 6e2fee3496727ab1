"""What every exchange's parser shares: the error a malformed frame raises,
the control messages and the checks of the values frames carry.

Anything that is not exactly the shape expected raises `MalformedMessage`
naming what was wrong, so the connection can log it, count it and go on: a
malformed frame must never reach a book. The checks are the hot path of
parsing, written once here for every exchange.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from depthwatch.records import BookUpdate, Level, StreamKey, Trade

# Error messages quote the offending input; a 10 MB frame must not make a 10 MB
# log line or feed event.
MAX_ERROR_CHARS = 300


class MalformedMessage(ValueError):
    """A frame that is not a well-formed message of its exchange.

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
    """An ack to subscribe/unsubscribe, or a pong, in one shape for every
    exchange (each parser fills what its exchange says)."""

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


# One frame may carry two books' updates (Bybit's `orderbook.rpi`: its ordinary
# and its RPI sizes), kept or refused together.
BookPair = tuple[BookUpdate, BookUpdate]
# What a parser makes of a frame; None: nothing for the collector (an event
# the exchange sends that depthwatch does not record).
Parsed = BookUpdate | BookPair | list[Trade] | ControlMessage | None


def is_decimal(text: object) -> bool:
    # Bybit sends plain non-negative decimals ("16493.50"); this refuses "nan",
    # "1e5", "-1", "1_0", non-ASCII digits and non-strings, which float() or
    # numeric would accept (or choke on).
    return isinstance(text, str) and text.isascii() and text.replace(".", "", 1).isdigit()


def is_trade_id(text: object) -> bool:
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


def too_long(price: str, size: str) -> bool:
    return (
        len(price) > MAX_PRICE_CHARS
        or (len(price) == MAX_PRICE_CHARS and "." not in price)
        or len(size) > MAX_SIZE_CHARS
    )


def checked_levels(side: object, topic: str, what: str, most: int) -> list[Level]:
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
    level: Any = None  # named in the error
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
                or (len(pair) > MAX_PRICE_CHARS and too_long(price, size))
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


def ms_to_us(value: object, what: str) -> int:
    ms = int_field(value, what)
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        raise MalformedMessage(f"{what} {ms} is not a time in milliseconds")
    return ms * 1000


def int_field(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedMessage(f"{what} is not an integer: {value!r:.40}")
    return value


def json_object(raw: str | bytes, what: str = "") -> dict:
    """The JSON object a frame or an answer holds; MalformedMessage otherwise."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"{what}not JSON ({exc!s:.120}): {raw[:80]!r}") from None
    if not isinstance(msg, dict):
        raise MalformedMessage(f"{what}not a JSON object: {raw[:80]!r}")
    return msg


# The most levels a side of a REST snapshot or a delta (Bybit's snapshots hold
# 10,000 today); the bound only keeps a runaway answer from eating memory.
MAX_SNAPSHOT_LEVELS = 200_000


class SnapshotRefused(ValueError):
    """The exchange answered a snapshot request with an error of its own (Bybit:
    retCode != 0; Binance: an error code): an unknown symbol, or a market
    without the endpoint. Not retried soon."""
