"""The dashboard: four pages behind one page script (`streamlit/dashboard.py`)."""

from __future__ import annotations

import gc

import streamlit as st

from depthwatch import logs
from depthwatch.app import auth, compare, health, history, live, overview
from depthwatch.app.guard import guarded

METRIC_FONT = "1.45rem"

# Python's cyclic collector walks every tracked object in a full collection:
# with Streamlit, pandas and plotly loaded, a ~60 ms pause in about one Live
# read in ten. What is alive once the pages are imported (this module loads
# once per server process) lives as long as the process: frozen out of the
# collector's reach. Measured on a 60-minute Live read: p95 171-185 -> 125-139 ms.
gc.collect()
gc.freeze()


def main() -> None:
    st.set_page_config(page_title="depthwatch", page_icon="📈", layout="wide")
    logs.setup_dashboard_logging()
    logs.guard_server_loggers()
    guarded(_app)()


def _app() -> None:
    # Before anything else: a session that has not logged in (when a password
    # is set) gets the login form only, no page and no query.
    landing = auth.require_login()
    if landing is None:
        return
    # Prices need eight or more digits in a header of seven metrics: Streamlit's
    # default metric size truncates them.
    st.html(f"<style>[data-testid='stMetricValue'] {{font-size: {METRIC_FONT};}}</style>")
    pages = [
        st.Page(overview.render, title="Overview", url_path="overview", default=True),
        st.Page(live.render, title="Live", url_path="live"),
        st.Page(compare.render, title="Compare", url_path="compare"),
        st.Page(health.render, title="Health", url_path="health"),
        st.Page(history.render, title="History", url_path="history"),
    ]
    navigation = st.navigation(pages)
    wanted = [p for p in pages if landing and p.url_path == landing and p is not navigation]
    if wanted:
        # Just logged in from a deep link: that page, with the URL's parameters.
        st.switch_page(wanted[0], query_params=st.query_params.to_dict())
    auth.logout_button()
    guarded(navigation.run)()
