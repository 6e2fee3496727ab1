"""The packed book log (`book_chunks`, schema 4), read message by message for
replays and exports: book messages with text or integer levels, quotes, the
snapshots and checkpoints a rebuild starts from. Merged with the schema 1-3
log (legacy.py) everywhere, a message stored twice coming once.

Chunks are decoded a batch at a time (codec.decode_many): CHUNK_BATCH_ROWS
chunks, or fewer once they hold MESSAGE_BATCH messages (a chunk of a busy
stream holds hundreds: a batch of 500 of them held a whole recording, ~2 KB a
message, in memory)."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import sqlalchemy as sa

from depthwatch.archive.log import CHECKPOINTS, CHUNKS
from depthwatch.records import SECOND_US
from depthwatch.storage.codec import (
    SNAPSHOT,
    TOP_CHANGED,
    DecodedBatch,
    TextCache,
    decode_many,
    most_decimals,
    text_units,
)
from depthwatch.storage.read import legacy
from depthwatch.storage.read.cold import cold_log
from depthwatch.storage.read.cursor import stream_rows
from depthwatch.storage.read.rows import (
    BookEventRow,
    Bounds,
    Checkpoint,
    IntBookEvent,
    QuoteRow,
)
from depthwatch.storage.read.streams import Stream

# The packed log is decoded a batch at a time: this many chunks, or fewer once
# they hold this many messages (a chunk of a busy stream holds hundreds: a
# batch of 500 of them held a whole recording, ~2 KB a message, in memory).
CHUNK_BATCH_ROWS = 500


MESSAGE_BATCH = 10_000


def last_snapshot_before(conn: sa.Connection, stream: Stream, ts_us: int) -> int | None:
    """Exchange time of the last snapshot strictly before `ts_us` (packed
    chunks open with their snapshots), cold days included."""
    ts = conn.execute(
        sa.text(
            """SELECT greatest(
                   (SELECT ts_us FROM book_chunks
                    WHERE stream_id = :s AND snapshot AND ts_us < :t
                    ORDER BY ts_us DESC LIMIT 1),
                   (SELECT ts_us FROM book_events
                    WHERE instrument_id = :i AND depth = :d AND is_snapshot AND ts_us < :t
                    ORDER BY ts_us DESC LIMIT 1))"""
        ),
        {"s": stream.id, "i": stream.instrument_id, "d": stream.depth, "t": ts_us},
    ).scalar()
    found = None if ts is None else int(ts)
    after = 0 if found is None else found + 1
    for ts_cold, snapshot in cold_log(conn, stream).rows(
        CHUNKS, after, ts_us, newest_first=True, columns=["ts_us", "snapshot"]
    ):
        if snapshot:
            return int(ts_cold)
    return found


def book_bounds(conn: sa.Connection, stream: Stream, start_us: int, end_us: int) -> list[Bounds]:
    """Where a whole book is exact over [start_us, end_us): the bounds in force
    at start_us (if any) and every later one before end_us, oldest first.
    Empty for a numbered depth, whose snapshots are never cut."""
    rows = conn.execute(
        sa.text(
            """(SELECT ts_us, u, bid_floor::text, ask_ceiling::text, local_us FROM book_bounds
                WHERE stream_id = :s AND ts_us <= :a ORDER BY ts_us DESC, local_us DESC LIMIT 1)
               UNION ALL
               (SELECT ts_us, u, bid_floor::text, ask_ceiling::text, local_us FROM book_bounds
                WHERE stream_id = :s AND ts_us > :a AND ts_us < :e)
               ORDER BY 1, local_us"""
        ),
        {"s": stream.id, "a": start_us, "e": end_us},
    ).all()
    return [Bounds(int(ts), int(u), floor, ceiling) for ts, u, floor, ceiling, _ in rows]


def last_checkpoint_at_or_before(
    conn: sa.Connection, stream: Stream, ts_us: int
) -> Checkpoint | None:
    """The collector's latest whole-book checkpoint stamped at or before `ts_us`."""
    found = conn.execute(
        sa.text(
            """SELECT ts_us, local_us, u, bid_prices::text[], bid_sizes::text[], ask_prices::text[],
                      ask_sizes::text[]
               FROM book_checkpoints
               WHERE instrument_id = :i AND depth = :d AND ts_us <= :t
               ORDER BY ts_us DESC LIMIT 1"""
        ),
        {"i": stream.instrument_id, "d": stream.depth, "t": ts_us},
    ).first()
    row: Sequence[Any] | None = found
    cold = cold_log(conn, stream)
    if cold:
        after = 0 if row is None else int(row[0]) + 1
        names = ["ts_us", "local_us", "u", "bid_prices", "bid_sizes", "ask_prices", "ask_sizes"]
        newer = next(iter(cold.rows(CHECKPOINTS, after, ts_us + 1, True, names)), None)
        row = newer or row
    if row is None:
        return None
    ts, local, u, bid_prices, bid_sizes, ask_prices, ask_sizes = row
    return Checkpoint(
        int(ts),
        int(local),
        int(u),
        [list(level) for level in zip(bid_prices, bid_sizes, strict=True)],
        [list(level) for level in zip(ask_prices, ask_sizes, strict=True)],
    )


