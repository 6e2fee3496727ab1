"""When `depthwatch up` runs the archive: at start, then once each UTC day is
finished, and an hour after a run that failed; one run at a time. Pure: the
supervisor (supervisor.py) starts and reaps the `depthwatch archive` job."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from depthwatch.clock import DAY_US, now_us
from depthwatch.storage.archived import SETTLE_US

RETRY_US = 3_600 * 1_000_000  # after a failed run


def next_due(now: int, code: int) -> int:
    """When the next run is due after one that exited with `code` at `now`:
    once the next UTC day is finished, or an hour on after a failure."""
    next_day = now - now % DAY_US + DAY_US + SETTLE_US
    return next_day if code == 0 else min(next_day, now + RETRY_US)


@dataclass
class ArchiveSchedule:
    start: Callable[[], object]  # starts a run
    finished: Callable[[], int | None]  # a run's exit code once it ended (then forgotten)
    running: Callable[[], bool]
    due_us: int = 0  # the first run at once
    clock: Callable[[], int] = now_us

    def tick(self) -> None:
        """Called every poll of the supervisor's loop."""
        code = self.finished()
        now = self.clock()
        if code is not None:
            self.due_us = next_due(now, code)
        elif now >= self.due_us and not self.running():
            self.start()
