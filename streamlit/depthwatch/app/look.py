"""The look every dashboard chart shares, named once, and the small helpers the
figure modules (`figures`, `heatmap`, `lanes`) build with.

Colours, heights, margins and formats live here so that a palette or a margin
changes in one place and the stacked charts keep lining up. The template is a
few lines instead of plotly's ~10 KB default, because the whole figure travels
to every browser on every refresh; data goes into the traces as NumPy arrays,
which plotly serialises as compact typed arrays.

Times are `t_ms` (float64 ms since the epoch, UTC) on plotly date axes, which
plotly.js shows in UTC. All time charts take the window's `x_range` and share
one left/right margin, so stacked charts line up to the pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import plotly.graph_objects as go

# --- Colours --------------------------------------------------------------------
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
SPAN_FILL_QUIET = "rgba(120,120,120,0.06)"  # before a stream's first record: nothing missed
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

# --- Sizes and formats ----------------------------------------------------------
HEIGHT_DEPTH = 300
HEIGHT_PRICE = 280
HEIGHT_SPREAD = 220
HEIGHT_HEATMAP = 320
HEIGHT_IMBALANCE = 220
HEIGHT_EVENTS = 280

# One margin for every time chart, wide enough for price ticks, the longest event
# kind and the heatmap's colour bar: stacked charts then share pixel x positions.
MARGIN = {"l": 96, "r": 84, "t": 34, "b": 40}
# The depth chart sits in a third of the page and has no colour bar or time axis.
DEPTH_MARGIN = {"l": 56, "r": 16, "t": 34, "b": 40}
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
GAP_FACTOR = 2.5  # a step this many typical steps long is a hole, not a slow bucket

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

ScatterType: TypeAlias = type[go.Scatter] | type[go.Scattergl]


# --- Frames in ------------------------------------------------------------------
def column(df: pd.DataFrame, name: str, dtype: type = np.float64) -> np.ndarray:
    """A column as a NumPy array, so plotly ships it as a typed array."""
    return np.asarray(df[name].to_numpy(dtype=dtype, na_value=np.nan))


def require(df: pd.DataFrame, columns: Sequence[str]) -> None:
    """Fail loudly on a contract break instead of drawing a silently wrong chart."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing}; has {list(df.columns)}")


def sorted_by_time(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("t_ms", kind="stable") if len(df) > 1 else df


def with_breaks(t: np.ndarray, *ys: np.ndarray) -> tuple[np.ndarray, ...]:
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


def time_series(frame: pd.DataFrame, *names: str) -> tuple[np.ndarray, ...]:
    """`t_ms` and the named columns in time order, with a NaN in each hole (see
    `with_breaks`): what every line over time draws."""
    frame = sorted_by_time(frame)
    return with_breaks(column(frame, "t_ms"), *(column(frame, name) for name in names))


# --- Figures out ----------------------------------------------------------------
def scatter_type(points: int) -> ScatterType:
    return go.Scattergl if points > SCATTERGL_ABOVE else go.Scatter


def step_line(
    trace: ScatterType,
    x: np.ndarray,
    y: np.ndarray,
    name: str,
    colour: str,
    width: float,
    fill: str | None = None,
    fill_to: str = "tozeroy",
    **style: Any,
) -> go.Scatter | go.Scattergl:
    """A line that holds each value until the next point ("hv"): a bucket's value
    or a level's size stays until the next one, where a slope would invent values
    in between. `fill` is the colour of the area down (or up) to zero, or with
    `fill_to="tonexty"` to the trace added before; `style` adds legend and hover
    settings."""
    return trace(
        x=x,
        y=y,
        name=name,
        mode="lines",
        line={"color": colour, "width": width, "shape": "hv"},
        fill=fill_to if fill else None,
        fillcolor=fill,
        **style,
    )


def new_figure(
    height: int,
    margin: dict[str, int],
    uirevision: str,
    hovermode: str,
    xaxis: dict[str, Any],
    yaxis: dict[str, Any],
    showlegend: bool | None = None,
) -> go.Figure:
    """An empty figure in the shared look; `showlegend=None` leaves plotly's rule
    (a legend from two traces on)."""
    fig = go.Figure()
    fig.update_layout(
        {
            "template": TEMPLATE,
            "height": height,
            "margin": margin,
            "legend": LEGEND,
            "showlegend": showlegend,
            "uirevision": uirevision,
            "hovermode": hovermode,
            "xaxis": xaxis,
            "yaxis": yaxis,
        }
    )
    return fig


def time_figure(
    frame: pd.DataFrame,
    columns: Sequence[str],
    x_range: tuple[float, float],
    uirevision: str,
    height: int,
    y_title: str,
    hovermode: str = "x unified",
) -> go.Figure:
    """An empty time chart for `frame` (checked against its columns first): the
    window on a UTC date axis, the shared margins, always a legend."""
    require(frame, columns)
    return new_figure(
        height,
        MARGIN,
        uirevision,
        hovermode,
        xaxis={
            "type": "date",
            "range": [float(x_range[0]), float(x_range[1])],
            "title": {"text": TIME_TITLE},
            "hoverformat": TIME_HOVER_FORMAT,
        },
        yaxis={"title": {"text": y_title}},
        showlegend=True,
    )


def note(fig: go.Figure, text: str, colour: str = NOTE_COLOUR) -> None:
    """A centred message, so an empty chart says why it is empty."""
    _paper_text(fig, text, colour, 13, x=0.5, y=0.5)


def corner(fig: go.Figure, text: str, colour: str, x: float, anchor: str) -> None:
    """A small message at the top of the plot, out of the traces' way."""
    _paper_text(fig, text, colour, 10, x=x, y=0.98, xanchor=anchor, yanchor="top")


def _paper_text(fig: go.Figure, text: str, colour: str, size: int, **place: Any) -> None:
    fig.add_annotation(
        text=text,
        xref="paper",
        yref="paper",
        showarrow=False,
        font={"size": size, "color": colour},
        **place,
    )
