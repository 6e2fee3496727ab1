"""Instrument metadata over Bybit's REST API (pybit's HTTP client).

Optional by design: the collector asks only when it talks to Bybit itself, and
carries on without tick sizes when REST is unreachable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstrumentInfo:
    symbol: str
    tick_size: str | None
    status: str


def fetch_instruments(
    category: str, symbols: tuple[str, ...], testnet: bool
) -> dict[str, InstrumentInfo] | None:
    """Known instruments among `symbols`, or None when REST could not be asked.
    A symbol missing from a successful answer does not exist on Bybit."""
    try:
        from pybit.exceptions import InvalidRequestError
        from pybit.unified_trading import HTTP

        client = HTTP(testnet=testnet, timeout=5, max_retries=1)
        found: dict[str, InstrumentInfo] = {}
        for symbol in symbols:
            try:
                reply = client.get_instruments_info(category=category, symbol=symbol)
            except InvalidRequestError:  # Bybit answered: no such symbol
                continue
            for item in reply.get("result", {}).get("list", []):
                if item.get("symbol") == symbol:
                    tick = (item.get("priceFilter") or {}).get("tickSize")
                    found[symbol] = InstrumentInfo(symbol, tick, str(item.get("status", "")))
        return found
    except Exception as exc:
        log.warning("instrument metadata unavailable (%s); continuing without tick sizes", exc)
        return None
