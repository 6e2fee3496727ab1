"""Every reader of the schema 1-3 tables (`book_events`, `quotes`,
`depth_snapshots`): history recorded before the packed log, which the other
readers merge in. Removable as a unit once no database holds such rows.
Each returns the same records as its packed twin (rows.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from depthwatch.storage.read.cursor import stream_rows
from depthwatch.storage.read.frames import HEATMAP_COLUMNS, IMBALANCE_COLUMNS, frame
from depthwatch.storage.read.rows import (
    VOLUME_SAMPLE_CHUNKS,
    BookEventRow,
    BookView,
    LastQuote,
    LastRecorded,
    Steps,
    VolumeSample,
)
from depthwatch.storage.read.streams import Stream

if TYPE_CHECKING:
    import pandas as pd


def book_events(
    conn: sa.Connection, stream: Stream, from_us: int, end_us: int
) -> Iterator[BookEventRow]:
    rows = stream_rows(
        conn,
        """SELECT ts_us, local_us, u, seq, is_snapshot, bid_prices::text[], bid_sizes::text[],
                  ask_prices::text[], ask_sizes::text[]
           FROM book_events
           WHERE instrument_id = :i AND depth = :d AND ts_us >= :f AND ts_us < :e
           ORDER BY ts_us, seq, u, is_snapshot""",
        {"i": stream.instrument_id, "d": stream.depth, "f": from_us, "e": end_us},
    )
    for row in rows:
        yield BookEventRow(*row)


def quotes(
    conn: sa.Connection, stream: Stream, start_us: int, end_us: int
) -> Iterator[Sequence[Any]]:
    return stream_rows(
        conn,
        """SELECT ts_us, local_us, ask_size::text, ask_price::text, bid_price::text,
                  bid_size::text, u
           FROM quotes
           WHERE instrument_id = :i AND depth = :d AND ts_us >= :s AND ts_us < :e
           ORDER BY ts_us, u, local_us""",
        {"i": stream.instrument_id, "d": stream.depth, "s": start_us, "e": end_us},
    )


def last_recorded(conn: sa.Connection, stream: Stream) -> tuple[int, LastRecorded] | None:
    row = conn.execute(
        sa.text(
            """SELECT ts_us, local_us, u FROM book_events
               WHERE instrument_id = :i AND depth = :d
               ORDER BY ts_us DESC LIMIT 1"""
        ),
        {"i": stream.instrument_id, "d": stream.depth},
    ).one_or_none()
    if row is None:
        return None
    return int(row.ts_us), LastRecorded(int(row.local_us), int(row.u))


def last_quote(conn: sa.Connection, stream: Stream, since_us: int) -> LastQuote | None:
    row = conn.execute(
        sa.text(
            """SELECT ts_us, local_us, bid_price::float8, ask_price::float8,
                      bid_size::float8, ask_size::float8, bid_price::text, ask_price::text
               FROM quotes
               WHERE instrument_id = :i AND depth = :d AND ts_us >= :s
               ORDER BY ts_us DESC, u DESC LIMIT 1"""
        ),
        {"i": stream.instrument_id, "d": stream.depth, "s": since_us},
    ).first()
    return None if row is None else LastQuote(int(row[0]), int(row[1]), *row[2:])


def latest_book(conn: sa.Connection, stream: Stream, levels: int, since_us: int) -> BookView | None:
    row = conn.execute(
        sa.text(
            """SELECT ts_us, local_us, bid_prices[1:(:n)]::float8[], bid_sizes[1:(:n)]::float8[],
                      ask_prices[1:(:n)]::float8[], ask_sizes[1:(:n)]::float8[]
               FROM depth_snapshots
               WHERE instrument_id = :i AND depth = :d AND ts_us >= :s
               ORDER BY ts_us DESC LIMIT 1"""
        ),
        {"i": stream.instrument_id, "d": stream.depth, "s": since_us, "n": levels},
    ).first()
    if row is None:
        return None
    import pandas as pd  # the dashboard's: the exports never build a frame

    ts_us, local_us, bid_prices, bid_sizes, ask_prices, ask_sizes = row
    return BookView(
        int(ts_us),
        int(local_us),
        pd.DataFrame({"price": bid_prices, "size": bid_sizes}, dtype="float64"),
        pd.DataFrame({"price": ask_prices, "size": ask_sizes}, dtype="float64"),
    )


def heatmap_cells(
    conn: sa.Connection,
    stream: Stream,
    sql_filter: str,
    params: dict[str, object],
    levels: int,
    price_step: float,
) -> pd.DataFrame:
    """tops.heatmap_cells of the depth snapshots `sql_filter` picks (with
    `params`, :tb the time bucket in microseconds)."""
    # `sql_filter` is a literal of tops.heatmap_cells, never user input.
    rows = conn.execute(
        sa.text(
            f"""WITH cells AS (
                   SELECT d.ts_us, floor(l.price / :ps) AS pb, sum(l.size) AS size
                   FROM depth_snapshots d,
                        unnest((d.bid_prices[1:(:n)] || d.ask_prices[1:(:n)])::float8[],
                               (d.bid_sizes[1:(:n)] || d.ask_sizes[1:(:n)])::float8[])
                            AS l(price, size)
                   WHERE d.instrument_id = :i AND d.depth = :d AND {sql_filter}
                   GROUP BY d.ts_us, pb)
               SELECT (ts_us / :tb) * :tb / 1000.0, pb * :ps, max(size)
               FROM cells GROUP BY 1, 2 ORDER BY 1, 2"""
        ),
        {"i": stream.instrument_id, "d": stream.depth, "n": levels, "ps": price_step, **params},
    ).all()
    return frame(rows, HEATMAP_COLUMNS)


def imbalance(
    conn: sa.Connection, stream: Stream, sql_filter: str, params: dict[str, object], levels: int
) -> pd.DataFrame:
    """tops.imbalance_series of the depth snapshots `sql_filter` picks (with
    `params`, :b the bucket in microseconds)."""
    # `sql_filter` is a literal of tops.imbalance_series, never user input.
    rows = conn.execute(
        sa.text(
            f"""WITH s AS (
                   SELECT ts_us / :b AS bucket,
                          (SELECT sum(x) FROM unnest(bid_sizes[1:(:n)]::float8[]) x) AS bid,
                          (SELECT sum(x) FROM unnest(ask_sizes[1:(:n)]::float8[]) x) AS ask
                   FROM depth_snapshots
                   WHERE instrument_id = :i AND depth = :d AND {sql_filter})
               SELECT bucket * :b / 1000.0, avg(bid), avg(ask),
                      avg((bid - ask) / nullif(bid + ask, 0))
               FROM s GROUP BY bucket ORDER BY bucket"""
        ),
        {"i": stream.instrument_id, "d": stream.depth, "n": levels, **params},
    ).all()
    return frame(rows, IMBALANCE_COLUMNS)


def latency_steps(conn: sa.Connection, stream: Stream, start_us: int, end_us: int) -> Steps:
    steps = conn.execute(
        sa.text(
            """SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY ts_us - match_us),
                      percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY local_us - ts_us)
               FROM book_events
               WHERE instrument_id = :i AND depth = :d AND ts_us >= :s AND ts_us < :e"""
        ),
        {"i": stream.instrument_id, "d": stream.depth, "s": start_us, "e": end_us},
    ).one()
    return steps[0], steps[1]


def volume_sample(
    conn: sa.Connection, stream: Stream, start_us: int, end_us: int
) -> VolumeSample | None:
    """The same from the schema 1-3 log's newest messages in range (its
    quotes and snapshots are counted exactly)."""
    rows = conn.execute(
        sa.text(
            """SELECT cardinality(bid_prices) + cardinality(ask_prices), is_snapshot
               FROM book_events
               WHERE instrument_id = :i AND depth = :d AND ts_us >= :s AND ts_us < :e
               ORDER BY ts_us DESC LIMIT :n"""
        ),
        {
            "i": stream.instrument_id,
            "d": stream.depth,
            "s": start_us,
            "e": end_us,
            "n": VOLUME_SAMPLE_CHUNKS * 10,
        },
    ).all()
    if not rows:
        return None
    deltas = [int(n) for n, snap in rows if not snap]
    snaps = [int(n) for n, snap in rows if snap]
    return VolumeSample(
        len(rows),
        sum(deltas) / len(deltas) if deltas else 0.0,
        sum(snaps) / len(snaps) if snaps else None,
        0.0,
        0.0,
    )


def has_book_events(conn: sa.Connection, stream: Stream, start_us: int, end_us: int) -> bool:
    """Whether the schema 1-3 log holds a book message of the stream in [start, end)."""
    return _has_rows(conn, "book_events", stream, start_us, end_us)


def has_quotes(conn: sa.Connection, stream: Stream, start_us: int, end_us: int) -> bool:
    """Whether the schema 1-3 `quotes` table holds a quote of the stream in [start, end)."""
    return _has_rows(conn, "quotes", stream, start_us, end_us)


def _has_rows(conn: sa.Connection, table: str, stream: Stream, start_us: int, end_us: int) -> bool:
    # `table` is one of the two literals above, never user input.
    return bool(
        conn.execute(
            sa.text(
                f"""SELECT EXISTS (SELECT 1 FROM {table}
                                   WHERE instrument_id = :i AND depth = :d
                                     AND ts_us >= :s AND ts_us < :e)"""
            ),
            {"i": stream.instrument_id, "d": stream.depth, "s": start_us, "e": end_us},
        ).scalar()
    )
