"""The dashboard: four pages behind one entry script (`streamlit/app.py`)."""

from __future__ import annotations

import streamlit as st

from depthwatch import logs
from depthwatch.app import auth, health, history, live, overview

METRIC_FONT = "1.45rem"


def main() -> None:
    st.set_page_config(page_title="depthwatch", page_icon="📈", layout="wide")
    logs.setup_dashboard_logging()
    # Before anything else: a session that has not logged in (when a password
    # is set) gets the login form only, no page and no query.
    if not auth.require_login():
        return
    # Prices need eight or more digits in a header of seven metrics: Streamlit's
    # default metric size truncates them.
    st.html(f"<style>[data-testid='stMetricValue'] {{font-size: {METRIC_FONT};}}</style>")
    pages = [
        st.Page(overview.render, title="Overview", url_path="overview", default=True),
        st.Page(live.render, title="Live", url_path="live"),
        st.Page(health.render, title="Health", url_path="health"),
        st.Page(history.render, title="History", url_path="history"),
    ]
    navigation = st.navigation(pages)
    auth.logout_button()
    navigation.run()
