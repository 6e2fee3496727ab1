"""The dashboard's access to the database: one small read-only pool, and one
cached read per view that all viewers share.

Each live refresh reads everything the page draws in one call, inside one
read-only transaction (so the charts agree with each other), and the result is
cached for about a second under (stream, window, levels): ten viewers of the
same view cost about one query set a second. "Now" is taken inside the cached
function, never passed in, or every viewer would have its own cache key.

The cache is `st.cache_resource`, not `st.cache_data`: every viewer gets the
same immutable view object instead of an unpickled copy (no per-viewer copying
each second, and no pickling of classes that Streamlit's file watcher may have
reloaded). Nothing downstream mutates a view.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd
import sqlalchemy as sa
import streamlit as st

from depthwatch.app.rpi import RpiView, rpi_view
from depthwatch.clock import DAY_US, now_us
from depthwatch.config import database_url_from_env, default_data_dir
from depthwatch.coverage import Span, StreamEvent, window_spans
from depthwatch.feed.registry import exchange_of
from depthwatch.logs import first_line
from depthwatch.records import (
    DEFAULT_HEARTBEAT_INTERVAL_S,
    FULL_DEPTH,
    HEARTBEATS_MISSED_FOR_STALE,
    PROFILE_INTERVAL_US,
    PROFILE_REACH,
    RPI_DEPTH,
    RPI_SIZES_DEPTH,
    FeedEventKind,
    depth_label,
)
from depthwatch.storage import schema
from depthwatch.storage.archived import finished_before
from depthwatch.storage.db import DatabaseUnavailable, make_reader_engine, resolve_database_url
from depthwatch.storage.read.book import book_bounds
from depthwatch.storage.read.chunks import last_quote, latency
from depthwatch.storage.read.events import (
    event_counts,
    event_frame,
    heartbeats,
    last_heartbeat,
    source_simulated,
)
from depthwatch.storage.read.frames import EVENT_COLUMNS, HEATMAP_COLUMNS
from depthwatch.storage.read.health import (
    ReplicaState,
    archive_by_stream,
    archive_runs,
    collectors,
    commit_p99_ms,
    oldest_snapshot_us,
    replica_state,
    table_sizes,
)
from depthwatch.storage.read.profiles import latest_profile, profile_cells, profile_extent
from depthwatch.storage.read.rows import (
    BookView,
    Bounds,
    HeartbeatView,
    HeatmapGrid,
    LastQuote,
    Latency,
)
from depthwatch.storage.read.streams import Stream, instrument_streams, list_streams
from depthwatch.storage.read.tops import (
    PeriodicSnapshots,
    heatmap_cells,
    imbalance_series,
    latest_book,
    message_count,
    periodic_snapshots,
    price_step,
    recorded_from,
    top_series,
)
from depthwatch.storage.read.trades import recent_trades

WINDOWS_MIN = (1, 5, 10, 30, 60)
DEFAULT_WINDOW_MIN = 10
LEVEL_CHOICES = (10, 25, 50)
# A whole book (depth full) is drawn over a price range around its mid, in
# basis points each side, from its profiles (at most PROFILE_REACH away).
RANGES_BPS = (10, 25, 50, 100, 250, 500)
DEFAULT_RANGE_BPS = 100
DEFAULT_LEVELS = 25
MAX_POINTS = 1_200  # per trace: what the browser receives each second stays small
HEATMAP_COLUMNS_MAX = 600
HEATMAP_ROWS = 80
TRADES_MAX = 2_000
# Data older than this while its collector still beats: the feed itself went quiet.
DATA_SILENCE_S = 30.0
HEALTH_DAY_US = DAY_US
RATE_WINDOW_US = 10_000_000  # messages/s is counted over the last ten seconds
# Percentiles over every message of an hour cost ~130 ms; ten minutes tell as much.
LATENCY_WINDOW_US = 600_000_000

T = TypeVar("T")


class DatabaseDown(RuntimeError):
    """The dashboard cannot reach its database; the message says why (no secrets)."""


def database_url() -> str:
    """DASHBOARD_DATABASE_URL (a read-only role), else DATABASE_URL, else the
    embedded PostgreSQL in DEPTHWATCH_DATA_DIR (what `depthwatch up` shares)."""
    return resolve_database_url(database_url_from_env(reader=True), default_data_dir())


@st.cache_resource(show_spinner=False)
def engine() -> sa.Engine:
    return make_reader_engine(database_url())


def read_view(work: Callable[[sa.Connection], T]) -> T:
    """Run `work` in one read-only transaction, REPEATABLE READ: every query
    of a view sees the database at one instant, so numbers read apart (the
    header's quote, an RPI stream's two books) agree although the writer
    commits every 250 ms. A database that cannot be reached becomes
    DatabaseDown with a one-line reason."""
    try:
        with (
            engine().connect().execution_options(isolation_level="REPEATABLE READ") as conn,
            conn.begin(),
        ):
            return work(conn)
    except (sa.exc.OperationalError, sa.exc.InterfaceError, DatabaseUnavailable) as exc:
        raise DatabaseDown(first_line(exc)) from None
    except sa.exc.ProgrammingError as exc:
        if "does not exist" in str(exc):  # no schema yet: nothing was ever recorded
            raise NoSchema() from None
        raise


class NoSchema(RuntimeError):
    """The database has no depthwatch tables yet."""


# ---- overview


@dataclass(frozen=True)
class StreamSummary:
    stream: Stream
    quote: LastQuote | None
    messages_per_s: float
    gaps_24h: int
    resyncs_24h: int
    mids: list[float]  # sparkline over the window
    heartbeat: HeartbeatView | None
    now_us: int


@st.cache_resource(ttl=1.0, show_spinner=False, max_entries=16)
def overview(window_min: int) -> list[StreamSummary]:
    def work(conn: sa.Connection) -> list[StreamSummary]:
        now = now_us()
        start = now - window_min * 60_000_000
        counts = event_counts(conn, now - HEALTH_DAY_US)
        out = []
        for stream in list_streams(conn):
            top = top_series(conn, stream, start, now, bucket_us(window_min * 60, 60))
            kinds = counts.get((stream.category, stream.symbol, stream.depth), {})
            out.append(
                StreamSummary(
                    stream,
                    last_quote(conn, stream, now - HEALTH_DAY_US),
                    _messages_per_s(conn, stream, now),
                    kinds.get(FeedEventKind.GAP, 0),
                    kinds.get(FeedEventKind.RESYNC, 0),
                    [float(v) for v in top["mid"].dropna()],
                    last_heartbeat(conn, stream.key, now - HEALTH_DAY_US),
                    now,
                )
            )
        return out

    return read_view(work)


# ---- live


@dataclass(frozen=True)
class LiveView:
    stream: Stream
    start_us: int
    now_us: int
    quote: LastQuote | None
    book: BookView | None
    top: pd.DataFrame
    heatmap: pd.DataFrame
    grid: HeatmapGrid
    imbalance: pd.DataFrame
    trades: pd.DataFrame
    events: pd.DataFrame
    spans: list[Span]
    messages_per_s: float
    heartbeat: HeartbeatView | None
    simulated: bool
    latency: Latency
    # None on a primary; a read replica's replay lag is already in the data's
    # age (its newest row arrived that much later), this says why.
    replica: ReplicaState | None = None
    # A whole book (depth full): where it is exact now; None for a numbered depth.
    bounds: Bounds | None = None
    # Either book of `orderbook.rpi`: best levels without and with RPI, RPI shares.
    rpi: RpiView | None = None
    # A whole book: the prices drawn (its profiles' buckets); None: level by level.
    price_range: tuple[float, float] | None = None

    def data_age_s(self, shown_us: int) -> float | None:
        """How old the newest top of book is when the page shows it (the view
        itself may come from the cache, up to a second after it was read)."""
        if self.quote is None:
            return None
        return max(0.0, (shown_us - self.quote.local_us) / 1e6)

    @property
    def stale_since_us(self) -> int | None:
        """When the data stopped being live, or None while it is live: the
        collector missed several heartbeats, or its feed has been silent."""
        return stale_since(self.heartbeat, self.quote, self.now_us)


def coverage_spans(
    events: pd.DataFrame,
    heartbeat_ms: np.ndarray,
    start_ms: float,
    end_ms: float,
    heartbeat_interval_ms: float,
    recorded_from_ms: float | None = None,
) -> list[Span]:
    """Where the book was not trusted (feed events) or not recorded (collector
    heartbeats missing), so a quiet market is never mistaken for missing data:
    depthwatch.coverage's rules on the window's frames (EVENT_COLUMNS).

    Sorted by start; overlapping or touching spans of one cause are merged, spans
    of different causes may overlap."""
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing}; has {list(events.columns)}")
    stream = events[events["stream_level"].eq(True)]
    times_us = np.rint(stream["t_ms"].to_numpy(dtype=np.float64) * 1000).astype(np.int64)
    return window_spans(
        [
            StreamEvent(int(t), str(kind), "" if detail is None else str(detail))
            for t, kind, detail in zip(times_us, stream["kind"], stream["detail"], strict=True)
        ],
        np.rint(np.asarray(heartbeat_ms, dtype=np.float64) * 1000).astype(np.int64),
        _us(start_ms),
        _us(end_ms),
        _us(heartbeat_interval_ms),
        None if recorded_from_ms is None else _us(recorded_from_ms),
    )


def _us(t_ms: float) -> int:
    return round(float(t_ms) * 1000)


def stale_since(heartbeat: HeartbeatView | None, quote: LastQuote | None, now: int) -> int | None:
    if heartbeat is None:
        return quote.local_us if quote is not None else now
    silent_after = heartbeat.local_us + heartbeat.interval_s * HEARTBEATS_MISSED_FOR_STALE * 1e6
    if now > silent_after:
        return heartbeat.local_us
    if quote is None or now - quote.local_us > DATA_SILENCE_S * 1e6:
        return quote.local_us if quote is not None else heartbeat.local_us
    return None


def _messages_per_s(conn: sa.Connection, stream: Stream, now: int) -> float:
    count = message_count(conn, stream, now - RATE_WINDOW_US, now)
    return count / (RATE_WINDOW_US / 1e6)


def bucket_us(window_s: int, max_points: int) -> int:
    """Whole seconds, so that at most `max_points` buckets cover the window."""
    return max(1, math.ceil(window_s / max_points)) * 1_000_000


def find_stream(streams: list[Stream], category: str, symbol: str, depth: int) -> Stream:
    for stream in streams:
        if (stream.category, stream.symbol, stream.depth) == (category, symbol, depth):
            return stream
    raise LookupError(f"{category} {symbol} depth {depth_label(depth)} is not recorded")


@st.cache_resource(ttl=1.0, show_spinner=False, max_entries=64)
def streams() -> list[Stream]:
    return read_view(list_streams)


@st.cache_resource(ttl=1.0, show_spinner=False, max_entries=64)
def live_view(
    stream: Stream, window_min: int, levels: int, range_bps: int = DEFAULT_RANGE_BPS
) -> LiveView:
    """Everything the Live page draws of one stream over the last `window_min`
    minutes; `levels` per side for a numbered depth, `range_bps` around the
    mid for a whole book (drawn from its profiles)."""

    def work(conn: sa.Connection) -> LiveView:
        now = now_us()
        start = now - window_min * 60_000_000
        bucket = bucket_us(window_min * 60, MAX_POINTS)
        quote = last_quote(conn, stream, now - HEALTH_DAY_US)
        top = top_series(conn, stream, start, now, bucket)
        extent = profile_extent(conn, stream, start) if stream.depth == FULL_DEPTH else None
        price_range = _price_range(quote, range_bps, extent)
        shared: PeriodicSnapshots | None = None
        if price_range is not None and extent is not None:
            low, high = price_range
            # Whole buckets of the profile: finer would split what it summed.
            step = price_step(low, high, extent[2], HEATMAP_ROWS)
            book = latest_profile(conn, stream, start, low, high, step)
            tb = max(bucket_us(window_min * 60, HEATMAP_COLUMNS_MAX), PROFILE_INTERVAL_US)
            grid = HeatmapGrid(tb / 1000, step, "max")
            heatmap = profile_cells(conn, stream, start, now, grid, low, high)
        else:
            # The imbalance's snapshots, decoded once: a long window's heatmap
            # wants every other one of them (or fewer).
            shared = periodic_snapshots(conn, stream, start, now, bucket, levels)
            book = latest_book(conn, stream, levels, start)
            grid = _heatmap_grid(book, top, stream, window_min)
            heatmap = (
                heatmap_cells(conn, stream, start, now, grid, levels, shared)
                if book is not None
                else pd.DataFrame(columns=list(HEATMAP_COLUMNS), dtype="float64")
            )
        events = event_frame(conn, stream, start, now)
        # With the last beat before the window and the first after it: a
        # collector running at the window's edges opens no hole there.
        beats_ms = heartbeats(conn, stream.key, start, now).times_us / 1000
        heartbeat = last_heartbeat(conn, stream.key, now - HEALTH_DAY_US)
        interval_ms = (heartbeat.interval_s if heartbeat else DEFAULT_HEARTBEAT_INTERVAL_S) * 1000
        return LiveView(
            stream=stream,
            start_us=start,
            now_us=now,
            quote=quote,
            book=book,
            top=top,
            heatmap=heatmap,
            grid=grid,
            imbalance=imbalance_series(conn, stream, start, now, levels, bucket, shared),
            trades=recent_trades(conn, stream.instrument_id, start, now, TRADES_MAX),
            events=events,
            spans=coverage_spans(
                events,
                beats_ms,
                start / 1000,
                now / 1000,
                interval_ms,
                _ms(recorded_from(conn, stream, start, now)),
            ),
            messages_per_s=_messages_per_s(conn, stream, now),
            heartbeat=heartbeat,
            simulated=source_simulated(conn, [stream.key], start, now) is True,
            latency=latency(conn, stream, max(start, now - LATENCY_WINDOW_US), now),
            replica=replica_state(conn),
            bounds=(
                next(iter(book_bounds(conn, stream, now, now + 1)[:1]), None)
                if stream.depth == FULL_DEPTH
                else None
            ),
            rpi=_rpi_view(conn, stream, (quote, book), levels, start, now),
            price_range=price_range,
        )

    return read_view(work)


def _ms(us: int | None) -> float | None:
    return None if us is None else us / 1000


def _price_range(
    quote: LastQuote | None, range_bps: int, extent: tuple[float, float, float] | None
) -> tuple[float, float] | None:
    """A whole book's drawn prices: `range_bps` each side of the newest mid,
    within what its newest profile holds (`extent`: a thin book fills the
    chart rather than a corner of it). None: no profile or no quote yet."""
    if extent is None or quote is None:
        return None
    sides = [p for p in (quote.bid, quote.ask) if p is not None]
    if not sides:
        return None
    mid = sum(sides) / len(sides)
    reach = min(range_bps / 10_000, PROFILE_REACH)
    low, high = max(mid * (1 - reach), extent[0]), min(mid * (1 + reach), extent[1])
    return (low, high) if low < high else None


def _rpi_view(
    conn: sa.Connection,
    stream: Stream,
    shown: tuple[LastQuote | None, BookView | None],
    levels: int,
    start: int,
    now: int,
) -> RpiView | None:
    """Both books of an `orderbook.rpi` stream, newest top and snapshot each
    (`shown`: the page's stream's, already read; its companion's read here);
    None for any other stream."""
    if stream.depth not in (RPI_DEPTH, RPI_SIZES_DEPTH):
        return None
    other_depth = RPI_SIZES_DEPTH if stream.depth == RPI_DEPTH else RPI_DEPTH
    other = next(
        (s for s in instrument_streams(conn, stream.instrument_id) if s.depth == other_depth),
        None,
    )
    if other is None:
        return None
    read = (last_quote(conn, other, now - HEALTH_DAY_US), latest_book(conn, other, levels, start))
    plain, sizes = (shown, read) if stream.depth == RPI_DEPTH else (read, shown)
    return rpi_view(plain[0], sizes[0], plain[1], sizes[1], levels)


def _heatmap_grid(
    book: BookView | None, top: pd.DataFrame, stream: Stream, window_min: int
) -> HeatmapGrid:
    """About HEATMAP_ROWS price buckets over the prices the window can show (the
    touch's whole range, widened by how far the newest book reaches beyond it),
    and at most HEATMAP_COLUMNS_MAX time buckets. Snapshots come every second:
    a longer bucket shows the snapshot at its start ("last"), not the max."""
    time_bucket_us = bucket_us(window_min * 60, HEATMAP_COLUMNS_MAX)
    rule = "max" if time_bucket_us <= 1_000_000 else "last"
    if book is None or book.bids.empty or book.asks.empty:
        return HeatmapGrid(time_bucket_us / 1000, 1.0, rule)
    low, high = float(book.bids["price"].min()), float(book.asks["price"].max())
    if not top.empty:
        below = float(book.bids["price"].iloc[0]) - low
        above = high - float(book.asks["price"].iloc[0])
        low = min(low, float(top["bid_min"].min()) - below)
        high = max(high, float(top["ask_max"].max()) + above)
    step = price_step(low, high, stream.tick_size, HEATMAP_ROWS)
    return HeatmapGrid(time_bucket_us / 1000, step, rule)


# ---- health


def _stream_kind(depth: int | None) -> str:
    return f"depth {depth_label(depth)}" if depth else "trades"


@dataclass(frozen=True)
class HealthReport:
    now_us: int
    collectors: pd.DataFrame  # newest heartbeat per collector, plus commit_p99_24h
    events: pd.DataFrame  # stream x kind counts over 24 h
    sizes: pd.DataFrame  # table, bytes
    oldest_us: int | None
    retention: str
    archive: pd.DataFrame  # per stream: last day, days archived, bytes, waiting
    archive_runs: pd.DataFrame  # the newest run, then the newest that failed
    replica: ReplicaState | None = None  # None: the database is a primary


_K = FeedEventKind
EVENT_KINDS_SHOWN = (_K.GAP, _K.RESYNC, _K.RESTART, _K.BOOK_LOST, _K.RECOVERED, _K.ANOMALY)


@st.cache_resource(ttl=5.0, show_spinner=False, max_entries=4)
def health() -> HealthReport:
    def work(conn: sa.Connection) -> HealthReport:
        now = now_us()
        since = now - HEALTH_DAY_US
        found = collectors(conn, since)
        found["commit_p99_24h"] = [commit_p99_ms(conn, c, since) for c in found["collector"]]
        counts = event_counts(conn, since)
        events = pd.DataFrame(
            [
                {
                    "exchange": exchange_of(cat),
                    "stream": f"{sym} · {cat} · "
                    + (f"depth {depth_label(depth)}" if depth else "trades"),
                }
                | {str(kind): kinds.get(kind, 0) for kind in EVENT_KINDS_SHOWN}
                for (cat, sym, depth), kinds in sorted(
                    counts.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or 0)
                )
                if any(kinds.get(kind) for kind in EVENT_KINDS_SHOWN)
            ]
        )
        if not found.empty:
            newest = found.sort_values("local_us").iloc[-1]
            days = int(newest["retention_days"])
            retention = f"{days} days" if days > 0 else "keep everything"
        else:
            retention = "unknown (no collector heard from)"
        return HealthReport(
            now,
            found,
            events,
            table_sizes(conn),
            oldest_snapshot_us(
                conn,
                # Oldest day first across both layouts: names end in _dYYYYMMDD.
                sorted(
                    schema.partitions_oldest_first(conn, "depth_snapshots")
                    + schema.partitions_oldest_first(conn, "top_snapshots"),
                    key=lambda name: name.rsplit("_d", 1)[-1],
                ),
            ),
            retention,
            *_archive_status(conn, now),
            replica_state(conn),
        )

    return read_view(work)


def _archive_status(conn: sa.Connection, now: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What the archive holds per stream, and its runs (empty before schema 5)."""
    if conn.execute(sa.text("SELECT to_regclass('archived_days')")).scalar() is None:
        return pd.DataFrame(), pd.DataFrame()
    finished = finished_before(now) // DAY_US
    days = sorted(d for d in schema.existing_partition_days(conn) if d < finished)
    return archive_by_stream(conn, days), archive_runs(conn)
