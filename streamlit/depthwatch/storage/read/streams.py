"""Which streams are recorded, and the ids that key their rows.

A stream is one instrument's book at one depth: `instruments` holds the
instrument (category, symbol), `streams` its recorded depths and the id that
keys its packed rows (schema 4)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from depthwatch.records import StreamKey


class NotRecorded(LookupError):
    """The requested instrument or stream has no recorded data."""


@dataclass(frozen=True)
class StreamRow:
    """A recorded stream, as the overview lists it."""

    instrument_id: int
    category: str
    symbol: str
    depth: int
    tick_size: float | None

    @property
    def key(self) -> str:
        """The stream's name as collectors write it in their heartbeats."""
        return str(StreamKey(self.category, self.symbol, self.depth))


def require_schema(conn: sa.Connection) -> None:
    """NotRecorded (one clear line) when the database holds no depthwatch
    schema: nothing was ever recorded into it."""
    if conn.execute(sa.text("SELECT to_regclass('book_chunks')")).scalar() is None:
        raise NotRecorded(
            "this database holds no depthwatch recording (no schema yet): "
            "record into it first (`depthwatch collect` or `depthwatch up`)"
        )


def list_streams(conn: sa.Connection) -> list[StreamRow]:
    rows = conn.execute(
        sa.text(
            """SELECT s.instrument_id, i.category, i.symbol, s.depth, i.tick_size::float8
               FROM streams s JOIN instruments i ON i.id = s.instrument_id
               ORDER BY i.category, i.symbol, s.depth"""
        )
    ).all()
    return [StreamRow(int(r[0]), r[1], r[2], int(r[3]), r[4]) for r in rows]


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
