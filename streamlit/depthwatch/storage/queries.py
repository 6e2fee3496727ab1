"""Read queries: everything that reads the recorded data goes through here.

Long reads stream through a server-side cursor, so an export of a month uses
the memory of one batch. Numeric arrays come back as text so that prices keep
the digits the exchange sent.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import sqlalchemy as sa

from depthwatch.records import SECOND_US
from depthwatch.storage.codec import (
    SNAPSHOT,
    TOP_CHANGED,
    DecodedChunk,
    TextCache,
    chunk_levels,
    decode_chunk,
)

STREAM_BATCH_ROWS = 5_000
CHUNK_BATCH_ROWS = 500


class NotRecorded(LookupError):
    """The requested instrument or stream has no recorded data."""


@dataclass(frozen=True, slots=True)
class BookEventRow:
    ts_us: int
    local_us: int
    u: int
    seq: int
    is_snapshot: bool
    bid_prices: list[str]
    bid_sizes: list[str]
    ask_prices: list[str]
    ask_sizes: list[str]


def instrument_id(conn: sa.Connection, category: str, symbol: str) -> int:
    iid = conn.execute(
        sa.text("SELECT id FROM instruments WHERE category = :c AND symbol = :s"),
        {"c": category, "s": symbol},
    ).scalar()
    if iid is None:
        raise NotRecorded(f"no {category} instrument {symbol!r} has been recorded")
    return int(iid)


def stream_id(conn: sa.Connection, iid: int, depth: int) -> int | None:
    """The id keying a stream's packed rows (schema 4); None if never recorded so."""
    sid = conn.execute(
        sa.text("SELECT id FROM streams WHERE instrument_id = :i AND depth = :d"),
        {"i": iid, "d": depth},
    ).scalar()
    return None if sid is None else int(sid)


def recorded_depths(conn: sa.Connection, iid: int, candidates: Iterable[int]) -> list[int]:
    """Which of the candidate depths have recorded book messages (packed, or
    in the schema 1-3 log). Index probes per depth, where a GROUP BY would
    read every row of every partition."""
    return [
        depth
        for depth in candidates
        if conn.execute(
            sa.text(
                """SELECT EXISTS (SELECT 1 FROM book_chunks c JOIN streams s ON s.id = c.stream_id
                                  WHERE s.instrument_id = :i AND s.depth = :d)
                       OR EXISTS (SELECT 1 FROM book_events
                                  WHERE instrument_id = :i AND depth = :d)"""
            ),
            {"i": iid, "d": depth},
        ).scalar()
    ]


def last_snapshot_before(conn: sa.Connection, iid: int, depth: int, ts_us: int) -> int | None:
    """Exchange time of the last snapshot strictly before `ts_us` (packed
    chunks open with their snapshots)."""
    ts = conn.execute(
        sa.text(
            """SELECT greatest(
                   (SELECT c.ts_us FROM book_chunks c
                    WHERE c.stream_id = (SELECT id FROM streams
                                         WHERE instrument_id = :i AND depth = :d)
                      AND c.snapshot AND c.ts_us < :t
                    ORDER BY c.ts_us DESC LIMIT 1),
                   (SELECT ts_us FROM book_events
                    WHERE instrument_id = :i AND depth = :d AND is_snapshot AND ts_us < :t
                    ORDER BY ts_us DESC LIMIT 1))"""
        ),
        {"i": iid, "d": depth, "t": ts_us},
    ).scalar()
    return None if ts is None else int(ts)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    ts_us: int
    u: int
    bids: list[list[str]]
    asks: list[list[str]]


