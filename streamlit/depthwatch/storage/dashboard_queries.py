"""Read queries of the live dashboard: small, bounded by the window, aggregated in SQL.

Every query here is bounded by a time window on the partition key `ts_us` (or
by `local_us` on the small tables), so its cost does not grow with the history
stored. Results come back as pandas DataFrames of float64 with times as
milliseconds since the epoch (`t_ms`, UTC), which plotly draws on a date axis
and ships to the browser as typed arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from depthwatch.records import SECOND_US, StreamKey
from depthwatch.storage.codec import (
    SNAPSHOT,
    TOP_CHANGED,
    DecodedChunk,
    decode_chunk,
    decode_many,
    unit_text,
)
from depthwatch.storage.queries import stream_id

# Column contracts shared with the figure builders (depthwatch.app.figures).
TOP_COLUMNS = ("t_ms", "bid", "ask", "bid_min", "ask_max", "mid", "spread_bps", "spread_bps_max")
HEATMAP_COLUMNS = ("t_ms", "price", "size")
IMBALANCE_COLUMNS = ("t_ms", "bid_size", "ask_size", "imbalance")
TRADE_COLUMNS = ("t_ms", "price", "size", "side")
EVENT_COLUMNS = ("t_ms", "kind", "detail", "stream_level")


@dataclass(frozen=True)
class BookView:
    """The newest recorded top-N book of a stream (a periodic depth snapshot)."""

    ts_us: int  # exchange time the snapshot stands for
    local_us: int  # receive time of the last message applied before it
    bids: pd.DataFrame  # columns price, size (float64), best first
    asks: pd.DataFrame  # columns price, size (float64), best first


@dataclass(frozen=True)
class HeatmapGrid:
    """How heatmap cells were bucketed: cell (t, p) holds the largest resting
    size summed over [p, p + price_step) seen in [t, t + time_bucket_ms)."""

    time_bucket_ms: float
    price_step: float
    cell_rule: str = "max"  # what a cell shows of the snapshots in its time bucket


@dataclass(frozen=True)
class Span:
    """An interval in which the recorded book is not to be trusted or is missing."""

    start_ms: float
    end_ms: float
    cause: str  # e.g. "gap", "disconnect", "collector not running"


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


@dataclass(frozen=True)
class LastQuote:
    ts_us: int
    local_us: int
    bid: float | None
    ask: float | None
    bid_size: float | None
    ask_size: float | None
    bid_text: str | None = None  # the exchange's own digits, for display
    ask_text: str | None = None


@dataclass(frozen=True)
class HeartbeatView:
    """The newest heartbeat of the collector recording a stream."""

    collector: str
    local_us: int
    interval_s: float
    simulated: bool
    valid: bool  # the stream's book was valid at that heartbeat


_TEXT_COLUMNS = frozenset({"kind", "detail", "side", "stream_level", "collector"})


def _frame(rows: Sequence[Sequence[object]], columns: Sequence[str]) -> pd.DataFrame:
    if not _TEXT_COLUMNS.intersection(columns):
        # All numbers: one numpy conversion costs a fraction of building the
        # frame record by record (measured: most of a 25,000-cell heatmap read).
        values = np.array(rows, dtype=np.float64).reshape(len(rows), len(columns))
        return pd.DataFrame(values, columns=list(columns))
    frame = pd.DataFrame.from_records(list(rows), columns=list(columns))
    for column in columns:
        if column not in _TEXT_COLUMNS:
            frame[column] = frame[column].astype("float64")
    return frame


def list_streams(conn: sa.Connection) -> list[StreamRow]:
    rows = conn.execute(
        sa.text(
            """SELECT s.instrument_id, i.category, i.symbol, s.depth, i.tick_size::float8
               FROM streams s JOIN instruments i ON i.id = s.instrument_id
               ORDER BY i.category, i.symbol, s.depth"""
        )
    ).all()
    return [StreamRow(int(r[0]), r[1], r[2], int(r[3]), r[4]) for r in rows]


def last_quote(conn: sa.Connection, iid: int, depth: int, since_us: int) -> LastQuote | None:
    """The newest top of book at or after `since_us`: the top after the last
    message of the newest packed chunks (a backward index scan of the newest
    partitions), or of the schema 1-3 quotes."""
    sid = stream_id(conn, iid, depth)
    packed = _last_packed_quote(conn, sid, since_us) if sid is not None else None
    return packed or _last_legacy_quote(conn, iid, depth, since_us)


def _newest_chunks(
    conn: sa.Connection, sid: int, since_us: int
) -> list[tuple[int, int, DecodedChunk]]:
    """The chunks of the stream's newest second at or after `since_us` (two
    collectors may have cut it differently), decoded."""
    newest = conn.execute(
        sa.text("SELECT max(ts_us) FROM book_chunks WHERE stream_id = :s AND ts_us >= :f"),
        {"s": sid, "f": since_us},
    ).scalar()
    if newest is None:
        return []
    rows = conn.execute(
        sa.text("SELECT ts_us, u, payload FROM book_chunks WHERE stream_id = :s AND ts_us >= :f"),
        {"s": sid, "f": max(since_us, int(newest) - int(newest) % SECOND_US)},
    ).all()
    return [(int(ts), int(u), decode_chunk(payload, int(ts), int(u))) for ts, u, payload in rows]


def _last_packed_quote(conn: sa.Connection, sid: int, since_us: int) -> LastQuote | None:
    chunks = [chunk for *_, chunk in _newest_chunks(conn, sid, since_us) if len(chunk)]
    if not chunks:
        return None
    chunk = max(chunks, key=lambda c: (int(c.ts_us[-1]), int(c.u[-1])))
    # Every chunk's first message carries the top, so the last message has one.
    bid, bid_size, ask, ask_size = chunk.tops[chunk.top_of[-1]].tolist()
    pe, se = chunk.price_exp, chunk.size_exp
    return LastQuote(
        int(chunk.ts_us[-1]),
        int(chunk.local_us[-1]),
        bid / 10**pe if bid else None,
        ask / 10**pe if ask else None,
        bid_size / 10**se if bid else None,
        ask_size / 10**se if ask else None,
        unit_text(bid, pe) if bid else None,
        unit_text(ask, pe) if ask else None,
    )


def _last_legacy_quote(
    conn: sa.Connection, iid: int, depth: int, since_us: int
) -> LastQuote | None:
    row = conn.execute(
        sa.text(
            """SELECT ts_us, local_us, bid_price::float8, ask_price::float8,
                      bid_size::float8, ask_size::float8, bid_price::text, ask_price::text
               FROM quotes
               WHERE instrument_id = :i AND depth = :d AND ts_us >= :s
               ORDER BY ts_us DESC, u DESC LIMIT 1"""
        ),
        {"i": iid, "d": depth, "s": since_us},
    ).first()
    return None if row is None else LastQuote(int(row[0]), int(row[1]), *row[2:])


def message_count(conn: sa.Connection, iid: int, depth: int, start_us: int, end_us: int) -> int:
    """Book messages recorded with exchange time in [start, end), counted by
    the per-second tops (packed) and the schema 1-3 log."""
    return int(
        conn.execute(
            sa.text(
                """SELECT coalesce((SELECT sum(t.messages) FROM top_seconds t
                                    JOIN streams s ON s.id = t.stream_id
                                    WHERE s.instrument_id = :i AND s.depth = :d
                                      AND t.ts_us >= :s AND t.ts_us < :e), 0)
                        + (SELECT count(*) FROM book_events
                           WHERE instrument_id = :i AND depth = :d
                             AND ts_us >= :s AND ts_us < :e)"""
            ),
            {"i": iid, "d": depth, "s": start_us, "e": end_us},
        ).scalar_one()
    )


def top_series(
    conn: sa.Connection, iid: int, depth: int, start_us: int, end_us: int, bucket_us: int
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
                   FROM top_seconds t JOIN streams s ON s.id = t.stream_id
                   WHERE s.instrument_id = :i AND s.depth = :d
                     AND t.ts_us >= :s AND t.ts_us < :e
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
        {"i": iid, "d": depth, "s": start_us, "e": end_us, "b": bucket_us},
    ).all()
    return _frame(rows, TOP_COLUMNS)


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


def _snapshots(
    conn: sa.Connection, sid: int, sql_filter: str, params: dict[str, object], levels: int
) -> _SnapshotLevels:
    rows = conn.execute(
        sa.text(
            f"""SELECT ts_us, payload FROM top_snapshots WHERE stream_id = :sid AND {sql_filter}
                ORDER BY ts_us"""
        ),
        {"sid": sid, **params},
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


def latest_book(
    conn: sa.Connection, iid: int, depth: int, levels: int, since_us: int
) -> BookView | None:
    """The newest periodic top-N snapshot at or after `since_us`, `levels` per
    side: packed, or from the schema 1-3 table."""
    sid = stream_id(conn, iid, depth)
    if sid is not None:
        newest = _snapshots(
            conn,
            sid,
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
    return _legacy_latest_book(conn, iid, depth, levels, since_us)


def _legacy_latest_book(
    conn: sa.Connection, iid: int, depth: int, levels: int, since_us: int
) -> BookView | None:
    row = conn.execute(
        sa.text(
            """SELECT ts_us, local_us, bid_prices[1:(:n)]::float8[], bid_sizes[1:(:n)]::float8[],
                      ask_prices[1:(:n)]::float8[], ask_sizes[1:(:n)]::float8[]
               FROM depth_snapshots
               WHERE instrument_id = :i AND depth = :d AND ts_us >= :s
               ORDER BY ts_us DESC LIMIT 1"""
        ),
        {"i": iid, "d": depth, "s": since_us, "n": levels},
    ).first()
    if row is None:
        return None
    ts_us, local_us, bid_prices, bid_sizes, ask_prices, ask_sizes = row
    return BookView(
        int(ts_us),
        int(local_us),
        pd.DataFrame({"price": bid_prices, "size": bid_sizes}, dtype="float64"),
        pd.DataFrame({"price": ask_prices, "size": ask_sizes}, dtype="float64"),
    )


def heatmap_cells(
    conn: sa.Connection,
    iid: int,
    depth: int,
    start_us: int,
    end_us: int,
    grid: HeatmapGrid,
    levels: int,
) -> pd.DataFrame:
    """HEATMAP_COLUMNS from the periodic top-N snapshots: per snapshot the size
    resting in each price bucket (summed over its levels, both sides), then the
    largest of those per time bucket (grid.cell_rule "max"), or, for long
    windows (cell_rule "last"), only the snapshot stamped at each bucket's start:
    one snapshot per column keeps a 60 min window as cheap as a 10 min one.
    Packed snapshots are decoded and bucketed here; schema 1-3 ones in SQL."""
    legacy = _legacy_heatmap_cells(conn, iid, depth, start_us, end_us, grid, levels)
    sid = stream_id(conn, iid, depth)
    if sid is None:
        return legacy
    tb = int(grid.time_bucket_ms * 1000)
    snaps = _snapshots(
        conn,
        sid,
        "ts_us >= :s AND ts_us < :e AND (NOT :last OR ts_us % :tb = 0)",
        {"s": start_us, "e": end_us, "last": grid.cell_rule == "last", "tb": tb},
        levels,
    )
    if not len(snaps):
        return legacy
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
    both = pd.concat([legacy, packed[list(HEATMAP_COLUMNS)]], ignore_index=True)
    out = both.groupby(["t_ms", "price"], as_index=False)["size"].max()
    return out.astype("float64")[list(HEATMAP_COLUMNS)]


def _legacy_heatmap_cells(
    conn: sa.Connection,
    iid: int,
    depth: int,
    start_us: int,
    end_us: int,
    grid: HeatmapGrid,
    levels: int,
) -> pd.DataFrame:
    rows = conn.execute(
        sa.text(
            """WITH cells AS (
                   SELECT d.ts_us, floor(l.price / :ps) AS pb, sum(l.size) AS size
                   FROM depth_snapshots d,
                        unnest((d.bid_prices[1:(:n)] || d.ask_prices[1:(:n)])::float8[],
                               (d.bid_sizes[1:(:n)] || d.ask_sizes[1:(:n)])::float8[])
                            AS l(price, size)
                   WHERE d.instrument_id = :i AND d.depth = :d
                     AND d.ts_us >= :s AND d.ts_us < :e
                     AND (NOT :last OR d.ts_us % :tb = 0)
                   GROUP BY d.ts_us, pb)
               SELECT (ts_us / :tb) * :tb / 1000.0, pb * :ps, max(size)
               FROM cells GROUP BY 1, 2 ORDER BY 1, 2"""
        ),
        {
            "i": iid,
            "d": depth,
            "s": start_us,
            "e": end_us,
            "n": levels,
            "ps": grid.price_step,
            "tb": int(grid.time_bucket_ms * 1000),
            "last": grid.cell_rule == "last",
        },
    ).all()
    return _frame(rows, HEATMAP_COLUMNS)


def imbalance_series(
    conn: sa.Connection,
    iid: int,
    depth: int,
    start_us: int,
    end_us: int,
    levels: int,
    bucket_us: int,
) -> pd.DataFrame:
    """IMBALANCE_COLUMNS: resting size of the top `levels` bids and asks in the
    periodic snapshot stamped at each bucket's start (snapshots fall on whole
    intervals, so one per bucket); imbalance = (b - a) / (b + a)."""
    legacy = _legacy_imbalance(conn, iid, depth, start_us, end_us, levels, bucket_us)
    sid = stream_id(conn, iid, depth)
    if sid is None:
        return legacy
    snaps = _snapshots(
        conn,
        sid,
        "ts_us >= :s AND ts_us < :e AND ts_us % :b = 0",
        {"s": start_us, "e": end_us, "b": bucket_us},
        levels,
    )
    if not len(snaps):
        return legacy
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
    both = pd.concat([legacy, packed], ignore_index=True)
    out = both.groupby("t_ms", as_index=False).mean().sort_values("t_ms")
    return out.astype("float64")[list(IMBALANCE_COLUMNS)].reset_index(drop=True)


def _legacy_imbalance(
    conn: sa.Connection,
    iid: int,
    depth: int,
    start_us: int,
    end_us: int,
    levels: int,
    bucket_us: int,
) -> pd.DataFrame:
    rows = conn.execute(
        sa.text(
            """WITH s AS (
                   SELECT ts_us / :b AS bucket,
                          (SELECT sum(x) FROM unnest(bid_sizes[1:(:n)]::float8[]) x) AS bid,
                          (SELECT sum(x) FROM unnest(ask_sizes[1:(:n)]::float8[]) x) AS ask
                   FROM depth_snapshots
                   WHERE instrument_id = :i AND depth = :d AND ts_us >= :s AND ts_us < :e
                     AND ts_us % :b = 0)
               SELECT bucket * :b / 1000.0, avg(bid), avg(ask),
                      avg((bid - ask) / nullif(bid + ask, 0))
               FROM s GROUP BY bucket ORDER BY bucket"""
        ),
        {"i": iid, "d": depth, "s": start_us, "e": end_us, "n": levels, "b": bucket_us},
    ).all()
    return _frame(rows, IMBALANCE_COLUMNS)


def recent_trades(
    conn: sa.Connection, iid: int, start_us: int, end_us: int, limit: int
) -> pd.DataFrame:
    """TRADE_COLUMNS: the newest `limit` trades of the window, oldest first."""
    rows = conn.execute(
        sa.text(
            """SELECT * FROM (
                   SELECT ts_us / 1000.0 AS t_ms, price::float8, size::float8, side
                   FROM trades
                   WHERE instrument_id = :i AND ts_us >= :s AND ts_us < :e
                   ORDER BY ts_us DESC LIMIT :l) t
               ORDER BY t_ms"""
        ),
        {"i": iid, "s": start_us, "e": end_us, "l": limit},
    ).all()
    return _frame(rows, TRADE_COLUMNS)


def stream_events(
    conn: sa.Connection, stream: StreamRow, start_us: int, end_us: int, limit: int = 500
) -> pd.DataFrame:
    """EVENT_COLUMNS: the stream's own feed events (gap, resync, restart,
    book_lost, recovered, anomaly) and its category's connection events
    (connect, disconnect, stall, malformed) received in [start, end)."""
    rows = conn.execute(
        sa.text(
            """SELECT * FROM (
                   SELECT local_us / 1000.0 AS t_ms, kind, detail, symbol IS NOT NULL, id
                   FROM feed_events
                   WHERE local_us >= :s AND local_us < :e AND category = :c
                     AND ((symbol = :sym AND (depth = :d OR depth IS NULL)) OR symbol IS NULL)
                   ORDER BY local_us DESC, id DESC LIMIT :l) ev
               ORDER BY t_ms, id"""
        ),
        {
            "s": start_us,
            "e": end_us,
            "c": stream.category,
            "sym": stream.symbol,
            "d": stream.depth,
            "l": limit,
        },
    ).all()
    return _frame([r[:4] for r in rows], EVENT_COLUMNS)


def heartbeat_times(conn: sa.Connection, stream_key: str, start_us: int, end_us: int) -> np.ndarray:
    """Times (ms) of the heartbeats of collectors recording the stream."""
    rows = conn.execute(
        sa.text(
            """SELECT local_us / 1000.0 FROM collector_heartbeats
               WHERE local_us >= :s AND local_us < :e AND :k = ANY(streams)
               ORDER BY local_us"""
        ),
        {"s": start_us, "e": end_us, "k": stream_key},
    ).scalars()
    return np.fromiter(rows, dtype="float64")


def last_heartbeat(conn: sa.Connection, stream_key: str, since_us: int) -> HeartbeatView | None:
    row = conn.execute(
        sa.text(
            """SELECT collector, local_us, interval_s, simulated, :k = ANY(valid_streams)
               FROM collector_heartbeats
               WHERE local_us >= :s AND :k = ANY(streams)
               ORDER BY local_us DESC LIMIT 1"""
        ),
        {"s": since_us, "k": stream_key},
    ).first()
    return None if row is None else HeartbeatView(row[0], int(row[1]), *row[2:])


def simulated_in(conn: sa.Connection, stream_key: str, start_us: int, end_us: int) -> bool:
    """Whether any of the window's data came from a simulated collector."""
    return bool(
        conn.execute(
            sa.text(
                """SELECT EXISTS (SELECT 1 FROM collector_heartbeats
                                  WHERE local_us >= :s AND local_us < :e
                                    AND simulated AND :k = ANY(streams))"""
            ),
            {"s": start_us, "e": end_us, "k": stream_key},
        ).scalar()
    )


