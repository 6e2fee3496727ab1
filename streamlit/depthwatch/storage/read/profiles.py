"""Whole books as the dashboard draws them: the profiles (`book_profiles`,
records.BookProfile) re-aggregated in SQL into the price buckets of a chosen
range, so a book of 20,000 levels a side leaves the database as a hundred
numbers a side.

A profile's bucket k covers [k * step, (k + 1) * step); it goes whole into
the wider bucket holding its centre. Every query has a `ts_us` range (the
partition key) and a price range."""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from depthwatch.storage.read.frames import HEATMAP_COLUMNS, frame, plain_rows
from depthwatch.storage.read.rows import BookView, HeatmapGrid
from depthwatch.storage.read.streams import Stream

# Each side's buckets, unnested with their index on the profile's own grid
# (k), and the wider bucket (pb) of the caller's step that holds its centre.
_CELLS = """
    SELECT p.ts_us, p.local_us, true AS is_bid,
           floor((p.bid_first + x.i - 1 + 0.5) * p.step / :step)::bigint AS pb, x.size
    FROM book_profiles p, unnest(p.bid_sizes) WITH ORDINALITY AS x(size, i)
    WHERE p.stream_id = :sid AND {which} AND x.size > 0
    UNION ALL
    SELECT p.ts_us, p.local_us, false,
           floor((p.ask_first + x.i - 1 + 0.5) * p.step / :step)::bigint, x.size
    FROM book_profiles p, unnest(p.ask_sizes) WITH ORDINALITY AS x(size, i)
    WHERE p.stream_id = :sid AND {which} AND x.size > 0"""


def _range(low: float, high: float, step: float) -> dict[str, object]:
    return {"step": step, "lo": int(low // step), "hi": int(high // step)}


def profile_extent(
    conn: sa.Connection, stream: Stream, since_us: int
) -> tuple[float, float, float] | None:
    """(lowest bid, highest ask, step) of the newest profile at or after
    `since_us`, as bucket edges: the prices it can draw. None: no profile."""
    row = conn.execute(
        sa.text(
            """SELECT step,
                      CASE WHEN cardinality(bid_sizes) > 0 THEN bid_first * step
                           ELSE ask_first * step END,
                      CASE WHEN cardinality(ask_sizes) > 0
                           THEN (ask_first + cardinality(ask_sizes)) * step
                           ELSE (bid_first + cardinality(bid_sizes)) * step END
               FROM book_profiles
               WHERE stream_id = :sid AND ts_us >= :since
               ORDER BY ts_us DESC LIMIT 1"""
        ),
        {"sid": stream.id, "since": since_us},
    ).first()
    if row is None or row[1] is None or float(row[1]) >= float(row[2]):
        return None  # no profile, or an empty book
    return float(row[1]), float(row[2]), float(row[0])


def latest_profile(
    conn: sa.Connection, stream: Stream, since_us: int, low: float, high: float, step: float
) -> BookView | None:
    """The newest profile at or after `since_us`, its sizes summed per `step`
    bucket within [low, high], best first, each at the bucket edge nearer the
    mid. None: no profile in that time."""
    which = """p.ts_us = (SELECT max(ts_us) FROM book_profiles
                          WHERE stream_id = :sid AND ts_us >= :since)"""
    rows = conn.execute(
        sa.text(
            f"""SELECT max(ts_us), max(local_us), is_bid, pb, sum(size)::float8
                FROM ({_CELLS.format(which=which)}) c
                WHERE pb BETWEEN :lo AND :hi
                GROUP BY is_bid, pb"""
        ),
        {"sid": stream.id, "since": since_us, **_range(low, high, step)},
    ).all()
    if not rows:
        return None
    sides = pd.DataFrame(plain_rows(rows), columns=["ts_us", "local_us", "is_bid", "pb", "size"])
    # A bucket's bids all rest at or above its lower edge, its asks at or
    # below its upper edge: cumulative depth drawn there is never optimistic,
    # and a bucket holding both touches does not draw a crossed book.
    sides["price"] = (sides["pb"] + (~sides["is_bid"]).astype(int)) * step
    bids = sides[sides["is_bid"]].sort_values("price", ascending=False)
    asks = sides[~sides["is_bid"]].sort_values("price")
    return BookView(
        int(sides["ts_us"].max()),
        int(sides["local_us"].max()),
        bids[["price", "size"]].reset_index(drop=True).astype("float64"),
        asks[["price", "size"]].reset_index(drop=True).astype("float64"),
    )


def profile_cells(
    conn: sa.Connection,
    stream: Stream,
    start_us: int,
    end_us: int,
    grid: HeatmapGrid,
    low: float,
    high: float,
) -> pd.DataFrame:
    """HEATMAP_COLUMNS from the profiles in [start, end): per profile the size
    in each grid.price_step bucket within [low, high] (both sides), then per
    time bucket the largest ("max") or the first profile's ("last")."""
    tb = int(grid.time_bucket_ms * 1000)
    pick = "max(size)" if grid.cell_rule == "max" else "(array_agg(size ORDER BY ts_us))[1]"
    which = "p.ts_us >= :s AND p.ts_us < :e"
    rows = conn.execute(
        sa.text(
            f"""WITH per_profile AS (
                    SELECT ts_us, pb, sum(size)::float8 AS size
                    FROM ({_CELLS.format(which=which)}) c
                    WHERE pb BETWEEN :lo AND :hi
                    GROUP BY ts_us, pb)
                SELECT (ts_us / :tb) * :tb / 1000.0, pb * :step, {pick}
                FROM per_profile GROUP BY ts_us / :tb, pb ORDER BY 1, 2"""
        ),
        {"sid": stream.id, "s": start_us, "e": end_us, "tb": tb}
        | _range(low, high, grid.price_step),
    ).all()
    return frame(rows, HEATMAP_COLUMNS)
