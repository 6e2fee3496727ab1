"""What the dashboard's server adds around Streamlit (streamlit/app.py builds
the `st.App` from these): the download route, no public metrics, the error
hook, and the log guard from the first request on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from depthwatch import logs
from depthwatch.app import downloads

# Streamlit serves counts of sessions, reruns and cache sizes here to anyone;
# nothing on the dashboard reads them.
METRICS_PATH = "/_stcore/metrics"


class NoMetrics:
    """404 for Streamlit's metrics endpoint (any base path, any method)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/").endswith(METRICS_PATH):
            await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def routes() -> list[BaseRoute]:
    return [Route(downloads.ROUTE, downloads.serve, methods=["GET"])]


def middleware() -> list[Middleware]:
    return [Middleware(NoMetrics)]


@asynccontextmanager
async def lifespan(_app: Any) -> AsyncIterator[None]:
    logs.guard_server_loggers()
    try:
        yield
    finally:
        downloads.STORE.close()
