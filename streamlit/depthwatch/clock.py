"""Time, the one way the project tells it: integer microseconds since the
Unix epoch, UTC (Tardis's unit and the schema's), and the forms a user may
type for a time (ISO 8601, `now`, `-1h`)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

SECOND_US = 1_000_000
DAY_US = 86_400 * SECOND_US

_UNIT_US = {"s": SECOND_US, "m": 60 * SECOND_US, "h": 3_600 * SECOND_US, "d": DAY_US}
_UNIT_US["w"] = 7 * DAY_US
_RELATIVE = re.compile(r"-(\d+(?:\.\d+)?)([smhdw])")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The times the project knows: from the epoch (no market data is older) to the
# end of year 9999 (the largest datetime, so every time has an ISO 8601 form).
MIN_US = 0
MAX_US = 253_402_300_800 * 1_000_000 - 1  # 9999-12-31T23:59:59.999999Z


# What a user may type for a time, for help texts.
TIME_FORMS = (
    "ISO 8601 (2026-11-24, 2026-11-24T10:00Z), now, or a span back from now (-30m, -1h, -2d)"
)


def now_us() -> int:
    return time.time_ns() // 1000


class TimeFormatError(ValueError):
    """A time a user typed that is none of the accepted forms."""


def parse_time_us(text: str, now: int | None = None) -> int:
    """A time in UTC -> microseconds since the epoch: ISO 8601 (a date, or a
    date-time; naive means UTC), `now`, or a span back from now (`-90s`,
    `-30m`, `-1h`, `-2d`, `-1w`). TimeFormatError for anything else, and for
    a time before 1970 or after 9999 (`-99999w`)."""
    text = text.strip()
    if text == "now" or _RELATIVE.fullmatch(text):
        current = now_us() if now is None else now
        found = _RELATIVE.fullmatch(text)
        if found is None:
            return current
        back = float(found[1]) * _UNIT_US[found[2]]
        if back > current - MIN_US:  # also catches inf: 1e400 weeks
            raise TimeFormatError(f"{text!r} reaches back before {_EPOCH:%Y-%m-%d}")
        return current - round(back)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TimeFormatError(
            f"not an ISO 8601 time: {text!r} (e.g. 2026-11-24 or 2026-11-24T10:00Z), "
            "nor now or a span back from it (-30m, -1h, -2d)"
        ) from None
    value = datetime_us(moment)
    if value < MIN_US:
        raise TimeFormatError(f"{text!r} is before {_EPOCH:%Y-%m-%d}: no market data is older")
    if value > MAX_US:
        raise TimeFormatError(f"{text!r} is after the year 9999")
    return value


def datetime_us(moment: datetime) -> int:
    """A datetime (naive means UTC) -> exact microseconds since the epoch."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * SECOND_US + delta.microseconds


def utc_datetime(ts_us: int) -> datetime:
    return datetime.fromtimestamp(ts_us // SECOND_US, UTC).replace(microsecond=ts_us % SECOND_US)


def utc_day(ts_us: int) -> str:
    """The UTC date of a time, as Tardis names its daily files (2026-11-24)."""
    return utc_datetime(ts_us).strftime("%Y-%m-%d")
