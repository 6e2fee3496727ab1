"""The Live page: one stream's book, re-read and redrawn every second.

Controls sit outside the live fragment and live in the URL, so a link reopens
the same view; the fragment (one, not nested) re-queries through the shared
cache and redraws the header and every chart.
"""

from __future__ import annotations

from collections import deque
from typing import BinaryIO

import streamlit as st

from depthwatch.app import data, downloads, figures, planning
from depthwatch.app.common import (
    age,
    int_param,
    load,
    mid_and_spread,
    price,
    recorded_streams,
    replica_lag,
    shown_param,
    utc,
    window_control,
)
from depthwatch.app.guard import live_fragment
from depthwatch.app.rpi import RpiView
from depthwatch.clock import SECOND_US
from depthwatch.export import files
from depthwatch.feed.registry import TARDIS_EXCHANGE, venue_of
from depthwatch.records import FULL_DEPTH, depth_label
from depthwatch.storage.read.rows import Bounds, HeatmapGrid
from depthwatch.storage.read.streams import Stream

REFRESH_S = 1.0
SHOWN_SAMPLES = 600  # render-time data ages kept per viewer for the latency strip


def render() -> None:
    st.title("Live order book")
    streams = recorded_streams()
    if streams is None:
        return
    stream, window_min, levels, paused = _controls(streams)
    range_bps = _range_control(stream)
    # Streamlit 1.67 remounts a plotly chart whose data changed, so a zoom lasts
    # until the next refresh: pausing stops the refresh and keeps zoom and hover.
    panel = live_fragment(live_panel, None if paused else REFRESH_S)
    panel(stream, window_min, levels, paused, range_bps)
    _downloads(stream, window_min)


def _label(stream: Stream) -> str:
    return f"{stream.symbol} · {stream.category} · depth {depth_label(stream.depth)}"


def _controls(streams: list[Stream]) -> tuple[Stream, int, int, bool]:
    """Symbol, window and levels, seeded from the URL and written back to it;
    pausing belongs to this viewing only, not to the link."""
    index = _stream_index(streams)
    window_default = int_param("window", data.DEFAULT_WINDOW_MIN, data.WINDOWS_MIN)
    levels_default = int_param("levels", data.DEFAULT_LEVELS, data.LEVEL_CHOICES)
    # Sized so the window control shows its five choices whole from 1280 px on.
    left, middle, right, pause = st.columns([1.8, 2.4, 1, 0.8], vertical_alignment="bottom")
    stream = left.selectbox("Stream", streams, index=index, format_func=_label, key="stream")
    window_min = window_control(middle, window_default)
    levels = right.selectbox(
        "Levels per side",
        data.LEVEL_CHOICES,
        index=data.LEVEL_CHOICES.index(levels_default),
        key="levels",
    )
    st.query_params.update(
        category=stream.category,
        symbol=stream.symbol,
        depth=depth_label(stream.depth),
        window=str(window_min),
        levels=str(levels),
    )
    paused = pause.toggle("Pause", key="paused", help="Stop refreshing to zoom and hover")
    return stream, int(window_min), int(levels), paused


def _range_control(stream: Stream) -> int:
    """A whole book is drawn over a price range around its mid (in the URL as
    `range`, basis points each side); other depths level by level."""
    if stream.depth != FULL_DEPTH:
        return data.DEFAULT_RANGE_BPS
    default = int_param("range", data.DEFAULT_RANGE_BPS, data.RANGES_BPS)
    chosen = st.segmented_control(
        "Price range around the mid (whole book)",
        data.RANGES_BPS,
        default=default,
        key="range",
        format_func=lambda bps: f"±{bps} bps",
    )
    range_bps = int(chosen or data.DEFAULT_RANGE_BPS)
    st.query_params["range"] = str(range_bps)
    return range_bps


STREAM_PARAMS = ("category", "symbol", "depth")


def _stream_index(streams: list[Stream]) -> int:
    """The stream the URL names (category, symbol and depth, or the symbol
    alone); a URL naming none is told so, and the first stream is shown."""
    params = st.query_params
    wanted = (params.get("category"), params.get("symbol"), params.get("depth"))
    if wanted == (None, None, None):
        return 0
    for i, s in enumerate(streams):
        if (s.category, s.symbol, depth_label(s.depth)) == wanted or (
            wanted[0] is None and wanted[2] is None and wanted[1] == s.symbol
        ):
            return i
    asked = ", ".join(
        f"{k}={shown_param(v)}" for k, v in zip(STREAM_PARAMS, wanted, strict=True) if v
    )
    recorded = "; ".join(_label(s) for s in streams[:10])
    st.warning(
        f"No recorded stream matches the URL's `{asked}`: the URL parameters `category`, "
        f"`symbol` and `depth` must name one of: {recorded}. Showing {_label(streams[0])}.",
        icon=":material/link_off:",
    )
    return 0


