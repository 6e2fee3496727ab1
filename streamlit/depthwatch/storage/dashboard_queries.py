"""Read queries of the live dashboard: small, bounded by the window, aggregated in SQL.

Every query here is bounded by a time window on the partition key `ts_us` (or
by `local_us` on the small tables), so its cost does not grow with the history
stored. Results come back as pandas DataFrames of float64 with times as
milliseconds since the epoch (`t_ms`, UTC), which plotly draws on a date axis
and ships to the browser as typed arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

# Column contracts shared with the figure builders (depthwatch.app.figures).
TOP_COLUMNS = ("t_ms", "bid", "ask", "bid_min", "ask_max", "mid", "spread_bps", "spread_bps_max")
HEATMAP_COLUMNS = ("t_ms", "price", "size")
IMBALANCE_COLUMNS = ("t_ms", "bid_size", "ask_size", "imbalance")
TRADE_COLUMNS = ("t_ms", "price", "size", "side")
EVENT_COLUMNS = ("t_ms", "kind", "detail", "stream_level")


@dataclass(frozen=True)
class BookView:
    """The newest recorded top-N book of a stream (a periodic depth snapshot)."""

    ts_us: int  # exchange time the snapshot stands for
    local_us: int  # receive time of the last message applied before it
    bids: pd.DataFrame  # columns price, size (float64), best first
    asks: pd.DataFrame  # columns price, size (float64), best first


@dataclass(frozen=True)
class HeatmapGrid:
    """How heatmap cells were bucketed: cell (t, p) holds the largest resting
    size summed over [p, p + price_step) seen in [t, t + time_bucket_ms)."""

    time_bucket_ms: float
    price_step: float
    cell_rule: str = "max"  # what a cell shows of the snapshots in its time bucket


@dataclass(frozen=True)
class Span:
    """An interval in which the recorded book is not to be trusted or is missing."""

    start_ms: float
    end_ms: float
    cause: str  # e.g. "gap", "disconnect", "collector not running"
