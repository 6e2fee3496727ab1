"""The dashboard's server: `streamlit run streamlit/app.py`.

Render's web service runs exactly this (with `--server.port $PORT --server.address
0.0.0.0`); `depthwatch up` and `depthwatch dashboard` run it too. It is an
`st.App`: Streamlit serves the pages of streamlit/dashboard.py, and
depthwatch.app.server adds the download route, hides the metrics endpoint and
keeps tracebacks and session ids out of the logs."""

import sys
from pathlib import Path

# Running from a clone without `pip install`: make the package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import streamlit as st

from depthwatch.app import guard, server

app = st.App(
    "dashboard.py",
    routes=server.routes(),
    middleware=server.middleware(),
    lifespan=server.lifespan,
    on_script_error=guard.on_script_error,
)
