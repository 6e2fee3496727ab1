"""Figure builders of the live dashboard: DataFrames in, plotly figures out.

Pure functions, no I/O and no streamlit, so every chart can be unit-tested on
hand-made frames and rebuilt every second without side effects. This module
holds the depth, price, spread and imbalance charts and is the one the pages
import: it re-exports the heatmap (`app.heatmap`), the events lane and the
span shading (`app.lanes`) and the names of the shared look (`app.look`) that
callers use, so `figures.X` stays the one way in.

Zoom and `uirevision`: plotly.js keeps a user's zoom across refreshes only for
attributes the new figure does not change. The y axes are autoranged, so a y
zoom survives; the x range is the window's, so while the window slides (live
follow) every refresh moves it, and an x zoom survives only while `x_range`
stays put (a paused or fixed window).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from depthwatch.app.heatmap import (
    HEATMAP_LEVELS,
    MAX_PRICE_ROWS,
    TRADE_MARKER_PX,
    heatmap_figure,
    heatmap_grid,
    heatmap_levels,
)
from depthwatch.app.lanes import (
    EVENT_COLOURS,
    EVENT_KIND_ORDER,
    LABELLED_SPANS,
    MAX_SHADED_SPANS,
    SYMBOL_CONNECTION,
    cap_spans,
    empty_chart,
    events_figure,
    shade_spans,
)
from depthwatch.app.look import (
    ALERT_COLOUR,
    ASK_BAND,
    ASK_COLOUR,
    ASK_FILL,
    ASK_STRONG_FILL,
    BID_BAND,
    BID_COLOUR,
    BID_FILL,
    BID_STRONG_FILL,
    DEPTH_MARGIN,
    HEIGHT_DEPTH,
    HEIGHT_IMBALANCE,
    HEIGHT_PRICE,
    HEIGHT_SPREAD,
    MARGIN,
    MID_COLOUR,
    NOTE_COLOUR,
    PRICE_FORMAT,
    SIZE_FORMAT,
    SPREAD_COLOUR,
    SPREAD_MAX_FILL,
    column,
    corner,
    new_figure,
    note,
    scatter_type,
    step_line,
    time_figure,
    time_series,
)
from depthwatch.coverage import Span
from depthwatch.storage.read.frames import IMBALANCE_COLUMNS, TOP_COLUMNS
from depthwatch.storage.read.rows import BookView

__all__ = [
    "ASK_COLOUR",
    "BID_COLOUR",
    "EVENT_COLOURS",
    "EVENT_KIND_ORDER",
    "HEATMAP_LEVELS",
    "LABELLED_SPANS",
    "MARGIN",
    "MAX_PRICE_ROWS",
    "MAX_SHADED_SPANS",
    "SYMBOL_CONNECTION",
    "TRADE_MARKER_PX",
    "cap_spans",
    "depth_figure",
    "events_figure",
    "heatmap_figure",
    "heatmap_grid",
    "heatmap_levels",
    "imbalance",
    "imbalance_figure",
    "price_figure",
    "shade_spans",
    "spread_bps",
    "spread_figure",
]


# --- Book measures -----------------------------------------------------------
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


# --- Depth ---------------------------------------------------------------------
def _cumulative(side: pd.DataFrame | None, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """Prices best first and the size resting at or better than each price; sorted
    here as well, because a cumulative sum in the wrong order is silently wrong."""
    if side is None or len(side) == 0:
        empty = np.empty(0, dtype=np.float64)
        return empty, empty
    price = column(side, "price")
    size = column(side, "size")
    order = np.argsort(-price if descending else price, kind="stable")
    return price[order], np.cumsum(size[order])


def mark_known_range(
    fig: go.Figure, bid_floor: float | None, ask_ceiling: float | None, axis: str
) -> None:
    """Dotted lines where a whole book stops being exact (its REST snapshot's
    last prices) on the price axis `axis` ("x" or "y"); nothing for a side
    that was whole."""
    for price, side in ((bid_floor, "bids"), (ask_ceiling, "asks")):
        if price is None:
            continue
        line = {"dash": "dot", "color": NOTE_COLOUR, "width": 1}
        text = f"{side} exact to here"
        if axis == "x":
            fig.add_vline(x=price, line=line, annotation_text=text)
        else:
            fig.add_hline(y=price, line=line, annotation_text=text)


def depth_figure(
    book: BookView | None, mid: float | None = None, uirevision: str = "depth"
) -> go.Figure:
    """Cumulative depth curve: how much size a market order meets down (bids) or
    up (asks) to each price. Steps, because depth only changes at a level."""
    fig = new_figure(
        HEIGHT_DEPTH,
        DEPTH_MARGIN,
        uirevision,
        "closest",
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
        note(fig, "no book")
        return fig
    # Best first outward, "hv" holds each cumulative size until the next level.
    for name, price, cum, colour, fill in (
        ("bids", bid_p, bid_cum, BID_COLOUR, BID_FILL),
        ("asks", ask_p, ask_cum, ASK_COLOUR, ASK_FILL),
    ):
        hover = f"{name}: %{{y}} at or better than %{{x}}<extra></extra>"
        fig.add_trace(
            step_line(go.Scatter, price, cum, name, colour, 1.5, fill, hovertemplate=hover)
        )
    if mid is None and bid_p.size and ask_p.size:
        mid = (float(bid_p[0]) + float(ask_p[0])) / 2.0
    if mid is not None and np.isfinite(mid):
        _mark_mid(fig, float(mid))
    if bid_p.size and ask_p.size and bid_p[0] >= ask_p[0]:
        crossed = -float(spread_bps(bid_p[:1], ask_p[:1])[0])
        corner(fig, f"book crossed by {crossed:.2f} bp", ALERT_COLOUR, x=1.0, anchor="right")
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


def _fmt_price(price: float) -> str:
    return f"{price:,.10f}".rstrip("0").rstrip(".")


# --- Price and spread ----------------------------------------------------------
def price_figure(
    top: pd.DataFrame, spans: list[Span], x_range: tuple[float, float], uirevision: str
) -> go.Figure:
    """Best bid, best ask and mid per bucket; the faint bands reach the bucket's
    lowest bid and highest ask, so a spike inside a bucket is not hidden."""
    fig = time_figure(top, TOP_COLUMNS, x_range, uirevision, HEIGHT_PRICE, "price")
    fig.update_yaxes(tickformat=PRICE_FORMAT, hoverformat=PRICE_FORMAT)
    if len(top) == 0:
        return empty_chart(fig, spans, "no top of book in this window")
    t, bid_min, bid, ask, ask_max, mid = time_series(top, "bid_min", "bid", "ask", "ask_max", "mid")
    trace = scatter_type(t.size)
    # Order matters: each "tonexty" fills down/up to the trace added just before.
    series = (
        ("bid low", bid_min, BID_BAND, None, False),
        ("best bid", bid, BID_COLOUR, BID_BAND, True),
        ("best ask", ask, ASK_COLOUR, None, True),
        ("ask high", ask_max, ASK_BAND, ASK_BAND, False),
        ("mid", mid, MID_COLOUR, None, True),
    )
    for name, y, colour, fill, legend in series:
        width = 1.5 if legend else 0.5
        fig.add_trace(
            step_line(trace, t, y, name, colour, width, fill, "tonexty", showlegend=legend)
        )
    fig.data[-1].line.dash = "dot"
    return shade_spans(fig, spans)


def spread_figure(
    top: pd.DataFrame, spans: list[Span], x_range: tuple[float, float], uirevision: str
) -> go.Figure:
    """Spread per bucket in bps: the line is the bucket's last spread, the faint
    area its widest, so a brief blow-out stays visible at any bucket size."""
    fig = time_figure(top, TOP_COLUMNS, x_range, uirevision, HEIGHT_SPREAD, "spread (bps)")
    fig.update_yaxes(rangemode="tozero", hoverformat=".3~f")
    if len(top) == 0:
        return empty_chart(fig, spans, "no top of book in this window")
    t, last, widest = time_series(top, "spread_bps", "spread_bps_max")
    trace = scatter_type(t.size)
    widest_f32, last_f32 = widest.astype(np.float32), last.astype(np.float32)
    fig.add_trace(
        step_line(trace, t, widest_f32, "max in bucket", SPREAD_MAX_FILL, 0.5, SPREAD_MAX_FILL)
    )
    fig.add_trace(step_line(trace, t, last_f32, "spread", SPREAD_COLOUR, 1.5))
    return shade_spans(fig, spans)


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
    y_title = f"imbalance, top {levels} levels"
    fig = time_figure(imb, IMBALANCE_COLUMNS, x_range, uirevision, HEIGHT_IMBALANCE, y_title)
    fig.update_yaxes(
        range=[-1.0, 1.0],
        zeroline=True,
        zerolinecolor=MID_COLOUR,
        tickvals=[-1.0, -0.5, 0.0, 0.5, 1.0],
        tickformat="+.1f",
        hoverformat="+.2f",
    )
    if len(imb) == 0:
        return empty_chart(fig, spans, "no imbalance in this window")
    t, value = time_series(imb, "imbalance")
    value = value.astype(np.float32)
    trace = scatter_type(t.size)
    # Two fills (hover off) give the colour by sign; one thin line carries the hover.
    with np.errstate(invalid="ignore"):
        bid_heavy = np.where(np.isnan(value), np.nan, np.maximum(value, 0)).astype(np.float32)
        ask_heavy = np.where(np.isnan(value), np.nan, np.minimum(value, 0)).astype(np.float32)
    for name, y, colour, fill in (
        ("bid-heavy", bid_heavy, BID_COLOUR, BID_STRONG_FILL),
        ("ask-heavy", ask_heavy, ASK_COLOUR, ASK_STRONG_FILL),
    ):
        fig.add_trace(step_line(trace, t, y, name, colour, 0, fill, hoverinfo="skip"))
    fig.add_trace(step_line(trace, t, value, "imbalance", MID_COLOUR, 0.5, showlegend=False))
    return shade_spans(fig, spans)
