"""Figure builders: the traces hold exactly the values given, spans come out of
the coverage rules, and figures stay small enough to resend every second."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from depthwatch.app import figures as F
from depthwatch.app.data import coverage_spans
from depthwatch.coverage import CAUSE_BEFORE_WINDOW, Span
from depthwatch.storage.read.frames import (
    EVENT_COLUMNS,
    HEATMAP_COLUMNS,
    IMBALANCE_COLUMNS,
    TOP_COLUMNS,
    TRADE_COLUMNS,
)
from depthwatch.storage.read.rows import BookView, HeatmapGrid

T0 = 1_700_000_000_000.0  # ms, UTC
SEC = 1000.0
WINDOW = (T0, T0 + 600 * SEC)


# --- builders of hand-made frames ----------------------------------------------
def book(bids: list[tuple[float, float]], asks: list[tuple[float, float]]) -> BookView:
    side = lambda levels: pd.DataFrame(levels, columns=["price", "size"], dtype=float)  # noqa: E731
    return BookView(ts_us=int(T0 * 1000), local_us=int(T0 * 1000), bids=side(bids), asks=side(asks))


def top_frame(t: np.ndarray, bid: np.ndarray, ask: np.ndarray) -> pd.DataFrame:
    """Top-of-book rows with fixed offsets for the bucket extremes, so every
    column holds a distinct, checkable value."""
    return pd.DataFrame(
        {
            "t_ms": t,
            "bid": bid,
            "ask": ask,
            "bid_min": bid - 0.5,
            "ask_max": ask + 0.5,
            "mid": (bid + ask) / 2,
            "spread_bps": np.full(t.size, 1.25),
            "spread_bps_max": np.full(t.size, 3.5),
        },
        columns=list(TOP_COLUMNS),
    )


def regular_top(n: int) -> pd.DataFrame:
    t = T0 + np.arange(n) * SEC
    bid = 100.0 + np.arange(n) * 0.1
    return top_frame(t, bid, bid + 0.2)


def events_frame(rows: list[tuple[float, str, str, bool]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(EVENT_COLUMNS))


def ev(offset_s: float, kind: str, stream: bool = True, detail: str = "") -> tuple:
    return (T0 + offset_s * SEC, kind, detail or kind, stream)


NO_EVENTS = events_frame([])
EMPTY_TRADES = pd.DataFrame(columns=list(TRADE_COLUMNS), dtype=float)
EMPTY_TOP = pd.DataFrame(columns=list(TOP_COLUMNS), dtype=float)


def heartbeats(*offsets_s: float) -> np.ndarray:
    return T0 + np.array(offsets_s, dtype=float) * SEC


def every_second(start_s: float, end_s: float) -> np.ndarray:
    return T0 + np.arange(start_s, end_s + 1) * SEC


# --- helpers ---------------------------------------------------------------------
def test_spread_bps_is_relative_to_the_mid():
    got = F.spread_bps(np.array([99.0, 9999.5, 10.0]), np.array([101.0, 10000.5, 10.0]))
    np.testing.assert_allclose(got, [200.0, 1.0, 0.0])


def test_imbalance_is_signed_share_and_nan_for_empty_book():
    got = F.imbalance(np.array([3.0, 1.0, 5.0, 0.0]), np.array([1.0, 3.0, 0.0, 0.0]))
    np.testing.assert_array_equal(got, [0.5, -0.5, 1.0, np.nan])


# --- depth -------------------------------------------------------------------------
def test_depth_sums_size_outward_from_the_touch():
    fig = F.depth_figure(book([(100.0, 1.0), (99.0, 2.0), (98.0, 3.0)], [(101.0, 4.0), (102.0, 5)]))
    bids, asks = fig.data
    np.testing.assert_array_equal(bids.x, [100.0, 99.0, 98.0])
    np.testing.assert_array_equal(bids.y, [1.0, 3.0, 6.0])
    np.testing.assert_array_equal(asks.x, [101.0, 102.0])
    np.testing.assert_array_equal(asks.y, [4.0, 9.0])
    for trace in (bids, asks):
        assert trace.line.shape == "hv"
        assert trace.fill == "tozeroy"
    assert bids.line.color == F.BID_COLOUR
    assert asks.line.color == F.ASK_COLOUR


def test_depth_sorts_levels_given_out_of_order():
    fig = F.depth_figure(book([(98.0, 3.0), (100.0, 1.0)], [(102.0, 5.0), (101.0, 4.0)]))
    np.testing.assert_array_equal(fig.data[0].y, [1.0, 4.0])
    np.testing.assert_array_equal(fig.data[1].y, [4.0, 9.0])


def test_depth_marks_the_mid_from_the_book_or_as_given():
    levels = ([(100.0, 1.0)], [(101.0, 1.0)])
    (line,) = F.depth_figure(book(*levels)).layout.shapes
    assert line.x0 == line.x1 == 100.5
    assert line.line.dash == "dash"
    (given,) = F.depth_figure(book(*levels), mid=100.25).layout.shapes
    assert given.x0 == 100.25
    texts = [a.text for a in F.depth_figure(book(*levels)).layout.annotations]
    assert "mid 100.5" in texts


def test_depth_of_an_empty_book_says_so():
    for empty in (book([], []), None):
        fig = F.depth_figure(empty)
        assert len(fig.data) == 0
        assert [a.text for a in fig.layout.annotations] == ["no book"]


def test_depth_flags_a_crossed_book():
    fig = F.depth_figure(book([(101.0, 1.0)], [(100.0, 1.0)]))
    assert any("crossed" in a.text for a in fig.layout.annotations)
    ok = F.depth_figure(book([(100.0, 1.0)], [(101.0, 1.0)]))
    assert not any("crossed" in a.text for a in ok.layout.annotations)


# --- shared time-axis layout ---------------------------------------------------------
def all_time_figures(spans: list[Span]) -> dict[str, go.Figure]:
    top = regular_top(5)
    imb = pd.DataFrame(
        {"t_ms": top.t_ms, "bid_size": 1.0, "ask_size": 1.0, "imbalance": 0.0},
        columns=list(IMBALANCE_COLUMNS),
    )
    cells = pd.DataFrame({"t_ms": [T0], "price": [100.0], "size": [1.0]})
    return {
        "price": F.price_figure(top, spans, WINDOW, "rev-price"),
        "spread": F.spread_figure(top, spans, WINDOW, "rev-spread"),
        "heatmap": F.heatmap_figure(
            cells, HeatmapGrid(SEC, 0.5), top, EMPTY_TRADES, spans, WINDOW, "rev-heatmap"
        ),
        "imbalance": F.imbalance_figure(imb, spans, WINDOW, "rev-imbalance", levels=10),
        "events": F.events_figure(NO_EVENTS, spans, WINDOW, "rev-events"),
    }


def test_time_figures_share_the_window_axis_and_margins():
    for name, fig in all_time_figures([]).items():
        assert fig.layout.xaxis.type == "date", name
        assert tuple(fig.layout.xaxis.range) == WINDOW, name
        assert "UTC" in fig.layout.xaxis.title.text, name
        assert fig.layout.uirevision == f"rev-{name}", name
        assert 220 <= fig.layout.height <= 320, name
        assert fig.layout.margin.l == F.MARGIN["l"] and fig.layout.margin.r == F.MARGIN["r"]
        assert fig.layout.legend.orientation == "h", name


def test_figures_use_the_small_template_not_plotlys_default():
    fig = F.price_figure(EMPTY_TOP, [], WINDOW, "u")
    template = json.loads(fig.to_json())["layout"]["template"]
    assert "data" not in template  # the default template carries per-trace-type styling
    assert len(json.dumps(template)) < 1_000


# --- price and spread ----------------------------------------------------------------
def test_price_traces_hold_bid_ask_mid_and_bucket_extremes():
    top = regular_top(4)
    fig = F.price_figure(top, [], WINDOW, "u")
    by_name = {trace.name: trace for trace in fig.data}
    assert set(by_name) == {"bid low", "best bid", "best ask", "ask high", "mid"}
    expected = {
        "bid low": [99.5, 99.6, 99.7, 99.8],
        "best bid": [100.0, 100.1, 100.2, 100.3],
        "best ask": [100.2, 100.3, 100.4, 100.5],
        "ask high": [100.7, 100.8, 100.9, 101.0],
        "mid": [100.1, 100.2, 100.3, 100.4],
    }
    for name, values in expected.items():
        np.testing.assert_allclose(by_name[name].y, values, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(by_name[name].x, T0 + np.arange(4) * SEC)
        assert isinstance(by_name[name], go.Scatter)
    assert by_name["best bid"].line.color == F.BID_COLOUR
    assert by_name["best ask"].line.color == F.ASK_COLOUR


def test_price_switches_to_webgl_above_a_thousand_points():
    assert isinstance(F.price_figure(regular_top(1000), [], WINDOW, "u").data[0], go.Scatter)
    assert isinstance(F.price_figure(regular_top(1001), [], WINDOW, "u").data[0], go.Scattergl)


def test_lines_break_at_missing_buckets_instead_of_bridging_them():
    t = T0 + np.array([0.0, 1.0, 2.0, 3.0, 10.0, 11.0]) * SEC
    bid = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    fig = F.price_figure(top_frame(t, bid, bid + 1), [], WINDOW, "u")
    best_bid = next(trace for trace in fig.data if trace.name == "best bid")
    np.testing.assert_array_equal(best_bid.x, T0 + np.array([0, 1, 2, 3, 4, 10, 11]) * SEC)
    np.testing.assert_array_equal(best_bid.y, [1.0, 2.0, 3.0, 4.0, np.nan, 5.0, 6.0])


def test_price_figure_ships_typed_arrays():
    payload = F.price_figure(regular_top(600), [], WINDOW, "u").to_json()
    assert '"bdata"' in payload
    assert '"dtype":"f8"' in payload


def test_spread_shows_last_and_widest_per_bucket():
    fig = F.spread_figure(regular_top(3), [], WINDOW, "u")
    widest, last = fig.data
    np.testing.assert_array_equal(last.y, [1.25, 1.25, 1.25])
    np.testing.assert_array_equal(widest.y, [3.5, 3.5, 3.5])
    assert widest.fill == "tozeroy"
    assert fig.layout.yaxis.title.text == "spread (bps)"


def test_empty_top_gives_a_note_not_an_error():
    fig = F.price_figure(EMPTY_TOP, [], WINDOW, "u")
    assert len(fig.data) == 0
    assert "no top of book" in fig.layout.annotations[0].text


# --- heatmap -------------------------------------------------------------------------
def test_heatmap_grid_places_each_cell_and_leaves_the_rest_empty():
    step = 0.1
    # prices as float arithmetic produces them (100.3 is not 100 + 3 * 0.1 exactly)
    cells = pd.DataFrame(
        {
            "t_ms": [T0, T0 + 2 * SEC, T0 + 2 * SEC, T0 + 1 * SEC],
            "price": [100.0, 100.0 + 3 * step, 100.1 + 0.2, 100.1],
            "size": [5.0, 7.0, 9.0, 2.0],
        },
        columns=list(HEATMAP_COLUMNS),
    )
    times, prices, z = F.heatmap_grid(cells, HeatmapGrid(SEC, step))
    np.testing.assert_array_equal(times, T0 + np.arange(3) * SEC)
    np.testing.assert_allclose(prices, [100.0, 100.1, 100.2, 100.3])
    assert z.dtype == np.float32
    expected = np.full((4, 3), np.nan, dtype=np.float32)
    expected[0, 0] = 5.0
    expected[3, 2] = 9.0  # two spellings of 100.3 in one bucket: the larger size stays
    expected[1, 1] = 2.0
    np.testing.assert_array_equal(z, expected)


def test_heatmap_grid_of_no_cells_is_empty():
    times, prices, z = F.heatmap_grid(
        pd.DataFrame(columns=list(HEATMAP_COLUMNS), dtype=float), HeatmapGrid(SEC, 1.0)
    )
    assert times.size == prices.size == z.size == 0


def test_heatmap_grid_caps_rows_when_a_price_is_an_outlier():
    prices_in = [100.0, 100.5, 101.0, 10_000.0]
    cells = pd.DataFrame({"t_ms": [T0] * 4, "price": prices_in, "size": [1.0, 2.0, 3.0, 4.0]})
    _, prices, z = F.heatmap_grid(cells, HeatmapGrid(SEC, 0.5))
    assert z.shape == (F.MAX_PRICE_ROWS, 1)
    assert prices[0] == 100.0  # the kept rows start at the data, not below it
    np.testing.assert_array_equal(z[:3, 0], [1.0, 2.0, 3.0])
    assert np.isnan(z[3:, 0]).all()  # the outlier is dropped, not drawn


def heatmap_cells(sizes: list[float]) -> pd.DataFrame:
    n = len(sizes)
    return pd.DataFrame({"t_ms": T0 + np.arange(n) * SEC, "price": [100.0] * n, "size": sizes})


def test_heatmap_figure_clips_the_colour_scale_at_the_percentile():
    grid = HeatmapGrid(SEC, 0.5)
    fig = F.heatmap_figure(
        heatmap_cells([1.0, 2.0, 3.0, 10.0]), grid, EMPTY_TOP, EMPTY_TRADES, [], WINDOW, "u", 50.0
    )
    heat = fig.data[0]
    assert heat.type == "heatmap"
    assert (heat.zmin, heat.zmax) == (0, F.HEATMAP_LEVELS)
    # Clip level: the median of 1, 2, 3, 10 = 2.5; sizes become bytes 1..255 below it.
    assert heat.colorbar.ticktext[-1] == "≥2.5"
    expected = [1 + round(v / 2.5 * 254) for v in (1.0, 2.0)] + [255, 255]
    assert np.asarray(heat.z).tolist() == [expected]
    assert heat.colorbar.tickvals[-1] == 255
    assert "p50" in heat.colorbar.title.text and "max size per cell" in heat.colorbar.title.text
    # centred cells: column j covers [T0 + j s, T0 + (j + 1) s)
    assert heat.x0 == T0 + 500.0 and heat.dx == SEC
    assert heat.y0 == 100.25 and heat.dy == 0.5
    default = F.heatmap_figure(
        heatmap_cells(list(np.arange(1.0, 101.0))), grid, EMPTY_TOP, EMPTY_TRADES, [], WINDOW, "u"
    )
    # p99 of 1..100, linear interpolation
    assert default.data[0].colorbar.ticktext[-1] == f"≥{99.01:.3g}"
    assert "p99" in default.data[0].colorbar.title.text


def test_heatmap_draws_the_touch_over_the_cells():
    fig = F.heatmap_figure(
        heatmap_cells([1.0]), HeatmapGrid(SEC, 0.5), regular_top(3), EMPTY_TRADES, [], WINDOW, "u"
    )
    assert [trace.name for trace in fig.data] == ["resting size", "best bid", "best ask"]
    np.testing.assert_allclose(fig.data[1].y, [100.0, 100.1, 100.2])
    np.testing.assert_allclose(fig.data[2].y, [100.2, 100.3, 100.4])


def test_heatmap_trades_appear_only_when_given_split_by_side():
    grid = HeatmapGrid(SEC, 0.5)
    trades = pd.DataFrame(
        {
            "t_ms": [T0, T0 + SEC, T0 + 2 * SEC],
            "price": [100.0, 101.0, 102.0],
            "size": [0.5, 50.0, 5000.0],
            "side": ["buy", "sell", "buy"],
        }
    )
    with_trades = F.heatmap_figure(heatmap_cells([1.0]), grid, EMPTY_TOP, trades, [], WINDOW, "u")
    by_name = {trace.name: trace for trace in with_trades.data}
    np.testing.assert_array_equal(by_name["buys"].y, [100.0, 102.0])
    np.testing.assert_array_equal(by_name["buys"].customdata, [0.5, 5000.0])
    np.testing.assert_array_equal(by_name["sells"].x, [T0 + SEC])
    sizes = np.concatenate([by_name["buys"].marker.size, by_name["sells"].marker.size])
    lo, hi = F.TRADE_MARKER_PX
    assert ((sizes >= lo) & (sizes <= hi)).all()
    assert by_name["buys"].marker.size[0] < by_name["sells"].marker.size[0]
    without = F.heatmap_figure(heatmap_cells([1.0]), grid, EMPTY_TOP, EMPTY_TRADES, [], WINDOW, "u")
    assert not {"buys", "sells"} & {trace.name for trace in without.data}


def test_heatmap_without_cells_says_so():
    fig = F.heatmap_figure(
        pd.DataFrame(columns=list(HEATMAP_COLUMNS), dtype=float),
        HeatmapGrid(SEC, 0.5),
        EMPTY_TOP,
        EMPTY_TRADES,
        [],
        WINDOW,
        "u",
    )
    assert len(fig.data) == 0
    assert "no heatmap cells" in fig.layout.annotations[0].text


# --- imbalance -----------------------------------------------------------------------
def test_imbalance_splits_by_sign_on_a_fixed_axis():
    values = [0.5, -0.25, 0.0, -1.0]
    imb = pd.DataFrame(
        {"t_ms": T0 + np.arange(4) * SEC, "bid_size": 1.0, "ask_size": 1.0, "imbalance": values}
    )
    fig = F.imbalance_figure(imb, [], WINDOW, "u", levels=25)
    bid_heavy, ask_heavy, line = fig.data
    np.testing.assert_array_equal(bid_heavy.y, [0.5, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(ask_heavy.y, [0.0, -0.25, 0.0, -1.0])
    np.testing.assert_array_equal(line.y, values)
    assert bid_heavy.line.color == F.BID_COLOUR and ask_heavy.line.color == F.ASK_COLOUR
    assert tuple(fig.layout.yaxis.range) == (-1.0, 1.0)
    assert "top 25 levels" in fig.layout.yaxis.title.text


# --- events lane ---------------------------------------------------------------------
def test_events_lane_rows_keep_a_fixed_order():
    a = F.events_figure(events_frame([ev(1, "connect")]), [], WINDOW, "u")
    b = F.events_figure(
        events_frame([ev(1, "zeta_new"), ev(2, "gap"), ev(3, "alpha_new")]), [], WINDOW, "u"
    )
    fixed = [
        "gap",
        "resync",
        "restart",
        "book_lost",
        "recovered",
        "disconnect",
        "connect",
        "stall",
        "anomaly",
        "malformed",
        "subscribe_failed",
        "backpressure",
    ]
    rows_a = list(a.layout.yaxis.categoryarray)
    rows_b = list(b.layout.yaxis.categoryarray)
    assert rows_a[: len(fixed)] == fixed
    assert rows_b[: len(rows_a)] == rows_a
    assert rows_b[len(rows_a) :] == ["alpha_new", "zeta_new"]
    assert a.layout.yaxis.categoryorder == "array"
    assert tuple(a.layout.yaxis.range) == (len(rows_a) - 0.5, -0.5)  # all rows, first on top


def test_events_lane_marks_each_event_with_its_detail_and_colour():
    events = events_frame(
        [ev(1, "gap", detail="u 5 -> 9"), ev(2, "connect", stream=False), ev(3, "gap")]
    )
    fig = F.events_figure(events, [], WINDOW, "u")
    by_name = {trace.name: trace for trace in fig.data}
    np.testing.assert_array_equal(by_name["gap"].x, [T0 + SEC, T0 + 3 * SEC])
    assert list(by_name["gap"].y) == ["gap", "gap"]
    assert list(by_name["gap"].customdata) == ["u 5 -> 9", "gap"]
    assert by_name["gap"].marker.color == F.EVENT_COLOURS["gap"]
    assert list(by_name["connect"].marker.symbol) == [F.SYMBOL_CONNECTION]
    assert "one connection" in by_name["connect"].customdata[0]


def test_events_lane_without_events_says_so():
    fig = F.events_figure(NO_EVENTS, [], WINDOW, "u")
    assert len(fig.data) == 0
    assert fig.layout.annotations[0].text == "no feed events in this window"
    assert list(fig.layout.yaxis.categoryarray) == list(F.EVENT_KIND_ORDER)


# --- coverage spans ------------------------------------------------------------------
FULL_BEATS = every_second(0, 600)


def spans_of(rows: list[tuple], beats: np.ndarray = FULL_BEATS) -> list[Span]:
    return coverage_spans(events_frame(rows), beats, WINDOW[0], WINDOW[1], SEC)


def test_gap_until_recovered_is_one_span():
    assert spans_of([ev(10, "gap"), ev(12, "resync"), ev(20, "recovered")]) == [
        Span(T0 + 10 * SEC, T0 + 20 * SEC, "gap")
    ]


def test_span_still_open_runs_to_the_window_end():
    assert spans_of([ev(500, "book_lost")]) == [Span(T0 + 500 * SEC, WINDOW[1], "book_lost")]
    # A connection's own disconnect opens nothing: its streams report book_lost.
    assert spans_of([ev(500, "disconnect", stream=False)]) == []


def test_recovered_first_means_the_span_began_before_the_window():
    assert spans_of([ev(30, "recovered"), ev(40, "gap"), ev(45, "recovered")]) == [
        Span(WINDOW[0], T0 + 30 * SEC, CAUSE_BEFORE_WINDOW),
        Span(T0 + 40 * SEC, T0 + 45 * SEC, "gap"),
    ]


def test_opener_before_the_window_is_clipped_to_its_start():
    assert spans_of([ev(-100, "resync"), ev(5, "recovered")]) == [
        Span(WINDOW[0], T0 + 5 * SEC, "resync")
    ]


def test_connection_level_events_and_restart_open_no_span():
    rows = [ev(10, "gap", stream=False), ev(20, "restart"), ev(30, "disconnect", stream=False)]
    assert spans_of(rows) == []


def test_heartbeat_hole_is_a_collector_span():
    beats = np.concatenate([every_second(0, 100), every_second(110, 600)])
    assert spans_of([], beats) == [Span(T0 + 100 * SEC, T0 + 110 * SEC, "collector not running")]


def test_short_heartbeat_hole_is_tolerated():
    beats = np.concatenate([every_second(0, 100), every_second(103, 600)])  # 3 s = 3 intervals
    assert spans_of([], beats) == []


def test_heartbeats_missing_at_the_window_edges():
    assert spans_of([], every_second(50, 600)) == [
        Span(WINDOW[0], T0 + 50 * SEC, "collector not running")
    ]
    assert spans_of([], every_second(0, 500)) == [
        Span(T0 + 500 * SEC, WINDOW[1], "collector not running")
    ]


def test_no_heartbeats_at_all_is_one_span_over_the_window():
    assert spans_of([], np.array([])) == [Span(WINDOW[0], WINDOW[1], "collector not running")]


def test_overlapping_spans_of_one_cause_merge_and_others_stay():
    beats = np.concatenate(
        [every_second(0, 100), every_second(110, 112), every_second(120, 600)]
    )  # collector holes 100-110 and 112-120, kept apart: they do not touch
    got = spans_of(
        [ev(90, "gap"), ev(105, "recovered"), ev(108, "gap"), ev(111, "recovered")], beats
    )
    assert got == [
        Span(T0 + 90 * SEC, T0 + 105 * SEC, "gap"),
        Span(T0 + 100 * SEC, T0 + 110 * SEC, "collector not running"),
        Span(T0 + 108 * SEC, T0 + 111 * SEC, "gap"),
        Span(T0 + 112 * SEC, T0 + 120 * SEC, "collector not running"),
    ]


# --- shading -------------------------------------------------------------------------
def test_shade_spans_adds_one_rectangle_per_span_below_the_traces():
    spans = [Span(T0 + 10 * SEC, T0 + 20 * SEC, "gap"), Span(T0 + 30 * SEC, T0 + 40 * SEC, "stall")]
    fig = F.price_figure(regular_top(3), spans, WINDOW, "u")
    rects = fig.layout.shapes
    assert [(r.x0, r.x1) for r in rects] == [(s.start_ms, s.end_ms) for s in spans]
    assert all(r.layer == "below" and r.line.width == 0 for r in rects)
    assert all(r.yref == "y domain" and (r.y0, r.y1) == (0, 1) for r in rects)
    assert [a.text for a in fig.layout.annotations] == ["gap", "stall"]


def test_span_labels_stay_inside_the_plot():
    lo, hi = WINDOW
    early = Span(lo - 5 * SEC, lo + 10 * SEC, "book_lost")  # began before the window
    late = Span(hi - 2 * SEC, hi + 5 * SEC, "collector not running")  # runs past its end
    fig = F.price_figure(regular_top(3), [early, late], WINDOW, "u")
    first, second = fig.layout.annotations
    assert (first.x, first.xanchor, first.text) == (lo, "left", "book lost")
    assert (second.x, second.xanchor) == (hi, "right")


def test_every_time_figure_is_shaded():
    span = [Span(T0 + 10 * SEC, T0 + 20 * SEC, "gap")]
    for name, fig in all_time_figures(span).items():
        assert [(r.x0, r.x1) for r in fig.layout.shapes] == [(span[0].start_ms, span[0].end_ms)]
        assert fig.layout.shapes[0].layer == ("above" if name == "heatmap" else "below")


def test_a_flapping_feed_cannot_blow_up_the_shapes():
    # distinct gaps between neighbours (i ms more each time), so the cap is met exactly
    spans = [Span(T0 + i * SEC + i * i, T0 + i * SEC + i * i + 100, "gap") for i in range(500)]
    fig = F.shade_spans(go.Figure(), spans)
    rects = fig.layout.shapes
    assert len(rects) == F.MAX_SHADED_SPANS
    assert rects[0].x0 == spans[0].start_ms and rects[-1].x1 == spans[-1].end_ms
    covered = [(r.x0, r.x1) for r in rects]
    for s in spans:  # every original span still lies inside a shaded one
        assert any(a <= s.start_ms and s.end_ms <= b for a, b in covered)
    assert len(fig.layout.annotations) == F.LABELLED_SPANS


def test_capping_names_every_cause_merged():
    spans = [Span(0, 1, "gap"), Span(2, 3, "disconnect"), Span(100, 101, "gap")]
    assert F.cap_spans(spans, limit=2) == [Span(0, 3, "gap + disconnect"), Span(100, 101, "gap")]


# --- size on the wire ----------------------------------------------------------------
def realistic_figures() -> dict[str, go.Figure]:
    """A 600-bucket window: 50 levels a side, 600 top rows, a 600 x 80 heatmap,
    300 trades, a few events."""
    rng = np.random.default_rng(7)
    n, rows = 600, 80
    t = T0 + np.arange(n) * SEC
    bid = 60_000 + np.cumsum(rng.normal(0, 0.5, n)).round(1)
    top = top_frame(t, bid, bid + 0.1)
    levels = np.arange(50) * 0.1
    depth_book = BookView(
        1,
        1,
        pd.DataFrame({"price": 60_000 - levels, "size": rng.random(50)}),
        pd.DataFrame({"price": 60_000.1 + levels, "size": rng.random(50)}),
    )
    tt, pp = np.meshgrid(t, 59_980 + np.arange(rows) * 0.5)
    cells = pd.DataFrame({"t_ms": tt.ravel(), "price": pp.ravel(), "size": rng.random(tt.size)})
    trades = pd.DataFrame(
        {
            "t_ms": T0 + rng.random(300) * n * SEC,
            "price": 60_000 + rng.normal(0, 3, 300),
            "size": rng.random(300),
            "side": rng.choice(["buy", "sell"], 300),
        }
    )
    imb = pd.DataFrame(
        {"t_ms": t, "bid_size": 1.0, "ask_size": 1.0, "imbalance": rng.uniform(-1, 1, n)}
    )
    events = events_frame([ev(10, "book_lost"), ev(11, "connect"), ev(15, "recovered")])
    spans = coverage_spans(events, t, WINDOW[0], WINDOW[1], SEC)
    return {
        "depth": F.depth_figure(depth_book),
        "price": F.price_figure(top, spans, WINDOW, "u"),
        "spread": F.spread_figure(top, spans, WINDOW, "u"),
        "heatmap": F.heatmap_figure(cells, HeatmapGrid(SEC, 0.5), top, trades, spans, WINDOW, "u"),
        "imbalance": F.imbalance_figure(imb, spans, WINDOW, "u", levels=10),
        "events": F.events_figure(events, spans, WINDOW, "u"),
    }


# Bytes of fig.to_json(). The heatmap is dominated by its one-byte z (600 x 80,
# base64: 64 KB) and the touch lines over it; the price chart by five 600-point
# f8 (x, y) pairs.
JSON_BUDGET = {
    "depth": 8_000,
    "price": 90_000,
    "spread": 30_000,
    "heatmap": 130_000,
    "imbalance": 45_000,
    "events": 8_000,
}


def test_realistic_window_figures_stay_within_their_json_budget():
    sizes = {name: len(fig.to_json()) for name, fig in realistic_figures().items()}
    print("figure JSON bytes:", sizes)
    over = {name: size for name, size in sizes.items() if size > JSON_BUDGET[name]}
    assert not over, f"over budget: {over} (budget {JSON_BUDGET})"


def test_heatmap_levels_keep_empty_cells_apart_from_small_ones():
    z = np.array([[np.nan, 0.0, 1.0, 4.0, 9.0]], dtype=np.float32)
    levels = F.heatmap_levels(z, zmax=4.0)
    assert levels.dtype == np.uint8
    assert levels.tolist() == [[0, 1, 1 + round(254 / 4), 255, 255]]