@dataclass(frozen=True)
class Latency:
    """p50/p99 in milliseconds of each step a message takes before it is stored."""

    match_to_push: tuple[float, float] | None  # cts -> ts
    push_to_receive: tuple[float, float] | None  # ts -> local receive
    receive_to_commit: tuple[float, float] | None  # from the collectors' heartbeats


# The exchange-side latency steps come from the newest this many packed chunks
# of the window (decoded here): a sample of recent messages, not all of them,
# so the health page's read stays small whatever the message rate.
LATENCY_SAMPLE_CHUNKS = 400


def latency(conn: sa.Connection, stream: StreamRow, start_us: int, end_us: int) -> Latency:
    """Exchange-side steps from the window's book messages (packed: the newest
    LATENCY_SAMPLE_CHUNKS chunks; else the schema 1-3 log); receive-to-commit
    from the heartbeats (median of their p50s, worst of their p99s)."""
    sid = stream_id(conn, stream.instrument_id, stream.depth)
    steps = _packed_latency_steps(conn, sid, start_us, end_us) if sid is not None else None
    if steps is None:
        steps = _legacy_latency_steps(conn, stream, start_us, end_us)
    commit = conn.execute(
        sa.text(
            """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY commit_p50_ms),
                      max(commit_p99_ms)
               FROM collector_heartbeats
               WHERE local_us >= :s AND local_us < :e AND :k = ANY(streams)"""
        ),
        {"s": start_us, "e": end_us, "k": stream.key},
    ).one()

    def ms(pair: Sequence[float] | None) -> tuple[float, float] | None:
        return None if pair is None else (pair[0] / 1000, pair[1] / 1000)

    return Latency(
        ms(steps[0]),
        ms(steps[1]),
        None if commit[0] is None else (float(commit[0]), float(commit[1])),
    )


