"""Binance facts, as data: endpoints, stream names, limits (Binance's docs,
2026: binance-spot-api-docs web-socket-streams.md and rest-api.md; USDⓈ-M
futures "Websocket Market Streams", "Order Book" and the 2026 split of
fstream's paths)."""

from __future__ import annotations

SPOT = "binance"  # Tardis's exchange ids, and depthwatch's categories for them
FUTURES = "binance-futures"

# Combined streams (`{"stream": name, "data": payload}`): the name tells the
# stream. Futures' depth and trades are "high-frequency public market data",
# served only under /public since 2026-04-23 (a stream on the wrong path is
# acked and silent).
WS_URL = {
    SPOT: "wss://stream.binance.com:9443/stream",
    FUTURES: "wss://fstream.binance.com/public/stream",
}
TESTNET_WS_URL = {
    SPOT: "wss://stream.testnet.binance.vision/stream",
    FUTURES: "wss://stream.binancefuture.com/stream",
}
REST_URL = {SPOT: "https://api.binance.com", FUTURES: "https://fapi.binance.com"}
TESTNET_REST_URL = {
    SPOT: "https://testnet.binance.vision",
    FUTURES: "https://testnet.binancefuture.com",
}
DEPTH_PATH = {SPOT: "/api/v3/depth", FUTURES: "/fapi/v1/depth"}
# The deepest REST snapshot: spot 5,000 levels a side (weight 250), futures
# 1,000 (weight 20); futures takes only these limits.
SNAPSHOT_LEVELS = {SPOT: 5_000, FUTURES: 1_000}
FUTURES_LIMITS = (5, 10, 20, 50, 100, 500, 1000)

# The diff depth stream at its fastest documented pace, and the trades Tardis
# records for both (`trade`, not `aggTrade`).
DEPTH_SUFFIX = "@depth@100ms"
TRADE_SUFFIX = "@trade"

# Per connection: 1,024 streams (spot; futures' docs say 200 in one place),
# 5 (spot) or 10 (futures) incoming messages a second, 24 hours of life.
MAX_STREAMS_PER_CONNECTION = {SPOT: 1_024, FUTURES: 200}
MAX_CONNECTION_AGE_S = 24 * 3600.0
# Binance's "invalid symbol" error code (a 400 answer to REST).
INVALID_SYMBOL = -1121


def depth_stream(symbol: str) -> str:
    """'BTCUSDT' -> 'btcusdt@depth@100ms' (stream names are lower case)."""
    return symbol.lower() + DEPTH_SUFFIX


def trade_stream(symbol: str) -> str:
    return symbol.lower() + TRADE_SUFFIX