def live_panel(
    stream: Stream,
    window_min: int,
    levels: int,
    paused: bool,
    range_bps: int = data.DEFAULT_RANGE_BPS,
) -> None:
    """Everything that refreshes: run as a fragment every second unless paused."""
    view = load(lambda: data.live_view(stream, window_min, levels, range_bps))
    if view is None:
        return
    age_s = view.data_age_s(data.now_us())
    _header(view, age_s, paused)
    if view.rpi is not None:
        _rpi_panel(view.rpi)
    if view.top.empty and view.book is None:
        st.warning(
            f"No data for {_label(stream)} in the last {window_min} min"
            + (f" (last recorded {utc(view.quote.ts_us, True)})." if view.quote else ".")
            + " Pick a longer window, or check the Health page: is the collector running?",
            icon=":material/hourglass_empty:",
        )
        return
    x_range = (view.start_us / 1000, view.now_us / 1000)
    key = f"{stream.key}/{window_min}/{levels}/{range_bps}"
    drawn = (
        f"top {levels} levels per side"
        if view.price_range is None
        else f"prices {view.price_range[0]:,.6g} to {view.price_range[1]:,.6g}: ±{range_bps} "
        "bps of the mid, or as far as the book reaches"
    )
    floor_ceiling = _known_range(view)
    left, right = st.columns([1, 2])
    with left:
        if view.book is not None:
            mid = view.top["mid"].iloc[-1] if not view.top.empty else None
            depth = figures.depth_figure(view.book, mid)
            figures.mark_known_range(depth, *floor_ceiling, axis="x")
            st.plotly_chart(depth, key="depth")
            st.caption(f"Depth: {drawn}, as of {utc(view.book.ts_us)}{_profile_note(view)}.")
        if view.bounds is not None:
            st.caption(_bounds_note(view.bounds, stream.category))
        _latency_strip(view, age_s)
    with right:
        heatmap = figures.heatmap_figure(
            view.heatmap, view.grid, view.top, view.trades, view.spans, x_range, key
        )
        figures.mark_known_range(heatmap, *floor_ceiling, axis="y")
        st.plotly_chart(heatmap, key="heatmap")
        st.caption(
            f"Liquidity heatmap: each cell is {_cell_meaning(view.grid)} "
            f"({drawn}, colour clipped at the 99th percentile)"
            + (", trades as dots" if not view.trades.empty else "")
            + ". Grey bands: book not trusted or not recorded; a faint one: before the "
            "stream's first recorded message (nothing missed)."
        )
    st.plotly_chart(figures.price_figure(view.top, view.spans, x_range, key), key="price")
    st.plotly_chart(figures.spread_figure(view.top, view.spans, x_range, key), key="spread")
    st.plotly_chart(
        figures.imbalance_figure(view.imbalance, view.spans, x_range, key, levels),
        key="imbalance",
    )
    st.plotly_chart(figures.events_figure(view.events, view.spans, x_range, key), key="events")


def _known_range(view: data.LiveView) -> tuple[float | None, float | None]:
    """A whole book's bid floor and ask ceiling where they fall in the drawn
    prices (None: that side whole, or exact over all of them)."""
    bounds, drawn = view.bounds, view.price_range
    if bounds is None or drawn is None:
        return None, None
    low, high = drawn
    marks = [None if b is None else float(b) for b in (bounds.bid_floor, bounds.ask_ceiling)]
    return tuple(m if m is not None and low <= m <= high else None for m in marks)  # type: ignore[return-value]


def _profile_note(view: data.LiveView) -> str:
    """How a whole book's pictures are made: not level by level."""
    if view.price_range is None:
        return ""
    return (
        f"; the whole book summed into {view.grid.price_step:g}-wide price buckets in the "
        "database, from the profiles the collector writes every few seconds"
    )


