"""The Compare page: one asset across venues (BTC on Bybit linear, Binance
futures, Hyperliquid, ...), re-read every second like Live: each venue's
mid, spread, basis against the reference venue and data age, their mids and
spreads on one time axis, the basis in bps, and the depth within ±N bps of
each venue's own mid, side by side. The URL holds asset, window and range."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from depthwatch.app import compare_data, compare_figures, data
from depthwatch.app.common import (
    age,
    int_param,
    load,
    recorded_streams,
    shown_param,
    utc,
    window_control,
)
from depthwatch.app.guard import live_fragment
from depthwatch.records import depth_label

REFRESH_S = 1.0


def render() -> None:
    st.title("Compare venues")
    streams = recorded_streams()
    if streams is None:
        return
    assets = compare_data.assets(streams)
    if not assets:
        st.info(
            "No asset is recorded on two venues yet. Record one on several, e.g. "
            "`depthwatch up --source sim --streams bybit:linear:BTCUSDT,"
            "binance-futures:BTCUSDT,hyperliquid:BTC` (README, Compare venues).",
            icon=":material/compare_arrows:",
        )
        return
    asset, window_min, range_bps, paused = _controls(list(assets))
    panel = live_fragment(compare_panel, None if paused else REFRESH_S)
    panel(asset, window_min, range_bps)


def _controls(assets: list[str]) -> tuple[str, int, int, bool]:
    wanted = st.query_params.get("asset")
    if wanted is not None and wanted not in assets:
        st.warning(
            f"URL parameter `asset` is {shown_param(wanted)}: recorded on several venues are "
            f"{', '.join(assets)}. Showing {assets[0]}.",
            icon=":material/link_off:",
        )
    index = assets.index(wanted) if wanted in assets else 0
    window_default = int_param("window", data.DEFAULT_WINDOW_MIN, data.WINDOWS_MIN)
    range_default = int_param("range", compare_data.DEFAULT_RANGE_BPS, compare_data.RANGES_BPS)
    # Sized so the window control shows its choices whole from 1280 px on; the
    # range control has a row of its own.
    left, middle, pause = st.columns([1, 2.6, 0.8], vertical_alignment="bottom")
    asset = left.selectbox("Asset", assets, index=index, key="asset")
    window_min = window_control(middle, window_default)
    range_bps = (
        st.segmented_control(
            "Depth within",
            compare_data.RANGES_BPS,
            default=range_default,
            key="range",
            format_func=lambda bps: f"±{bps} bps",
        )
        or compare_data.DEFAULT_RANGE_BPS
    )
    st.query_params.update(asset=asset, window=str(window_min), range=str(range_bps))
    paused = pause.toggle("Pause", key="paused", help="Stop refreshing to zoom and hover")
    return asset, int(window_min), int(range_bps), paused


def venue_name(view: compare_data.VenueView) -> str:
    """'bybit linear', 'binance-futures', 'hyperliquid': the exchange, and the
    market where the category does not already name it."""
    category = view.stream.category
    return category if category.startswith(view.exchange) else f"{view.exchange} {category}"


def compare_panel(asset: str, window_min: int, range_bps: int) -> None:
    view = load(lambda: compare_data.compare_view(asset, window_min, range_bps))
    if view is None:
        return
    shown_us = data.now_us()
    names = [venue_name(v) for v in view.venues]
    if view.simulated:
        st.badge("SIMULATED data", icon=":material/science:", color="violet")
    # A static table: a handful of rows, each value as the page words it.
    st.table(_table(view, names, shown_us).set_index("venue"))
    st.caption(
        f"{asset} on {len(names)} venues, the last {window_min} min; basis against "
        f"{names[0]}. Data age: how old each venue's newest top of book is now."
    )
    x_range = (view.start_us / 1000, view.now_us / 1000)
    key = f"{asset}/{window_min}/{range_bps}"
    tops = [v.top for v in view.venues]
    st.plotly_chart(compare_figures.mids_figure(names, tops, x_range, key), key="mids")
    left, right = st.columns(2)
    with left:
        st.plotly_chart(compare_figures.spreads_figure(names, tops, x_range, key), key="spreads")
    with right:
        st.plotly_chart(compare_figures.basis_figure(names, tops, x_range, key), key="basis")
    bids = [v.bids.size if v.bids else None for v in view.venues]
    asks = [v.asks.size if v.asks else None for v in view.venues]
    lower = [_lower_bound(v) for v in view.venues]
    depth = compare_figures.depth_figure(names, bids, asks, range_bps, lower, key)
    st.plotly_chart(depth, key="depth")
    st.caption(
        f"Size resting within ±{range_bps} bps of each venue's own mid, in {asset}: from a "
        "whole book's newest profile, else its newest top-N snapshot. (≥): that book is "
        "recorded less deep than the range, so its figure is a lower bound."
    )


def _lower_bound(view: compare_data.VenueView) -> bool:
    return any(side is not None and not side.reaches for side in (view.bids, view.asks))


def _table(view: compare_data.CompareView, names: list[str], shown_us: int) -> pd.DataFrame:
    reference = view.venues[0].mid
    rows = []
    for name, venue in zip(names, view.venues, strict=True):
        mid, quote = venue.mid, venue.quote
        stale = data.stale_since(venue.heartbeat, quote, view.now_us)
        rows.append(
            {
                "venue": name,
                "stream": f"{venue.stream.symbol} · depth {depth_label(venue.stream.depth)}",
                "status": "LIVE" if stale is None else f"STALE since {utc(stale)}",
                "mid": _number(mid, ",.10g"),
                "spread (bps)": _number(_spread_bps(venue), ".3f"),
                "basis (bps)": _number(
                    (mid / reference - 1) * 10_000 if mid and reference else None, "+.3f"
                ),
                f"bids ±{view.range_bps} bps": _depth(venue.bids),
                f"asks ±{view.range_bps} bps": _depth(venue.asks),
                "data age": age(max(0.0, (shown_us - quote.local_us) / 1e6)) if quote else "-",
            }
        )
    return pd.DataFrame(rows)


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _spread_bps(venue: compare_data.VenueView) -> float | None:
    quote, mid = venue.quote, venue.mid
    if quote is None or mid is None or quote.bid is None or quote.ask is None:
        return None
    return (quote.ask - quote.bid) / mid * 10_000


def _depth(side: compare_data.SideDepth | None) -> str:
    if side is None:
        return "-"
    return f"{'≥ ' if not side.reaches else ''}{side.size:,.6g}"
