"""Binance's REST depth snapshots (`/api/v3/depth`, `/fapi/v1/depth`), as a
`SnapshotSource`: errors come as HTTP statuses with `{"code", "msg"}` bodies;
an unknown symbol (-1121) is refused outright, 429 and 418 (with
`Retry-After`) are the fetcher's shared backoff."""

from __future__ import annotations

import urllib.parse

from depthwatch.feed.binance.parse import error_code, is_invalid_symbol, parse_depth_snapshot
from depthwatch.feed.binance.topics import DEPTH_PATH, FUTURES, FUTURES_LIMITS
from depthwatch.records import BookUpdate, StreamKey


def futures_limit(levels: int) -> int:
    """Futures takes only some limits: the smallest at least `levels`."""
    return next((limit for limit in FUTURES_LIMITS if limit >= levels), FUTURES_LIMITS[-1])


class BinanceSnapshots:
    def __init__(self, category: str) -> None:
        self.category = category
        self.futures = category == FUTURES

    def url(self, base_url: str, stream: StreamKey, levels: int) -> str:
        limit = futures_limit(levels) if self.futures else levels
        query = urllib.parse.urlencode({"symbol": stream.symbol, "limit": limit})
        return f"{base_url}{DEPTH_PATH[self.category]}?{query}"

    def parse(self, body: bytes, stream: StreamKey, local_us: int) -> BookUpdate:
        return parse_depth_snapshot(body, stream, local_us, self.futures)

    def refusal(self, status: int, body: bytes) -> str | None:
        if status == 400 and is_invalid_symbol(body):
            code, msg = error_code(body)
            return f"HTTP 400, code {code}: {msg} (not a {self.category} symbol)"
        return None
