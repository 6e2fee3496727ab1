"""The dashboard's password gate: with DASHBOARD_PASSWORD set, a login form is
all a new session sees until the right password is given.

The check runs first thing in every full run of the page script, before the
navigation exists, so nothing else is drawn and no query is made for a session
that has not logged in; the live pages' fragments check again at every run.

Who a client is (`client_key`): its address as a trusted proxy names it, or
a shared bucket when no configuration vouches for a forwarded header
(app.clients has the rules).

Where a login lives: in this module, keyed by Streamlit's session id, never in
`st.session_state`, which a client can write to with a crafted widget state.
It is bound to the client that logged in (its key and User-Agent): a session
id replayed from another client finds no login. It lasts until Log out, the
session's end or LOGIN_TTL_S.

Failed attempts are counted by `limiter.LoginLimiter`, module-level so that
every session of the server shares it (not in `st.cache_resource`: any browser
can send Streamlit's "clear cache" message).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from depthwatch.app import clients
from depthwatch.app.limiter import Hold, LoginLimiter
from depthwatch.logs import LogThrottle

log = logging.getLogger("depthwatch.app.auth")

PASSWORD_ENV = "DASHBOARD_PASSWORD"
PUBLIC_ENV = "DASHBOARD_PUBLIC"  # "1": serve without a password on purpose
RENDER_ENV = "RENDER"  # Render sets it in every service's environment
PASSWORD_WIDGET_KEY = "login_password"
LOGOUT_KEY = "logout"
LOGIN_TTL_S = 86_400.0
MAX_LOGINS = 10_000

LIMITER = LoginLimiter()
_throttle = LogThrottle(burst=3)


def configured_password() -> str | None:
    """The password, or None when the dashboard is open (unset or empty)."""
    return os.environ.get(PASSWORD_ENV) or None


def refusal() -> str | None:
    """Why the dashboard refuses to serve anything, or None. On Render a
    dashboard without a password is public on the internet: only
    DASHBOARD_PUBLIC=1 says that is meant."""
    on_render = bool(os.environ.get(RENDER_ENV))
    public = os.environ.get(PUBLIC_ENV, "").strip() == "1"
    if on_render and configured_password() is None and not public:
        return (
            f"This dashboard has no password, and it is on the internet: set {PASSWORD_ENV} "
            f"in the web service's environment (the blueprint generates one), or set "
            f"{PUBLIC_ENV}=1 to serve it to everyone on purpose."
        )
    return None


def password_matches(given: str, expected: str) -> bool:
    """Constant-time comparison of digests: compare_digest on the raw strings
    would return early on a length mismatch, telling the password's length."""
    given_digest = hashlib.sha256(given.encode()).digest()
    expected_digest = hashlib.sha256(expected.encode()).digest()
    return hmac.compare_digest(given_digest, expected_digest)


# ---- who the client is


def client_key() -> str:
    address = st.context.ip_address
    # A string or None by its contract; anything else (a test harness's stub)
    # counts as unknown.
    if not isinstance(address, str):
        address = None
    return clients.client_key(address, st.context.headers, os.environ)


def _agent_digest() -> bytes:
    agent = st.context.headers.get("User-Agent", "")
    return hashlib.sha256(agent.encode("utf-8", "replace")).digest()


# ---- logins, by session


@dataclass(frozen=True)
class _Login:
    client: str
    agent: bytes
    at: float


_logins: dict[str, _Login] = {}
_logins_lock = threading.Lock()


def _session_id() -> str | None:
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else None


def logged_in() -> bool:
    """Whether this session logged in, from this client, less than
    LOGIN_TTL_S ago (True when no password is set)."""
    if configured_password() is None:
        return refusal() is None
    session = _session_id()
    if session is None:
        return False
    with _logins_lock:
        login = _logins.get(session)
    if login is None:
        return False
    if time.monotonic() - login.at > LOGIN_TTL_S:
        _forget(session)
        return False
    if login.client != client_key() or not hmac.compare_digest(login.agent, _agent_digest()):
        _forget(session)
        _throttle.log(log, logging.WARNING, "login: a session resumed by another client")
        return False
    return True


def _remember(session: str) -> None:
    now = time.monotonic()
    with _logins_lock:
        if len(_logins) >= MAX_LOGINS:
            for stale in [s for s, v in _logins.items() if now - v.at > LOGIN_TTL_S]:
                del _logins[stale]
            if len(_logins) >= MAX_LOGINS:
                del _logins[min(_logins, key=lambda s: _logins[s].at)]
        _logins[session] = _Login(client_key(), _agent_digest(), now)


def _forget(session: str) -> None:
    with _logins_lock:
        _logins.pop(session, None)


# ---- the form


def require_login() -> str | None:
    """None when the session may not see the dashboard: the login form (and
    nothing else) is drawn, the caller draws nothing more. Otherwise the
    dashboard may be drawn: "" normally, or, in the run that just logged in,
    the URL's page path, for the caller to land on (the form's rerun names no
    page, so navigation would show the default one: a deep link would be lost).
    A right password lets this same run go on, the form cleared."""
    reason = refusal()
    if reason is not None:
        st.title("depthwatch")
        st.error(reason, icon=":material/lock:")
        return None
    expected = configured_password()
    if expected is None or logged_in():
        return ""
    client = client_key()
    placeholder = st.empty()
    with placeholder.container():
        st.title("depthwatch")
        with st.form("login"):
            given = st.text_input("Password", type="password", key=PASSWORD_WIDGET_KEY)
            submitted = st.form_submit_button("Log in")
        if submitted and _attempt(given, expected, client):
            placeholder.empty()
            return _url_page() or ""
        if not submitted:
            _explain(LIMITER.hold(client))
    return None


def _url_page() -> str | None:
    """The last segment of the browser's URL path (`history` of /history?...)."""
    url = st.context.url
    if not isinstance(url, str):
        return None
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] or None


def _attempt(given: str, expected: str, client: str) -> bool:
    held = LIMITER.hold(client)
    if held is not None:
        _explain(held)  # not even checked: a lock-out stops guessing
        return False
    session = _session_id()
    if password_matches(given, expected) and session is not None:
        LIMITER.succeeded(client)
        _remember(session)
        return True
    lockout = LIMITER.failed(client)
    if lockout:
        _throttle.log(log, logging.WARNING, "login: %s locked out for %d s", client, lockout)
        st.error(f"Wrong password. Too many failed attempts: try again in {math.ceil(lockout)} s.")
    else:
        st.error("Wrong password.")
    return False


def _explain(held: Hold | None) -> None:
    if held is None:
        return
    wait = math.ceil(held.seconds)
    if held.scope == "client":
        st.error(f"Too many failed attempts: try again in {wait} s.")
    else:
        st.error(
            "Too many failed logins on this dashboard, from many addresses: logins from "
            f"new addresses resume in {wait} s (addresses that logged in before are not held)."
        )


def logout_button() -> None:
    """In the sidebar, when a password gates the dashboard."""
    if configured_password() is None:
        return
    if st.sidebar.button("Log out", key=LOGOUT_KEY):
        session = _session_id()
        if session is not None:
            _forget(session)
        st.rerun()
