"""Read queries: everything that reads the recorded data goes through here.

Long reads stream through a server-side cursor, so an export of a month uses
the memory of one batch. Numeric arrays come back as text so that prices keep
the digits the exchange sent.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa

from depthwatch.records import SECOND_US
from depthwatch.storage.codec import (
    SNAPSHOT,
    TOP_CHANGED,
    DecodedBatch,
    TextCache,
    decode_chunk,
    decode_many,
    most_decimals,
    text_units,
)

STREAM_BATCH_ROWS = 5_000
# The packed log is decoded a batch at a time: this many chunks, or fewer once
# they hold this many messages (a chunk of a busy stream holds hundreds: a
# batch of 500 of them held a whole recording, ~2 KB a message, in memory).
CHUNK_BATCH_ROWS = 500
MESSAGE_BATCH = 10_000


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


def require_schema(conn: sa.Connection) -> None:
    """NotRecorded (one clear line) when the database holds no depthwatch
    schema: nothing was ever recorded into it."""
    if conn.execute(sa.text("SELECT to_regclass('book_chunks')")).scalar() is None:
        raise NotRecorded(
            "this database holds no depthwatch recording (no schema yet): "
            "record into it first (`depthwatch collect` or `depthwatch up`)"
        )


def recorded_symbols(conn: sa.Connection, category: str) -> list[str]:
    """Every symbol of the category with a recorded book stream, sorted."""
    return list(
        conn.execute(
            sa.text(
                """SELECT DISTINCT i.symbol FROM streams s JOIN instruments i
                       ON i.id = s.instrument_id
                   WHERE i.category = :c ORDER BY i.symbol"""
            ),
            {"c": category},
        ).scalars()
    )


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
    in the schema 1-3 log). Index probes per depth, by stream id: a join on
    `streams` in the probe made PostgreSQL read every chunk of every depth."""
    found = []
    for depth in candidates:
        sid = stream_id(conn, iid, depth)
        packed = (
            sid is not None
            and conn.execute(
                sa.text("SELECT EXISTS (SELECT 1 FROM book_chunks WHERE stream_id = :s)"),
                {"s": sid},
            ).scalar()
        )
        if (
            packed
            or conn.execute(
                sa.text(
                    """SELECT EXISTS (SELECT 1 FROM book_events
                                      WHERE instrument_id = :i AND depth = :d)"""
                ),
                {"i": iid, "d": depth},
            ).scalar()
        ):
            found.append(depth)
    return found


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
    local_us: int
    u: int
    bids: list[list[str]]
    asks: list[list[str]]


def last_checkpoint_at_or_before(
    conn: sa.Connection, iid: int, depth: int, ts_us: int
) -> Checkpoint | None:
    """The collector's latest whole-book checkpoint stamped at or before `ts_us`."""
    row = conn.execute(
        sa.text(
            """SELECT ts_us, local_us, u, bid_prices::text[], bid_sizes::text[], ask_prices::text[],
                      ask_sizes::text[]
               FROM book_checkpoints
               WHERE instrument_id = :i AND depth = :d AND ts_us <= :t
               ORDER BY ts_us DESC LIMIT 1"""
        ),
        {"i": iid, "d": depth, "t": ts_us},
    ).first()
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


def _stream(
    conn: sa.Connection, sql: str, params: dict[str, object], batch: int = STREAM_BATCH_ROWS
) -> Iterator[sa.Row]:
    result = conn.execution_options(stream_results=True, yield_per=batch).execute(
        sa.text(sql), params
    )
    yield from result


@dataclass(frozen=True, slots=True)
class IntBookEvent:
    """A book message with exact integer levels: prices in ticks of
    10**-price_exp, sizes in lots of 10**-size_exp (for readers that compute,
    not copy, the exchange's text)."""

    ts_us: int
    local_us: int
    u: int
    seq: int
    is_snapshot: bool
    price_exp: int
    size_exp: int
    bid_ticks: list[int]
    bid_lots: list[int]
    ask_ticks: list[int]
    ask_lots: list[int]


def int_book_events(
    conn: sa.Connection, iid: int, depth: int, from_us: int, end_us: int
) -> Iterator[IntBookEvent]:
    """book_events with integer levels, in the same order, repeats dropped the same way."""
    sid = stream_id(conn, iid, depth)
    packed = _chunk_int_events(conn, sid, from_us, end_us) if sid is not None else iter(())
    legacy = (_as_ints(e) for e in _legacy_book_events(conn, iid, depth, from_us, end_us))
    return _merged(legacy, packed)


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
    return _merged(_legacy_book_events(conn, iid, depth, from_us, end_us), packed)


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
    conn: sa.Connection, sid: int, from_us: int, end_us: int
) -> Iterator[IntBookEvent]:
    for view, i in _packed_messages(conn, sid, from_us, end_us):
        ticks, lots = view.level_ints()
        first, mid, last = view.level_bounds(i)
        yield IntBookEvent(
            view.ts[i],
            view.local[i],
            view.u[i],
            view.seq[i],
            bool(view.flags[i] & SNAPSHOT),
            view.price_exp[i],
            view.size_exp[i],
            ticks[first:mid],
            lots[first:mid],
            ticks[mid:last],
            lots[mid:last],
        )


