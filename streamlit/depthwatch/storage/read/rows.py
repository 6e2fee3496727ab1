"""What the readers return: plain records of stored data, shared by every
reader (and by legacy.py, which returns the same records from the schema 1-3
tables)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


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


@dataclass(frozen=True, slots=True)
class Checkpoint:
    ts_us: int
    local_us: int
    u: int
    bids: list[list[str]]
    asks: list[list[str]]


@dataclass(frozen=True, slots=True)
class Bounds:
    """Where a whole book (depth full) is exact from (ts_us, u) on, until the
    next row: bids at or above bid_floor, asks at or below ask_ceiling; None:
    that side whole (records.BookBounds)."""

    ts_us: int
    u: int
    bid_floor: str | None
    ask_ceiling: str | None

    @property
    def whole(self) -> bool:
        return self.bid_floor is None and self.ask_ceiling is None

    def describe(self) -> str:
        if self.whole:
            return "the whole book"
        bids = f"bids >= {self.bid_floor}" if self.bid_floor is not None else "every bid"
        asks = f"asks <= {self.ask_ceiling}" if self.ask_ceiling is not None else "every ask"
        return f"{bids}, {asks}"


@dataclass(frozen=True, slots=True)
class LastRecorded:
    local_us: int
    u: int


QuoteRow = tuple[int, int, str | None, str | None, str | None, str | None]


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
class HeartbeatView:
    """The newest heartbeat of the collector recording a stream."""

    collector: str
    local_us: int
    interval_s: float
    simulated: bool
    valid: bool  # the stream's book was valid at that heartbeat


@dataclass(frozen=True)
class Latency:
    """p50/p99 in milliseconds of each step a message takes before it is stored."""

    match_to_push: tuple[float, float] | None  # cts -> ts
    push_to_receive: tuple[float, float] | None  # ts -> local receive
    receive_to_commit: tuple[float, float] | None  # from the collectors' heartbeats


Steps = tuple[Sequence[float] | None, Sequence[float] | None]


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


VOLUME_SAMPLE_CHUNKS = 200  # ~2,400 messages at 50 msg/s: a few ms to decode


@dataclass(frozen=True)
class VolumeSample:
    messages: int
    delta_levels: float
    snapshot_levels: float | None
    new_quotes: float  # share of the messages that made a new top of book
    # Share of the messages that are snapshots not opening their chunk (the
    # chunks' `snapshot` flags count only the others): a depth-1 stream is
    # all snapshots, a deeper one has them only at (re)subscriptions.
    inner_snapshots: float


@dataclass(frozen=True)
class TradeCount:
    """Trades with exchange time in [start, end): exact up to TRADE_COUNT_CAP;
    beyond it `rows` is extrapolated from the time the first `cap` took."""

    rows: int
    exact: bool
    first_us: int | None
    last_us: int | None


@dataclass(frozen=True)
class Heartbeats:
    """Heartbeats of the collectors recording a stream."""

    times_us: np.ndarray  # int64, ascending
    interval_us: int | None  # the longest interval any of them announced; None: no heartbeat
