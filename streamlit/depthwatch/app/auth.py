"""The dashboard's password gate: with DASHBOARD_PASSWORD set, a login form is
all a new session sees until the right password is given; without it the
dashboard is open, as before.

The check runs first thing in every full run of the entry script, before the
navigation exists, so nothing else is drawn and no query is made for a session
that has not logged in. The live pages' one-second refreshes are fragment runs
of a page that was only ever built for a logged-in session; the login lives in
`st.session_state`, which they keep.

Failed attempts are counted per client (the connection's IP address, which
Streamlit gives as None for localhost: then one shared bucket) in a module-level
limiter shared by every session of the server process. Not in
`st.cache_resource`: any browser can send Streamlit's "clear cache" message,
which would wipe the count. Behind a proxy (Render) every client shows the
proxy's address, so the lock-out is shared by all: an attacker then also locks
out real users for a while, but can never escape the limit by faking a header.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import streamlit as st

PASSWORD_ENV = "DASHBOARD_PASSWORD"
SESSION_KEY = "depthwatch_logged_in"
PASSWORD_WIDGET_KEY = "login_password"
LOGOUT_KEY = "logout"
SHARED_CLIENT = "shared"  # every client whose address Streamlit does not give
MAX_FAILURES = 5  # within FAILURE_WINDOW_S, then a lock-out
FAILURE_WINDOW_S = 60.0
FIRST_LOCKOUT_S = 30.0  # doubled at each lock-out in a row
MAX_LOCKOUT_S = 900.0
MAX_TRACKED_CLIENTS = 10_000  # beyond this, clients with nothing pending are forgotten


def configured_password() -> str | None:
    """The password, or None when the dashboard is open (unset or empty)."""
    return os.environ.get(PASSWORD_ENV) or None


def password_matches(given: str, expected: str) -> bool:
    """Constant-time comparison of digests: compare_digest on the raw strings
    would return early on a length mismatch, telling the password's length."""
    given_digest = hashlib.sha256(given.encode()).digest()
    expected_digest = hashlib.sha256(expected.encode()).digest()
    return hmac.compare_digest(given_digest, expected_digest)


@dataclass
class _ClientRecord:
    failures: deque[float] = field(default_factory=deque)  # times within the window
    lockouts: int = 0  # lock-outs in a row, for the growing delay
    locked_until: float = 0.0


class LoginLimiter:
    """After `max_failures` failures within `window_s`, a client is locked out
    for `first_lockout_s`, doubling with each lock-out in a row up to
    `max_lockout_s`. A success, or a quiet `max_lockout_s` after a lock-out,
    starts the client afresh. Thread-safe: sessions run in their own threads."""

    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window_s: float = FAILURE_WINDOW_S,
        first_lockout_s: float = FIRST_LOCKOUT_S,
        max_lockout_s: float = MAX_LOCKOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.first_lockout_s = first_lockout_s
        self.max_lockout_s = max_lockout_s
        self.clock = clock
        self._clients: dict[str, _ClientRecord] = {}
        self._lock = threading.Lock()

    def wait_s(self, client: str) -> float:
        """Seconds until `client` may try again (0: now)."""
        with self._lock:
            record = self._clients.get(client)
            return max(0.0, record.locked_until - self.clock()) if record else 0.0

    def failed(self, client: str) -> float:
        """Count a failed attempt; returns the lock-out it caused in seconds (0: none)."""
        now = self.clock()
        with self._lock:
            record = self._clients.get(client)
            if record is None:
                self._forget_idle(now)
                record = self._clients[client] = _ClientRecord()
            if record.lockouts and now - record.locked_until > self.max_lockout_s:
                record.lockouts = 0  # behaved for a long while: start afresh
            record.failures.append(now)
            while record.failures and now - record.failures[0] > self.window_s:
                record.failures.popleft()
            if len(record.failures) < self.max_failures:
                return 0.0
            lockout = min(self.max_lockout_s, self.first_lockout_s * 2**record.lockouts)
            record.lockouts += 1
            record.locked_until = now + lockout
            record.failures.clear()
            return lockout

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._clients.pop(client, None)

    def _forget_idle(self, now: float) -> None:
        if len(self._clients) < MAX_TRACKED_CLIENTS:
            return
        for client, record in list(self._clients.items()):
            recent = record.failures and now - record.failures[-1] <= self.window_s
            if not recent and now - record.locked_until > self.max_lockout_s:
                del self._clients[client]


LIMITER = LoginLimiter()


def client_key() -> str:
    address = st.context.ip_address
    # A string or None by its contract; anything else (a test harness's stub)
    # counts as unknown.
    return address if isinstance(address, str) and address else SHARED_CLIENT


def require_login() -> bool:
    """True when the session may see the dashboard. Otherwise draws the login
    form (and nothing else) and returns False: the caller draws nothing more."""
    expected = configured_password()
    if expected is None or st.session_state.get(SESSION_KEY):
        return True
    st.title("depthwatch")
    client = client_key()
    with st.form("login"):
        given = st.text_input("Password", type="password", key=PASSWORD_WIDGET_KEY)
        submitted = st.form_submit_button("Log in")
    if submitted:
        _attempt(given, expected, client)
    else:
        _explain_lockout(client)
    return False


def _attempt(given: str, expected: str, client: str) -> None:
    limiter = LIMITER
    if limiter.wait_s(client) > 0:
        _explain_lockout(client)  # not even checked: a lock-out stops guessing
        return
    if password_matches(given, expected):
        limiter.succeeded(client)
        st.session_state[SESSION_KEY] = True
        st.rerun()
    lockout = limiter.failed(client)
    if lockout:
        st.error(f"Wrong password. Too many failed attempts: try again in {math.ceil(lockout)} s.")
    else:
        st.error("Wrong password.")


def _explain_lockout(client: str) -> None:
    wait = LIMITER.wait_s(client)
    if wait > 0:
        st.error(f"Too many failed attempts: try again in {math.ceil(wait)} s.")


def logout_button() -> None:
    """In the sidebar, when a password gates the dashboard."""
    if configured_password() is None:
        return
    if st.sidebar.button("Log out", key=LOGOUT_KEY):
        st.session_state.pop(SESSION_KEY, None)
        st.rerun()
