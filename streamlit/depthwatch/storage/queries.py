"""Read queries: everything that reads the recorded data goes through here.

Long reads stream through a server-side cursor, so an export of a month uses
the memory of one batch. Numeric arrays come back as text so that prices keep
the digits the exchange sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import sqlalchemy as sa

STREAM_BATCH_ROWS = 5_000


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


def recorded_depths(conn: sa.Connection, iid: int, candidates: Iterable[int]) -> list[int]:
    """Which of the candidate depths have recorded book events. One index probe
    per depth (the primary key starts with instrument and depth), where a
    GROUP BY would read every row of every partition."""
    return [
        depth
        for depth in candidates
        if conn.execute(
            sa.text(
                """SELECT EXISTS (SELECT 1 FROM book_events
                                  WHERE instrument_id = :i AND depth = :d)"""
            ),
            {"i": iid, "d": depth},
        ).scalar()
    ]


def last_snapshot_before(conn: sa.Connection, iid: int, depth: int, ts_us: int) -> int | None:
    """Exchange time of the last snapshot strictly before `ts_us`."""
    ts = conn.execute(
        sa.text(
            """SELECT ts_us FROM book_events
               WHERE instrument_id = :i AND depth = :d AND is_snapshot AND ts_us < :t
               ORDER BY ts_us DESC LIMIT 1"""
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


def _stream(conn: sa.Connection, sql: str, params: dict[str, object]) -> Iterator[sa.Row]:
    result = conn.execution_options(stream_results=True, yield_per=STREAM_BATCH_ROWS).execute(
        sa.text(sql), params
    )
    yield from result


def book_events(
    conn: sa.Connection, iid: int, depth: int, from_us: int, end_us: int
) -> Iterator[BookEventRow]:
    """Book events with from_us <= ts < end_us, in the order they apply: by
    exchange time, then Bybit's cross sequence (which, unlike `u`, does not
    restart at 1 when the exchange restarts a stream within the same millisecond).
    A snapshot and a delta with the same seq hold the same state (one collector's
    delta, another's subscription snapshot): the delta goes first, so both apply."""
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


def quotes(
    conn: sa.Connection, iid: int, depth: int, start_us: int, end_us: int
) -> Iterator[sa.Row]:
    """(ts_us, local_us, ask_size, ask_price, bid_price, bid_size) in time order
    (arrival order within a millisecond: `u` restarts with the stream)."""
    return _stream(
        conn,
        """SELECT ts_us, local_us, ask_size::text, ask_price::text, bid_price::text,
                  bid_size::text
           FROM quotes
           WHERE instrument_id = :i AND depth = :d AND ts_us >= :s AND ts_us < :e
           ORDER BY ts_us, local_us, u""",
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
    """The stream's newest stored book event (receive time and update id): where
    an earlier collector's record of it ends. One backward index probe."""
    row = conn.execute(
        sa.text(
            """SELECT local_us, u FROM book_events
               WHERE instrument_id = :i AND depth = :d
               ORDER BY ts_us DESC LIMIT 1"""
        ),
        {"i": iid, "d": depth},
    ).one_or_none()
    return LastRecorded(int(row.local_us), int(row.u)) if row is not None else None


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
