"""What the time charts say about the record itself: the feed events lane, and
the shaded spans where the data is untrusted or missing.

`shade_spans` and `empty_chart` finish every time chart (the figures in
`figures` and `heatmap` as well as the lane here), so a hole in the record is
shaded at the same place on each; the spans come as `app.data` gives them
(`coverage.window_spans`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from depthwatch.app.look import (
    HEIGHT_EVENTS,
    NOTE_COLOUR,
    SPAN_FILL,
    SPAN_FILL_OVER,
    SPAN_FILL_QUIET,
    SPAN_LABEL_COLOUR,
    column,
    corner,
    note,
    sorted_by_time,
    time_figure,
)
from depthwatch.coverage import NOT_RECORDED_YET, Span
from depthwatch.records import FeedEventKind
from depthwatch.storage.read.frames import EVENT_COLUMNS

MAX_SHADED_SPANS = 50
LABELLED_SPANS = 3
SPAN_LABEL_STEP = 0.1  # labels stack upwards from the bottom so neighbours do not overlap
MAX_EVENTS_DRAWN = 1000
MAX_DETAIL_CHARS = 160

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


# --- Feed events lane ----------------------------------------------------------
def event_categories(kinds: Sequence[str]) -> list[str]:
    """The lane's rows: the fixed order, then unknown kinds alphabetically."""
    extras = sorted(set(kinds) - set(EVENT_KIND_ORDER))
    return [*EVENT_KIND_ORDER, *extras]


def events_figure(
    events: pd.DataFrame, spans: list[Span], x_range: tuple[float, float], uirevision: str
) -> go.Figure:
    """Feed events on the charts' time axis, one row per kind in a fixed order
    (rows must not jump between refreshes). Open circles mark events of one
    connection only, which another connection may have covered."""
    fig = time_figure(
        events, EVENT_COLUMNS, x_range, uirevision, HEIGHT_EVENTS, "", hovermode="closest"
    )
    events = sorted_by_time(events)
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
        return empty_chart(fig, spans, "no feed events in this window")
    if dropped:
        corner(
            fig,
            f"showing the last {len(events)} of {len(events) + dropped}",
            NOTE_COLOUR,
            1.0,
            "right",
        )
    t = column(events, "t_ms")
    stream = events["stream_level"].eq(True).to_numpy()
    detail = _hover_details(events["detail"], stream)
    for kind in categories:
        mask = kinds == kind
        if not mask.any():
            continue
        colour = EVENT_COLOURS.get(kind, OTHER_EVENT_COLOUR)
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
                    "color": colour,
                    "symbol": np.where(stream[mask], SYMBOL_STREAM, SYMBOL_CONNECTION),
                    "line": {"width": 1.5, "color": colour},
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
def empty_chart(fig: go.Figure, spans: Sequence[Span], why: str) -> go.Figure:
    """A time chart with nothing to draw says why, and is still shaded: a hole in
    the record explains an empty window."""
    note(fig, why)
    return shade_spans(fig, spans)


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
    # Before the first recorded message nothing was missed: a lighter band,
    # never merged with the real holes.
    quiet = [s for s in spans if s.cause == NOT_RECORDED_YET]
    capped = quiet + cap_spans([s for s in spans if s.cause != NOT_RECORDED_YET])
    shapes = [
        {
            "type": "rect",
            "xref": "x",
            "yref": "y domain",
            "x0": s.start_ms,
            "x1": s.end_ms,
            "y0": 0.0,
            "y1": 1.0,
            "fillcolor": (
                SPAN_FILL_QUIET
                if s.cause == NOT_RECORDED_YET
                else SPAN_FILL_OVER
                if over
                else SPAN_FILL
            ),
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
