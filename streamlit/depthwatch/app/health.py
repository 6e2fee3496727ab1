"""The Health page: collectors, feed problems per stream, what the database holds."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from depthwatch.app import data
from depthwatch.app.common import age, load, replica_lag, utc
from depthwatch.app.guard import live_fragment
from depthwatch.clock import DAY_US, utc_day
from depthwatch.feed.registry import exchange_of
from depthwatch.records import HEARTBEATS_MISSED_FOR_STALE, depth_label

REFRESH_S = 5.0
MB = 1024 * 1024


def render() -> None:
    st.title("Health")
    st.caption(
        f"Collectors heard from in the last 24 h, feed events per stream over 24 h, "
        f"what the database holds and what the archive holds. Refreshed every "
        f"{REFRESH_S:g} s; times in UTC."
    )
    live_fragment(health_panel, REFRESH_S)()


def health_panel() -> None:
    report = load(data.health)
    if report is None:
        return
    st.subheader("Collectors")
    if report.collectors.empty:
        st.info(
            "No collector has reported in the last 24 h. Start one with "
            "`depthwatch up` or `depthwatch collect`.",
            icon=":material/info:",
        )
    else:
        frame = collector_frame(report)
        # Two tables: the figures fit the page; what each records wraps below.
        st.dataframe(frame.drop(columns=["endpoint", "streams"]), hide_index=True, key="collectors")
        st.dataframe(
            frame[["host", "pid", "endpoint", "streams"]],
            hide_index=True,
            key="collector-streams",
            column_config={"streams": st.column_config.TextColumn(width="large")},
        )
    st.subheader("Feed events per stream, last 24 h")
    if report.events.empty:
        st.caption("No gaps, reconnects or anomalies in the last 24 h.")
    else:
        st.dataframe(report.events, hide_index=True, key="events")
    st.subheader("Database")
    if report.replica is not None:
        st.caption(
            f"This database is a read replica (a hot standby), {replica_lag(report.replica)}: "
            "every page shows the primary's data that much later."
        )
    left, right = st.columns([2, 1])
    sizes = report.sizes.assign(MB=report.sizes["bytes"] / MB).drop(columns="bytes")
    left.dataframe(
        sizes,
        hide_index=True,
        key="sizes",
        column_config={"MB": st.column_config.NumberColumn(format="%.1f")},
    )
    right.metric("Total size", f"{report.sizes['bytes'].sum() / MB:,.1f} MB")
    right.metric("Oldest data", utc(report.oldest_us, with_date=True))
    right.metric("Retention in force", report.retention)
    archive_section(report)


def archive_section(report: data.HealthReport) -> None:
    st.subheader("Archive")
    runs = report.archive_runs
    if runs.empty:
        st.caption(
            "Nothing archived yet: `depthwatch archive` writes finished days as Parquet "
            "files (README, Archive)."
        )
        return
    streams = report.archive
    st.dataframe(
        pd.DataFrame(
            {
                "stream": [
                    f"{sym} · {cat} · depth {depth_label(int(depth))}"
                    for cat, sym, depth in zip(
                        streams["category"], streams["symbol"], streams["depth"], strict=True
                    )
                ],
                "last archived day": [
                    "-" if pd.isna(d) else utc_day(int(d) * DAY_US) for d in streams["last_day"]
                ],
                "days archived": streams["days_archived"],
                "days waiting": streams["waiting"],
                "archive MB": (streams["bytes"] / MB).round(1),
            }
        ),
        hide_index=True,
        key="archive",
    )
    last = runs.iloc[0]
    ended = "running" if pd.isna(last["ended_us"]) else utc(int(last["ended_us"]), with_date=True)
    st.caption(
        f"Last run: {ended}, to {last['archive_url']}: {int(last['days_archived'])} stream-days "
        f"written, {int(last['days_dropped'])} days dropped from the database."
    )
    if last["kept"]:
        st.warning(f"Kept in the database past --hot-days: {last['kept']}", icon=":material/info:")
    failed = runs[runs["failure"].notna()]
    if not failed.empty:
        f = failed.iloc[-1]
        st.error(
            f"Last failure ({utc(int(f['started_us']), with_date=True)}): {f['failure']}",
            icon=":material/error:",
        )


def _exchanges(streams: str) -> str:
    """The exchanges of a collector's streams ("linear:BTCUSDT@50, ...")."""
    categories = (key.strip().split(":")[0] for key in streams.split(",") if ":" in key)
    return ", ".join(dict.fromkeys(exchange_of(c) for c in categories)) or "-"


def collector_frame(report: data.HealthReport) -> pd.DataFrame:
    c = report.collectors
    silent_s = (report.now_us - c["local_us"]) / 1e6
    alive = silent_s <= c["interval_s"] * HEARTBEATS_MISSED_FOR_STALE
    return pd.DataFrame(
        {
            "status": ["alive" if a else "SILENT" for a in alive],
            "exchange": [_exchanges(str(streams)) for streams in c["streams"]],
            "host": c["host"],
            "pid": c["pid"],
            "version": c["version"],
            "started": [utc(int(v), with_date=True) for v in c["started_us"]],
            "last heartbeat": [f"{age(s)} ago" for s in silent_s],
            "msgs/s": c["messages_per_s"].round(0),
            "pending rows": c["pending_rows"],
            "flush failures": c["flush_failures"],
            # None until the collector's first commit: shown blank, not a crash.
            "commit p99 (ms, 24 h worst)": c["commit_p99_24h"].astype(float).round(1),
            "books valid": [f"{v}/{t}" for v, t in zip(c["valid"], c["total"], strict=True)],
            "data": ["SIMULATED" if s else "exchange" for s in c["simulated"]],
            "endpoint": c["endpoint"],
            "streams": c["streams"],
        }
    )