def int_book_events(
    conn: sa.Connection, stream: Stream, from_us: int, end_us: int
) -> Iterator[IntBookEvent]:
    """book_events with integer levels, in the same order, repeats dropped the same way."""
    packed = _chunk_int_events(conn, stream, from_us, end_us)
    old = (as_ints(e) for e in legacy.book_events(conn, stream, from_us, end_us))
    return _merged(old, packed)


def book_events(
    conn: sa.Connection, stream: Stream, from_us: int, end_us: int
) -> Iterator[BookEventRow]:
    """Book messages with from_us <= ts < end_us, in the order they apply: by
    exchange time, then Bybit's cross sequence (which, unlike `u`, does not
    restart at 1 when the exchange restarts a stream within the same millisecond).
    A snapshot and a delta with the same seq hold the same state (one collector's
    delta, another's subscription snapshot): the delta goes first, so both apply.
    Packed chunks and the schema 1-3 log are merged; a message stored twice
    (two collectors, or both logs during an upgrade) comes once."""
    packed = _chunk_book_events(conn, stream, from_us, end_us)
    return _merged(legacy.book_events(conn, stream, from_us, end_us), packed)


Event = TypeVar("Event", BookEventRow, IntBookEvent)


def _merged(legacy: Iterator[Event], packed: Iterator[Event]) -> Iterator[Event]:
    """The two logs in apply order, a message stored twice once."""
    last = None
    for event in heapq.merge(legacy, packed, key=_event_order):
        key = _event_order(event)
        if key != last:
            last = key
            yield event


def _event_order(event: BookEventRow | IntBookEvent) -> tuple[int, int, int, bool]:
    return event.ts_us, event.seq, event.u, event.is_snapshot


def _chunk_int_events(
    conn: sa.Connection, stream: Stream, from_us: int, end_us: int
) -> Iterator[IntBookEvent]:
    for view, i, head, bid_ticks, bid_lots, ask_ticks, ask_lots in _with_levels(
        conn, stream, from_us, end_us, Messages.level_ints
    ):
        yield IntBookEvent(
            *head, view.price_exp[i], view.size_exp[i], bid_ticks, bid_lots, ask_ticks, ask_lots
        )


def as_ints(event: BookEventRow) -> IntBookEvent:
    """A schema 1-3 message's decimal texts as integers."""
    return IntBookEvent(
        event.ts_us,
        event.local_us,
        event.u,
        event.seq,
        event.is_snapshot,
        *int_levels(event.bid_prices, event.bid_sizes, event.ask_prices, event.ask_sizes),
    )


def int_levels(
    bid_prices: list[str], bid_sizes: list[str], ask_prices: list[str], ask_sizes: list[str]
) -> tuple[int, int, list[int], list[int], list[int], list[int]]:
    """Decimal texts as (price_exp, size_exp, bid ticks, bid lots, ask ticks,
    ask lots), at the most decimals among them."""
    prices, sizes = bid_prices + ask_prices, bid_sizes + ask_sizes
    price_exp, size_exp = most_decimals(prices), most_decimals(sizes)
    ticks = [text_units(p, price_exp) for p in prices]
    lots = [text_units(q, size_exp) for q in sizes]
    nb = len(bid_prices)
    return price_exp, size_exp, ticks[:nb], lots[:nb], ticks[nb:], lots[nb:]


def _chunk_book_events(
    conn: sa.Connection, stream: Stream, from_us: int, end_us: int
) -> Iterator[BookEventRow]:
    text = TextCache()
    for _, _, head, bid_prices, bid_sizes, ask_prices, ask_sizes in _with_levels(
        conn, stream, from_us, end_us, lambda view: view.level_texts(text)
    ):
        yield BookEventRow(*head, bid_prices, bid_sizes, ask_prices, ask_sizes)


Level = TypeVar("Level", int, str)
Head = tuple[int, int, int, int, bool]


