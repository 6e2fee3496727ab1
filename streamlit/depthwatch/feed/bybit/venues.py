"""Bybit's markets as venues: one per v5 category, recorded under the
category's own name (`linear`, `inverse`, `spot`, `option`)."""

from __future__ import annotations

from depthwatch.feed.bybit.instruments import fetch_instruments
from depthwatch.feed.bybit.rest import BybitSnapshots
from depthwatch.feed.bybit.sync import BybitFullRule
from depthwatch.feed.bybit.topics import (
    CATEGORIES,
    FULL_CATEGORIES,
    FULL_SNAPSHOT_LEVELS,
    LEGACY_DEPTHS,
    MAX_ARGS_CHARS_PER_CONNECTION,
    MAX_ARGS_PER_CONNECTION,
    TARDIS_EXCHANGE,
    rest_url,
    valid_depths,
    ws_url,
)
from depthwatch.feed.bybit.wire import BybitWire
from depthwatch.feed.exchange import Venue


def _venue(category: str) -> Venue:
    full = category in FULL_CATEGORIES
    return Venue(
        category=category,
        exchange="bybit",
        tardis_exchange=TARDIS_EXCHANGE[category],
        depths=valid_depths(category),
        default_depths=(50,) if 50 in valid_depths(category) else valid_depths(category)[:1],
        legacy_depths=LEGACY_DEPTHS.get(category, ()),
        ws_url=ws_url(category),
        rest_url=rest_url(),
        testnet_ws_url=ws_url(category, testnet=True),
        testnet_rest_url=rest_url(testnet=True),
        wire=BybitWire,
        snapshot_levels=FULL_SNAPSHOT_LEVELS if full else 0,
        snapshots=BybitSnapshots if full else None,
        sync_rule=BybitFullRule if full else None,
        instruments=fetch_instruments,
        max_topics_per_connection=MAX_ARGS_PER_CONNECTION.get(category, 10_000),
        max_topic_chars_per_connection=MAX_ARGS_CHARS_PER_CONNECTION,
    )


VENUES = tuple(_venue(category) for category in CATEGORIES)
