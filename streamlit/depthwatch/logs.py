"""Logging: one setup for every depthwatch process, and a throttle for warnings
that could otherwise come once per message.

`DEPTHWATCH_LOG_FORMAT=json` makes every line one JSON object (`time` in ISO
8601 UTC, `level`, `logger`, `message`, and `exception` when there is one), which
Render's log streams and most log shippers index field by field; the default is
the plain text format a person reads in a terminal.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO

LOG_FORMAT_ENV = "DEPTHWATCH_LOG_FORMAT"
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogFormatError(ValueError):
    """DEPTHWATCH_LOG_FORMAT names no known format."""


def log_format_from_env() -> str:
    value = os.environ.get(LOG_FORMAT_ENV, "").strip().lower() or "text"
    if value not in LOG_FORMATS:
        raise LogFormatError(f"{LOG_FORMAT_ENV}={value!r} is not one of {', '.join(LOG_FORMATS)}")
    return value


def iso_utc(created: float) -> str:
    """A record's time as ISO 8601 UTC with milliseconds: 2026-11-22T10:00:00.123Z."""
    moment = datetime.fromtimestamp(created, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in a message or a
    traceback are escaped by the encoder, so a record never spans lines)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _DepthwatchHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler setup_logging installed, so a second call replaces it
    instead of doubling every line."""


def make_formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def setup_logging(
    level: str = "INFO", log_format: str | None = None, stream: IO[str] | None = None
) -> None:
    """Configure the root logger once for the whole process: `log_format`
    ("text" or "json"), else DEPTHWATCH_LOG_FORMAT, else text; to stderr."""
    chosen = log_format or log_format_from_env()
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _DepthwatchHandler):
            root.removeHandler(existing)
    handler = _DepthwatchHandler(stream or sys.stderr)
    handler.setFormatter(make_formatter(chosen))
    root.addHandler(handler)
    root.setLevel(level)


def setup_dashboard_logging() -> None:
    """For the dashboard, which Streamlit starts (not cli.main): with
    DEPTHWATCH_LOG_FORMAT=json our loggers write JSON lines too, installed once
    per process. Otherwise Streamlit's logging is left as it is."""
    try:
        wanted = log_format_from_env()
    except LogFormatError:
        return  # the collector side reports it; the dashboard still serves
    installed = any(isinstance(h, _DepthwatchHandler) for h in logging.getLogger().handlers)
    if wanted == "json" and not installed:
        setup_logging("INFO", "json")


# Streamlit's session ids are uuid4s; with one, a client can resume that
# session (its login included) for as long as it lives.
SESSION_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I)
SERVER_LOGGERS = ("streamlit", "uvicorn")
MAX_THROTTLED_KINDS = 1_000


class ServerLogGuard(logging.Filter):
    """For the loggers of the server under the dashboard (Streamlit's and
    uvicorn's), which clients can make speak without logging in: no session id
    (a reader of the log could resume the session), no traceback (one line
    with the exception's type and message), and each kind of line (logger,
    message template, exception type) throttled like LogThrottle: a client
    sending a hundred malformed messages costs a few lines a minute."""

    def __init__(self, burst: int = 3, interval_s: float = 60.0) -> None:
        super().__init__()
        self.burst = burst
        self.interval_s = interval_s
        self._throttles: dict[tuple[str, str, str], LogThrottle] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            message += f" ({type(error).__name__}: {first_line(error)[:300]})"
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        key = (record.name, str(record.msg)[:200], type(error).__name__ if error else "")
        throttle = self._throttles.get(key)
        if throttle is None:
            if len(self._throttles) >= MAX_THROTTLED_KINDS:
                self._throttles.clear()
            throttle = self._throttles[key] = LogThrottle(self.burst, self.interval_s)
        held_back = throttle.admit()
        if held_back is None:
            return False
        if held_back:
            message += f" ({held_back} more like this since the last such line)"
        record.msg, record.args = SESSION_ID.sub("<session>", message), None
        return True


_SERVER_GUARD = ServerLogGuard()


def guard_server_loggers() -> None:
    """Put the one ServerLogGuard on every Streamlit and uvicorn logger that
    exists (each has its own handler and does not propagate). Cheap and
    idempotent: called as the server starts and at every script run, which
    catches loggers made later."""
    manager = logging.Logger.manager
    for name, logger in list(manager.loggerDict.items()):
        ours = isinstance(logger, logging.Logger) and name.split(".")[0] in SERVER_LOGGERS
        if ours and _SERVER_GUARD not in logger.filters:  # type: ignore[union-attr]
            logger.addFilter(_SERVER_GUARD)  # type: ignore[union-attr]


def relay_line(process: str, line: str, log_format: str | None = None) -> str:
    """A child process's output line as the supervisor passes it on: prefixed
    with the child's name in text mode; in JSON mode a JSON object still (the
    child's own object with a `process` field, or its plain text, such as
    Streamlit's banner, wrapped as a message)."""
    if (log_format or log_format_from_env()) != "json":
        return f"{process:>9} | {line}"
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    if not isinstance(entry, dict):
        entry = {"time": iso_utc(time.time()), "level": "INFO", "logger": process, "message": line}
    entry["process"] = process
    return json.dumps(entry, ensure_ascii=False)


@dataclass
class LogThrottle:
    """Lets the first `burst` occurrences of a repeated warning through, then at
    most one every `interval_s` carrying how many were held back since the last
    line: a malformed frame every ten messages costs a few lines a minute, not
    ten a second, and the count still says how bad it is."""

    burst: int = 10
    interval_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    seen: int = 0
    suppressed: int = 0  # held back since the last line that went out
    _last_out: float = field(default=float("-inf"), repr=False)

    def admit(self) -> int | None:
        """Count one occurrence. None: stay quiet. Otherwise log now; the value
        is how many occurrences were held back before this one."""
        self.seen += 1
        now = self.clock()
        if self.seen <= self.burst or now - self._last_out >= self.interval_s:
            held_back, self.suppressed = self.suppressed, 0
            self._last_out = now
            return held_back
        self.suppressed += 1
        return None

    def log(self, logger: logging.Logger, level: int, msg: str, *args: object) -> bool:
        """Log `msg % args` if admitted (with the held-back count appended when
        there is one); True when a line went out."""
        held_back = self.admit()
        if held_back is None:
            return False
        if held_back:
            logger.log(
                level, msg + " (%d more like this since the last such line)", *args, held_back
            )
        else:
            logger.log(level, msg, *args)
        return True


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (of the driver's error when a
    library wrapped it), for one-line log and error messages; its type when
    it has no message."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
