"""The heatmap of resting size by price over time, with the touch and the trades
drawn over it: the long cells of `read.tops.heatmap_cells` pivoted into a
dense grid, sent as one byte per cell.

Its own module because the grid (indices, caps against outliers) and the byte
levels (colour scale, colour bar ticks) are logic of their own, tested apart
from the figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from depthwatch.app.lanes import shade_spans
from depthwatch.app.look import (
    ASK_COLOUR,
    BID_COLOUR,
    HEATMAP_COLOURSCALE,
    HEIGHT_HEATMAP,
    PRICE_FORMAT,
    column,
    note,
    require,
    scatter_type,
    step_line,
    time_figure,
    time_series,
)
from depthwatch.coverage import Span
from depthwatch.storage.read.frames import HEATMAP_COLUMNS, TOP_COLUMNS, TRADE_COLUMNS
from depthwatch.storage.read.rows import HeatmapGrid

# The heatmap travels as one byte per cell (a quarter of float32's bytes, sent
# every second): 0 is an empty cell, 1..255 the size from 0 to the clip level.
HEATMAP_LEVELS = 255
HEATMAP_TICKS = 5
MAX_PRICE_ROWS = 500  # heatmap rows; an outlier price must not allocate millions of cells
MAX_TIME_COLUMNS = 10_000
TRADE_MARKER_PX = (3.0, 9.0)  # small: the heatmap under them is the point
TRADE_MARKER_OPACITY = 0.7


def _window_of(index: np.ndarray, limit: int, keep: str) -> tuple[int, int]:
    """The [lo, hi) index range to keep when a grid axis would exceed `limit`."""
    lo, hi = int(index.min()), int(index.max()) + 1
    if hi - lo <= limit:
        return lo, hi
    if keep == "last":
        return hi - limit, hi
    start = int(np.median(index)) - limit // 2
    start = max(lo, min(start, hi - limit))  # no empty rows beyond the data
    return start, start + limit


def heatmap_grid(
    cells: pd.DataFrame, grid: HeatmapGrid
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pivot long cells into a dense float32 grid (NaN = no cell), the layout
    plotly's heatmap draws as one canvas image.

    Returns (bucket start times, price bucket lower edges, z) with
    z[row, column] = size at (prices[row], times[column]). Indices come from
    round((v - min) / step), so float noise in the query's bucketing cannot shift
    a cell. A cell seen twice keeps its larger size. An outlier price or time
    cannot blow up memory: rows are capped around the median price, columns to
    the newest MAX_TIME_COLUMNS."""
    require(cells, HEATMAP_COLUMNS)
    if grid.time_bucket_ms <= 0 or grid.price_step <= 0:
        raise ValueError(f"grid steps must be positive: {grid}")
    t = column(cells, "t_ms")
    p = column(cells, "price")
    size = column(cells, "size")
    ok = np.isfinite(t) & np.isfinite(p) & np.isfinite(size)
    t, p, size = t[ok], p[ok], size[ok]
    if t.size == 0:
        empty = np.empty(0, dtype=np.float64)
        return empty, empty, np.empty((0, 0), dtype=np.float32)
    t0, p0 = float(t.min()), float(p.min())
    col = np.rint((t - t0) / grid.time_bucket_ms).astype(np.int64)
    row = np.rint((p - p0) / grid.price_step).astype(np.int64)
    c_lo, c_hi = _window_of(col, MAX_TIME_COLUMNS, keep="last")
    r_lo, r_hi = _window_of(row, MAX_PRICE_ROWS, keep="centre")
    inside = (col >= c_lo) & (col < c_hi) & (row >= r_lo) & (row < r_hi)
    col, row, size = col[inside] - c_lo, row[inside] - r_lo, size[inside]
    z = np.full((r_hi - r_lo, c_hi - c_lo), np.nan, dtype=np.float32)
    np.fmax.at(z, (row, col), size.astype(np.float32))
    times = t0 + np.arange(c_lo, c_hi, dtype=np.float64) * grid.time_bucket_ms
    prices = p0 + np.arange(r_lo, r_hi, dtype=np.float64) * grid.price_step
    return times, prices, z


def heatmap_zmax(z: np.ndarray, clip_percentile: float) -> float | None:
    """Top of the colour scale: a percentile of the non-empty cells, so one wall
    does not wash out every other level. None when there is nothing to draw."""
    filled = z[np.isfinite(z)]
    if filled.size == 0:
        return None
    top = float(np.percentile(filled.astype(np.float64), clip_percentile))
    return top if top > 0 else 1.0


def heatmap_levels(z: np.ndarray, zmax: float) -> np.ndarray:
    """Sizes as bytes: NaN (no level there) -> 0, size s -> 1 + 254 * min(s, zmax) / zmax."""
    filled = np.isfinite(z)
    scaled = np.clip(np.where(filled, z, 0.0) / zmax, 0.0, 1.0)
    levels = 1 + np.rint(scaled * (HEATMAP_LEVELS - 1))
    return np.where(filled, levels, 0).astype(np.uint8)


def _level_of(size: float, zmax: float) -> float:
    return 1 + size / zmax * (HEATMAP_LEVELS - 1)