def _bounds_note(bounds: Bounds, category: str) -> str:
    """What a whole book's record can vouch for (depth full)."""
    if bounds.whole:
        return "Whole book: every level exact (the REST snapshot held both sides whole)."
    venue = venue_of(category)
    return (
        f"Whole book: exact within {bounds.describe()}, the prices of the REST snapshot it "
        f"started from ({venue.exchange.title()}'s holds {venue.snapshot_levels:,} levels a "
        "side at most); beyond them only the levels that changed since are known."
    )


def _rpi_level(text: str | None, size: float | None) -> str:
    return "-" if text is None else f"{price(text)} ({size or 0:,.6g})"


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share:.1%}"


def _rpi_panel(view: RpiView) -> None:
    """Best levels without and with RPI, and the RPI shares: a small table
    (six metrics side by side cut their values), the explanation beside it."""
    without, with_rpi = view.without, view.with_rpi
    rows = [
        (
            "without RPI",
            _rpi_level(without.bid, without.bid_size),
            _rpi_level(without.ask, without.ask_size),
        ),
        (
            "with RPI",
            _rpi_level(with_rpi.bid, with_rpi.bid_size),
            _rpi_level(with_rpi.ask, with_rpi.ask_size),
        ),
        (
            f"RPI share, top {view.levels} levels",
            _percent(view.bid_share),
            _percent(view.ask_share),
        ),
    ]
    lines = [f"| {name} | {bid} | {ask} |" for name, bid, ask in rows]
    table, note = st.columns([1.2, 1])
    table.markdown(
        "**Retail Price Improvement (RPI)**\n\n| | bid | ask |\n|---|--:|--:|\n" + "\n".join(lines)
    )
    when = f" as of {utc(view.ts_us)}" if view.ts_us is not None else ""
    note.caption(
        "RPI orders rest on Bybit's book, but only retail (non-API) takers can fill them; "
        "the ordinary book streams leave them out, and `orderbook.rpi` sends both sizes of "
        "each of its 50 levels. Best: price (size). Share: RPI size over all size in the "
        f"top {view.levels} levels of the book with RPI{when}."
    )


def _cell_meaning(grid: HeatmapGrid) -> str:
    bucket, seconds = f"{grid.price_step:g}", f"{grid.time_bucket_ms / 1000:g}"
    if grid.cell_rule == "last":
        return f"the size resting in a {bucket} price bucket at the start of each {seconds} s"
    return f"the largest size resting in a {bucket} price bucket during {seconds} s"


def _header(view: data.LiveView, age_s: float | None, paused: bool) -> None:
    quote = view.quote
    bid_text, ask_text = (quote.bid_text, quote.ask_text) if quote else (None, None)
    exact = mid_and_spread(bid_text, ask_text)
    cols = st.columns([1.2, 1, 1, 1, 1.6, 0.9, 0.9])  # the spread carries its bps
    with cols[0]:
        stale = view.stale_since_us
        if stale is None:
            st.badge("LIVE", icon=":material/sensors:", color="green")
        else:
            st.badge(f"STALE since {utc(stale)}", icon=":material/warning:", color="orange")
        if view.simulated:
            st.badge("SIMULATED data", icon=":material/science:", color="violet")
        if paused:
            st.badge(f"PAUSED at {utc(view.now_us)}", icon=":material/pause:", color="gray")
    cols[1].metric("Best bid", price(bid_text))
    cols[2].metric("Best ask", price(ask_text))
    if exact is not None:
        mid, spread = exact
        bps = float(spread) / float(mid) * 10_000 if float(mid) else float("nan")
        cols[3].metric("Mid", price(mid))
        cols[4].metric("Spread", f"{price(spread)} · {bps:.2f} bps")
    else:
        cols[3].metric("Mid", "-")
        cols[4].metric("Spread", "-")
    # A trailing ten-second rate would read as "data still flowing" after a stop.
    rate = f"{view.messages_per_s:,.0f}" if stale is None else "-"
    cols[5].metric("Messages/s", rate)
    cols[6].metric("Data age", age(age_s))
    refresh = "paused: zoom and hover freely" if paused else f"refreshed every {REFRESH_S:g} s"
    # On a read replica the data age includes its replay lag: say so.
    replica = f" · read replica, {replica_lag(view.replica)}" if view.replica else ""
    st.caption(
        f"{_label(view.stream)} · window {utc(view.start_us)} to {utc(view.now_us)} · "
        f"{refresh} · all times UTC{replica}"
    )


