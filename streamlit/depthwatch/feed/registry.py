"""Every venue depthwatch records, by the category its streams are kept
under. Adding an exchange: a package under `feed/` (its `Wire`, parser,
REST snapshots and sync rule), a simulator of it under `sim/`, and its
venues added here. Nothing else looks at an exchange by name."""

from __future__ import annotations

from depthwatch.feed.binance.venues import VENUES as BINANCE
from depthwatch.feed.bybit.venues import VENUES as BYBIT
from depthwatch.feed.exchange import Venue
from depthwatch.feed.hyperliquid.venues import VENUES as HYPERLIQUID

VENUES: dict[str, Venue] = {venue.category: venue for venue in (*BYBIT, *BINANCE, *HYPERLIQUID)}
CATEGORIES = tuple(VENUES)
EXCHANGES = tuple(dict.fromkeys(venue.exchange for venue in VENUES.values()))
# Tardis's exchange id per category: the exchange column of exported files and
# the first part of every archive path.
TARDIS_EXCHANGE = {category: venue.tardis_exchange for category, venue in VENUES.items()}

# Not an exchange's: depthwatch's simulator sets this header on every handshake,
# so data recorded from it is marked simulated whoever started the collector.
SIMULATOR_HEADER = "X-Depthwatch-Simulator"


def venue_of(category: str) -> Venue:
    """The venue of a category; ValueError naming the known ones otherwise."""
    venue = VENUES.get(category)
    if venue is None:
        raise ValueError(f"unknown category {category!r}; use one of {', '.join(CATEGORIES)}")
    return venue


def valid_depths(category: str, legacy: bool = False) -> tuple[int, ...]:
    """The depths a category's venue serves (`legacy`: and those only archives hold)."""
    return venue_of(category).valid_depths(legacy)


def is_symbol(text: str) -> bool:
    """Whether `text` can be a symbol of any venue: ASCII letters, digits, '-'
    and '_' (so it is also safe in a topic, a file name and an archive path)."""
    return bool(text) and text.isascii() and text.replace("-", "").replace("_", "").isalnum()


def exchange_of(category: str) -> str:
    """The exchange a recorded category belongs to (a category no venue has
    any more, from an old recording, is shown as it is)."""
    venue = VENUES.get(category)
    return venue.exchange if venue is not None else category


# Quote currencies a symbol may end with ("BTCUSDT", "BTCUSD", "ETHUSDC"); a
# Hyperliquid coin ("BTC") is its asset already.
QUOTE_CURRENCIES = ("USDT", "USDC", "USD")


def asset_of(symbol: str) -> str:
    """The asset a symbol trades, to line venues up: 'BTCUSDT' -> 'BTC'."""
    for quote in QUOTE_CURRENCIES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)]
    return symbol
