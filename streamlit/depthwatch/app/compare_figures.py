"""The Compare page's figures (pure: frames in, plotly figures out): one asset's
mid on every venue on one time axis, their spreads, the basis of each venue
against the reference venue in bps, and the depth resting within ±N bps of
each venue's own mid, side by side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from depthwatch.app.look import (
    ASK_FILL,
    BID_FILL,
    DEPTH_MARGIN,
    HEIGHT_PRICE,
    HEIGHT_SPREAD,
    PRICE_FORMAT,
    SIZE_FORMAT,
    new_figure,
    note,
    scatter_type,
    step_line,
    time_figure,
    time_series,
)
from depthwatch.storage.read.frames import TOP_COLUMNS

# One colour per venue, in the order the page lists them (colour-blind safe).
VENUE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")
HEIGHT_BASIS = 220
HEIGHT_DEPTH_BARS = 260


def colour(i: int) -> str:
    return VENUE_COLOURS[i % len(VENUE_COLOURS)]


def mids_figure(
    names: Sequence[str],
    tops: Sequence[pd.DataFrame],
    x_range: tuple[float, float],
    uirevision: str,
) -> go.Figure:
    """Every venue's mid per time bucket, one line each."""
    fig = time_figure(_first(tops), TOP_COLUMNS, x_range, uirevision, HEIGHT_PRICE, "mid")
    fig.update_yaxes(tickformat=PRICE_FORMAT, hoverformat=PRICE_FORMAT)
    return _lines(fig, names, tops, "mid", "no top of book in this window")


def spreads_figure(
    names: Sequence[str],
    tops: Sequence[pd.DataFrame],
    x_range: tuple[float, float],
    uirevision: str,
) -> go.Figure:
    fig = time_figure(_first(tops), TOP_COLUMNS, x_range, uirevision, HEIGHT_SPREAD, "spread (bps)")
    fig.update_yaxes(rangemode="tozero", hoverformat=".3~f")
    return _lines(fig, names, tops, "spread_bps", "no top of book in this window")


def basis_bps(reference: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """(t_ms, basis_bps): the other venue's mid over the reference's, in bps,
    in the time buckets both have."""
    joined = reference[["t_ms", "mid"]].merge(
        other[["t_ms", "mid"]], on="t_ms", suffixes=("_ref", "_other")
    )
    basis = (joined["mid_other"] / joined["mid_ref"] - 1.0) * 10_000
    return pd.DataFrame({"t_ms": joined["t_ms"], "basis_bps": basis.astype("float64")})


def basis_figure(
    names: Sequence[str],
    tops: Sequence[pd.DataFrame],
    x_range: tuple[float, float],
    uirevision: str,
) -> go.Figure:
    """Each venue's basis against the first (the reference) in bps."""
    frames = [basis_bps(tops[0], top) for top in tops[1:]]
    columns = ("t_ms", "basis_bps")
    empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    fig = time_figure(
        frames[0] if frames else empty,
        columns,
        x_range,
        uirevision,
        HEIGHT_BASIS,
        f"basis vs {names[0]} (bps)",
    )
    fig.update_yaxes(hoverformat=".3~f", zeroline=True)
    labels = [f"{name} - {names[0]}" for name in names[1:]]
    return _lines(fig, labels, frames, "basis_bps", "no two venues in one time bucket", start=1)


def depth_figure(
    names: Sequence[str],
    bids: Sequence[float | None],
    asks: Sequence[float | None],
    range_bps: int,
    lower_bound: Sequence[bool],
    uirevision: str,
) -> go.Figure:
    """Size resting within ±range_bps of each venue's own mid: bids left of
    zero, asks right, one row per venue; a book recorded less deep than the
    range is marked '≥' (its figure is a lower bound)."""
    fig = new_figure(
        HEIGHT_DEPTH_BARS,
        DEPTH_MARGIN,
        uirevision,
        "y unified",
        xaxis={"title": {"text": f"size within ±{range_bps} bps of the mid"}},
        yaxis={"autorange": "reversed"},
        showlegend=True,
    )
    fig.update_xaxes(tickformat=SIZE_FORMAT)
    shown = [_label(name, low) for name, low in zip(names, lower_bound, strict=True)]
    fig.add_trace(
        go.Bar(
            y=shown,
            x=[-(b or 0.0) for b in bids],
            orientation="h",
            name="bids",
            marker_color=BID_FILL,
            customdata=[b or 0.0 for b in bids],
            hovertemplate="%{customdata:,.6~g}<extra>bids</extra>",
        )
    )
    fig.add_trace(
        go.Bar(
            y=shown,
            x=[a or 0.0 for a in asks],
            orientation="h",
            name="asks",
            marker_color=ASK_FILL,
            hovertemplate="%{x:,.6~g}<extra>asks</extra>",
        )
    )
    fig.update_layout(barmode="overlay")
    if all(b is None for b in bids) and all(a is None for a in asks):
        note(fig, "no book recorded in this window")
    return fig


def _label(name: str, lower_bound: bool) -> str:
    return f"{name} (≥)" if lower_bound else name


def _first(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """A frame to check columns against: the first non-empty, else the first."""
    return next((f for f in frames if len(f)), frames[0])


def _lines(
    fig: go.Figure,
    names: Sequence[str],
    frames: Sequence[pd.DataFrame],
    column: str,
    empty_note: str,
    start: int = 0,
) -> go.Figure:
    drawn = 0
    for i, (name, frame) in enumerate(zip(names, frames, strict=True)):
        if not len(frame):
            continue
        t, y = time_series(frame, column)
        fig.add_trace(
            step_line(scatter_type(t.size), t, y.astype(np.float64), name, colour(i + start), 1.5)
        )
        drawn += 1
    if not drawn:
        note(fig, empty_note)
    return fig
