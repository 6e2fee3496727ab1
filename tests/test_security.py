"""Security: the dashboard's password gate and its rate limit, the read-only
database role, and no secret in any log, page or error message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from depthwatch.app import auth
from depthwatch.app.auth import LoginLimiter, password_matches

ROOT = Path(__file__).resolve().parents[1]
ENTRY = str(ROOT / "streamlit" / "app.py")
DASHBOARD_SECRET = "Gate-Qv7Zr9wXk2"  # distinctive: greppable in any output
DOWN_URL = "postgresql://watcher:DbPw-Hn4Lm8Tq3@127.0.0.1:9/nowhere"
DB_SECRET = "DbPw-Hn4Lm8Tq3"


class FakeClock:
    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


# ---- the limiter (pure logic)


def test_five_failures_in_a_minute_lock_a_client_out_for_longer_each_time():
    clock = FakeClock()
    limiter = LoginLimiter(clock=clock)
    assert [limiter.failed("a") for _ in range(4)] == [0, 0, 0, 0]
    assert limiter.wait_s("a") == 0
    assert limiter.failed("a") == 30  # the fifth within the minute
    assert limiter.wait_s("a") == 30 and limiter.wait_s("b") == 0  # per client
    clock.now += 30
    assert limiter.wait_s("a") == 0
    assert [limiter.failed("a") for _ in range(5)][-1] == 60  # growing
    clock.now += 60
    assert [limiter.failed("a") for _ in range(5)][-1] == 120
    for _ in range(10):  # capped
        clock.now += 1_000
        lockout = [limiter.failed("a") for _ in range(5)][-1]
    assert lockout == 900


def test_failures_spread_over_more_than_a_minute_never_lock_out():
    clock = FakeClock()
    limiter = LoginLimiter(clock=clock)
    for _ in range(20):
        assert limiter.failed("a") == 0
        clock.now += 15.1  # four in any minute
    assert limiter.wait_s("a") == 0


def test_a_success_or_a_long_quiet_starts_a_client_afresh():
    clock = FakeClock()
    limiter = LoginLimiter(clock=clock)
    for _ in range(5):
        limiter.failed("a")
    clock.now += 30
    limiter.succeeded("a")
    assert [limiter.failed("a") for _ in range(5)][-1] == 30  # not 60
    clock.now += 30 + 901  # quiet for longer than the longest lock-out
    assert [limiter.failed("a") for _ in range(5)][-1] == 30


def test_passwords_compare_by_digest():
    assert password_matches("correct horse", "correct horse")
    assert not password_matches("correct hors", "correct horse")
    assert not password_matches("", "x")


# ---- the gate in the app (Streamlit's AppTest, the real entry script)


@pytest.fixture
def gated(monkeypatch) -> Iterator[FakeClock]:
    """A dashboard with a password whose pages would hit a dead database; a
    fresh limiter on a fake clock (it is module-level, shared by sessions)."""
    clock = FakeClock()
    monkeypatch.setenv("DASHBOARD_PASSWORD", DASHBOARD_SECRET)
    monkeypatch.setenv("DATABASE_URL", DOWN_URL)
    monkeypatch.delenv("DASHBOARD_DATABASE_URL", raising=False)
    monkeypatch.setattr(auth, "LIMITER", LoginLimiter(clock=clock))
    st.cache_resource.clear()
    yield clock
    st.cache_resource.clear()


def app_texts(at: AppTest) -> str:
    """Every text the page shows (and the values of its widgets)."""
    parts: list[object] = []
    for kind in ("title", "markdown", "caption", "error", "info", "warning", "success"):
        parts += [element.value for element in at.get(kind)]
    parts += [m.label for m in at.metric] + [m.value for m in at.metric]
    parts += [t.label for t in at.text_input] + [b.label for b in at.button]
    parts += [str(d.value) for d in at.dataframe]
    return "\n".join(str(p) for p in parts)


def log_in(at: AppTest, password: str) -> AppTest:
    at.text_input(key=auth.PASSWORD_WIDGET_KEY).input(password)
    return at.button[0].click().run(timeout=30)


def test_nothing_but_the_login_form_before_login(gated):
    at = AppTest.from_file(ENTRY).run(timeout=30)
    assert not at.exception
    assert [t.value for t in at.title] == ["depthwatch"]
    assert len(at.text_input) == 1 and at.text_input[0].label == "Password"
    assert [b.label for b in at.button] == ["Log in"]
    # No page ran: no data read (it would show the dead database's banner), no
    # chart, no table, no navigation.
    assert not at.error and not at.dataframe and not at.metric
    assert not at.get("plotly_chart") and not at.sidebar.button
    assert "Database unreachable" not in app_texts(at)


def test_a_wrong_password_is_refused_and_counted(gated):
    at = AppTest.from_file(ENTRY).run(timeout=30)
    log_in(at, "guess")
    assert not at.exception
    assert [e.value for e in at.error] == ["Wrong password."]
    assert auth.SESSION_KEY not in at.session_state
    assert "Recorded streams" not in app_texts(at)
    # The app counted it: four more failures make five, a lock-out.
    assert [auth.LIMITER.failed(auth.SHARED_CLIENT) for _ in range(4)] == [0, 0, 0, 30]


def test_repeated_failures_lock_out_every_session_even_with_the_right_password(gated):
    first = AppTest.from_file(ENTRY).run(timeout=30)
    for attempt in range(5):
        log_in(first, f"guess {attempt}")
    assert "Too many failed attempts: try again in 30 s." in app_texts(first)
    # A new session (another browser tab) from the same client is locked out
    # too, and the right password is not even checked.
    second = AppTest.from_file(ENTRY).run(timeout=30)
    assert "Too many failed attempts: try again in 30 s." in app_texts(second)
    log_in(second, DASHBOARD_SECRET)
    assert "Too many failed attempts" in app_texts(second)
    assert "Recorded streams" not in app_texts(second)
    gated.now += 30  # the lock-out ends
    log_in(second, DASHBOARD_SECRET)
    assert not at_login(second)


def at_login(at: AppTest) -> bool:
    return any(b.label == "Log in" for b in at.button)


def test_the_right_password_opens_every_page_until_logout(gated):
    at = AppTest.from_file(ENTRY).run(timeout=30)
    log_in(at, DASHBOARD_SECRET)
    assert not at.exception
    assert not at_login(at)
    assert [t.value for t in at.title] == ["Recorded streams"]  # the overview page
    assert "Database unreachable" in app_texts(at)  # the page ran (its database is down)
    at.run(timeout=30)  # a later run of the same session: still logged in
    assert not at_login(at) and at.sidebar.button(key=auth.LOGOUT_KEY).label == "Log out"
    at.sidebar.button(key=auth.LOGOUT_KEY).click().run(timeout=30)
    assert at_login(at)
    assert "Recorded streams" not in app_texts(at)


def test_without_a_password_the_dashboard_is_open(monkeypatch):
    monkeypatch.delenv("DASHBOARD_PASSWORD", raising=False)
    monkeypatch.setenv("DATABASE_URL", DOWN_URL)
    monkeypatch.delenv("DASHBOARD_DATABASE_URL", raising=False)
    st.cache_resource.clear()
    at = AppTest.from_file(ENTRY).run(timeout=30)
    assert not at.exception
    assert not at_login(at) and not at.sidebar.button
    assert [t.value for t in at.title] == ["Recorded streams"]
    st.cache_resource.clear()
