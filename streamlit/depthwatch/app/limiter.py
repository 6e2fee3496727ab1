"""Pure rules for password guessing: a limit per client, and a cap across all
clients that new addresses cannot escape.

A client is whatever `auth.client_key` says (an IP address, an IPv6 /64, or a
shared bucket when the address cannot be told). Per client: `max_failures`
failures within `window_s` lock it out for `first_lockout_s`, doubling with
each lock-out in a row up to `max_lockout_s`; a success, or a quiet
`max_lockout_s` after a lock-out, starts it afresh.

Across clients: an attacker with many addresses gets `max_failures` guesses
per minute from each. So once `global_max_failures` failures fall within
`global_window_s`, clients that never logged in are held until that window
slides below the cap. Clients that logged in before (from that address, within
`known_for_s`) are not held by it: the cap bounds what unknown addresses can
guess in all, without locking out the people who use the dashboard.

Thread-safe (sessions run in their own threads); no Streamlit here, so the
rules are tested with a fake clock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

MAX_FAILURES = 5  # within FAILURE_WINDOW_S, then a lock-out
FAILURE_WINDOW_S = 60.0
FIRST_LOCKOUT_S = 30.0  # doubled at each lock-out in a row
MAX_LOCKOUT_S = 900.0
GLOBAL_MAX_FAILURES = 30  # failures from all clients within GLOBAL_WINDOW_S
GLOBAL_WINDOW_S = 600.0
KNOWN_FOR_S = 30 * 86_400.0  # an address that logged in stays known this long
MAX_TRACKED_CLIENTS = 10_000  # beyond this, clients with nothing pending are forgotten


@dataclass(frozen=True)
class Hold:
    """Why and how long a client must wait before its next attempt."""

    seconds: float
    scope: Literal["client", "everyone"]  # its own lock-out, or the cap across clients


@dataclass
class _ClientRecord:
    failures: deque[float] = field(default_factory=deque)  # times within the window
    lockouts: int = 0  # lock-outs in a row, for the growing delay
    locked_until: float = 0.0


class LoginLimiter:
    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window_s: float = FAILURE_WINDOW_S,
        first_lockout_s: float = FIRST_LOCKOUT_S,
        max_lockout_s: float = MAX_LOCKOUT_S,
        global_max_failures: int = GLOBAL_MAX_FAILURES,
        global_window_s: float = GLOBAL_WINDOW_S,
        known_for_s: float = KNOWN_FOR_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.first_lockout_s = first_lockout_s
        self.max_lockout_s = max_lockout_s
        self.global_max_failures = global_max_failures
        self.global_window_s = global_window_s
        self.known_for_s = known_for_s
        self.clock = clock
        self._clients: dict[str, _ClientRecord] = {}
        self._known: dict[str, float] = {}  # client -> time of its last success
        # The newest failures of all clients, at most the cap's worth.
        self._recent: deque[float] = deque(maxlen=global_max_failures)
        self._lock = threading.Lock()

    def hold(self, client: str) -> Hold | None:
        """None: `client` may try now. Otherwise how long it must wait, and why."""
        now = self.clock()
        with self._lock:
            record = self._clients.get(client)
            own = max(0.0, record.locked_until - now) if record else 0.0
            if own > 0:
                return Hold(own, "client")
            everyone = self._global_wait(now)
            if everyone > 0 and not self._is_known(client, now):
                return Hold(everyone, "everyone")
            return None

    def wait_s(self, client: str) -> float:
        """Seconds until `client` may try again (0: now)."""
        held = self.hold(client)
        return held.seconds if held else 0.0

    def failed(self, client: str) -> float:
        """Count a failed attempt; returns the lock-out it caused in seconds (0: none)."""
        now = self.clock()
        with self._lock:
            self._recent.append(now)
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
        now = self.clock()
        with self._lock:
            self._clients.pop(client, None)
            if client not in self._known and len(self._known) >= MAX_TRACKED_CLIENTS:
                self._forget_unknown(now)
            self._known[client] = now

    def _global_wait(self, now: float) -> float:
        """Until the oldest of the last `cap` failures leaves the window (0 if
        fewer than `cap` failures are in it)."""
        if len(self._recent) < self.global_max_failures:
            return 0.0
        return max(0.0, self._recent[0] + self.global_window_s - now)

    def _is_known(self, client: str, now: float) -> bool:
        since = self._known.get(client)
        return since is not None and now - since <= self.known_for_s

    def _forget_idle(self, now: float) -> None:
        if len(self._clients) < MAX_TRACKED_CLIENTS:
            return
        for client, record in list(self._clients.items()):
            recent = record.failures and now - record.failures[-1] <= self.window_s
            if not recent and now - record.locked_until > self.max_lockout_s:
                del self._clients[client]

    def _forget_unknown(self, now: float) -> None:
        """Known clients whose success is older than `known_for_s`; if none, the oldest."""
        stale = [c for c, t in self._known.items() if now - t > self.known_for_s]
        for client in stale or [min(self._known, key=self._known.__getitem__)]:
            del self._known[client]
