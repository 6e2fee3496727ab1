"""Pure logic around connections: subscription planning, backoff, configuration."""

from __future__ import annotations

import random

import pytest

from depthwatch.collector import plan_connections
from depthwatch.config import CollectorConfig, ConfigError
from depthwatch.feed.bybit.topics import MAX_ARGS_CHARS_PER_CONNECTION
from depthwatch.feed.connection import ConnectionConfig, ReconnectPolicy


def test_topics_are_spread_within_the_per_connection_limits():
    topics = [f"orderbook.1000.SYMBOL{i:05d}USDT" for i in range(2_000)]
    plans = plan_connections(topics, "linear", topics_per_connection=10_000)
    assert [t for plan in plans for t in plan] == topics  # all, once, in order
    for plan in plans:
        assert sum(len(t) + 3 for t in plan) <= MAX_ARGS_CHARS_PER_CONNECTION
    assert len(plans) == -(-sum(len(t) + 3 for t in topics) // MAX_ARGS_CHARS_PER_CONNECTION)


def test_topics_per_connection_caps_each_connection():
    topics = [f"orderbook.50.S{i}" for i in range(7)]
    assert [len(p) for p in plan_connections(topics, "linear", 3)] == [3, 3, 1]


def test_options_respect_both_the_2000_args_and_the_character_limits():
    topics = [f"orderbook.25.BTC-27DEC26-{i}-C" for i in range(4_500)]
    plans = plan_connections(topics, "option", 10_000)
    assert [t for plan in plans for t in plan] == topics
    assert all(len(p) <= 2_000 for p in plans)
    assert all(sum(len(t) + 3 for t in p) <= MAX_ARGS_CHARS_PER_CONNECTION for p in plans)


def test_spot_subscribes_at_most_10_args_per_request():
    assert ConnectionConfig("ws://x", "spot", ()).args_per_request == 10


def test_backoff_grows_exponentially_with_bounded_jitter_and_a_cap():
    policy = ReconnectPolicy(initial_s=0.5, max_s=30.0, factor=2.0, jitter=0.25)
    rng = random.Random(1)
    for attempt in range(12):
        base = min(30.0, 0.5 * 2**attempt)
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(base * 0.75 <= d <= base * 1.25 for d in delays)
        assert max(delays) - min(delays) > base * 0.3  # jitter really spreads them


def test_config_validates_depth_per_category_and_lists_topics():
    config = CollectorConfig(category="spot", symbols=("BTCUSDT",), depths=(1, 50), trades=True)
    assert config.topics() == ["orderbook.1.BTCUSDT", "orderbook.50.BTCUSDT", "publicTrade.BTCUSDT"]
    assert config.endpoint == "wss://stream.bybit.com/v5/public/spot"
    assert (
        CollectorConfig(testnet=True).endpoint == "wss://stream-testnet.bybit.com/v5/public/linear"
    )
    with pytest.raises(ConfigError, match="depth 500 is not served for linear"):
        CollectorConfig(depths=(500,))
    assert CollectorConfig(depths=(500,), legacy_depths=True).depths == (500,)
    with pytest.raises(ConfigError, match="valid depths: 25, 100"):
        CollectorConfig(category="option", depths=(50,))
    with pytest.raises(ConfigError, match="publishes option trades per base coin"):
        CollectorConfig(category="option", depths=(25,), trades=True)
    with pytest.raises(ConfigError, match="is not a symbol"):
        CollectorConfig(symbols=("BTC USDT",))
    with pytest.raises(ConfigError, match="no symbols"):
        CollectorConfig(symbols=())
