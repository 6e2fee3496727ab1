"""The normalised records everything downstream of the feed speaks.

The feed module turns Bybit messages into these; the book, the writer, the
export and the simulator's ground truth never see raw exchange JSON.

Prices and sizes stay the decimal strings the exchange sent: they are written
to PostgreSQL ``numeric`` columns unchanged, so nothing is ever rounded.
Timestamps are integer microseconds since the Unix epoch (UTC), the Tardis
convention, for both exchange time and local receive time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from depthwatch.clock import SECOND_US as SECOND_US  # timestamps are microseconds

# The whole book (Bybit's `orderbook.full`, a REST snapshot plus deltas) as a
# depth: the largest smallint, so it sorts after every numbered depth, passes
# every "at most `depth` levels" check and fits the `depth` columns. Users see
# and type "full" (`depth_label`, `parse_depth`); SQL and archive paths hold it.
FULL_DEPTH = 32767
# Bybit's `orderbook.rpi` sends 50 levels, each with two sizes: the ordinary
# (non-RPI) one and the Retail Price Improvement one. It is recorded as two
# books that share every message (`u`, times): RPI_DEPTH ("rpi") holds the
# ordinary sizes, RPI_SIZES_DEPTH ("rpi-sizes") the RPI sizes, each an exact
# book of price -> size like any other, so the writer, the replays and every
# export take them unchanged; `incremental_book_L2_rpi` joins them again.
RPI_DEPTH = 32766
RPI_SIZES_DEPTH = 32765
RPI_LEVELS = 50  # levels a side of an `orderbook.rpi` book

_DEPTH_LABELS = {FULL_DEPTH: "full", RPI_DEPTH: "rpi", RPI_SIZES_DEPTH: "rpi-sizes"}
_LABELLED_DEPTHS = {label: depth for depth, label in _DEPTH_LABELS.items()}


def depth_label(depth: int) -> str:
    """How a depth is shown and typed: "50", "full", "rpi" or "rpi-sizes"."""
    return _DEPTH_LABELS.get(depth) or str(depth)


def parse_depth(text: str) -> int:
    """ "50" -> 50, "full" -> FULL_DEPTH, "rpi" -> RPI_DEPTH, "rpi-sizes" ->
    RPI_SIZES_DEPTH; ValueError for anything else."""
    text = text.strip().lower()
    depth = _LABELLED_DEPTHS.get(text)
    return int(text) if depth is None else depth


def recorded_depths(depth: int) -> tuple[int, ...]:
    """The books one subscribed depth is recorded as: itself, or for RPI_DEPTH
    both books of `orderbook.rpi`."""
    return (RPI_DEPTH, RPI_SIZES_DEPTH) if depth == RPI_DEPTH else (depth,)


def levels_of(depth: int) -> int:
    """At most how many levels a side a book of this depth holds."""
    return RPI_LEVELS if depth in (RPI_DEPTH, RPI_SIZES_DEPTH) else depth


# One price level as sent: [price, size], both decimal strings. Lists rather
# than tuples because that is what orjson hands us; copying would cost time.
Level = list[str]


@dataclass(frozen=True, slots=True)
class StreamKey:
    """One order book stream: a symbol of a category at one depth."""

    category: str
    symbol: str
    depth: int
    # Every record carries its stream, and the writer and packer key dicts by
    # it several times a message: the hash is computed once, not per lookup.
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.category, self.symbol, self.depth)))

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return f"{self.category}:{self.symbol}@{depth_label(self.depth)}"


@dataclass(slots=True)
class BookUpdate:
    """A snapshot or delta of one book stream, as received."""

    stream: StreamKey
    is_snapshot: bool
    bids: list[Level]
    asks: list[Level]
    update_id: int  # Bybit `u`
    sequence: int  # Bybit `seq`
    exchange_us: int  # Bybit `ts`, in microseconds
    match_us: int | None  # Bybit `cts` (matching engine time), in microseconds
    local_us: int  # when the frame was read off the socket


@dataclass(slots=True)
class Trade:
    category: str
    symbol: str
    trade_id: str
    side: str  # "buy" or "sell": the taker's side
    price: str
    size: str
    exchange_us: int
    local_us: int
    sequence: int | None


@dataclass(slots=True)
class Quote:
    """Top of book whenever best bid/ask price or size changes."""

    stream: StreamKey
    exchange_us: int
    local_us: int
    update_id: int
    bid_price: str | None
    bid_size: str | None
    ask_price: str | None
    ask_size: str | None


@dataclass(slots=True)
class DepthSnapshot:
    """Top-N levels of a book as it stood at the end of a time bucket."""

    stream: StreamKey
    exchange_us: int  # the bucket's end
    local_us: int  # receive time of the last message applied before it
    update_id: int
    bids: list[Level]  # best first
    asks: list[Level]  # best first


@dataclass(slots=True)
class BookCheckpoint:
    """The whole book at the end of a (long) time bucket, so that rebuilding the
    book at any instant never has to go back further than one bucket, nor rely on
    an exchange snapshot that retention may have dropped."""

    stream: StreamKey
    exchange_us: int  # the bucket's end
    local_us: int
    update_id: int
    sequence: int
    bids: list[Level]  # best first
    asks: list[Level]


@dataclass(slots=True)
class BookBounds:
    """Where a whole book (FULL_DEPTH) is exact: a REST snapshot holds at most
    so many levels a side, so levels beyond its worst price are unknown
    unless a delta touched them since. Bids are exact at or above
    `bid_floor`, asks at or below `ask_ceiling`; None: that side was whole.
    Recorded with the snapshot that sets it and again with every checkpoint,
    so a reader finds it where it finds the book's start."""

    stream: StreamKey
    exchange_us: int
    local_us: int
    update_id: int
    bid_floor: str | None
    ask_ceiling: str | None

    @property
    def whole(self) -> bool:
        return self.bid_floor is None and self.ask_ceiling is None


