"""Bybit v5's public WebSocket protocol, as a `Wire`: `{"req_id", "op",
"args"}` requests acked one by one (feed/bybit/parse.py reads the acks),
an application-level ping every 20 s, topics named `orderbook.50.BTCUSDT`."""

from __future__ import annotations

import orjson

from depthwatch.feed.bybit.parse import FeedParser
from depthwatch.feed.bybit.topics import (
    DEFAULT_ARGS_PER_REQUEST,
    MAX_ARGS_PER_REQUEST,
    PING_INTERVAL_S,
    book_topic,
    split_topic,
    trade_topic,
)
from depthwatch.records import FULL_DEPTH, StreamKey

_FULL_TOPIC_PREFIX = book_topic(FULL_DEPTH, "")


class BybitWire:
    ping_interval_s = PING_INTERVAL_S
    max_age_s = 0.0

    def __init__(self, category: str) -> None:
        self.category = category
        self.args_per_request = MAX_ARGS_PER_REQUEST.get(category, DEFAULT_ARGS_PER_REQUEST)

    def parser(self) -> FeedParser:
        return FeedParser(self.category)

    def request_id(self, connection: str, number: int) -> str:
        return f"{connection}-{number}"

    def request(self, op: str, topics: list[str], req_id: str) -> bytes:
        return orjson.dumps({"req_id": req_id, "op": op, "args": topics})

    def ping(self, connection: str) -> bytes:
        return orjson.dumps({"req_id": f"ping-{connection}", "op": "ping"})

    def book_topic(self, stream: StreamKey) -> str:
        return book_topic(stream.depth, stream.symbol)

    def trade_topic(self, symbol: str) -> str:
        return trade_topic(symbol)

    def topic_fields(self, topic: str) -> tuple[str, int | None]:
        _, depth, symbol = split_topic(topic)
        return symbol, depth

    def snapshot_on_subscribe(self, topic: str) -> bool:
        # The whole book sends deltas only: its snapshots come over REST.
        return topic.startswith("orderbook.") and not topic.startswith(_FULL_TOPIC_PREFIX)