def last_checkpoint_at_or_before(
    conn: sa.Connection, iid: int, depth: int, ts_us: int
) -> Checkpoint | None:
    """The collector's latest whole-book checkpoint stamped at or before `ts_us`."""
    row = conn.execute(
        sa.text(
            """SELECT ts_us, u, bid_prices::text[], bid_sizes::text[], ask_prices::text[],
                      ask_sizes::text[]
               FROM book_checkpoints
               WHERE instrument_id = :i AND depth = :d AND ts_us <= :t
               ORDER BY ts_us DESC LIMIT 1"""
        ),
        {"i": iid, "d": depth, "t": ts_us},
    ).first()
    if row is None:
        return None
    ts, u, bid_prices, bid_sizes, ask_prices, ask_sizes = row
    return Checkpoint(
        int(ts),
        int(u),
        [list(level) for level in zip(bid_prices, bid_sizes, strict=True)],
        [list(level) for level in zip(ask_prices, ask_sizes, strict=True)],
    )


def _stream(
    conn: sa.Connection, sql: str, params: dict[str, object], batch: int = STREAM_BATCH_ROWS
) -> Iterator[sa.Row]:
    result = conn.execution_options(stream_results=True, yield_per=batch).execute(
        sa.text(sql), params
    )
    yield from result


def book_events(
    conn: sa.Connection, iid: int, depth: int, from_us: int, end_us: int
) -> Iterator[BookEventRow]:
    """Book messages with from_us <= ts < end_us, in the order they apply: by
    exchange time, then Bybit's cross sequence (which, unlike `u`, does not
    restart at 1 when the exchange restarts a stream within the same millisecond).
    A snapshot and a delta with the same seq hold the same state (one collector's
    delta, another's subscription snapshot): the delta goes first, so both apply.
    Packed chunks and the schema 1-3 log are merged; a message stored twice
    (two collectors, or both logs during an upgrade) comes once."""
    sid = stream_id(conn, iid, depth)
    packed = _chunk_book_events(conn, sid, from_us, end_us) if sid is not None else iter(())
    merged = heapq.merge(
        _legacy_book_events(conn, iid, depth, from_us, end_us), packed, key=_event_order
    )
    last = None
    for event in merged:
        key = _event_order(event)
        if key != last:
            last = key
            yield event


def _event_order(event: BookEventRow) -> tuple[int, int, int, bool]:
    return event.ts_us, event.seq, event.u, event.is_snapshot


def _chunk_book_events(
    conn: sa.Connection, sid: int, from_us: int, end_us: int
) -> Iterator[BookEventRow]:
    text = TextCache()
    for chunk, i in _chunk_messages(conn, sid, from_us, end_us):
        bids, asks = chunk_levels(chunk, i, text)
        yield BookEventRow(
            int(chunk.ts_us[i]),
            int(chunk.local_us[i]),
            int(chunk.u[i]),
            int(chunk.seq[i]),
            bool(chunk.flags[i] & SNAPSHOT),
            [p for p, _ in bids],
            [q for _, q in bids],
            [p for p, _ in asks],
            [q for _, q in asks],
        )


def _chunk_messages(
    conn: sa.Connection, sid: int, from_us: int, end_us: int
) -> Iterator[tuple[DecodedChunk, int]]:
    """(decoded chunk, message index) for the messages with from_us <= ts <
    end_us, in (ts, seq, u, snapshot) order. Chunks come by their first
    timestamp and may overlap (two collectors cut the same messages
    differently), so messages wait in a heap until no later chunk can hold
    an earlier one; repeats are the caller's to drop."""
    rows = _stream(
        conn,
        """SELECT ts_us, u, payload FROM book_chunks
           WHERE stream_id = :s AND ts_us >= :f AND ts_us < :e
           ORDER BY ts_us, u, n, snapshot""",
        # A chunk never crosses a second: those that can hold `from_us` start
        # in its second.
        {"s": sid, "f": from_us - from_us % SECOND_US, "e": end_us},
        CHUNK_BATCH_ROWS,
    )
    heap: list[tuple[int, int, int, bool, int, int]] = []
    chunks: dict[int, DecodedChunk] = {}
    waiting: dict[int, int] = {}  # messages of each chunk still in the heap

    def pop() -> tuple[DecodedChunk, int]:
        *_, held, i = heapq.heappop(heap)
        chunk = chunks[held]
        waiting[held] -= 1
        if not waiting[held]:
            del chunks[held], waiting[held]
        return chunk, i

    for number, (ts_us, u, payload) in enumerate(rows):
        while heap and heap[0][0] < ts_us:
            yield pop()
        chunk = decode_chunk(payload, int(ts_us), int(u))
        columns = (chunk.ts_us.tolist(), chunk.seq.tolist(), chunk.u.tolist(), chunk.flags.tolist())
        pushed = 0
        for i, (t, q, v, f) in enumerate(zip(*columns, strict=True)):
            if from_us <= t < end_us:
                heapq.heappush(heap, (t, q, v, bool(f & SNAPSHOT), number, i))
                pushed += 1
        if pushed:
            chunks[number], waiting[number] = chunk, pushed
    while heap:
        yield pop()