Steps = tuple[Sequence[float] | None, Sequence[float] | None]


def _packed_latency_steps(
    conn: sa.Connection, sid: int, start_us: int, end_us: int
) -> Steps | None:
    rows = conn.execute(
        sa.text(
            """SELECT ts_us, u, payload FROM book_chunks
               WHERE stream_id = :sid AND ts_us >= :s AND ts_us < :e
               ORDER BY ts_us DESC LIMIT :n"""
        ),
        {"sid": sid, "s": start_us, "e": end_us, "n": LATENCY_SAMPLE_CHUNKS},
    ).all()
    if not rows:
        return None
    batch = decode_many(
        [r[2] for r in rows], [int(r[0]) for r in rows], [int(r[1]) for r in rows], levels=False
    )
    ts, match, local = batch.ts_us, batch.match_us, batch.local_us
    inside = (ts >= start_us) & (ts < end_us)
    with_match = inside & (match >= 0)

    def quantiles(values: np.ndarray) -> list[float] | None:
        # percentile_cont's interpolation, as the SQL of the schema 1-3 log.
        return np.quantile(values, [0.5, 0.99]).tolist() if len(values) else None

    return quantiles(ts[with_match] - match[with_match]), quantiles(local[inside] - ts[inside])


def _legacy_latency_steps(
    conn: sa.Connection, stream: StreamRow, start_us: int, end_us: int
) -> Steps:
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