# A whole book is too deep to draw level by level, or to store each second:
# every PROFILE_INTERVAL_US of exchange time its levels within PROFILE_REACH
# of the mid are summed into price buckets about PROFILE_STEP_BPS wide
# (BookProfile), which the dashboard aggregates further in SQL.
PROFILE_INTERVAL_US = 10 * SECOND_US
PROFILE_REACH = 0.05
PROFILE_STEP_BPS = 1.0


@dataclass(slots=True)
class BookProfile:
    """A whole book (FULL_DEPTH) for the dashboard: the size resting in each
    price bucket of width `step` within PROFILE_REACH of the mid, as the book
    stood at `exchange_us` (a multiple of PROFILE_INTERVAL_US). Bucket k holds
    prices in [k * step, (k + 1) * step); `bid_sizes` are those of buckets
    bid_first, bid_first + 1, ... (ascending), `ask_sizes` likewise from
    ask_first. Floats: a picture of the book, not a record of it (the log is)."""

    stream: StreamKey
    exchange_us: int
    local_us: int
    update_id: int
    step: float
    bid_first: int
    bid_sizes: list[float]
    ask_first: int
    ask_sizes: list[float]


class FeedEventKind(StrEnum):
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    SUBSCRIBED = "subscribed"
    SUBSCRIBE_FAILED = "subscribe_failed"
    GAP = "gap"
    RESYNC = "resync"
    RESTART = "restart"  # a `u == 1` snapshot: the exchange restarted the stream
    BOOK_LOST = "book_lost"  # a stream's valid book was dropped with its connection
    RECOVERED = "recovered"  # a snapshot made a broken (gap, lost connection) book valid again
    ANOMALY = "anomaly"  # e.g. a crossed book
    MALFORMED = "malformed"
    STALL = "stall"  # the watchdog saw silence and reconnected
    BACKPRESSURE = "backpressure"


@dataclass(slots=True)
class FeedEvent:
    kind: FeedEventKind
    local_us: int
    category: str
    symbol: str | None = None
    depth: int | None = None
    detail: str = ""
    connection: str = ""

    @classmethod
    def of_stream(
        cls, kind: FeedEventKind, local_us: int, stream: StreamKey, detail: str
    ) -> FeedEvent:
        """An event about one stream's book (not about a connection)."""
        return cls(kind, local_us, stream.category, stream.symbol, stream.depth, detail)


# A collector that missed this many heartbeats is gone: the dashboard calls it
# STALE, and a starting collector no longer counts on it to keep a stream.
HEARTBEATS_MISSED_FOR_STALE = 3
# How often a collector writes its heartbeat row unless configured otherwise;
# readers of a stream whose heartbeats are all gone (past retention) assume it.
DEFAULT_HEARTBEAT_INTERVAL_S = 2.0


@dataclass(slots=True)
class CollectorHeartbeat:
    """What a running collector says about itself every few seconds: the health
    page lists collectors from these, and the live page tells a silent collector
    (STALE) and simulated data (SIMULATED) from them."""

    collector: str  # host:pid
    local_us: int
    host: str
    pid: int
    version: str
    started_us: int
    interval_s: float  # how often heartbeats come: silence beyond a few of these is STALE
    simulated: bool  # the data comes from depthwatch's simulator, not an exchange
    endpoint: str
    retention_days: int
    messages: int  # received since start
    messages_per_s: float  # over the last heartbeat interval
    pending_rows: int
    flush_failures: int
    commit_p50_ms: float | None  # receive-to-commit over the last interval
    commit_p99_ms: float | None
    streams: list[str]  # str(StreamKey) of every stream it records
    valid_streams: list[str]  # those whose book is valid right now