def _legacy_book_events(
    conn: sa.Connection, iid: int, depth: int, from_us: int, end_us: int
) -> Iterator[BookEventRow]:
    rows = _stream(
        conn,
        """SELECT ts_us, local_us, u, seq, is_snapshot, bid_prices::text[], bid_sizes::text[],
                  ask_prices::text[], ask_sizes::text[]
           FROM book_events
           WHERE instrument_id = :i AND depth = :d AND ts_us >= :f AND ts_us < :e
           ORDER BY ts_us, seq, u, is_snapshot""",
        {"i": iid, "d": depth, "f": from_us, "e": end_us},
    )
    for row in rows:
        yield BookEventRow(*row)


QuoteRow = tuple[int, int, str | None, str | None, str | None, str | None]


def quotes(
    conn: sa.Connection, iid: int, depth: int, start_us: int, end_us: int
) -> Iterator[QuoteRow]:
    """(ts_us, local_us, ask_size, ask_price, bid_price, bid_size) at every
    change of the top of book, in time order: from the packed chunks' tops
    merged with the schema 1-3 `quotes` table; a top equal to the one before
    is not repeated (chunks restate their opening top; two collectors store
    the same changes)."""
    sid = stream_id(conn, iid, depth)
    packed = _chunk_quotes(conn, sid, start_us, end_us) if sid is not None else iter(())
    legacy = (
        (int(row[0]), int(row[6]), tuple(row[:6]))
        for row in _legacy_quotes(conn, iid, depth, start_us, end_us)
    )
    last = None
    # Merged by (ts, u): two messages of one millisecond, each in both logs
    # (an upgrade's overlap), must not interleave into false ticks.
    for _, _, row in heapq.merge(legacy, packed, key=_ts_and_u):
        top = row[2:]
        if top != last:
            last = top
            yield row  # type: ignore[misc]


def _ts_and_u(item: tuple[int, int, tuple]) -> tuple[int, int]:  # type: ignore[type-arg]
    return item[0], item[1]


def _chunk_quotes(
    conn: sa.Connection, sid: int, start_us: int, end_us: int
) -> Iterator[tuple[int, int, QuoteRow]]:
    """(ts_us, u, quote row) of every message that changed the top."""
    text = TextCache()
    for chunk, i in _chunk_messages(conn, sid, start_us, end_us):
        if not chunk.flags[i] & TOP_CHANGED:
            continue
        bid, bid_size, ask, ask_size = chunk.tops[chunk.top_of[i]].tolist()
        pe, se = chunk.price_exp, chunk.size_exp
        ts = int(chunk.ts_us[i])
        yield (
            ts,
            int(chunk.u[i]),
            (
                ts,
                int(chunk.local_us[i]),
                text(ask_size, se) if ask else None,
                text(ask, pe) if ask else None,
                text(bid, pe) if bid else None,
                text(bid_size, se) if bid else None,
            ),
        )