def _with_levels(
    conn: sa.Connection,
    stream: Stream,
    from_us: int,
    end_us: int,
    columns: Callable[[Messages], tuple[list[Level], list[Level]]],
) -> Iterator[tuple[Messages, int, Head, list[Level], list[Level], list[Level], list[Level]]]:
    """messages(), each with its head (Messages.heads) and its levels cut out
    of the batch's level `columns` (prices, sizes): bid prices, bid sizes,
    ask prices, ask sizes."""
    for view, i in messages(conn, stream, from_us, end_us):
        prices, sizes = columns(view)
        first = view.first_level[i]
        mid = first + view.nb[i]
        last = mid + view.na[i]
        yield (
            view,
            i,
            view.heads()[i],
            prices[first:mid],
            sizes[first:mid],
            prices[mid:last],
            sizes[mid:last],
        )


class Messages:
    """One batch of decoded chunks (codec.decode_many) as Python lists, for
    readers that go message by message; level texts made on first use."""

    __slots__ = (
        "_batch",
        "_heads",
        "_ints",
        "_texts",
        "first_level",
        "flags",
        "local",
        "na",
        "nb",
        "price_exp",
        "seq",
        "size_exp",
        "top_of",
        "tops",
        "ts",
        "u",
    )

    def __init__(self, batch: DecodedBatch) -> None:
        self._batch = batch
        self._texts: tuple[list[str], list[str]] | None = None
        self._ints: tuple[list[int], list[int]] | None = None
        self._heads: list[Head] | None = None
        self.ts: list[int] = batch.ts_us.tolist()
        self.local: list[int] = batch.local_us.tolist()
        self.u: list[int] = batch.u.tolist()
        self.seq: list[int] = batch.seq.tolist()
        self.flags: list[int] = batch.flags.tolist()
        self.first_level: list[int] = batch.msg_first_level.tolist()
        self.nb: list[int] = batch.nb.tolist()
        self.na: list[int] = batch.na.tolist()
        self.top_of: list[int] = batch.top_of.tolist()
        self.tops: list[list[int]] = batch.tops.tolist()
        self.price_exp: list[int] = batch.price_exp[batch.msg_chunk].tolist()
        self.size_exp: list[int] = batch.size_exp[batch.msg_chunk].tolist()

    @property
    def batch(self) -> DecodedBatch:
        """The decoded columns (NumPy), for readers that work in columns."""
        return self._batch

    def heads(self) -> list[Head]:
        """Every message's ts_us, local_us, u, seq and is_snapshot."""
        if self._heads is None:
            snapshot = [bool(f & SNAPSHOT) for f in self.flags]
            self._heads = list(zip(self.ts, self.local, self.u, self.seq, snapshot, strict=True))
        return self._heads

    def level_ints(self) -> tuple[list[int], list[int]]:
        """Every level's ticks and lots (at its chunk's exponents)."""
        if self._ints is None:
            self._ints = (self._batch.ticks.tolist(), self._batch.lots.tolist())
        return self._ints

    def level_texts(self, text: TextCache) -> tuple[list[str], list[str]]:
        """Every level's price and size as the exchange wrote them."""
        if self._texts is None:
            b = self._batch
            price_exp = b.price_exp[b.level_chunk].tolist()
            size_exp = b.size_exp[b.level_chunk].tolist()
            self._texts = (
                list(map(text, b.ticks.tolist(), price_exp)),
                list(map(text, b.lots.tolist(), size_exp)),
            )
        return self._texts


def messages(
    conn: sa.Connection,
    stream: Stream,
    from_us: int,
    end_us: int,
    levels: bool = True,
    top_changes_only: bool = False,
) -> Iterator[tuple[Messages, int]]:
    """(batch, message index) for the messages with from_us <= ts < end_us,
    in apply order (message_batches); repeats are the caller's to drop.
    `top_changes_only`: only the messages flagged with a top (quotes)."""
    for batch, order in message_batches(conn, stream, from_us, end_us, levels):
        if top_changes_only:
            order = order[(batch.flags[order] & TOP_CHANGED) != 0]
        view = Messages(batch)
        for i in order.tolist():
            yield view, i


