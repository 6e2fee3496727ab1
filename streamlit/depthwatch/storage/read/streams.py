"""Which streams are recorded, each as one `Stream` handle that every reader
takes.

A stream is one instrument's book at one depth. Its rows are keyed three
ways, by the table's age: `streams.id` keys the packed log and the tops
(schema 4); (instrument id, depth) keys checkpoints and the schema 1-3
tables; the instrument id alone keys trades. Collectors name it
`category:SYMBOL@depth` in their heartbeats (`records.StreamKey`). A `Stream`
carries all of them, resolved once (`list_streams`, `find_stream`), so no
reader looks an id up again.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from depthwatch.records import RPI_DEPTH, RPI_SIZES_DEPTH, StreamKey, depth_label


class NotRecorded(LookupError):
    """The requested instrument or stream has no recorded data."""


@dataclass(frozen=True)
class Stream:
    id: int  # streams.id
    instrument_id: int
    category: str
    symbol: str
    depth: int
    tick_size: float | None = None

    @property
    def stream_key(self) -> StreamKey:
        return StreamKey(self.category, self.symbol, self.depth)

    @property
    def key(self) -> str:
        """The stream's name as collectors write it in their heartbeats."""
        return str(self.stream_key)


_STREAMS = """SELECT s.id, s.instrument_id, i.category, i.symbol, s.depth, i.tick_size::float8
              FROM streams s JOIN instruments i ON i.id = s.instrument_id"""


def _stream(row: sa.Row) -> Stream:
    return Stream(int(row[0]), int(row[1]), row[2], row[3], int(row[4]), row[5])


def require_schema(conn: sa.Connection) -> None:
    """NotRecorded (one clear line) when the database holds no depthwatch
    schema: nothing was ever recorded into it."""
    if conn.execute(sa.text("SELECT to_regclass('book_chunks')")).scalar() is None:
        raise NotRecorded(
            "this database holds no depthwatch recording (no schema yet): "
            "record into it first (`depthwatch collect` or `depthwatch up`)"
        )


def list_streams(conn: sa.Connection) -> list[Stream]:
    """Every stream the collectors registered, by category, symbol and depth."""
    rows = conn.execute(sa.text(_STREAMS + " ORDER BY i.category, i.symbol, s.depth")).all()
    return [_stream(r) for r in rows]


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


def instrument_streams(conn: sa.Connection, iid: int) -> list[Stream]:
    """Every stream (depth) of one instrument, shallowest first."""
    rows = conn.execute(
        sa.text(_STREAMS + " WHERE s.instrument_id = :i ORDER BY s.depth"), {"i": iid}
    )
    return [_stream(r) for r in rows]


def find_stream(conn: sa.Connection, category: str, symbol: str, depth: int | None) -> Stream:
    """The stream of `symbol` at `depth`, or at the only depth with recorded
    book messages when `depth` is None (the RPI books aside, when one other is
    recorded); NotRecorded saying why otherwise."""
    iid = instrument_id(conn, category, symbol)
    candidates = instrument_streams(conn, iid)
    recorded = [s for s in candidates if _has_messages(conn, s)]
    depths = [s.depth for s in recorded]
    labels = ", ".join(map(depth_label, depths)) or "none"
    if depth is not None:
        if depth not in depths:
            raise NotRecorded(
                f"no depth-{depth_label(depth)} book recorded for {symbol}; recorded: {labels}"
            )
        return recorded[depths.index(depth)]
    if not recorded:
        raise NotRecorded(f"no order book recorded for {symbol}")
    # The RPI books (`--rpi`) sit beside an ordinary depth: alone, that one is meant.
    ordinary = [s for s in recorded if s.depth not in (RPI_DEPTH, RPI_SIZES_DEPTH)]
    if len(ordinary) == 1:
        return ordinary[0]
    if len(recorded) > 1:
        raise NotRecorded(f"{symbol} was recorded at depths {labels}: choose one with --depth")
    return recorded[0]


def _has_messages(conn: sa.Connection, stream: Stream) -> bool:
    """Whether the stream has recorded book messages (packed, in the schema
    1-3 log, or archived): index probes by stream id (a join on `streams` in
    the probe made PostgreSQL read every chunk of every depth)."""
    archived = (
        "OR EXISTS (SELECT 1 FROM archived_days WHERE stream_id = :s)"
        if conn.execute(sa.text("SELECT to_regclass('archived_days')")).scalar() is not None
        else ""
    )
    return bool(
        conn.execute(
            sa.text(
                f"""SELECT EXISTS (SELECT 1 FROM book_chunks WHERE stream_id = :s)
                        OR EXISTS (SELECT 1 FROM book_events
                                   WHERE instrument_id = :i AND depth = :d)
                        {archived}"""
            ),
            {"s": stream.id, "i": stream.instrument_id, "d": stream.depth},
        ).scalar()
    )
