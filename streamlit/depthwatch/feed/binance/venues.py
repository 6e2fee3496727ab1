"""Binance's markets as venues: spot (`binance`) and USDⓈ-M futures
(`binance-futures`), each book the whole book (records.FULL_DEPTH)."""

from __future__ import annotations

from functools import partial

from depthwatch.feed.binance.rest import BinanceSnapshots
from depthwatch.feed.binance.sync import BinanceFuturesRule, BinanceSpotRule
from depthwatch.feed.binance.topics import (
    FUTURES,
    MAX_STREAMS_PER_CONNECTION,
    REST_URL,
    SNAPSHOT_LEVELS,
    SPOT,
    TESTNET_REST_URL,
    TESTNET_WS_URL,
    WS_URL,
)
from depthwatch.feed.binance.wire import BinanceWire
from depthwatch.feed.exchange import Venue
from depthwatch.records import FULL_DEPTH


def _venue(category: str) -> Venue:
    return Venue(
        category=category,
        exchange="binance",
        tardis_exchange=category,
        depths=(FULL_DEPTH,),
        default_depths=(FULL_DEPTH,),
        ws_url=WS_URL[category],
        rest_url=REST_URL[category],
        testnet_ws_url=TESTNET_WS_URL[category],
        testnet_rest_url=TESTNET_REST_URL[category],
        wire=BinanceWire,
        snapshot_levels=SNAPSHOT_LEVELS[category],
        snapshots=partial(BinanceSnapshots, category),
        sync_rule=BinanceFuturesRule if category == FUTURES else BinanceSpotRule,
        max_topics_per_connection=MAX_STREAMS_PER_CONNECTION[category],
    )


VENUES = (_venue(SPOT), _venue(FUTURES))