def _legacy_quotes(
    conn: sa.Connection, iid: int, depth: int, start_us: int, end_us: int
) -> Iterator[sa.Row]:
    return _stream(
        conn,
        """SELECT ts_us, local_us, ask_size::text, ask_price::text, bid_price::text,
                  bid_size::text, u
           FROM quotes
           WHERE instrument_id = :i AND depth = :d AND ts_us >= :s AND ts_us < :e
           ORDER BY ts_us, u, local_us""",
        {"i": iid, "d": depth, "s": start_us, "e": end_us},
    )


def trades(conn: sa.Connection, iid: int, start_us: int, end_us: int) -> Iterator[sa.Row]:
    """(ts_us, local_us, trade_id, side, price, size) in time order."""
    return _stream(
        conn,
        """SELECT ts_us, local_us, trade_id, side, price::text, size::text
           FROM trades
           WHERE instrument_id = :i AND ts_us >= :s AND ts_us < :e
           ORDER BY ts_us, seq, trade_id""",
        {"i": iid, "s": start_us, "e": end_us},
    )


def feed_events(conn: sa.Connection, since_us: int) -> list[sa.Row]:
    return list(
        conn.execute(
            sa.text(
                """SELECT local_us, collector, connection, kind, category, symbol, depth, detail
                   FROM feed_events WHERE local_us >= :s ORDER BY local_us, id"""
            ),
            {"s": since_us},
        )
    )


@dataclass(frozen=True, slots=True)
class LastRecorded:
    local_us: int
    u: int


def last_recorded(conn: sa.Connection, iid: int, depth: int) -> LastRecorded | None:
    """The stream's newest stored book message (receive time and update id):
    where an earlier collector's record of it ends. Backward index probes."""
    found = [r for r in (_last_packed(conn, iid, depth), _last_legacy(conn, iid, depth)) if r]
    return max(found, key=lambda r: r[0])[1] if found else None


def _last_packed(conn: sa.Connection, iid: int, depth: int) -> tuple[int, LastRecorded] | None:
    sid = stream_id(conn, iid, depth)
    if sid is None:
        return None
    newest = conn.execute(
        sa.text("SELECT max(ts_us) FROM book_chunks WHERE stream_id = :s"), {"s": sid}
    ).scalar()
    if newest is None:
        return None
    # Chunks of the newest second (two collectors may have cut it differently).
    best: tuple[int, int, int] | None = None
    for ts_us, u, payload in conn.execute(
        sa.text("SELECT ts_us, u, payload FROM book_chunks WHERE stream_id = :s AND ts_us >= :f"),
        {"s": sid, "f": int(newest) - int(newest) % SECOND_US},
    ):
        chunk = decode_chunk(payload, int(ts_us), int(u))
        last = (int(chunk.ts_us[-1]), int(chunk.local_us[-1]), int(chunk.u[-1]))
        best = last if best is None or last > best else best
    return None if best is None else (best[0], LastRecorded(best[1], best[2]))


def _last_legacy(conn: sa.Connection, iid: int, depth: int) -> tuple[int, LastRecorded] | None:
    row = conn.execute(
        sa.text(
            """SELECT ts_us, local_us, u FROM book_events
               WHERE instrument_id = :i AND depth = :d
               ORDER BY ts_us DESC LIMIT 1"""
        ),
        {"i": iid, "d": depth},
    ).one_or_none()
    if row is None:
        return None
    return int(row.ts_us), LastRecorded(int(row.local_us), int(row.u))


def streams_kept_by_others(conn: sa.Connection, collector: str, since_us: int) -> set[str]:
    """Streams (as `str(StreamKey)`) another collector was recording in a
    heartbeat since `since_us`: during a deploy the old collector keeps
    recording while the new one starts, so there is no hole to declare (a
    hole of its own it records itself)."""
    return set(
        conn.execute(
            sa.text(
                """SELECT DISTINCT unnest(streams) FROM collector_heartbeats
                   WHERE local_us >= :since AND collector <> :me"""
            ),
            {"since": since_us, "me": collector},
        ).scalars()
    )
