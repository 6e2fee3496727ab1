"""pybit's bare WebSocket on the simulator's stream: issue 19's yardstick for
the collector's flat-out throughput (goal: at least 3x this, in the same run).

pybit 5.17's `unified_trading.WebSocket` as a user runs it, no database: its
websocket-client thread reads each frame, `json.loads` it, merges the book
(`_process_delta_orderbook`), deep-copies the message with the merged book
and calls the callback, which only counts. Only the URL is ours (the
simulator's, where pybit formats Bybit's)."""

from __future__ import annotations

import logging
import threading
import time

from pybit.unified_trading import WebSocket


class _LocalWebSocket(WebSocket):
    """pybit's WebSocket, connecting to `url` instead of Bybit."""

    url = ""

    def _connect(self, url: str) -> None:
        super()._connect(self.url)  # pybit formats the URL; this one has no fields


def pybit_socket_rate(
    url: str, symbols: list[str], depth: int, expected: int, timeout_s: float = 600.0
) -> float:
    """Messages per second from the first to the `expected`-th callback."""
    logging.getLogger("pybit").setLevel(logging.WARNING)
    _LocalWebSocket.url = url
    times: list[float] = []
    done = threading.Event()

    def counted(message: dict) -> None:
        times.append(time.perf_counter())
        if len(times) >= expected:
            done.set()

    ws = _LocalWebSocket("linear", testnet=False, retries=3)
    try:
        ws.orderbook_stream(depth, symbols, counted)
        if not done.wait(timeout_s):
            raise RuntimeError(f"pybit received {len(times)}/{expected} messages")
    finally:
        ws.exit()
    return (expected - 1) / (times[expected - 1] - times[0])
