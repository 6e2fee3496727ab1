"""Bybit v5 public stream facts, as data: endpoints, depths, topic names, limits."""

from __future__ import annotations

from depthwatch.records import FULL_DEPTH, RPI_DEPTH, RPI_SIZES_DEPTH

CATEGORIES = ("linear", "inverse", "spot", "option")

MAINNET_WS = "wss://stream.bybit.com/v5/public/{category}"
TESTNET_WS = "wss://stream-testnet.bybit.com/v5/public/{category}"
MAINNET_REST = "https://api.bybit.com"
TESTNET_REST = "https://api-testnet.bybit.com"

# The whole book: `orderbook.full.{symbol}` sends deltas only (every 200 ms),
# started from `GET /v5/market/full_orderbook`, which holds at most this many
# levels a side (docs/v5/market/full-ob.mdx; spot on mainnet since 2026-07-16,
# linear and inverse on testnet, their mainnet date not set).
FULL_BOOK_PATH = "/v5/market/full_orderbook"
FULL_SNAPSHOT_LEVELS = 10_000
FULL_CATEGORIES = ("linear", "inverse", "spot")
# `orderbook.rpi.{symbol}`: 50 levels at 100 ms, each [price, non-RPI size, RPI
# size] (docs/v5/websocket/public/orderbook-rpi.mdx: spot, perpetuals, futures).
RPI_CATEGORIES = ("linear", "inverse", "spot")

# Depths Bybit serves per category (docs, 2026).
DEPTHS: dict[str, tuple[int, ...]] = {
    "linear": (1, 50, 200, 1000),
    "inverse": (1, 50, 200, 1000),
    "spot": (1, 50, 200, 1000),
    "option": (25, 100),
}
# Depth 500 on linear/inverse was switched off on 2025-09-30, but Bybit's
# history archive still carries it; accepted only with `legacy_depths`.
LEGACY_DEPTHS: dict[str, tuple[int, ...]] = {"linear": (500,), "inverse": (500,)}

# Subscription limits.
MAX_ARGS_CHARS_PER_CONNECTION = 21_000
MAX_ARGS_PER_REQUEST = {"spot": 10}  # other categories: no documented per-request cap
DEFAULT_ARGS_PER_REQUEST = 10  # small requests keep a failed ack's blast radius small
MAX_ARGS_PER_CONNECTION = {"option": 2_000}

PING_INTERVAL_S = 20.0

# Tardis exchange ids per category.
TARDIS_EXCHANGE = {
    "linear": "bybit",
    "inverse": "bybit",
    "spot": "bybit-spot",
    "option": "bybit-options",
}


def ws_url(category: str, testnet: bool = False) -> str:
    return (TESTNET_WS if testnet else MAINNET_WS).format(category=category)


def rest_url(testnet: bool = False) -> str:
    return TESTNET_REST if testnet else MAINNET_REST


def valid_depths(category: str, legacy: bool = False) -> tuple[int, ...]:
    """Depths served for `category`: the numbered ones, then the whole book
    (FULL_DEPTH) and the RPI book (RPI_DEPTH) where Bybit has them."""
    depths = DEPTHS[category]
    if legacy:
        depths = depths + LEGACY_DEPTHS.get(category, ())
    if category in FULL_CATEGORIES:
        depths = (*depths, FULL_DEPTH)
    if category in RPI_CATEGORIES:
        depths = (*depths, RPI_DEPTH)
    return depths


_NAMED_DEPTHS = {FULL_DEPTH: "full", RPI_DEPTH: "rpi", RPI_SIZES_DEPTH: "rpi"}


def book_topic(depth: int, symbol: str) -> str:
    """'orderbook.50.BTCUSDT'; 'orderbook.full.BTCUSDT' for FULL_DEPTH;
    'orderbook.rpi.BTCUSDT' for both books of the RPI stream."""
    return f"orderbook.{_NAMED_DEPTHS.get(depth, depth)}.{symbol}"


def trade_topic(symbol: str) -> str:
    return f"publicTrade.{symbol}"


def split_topic(topic: str) -> tuple[str, int | None, str]:
    """'orderbook.50.BTCUSDT' -> ('orderbook', 50, 'BTCUSDT');
    'orderbook.full.BTCUSDT' -> ('orderbook', FULL_DEPTH, 'BTCUSDT');
    'orderbook.rpi.BTCUSDT' -> ('orderbook', RPI_DEPTH, 'BTCUSDT');
    'publicTrade.BTCUSDT' -> ('publicTrade', None, 'BTCUSDT')."""
    parts = topic.split(".")
    if parts[0] == "orderbook" and len(parts) == 3 and parts[1] in ("full", "rpi"):
        return "orderbook", FULL_DEPTH if parts[1] == "full" else RPI_DEPTH, parts[2]
    if parts[0] == "orderbook" and len(parts) == 3 and parts[1].isdigit():
        return "orderbook", int(parts[1]), parts[2]
    if len(parts) == 2:
        return parts[0], None, parts[1]
    raise ValueError(f"unrecognised topic {topic!r}")