def _levels_colourscale() -> list[list[float | str]]:
    """HEATMAP_COLOURSCALE over levels 1..255, with level 0 transparent: an
    empty cell shows the background, because missing is not the same as zero."""
    first = 1 / HEATMAP_LEVELS
    scale: list[list[float | str]] = [[0.0, "rgba(0,0,0,0)"], [first * 0.999, "rgba(0,0,0,0)"]]
    for stop, colour in HEATMAP_COLOURSCALE:
        scale.append([first + stop * (1 - first), colour])
    return scale


def heatmap_figure(
    cells: pd.DataFrame,
    grid: HeatmapGrid,
    top: pd.DataFrame,
    trades: pd.DataFrame,
    spans: list[Span],
    x_range: tuple[float, float],
    uirevision: str,
    clip_percentile: float = 99.0,
) -> go.Figure:
    """Resting size by price over time, with the touch and the trades over it.

    Cell (column j, row i) is drawn centred on x = times[j] + time_bucket_ms / 2,
    y = prices[i] + price_step / 2 (heatmap x0/dx, y0/dy), so it covers exactly
    [t, t + bucket) x [p, p + step) and lines up with the step lines of the
    other charts. Empty cells are transparent: missing is not the same as zero."""
    fig = time_figure(
        top, TOP_COLUMNS, x_range, uirevision, HEIGHT_HEATMAP, "price", hovermode="closest"
    )
    require(trades, TRADE_COLUMNS)
    fig.update_yaxes(tickformat=PRICE_FORMAT, hoverformat=PRICE_FORMAT)
    times, prices, z = heatmap_grid(cells, grid)
    zmax = heatmap_zmax(z, clip_percentile)
    if zmax is None:
        note(fig, "no heatmap cells in this window")
    else:
        sizes = np.linspace(0.0, zmax, HEATMAP_TICKS)
        fig.add_trace(
            go.Heatmap(
                z=heatmap_levels(z, zmax),
                x0=float(times[0]) + grid.time_bucket_ms / 2.0,
                dx=float(grid.time_bucket_ms),
                y0=float(prices[0]) + grid.price_step / 2.0,
                dy=float(grid.price_step),
                zmin=0,
                zmax=HEATMAP_LEVELS,
                colorscale=_levels_colourscale(),
                name="resting size",
                showlegend=False,
                hovertemplate="%{x|%H:%M:%S} UTC<br>price ≈ %{y}<extra></extra>",
                colorbar={
                    "title": {
                        "text": f"{grid.cell_rule} size per cell (clipped at p{clip_percentile:g})",
                        "side": "right",
                        "font": {"size": 10},
                    },
                    "thickness": 10,
                    "x": 1.0,
                    "xpad": 4,
                    "tickvals": [_level_of(v, zmax) for v in sizes],
                    "ticktext": [f"{v:.3g}" for v in sizes[:-1]] + [f"≥{sizes[-1]:.3g}"],
                },
            )
        )
    _add_touch_lines(fig, top)
    _add_trades(fig, trades)
    return shade_spans(fig, spans, over=True)


def _add_touch_lines(fig: go.Figure, top: pd.DataFrame) -> None:
    if len(top) == 0:
        return
    t, bid, ask = time_series(top, "bid", "ask")
    trace = scatter_type(t.size)
    for name, y, colour in (("best bid", bid, BID_COLOUR), ("best ask", ask, ASK_COLOUR)):
        fig.add_trace(step_line(trace, t, y, name, colour, 1.5, hoverinfo="skip"))


def trade_marker_px(size: np.ndarray) -> np.ndarray:
    """Marker diameters: area grows with size up to the 99th percentile trade, so
    one block trade does not shrink every other mark to a dot."""
    lo, hi = TRADE_MARKER_PX
    if size.size == 0:
        return np.empty(0, dtype=np.float64)
    ref = float(np.percentile(size, 99.0))
    if not np.isfinite(ref) or ref <= 0:
        return np.full(size.shape, lo)
    scaled = np.sqrt(np.clip(size / ref, 0.0, 1.0))
    return np.asarray(lo + (hi - lo) * np.nan_to_num(scaled))


def _add_trades(fig: go.Figure, trades: pd.DataFrame) -> None:
    if len(trades) == 0:
        return
    side = trades["side"].astype(str).str.lower().to_numpy()
    t, price, size = column(trades, "t_ms"), column(trades, "price"), column(trades, "size")
    px = trade_marker_px(size)
    for name, wanted, symbol, colour in (
        ("buys", "buy", "triangle-up", BID_COLOUR),
        ("sells", "sell", "triangle-down", ASK_COLOUR),
    ):
        mask = side == wanted
        if not mask.any():
            continue
        fig.add_trace(
            scatter_type(int(mask.sum()))(
                x=t[mask],
                y=price[mask],
                customdata=size[mask],
                name=name,
                mode="markers",
                marker={
                    "symbol": symbol,
                    "size": px[mask],
                    "color": colour,
                    "opacity": TRADE_MARKER_OPACITY,
                    "line": {"color": "white", "width": 0.5},
                },
                hovertemplate=(
                    f"%{{x|%H:%M:%S.%L}} UTC<br>{wanted} %{{customdata:,.6~g}} at %{{y}}"
                    "<extra></extra>"
                ),
            )
        )
