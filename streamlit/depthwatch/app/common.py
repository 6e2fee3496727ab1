"""What every page shares: UTC formatting, the empty and error states."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import streamlit as st

from depthwatch.app import data
from depthwatch.app.data import DatabaseDown, NoSchema
from depthwatch.storage.read.health import ReplicaState
from depthwatch.storage.read.streams import Stream

T = TypeVar("T")

# On the Overview when every stream's collector read the simulator.
REAL_DATA_HINT = (
    "Everything here is simulated. To record Bybit itself: "
    "`depthwatch up --symbols BTCUSDT,ETHUSDT`; to record around the clock, deploy "
    'the worker, the dashboard and the database to Render (README, "Deploy to Render").'
)
START_HINT = (
    "Nothing has been recorded yet. Start recording with `depthwatch up --source sim` "
    "(an offline demo on the built-in simulator) or `depthwatch up --symbols BTCUSDT` "
    "(Bybit), or run the collector alone: `depthwatch collect --symbols BTCUSDT`."
)


def utc(us: int | None, with_date: bool = False) -> str:
    if us is None:
        return "-"
    fmt = "%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S"
    return time.strftime(fmt, time.gmtime(us / 1e6)) + " UTC"


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86_400:.0f} days"


def replica_lag(replica: ReplicaState) -> str:
    """How far a read replica (hot standby) is behind its primary, in words:
    what it adds to the data's age."""
    if replica.paused:
        return "replay paused (it falls behind until resumed)"
    if replica.lag_s is None:
        return "nothing replayed yet"
    return f"replay lag {age(replica.lag_s)}"


def load(read: Callable[[], T]) -> T | None:
    """Run a read; on a dead database or an empty one, say so plainly (never a
    stack trace) and return None. The caller's fragment retries on its timer."""
    try:
        return read()
    except DatabaseDown as exc:
        st.error(
            f"**Database unreachable**: {exc}. Retrying every second; the page "
            "recovers by itself once the database answers.",
            icon=":material/cloud_off:",
        )
    except NoSchema:
        st.info(START_HINT, icon=":material/info:")
    return None


def recorded_streams() -> list[Stream] | None:
    """The recorded streams; None once the page has said why there are none
    (a dead database, or nothing recorded yet)."""
    streams = load(data.streams)
    if streams is None:
        return None
    if not streams:
        st.info(START_HINT, icon=":material/info:")
        return None
    return streams


def price(digits: str | None) -> str:
    """A price for people, in the exchange's own digits (60,020.0 stays
    60,020.0, never 60,020), with thousands separators."""
    if digits is None:
        return "-"
    whole, dot, fraction = digits.partition(".")
    sign = "-" if whole.startswith("-") else ""
    return f"{sign}{int(whole.lstrip('-') or 0):,}{dot}{fraction}"


def mid_and_spread(bid: str | None, ask: str | None) -> tuple[str, str] | None:
    """Mid and spread computed exactly from the exchange's digits (a float mid of
    59,999.60 and 59,999.80 would print as 59,999.7, beside prices with two
    decimals)."""
    if bid is None or ask is None:
        return None
    b, a = Decimal(bid), Decimal(ask)
    return str((b + a) / 2), str(a - b)


def shown_param(value: str) -> str:
    """A URL value quoted in a message: short, and unable to close the code span."""
    return repr(value[:60].replace("`", "'"))


def int_param(name: str, default: int, allowed: tuple[int, ...]) -> int:
    """An integer URL parameter from `allowed`; anything else is told so and
    replaced by the default, never an exception."""
    raw = st.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value in allowed:
        return value  # type: ignore[return-value]
    choices = ", ".join(str(a) for a in allowed)
    st.warning(
        f"URL parameter `{name}` is {shown_param(raw)}: allowed values are {choices}. "
        f"Showing {default}.",
        icon=":material/link_off:",
    )
    return default


def window_control(place: Any, default: int) -> int:
    """The window (minutes) a live page shows, as the same control on each."""
    chosen = place.segmented_control(
        "Window", data.WINDOWS_MIN, default=default, key="window", format_func=lambda m: f"{m}m"
    )
    return int(chosen or data.DEFAULT_WINDOW_MIN)
