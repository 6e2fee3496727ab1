"""Bybit's whole-book REST snapshot (`GET /v5/market/full_orderbook`), as a
`SnapshotSource`: pybit 5.17 has no call for it, so the URL and the answer's
parsing are here, and `feed.snapshots.SnapshotFetcher` does the asking."""

from __future__ import annotations

import urllib.parse

from depthwatch.feed.bybit.topics import FULL_BOOK_PATH
from depthwatch.feed.exchange import SnapshotThrottled
from depthwatch.feed.messages import (
    MAX_ID,
    MAX_SNAPSHOT_LEVELS,
    MalformedMessage,
    SnapshotRefused,
    checked_levels,
    int_field,
    json_object,
    ms_to_us,
)
from depthwatch.records import BookUpdate, StreamKey

# Bybit's "too many visits" (a rate limit said in a 200 answer).
THROTTLED_RET_CODE = 10006


class BybitSnapshots:
    """The whole book of a category's symbol (its `category` is Bybit's)."""

    def url(self, base_url: str, stream: StreamKey, levels: int) -> str:
        query = urllib.parse.urlencode({"category": stream.category, "symbol": stream.symbol})
        return f"{base_url}{FULL_BOOK_PATH}?{query}"

    def parse(self, body: bytes, stream: StreamKey, local_us: int) -> BookUpdate:
        return parse_full_snapshot(body, stream, local_us)

    def refusal(self, status: int, body: bytes) -> str | None:
        return None  # Bybit refuses in 200 answers (retCode); HTTP errors are transient


def parse_full_snapshot(raw: bytes, stream: StreamKey, local_us: int) -> BookUpdate:
    """The body of `GET /v5/market/full_orderbook` -> a snapshot BookUpdate of
    `stream` (u, seq, ts and cts as a pushed message carries them). Raises
    SnapshotRefused for Bybit's error answers, MalformedMessage for anything
    not shaped like the documented answer."""
    what = f"{stream.symbol} full_orderbook"
    msg = json_object(raw, f"{what}: ")
    code = msg.get("retCode")
    if code == THROTTLED_RET_CODE:
        raise SnapshotThrottled(f"{what}: retCode {code}: {str(msg.get('retMsg'))[:200]}")
    if code != 0:
        raise SnapshotRefused(f"{what}: retCode {code!s:.20}: {str(msg.get('retMsg'))[:200]}")
    result = msg.get("result")
    if type(result) is not dict:
        raise MalformedMessage(f"{what}: result is not an object")
    if result.get("s") != stream.symbol:
        raise MalformedMessage(f"{what}: result.s is {str(result.get('s'))[:40]!r}")
    u = int_field(result.get("u"), f"{what} u")
    seq = int_field(result.get("seq"), f"{what} seq")
    if not (0 < u <= MAX_ID and 0 <= seq <= MAX_ID):
        raise MalformedMessage(f"{what}: u {u} or seq {seq} out of range")
    cts = result.get("cts")
    return BookUpdate(
        stream,
        True,
        checked_levels(result.get("b"), what, "bids", MAX_SNAPSHOT_LEVELS),
        checked_levels(result.get("a"), what, "asks", MAX_SNAPSHOT_LEVELS),
        u,
        seq,
        ms_to_us(result.get("ts"), f"{what} ts"),
        None if cts is None else ms_to_us(cts, f"{what} cts"),
        local_us,
    )