def event_counts(conn: sa.Connection, since_us: int) -> dict[tuple[str, str, int], dict[str, int]]:
    """Per stream (category, symbol, depth) and kind, the feed events received
    since `since_us`; connection-wide events (no symbol) are left out."""
    rows = conn.execute(
        sa.text(
            """SELECT category, symbol, depth, kind, count(*) FROM feed_events
               WHERE local_us >= :s AND symbol IS NOT NULL
               GROUP BY category, symbol, depth, kind"""
        ),
        {"s": since_us},
    ).all()
    counts: dict[tuple[str, str, int], dict[str, int]] = {}
    for category, symbol, depth, kind, count in rows:
        counts.setdefault((category, symbol, depth), {})[kind] = int(count)
    return counts


# ---- health page


def collectors(conn: sa.Connection, since_us: int) -> pd.DataFrame:
    """The newest heartbeat of every collector heard from since `since_us`."""
    rows = conn.execute(
        sa.text(
            """SELECT DISTINCT ON (collector)
                      collector, host, pid, version, started_us, local_us, interval_s, simulated,
                      endpoint, retention_days, messages, messages_per_s, pending_rows,
                      flush_failures, commit_p50_ms, commit_p99_ms,
                      array_to_string(streams, ', ') AS streams,
                      cardinality(valid_streams) AS valid, cardinality(streams) AS total
               FROM collector_heartbeats
               WHERE local_us >= :s
               ORDER BY collector, local_us DESC"""
        ),
        {"s": since_us},
    )
    return pd.DataFrame(rows.all(), columns=list(rows.keys()))


