"""A flush's rows: each table's COPY lines, and `Batch`, the unit of writing.

A COPY line is a table's row in PostgreSQL's COPY text format (tab-separated,
`\\N` for NULL), in the column order of `COLUMNS`. The readers' thread formats
checkpoint and trade lines itself (`levels_columns`, `nullable`,
`COPY_ESCAPES`); the writer thread packs the book's (packing.py).

A `Batch` is what one flush takes: COPY lines per table, feed events and
heartbeats. It is written in one transaction (tables.py), kept whole and
retried when that fails, and moved to the journal as records when the database
stays unreachable (`journal_records`, read back by `from_journal`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from operator import itemgetter

from depthwatch.records import Level
from depthwatch.storage import schema
from depthwatch.storage.codec import decode_chunk
from depthwatch.storage.write.journal import JournalBatch

# Column lists in COPY order; the staging tables mirror the real ones.
COLUMNS = {
    # Schema 4 (what this writer writes); see storage/write/packing.py.
    "book_chunks": "stream_id, ts_us, u, n, snapshot, payload",
    "top_snapshots": "stream_id, ts_us, payload",
    "top_seconds": "stream_id, ts_us, last_ts_us, last_u, bid, bid_size, ask, ask_size, "
    "bid_min, ask_max, spread_bps_max, messages",
    # Schema 1-3 tables, still written by a journal an older collector left.
    "book_events": "instrument_id, depth, ts_us, local_us, match_us, u, seq, is_snapshot, "
    "bid_prices, bid_sizes, ask_prices, ask_sizes",
    "quotes": "instrument_id, depth, ts_us, local_us, u, bid_price, bid_size, ask_price, ask_size",
    "depth_snapshots": "instrument_id, depth, ts_us, local_us, u, "
    "bid_prices, bid_sizes, ask_prices, ask_sizes",
    "trades": "instrument_id, ts_us, local_us, trade_id, side, price, size, seq",
    "book_checkpoints": "instrument_id, depth, ts_us, local_us, u, seq, "
    "bid_prices, bid_sizes, ask_prices, ask_sizes",
    # Schema 6: where a whole book is exact (records.BookBounds).
    "book_bounds": "stream_id, ts_us, u, local_us, bid_floor, ask_ceiling",
    # Schema 7: a whole book summarised for the dashboard (records.BookProfile).
    "book_profiles": "stream_id, ts_us, local_us, u, step, bid_first, bid_sizes, "
    "ask_first, ask_sizes",
}

# Position of `ts_us` (exchange time, the partition key) in each table's COPY line.
TS_COLUMN = {
    "book_chunks": 1,
    "top_snapshots": 1,
    "top_seconds": 1,
    "book_events": 2,
    "quotes": 2,
    "depth_snapshots": 2,
    "trades": 1,
    "book_checkpoints": 2,
    "book_bounds": 1,
    "book_profiles": 1,
}

COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})

_PRICE = itemgetter(0)
_SIZE = itemgetter(1)


def levels_columns(bids: list[Level], asks: list[Level]) -> str:
    """The four numeric[] columns, in COPY text form: {p1,p2}\t{s1,s2}\t..."""
    join = ",".join
    return (
        f"{{{join(map(_PRICE, bids))}}}\t{{{join(map(_SIZE, bids))}}}\t"
        f"{{{join(map(_PRICE, asks))}}}\t{{{join(map(_SIZE, asks))}}}"
    )


def float_array(values: list[float]) -> str:
    """A real[] in COPY text form: {1.5,0.0,2e-05}."""
    return "{" + ",".join(map(repr, values)) + "}"


def nullable(value: object) -> str:
    return "\\N" if value is None else str(value)


def chunk_size(line: str) -> int:
    """Messages in a book_chunks COPY line (its `n` column)."""
    return int(line.split("\t", 4)[3])


def chunk_receive_times(line: str) -> list[int]:
    """The receive times of a `book_chunks` COPY line's messages."""
    _, ts_us, u, _, _, payload = line.rstrip("\n").split("\t")
    chunk = decode_chunk(bytes.fromhex(payload[3:]), int(ts_us), int(u))
    return [int(x) for x in chunk.local_us.tolist()]


# Journal record tags of the two event kinds (table rows are tagged by table).
FEED_EVENTS = "feed_events"
HEARTBEATS = "collector_heartbeats"


@dataclass
class Batch:
    rows: dict[str, list[str]]
    book_local_us: list[int]
    feed_events: list[dict[str, object]]  # parameter rows for the INSERT
    heartbeats: list[dict[str, object]]
    days: set[int]
    journal: JournalBatch | None = None  # where it was read from; consumed on commit

    @property
    def size(self) -> int:
        rows = sum(len(lines) for lines in self.rows.values())
        return rows + len(self.feed_events) + len(self.heartbeats)

    @classmethod
    def merged(cls, batches: list[Batch]) -> Batch:
        """One batch of several, in order (none read from the journal)."""
        rows: dict[str, list[str]] = {table: [] for table in COLUMNS}
        for batch in batches:
            for table, lines in batch.rows.items():
                rows[table] += lines
        return cls(
            rows,
            [local for b in batches for local in b.book_local_us],
            [event for b in batches for event in b.feed_events],
            [beat for b in batches for beat in b.heartbeats],
            set().union(*(b.days for b in batches)),
        )

    def journal_records(self) -> list[tuple[str, str]]:
        return (
            [(table, line) for table, lines in self.rows.items() for line in lines]
            + [(FEED_EVENTS, json.dumps(e) + "\n") for e in self.feed_events]
            + [(HEARTBEATS, json.dumps(h) + "\n") for h in self.heartbeats]
        )

    @classmethod
    def from_journal(cls, journaled: JournalBatch, known_days: set[int]) -> Batch:
        rows: dict[str, list[str]] = {table: [] for table in COLUMNS}
        feed_events: list[dict[str, object]] = []
        heartbeats: list[dict[str, object]] = []
        for table, line in journaled.records:
            if table == FEED_EVENTS:
                feed_events.append(json.loads(line))
            elif table == HEARTBEATS:
                heartbeats.append(json.loads(line))
            else:
                rows[table].append(line)
        local = [int(line.split("\t", 4)[3]) for line in rows["book_events"]]
        batch = cls(rows, local, feed_events, heartbeats, set(), journaled)
        batch.days = batch.row_days() - known_days
        return batch

    @property
    def empty(self) -> bool:
        return self.size == 0

    def row_days(self) -> set[int]:
        """The days (partitions) the batch's rows fall on, read back from the
        COPY lines' exchange-time column: only needed when a flush is retried."""
        return {
            int(line.split("\t", TS_COLUMN[table] + 1)[TS_COLUMN[table]]) // schema.DAY_US
            for table, lines in self.rows.items()
            for line in lines
        }
