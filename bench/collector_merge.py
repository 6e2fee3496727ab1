"""bench_collector.py's stream and its scenario 1: the Bybit-shaped depth-50
messages every scenario replays, and the merge path measured in process on
them, pybit's against depthwatch's (no socket, no database)."""

from __future__ import annotations

import copy
import json
import random
import time

import orjson

import common  # noqa: F401  (this tree's depthwatch first on sys.path)
from depthwatch.book import StreamBook
from depthwatch.feed.bybit.parse import FeedParser
from depthwatch.records import StreamKey
from depthwatch.sim.market import DepthView, MarketBook, spec_for

DEPTH = 50


def generate_stream(symbol: str, deltas: int, seed: int, start_ms: int) -> list[bytes]:
    """A snapshot and `deltas` deltas of a synthetic depth-50 book, Bybit-shaped."""
    book = MarketBook(spec_for(symbol), 200, random.Random(f"{seed}:{symbol}"))
    view = DepthView(book, DEPTH)
    topic = f"orderbook.{DEPTH}.{symbol}"
    u, seq, ts = 1_000_000, 5_000_000_000, start_ms
    bids, asks = view.snapshot()
    out = [_message(topic, "snapshot", symbol, bids, asks, u, seq, ts)]
    while len(out) <= deltas:
        bids, asks = view.diff(book.step())
        if not bids and not asks:
            continue
        u, seq, ts = u + 1, seq + 7, ts + 20
        out.append(_message(topic, "delta", symbol, bids, asks, u, seq, ts))
    return out


def _message(
    topic: str, kind: str, symbol: str, bids: list, asks: list, u: int, seq: int, ts: int
) -> bytes:
    data = {"s": symbol, "b": bids, "a": asks, "u": u, "seq": seq}
    return orjson.dumps({"topic": topic, "type": kind, "ts": ts, "data": data, "cts": ts - 2})


def mean_changed_levels(streams: list[list[bytes]]) -> float:
    """Changed levels per delta (both sides), over every stream."""
    levels = deltas = 0
    for messages in streams:
        for raw in messages[1:]:
            data = orjson.loads(raw)["data"]
            levels += len(data["b"]) + len(data["a"])
            deltas += 1
    return levels / deltas


def pybit_merge_rate(streams: list[list[bytes]]) -> tuple[float, bool]:
    """pybit 5.17's path per message: json.loads, _process_delta_orderbook, deepcopy
    of the message with the merged book (what its callback receives)."""
    from pybit._websocket_stream import _V5WebSocketManager

    manager = _V5WebSocketManager.__new__(_V5WebSocketManager)
    manager.data = {}
    received = []
    count = 0
    start = time.perf_counter()
    for messages in streams:
        for raw in messages:
            message = json.loads(raw)
            topic = message["topic"]
            manager._process_delta_orderbook(message, topic)
            callback_data = copy.deepcopy(message)
            callback_data["type"] = "snapshot"
            callback_data["data"] = manager.data[topic]
            received.append(callback_data["data"]["b"][0][0])
            count += 1
    elapsed = time.perf_counter() - start
    # Is pybit's best bid (b[0]) still the best bid after the last message?
    sorted_ok = all(
        float(book["b"][0][0]) == max(float(p) for p, _ in book["b"])
        for book in manager.data.values()
    )
    return count / elapsed, sorted_ok


class _NullSink:
    def add_book_update(self, update: object) -> None:
        pass

    def add_quote(self, quote: object) -> None:
        pass

    def add_depth_snapshot(self, snapshot: object) -> None:
        pass

    def add_checkpoint(self, checkpoint: object) -> None:
        pass

    def add_feed_event(self, event: object) -> None:
        pass


def depthwatch_merge_rate(streams: list[list[bytes]]) -> float:
    """depthwatch's path per message: orjson parse + validation, exact book with
    u continuity, quote and snapshot derivation (records to a null sink)."""
    parser = FeedParser("linear")
    sink = _NullSink()
    books: dict[StreamKey, StreamBook] = {}
    count = 0
    start = time.perf_counter()
    for messages in streams:
        for raw in messages:
            update = parser.parse(raw, 0)
            book = books.get(update.stream)
            if book is None:
                book = books[update.stream] = StreamBook(update.stream, sink)
            book.apply(update)
            count += 1
    return count / (time.perf_counter() - start)


def merge_path(streams: list[list[bytes]]) -> None:
    """Scenario 1, printed."""
    print("\n1. merge path, in process (no socket, no database), same messages")
    pybit_rate, pybit_sorted = pybit_merge_rate(streams)
    ours_rate = depthwatch_merge_rate(streams)
    print(
        f"   pybit 5.17 merge + deepcopy : {pybit_rate:10,.0f} msg/s "
        f"({1e6 / pybit_rate:5.1f} us/msg); b[0] still the best bid at the end: {pybit_sorted}"
    )
    print(
        f"   depthwatch parse + book     : {ours_rate:10,.0f} msg/s "
        f"({1e6 / ours_rate:5.1f} us/msg); ratio {ours_rate / pybit_rate:.2f}x"
    )
