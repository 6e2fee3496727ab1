"""Figure builders of the live dashboard: DataFrames in, plotly figures out.

Pure functions, no I/O and no streamlit, so every chart can be unit-tested on
hand-made frames and rebuilt every second without side effects. Data goes into
the traces as NumPy arrays, which plotly serialises as compact typed arrays;
the template is a few lines instead of plotly's ~10 KB default, because the
whole figure travels to every browser on every refresh.

Times are `t_ms` (float64 ms since the epoch, UTC) on plotly date axes, which
plotly.js shows in UTC. All time charts take the window's `x_range` and share
one left/right margin, so stacked charts line up to the pixel.

Zoom and `uirevision`: plotly.js keeps a user's zoom across refreshes only for
attributes the new figure does not change. The y axes are autoranged, so a y
zoom survives; the x range is the window's, so while the window slides (live
follow) every refresh moves it, and an x zoom survives only while `x_range`
stays put (a paused or fixed window).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from depthwatch.coverage import Span
from depthwatch.records import FeedEventKind
from depthwatch.storage.read.frames import (
    EVENT_COLUMNS,
    HEATMAP_COLUMNS,
    IMBALANCE_COLUMNS,
    TOP_COLUMNS,
    TRADE_COLUMNS,
)
from depthwatch.storage.read.rows import BookView, HeatmapGrid

__all__ = [
    "EVENT_KIND_ORDER",
    "depth_figure",
    "events_figure",
    "heatmap_figure",
    "heatmap_grid",
    "imbalance",
    "imbalance_figure",
    "price_figure",
    "shade_spans",
    "spread_bps",
    "spread_figure",
]

# --- Look: colours, sizes, formats (named once) -------------------------------
BID_COLOUR = "#26a69a"
ASK_COLOUR = "#ef5350"
MID_COLOUR = "#78909c"
SPREAD_COLOUR = "#5c6bc0"
BID_FILL = "rgba(38,166,154,0.25)"
ASK_FILL = "rgba(239,83,80,0.25)"
BID_STRONG_FILL = "rgba(38,166,154,0.6)"
ASK_STRONG_FILL = "rgba(239,83,80,0.6)"
BID_BAND = "rgba(38,166,154,0.12)"  # bucket low of the bid
ASK_BAND = "rgba(239,83,80,0.12)"  # bucket high of the ask
SPREAD_MAX_FILL = "rgba(92,107,192,0.15)"
SPAN_FILL = "rgba(120,120,120,0.20)"  # untrusted or missing data, below the traces
SPAN_FILL_OVER = "rgba(90,90,90,0.30)"  # same, drawn over an opaque heatmap
SPAN_LABEL_COLOUR = "#555555"
GRID_COLOUR = "rgba(128,128,128,0.18)"  # readable on light and dark themes
NOTE_COLOUR = "#888888"
ALERT_COLOUR = "#c62828"
# Light-to-dark blue: stays apart from the green/red book lines and trade marks.
HEATMAP_COLOURSCALE: tuple[tuple[float, str], ...] = (
    (0.0, "#e3f2fd"),
    (0.35, "#64b5f6"),
    (0.7, "#1e88e5"),
    (1.0, "#0d2b6b"),
)
# The heatmap travels as one byte per cell (a quarter of float32's bytes, sent
# every second): 0 is an empty cell, 1..255 the size from 0 to the clip level.
HEATMAP_LEVELS = 255
HEATMAP_TICKS = 5

HEIGHT_DEPTH = 300
HEIGHT_PRICE = 280
HEIGHT_SPREAD = 220
HEIGHT_HEATMAP = 320
HEIGHT_IMBALANCE = 220
HEIGHT_EVENTS = 280

# One margin for every time chart, wide enough for price ticks, the longest event
# kind and the heatmap's colour bar: stacked charts then share pixel x positions.
MARGIN = {"l": 96, "r": 84, "t": 34, "b": 40}
LEGEND = {
    "orientation": "h",
    "yanchor": "bottom",
    "y": 1.0,
    "xanchor": "left",
    "x": 0.0,
    "traceorder": "normal",  # plotly would reverse it for the stacked "tonexty" fills
}
TIME_TITLE = "time (UTC)"
TIME_HOVER_FORMAT = "%Y-%m-%d %H:%M:%S.%L"
PRICE_FORMAT = ",.10~f"  # full precision for any tick size, float noise rounded away
SIZE_FORMAT = ",.6~g"

SCATTERGL_ABOVE = 1000  # points per trace; plotly's SVG scatter slows down beyond this
MAX_SHADED_SPANS = 50
LABELLED_SPANS = 3
SPAN_LABEL_STEP = 0.1  # labels stack upwards from the bottom so neighbours do not overlap
MAX_EVENTS_DRAWN = 1000
MAX_DETAIL_CHARS = 160
MAX_PRICE_ROWS = 500  # heatmap rows; an outlier price must not allocate millions of cells
MAX_TIME_COLUMNS = 10_000
GAP_FACTOR = 2.5  # a step this many typical steps long is a hole, not a slow bucket
TRADE_MARKER_PX = (3.0, 9.0)  # small: the heatmap under them is the point
TRADE_MARKER_OPACITY = 0.7
# The depth chart sits in a third of the page and has no colour bar or time axis.
DEPTH_MARGIN = {"l": 56, "r": 16, "t": 34, "b": 40}

TEMPLATE = go.layout.Template(
    layout={
        "font": {"size": 11},
        "hoverlabel": {"font": {"size": 11}},
        "xaxis": {
            "gridcolor": GRID_COLOUR,
            "zeroline": False,
            "ticks": "outside",
            "ticklen": 3,
            "title": {"standoff": 4},
        },
        "yaxis": {
            "gridcolor": GRID_COLOUR,
            "zeroline": False,
            "ticks": "outside",
            "ticklen": 3,
            "title": {"standoff": 4},
        },
    }
)

# --- Feed events and coverage --------------------------------------------------
K = FeedEventKind

# Fixed so the lane's rows never move between refreshes; unknown kinds go after.
EVENT_KIND_ORDER: tuple[str, ...] = (
    K.GAP,
    K.RESYNC,
    K.RESTART,
    K.BOOK_LOST,
    K.RECOVERED,
    K.DISCONNECT,
    K.CONNECT,
    K.STALL,
    K.ANOMALY,
    K.MALFORMED,
    K.SUBSCRIBE_FAILED,
    K.BACKPRESSURE,
    K.SUBSCRIBED,
)
_PROBLEM = "#d32f2f"
_WARNING = "#f57c00"
_RECOVERY = "#2e7d32"
_ROUTINE = "#9e9e9e"
EVENT_COLOURS: dict[str, str] = {
    K.GAP: _PROBLEM,
    K.RESYNC: _WARNING,
    K.RESTART: _WARNING,
    K.BOOK_LOST: _PROBLEM,
    K.RECOVERED: _RECOVERY,
    K.DISCONNECT: _PROBLEM,
    K.CONNECT: _ROUTINE,
    K.STALL: _WARNING,
    K.ANOMALY: _PROBLEM,
    K.MALFORMED: _WARNING,
    K.SUBSCRIBE_FAILED: _PROBLEM,
    K.BACKPRESSURE: _WARNING,
    K.SUBSCRIBED: _ROUTINE,
}
OTHER_EVENT_COLOUR = "#616161"
SYMBOL_STREAM = 0  # filled circle: the event concerns the recorded stream
SYMBOL_CONNECTION = 100  # open circle: one connection only; another may have covered it


# --- Small vectorised helpers --------------------------------------------------
def spread_bps(bid: np.ndarray | pd.Series, ask: np.ndarray | pd.Series) -> np.ndarray:
    """Spread relative to the mid, so symbols of any price level compare."""
    b = np.asarray(bid, dtype=np.float64)
    a = np.asarray(ask, dtype=np.float64)
    mid = (a + b) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray((a - b) / mid * 10_000.0)


def imbalance(bid_size: np.ndarray | pd.Series, ask_size: np.ndarray | pd.Series) -> np.ndarray:
    """(b - a) / (b + a): +1 all bids, -1 all asks, NaN for an empty book."""
    b = np.asarray(bid_size, dtype=np.float64)
    a = np.asarray(ask_size, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (b - a) / (b + a)
    return np.asarray(np.where(np.isfinite(out), out, np.nan))


def _col(df: pd.DataFrame, name: str, dtype: type = np.float64) -> np.ndarray:
    """A column as a NumPy array, so plotly ships it as a typed array."""
    return np.asarray(df[name].to_numpy(dtype=dtype, na_value=np.nan))


def _require(df: pd.DataFrame, columns: Sequence[str]) -> None:
    """Fail loudly on a contract break instead of drawing a silently wrong chart."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing}; has {list(df.columns)}")


