"""The adapter boundary: what one exchange's package under `feed/` gives the
rest of depthwatch, and nothing more.

An exchange (`feed/bybit/`, `feed/binance/`, ...) describes each of its
markets as a `Venue`: the `StreamKey.category` its streams are recorded
under, its endpoints and depths, its WebSocket protocol (`Wire`: requests,
acks, pings, topic names, a `Parser` from frames to records), and for
delta-only books its REST snapshots (`SnapshotSource`) and the documented
rule that stitches them to the deltas (`feed.sync.SyncRule`). The generic
machinery (`feed.connection`, `feed.snapshots`, `feed.sync`, the collector)
speaks only these. `feed/registry.py` lists the venues.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from depthwatch.feed.messages import Parsed
from depthwatch.feed.sync import SyncRule
from depthwatch.records import BookUpdate, StreamKey


class Parser(Protocol):
    """Frames of one venue's connections -> records (feed/messages.py's `Parsed`)."""

    def parse(self, raw: bytes, local_us: int) -> Parsed: ...

    def stream_of(self, topic: str) -> StreamKey:
        """The book stream a topic carries; MalformedMessage when it carries none."""
        ...


class Wire(Protocol):
    """One venue's WebSocket protocol, as `feed.connection` speaks it."""

    # Topics per subscribe request, and how often we ping (0: the server pings
    # and the socket answers it).
    args_per_request: int
    ping_interval_s: float
    # The server ends a connection this old (Binance: 24 h); 0: never. The
    # connection opens its successor before then.
    max_age_s: float

    def parser(self) -> Parser: ...

    def request_id(self, connection: str, number: int) -> str:
        """The id of a connection's `number`th request, as its ack echoes it."""
        ...

    def request(self, op: str, topics: list[str], req_id: str) -> bytes:
        """A "subscribe" or "unsubscribe" frame."""
        ...

    def ping(self, connection: str) -> bytes: ...

    def book_topic(self, stream: StreamKey) -> str: ...

    def trade_topic(self, symbol: str) -> str: ...

    def topic_fields(self, topic: str) -> tuple[str, int | None]:
        """(symbol, depth or None for trades) of a topic, for feed events;
        ValueError for a name that is not one of this venue's topics."""
        ...

    def snapshot_on_subscribe(self, topic: str) -> bool:
        """Whether subscribing to `topic` sends a snapshot: then a broken book
        is resynced, and a silent socket probed, by subscribing again."""
        ...


class Instrument(Protocol):
    """What the collector reads of a venue's instrument metadata."""

    @property
    def tick_size(self) -> str | None: ...


class SnapshotSource(Protocol):
    """One venue's REST book snapshots, for `feed.snapshots.SnapshotFetcher`."""

    def url(self, base_url: str, stream: StreamKey, levels: int) -> str: ...

    def parse(self, body: bytes, stream: StreamKey, local_us: int) -> BookUpdate:
        """A 200 answer -> a snapshot BookUpdate. SnapshotRefused for the
        venue's error answers, SnapshotThrottled for a rate limit said in the
        body, MalformedMessage for anything else."""
        ...

    def refusal(self, status: int, body: bytes) -> str | None:
        """An HTTP error answer that asking again will not mend (an unknown
        symbol): what it says; None for the rest (retried with backoff)."""
        ...


@dataclass(frozen=True)
class Venue:
    """One market of one exchange, as recorded: its streams' `category`."""

    category: str  # StreamKey.category: "linear", "binance-futures", ...
    exchange: str  # shown to users: "bybit", "binance", "hyperliquid"
    tardis_exchange: str  # the exchange id of Tardis's files and the archive's paths
    depths: tuple[int, ...]  # book depths served (records.FULL_DEPTH: the whole book)
    default_depths: tuple[int, ...]
    ws_url: str
    rest_url: str
    wire: Callable[[str], Wire]  # by category
    legacy_depths: tuple[int, ...] = ()  # accepted only when asked for (archives)
    testnet_ws_url: str = ""
    testnet_rest_url: str = ""
    # A whole book's REST snapshot: at most this many levels a side (0: none).
    snapshot_levels: int = 0
    snapshots: Callable[[], SnapshotSource] | None = None
    sync_rule: Callable[[], SyncRule] | None = None
    # Tick sizes and which symbols exist, over REST: (category, symbols,
    # testnet) -> {symbol: InstrumentInfo}, None when unreachable.
    instruments: Callable[[str, tuple[str, ...], bool], Mapping[str, Instrument] | None] | None = (
        None
    )
    # Subscription limits per connection: topics, and characters of topic names.
    max_topics_per_connection: int = 10_000
    max_topic_chars_per_connection: int = 1_000_000

    def valid_depths(self, legacy: bool = False) -> tuple[int, ...]:
        return self.depths + self.legacy_depths if legacy else self.depths


class SnapshotThrottled(Exception):
    """The venue said, in a 200 answer's body, to slow down (Bybit's retCode 10006)."""
