"""Hyperliquid facts, as data (docs/exchange-research.md, Hyperliquid: its API
docs' WebSocket pages and the Python SDK)."""

from __future__ import annotations

VENUE = "hyperliquid"  # Tardis's exchange id, and depthwatch's category
WS_URL = "wss://api.hyperliquid.xyz/ws"
TESTNET_WS_URL = "wss://api.hyperliquid-testnet.xyz/ws"
REST_URL = "https://api.hyperliquid.xyz"
TESTNET_REST_URL = "https://api.hyperliquid-testnet.xyz"

# `l2Book` at full precision (nSigFigs null): at most 20 levels a side.
BOOK_LEVELS = 20
BOOK = "l2Book"
TRADES = "trades"
# The server closes a connection that sent nothing for 60 s; the SDKs ping
# every 50 s.
PING_INTERVAL_S = 50.0
# 1,000 subscriptions per IP; one subscription per request.
MAX_SUBSCRIPTIONS = 1_000


def book_topic(coin: str) -> str:
    """depthwatch's name for a subscription (Hyperliquid's are JSON objects):
    'l2Book:BTC'."""
    return f"{BOOK}:{coin}"


def trade_topic(coin: str) -> str:
    return f"{TRADES}:{coin}"


def split_topic(topic: str) -> tuple[str, str]:
    """'l2Book:BTC' -> ('l2Book', 'BTC'); ValueError for anything else."""
    kind, _, coin = topic.partition(":")
    if kind not in (BOOK, TRADES) or not coin:
        raise ValueError(f"not a Hyperliquid subscription: {topic!r}")
    return kind, coin
