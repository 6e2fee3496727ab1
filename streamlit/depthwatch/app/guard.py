"""What stands between the pages and the browser.

Every page and every live fragment runs inside `guarded`: an error a user (or
a crafted message) can cause is a plain message on the page, never a stack
trace with paths and source lines, and it is logged as one line, the same
error at most a few times a minute however often it repeats. A live fragment
first checks that its session is still logged in; if not, it reruns the whole
app, which shows the login form and no data.

Errors outside any page (a widget's callback) reach `on_script_error`, which
streamlit/app.py hands to Streamlit: the same message, the same line.
`client.showErrorDetails = "none"` (.streamlit/config.toml) is the last net.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable
from typing import ParamSpec

import streamlit as st

from depthwatch.app import auth
from depthwatch.logs import LogThrottle, first_line

log = logging.getLogger("depthwatch.app")

P = ParamSpec("P")
SHOWN = (
    "Something went wrong drawing this part of the page; it has been logged. "
    "Try again, or reload the page."
)
MAX_KINDS = 1_000

_throttles: dict[tuple[str, str, int], LogThrottle] = {}


def report(error: BaseException, where: str) -> None:
    """Log `error` as one throttled line (its traceback at DEBUG only)."""
    frames = traceback.extract_tb(error.__traceback__)
    place = (frames[-1].filename, frames[-1].lineno or 0) if frames else ("?", 0)
    key = (type(error).__name__, *place)
    throttle = _throttles.get(key)
    if throttle is None:
        if len(_throttles) >= MAX_KINDS:
            _throttles.clear()
        throttle = _throttles[key] = LogThrottle(burst=3)
    throttle.log(
        log,
        logging.ERROR,
        "%s: %s: %s (at %s:%d)",
        where,
        type(error).__name__,
        first_line(error)[:300],
        *place,
    )
    log.debug("%s failed", where, exc_info=error)


def show_error(error: BaseException, where: str) -> None:
    report(error, where)
    st.error(SHOWN, icon=":material/error:")


def guarded(render: Callable[P, None]) -> Callable[P, None]:
    """`render` with any error turned into `show_error` (Streamlit's own
    control flow, st.rerun and st.stop, passes: it is not an Exception)."""

    @functools.wraps(render)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            render(*args, **kwargs)
        except Exception as error:
            show_error(error, getattr(render, "__qualname__", "page"))

    return run


def live_fragment(render: Callable[P, None], run_every: float | None) -> Callable[P, None]:
    """`render` as a fragment rerun every `run_every` seconds (None: only with
    the page), guarded, and only for a session still logged in."""

    @functools.wraps(render)
    def body(*args: P.args, **kwargs: P.kwargs) -> None:
        if not auth.logged_in():
            st.rerun()  # the whole app: the login form, and no data
        guarded(render)(*args, **kwargs)

    return st.fragment(run_every=run_every)(body)


def on_script_error(error: Exception) -> bool:
    """Streamlit's hook for errors no page caught (a widget's callback), which
    Streamlit has logged already (as one line: logs.ServerLogGuard): the same
    message as any other; True keeps Streamlit's trace off the page."""
    st.error(SHOWN, icon=":material/error:")
    return True