def _as_ints(event: BookEventRow) -> IntBookEvent:
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
    conn: sa.Connection, sid: int, from_us: int, end_us: int
) -> Iterator[BookEventRow]:
    text = TextCache()
    for view, i in _packed_messages(conn, sid, from_us, end_us):
        prices, sizes = view.level_texts(text)
        first, mid, last = view.level_bounds(i)
        yield BookEventRow(
            view.ts[i],
            view.local[i],
            view.u[i],
            view.seq[i],
            bool(view.flags[i] & SNAPSHOT),
            prices[first:mid],
            sizes[first:mid],
            prices[mid:last],
            sizes[mid:last],
        )


class _Messages:
    """One batch of decoded chunks (codec.decode_many) as Python lists, for
    readers that go message by message; level texts made on first use."""

    __slots__ = (
        "_batch",
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

    def level_bounds(self, i: int) -> tuple[int, int, int]:
        """Message i's levels: bids in [first, mid), asks in [mid, last)."""
        first = self.first_level[i]
        mid = first + self.nb[i]
        return first, mid, mid + self.na[i]

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


def _packed_messages(
    conn: sa.Connection,
    sid: int,
    from_us: int,
    end_us: int,
    levels: bool = True,
    top_changes_only: bool = False,
) -> Iterator[tuple[_Messages, int]]:
    """(batch, message index) for the messages with from_us <= ts < end_us,
    in (ts, seq, u, snapshot) order. Chunks come by their first timestamp,
    CHUNK_BATCH_ROWS (or MESSAGE_BATCH messages) at a time, decoded together.
    They may overlap (two
    collectors cut the same messages differently), so a batch's messages at
    or after its last chunk's first timestamp wait for the next batch, which
    can hold earlier ones; repeats are the caller's to drop.
    `top_changes_only`: only the messages flagged with a top (quotes)."""
    rows = _stream(
        conn,
        """SELECT ts_us, u, payload, n FROM book_chunks
           WHERE stream_id = :s AND ts_us >= :f AND ts_us < :e
           ORDER BY ts_us, u, n, snapshot""",
        # A chunk never crosses a second: those that can hold `from_us` start
        # in its second.
        {"s": sid, "f": from_us - from_us % SECOND_US, "e": end_us},
        CHUNK_BATCH_ROWS,
    )
    # (ts, seq, u, snapshot, arrival number, batch, index): the number is
    # unique, so sorting never compares batches.
    waiting: list[tuple[int, int, int, bool, int, _Messages, int]] = []
    arrived = 0
    for part in _batches(rows, CHUNK_BATCH_ROWS, MESSAGE_BATCH):
        batch = decode_many(
            [r[2] for r in part], [int(r[0]) for r in part], [int(r[1]) for r in part], levels
        )
        view = _Messages(batch)
        flags = view.flags
        inside = [
            i
            for i, t in enumerate(view.ts)
            if from_us <= t < end_us and (not top_changes_only or flags[i] & TOP_CHANGED)
        ]
        waiting += [
            (
                view.ts[i],
                view.seq[i],
                view.u[i],
                bool(view.flags[i] & SNAPSHOT),
                arrived + k,
                view,
                i,
            )
            for k, i in enumerate(inside)
        ]
        arrived += len(inside)
        waiting.sort()  # mostly in order already: timsort's linear case
        later_chunks_from = int(part[-1][0])
        ready = bisect.bisect_left(waiting, (later_chunks_from,))
        for item in waiting[:ready]:
            yield item[5], item[6]
        del waiting[:ready]
    for item in waiting:
        yield item[5], item[6]


def _batches(rows: Iterable[sa.Row], chunks: int, messages: int) -> Iterator[list[sa.Row]]:
    """Chunk rows (their message count last) in lists of at most `chunks`
    rows, cut early once they hold `messages` messages (never empty)."""
    part: list[sa.Row] = []
    held = 0
    for row in rows:
        part.append(row)
        held += int(row[-1])
        if len(part) >= chunks or held >= messages:
            yield part
            part, held = [], 0
    if part:
        yield part


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
    for view, i in _packed_messages(
        conn, sid, start_us, end_us, levels=False, top_changes_only=True
    ):
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
