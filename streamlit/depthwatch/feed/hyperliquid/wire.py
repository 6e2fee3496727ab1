"""Hyperliquid's WebSocket protocol, as a `Wire`: one subscription per
request (`{"method": "subscribe", "subscription": {"type": "l2Book", "coin":
"BTC"}}`), answered in order without an id, an application ping every 50 s
(the server drops a connection silent for 60 s), and a snapshot on every
subscription, so a broken book is resynced by subscribing again."""

from __future__ import annotations

import orjson

from depthwatch.feed.hyperliquid.parse import HyperliquidParser
from depthwatch.feed.hyperliquid.topics import (
    BOOK,
    BOOK_LEVELS,
    PING_INTERVAL_S,
    book_topic,
    split_topic,
    trade_topic,
)
from depthwatch.records import StreamKey


class HyperliquidWire:
    args_per_request = 1  # one subscription per request
    ping_interval_s = PING_INTERVAL_S
    max_age_s = 0.0

    def __init__(self, category: str) -> None:
        self.category = category

    def parser(self) -> HyperliquidParser:
        return HyperliquidParser(self.category)

    def request_id(self, connection: str, number: int) -> str:
        return f"{connection}-{number}"  # not sent: answers come back in order

    def request(self, op: str, topics: list[str], req_id: str) -> bytes:
        (topic,) = topics
        kind, coin = split_topic(topic)
        return orjson.dumps({"method": op, "subscription": {"type": kind, "coin": coin}})

    def ping(self, connection: str) -> bytes:
        return b'{"method":"ping"}'

    def book_topic(self, stream: StreamKey) -> str:
        return book_topic(stream.symbol)

    def trade_topic(self, symbol: str) -> str:
        return trade_topic(symbol)

    def topic_fields(self, topic: str) -> tuple[str, int | None]:
        kind, coin = split_topic(topic)
        return coin, (BOOK_LEVELS if kind == BOOK else None)

    def snapshot_on_subscribe(self, topic: str) -> bool:
        return topic.startswith(BOOK)