def commit_p99_ms(conn: sa.Connection, collector: str, since_us: int) -> float | None:
    """A collector's worst per-heartbeat receive-to-commit p99 since `since_us`."""
    value = conn.execute(
        sa.text(
            """SELECT max(commit_p99_ms) FROM collector_heartbeats
               WHERE collector = :c AND local_us >= :s"""
        ),
        {"c": collector, "s": since_us},
    ).scalar()
    return None if value is None else float(value)


SIZED_TABLES = (
    "book_chunks",
    "top_seconds",
    "top_snapshots",
    "book_events",
    "quotes",
    "depth_snapshots",
    "book_checkpoints",
    "trades",
    "feed_events",
    "collector_heartbeats",
    "instruments",
    "streams",
)


def table_sizes(conn: sa.Connection) -> pd.DataFrame:
    """Bytes on disk per table, partitions and indexes included."""
    rows = conn.execute(
        sa.text(
            # pg_partition_tree lists a partitioned table's parts; a plain table
            # gets no rows there and is sized directly.
            """SELECT t.name,
                      coalesce((SELECT sum(pg_total_relation_size(p.relid))
                                FROM pg_partition_tree(to_regclass(t.name)) p),
                               pg_total_relation_size(to_regclass(t.name)))::bigint
               FROM unnest(CAST(:tables AS text[])) AS t(name)
               ORDER BY 2 DESC"""
        ),
        {"tables": list(SIZED_TABLES)},
    ).all()
    return pd.DataFrame(rows, columns=["table", "bytes"])


