"""The export's threads (export/background.py): reads run ahead of the
replay on a thread of their own; what they hand over, in order, and how
they end on every path (done, failed, abandoned)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from depthwatch.export.background import read_ahead


class Source:
    """Numbered items, counting how many were made and whether it was closed
    (and on which thread), optionally failing at one."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count, self.fail_at = count, fail_at
        self.made = 0
        self.closed_on: str | None = None

    def items(self) -> Iterator[int]:
        try:
            for n in range(self.count):
                if n == self.fail_at:
                    raise RuntimeError(f"read {n} failed")
                self.made += 1
                yield n
        finally:
            self.closed_on = threading.current_thread().name


def readers_alive() -> int:
    return sum(t.name == "export-reader" and t.is_alive() for t in threading.enumerate())


def test_items_come_in_order_made_on_another_thread():
    source = Source(1_000)
    assert list(read_ahead(source.items)) == list(range(1_000))
    assert source.closed_on == "export-reader"
    assert readers_alive() == 0


def test_the_reader_runs_at_most_depth_ahead():
    source = Source(100)
    taken = read_ahead(source.items, depth=2)
    for n in range(10):
        assert next(taken) == n
        time.sleep(0.02)  # room for the thread to run as far ahead as it may
        # Taken n + 1; up to 2 waiting, 1 more made and waiting to be handed.
        assert n + 1 <= source.made <= n + 1 + 2 + 1, (n, source.made)
    taken.close()


def test_a_failed_read_is_raised_after_the_items_before_it():
    source = Source(50, fail_at=30)
    got = []
    with pytest.raises(RuntimeError, match="read 30 failed"):
        for item in read_ahead(source.items):
            got.append(item)
    assert got == list(range(30))
    assert readers_alive() == 0


def test_leaving_early_stops_the_thread_and_closes_the_source():
    """A replay that fails (or a consumer that stops) closes the generator:
    the thread stops handing over, closes its source (its cursors) and is
    joined before close() returns, so the caller's connection is free."""
    source = Source(10_000)
    taken = read_ahead(source.items)
    assert [next(taken) for _ in range(5)] == [0, 1, 2, 3, 4]
    taken.close()
    assert source.closed_on == "export-reader"
    assert source.made < 10
    assert readers_alive() == 0


def test_an_error_in_the_consumer_also_ends_the_thread():
    source = Source(10_000)
    with pytest.raises(ZeroDivisionError):
        for item in read_ahead(source.items):
            if item == 3:
                raise ZeroDivisionError
    assert source.closed_on == "export-reader" and readers_alive() == 0
