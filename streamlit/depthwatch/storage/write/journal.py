"""The spill journal: rows the database cannot take yet, kept on local disk.

While PostgreSQL is unreachable the writer moves its queued rows here rather
than holding them in memory (bounded) or pausing the sockets (which would lose
the exchange's stream). After recovery the writer drains the journal, oldest
segment first, before anything newer, so rows reach the database in the order
they were received; every write is idempotent, so a segment replayed twice
(a crash between commit and delete) stores each row once.

Layout: `<dir>/<time_ns>-<pid>-<n>.journal`, text, one record per line:
`<table>\\t<COPY line>` for table rows, `feed_events\\t<json>` and
`collector_heartbeats\\t<json>` for events. A segment is locked (flock) while a
live writer owns it; segments nobody holds were left by a crash and are adopted
by the next writer to start. A torn last line (a crash mid-write) is ignored.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# The name it logged under before it moved into storage/write/: log lines and
# filters stay the same.
log = logging.getLogger("depthwatch.storage.journal")

SUFFIX = ".journal"
DEFAULT_MAX_BYTES = 1024 * 1024 * 1024
SEGMENT_BYTES = 16 * 1024 * 1024


@dataclass
class _Segment:
    path: Path
    file: IO[bytes]  # open for the lifetime of the segment: it holds the lock
    size: int
    read_offset: int = 0


@dataclass(frozen=True)
class JournalBatch:
    """Records read from the head segment, up to `end_offset` (consumed on commit)."""

    records: list[tuple[str, str]]
    segment: Path
    end_offset: int


class Journal:
    """Append at the tail, read and consume at the head. Used by the writer
    thread only, so it needs no locking of its own."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._segments: list[_Segment] = []
        self._writing: _Segment | None = None
        self._count = 0

    # ---- state

    @property
    def empty(self) -> bool:
        return self.pending_bytes == 0

    @property
    def pending_bytes(self) -> int:
        return sum(s.size - s.read_offset for s in self._segments)

    def has_room(self, extra_bytes: int) -> bool:
        return self.pending_bytes + extra_bytes <= self.max_bytes

    # ---- start-up

    def check_writable(self) -> None:
        """Create the directory and write a file in it, so a journal that could
        not take rows fails at start with a clear error, not mid-outage."""
        self.directory.mkdir(parents=True, exist_ok=True)
        probe = self.directory / f".probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()

    def adopt_orphans(self) -> int:
        """Take over the segments a crashed writer left (those no live process
        holds locked), oldest first; returns how many bytes they hold."""
        adopted = 0
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):  # none if no directory
            try:
                file = path.open("r+b")
            except FileNotFoundError:  # another writer sharing the directory retired it
                continue
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live writer's segment
                file.close()
                continue
            size = path.stat().st_size
            if size == 0:
                path.unlink()
                file.close()
                continue
            self._segments.append(_Segment(path, file, size))
            adopted += size
        if adopted:
            log.warning(
                "journal: %.1f MB of rows left by an earlier run in %s; writing them first",
                adopted / 1e6,
                self.directory,
            )
        return adopted

    # ---- tail

    def append(self, records: list[tuple[str, str]]) -> int:
        """Write records durably (flushed and fsynced); returns the bytes written."""
        if not records:
            return 0
        segment = self._writing
        if segment is None or segment.size >= SEGMENT_BYTES:
            segment = self._open_segment()
        data = "".join(f"{table}\t{line}" for table, line in records).encode()
        segment.file.seek(segment.size)
        segment.file.write(data)
        segment.file.flush()
        os.fsync(segment.file.fileno())
        segment.size += len(data)
        return len(data)

    def _open_segment(self) -> _Segment:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._count += 1
        path = self.directory / f"{time.time_ns():020d}-{os.getpid()}-{self._count:06d}{SUFFIX}"
        file = path.open("w+b")
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        segment = _Segment(path, file, 0)
        self._segments.append(segment)
        self._writing = segment
        return segment

    # ---- head

    def read(self, max_records: int) -> JournalBatch | None:
        """The oldest unconsumed records, at most `max_records`; None when empty."""
        while self._segments and self._segments[0].read_offset >= self._segments[0].size:
            self._retire(self._segments[0])  # wholly read
        if not self._segments:
            return None
        head = self._segments[0]
        head.file.seek(head.read_offset)
        records: list[tuple[str, str]] = []
        offset = head.read_offset
        while len(records) < max_records and offset < head.size:
            raw = head.file.readline(head.size - offset)
            if not raw.endswith(b"\n"):  # torn by a crash mid-write: nothing after it
                log.warning("journal: %s ends with a torn record; ignored", head.path.name)
                head.size = offset
                break
            offset += len(raw)
            table, _, line = raw.decode().partition("\t")
            records.append((table, line))
        return JournalBatch(records, head.path, offset)

    def consume(self, batch: JournalBatch) -> None:
        """The batch is committed: advance past it, deleting spent segments."""
        head = self._segments[0]
        assert head.path == batch.segment, "journal batches are consumed in order"
        head.read_offset = batch.end_offset
        if head.read_offset >= head.size:
            self._retire(head)

    def _retire(self, segment: _Segment) -> None:
        self._segments.remove(segment)
        if segment is self._writing:
            self._writing = None
        segment.path.unlink(missing_ok=True)
        segment.file.close()

    def close(self) -> None:
        """Release the locks; segments with rows stay for the next start."""
        for segment in list(self._segments):
            if segment.read_offset >= segment.size:
                self._retire(segment)
            else:
                segment.file.close()
        self._segments.clear()
        self._writing = None
