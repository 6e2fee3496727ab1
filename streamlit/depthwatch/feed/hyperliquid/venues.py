"""Hyperliquid's perpetuals as one venue: books of depth 20 (`l2Book`)."""

from __future__ import annotations

from depthwatch.feed.exchange import Venue
from depthwatch.feed.hyperliquid.topics import (
    BOOK_LEVELS,
    MAX_SUBSCRIPTIONS,
    REST_URL,
    TESTNET_REST_URL,
    TESTNET_WS_URL,
    VENUE,
    WS_URL,
)
from depthwatch.feed.hyperliquid.wire import HyperliquidWire

VENUES = (
    Venue(
        category=VENUE,
        exchange=VENUE,
        tardis_exchange=VENUE,
        depths=(BOOK_LEVELS,),
        default_depths=(BOOK_LEVELS,),
        ws_url=WS_URL,
        rest_url=REST_URL,
        testnet_ws_url=TESTNET_WS_URL,
        testnet_rest_url=TESTNET_REST_URL,
        wire=HyperliquidWire,
        max_topics_per_connection=MAX_SUBSCRIPTIONS,
    ),
)