def oldest_snapshot_us(conn: sa.Connection, partitions: list[str]) -> int | None:
    """Exchange time of the oldest periodic snapshot, looked up partition by
    partition from the oldest (the first non-empty one answers)."""
    quote = conn.dialect.identifier_preparer.quote_identifier
    for name in partitions:
        value = conn.execute(
            # A table name cannot be a bound parameter. The names come from the
            # catalogue (schema.partition_name), and are quoted anyway: whatever
            # a caller passes is one identifier, never more SQL.
            sa.text(f"SELECT min(ts_us) FROM {quote(name)}")
        ).scalar()
        if value is not None:
            return int(value)
    return None


# ---- history page: what an export of [start, end) would hold, counted cheaply
#
# Counting an export's rows exactly means decoding every chunk of the range,
# which is the export itself. The History page instead reads what is already
# aggregated: messages per second from `top_seconds` (one primary-key range,
# 86,400 rows a day per stream), snapshot chunks through the primary key,
# levels per message and the share of messages that make a new quote from a
# sample of the range's newest chunks, trades by an index count stopped at a
# cap. The schema 1-3 log is counted the same way (index counts).

VOLUME_SAMPLE_CHUNKS = 200  # ~2,400 messages at 50 msg/s: a few ms to decode
TRADE_COUNT_CAP = 100_000  # beyond it the count is extrapolated from the trades' pace


@dataclass(frozen=True)
class BookVolume:
    """A stream's recorded book messages with exchange time in [start, end).
    `messages` (packed) and `legacy_messages` (schema 1-3) are exact when
    start and end are whole seconds (top_seconds counts whole seconds);
    `buckets` is an upper bound of the interval buckets holding a message;
    the sample's means stand for the whole range."""

    messages: int
    legacy_messages: int
    snapshots: int  # snapshot messages, both logs (packed: chunks opening with one, + ≈ others)
    legacy_quotes: int  # schema 1-3 quote rows: exact
    buckets: int
    first_us: int | None  # the first and last recorded second (or legacy message) in range
    last_us: int | None
    sample_messages: int
    delta_levels: float  # mean levels (both sides) of a delta message in the sample
    snapshot_levels: float | None  # mean levels of a snapshot message; None: none sampled
    new_quotes: float  # share of the sample's messages that made a new top of book
    recorded_before: bool = False  # messages before `start`: an L2 export opens with the book

    @property
    def total_messages(self) -> int:
        return self.messages + self.legacy_messages


