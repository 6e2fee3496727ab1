"""The Compare page's data: one asset on every venue that records it (BTC on
Bybit linear, Binance futures, Hyperliquid, ...), read in one transaction
and shared by every viewer for a second, as the Live page's is.

Per venue: the top of book over the window (mid, spread), the newest quote
(its data age) and how much rests within ±N bps of its own mid. That depth
comes from the newest profile of a whole book, or from the newest top-N
snapshot of any other; where that snapshot does not reach the range's edge
(a 20-level Hyperliquid book, a depth-50 one in a wide range), the figure is
a lower bound and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa
import streamlit as st

from depthwatch.app.data import HEALTH_DAY_US, bucket_us, read_view
from depthwatch.clock import now_us
from depthwatch.feed.registry import asset_of, exchange_of
from depthwatch.records import FULL_DEPTH, RPI_DEPTH, RPI_SIZES_DEPTH
from depthwatch.storage.read.chunks import last_quote
from depthwatch.storage.read.events import last_heartbeat, source_simulated
from depthwatch.storage.read.profiles import latest_profile, profile_extent
from depthwatch.storage.read.rows import BookView, HeartbeatView, LastQuote
from depthwatch.storage.read.streams import Stream, list_streams
from depthwatch.storage.read.tops import latest_book, top_series

RANGES_BPS = (5, 10, 25, 50, 100)
DEFAULT_RANGE_BPS = 25
MAX_POINTS = 300  # time buckets a line holds
SNAPSHOT_LEVELS_READ = 1_000  # all a periodic snapshot holds


@dataclass(frozen=True)
class SideDepth:
    size: float  # base units resting within the range (a lower bound unless `reaches`)
    notional: float  # the same in quote currency
    reaches: bool  # the recorded book goes past the range's edge on this side


@dataclass(frozen=True)
class VenueView:
    stream: Stream
    exchange: str
    quote: LastQuote | None
    top: pd.DataFrame  # storage.read.frames.TOP_COLUMNS per time bucket
    bids: SideDepth | None
    asks: SideDepth | None
    heartbeat: HeartbeatView | None

    @property
    def mid(self) -> float | None:
        return _mid(self.quote)


@dataclass(frozen=True)
class CompareView:
    asset: str
    start_us: int
    now_us: int
    range_bps: int
    venues: list[VenueView]  # the reference (first) is the one with the most messages
    simulated: bool


def assets(streams: list[Stream]) -> dict[str, list[Stream]]:
    """Each asset recorded on two or more venues, with one stream per venue
    (category): its whole book where recorded, else its deepest; never an
    RPI book (which leaves RPI orders out, or holds only them)."""
    by_asset: dict[str, dict[str, Stream]] = {}
    for stream in streams:
        if stream.depth in (RPI_DEPTH, RPI_SIZES_DEPTH):
            continue
        chosen = by_asset.setdefault(asset_of(stream.symbol), {})
        held = chosen.get(stream.category)
        if held is None or _rank(stream) > _rank(held):
            chosen[stream.category] = stream
    return {
        asset: sorted(venues.values(), key=lambda s: (exchange_of(s.category), s.category))
        for asset, venues in sorted(by_asset.items())
        if len(venues) >= 2
    }


def _rank(stream: Stream) -> int:
    return stream.depth if stream.depth != FULL_DEPTH else 1 << 20


@st.cache_resource(ttl=1.0, show_spinner=False, max_entries=32)
def compare_view(asset: str, window_min: int, range_bps: int) -> CompareView | None:
    """The asset on every venue over the last `window_min` minutes; None when
    fewer than two venues record it."""

    def work(conn: sa.Connection) -> CompareView | None:
        streams = assets(list_streams(conn)).get(asset)
        if not streams:
            return None
        now = now_us()
        start = now - window_min * 60_000_000
        bucket = bucket_us(window_min * 60, MAX_POINTS)
        venues = [_venue(conn, stream, start, now, bucket, range_bps) for stream in streams]
        keys = [stream.key for stream in streams]
        return CompareView(
            asset,
            start,
            now,
            range_bps,
            venues,
            simulated=source_simulated(conn, keys, start, now) is True,
        )

    return read_view(work)


def _venue(
    conn: sa.Connection, stream: Stream, start: int, now: int, bucket: int, range_bps: int
) -> VenueView:
    quote = last_quote(conn, stream, now - HEALTH_DAY_US)
    bids = asks = None
    mid = _mid(quote)
    if mid is not None:
        low, high = mid * (1 - range_bps / 10_000), mid * (1 + range_bps / 10_000)
        book = _book(conn, stream, start, low, high)
        if book is not None:
            bids = _side(book.bids, low, high, bid=True)
            asks = _side(book.asks, low, high, bid=False)
    return VenueView(
        stream,
        exchange_of(stream.category),
        quote,
        top_series(conn, stream, start, now, bucket),
        bids,
        asks,
        last_heartbeat(conn, stream.key, now - HEALTH_DAY_US),
    )


def _mid(quote: LastQuote | None) -> float | None:
    if quote is None or quote.bid is None or quote.ask is None:
        return None
    return (quote.bid + quote.ask) / 2


def _book(
    conn: sa.Connection, stream: Stream, start: int, low: float, high: float
) -> BookView | None:
    """The newest book to measure: a whole book's profile (its own buckets,
    within the range), or the newest periodic top-N snapshot."""
    if stream.depth == FULL_DEPTH:
        extent = profile_extent(conn, stream, start)
        if extent is not None:
            return latest_profile(conn, stream, start, low, high, extent[2])
    return latest_book(conn, stream, SNAPSHOT_LEVELS_READ, start)


def _side(levels: pd.DataFrame, low: float, high: float, bid: bool) -> SideDepth:
    prices, sizes = levels["price"], levels["size"]
    inside = (prices >= low) if bid else (prices <= high)
    # A level at the range's edge or past it shows the book went that far.
    reaches = bool(len(prices)) and bool((prices <= low).any() if bid else (prices >= high).any())
    return SideDepth(
        float(sizes[inside].sum()),
        float((sizes[inside] * prices[inside]).sum()),
        reaches,
    )
