"""Hyperliquid frames -> records. Stateful per coin, and only here.

Every `l2Book` push is a whole snapshot of the top levels (no sequence, no
checksum). Storing each as a snapshot would cost 40 levels a message; so the
first push after a subscription is a snapshot and each later one is a delta
of the levels that changed since the one before (a level gone: size 0).
Replaying the deltas rebuilds every snapshot exactly. A push identical to the
one before (a repeated or frozen block) changes nothing and makes no record.
The deltas are numbered 1, 2, 3, ... per coin (`update_id`), the push's
`time` kept as `sequence`; a new subscription (a reconnect, a resync) starts
from a snapshot again, its numbers going on.

The first `trades` push after a subscription is a backlog of recent trades.
It is kept: its trades are real, and those already stored (a reconnect's
backlog) are dropped by the trades table's key (time, trade id). Tardis
leaves the whole push out, which also loses the trades made while a
connection was down.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from depthwatch.feed.hyperliquid.topics import BOOK, BOOK_LEVELS, TRADES, book_topic
from depthwatch.feed.messages import (
    MAX_CACHED_TOPICS,
    ControlMessage,
    MalformedMessage,
    Parsed,
    checked_levels,
    is_decimal,
    json_object,
    ms_to_us,
)
from depthwatch.records import BookUpdate, Level, StreamKey, Trade


@dataclass
class _CoinBook:
    """What the last push of a coin said, to diff the next one against."""

    number: int = 0  # the last update_id given
    time_ms: int = 0
    sides: tuple[dict[str, str], dict[str, str]] | None = None  # None: next is a snapshot
    repeats: int = 0  # pushes that changed nothing


def _changes(before: dict[str, str], after: dict[str, str]) -> list[Level]:
    changed = [[price, size] for price, size in after.items() if before.get(price) != size]
    changed += [[price, "0"] for price in before if price not in after]
    return changed


@dataclass
class HyperliquidParser:
    category: str
    books: dict[str, _CoinBook] = field(default_factory=dict)
    _streams: dict[str, StreamKey] = field(default_factory=dict)

    def parse(self, raw: bytes, local_us: int) -> Parsed:
        msg = json_object(raw)
        channel = msg.get("channel")
        data = msg.get("data")
        if channel == BOOK:
            coin = data.get("coin") if isinstance(data, dict) else None
            if not isinstance(coin, str):
                raise MalformedMessage(f"l2Book without a coin: {raw[:80]!r}")
            stream = self.stream_of(book_topic(coin))
            try:
                return self._book(stream, data, local_us)  # type: ignore[arg-type]
            except MalformedMessage as exc:
                exc.stream = stream
                raise
        if channel == TRADES:
            return self._trades(data, local_us)
        if channel == "subscriptionResponse":
            return self._acked(data)
        if channel == "pong":
            return ControlMessage(op="pong", success=True)
        if channel == "error":
            return ControlMessage(op="", success=False, ret_msg=str(data)[:300])
        raise MalformedMessage(f"unexpected channel {str(channel)[:40]!r}")

    def stream_of(self, topic: str) -> StreamKey:
        stream = self._streams.get(topic)
        if stream is None:
            kind, _, coin = topic.partition(":")
            if kind != BOOK or not coin or not coin.isascii() or not coin.isalnum():
                raise MalformedMessage(f"not a book subscription: {topic[:80]!r}")
            stream = StreamKey(self.category, coin, BOOK_LEVELS)
            if len(self._streams) >= MAX_CACHED_TOPICS:
                self._streams.clear()
            self._streams[topic] = stream
        return stream

    def _acked(self, data: object) -> ControlMessage:
        """A subscription answered: the book's next push is a snapshot."""
        if not isinstance(data, dict) or not isinstance(data.get("subscription"), dict):
            raise MalformedMessage(f"bad subscriptionResponse: {str(data)[:80]}")
        method, subscription = data.get("method"), data["subscription"]
        coin = str(subscription.get("coin", ""))
        if method == "subscribe" and subscription.get("type") == BOOK:
            self.books.setdefault(coin, _CoinBook()).sides = None
        return ControlMessage(op=str(method), success=True)

    def _book(self, stream: StreamKey, data: dict, local_us: int) -> BookUpdate | None:
        name = f"l2Book {stream.symbol}"
        exchange_us = ms_to_us(data.get("time"), f"{name} time")
        time_ms = exchange_us // 1000
        levels = data.get("levels")
        if type(levels) is not list or len(levels) != 2:
            raise MalformedMessage(f"{name}: levels is not [bids, asks]")
        sides = (
            _side(levels[0], name, "bids"),
            _side(levels[1], name, "asks"),
        )
        book = self.books.setdefault(stream.symbol, _CoinBook())
        before = book.sides
        if before is not None and time_ms < book.time_ms:
            raise MalformedMessage(f"{name}: time {time_ms} before {book.time_ms}")
        book.time_ms = time_ms
        book.sides = sides
        if before is None:
            book.number += 1
            bids, asks = ([[p, s] for p, s in side.items()] for side in sides)
            return BookUpdate(
                stream, True, bids, asks, book.number, time_ms, exchange_us, None, local_us
            )
        bids, asks = _changes(before[0], sides[0]), _changes(before[1], sides[1])
        if not bids and not asks:
            book.repeats += 1
            return None
        book.number += 1
        return BookUpdate(
            stream, False, bids, asks, book.number, time_ms, exchange_us, None, local_us
        )

    def _trades(self, data: object, local_us: int) -> list[Trade]:
        if type(data) is not list:
            raise MalformedMessage("trades: data is not a list")
        out: list[Trade] = []
        for item in data:
            if type(item) is not dict:
                raise MalformedMessage("trades: a trade is not an object")
            coin, side, tid = item.get("coin"), item.get("side"), item.get("tid")
            price, size = item.get("px"), item.get("sz")
            if not isinstance(coin, str) or side not in ("A", "B") or type(tid) is not int:
                raise MalformedMessage(f"trades: bad trade {item!r:.120}")
            if not (is_decimal(price) and is_decimal(size)):
                raise MalformedMessage(f"trades: bad trade {item!r:.120}")
            out.append(
                Trade(
                    self.category,
                    coin,
                    str(tid),
                    "buy" if side == "B" else "sell",  # B: the buyer took it
                    price,  # type: ignore[arg-type]
                    size,  # type: ignore[arg-type]
                    ms_to_us(item.get("time"), "trades time"),
                    local_us,
                    None,  # tid is a hash: no order
                )
            )
        return out


def _side(levels: object, name: str, what: str) -> dict[str, str]:
    """A side's [{"px", "sz", "n"}] checked as any level, as price -> size."""
    if type(levels) is not list:
        raise MalformedMessage(f"{name} {what} is not a list")
    if len(levels) > BOOK_LEVELS:
        raise MalformedMessage(f"{name} {what}: {len(levels)} levels, more than {BOOK_LEVELS}")
    try:
        pairs = [[level["px"], level["sz"]] for level in levels]
    except (TypeError, KeyError):
        raise MalformedMessage(f"bad level in {name} {what}: {str(levels)[:80]}") from None
    checked_levels(pairs, name, what, BOOK_LEVELS)
    side = dict(pairs)  # type: ignore[arg-type]
    if len(side) != len(pairs) or any(not float(size) for size in side.values()):
        raise MalformedMessage(f"{name} {what} repeats a price or holds a zero size")
    return side