def book_volume(
    conn: sa.Connection, iid: int, depth: int, start_us: int, end_us: int, interval_us: int = 0
) -> BookVolume:
    """What an export of the stream over [start, end) would read; `interval_us`
    (a book_snapshot interval, 0 for none) sets what `buckets` counts: for an
    interval of whole seconds the distinct buckets holding a recorded second,
    else per second the fewer of its messages and the buckets it meets."""
    sid = stream_id(conn, iid, depth)
    whole = interval_us >= SECOND_US and interval_us % SECOND_US == 0
    interval = interval_us if interval_us > 0 else SECOND_US
    # Buckets one second can meet: ceil(1 s / interval), one more if they straddle.
    per_second = -(-SECOND_US // interval) + (1 if SECOND_US % interval else 0)
    params = {
        "sid": sid,
        "i": iid,
        "d": depth,
        "s": start_us,
        "e": end_us,
        "b": interval,
        "cap": per_second,
    }
    buckets_sql = (
        "count(DISTINCT ts_us / :b)" if whole else "coalesce(sum(least(messages, :cap)), 0)"
    )
    packed: Sequence[int | None] = (0, 0, None, None, 0)
    if sid is not None:
        packed = conn.execute(
            sa.text(
                f"""SELECT coalesce(sum(messages), 0), count(*), min(ts_us), max(ts_us),
                           {buckets_sql}
                    FROM top_seconds
                    WHERE stream_id = :sid AND ts_us >= :s AND ts_us < :e"""
            ),
            params,
        ).one()
    legacy = conn.execute(
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
    legacy_messages, legacy_snapshots, legacy_first, legacy_last, legacy_quotes, snapshots = _ints(
        legacy[:6]
    )
    firsts = [t for t in (first, legacy_first) if t is not None]
    lasts = [t for t in (last, legacy_last) if t is not None]
    sample = _volume_sample(conn, sid, start_us, end_us) if sid is not None and messages else None
    if sample is None and legacy_messages:
        sample = _legacy_volume_sample(conn, iid, depth, start_us, end_us)
    sample = sample or _Sample(0, 0.0, None, 0.0, 0.0)
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
        recorded_before=bool(legacy[6]),
    )


def _ints(row: Sequence[int | None]) -> list[int | None]:
    return [None if v is None else int(v) for v in row]


@dataclass(frozen=True)
class _Sample:
    messages: int
    delta_levels: float
    snapshot_levels: float | None
    new_quotes: float  # share of the messages that made a new top of book
    # Share of the messages that are snapshots not opening their chunk (the
    # chunks' `snapshot` flags count only the others): a depth-1 stream is
    # all snapshots, a deeper one has them only at (re)subscriptions.
    inner_snapshots: float


def _volume_sample(conn: sa.Connection, sid: int, start_us: int, end_us: int) -> _Sample | None:
    """The newest VOLUME_SAMPLE_CHUNKS chunks of the range, decoded without
    their levels: levels per message (deltas and snapshots apart), the share
    of messages whose top differs from the quote before (the quotes export's
    rule), the share of snapshots inside chunks; repeats of two collectors'
    chunks counted once."""
    rows = conn.execute(
        sa.text(
            """SELECT ts_us, u, payload FROM book_chunks
               WHERE stream_id = :sid AND ts_us >= :s AND ts_us < :e
               ORDER BY ts_us DESC LIMIT :n"""
        ),
        {"sid": sid, "s": start_us, "e": end_us, "n": VOLUME_SAMPLE_CHUNKS},
    ).all()
    if not rows:
        return None
    batch = decode_many(
        [r[2] for r in rows], [int(r[0]) for r in rows], [int(r[1]) for r in rows], levels=False
    )
    is_snapshot = (batch.flags & SNAPSHOT) != 0
    opens_chunk = np.ones(len(batch.msg_chunk), dtype=bool)
    opens_chunk[1:] = batch.msg_chunk[1:] != batch.msg_chunk[:-1]
    order = np.lexsort((is_snapshot, batch.u, batch.ts_us))
    ts, u, snap = batch.ts_us[order], batch.u[order], is_snapshot[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (ts[1:] != ts[:-1]) | (u[1:] != u[:-1]) | (snap[1:] != snap[:-1])
    order = order[first]
    if not len(order):
        return None
    levels = (batch.nb + batch.na)[order]
    snapshot = is_snapshot[order]
    flagged = order[(batch.flags[order] & TOP_CHANGED) != 0]
    tops = batch.tops[batch.top_of[flagged]]
    new = int(len(tops) > 0) + int(np.any(tops[1:] != tops[:-1], axis=1).sum())
    inner = int((snapshot & ~opens_chunk[order]).sum())
    return _Sample(
        len(order),
        float(levels[~snapshot].mean()) if (~snapshot).any() else 0.0,
        float(levels[snapshot].mean()) if snapshot.any() else None,
        new / len(order),
        inner / len(order),
    )


def _legacy_volume_sample(
    conn: sa.Connection, iid: int, depth: int, start_us: int, end_us: int
) -> _Sample | None:
    """The same from the schema 1-3 log's newest messages in range (its
    quotes and snapshots are counted exactly)."""
    rows = conn.execute(
        sa.text(
            """SELECT cardinality(bid_prices) + cardinality(ask_prices), is_snapshot
               FROM book_events
               WHERE instrument_id = :i AND depth = :d AND ts_us >= :s AND ts_us < :e
               ORDER BY ts_us DESC LIMIT :n"""
        ),
        {"i": iid, "d": depth, "s": start_us, "e": end_us, "n": VOLUME_SAMPLE_CHUNKS * 10},
    ).all()
    if not rows:
        return None
    deltas = [int(n) for n, snap in rows if not snap]
    snaps = [int(n) for n, snap in rows if snap]
    return _Sample(
        len(rows),
        sum(deltas) / len(deltas) if deltas else 0.0,
        sum(snaps) / len(snaps) if snaps else None,
        0.0,
        0.0,
    )


@dataclass(frozen=True)
class TradeCount:
    """Trades with exchange time in [start, end): exact up to TRADE_COUNT_CAP;
    beyond it `rows` is extrapolated from the time the first `cap` took."""

    rows: int
    exact: bool
    first_us: int | None
    last_us: int | None


def trade_count(
    conn: sa.Connection, iid: int, start_us: int, end_us: int, cap: int = TRADE_COUNT_CAP
) -> TradeCount:
    params = {"i": iid, "s": start_us, "e": end_us, "cap": cap}
    count, first, capped_last = conn.execute(
        sa.text(
            """SELECT count(*), min(ts_us), max(ts_us) FROM (
                   SELECT ts_us FROM trades
                   WHERE instrument_id = :i AND ts_us >= :s AND ts_us < :e
                   ORDER BY ts_us LIMIT :cap) t"""
        ),
        params,
    ).one()
    if count < cap:
        return TradeCount(int(count), True, first, capped_last)
    last = int(
        conn.execute(
            sa.text(
                """SELECT max(ts_us) FROM trades
                   WHERE instrument_id = :i AND ts_us >= :s AND ts_us < :e"""
            ),
            params,
        ).scalar_one()
    )
    span = max(1, int(capped_last) - int(first))
    rows = max(cap, round(cap * (last - int(first)) / span))
    return TradeCount(rows, rows == cap, int(first), last)


def source_simulated(
    conn: sa.Connection, stream_keys: Sequence[str], start_us: int, end_us: int
) -> bool | None:
    """Whether the collectors that recorded these streams in [start, end)
    (by their heartbeats' receive times) read the simulator: True if any did,
    False if none did, None if no heartbeat is stored for the range."""
    value = conn.execute(
        sa.text(
            """SELECT bool_or(simulated) FROM collector_heartbeats
               WHERE local_us >= :s AND local_us < :e
                 AND streams && CAST(:k AS text[])"""
        ),
        {"s": start_us, "e": end_us, "k": list(stream_keys)},
    ).scalar()
    return None if value is None else bool(value)


def recorded_span(conn: sa.Connection, iid: int, depth: int) -> tuple[int, int] | None:
    """Exchange times of the first and last recorded second of a stream
    (packed per-second tops, or the schema 1-3 log): index probes."""
    sid = stream_id(conn, iid, depth)
    row = conn.execute(
        sa.text(
            """SELECT least((SELECT min(ts_us) FROM top_seconds WHERE stream_id = :sid),
                            (SELECT min(ts_us) FROM book_events
                             WHERE instrument_id = :i AND depth = :d)),
                      greatest((SELECT max(ts_us) FROM top_seconds WHERE stream_id = :sid),
                               (SELECT max(ts_us) FROM book_events
                                WHERE instrument_id = :i AND depth = :d))"""
        ),
        {"sid": sid, "i": iid, "d": depth},
    ).one()
    return None if row[0] is None else (int(row[0]), int(row[1]))
