"""Binance's WebSocket protocol, as a `Wire`: combined streams, requests
`{"method": "SUBSCRIBE", "params": [...], "id": 1}` answered as a whole
(`{"result": null, "id": 1}`), the server's pings answered by the socket,
and a connection cut after 24 hours."""

from __future__ import annotations

import orjson

from depthwatch.feed.binance.parse import BinanceParser
from depthwatch.feed.binance.topics import (
    DEPTH_SUFFIX,
    MAX_CONNECTION_AGE_S,
    TRADE_SUFFIX,
    depth_stream,
    trade_stream,
)
from depthwatch.records import FULL_DEPTH, StreamKey

_METHODS = {"subscribe": "SUBSCRIBE", "unsubscribe": "UNSUBSCRIBE"}
# A request's streams: few requests, since a connection may send only 5 (spot)
# or 10 (futures) messages a second, and each answer covers the whole request.
STREAMS_PER_REQUEST = 200


class BinanceWire:
    args_per_request = STREAMS_PER_REQUEST
    ping_interval_s = 0.0  # Binance pings; picows answers with a pong
    max_age_s = MAX_CONNECTION_AGE_S

    def __init__(self, category: str) -> None:
        self.category = category

    def parser(self) -> BinanceParser:
        return BinanceParser(self.category)

    def request_id(self, connection: str, number: int) -> str:
        return str(number)  # futures takes only unsigned integers

    def request(self, op: str, topics: list[str], req_id: str) -> bytes:
        return orjson.dumps({"method": _METHODS[op], "params": topics, "id": int(req_id)})

    def ping(self, connection: str) -> bytes:
        return b""  # not sent: ping_interval_s is 0

    def book_topic(self, stream: StreamKey) -> str:
        return depth_stream(stream.symbol)

    def trade_topic(self, symbol: str) -> str:
        return trade_stream(symbol)

    def topic_fields(self, topic: str) -> tuple[str, int | None]:
        if topic.endswith(DEPTH_SUFFIX):
            return topic[: -len(DEPTH_SUFFIX)].upper(), FULL_DEPTH
        if topic.endswith(TRADE_SUFFIX):
            return topic[: -len(TRADE_SUFFIX)].upper(), None
        raise ValueError(f"not a Binance stream: {topic!r}")

    def snapshot_on_subscribe(self, topic: str) -> bool:
        return False  # diff streams only: snapshots come over REST
