"""The per-second tops (`top_seconds`) and the periodic top-N snapshots
(`top_snapshots`): what the live charts draw, bounded by the window, and what
an export of a range would hold, counted cheaply.

Every query has a `ts_us` range, so partition pruning and the primary key keep
its cost flat as history grows. Packed snapshots are decoded here (NumPy);
the schema 1-3 `depth_snapshots` and `quotes` are merged in (legacy.py, or a
UNION in the SQL)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from depthwatch.archive.log import CHUNKS
from depthwatch.records import SECOND_US
from depthwatch.storage.codec import decode_many
from depthwatch.storage.read import legacy
from depthwatch.storage.read.chunks import CLOCK_SKEW_US, RecordedTimes, volume_sample
from depthwatch.storage.read.cold import cold_log, greatest, least
from depthwatch.storage.read.frames import HEATMAP_COLUMNS, IMBALANCE_COLUMNS, TOP_COLUMNS, frame
from depthwatch.storage.read.rows import BookView, BookVolume, HeatmapGrid, VolumeSample
from depthwatch.storage.read.streams import Stream


def message_count(conn: sa.Connection, stream: Stream, start_us: int, end_us: int) -> int:
    """Book messages recorded with exchange time in [start, end), counted by
    the per-second tops (packed) and the schema 1-3 log."""
    return int(
        conn.execute(
            sa.text(
                """SELECT coalesce((SELECT sum(t.messages) FROM top_seconds t
                                    WHERE t.stream_id = :sid
                                      AND t.ts_us >= :s AND t.ts_us < :e), 0)
                        + (SELECT count(*) FROM book_events
                           WHERE instrument_id = :i AND depth = :d
                             AND ts_us >= :s AND ts_us < :e)"""
            ),
            {"sid": stream.id, "i": stream.instrument_id, "d": stream.depth}
            | {"s": start_us, "e": end_us},
        ).scalar_one()
    )


def top_series(
    conn: sa.Connection, stream: Stream, start_us: int, end_us: int, bucket_us: int
) -> pd.DataFrame:
    """Top of book per time bucket (TOP_COLUMNS): the last bid/ask/mid/spread
    of each bucket, the lowest bid, highest ask and widest spread within it,
    from the per-second tops (so buckets hold whole seconds: a bucket under a
    second gets a point only where a second starts) and the schema 1-3
    quotes. `max(ARRAY[ts, u, ...])` picks the bucket's last top in the same
    single pass as the min/max (PostgreSQL has no `last` aggregate)."""
    rows = conn.execute(
        sa.text(
            """WITH q AS (
                   SELECT t.ts_us / :b AS bucket, t.last_ts_us AS ts_us, t.last_u AS u,
                          t.bid, t.ask, t.bid_min, t.ask_max, t.spread_bps_max AS spread
                   FROM top_seconds t
                   WHERE t.stream_id = :sid AND t.ts_us >= :s AND t.ts_us < :e
                   UNION ALL
                   SELECT ts_us / :b, ts_us, u, bid, ask, bid, ask,
                          (ask - bid) / nullif(ask + bid, 0) * 20000
                   FROM (SELECT ts_us, u, bid_price::float8 AS bid, ask_price::float8 AS ask
                         FROM quotes
                         WHERE instrument_id = :i AND depth = :d
                           AND ts_us >= :s AND ts_us < :e) legacy),
               agg AS (
                   SELECT bucket,
                          max(ARRAY[ts_us, u, bid, ask]::float8[]) AS last,
                          min(bid_min) AS bid_min, max(ask_max) AS ask_max,
                          max(spread) AS spread_max
                   FROM q GROUP BY bucket)
               SELECT bucket * :b / 1000.0, last[3], last[4], bid_min, ask_max,
                      (last[3] + last[4]) / 2,
                      (last[4] - last[3]) / nullif(last[3] + last[4], 0) * 20000,
                      spread_max
               FROM agg ORDER BY bucket"""
        ),
        {"sid": stream.id, "i": stream.instrument_id, "d": stream.depth}
        | {"s": start_us, "e": end_us, "b": bucket_us},
    ).all()
    return frame(rows, TOP_COLUMNS)


@dataclass(frozen=True)
class _SnapshotLevels:
    """Packed top-N snapshots decoded in one pass (codec.decode_many), the
    best `levels` of each side kept, as flat arrays: per snapshot its ts and
    receive time; per level its snapshot (an index), side, price and size."""

    ts_us: np.ndarray
    local_us: np.ndarray
    snapshot: np.ndarray
    is_bid: np.ndarray
    prices: np.ndarray
    sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.ts_us)

    def stamped_every(self, step_us: int) -> _SnapshotLevels:
        """The snapshots stamped at multiples of `step_us`, with their levels."""
        keep = self.ts_us % step_us == 0
        renumbered = np.cumsum(keep) - 1
        levels = keep[self.snapshot]
        return _SnapshotLevels(
            self.ts_us[keep],
            self.local_us[keep],
            renumbered[self.snapshot[levels]],
            self.is_bid[levels],
            self.prices[levels],
            self.sizes[levels],
        )


# The snapshots of [:s, :e) stamped at multiples of :b (both logs' tables).
STAMPED_EVERY = "ts_us >= :s AND ts_us < :e AND ts_us % :b = 0"


@dataclass(frozen=True)
class PeriodicSnapshots:
    """The packed periodic snapshots stamped at multiples of `every_us` in
    [start, end), `levels` a side, decoded once for every reader of a view
    that wants them or a sparser subset (the Live page's imbalance and its
    long windows' heatmap: decoding them twice cost ~15 ms a read)."""

    start_us: int
    end_us: int
    every_us: int
    levels: int
    snapshots: _SnapshotLevels

    def pick(
        self, start_us: int, end_us: int, every_us: int, levels: int
    ) -> _SnapshotLevels | None:
        """Those stamped at multiples of `every_us` in [start, end), `levels` a
        side; None when this read does not hold them all."""
        same = (start_us, end_us, levels) == (self.start_us, self.end_us, self.levels)
        if not same or every_us % self.every_us:
            return None
        if every_us == self.every_us:
            return self.snapshots
        return self.snapshots.stamped_every(every_us)


def periodic_snapshots(
    conn: sa.Connection, stream: Stream, start_us: int, end_us: int, every_us: int, levels: int
) -> PeriodicSnapshots:
    params: dict[str, object] = {"s": start_us, "e": end_us, "b": every_us}
    snaps = _snapshots(conn, stream, STAMPED_EVERY, params, levels)
    return PeriodicSnapshots(start_us, end_us, every_us, levels, snaps)


def _snapshots(
    conn: sa.Connection, stream: Stream, sql_filter: str, params: dict[str, object], levels: int
) -> _SnapshotLevels:
    rows = conn.execute(
        sa.text(
            f"""SELECT ts_us, payload FROM top_snapshots WHERE stream_id = :sid AND {sql_filter}
                ORDER BY ts_us"""
        ),
        {"sid": stream.id, **params},
    ).all()
    ts = [int(r[0]) for r in rows]
    batch = decode_many([r[1] for r in rows], ts, [0] * len(rows))
    keep = batch.level_rank < levels
    return _SnapshotLevels(
        batch.ts_us,
        batch.local_us,
        batch.level_chunk[keep],  # a snapshot is a chunk of one message
        batch.level_is_bid[keep],
        batch.prices[keep],
        batch.sizes[keep],
    )


def latest_book(conn: sa.Connection, stream: Stream, levels: int, since_us: int) -> BookView | None:
    """The newest periodic top-N snapshot at or after `since_us`, `levels` per
    side: packed, or from the schema 1-3 table."""
    newest = _snapshots(
        conn,
        stream,
        """ts_us = (SELECT max(ts_us) FROM top_snapshots
                    WHERE stream_id = :sid AND ts_us >= :since)""",
        {"since": since_us},
        levels,
    )
    if len(newest):
        bid, ask = newest.is_bid, ~newest.is_bid
        return BookView(
            int(newest.ts_us[0]),
            int(newest.local_us[0]),
            pd.DataFrame({"price": newest.prices[bid], "size": newest.sizes[bid]}),
            pd.DataFrame({"price": newest.prices[ask], "size": newest.sizes[ask]}),
        )
    return legacy.latest_book(conn, stream, levels, since_us)


def heatmap_cells(
    conn: sa.Connection,
    stream: Stream,
    start_us: int,
    end_us: int,
    grid: HeatmapGrid,
    levels: int,
    shared: PeriodicSnapshots | None = None,
) -> pd.DataFrame:
    """HEATMAP_COLUMNS from the periodic top-N snapshots: per snapshot the size
    resting in each price bucket (summed over its levels, both sides), then the
    largest of those per time bucket (grid.cell_rule "max"), or, for long
    windows (cell_rule "last"), only the snapshot stamped at each bucket's start:
    one snapshot per column keeps a 60 min window as cheap as a 10 min one.
    Packed snapshots are decoded and bucketed here (or taken from `shared`
    when it holds them); schema 1-3 ones in SQL."""
    tb = int(grid.time_bucket_ms * 1000)
    # The same snapshots of both logs: the window's, or those stamped at a
    # bucket's start.
    which = "ts_us >= :s AND ts_us < :e AND (NOT :last OR ts_us % :tb = 0)"
    params: dict[str, object] = {
        "s": start_us,
        "e": end_us,
        "last": grid.cell_rule == "last",
        "tb": tb,
    }
    old = legacy.heatmap_cells(conn, stream, which, params, levels, grid.price_step)
    snaps = None
    if shared is not None and grid.cell_rule == "last":
        snaps = shared.pick(start_us, end_us, tb, levels)
    if snaps is None:
        snaps = _snapshots(conn, stream, which, params, levels)
    if not len(snaps):
        return old
    cells = pd.DataFrame(
        {
            "ts": snaps.ts_us[snaps.snapshot],
            "pb": np.floor(snaps.prices / grid.price_step),
            "size": snaps.sizes,
        }
    )
    per_snapshot = cells.groupby(["ts", "pb"], as_index=False)["size"].sum()
    per_snapshot["t_ms"] = (per_snapshot["ts"] // tb) * tb / 1000.0
    per_snapshot["price"] = per_snapshot["pb"] * grid.price_step
    packed = per_snapshot.groupby(["t_ms", "price"], as_index=False)["size"].max()
    both = pd.concat([old, packed[list(HEATMAP_COLUMNS)]], ignore_index=True)
    out = both.groupby(["t_ms", "price"], as_index=False)["size"].max()
    return out.astype("float64")[list(HEATMAP_COLUMNS)]


def price_step(low: float, high: float, tick: float | None, rows: int = 80) -> float:
    """A heatmap price bucket: about `rows` buckets over [low, high], a whole
    number of ticks when the tick is known, otherwise a 1-2-5 step."""
    raw = max(high - low, 0.0) / rows
    if tick and tick > 0:
        return tick * max(1, math.ceil(raw / tick - 1e-9))
    if raw <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw - 1e-12)


def imbalance_series(
    conn: sa.Connection,
    stream: Stream,
    start_us: int,
    end_us: int,
    levels: int,
    bucket_us: int,
    shared: PeriodicSnapshots | None = None,
) -> pd.DataFrame:
    """IMBALANCE_COLUMNS: resting size of the top `levels` bids and asks in the
    periodic snapshot stamped at each bucket's start (snapshots fall on whole
    intervals, so one per bucket; taken from `shared` when it holds them);
    imbalance = (b - a) / (b + a)."""
    # The same snapshots of both logs: those stamped at a bucket's start.
    params: dict[str, object] = {"s": start_us, "e": end_us, "b": bucket_us}
    old = legacy.imbalance(conn, stream, STAMPED_EVERY, params, levels)
    snaps = None if shared is None else shared.pick(start_us, end_us, bucket_us, levels)
    if snaps is None:
        snaps = _snapshots(conn, stream, STAMPED_EVERY, params, levels)
    if not len(snaps):
        return old
    count = len(snaps)
    bid = np.bincount(snaps.snapshot[snaps.is_bid], snaps.sizes[snaps.is_bid], count)
    ask = np.bincount(snaps.snapshot[~snaps.is_bid], snaps.sizes[~snaps.is_bid], count)
    total = bid + ask
    packed = pd.DataFrame(
        {
            "t_ms": snaps.ts_us // bucket_us * bucket_us / 1000.0,
            "bid_size": bid,
            "ask_size": ask,
            "imbalance": np.divide(
                bid - ask, total, out=np.full(len(total), np.nan), where=total != 0
            ),
        }
    )
    both = pd.concat([old, packed], ignore_index=True)
    out = both.groupby("t_ms", as_index=False).mean().sort_values("t_ms")
    return out.astype("float64")[list(IMBALANCE_COLUMNS)].reset_index(drop=True)


def recorded_span(conn: sa.Connection, stream: Stream) -> tuple[int, int] | None:
    """Exchange times of the first and last recorded second of a stream
    (packed per-second tops, or the schema 1-3 log: index probes; the first
    and last chunk of its cold days)."""
    row = conn.execute(
        sa.text(
            """SELECT least((SELECT min(ts_us) FROM top_seconds WHERE stream_id = :sid),
                            (SELECT min(ts_us) FROM book_events
                             WHERE instrument_id = :i AND depth = :d)),
                      greatest((SELECT max(ts_us) FROM top_seconds WHERE stream_id = :sid),
                               (SELECT max(ts_us) FROM book_events
                                WHERE instrument_id = :i AND depth = :d))"""
        ),
        {"sid": stream.id, "i": stream.instrument_id, "d": stream.depth},
    ).one()
    first, last = row
    cold = cold_log(conn, stream)
    if cold:
        first = least(first, cold.first_time(CHUNKS))
        last = greatest(last, cold.last_time(CHUNKS))
    return None if first is None or last is None else (int(first), int(last))


def recorded_from(conn: sa.Connection, stream: Stream, start_us: int, end_us: int) -> int | None:
    """Where the stream's record begins within [start, end) of receive time:
    None when it was recorded before `start`, or never (no first message to
    place); else its first message's receive time in the range, or `end` when
    it was first recorded after. Before a stream's first message nothing was
    missed (coverage clips there)."""
    span = recorded_span(conn, stream)
    if span is None:
        return None
    if span[0] + CLOCK_SKEW_US < start_us:  # exchange seconds; clearly before the range
        return None
    times = RecordedTimes(conn, stream)
    if times.last_at_or_before(start_us) is not None:
        return None
    first = times.first_after(start_us - 1, end_us)
    return end_us if first is None else first


def book_volume(
    conn: sa.Connection, stream: Stream, start_us: int, end_us: int, interval_us: int = 0
) -> BookVolume:
    """What an export of the stream over [start, end) would read; `interval_us`
    (a book_snapshot interval, 0 for none) sets what `buckets` counts: for an
    interval of whole seconds the distinct buckets holding a recorded second,
    else per second the fewer of its messages and the buckets it meets."""
    whole = interval_us >= SECOND_US and interval_us % SECOND_US == 0
    interval = interval_us if interval_us > 0 else SECOND_US
    # Buckets one second can meet: ceil(1 s / interval), one more if they straddle.
    per_second = -(-SECOND_US // interval) + (1 if SECOND_US % interval else 0)
    params = {
        "sid": stream.id,
        "i": stream.instrument_id,
        "d": stream.depth,
        "s": start_us,
        "e": end_us,
        "b": interval,
        "cap": per_second,
    }
    buckets_sql = (
        "count(DISTINCT ts_us / :b)" if whole else "coalesce(sum(least(messages, :cap)), 0)"
    )
    packed: Sequence[int | None] = conn.execute(
        sa.text(
            f"""SELECT coalesce(sum(messages), 0), count(*), min(ts_us), max(ts_us),
                       {buckets_sql}
                FROM top_seconds
                WHERE stream_id = :sid AND ts_us >= :s AND ts_us < :e"""
        ),
        params,
    ).one()
    old = conn.execute(
        sa.text(
            """SELECT count(*), count(*) FILTER (WHERE is_snapshot), min(ts_us), max(ts_us),
                      (SELECT count(*) FROM quotes
                       WHERE instrument_id = :i AND depth = :d AND ts_us >= :s AND ts_us < :e),
                      (SELECT count(*) FROM book_chunks
                       WHERE stream_id = :sid AND ts_us >= :s AND ts_us < :e AND snapshot),
                      EXISTS (SELECT 1 FROM book_chunks WHERE stream_id = :sid AND ts_us < :s)
                      OR EXISTS (SELECT 1 FROM book_events
                                 WHERE instrument_id = :i AND depth = :d AND ts_us < :s)
               FROM book_events
               WHERE instrument_id = :i AND depth = :d AND ts_us >= :s AND ts_us < :e"""
        ),
        params,
    ).one()
    messages, _, first, last, buckets = _ints(packed)
    cold_days = cold_log(conn, stream)
    cold = cold_days.volume(start_us, end_us)
    if cold.messages:
        messages = (messages or 0) + cold.messages
        buckets = (buckets or 0) + min(cold.messages, cold.span_us // interval + 1)
        first, last = least(first, cold.first_us), greatest(last, cold.last_us)
    legacy_messages, legacy_snapshots, legacy_first, legacy_last, legacy_quotes, snapshots = _ints(
        old[:6]
    )
    firsts = [t for t in (first, legacy_first) if t is not None]
    lasts = [t for t in (last, legacy_last) if t is not None]
    sample = volume_sample(conn, stream, start_us, end_us) if messages else None
    if sample is None and legacy_messages:
        sample = legacy.volume_sample(conn, stream, start_us, end_us)
    sample = sample or VolumeSample(0, 0.0, None, 0.0, 0.0)
    packed_snapshots = (snapshots or 0) + round((messages or 0) * sample.inner_snapshots)
    return BookVolume(
        messages=messages or 0,
        legacy_messages=legacy_messages or 0,
        snapshots=min(packed_snapshots, messages or 0) + (legacy_snapshots or 0),
        legacy_quotes=legacy_quotes or 0,
        buckets=(buckets or 0) + (legacy_messages or 0),
        first_us=min(firsts) if firsts else None,
        last_us=max(lasts) if lasts else None,
        sample_messages=sample.messages,
        delta_levels=sample.delta_levels,
        snapshot_levels=sample.snapshot_levels,
        new_quotes=sample.new_quotes,
        recorded_before=bool(old[6]) or bool(cold_days.days_in(0, start_us)),
    )


def _ints(row: Sequence[int | None]) -> list[int | None]:
    return [None if v is None else int(v) for v in row]