def _sorted_by_time(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("t_ms", kind="stable") if len(df) > 1 else df


def _with_breaks(t: np.ndarray, *ys: np.ndarray) -> tuple[np.ndarray, ...]:
    """Insert a NaN point into each hole of the time series, so a line never bridges
    missing buckets (a flat line there would look like a quiet market).

    A hole is a step longer than GAP_FACTOR typical (median) steps; the NaN sits
    one typical step after the last point before it."""
    if t.size < 3:
        return (t, *ys)
    steps = np.diff(t)
    positive = steps[steps > 0]
    if positive.size == 0:
        return (t, *ys)
    typical = float(np.median(positive))
    holes = np.nonzero(steps > GAP_FACTOR * typical)[0]
    if holes.size == 0:
        return (t, *ys)
    t_out = np.insert(t, holes + 1, t[holes] + typical)
    return (t_out, *(np.insert(y.astype(np.float64), holes + 1, np.nan) for y in ys))


def _scatter_type(points: int) -> type[go.Scatter] | type[go.Scattergl]:
    return go.Scattergl if points > SCATTERGL_ABOVE else go.Scatter


def _fmt_price(price: float) -> str:
    return f"{price:,.10f}".rstrip("0").rstrip(".")


def _note(fig: go.Figure, text: str, colour: str = NOTE_COLOUR) -> None:
    """A centred message, so an empty chart says why it is empty."""
    fig.add_annotation(
        text=text,
        xref="paper",
        yref="paper",
        x=0.5,
        y=0.5,
        showarrow=False,
        font={"size": 13, "color": colour},
    )


def _time_layout(
    fig: go.Figure,
    x_range: tuple[float, float],
    uirevision: str,
    height: int,
    y_title: str,
    hovermode: str = "x unified",
) -> None:
    fig.update_layout(
        template=TEMPLATE,
        height=height,
        margin=MARGIN,
        legend=LEGEND,
        showlegend=True,
        uirevision=uirevision,
        hovermode=hovermode,
        xaxis={
            "type": "date",
            "range": [float(x_range[0]), float(x_range[1])],
            "title": {"text": TIME_TITLE},
            "hoverformat": TIME_HOVER_FORMAT,
        },
        yaxis={"title": {"text": y_title}},
    )


# --- Depth ---------------------------------------------------------------------
def _cumulative(side: pd.DataFrame | None, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """Prices best first and the size resting at or better than each price; sorted
    here as well, because a cumulative sum in the wrong order is silently wrong."""
    if side is None or len(side) == 0:
        empty = np.empty(0, dtype=np.float64)
        return empty, empty
    price = _col(side, "price")
    size = _col(side, "size")
    order = np.argsort(-price if descending else price, kind="stable")
    return price[order], np.cumsum(size[order])


def depth_figure(
    book: BookView | None, mid: float | None = None, uirevision: str = "depth"
) -> go.Figure:
    """Cumulative depth curve: how much size a market order meets down (bids) or
    up (asks) to each price. Steps, because depth only changes at a level."""
    fig = go.Figure()
    fig.update_layout(
        template=TEMPLATE,
        height=HEIGHT_DEPTH,
        margin=DEPTH_MARGIN,
        legend=LEGEND,
        uirevision=uirevision,
        hovermode="closest",
        xaxis={"title": {"text": "price"}, "tickformat": PRICE_FORMAT, "hoverformat": PRICE_FORMAT},
        yaxis={
            "title": {"text": "cumulative size"},
            "rangemode": "tozero",
            "hoverformat": SIZE_FORMAT,
        },
    )
    bid_p, bid_cum = _cumulative(book.bids if book else None, descending=True)
    ask_p, ask_cum = _cumulative(book.asks if book else None, descending=False)
    if book is None or (bid_p.size == 0 and ask_p.size == 0):
        _note(fig, "no book")
        return fig
    # Best first outward, "hv" holds each cumulative size until the next level.
    for name, price, cum, colour, fill in (
        ("bids", bid_p, bid_cum, BID_COLOUR, BID_FILL),
        ("asks", ask_p, ask_cum, ASK_COLOUR, ASK_FILL),
    ):
        fig.add_trace(
            go.Scatter(
                x=price,
                y=cum,
                name=name,
                mode="lines",
                line={"color": colour, "width": 1.5, "shape": "hv"},
                fill="tozeroy",
                fillcolor=fill,
                hovertemplate=f"{name}: %{{y}} at or better than %{{x}}<extra></extra>",
            )
        )
    if mid is None and bid_p.size and ask_p.size:
        mid = (float(bid_p[0]) + float(ask_p[0])) / 2.0
    if mid is not None and np.isfinite(mid):
        _mark_mid(fig, float(mid))
    if bid_p.size and ask_p.size and bid_p[0] >= ask_p[0]:
        crossed = -float(spread_bps(bid_p[:1], ask_p[:1])[0])
        _corner(fig, f"book crossed by {crossed:.2f} bp", ALERT_COLOUR, x=1.0, anchor="right")
    return fig


def _mark_mid(fig: go.Figure, mid: float) -> None:
    fig.add_shape(
        type="line",
        xref="x",
        yref="y domain",
        x0=mid,
        x1=mid,
        y0=0.0,
        y1=1.0,
        line={"color": MID_COLOUR, "width": 1, "dash": "dash"},
    )
    # Inside the plot, right of the line: above it the legend needs the room.
    fig.add_annotation(
        x=mid,
        xref="x",
        yref="y domain",
        y=1.0,
        yanchor="top",
        xanchor="left",
        xshift=3,
        text=f"mid {_fmt_price(mid)}",
        showarrow=False,
        font={"size": 10, "color": MID_COLOUR},
    )


def _corner(fig: go.Figure, text: str, colour: str, x: float, anchor: str) -> None:
    fig.add_annotation(
        text=text,
        xref="paper",
        yref="paper",
        x=x,
        y=0.98,
        xanchor=anchor,
        yanchor="top",
        showarrow=False,
        font={"size": 10, "color": colour},
    )


# --- Price and spread ----------------------------------------------------------
def price_figure(
    top: pd.DataFrame,
    spans: list[Span],
    x_range: tuple[float, float],
    uirevision: str,
) -> go.Figure:
    """Best bid, best ask and mid per bucket; the faint bands reach the bucket's
    lowest bid and highest ask, so a spike inside a bucket is not hidden."""
    _require(top, TOP_COLUMNS)
    fig = go.Figure()
    _time_layout(fig, x_range, uirevision, HEIGHT_PRICE, "price")
    fig.update_yaxes(tickformat=PRICE_FORMAT, hoverformat=PRICE_FORMAT)
    if len(top) == 0:
        _note(fig, "no top of book in this window")
        return shade_spans(fig, spans)
    top = _sorted_by_time(top)
    t, bid_min, bid, ask, ask_max, mid = _with_breaks(
        _col(top, "t_ms"),
        _col(top, "bid_min"),
        _col(top, "bid"),
        _col(top, "ask"),
        _col(top, "ask_max"),
        _col(top, "mid"),
    )
    trace = _scatter_type(t.size)
    # Order matters: each "tonexty" fills down/up to the trace added just before.
    series = (
        ("bid low", bid_min, BID_BAND, None, False),
        ("best bid", bid, BID_COLOUR, BID_BAND, True),
        ("best ask", ask, ASK_COLOUR, None, True),
        ("ask high", ask_max, ASK_BAND, ASK_BAND, False),
        ("mid", mid, MID_COLOUR, None, True),
    )
    for name, y, colour, fill, legend in series:
        fig.add_trace(
            trace(
                x=t,
                y=y,
                name=name,
                mode="lines",
                showlegend=legend,
                line={"color": colour, "width": 1.5 if legend else 0.5, "shape": "hv"},
                fill="tonexty" if fill else None,
                fillcolor=fill,
            )
        )
    fig.data[-1].line.dash = "dot"
    return shade_spans(fig, spans)


def spread_figure(
    top: pd.DataFrame,
    spans: list[Span],
    x_range: tuple[float, float],
    uirevision: str,
) -> go.Figure:
    """Spread per bucket in bps: the line is the bucket's last spread, the faint
    area its widest, so a brief blow-out stays visible at any bucket size."""
    _require(top, TOP_COLUMNS)
    fig = go.Figure()
    _time_layout(fig, x_range, uirevision, HEIGHT_SPREAD, "spread (bps)")
    fig.update_yaxes(rangemode="tozero", hoverformat=".3~f")
    if len(top) == 0:
        _note(fig, "no top of book in this window")
        return shade_spans(fig, spans)
    top = _sorted_by_time(top)
    t, last, widest = _with_breaks(
        _col(top, "t_ms"), _col(top, "spread_bps"), _col(top, "spread_bps_max")
    )
    trace = _scatter_type(t.size)
    fig.add_trace(
        trace(
            x=t,
            y=widest.astype(np.float32),
            name="max in bucket",
            mode="lines",
            line={"color": SPREAD_MAX_FILL, "width": 0.5, "shape": "hv"},
            fill="tozeroy",
            fillcolor=SPREAD_MAX_FILL,
        )
    )
    fig.add_trace(
        trace(
            x=t,
            y=last.astype(np.float32),
            name="spread",
            mode="lines",
            line={"color": SPREAD_COLOUR, "width": 1.5, "shape": "hv"},
        )
    )
    return shade_spans(fig, spans)


# --- Heatmap -------------------------------------------------------------------
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
    _require(cells, HEATMAP_COLUMNS)
    if grid.time_bucket_ms <= 0 or grid.price_step <= 0:
        raise ValueError(f"grid steps must be positive: {grid}")
    t = _col(cells, "t_ms")
    p = _col(cells, "price")
    size = _col(cells, "size")
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
    _require(top, TOP_COLUMNS)
    _require(trades, TRADE_COLUMNS)
    fig = go.Figure()
    _time_layout(fig, x_range, uirevision, HEIGHT_HEATMAP, "price", hovermode="closest")
    fig.update_yaxes(tickformat=PRICE_FORMAT, hoverformat=PRICE_FORMAT)
    times, prices, z = heatmap_grid(cells, grid)
    zmax = heatmap_zmax(z, clip_percentile)
    if zmax is None:
        _note(fig, "no heatmap cells in this window")
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
    top = _sorted_by_time(top)
    t, bid, ask = _with_breaks(_col(top, "t_ms"), _col(top, "bid"), _col(top, "ask"))
    trace = _scatter_type(t.size)
    for name, y, colour in (("best bid", bid, BID_COLOUR), ("best ask", ask, ASK_COLOUR)):
        fig.add_trace(
            trace(
                x=t,
                y=y,
                name=name,
                mode="lines",
                line={"color": colour, "width": 1.5, "shape": "hv"},
                hoverinfo="skip",
            )
        )


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
    t, price, size = _col(trades, "t_ms"), _col(trades, "price"), _col(trades, "size")
    px = trade_marker_px(size)
    for name, wanted, symbol, colour in (
        ("buys", "buy", "triangle-up", BID_COLOUR),
        ("sells", "sell", "triangle-down", ASK_COLOUR),
    ):
        mask = side == wanted
        if not mask.any():
            continue
        fig.add_trace(
            _scatter_type(int(mask.sum()))(
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


# --- Imbalance -----------------------------------------------------------------
def imbalance_figure(
    imb: pd.DataFrame,
    spans: list[Span],
    x_range: tuple[float, float],
    uirevision: str,
    levels: int,
) -> go.Figure:
    """Book imbalance of the top levels on a fixed [-1, 1] axis, so the chart never
    rescales and the sign reads at a glance by colour."""
    _require(imb, IMBALANCE_COLUMNS)
    fig = go.Figure()
    _time_layout(fig, x_range, uirevision, HEIGHT_IMBALANCE, f"imbalance, top {levels} levels")
    fig.update_yaxes(
        range=[-1.0, 1.0],
        zeroline=True,
        zerolinecolor=MID_COLOUR,
        tickvals=[-1.0, -0.5, 0.0, 0.5, 1.0],
        tickformat="+.1f",
        hoverformat="+.2f",
    )
    if len(imb) == 0:
        _note(fig, "no imbalance in this window")
        return shade_spans(fig, spans)
    imb = _sorted_by_time(imb)
    t, value = _with_breaks(_col(imb, "t_ms"), _col(imb, "imbalance"))
    value = value.astype(np.float32)
    trace = _scatter_type(t.size)
    # Two fills (hover off) give the colour by sign; one thin line carries the hover.
    with np.errstate(invalid="ignore"):
        bid_heavy = np.where(np.isnan(value), np.nan, np.maximum(value, 0)).astype(np.float32)
        ask_heavy = np.where(np.isnan(value), np.nan, np.minimum(value, 0)).astype(np.float32)
    for name, y, colour, fill in (
        ("bid-heavy", bid_heavy, BID_COLOUR, BID_STRONG_FILL),
        ("ask-heavy", ask_heavy, ASK_COLOUR, ASK_STRONG_FILL),
    ):
        fig.add_trace(
            trace(
                x=t,
                y=y,
                name=name,
                mode="lines",
                line={"color": colour, "width": 0, "shape": "hv"},
                fill="tozeroy",
                fillcolor=fill,
                hoverinfo="skip",
            )
        )
    fig.add_trace(
        trace(
            x=t,
            y=value,
            name="imbalance",
            mode="lines",
            showlegend=False,
            line={"color": MID_COLOUR, "width": 0.5, "shape": "hv"},
        )
    )
    return shade_spans(fig, spans)


# --- Feed events lane ----------------------------------------------------------
def event_categories(kinds: Sequence[str]) -> list[str]:
    """The lane's rows: the fixed order, then unknown kinds alphabetically."""
    extras = sorted(set(kinds) - set(EVENT_KIND_ORDER))
    return [*EVENT_KIND_ORDER, *extras]


def events_figure(
    events: pd.DataFrame,
    spans: list[Span],
    x_range: tuple[float, float],
    uirevision: str,
) -> go.Figure:
    """Feed events on the charts' time axis, one row per kind in a fixed order
    (rows must not jump between refreshes). Open circles mark events of one
    connection only, which another connection may have covered."""
    _require(events, EVENT_COLUMNS)
    fig = go.Figure()
    _time_layout(fig, x_range, uirevision, HEIGHT_EVENTS, "", hovermode="closest")
    events = _sorted_by_time(events)
    dropped = max(0, len(events) - MAX_EVENTS_DRAWN)
    events = events.iloc[dropped:]
    kinds = events["kind"].astype(str).to_numpy(dtype=object)
    categories = event_categories(list(kinds))
    fig.update_yaxes(
        type="category",
        categoryorder="array",
        categoryarray=categories,
        range=[len(categories) - 0.5, -0.5],  # first kind on top, every row always shown
        tickfont={"size": 10},
        showgrid=True,
    )
    if len(events) == 0:
        _note(fig, "no feed events in this window")
        return shade_spans(fig, spans)
    if dropped:
        _corner(
            fig,
            f"showing the last {len(events)} of {len(events) + dropped}",
            NOTE_COLOUR,
            1.0,
            "right",
        )
    t = _col(events, "t_ms")
    stream = events["stream_level"].eq(True).to_numpy()
    detail = _hover_details(events["detail"], stream)
    for kind in categories:
        mask = kinds == kind
        if not mask.any():
            continue
        fig.add_trace(
            go.Scatter(
                x=t[mask],
                y=kinds[mask],
                customdata=detail[mask],
                name=kind,
                mode="markers",
                showlegend=False,
                marker={
                    "size": 9,
                    "color": EVENT_COLOURS.get(kind, OTHER_EVENT_COLOUR),
                    "symbol": np.where(stream[mask], SYMBOL_STREAM, SYMBOL_CONNECTION),
                    "line": {"width": 1.5, "color": EVENT_COLOURS.get(kind, OTHER_EVENT_COLOUR)},
                },
                hovertemplate="%{y} %{x|%H:%M:%S.%L} UTC<br>%{customdata}<extra></extra>",
            )
        )
    return shade_spans(fig, spans)


def _hover_details(detail: pd.Series, stream: np.ndarray) -> np.ndarray:
    text = detail.fillna("").astype(str).str.slice(0, MAX_DETAIL_CHARS).to_numpy(dtype=object)
    suffix = np.where(stream, "", " (one connection)")
    return np.asarray([f"{d}{s}" for d, s in zip(text, suffix, strict=True)], dtype=object)


# --- Shading -------------------------------------------------------------------
def cap_spans(spans: Sequence[Span], limit: int = MAX_SHADED_SPANS) -> list[Span]:
    """At most `limit` spans: the closest neighbours (whatever their cause) are
    merged first, so a flapping feed shades the whole troubled stretch in one
    shape instead of thousands."""
    ordered = sorted(spans, key=lambda s: (s.start_ms, s.end_ms))
    if len(ordered) <= limit:
        return ordered
    starts = np.array([s.start_ms for s in ordered])
    ends = np.maximum.accumulate(np.array([s.end_ms for s in ordered]))
    gaps = starts[1:] - ends[:-1]
    excess = len(ordered) - limit
    tolerance = max(0.0, float(np.partition(gaps, excess - 1)[excess - 1]))
    groups: list[list[Span]] = [[ordered[0]]]
    group_end = ordered[0].end_ms
    for s in ordered[1:]:
        if s.start_ms - group_end <= tolerance:
            groups[-1].append(s)
            group_end = max(group_end, s.end_ms)
        else:
            groups.append([s])
            group_end = s.end_ms
    return [
        Span(
            g[0].start_ms,
            max(s.end_ms for s in g),
            " + ".join(dict.fromkeys(s.cause for s in g)),
        )
        for g in groups
    ]


def shade_spans(fig: go.Figure, spans: Sequence[Span], over: bool = False) -> go.Figure:
    """Shade untrusted/missing stretches across the full plot height, labelling the
    first few with their cause. Below the traces by default; `over=True` for an
    opaque heatmap, which would hide shapes drawn below it."""
    if not spans:
        return fig
    capped = cap_spans(spans)
    shapes = [
        {
            "type": "rect",
            "xref": "x",
            "yref": "y domain",
            "x0": s.start_ms,
            "x1": s.end_ms,
            "y0": 0.0,
            "y1": 1.0,
            "fillcolor": SPAN_FILL_OVER if over else SPAN_FILL,
            "line": {"width": 0},
            "layer": "above" if over else "below",
        }
        for s in capped
    ]
    window = fig.layout.xaxis.range
    labels = [
        {
            **_label_position(s, window),
            "xref": "x",
            "y": i * SPAN_LABEL_STEP,
            "yref": "y domain",
            "yanchor": "bottom",
            "text": s.cause.replace("_", " "),
            "showarrow": False,
            "font": {"size": 9, "color": SPAN_LABEL_COLOUR},
        }
        for i, s in enumerate(capped[:LABELLED_SPANS])
    ]
    fig.update_layout(
        shapes=[*fig.layout.shapes, *shapes],
        annotations=[*fig.layout.annotations, *labels],
    )
    return fig


def _label_position(span: Span, window: Sequence[float] | None) -> dict[str, object]:
    """Keep a band's label inside the plot: from the band's start, reading right,
    or for a band in the right half of the window, ending at the band's end."""
    if window is None:
        return {"x": span.start_ms, "xanchor": "left"}
    lo, hi = float(window[0]), float(window[1])
    if span.start_ms > (lo + hi) / 2:
        return {"x": min(span.end_ms, hi), "xanchor": "right"}
    return {"x": max(span.start_ms, lo), "xanchor": "left"}
