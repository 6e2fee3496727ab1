"""REST book snapshots for the delta-only streams, within the exchange's limits.

One small client for every venue (the URL and the answer are the venue's
`SnapshotSource`): the standard library's HTTP in a worker thread (a
10,000-level answer is ~0.5 MB of JSON and parsing it must not hold up the
socket readers for long), behind a queue that keeps every request within the
rate and the concurrency allowed, with one shared backoff: exchanges limit by
IP (Bybit: 50 GET/s over two minutes, past it HTTP 403 and a ban of ~30
minutes; Binance: request weight per minute, past it 429, then 418 and a
ban), so a 429, 403 or 418 for one symbol slows every symbol down, and a
`Retry-After` the server sends is honoured.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from depthwatch import __version__
from depthwatch.clock import now_us
from depthwatch.feed.exchange import SnapshotSource, SnapshotThrottled
from depthwatch.feed.messages import MalformedMessage, SnapshotRefused
from depthwatch.feed.registry import venue_of
from depthwatch.logs import LogThrottle
from depthwatch.records import BookUpdate, StreamKey

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestPolicy:
    """How hard we may ask. The defaults stay far below Bybit's IP limit:
    twenty symbols start within two seconds, and a restart of every symbol
    costs a few seconds, not a ban."""

    rate_per_s: float = 10.0
    burst: int = 10
    concurrency: int = 4
    timeout_s: float = 15.0
    backoff_first_s: float = 1.0
    backoff_max_s: float = 60.0
    banned_pause_s: float = 300.0  # after HTTP 403 or 418 without Retry-After: a ban


@dataclass
class FetchStats:
    requests: int = 0
    answered: int = 0
    throttled: int = 0  # 429, or a rate limit said in the answer (Bybit's retCode 10006)
    banned: int = 0  # 403, 418
    failed: int = 0  # 5xx, network errors, timeouts, malformed answers
    refused: int = 0  # other error codes (unknown symbol, no full book)
    last_error: str = ""
    seconds: list[float] = field(default_factory=list)  # recent answer times


class SnapshotUnavailable(Exception):
    """The exchange refused the snapshot outright (see SnapshotRefused): one line,
    no retry soon."""


# Statuses that say this IP is banned (Bybit's 403, Binance's 418).
BANNED_STATUSES = (403, 418)


class SnapshotFetcher:
    """Fetches snapshots for one category from one REST base URL, at most
    `levels` a side (default: the venue's most). `fetch` retries transient
    failures until it has an answer or is cancelled."""

    def __init__(
        self,
        base_url: str,
        category: str,
        policy: RestPolicy | None = None,
        levels: int | None = None,
    ) -> None:
        venue = venue_of(category)
        assert venue.snapshots is not None, f"{category} has no REST snapshots"
        self.source: SnapshotSource = venue.snapshots()
        self.levels = levels or venue.snapshot_levels
        self.base_url = base_url.rstrip("/")
        self.category = category
        self.policy = policy or RestPolicy()
        self.stats = FetchStats()
        self.waiting: dict[str, float] = {}  # symbol -> since (monotonic)
        self._tokens = float(self.policy.burst)
        self._refilled = time.monotonic()
        self._paused_until = 0.0  # the shared backoff
        self._failures = 0  # consecutive, for the backoff's length
        self._slots = asyncio.Semaphore(self.policy.concurrency)
        self._gate = asyncio.Lock()  # one caller takes tokens at a time: a fair queue
        self._rng = random.Random()
        self._log = LogThrottle()

    def url(self, stream: StreamKey) -> str:
        return self.source.url(self.base_url, stream, self.levels)

    async def fetch(self, stream: StreamKey) -> BookUpdate:
        """The stream's snapshot. Raises SnapshotUnavailable when the exchange
        refuses it (an error code, not a hiccup); everything else is retried."""
        symbol = stream.symbol
        self.waiting.setdefault(symbol, time.monotonic())
        odd_answers = 0  # malformed answers for this symbol so far
        try:
            while True:
                async with self._slots:
                    # Admitted once it holds a slot: a backoff that began while
                    # it waited for one holds it back too.
                    await self._admit()
                    started = time.monotonic()
                    self.stats.requests += 1
                    answer = await asyncio.to_thread(self._get, self.url(stream))
                    status, body, error, retry_after = answer
                    local_us = now_us()
                    if status == 200:
                        try:
                            snapshot = await asyncio.to_thread(
                                self.source.parse, body, stream, local_us
                            )
                        except SnapshotThrottled as exc:
                            self._back_off("throttled", str(exc))
                            continue
                        except SnapshotRefused as exc:
                            self.stats.refused += 1
                            self.stats.last_error = str(exc)
                            raise SnapshotUnavailable(str(exc)) from None
                        except MalformedMessage as exc:
                            # This symbol's answer, not the server's state: it
                            # waits alone rather than holding everyone back.
                            self.stats.failed += 1
                            self.stats.last_error = str(exc)
                            self._log.log(log, logging.WARNING, "snapshot unusable: %s", exc)
                            odd_answers += 1
                            await asyncio.sleep(
                                min(
                                    self.policy.backoff_max_s,
                                    self.policy.backoff_first_s * odd_answers,
                                )
                            )
                            continue
                        self._failures = 0
                        self.stats.answered += 1
                        self.stats.seconds = [*self.stats.seconds[-99:], time.monotonic() - started]
                        return snapshot
                    refusal = self.source.refusal(status, body) if status >= 400 else None
                    if refusal is not None:
                        self.stats.refused += 1
                        self.stats.last_error = refusal
                        raise SnapshotUnavailable(refusal)
                    if status == 429:
                        self._back_off("throttled", f"HTTP 429 for {symbol}", retry_after)
                    elif status in BANNED_STATUSES:
                        detail = f"HTTP {status} for {symbol}: the exchange banned this IP?"
                        self._back_off("banned", detail, retry_after)
                    else:
                        self._back_off("failed", error or f"HTTP {status} for {symbol}")
        finally:
            self.waiting.pop(symbol, None)

    async def _admit(self) -> None:
        """Wait for the shared backoff and a token of the rate limit."""
        async with self._gate:
            while True:
                now = time.monotonic()
                if now < self._paused_until:
                    await asyncio.sleep(self._paused_until - now)
                    continue
                rate, burst = self.policy.rate_per_s, self.policy.burst
                self._tokens = min(burst, self._tokens + (now - self._refilled) * rate)
                self._refilled = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / rate)

    def _back_off(self, kind: str, detail: str, retry_after: float | None = None) -> None:
        policy = self.policy
        self._failures += 1
        if kind == "banned":
            self.stats.banned += 1
            pause = policy.banned_pause_s if retry_after is None else retry_after
        else:
            if kind == "throttled":
                self.stats.throttled += 1
            else:
                self.stats.failed += 1
            pause = min(policy.backoff_max_s, policy.backoff_first_s * 2 ** (self._failures - 1))
            pause *= 0.5 + self._rng.random()  # jitter: symbols do not retry in lockstep
            if retry_after is not None:
                pause = max(pause, retry_after)  # the server said how long
        self._paused_until = max(self._paused_until, time.monotonic() + pause)
        self._tokens, self._refilled = 0.0, self._paused_until  # no burst when it ends
        self.stats.last_error = detail
        level = logging.ERROR if kind == "banned" else logging.WARNING
        self._log.log(
            log, level, "snapshot request %s (%s); every request waits %.1f s", kind, detail, pause
        )

    def _get(self, url: str) -> tuple[int, bytes, str, float | None]:
        """(status, body, error text, Retry-After in seconds); runs in a worker
        thread. An error answer's body is kept (at most MAX_ERROR_BODY bytes):
        Binance says in it why (an unknown symbol is a 400 with code -1121)."""
        request = urllib.request.Request(url, headers={"User-Agent": f"depthwatch/{__version__}"})
        try:
            with urllib.request.urlopen(request, timeout=self.policy.timeout_s) as response:
                return response.status, response.read(), "", None
        except urllib.error.HTTPError as exc:
            body = b""
            with contextlib.suppress(OSError):
                body = exc.read(MAX_ERROR_BODY)
            retry_after = _seconds(exc.headers.get("Retry-After") if exc.headers else None)
            return exc.code, body, f"HTTP {exc.code} {exc.reason}", retry_after
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            return 0, b"", f"{url.split('?')[0]}: {reason}", None

    def status(self) -> str:
        """For the status line: who waits, and what the last trouble was."""
        if not self.waiting:
            return ""
        now = time.monotonic()
        oldest = max(now - since for since in self.waiting.values())
        names = sorted(self.waiting)
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        line = f"awaiting a snapshot: {shown} (longest {oldest:.0f} s)"
        if self._paused_until > now:
            line += f", backing off {self._paused_until - now:.0f} s after {self.stats.last_error}"
        return line


# An error answer is short; a proxy's HTML page need not be read whole.
MAX_ERROR_BODY = 4096
# A Retry-After beyond this is not waited for in one go (the loop asks again).
MAX_RETRY_AFTER_S = 3600.0


def _seconds(value: str | None) -> float | None:
    """A Retry-After in seconds (the HTTP-date form is not used by exchanges)."""
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(value))) if value else None
    except ValueError:
        return None
