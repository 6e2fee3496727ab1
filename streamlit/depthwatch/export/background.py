"""An export's other threads: writes run on one of their own, in order, so
that Arrow's formatting, encoding and compression (which release the GIL)
overlap the replay making the next rows (on two cores a book_snapshot export
runs ~1.5x as fast); and reads run ahead on another (`read_ahead`), so that
PostgreSQL's work and the network wait for the next batch overlap the replay
of this one.

At most `depth` writes wait, so what waits stays a few tables. A write that
fails stops the rest: the next submit() or close() raises its error.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator
from typing import TypeVar

Write = Callable[[], object]
T = TypeVar("T")
_END = object()


def read_ahead(items: Callable[[], Iterator[T]], depth: int = 1) -> Generator[T, None, None]:
    """The items of `items()`, made on a thread of their own ahead of the
    caller (`depth` waiting, and one more made and waiting to be handed
    over), in order; its error raised here. Whatever `items()`
    reads through (a connection) is the thread's alone until this generator
    ends or is closed: closing it stops the thread and waits for it, so the
    caller may use the connection again afterwards."""
    handed: queue.Queue[object] = queue.Queue(maxsize=depth)
    left = threading.Event()  # the caller stopped taking items
    failed: list[BaseException] = []

    def hand(item: object) -> bool:
        while not left.is_set():
            try:
                handed.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            made = items()
            try:
                for item in made:
                    if not hand(item):
                        return
            finally:
                close = getattr(made, "close", None)
                if close is not None:
                    close()  # a generator's cursors close on the thread that opened them
        except BaseException as error:  # handed to the caller
            failed.append(error)
        hand(_END)

    thread = threading.Thread(target=produce, name="export-reader", daemon=True)
    try:
        thread.start()  # inside: an interrupt right after it still stops the thread
        while (item := handed.get()) is not _END:
            yield item  # type: ignore[misc]
        if failed:
            raise failed[0]
    finally:
        left.set()
        if thread.is_alive():
            thread.join()


class BackgroundWriter:
    def __init__(self, depth: int = 2) -> None:
        self._queue: queue.Queue[Write | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="export-writer", daemon=True)
        self._thread.start()

    def submit(self, write: Write) -> None:
        """Run `write` after those submitted before (raises a failed one's error)."""
        self._put(write)

    def close(self) -> None:
        """Wait for every write; raises the error of one that failed."""
        if self._thread.is_alive():
            self._put(None, raising=False)
            self._thread.join()
        self._raise_if_failed()

    def _put(self, item: Write | None, raising: bool = True) -> None:
        while True:
            if raising:
                self._raise_if_failed()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue  # the thread drains the queue even after a failure

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (write := self._queue.get()) is not None:
            if self._error is None:
                try:
                    write()
                except BaseException as error:  # handed to the submitting thread
                    self._error = error