def _latency_strip(view: data.LiveView, age_s: float | None) -> None:
    """Exchange match -> push -> received -> committed -> shown, p50 / p99; the
    last step is this viewer's own, from the data ages of its recent refreshes."""
    shown: deque[float] = st.session_state.setdefault("shown_ms", deque(maxlen=SHOWN_SAMPLES))
    if age_s is not None:
        shown.append(age_s * 1000)
    ordered = sorted(shown)
    shown_pair = (
        (ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))])
        if ordered
        else None
    )
    steps = [
        ("match → push", view.latency.match_to_push),
        ("push → received", view.latency.push_to_receive),
        ("received → committed", view.latency.receive_to_commit),
        ("received → shown", shown_pair),
    ]
    lines = [_latency_line(name, pair) for name, pair in steps]
    st.markdown(
        "**Latency** (ms, over the window)\n\n| step | p50 | p99 | p99 target |\n"
        "|---|--:|--:|--:|\n" + "\n".join(lines)
    )
    st.caption(
        "match: Bybit's matching engine (cts); push: the message's ts; committed: "
        "in PostgreSQL (collector heartbeats); shown: on this page, for you. Bybit and "
        "the network set the first two; depthwatch the last two: a quiet stream's "
        "messages wait up to 250 ms to be packed together, then a flush commits them, "
        "and this page re-reads every second. Each p99 is marked ok within its target, "
        "over past it."
    )


# The steps depthwatch sets, and the p99 each should stay within (README,
# "Latency"): packing hold (250 ms) + a flush; that + the 1 s refresh and its cache.
LATENCY_TARGETS_MS = {"received → committed": 1_000.0, "received → shown": 2_500.0}


def _latency_line(name: str, pair: tuple[float, float] | None) -> str:
    target = LATENCY_TARGETS_MS.get(name)
    if pair is None:
        return f"| {name} | - | - | {_target(target)} |"
    mark = "" if target is None else (" :green[ok]" if pair[1] <= target else " :orange[over]")
    return f"| {name} | {pair[0]:,.1f} | {pair[1]:,.1f}{mark} | {_target(target)} |"


def _target(target: float | None) -> str:
    return "-" if target is None else f"{target:,.0f}"


def _downloads(stream: Stream, window_min: int) -> None:
    """The window's ticks in Tardis layouts: made on this server when clicked,
    within the same limits as the History page (else the command line)."""
    st.subheader("Download this window")
    st.caption(
        f"The last {window_min} min at the moment you click, Tardis.dev CSV layouts, "
        "microsecond UTC timestamps."
    )
    for column, kind in zip(st.columns(2), ("quotes", "incremental_book_L2"), strict=True):
        with column:
            _offer_window(stream, window_min, kind)


def _offer_window(stream: Stream, window_min: int, kind: str) -> None:
    end = data.now_us()
    start = end - window_min * 60 * SECOND_US
    symbols = (stream.symbol,)

    def estimate() -> planning.Plan:
        return planning.cached_plan(stream.category, symbols, stream.depth, kind, start, end, "csv")

    result = load(estimate)
    if result is None:
        return
    limit = planning.limits()
    too_large = result.error or planning.over_limits(result.rows.rows, result.bytes, limit)
    if too_large is not None:
        requests = planning.export_requests(
            stream.category, symbols, stream.depth, kind, start, end
        )
        st.caption(
            f"{kind}: {result.rows.text} rows, {planning.human_bytes(result.bytes)}: "
            f"over this page's limit ({too_large}). From the command line:"
        )
        st.code(planning.cli_command(requests, "csv"), language="bash", wrap_lines=True)
        return

    def write(out: BinaryIO) -> int:
        return _write_window(stream, window_min, kind, out)

    downloads.offer(
        f"download-{kind}",
        f"{TARDIS_EXCHANGE[stream.category]}_{kind}_{stream.symbol}_{window_min}min.csv",
        "text/csv",
        write,
        limit.bytes * planning.HARD_LIMIT_FACTOR,
        label=f"{kind} CSV",
    )


def _write_window(stream: Stream, window_min: int, kind: str, out: BinaryIO) -> int:
    """The last `window_min` minutes as of now (the click), to `out`."""
    end = data.now_us()
    start = end - window_min * 60 * SECOND_US
    requests = planning.export_requests(
        stream.category, (stream.symbol,), stream.depth, kind, start, end
    )
    return files.write_export(data.engine(), requests, "csv", out, progress_to=None)