def message_batches(
    conn: sa.Connection, stream: Stream, from_us: int, end_us: int, levels: bool = True
) -> Generator[tuple[DecodedBatch, np.ndarray], None, None]:
    """Batches of decoded chunks, each with the indices of its messages with
    from_us <= ts < end_us in apply order: (ts, seq, u, snapshot), then as
    stored. A batch holds whole seconds of chunks (CHUNK_BATCH_ROWS, or
    MESSAGE_BATCH messages, rounded up to the end of a second). A chunk never
    crosses a second, so chunks that overlap (two collectors cut the same
    messages differently) meet in one batch, and sorting it orders them;
    repeats are the caller's to drop."""
    rows = chunk_rows(conn, stream, from_us - from_us % SECOND_US, end_us)
    for part in _batches(rows, CHUNK_BATCH_ROWS, MESSAGE_BATCH):
        batch = decode_many(
            [r[2] for r in part], [int(r[0]) for r in part], [int(r[1]) for r in part], levels
        )
        ts = batch.ts_us
        inside = np.flatnonzero((ts >= from_us) & (ts < end_us))
        snapshot = (batch.flags[inside] & SNAPSHOT) != 0
        # lexsort is stable: equal keys stay as stored.
        keys = (snapshot, batch.u[inside], batch.seq[inside], ts[inside])
        yield batch, inside[np.lexsort(keys)]


def chunk_rows(
    conn: sa.Connection, stream: Stream, from_us: int, end_us: int
) -> Iterator[tuple[int, int, bytes, int]]:
    """(ts_us, u, payload, n) of the chunks starting in [from, end), by
    (ts_us, u, n, snapshot): from the database, and from the archive for
    cold days (a day is one or the other, so merging by time is enough)."""
    hot = stream_rows(
        conn,
        """SELECT ts_us, u, payload, n FROM book_chunks
           WHERE stream_id = :s AND ts_us >= :f AND ts_us < :e
           ORDER BY ts_us, u, n, snapshot""",
        {"s": stream.id, "f": from_us, "e": end_us},
        CHUNK_BATCH_ROWS,
    )
    cold = cold_log(conn, stream)
    if not cold.days_in(from_us, end_us):
        return hot  # type: ignore[return-value]
    archived = cold.rows(CHUNKS, from_us, end_us, columns=["ts_us", "u", "payload", "n"])
    return heapq.merge(hot, archived, key=_chunk_time)  # type: ignore[arg-type]


def _chunk_time(row: Sequence[Any]) -> int:
    return int(row[0])


def _batches(
    rows: Iterable[Sequence[Any]], chunks: int, messages: int
) -> Iterator[list[Sequence[Any]]]:
    """Chunk rows (by time, their message count last) in lists of about
    `chunks` rows or `messages` messages, each cut only where a second ends
    (never empty)."""
    part: list[Sequence[Any]] = []
    held = 0
    for row in rows:
        full = len(part) >= chunks or held >= messages
        if full and row[0] // SECOND_US != part[-1][0] // SECOND_US:
            yield part
            part, held = [], 0
        part.append(row)
        held += int(row[-1])
    if part:
        yield part


def quotes(conn: sa.Connection, stream: Stream, start_us: int, end_us: int) -> Iterator[QuoteRow]:
    """(ts_us, local_us, ask_size, ask_price, bid_price, bid_size) at every
    change of the top of book, in time order: from the packed chunks' tops
    merged with the schema 1-3 `quotes` table; a top equal to the one before
    is not repeated (chunks restate their opening top; two collectors store
    the same changes)."""
    packed = _chunk_quotes(conn, stream, start_us, end_us)
    old = (
        (int(row[0]), int(row[6]), tuple(row[:6]))
        for row in legacy.quotes(conn, stream, start_us, end_us)
    )
    last = None
    # Merged by (ts, u): two messages of one millisecond, each in both logs
    # (an upgrade's overlap), must not interleave into false ticks.
    for _, _, row in heapq.merge(old, packed, key=_ts_and_u):
        top = row[2:]
        if top != last:
            last = top
            yield row  # type: ignore[misc]


def _ts_and_u(item: tuple[int, int, tuple]) -> tuple[int, int]:  # type: ignore[type-arg]
    return item[0], item[1]


def _chunk_quotes(
    conn: sa.Connection, stream: Stream, start_us: int, end_us: int
) -> Iterator[tuple[int, int, QuoteRow]]:
    """(ts_us, u, quote row) of every message that changed the top."""
    text = TextCache()
    for view, i in messages(conn, stream, start_us, end_us, levels=False, top_changes_only=True):
        bid, bid_size, ask, ask_size = view.tops[view.top_of[i]]
        pe, se = view.price_exp[i], view.size_exp[i]
        ts = view.ts[i]
        yield (
            ts,
            view.u[i],
            (
                ts,
                view.local[i],
                text(ask_size, se) if ask else None,
                text(ask, pe) if ask else None,
                text(bid, pe) if bid else None,
                text(bid_size, se) if bid else None,
            ),
        )
