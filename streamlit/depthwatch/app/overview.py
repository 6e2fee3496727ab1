"""The Overview page (landing): one row per recorded stream, refreshed every second."""

from __future__ import annotations

from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from depthwatch.app import data
from depthwatch.app.common import REAL_DATA_HINT, START_HINT, age, load, mid_and_spread, price, utc
from depthwatch.app.guard import live_fragment
from depthwatch.feed.registry import exchange_of
from depthwatch.records import depth_label

WINDOW_MIN = 10
REFRESH_S = 1.0


def render() -> None:
    st.title("Recorded streams")
    st.caption(
        f"Every stream depthwatch records, with the last {WINDOW_MIN} minutes' mid price. "
        "Refreshed every second; times in UTC. Open a stream to watch its book live."
    )
    live_fragment(overview_table, REFRESH_S)()


def overview_table() -> None:
    summaries = load(lambda: data.overview(WINDOW_MIN))
    if summaries is None:
        return
    if not summaries:
        st.info(START_HINT, icon=":material/info:")
        return
    st.dataframe(
        summary_frame(summaries),
        hide_index=True,
        key="overview",
        column_config={
            "open": st.column_config.LinkColumn("", display_text="open live"),
            "mid": st.column_config.LineChartColumn(f"mid, last {WINDOW_MIN} min"),
            "spread (bps)": st.column_config.NumberColumn(format="%.2f"),
            "msgs/s": st.column_config.NumberColumn(format="%.0f"),
        },
    )
    newest = max(s.now_us for s in summaries)
    st.caption(f"As of {utc(newest)}. Gaps and resyncs count the last 24 h.")
    if all(s.heartbeat is not None and s.heartbeat.simulated for s in summaries):
        st.info(REAL_DATA_HINT, icon=":material/lightbulb:")


def summary_frame(summaries: list[data.StreamSummary]) -> pd.DataFrame:
    rows = []
    for s in summaries:
        quote = s.quote
        exact = mid_and_spread(quote.bid_text, quote.ask_text) if quote else None
        mid, spread_bps = "-", None
        if exact is not None and float(exact[0]):
            mid, spread_bps = price(exact[0]), float(exact[1]) / float(exact[0]) * 10_000
        stale = data.stale_since(s.heartbeat, quote, s.now_us)
        status = "LIVE" if stale is None else f"STALE since {utc(stale)}"
        if s.heartbeat is not None and s.heartbeat.simulated:
            status += " · SIMULATED"
        link = "./live?" + urlencode(
            {
                "category": s.stream.category,
                "symbol": s.stream.symbol,
                "depth": depth_label(s.stream.depth),
            }
        )
        rows.append(
            {
                "exchange": exchange_of(s.stream.category),
                "symbol": s.stream.symbol,
                "category": s.stream.category,
                "depth": depth_label(s.stream.depth),
                "status": status,
                "last mid": mid,
                "spread (bps)": spread_bps,
                "msgs/s": s.messages_per_s,
                "data age": age(max(0.0, (s.now_us - quote.local_us) / 1e6))
                if quote
                else "no data",
                "gaps 24h": s.gaps_24h,
                "resyncs 24h": s.resyncs_24h,
                "mid": s.mids,
                "open": link,
            }
        )
    return pd.DataFrame(rows)
