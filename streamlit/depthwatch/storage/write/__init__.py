"""The write side: records in, COPY batches out, on a thread of its own.

Socket readers (the asyncio loop) call the `add_*` methods, which only format a
COPY line and append it to a deque: no I/O, no lock. A writer thread drains the
deques every `flush_interval_s` and COPYs each table's rows, all in one
transaction. A COPY that meets a row already stored is redone through a
temporary staging table with `INSERT ... ON CONFLICT DO NOTHING`. That makes
every write idempotent: two collectors overlapping during a deploy, or a retry
after a failed commit, never duplicate a row. A failed flush keeps its batch and
retries it with backoff; the queue is bounded, and readers that find it full
wait (`wait_for_room`), which is counted and logged as back-pressure.

Where each part lives, in the order a row goes through them:

- `state.py`: `WriterConfig`, `WriterStats`, and every field a `BatchWriter`
  holds, with the thread that writes it;
- `intake.py`: what the event loop calls: `add_*`, back-pressure, refusing rows
  as a recorded gap while the journal is full, instrument and stream ids;
- `flush.py`: the writer thread: its timing, taking a batch, retries with
  backoff, outages, spilling to the journal and draining it, `stop`;
- `packing.py`: pure: book records -> the packed tables' COPY lines;
- `batch.py`: COPY lines (column lists, formats) and `Batch`, one flush's rows,
  to the database or the journal and back;
- `tables.py`: a batch into the tables: COPY, staging + ON CONFLICT,
  row by row, events; partition upkeep;
- `journal.py`: the spill journal's segment files on local disk.

`BatchWriter` is one object because both threads share its queues and flags,
and the collector, the tests and the benches hold it as one. Its methods are
split by who runs them into mixins over one `WriterState` (intake.py for the
readers' thread, flush.py over tables.py for the writer thread) rather than
composed of separate objects: the fields stay declared in one place, each
method reads as it did in one class (`self._book_rows`, `self._dropping`) with
no hand-off objects between the threads, and the readers' per-message path
gains no extra call.
"""

from __future__ import annotations

from depthwatch.storage.write.flush import Flusher
from depthwatch.storage.write.intake import Intake
from depthwatch.storage.write.state import WriterConfig, WriterStats

__all__ = ["BatchWriter", "WriterConfig", "WriterStats"]


class BatchWriter(Intake, Flusher):
    """Implements book.RecordSink (plus trades) on top of PostgreSQL."""
