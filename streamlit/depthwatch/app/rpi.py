"""What the Live page shows of Bybit's `orderbook.rpi` (pure): the best bid
and ask without and with Retail Price Improvement orders, and the RPI share
of the size resting in the top levels.

The stream is recorded as two books (records.RPI_DEPTH: the ordinary sizes,
RPI_SIZES_DEPTH: the RPI sizes); a level of the book with RPI holds both
books' sizes at its price, so the view is made from the two books' newest
tops and snapshots."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pandas as pd

from depthwatch.storage.read.rows import BookView, LastQuote


@dataclass(frozen=True)
class Touch:
    """The best bid and ask of one view of the book (None: that side empty)."""

    bid: str | None
    bid_size: float | None
    ask: str | None
    ask_size: float | None


@dataclass(frozen=True)
class RpiView:
    without: Touch  # ordinary orders only: what every other book stream shows
    with_rpi: Touch  # ordinary and RPI orders together
    levels: int  # the top levels the shares are over (of the book with RPI)
    bid_share: float | None  # RPI size / all size in those bid levels; None: no size
    ask_share: float | None
    ts_us: int | None  # the snapshots' time; None: no snapshot in the window


def _best(
    plain: tuple[str | None, float | None], rpi: tuple[str | None, float | None], bids: bool
) -> tuple[str | None, float | None]:
    """The better of the two books' best levels on one side; at one price,
    the level holds both sizes."""
    candidates = [(Decimal(p), p, s or 0.0) for p, s in (plain, rpi) if p is not None]
    if not candidates:
        return None, None
    best = max(c[0] for c in candidates) if bids else min(c[0] for c in candidates)
    at_best = [c for c in candidates if c[0] == best]
    return at_best[0][1], sum(c[2] for c in at_best)


def _touch(quote: LastQuote | None) -> Touch:
    if quote is None:
        return Touch(None, None, None, None)
    return Touch(quote.bid_text, quote.bid_size, quote.ask_text, quote.ask_size)


def _share(plain: pd.DataFrame, rpi: pd.DataFrame, levels: int, bids: bool) -> float | None:
    """RPI size over all size in the top `levels` prices of the book with RPI
    (each book's top `levels` holds every one of them)."""
    both = pd.concat([plain.assign(rpi=0.0), rpi.assign(rpi=rpi["size"])], ignore_index=True)
    if both.empty:
        return None
    by_price = both.groupby("price")[["size", "rpi"]].sum().sort_index(ascending=not bids)
    top = by_price.head(levels)
    total = float(top["size"].sum())
    return float(top["rpi"].sum()) / total if total > 0 else None


def rpi_view(
    plain_quote: LastQuote | None,
    rpi_quote: LastQuote | None,
    plain_book: BookView | None,
    rpi_book: BookView | None,
    levels: int,
) -> RpiView:
    without = _touch(plain_quote)
    rpi = _touch(rpi_quote)
    bid, bid_size = _best((without.bid, without.bid_size), (rpi.bid, rpi.bid_size), True)
    ask, ask_size = _best((without.ask, without.ask_size), (rpi.ask, rpi.ask_size), False)
    bid_share = ask_share = None
    ts_us = None
    if plain_book is not None and rpi_book is not None:
        bid_share = _share(plain_book.bids, rpi_book.bids, levels, bids=True)
        ask_share = _share(plain_book.asks, rpi_book.asks, levels, bids=False)
        ts_us = min(plain_book.ts_us, rpi_book.ts_us)
    return RpiView(
        without, Touch(bid, bid_size, ask, ask_size), levels, bid_share, ask_share, ts_us
    )
