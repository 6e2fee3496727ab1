"""The simulator's settings (SimConfig, also from CLI flags) and what it
records of the faults it injects and the connections it served."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from depthwatch.feed.bybit.topics import CATEGORIES as BYBIT_CATEGORIES
from depthwatch.feed.bybit.topics import FULL_CATEGORIES, FULL_SNAPSHOT_LEVELS

BYBIT_PATH = "/v5/public/"  # + category, as Bybit's own


def ws_path(category: str) -> str:
    """Where the simulator serves a category: Bybit's path, Hyperliquid's
    `/hyperliquid/ws`, or a Binance venue's combined streams (`/{venue}/stream`,
    sim/binance.py)."""
    if category in BYBIT_CATEGORIES:
        return BYBIT_PATH + category
    return "/hyperliquid/ws" if category == "hyperliquid" else f"/{category}/stream"


@dataclass(frozen=True)
class SimConfig:
    """Simulator settings. Faults (0 = off), so a collector's recovery paths can be tested:

    - drop_every N: every Nth delta of a topic is withheld from clients (u still advances,
      the state is in truth() with dropped=True), so clients see a u gap. Depth-1 change
      snapshots count as deltas.
    - restart_every N: every Nth changed state of a synthetic topic is sent as a u=1
      snapshot (seq keeps increasing). Not applied to replay topics.
    - disconnect_every N: a connection is closed (1001) once it was sent N book messages.
    - malformed_every N: after every Nth data message of a connection an extra malformed
      frame follows (alternately truncated JSON and non-JSON text).
    - stall_after N / stall_seconds S: after its Nth data message a connection sends
      nothing, pongs included, for S seconds (once); queued messages follow afterwards.
    - mute_after N: after its Nth data message a connection sends no more data (book or
      trades; they are discarded, not queued) but still answers pings and requests: a
      socket that looks alive and is useless.
    - ignore_unsubscribe_every N: every Nth unsubscribe request (counted over the whole
      server) is swallowed: no ack, the subscription stays and its data keeps coming.

    All faults combine. The three that end a connection (disconnect, stall, mute) would
    otherwise always let the one with the smallest threshold win, so when several are
    set each new connection is given one of them in turn (disconnect, stall, mute).
    Every fault that reaches a client is counted in `faults` and logged in `fault_log`.

    The whole book (`orderbook.full.{symbol}`: deltas only, no snapshot on subscribe;
    `GET /v5/market/full_orderbook?category=&symbol=` on the same port answers the
    snapshot of a synthetic symbol from the topic's state, made on demand; requests
    are counted per symbol in `rest_requests`). drop_every applies to its deltas;
    restart_every makes every Nth changed state a u=1 delta carrying that step's
    changes, and the REST answers follow the new lineage (u 1, 2, ...; seq keeps
    rising). Its own settings (0 = off):

    - full_categories: categories whose connections and REST requests may have the
      whole book; others get "handler not found" / retCode 10001 (e.g. ("spot",)
      plays mainnet before linear had it).
    - rest_levels N: levels per side in a REST snapshot (Bybit: 10,000); the book
      beyond is cut off. book_levels sets how deep the model book is.
    - full_reset_every N: every Nth changed state of the full topic is instead an
      EMPTY u=1 delta (auction -> continuous trading, a tick or lot change): the
      topic's book is unchanged by it, the step's changes follow in the u=2 delta.
      When restart_every falls on the same state, the restart wins.
    - delist_after N / relist_after M: market step N+1 is, on the full topic, a u=1
      delta with b=[] and a=[]; the book is empty (REST too) and nothing follows
      until, M steps later, another empty u=1 delta after which the book is the
      model's again (REST has it; the client must fetch it).
    - Faults of the REST answers, every Nth request counted over the whole server
      (all symbols, erroneous requests included), checked in this order: rest_429_every
      (HTTP 429, retCode 10006), rest_5xx_every (HTTP 503), rest_stale_every (the state
      just before the one the topic's latest subscriber joined at, so older than every
      delta that subscriber buffered; the topic's first state if no subscriber
      joined after the topic first changed), rest_mismatch_every (the current book and seq with
      u + 1: "equal seq, different u").
    - rest_delay_s S: every REST answer is sent S seconds after its request arrived
      (under websockets' 10 s opening timeout); its state is the one at arrival.
    - prepare_full: set up every symbol's orderbook.full topic (and its Binance
      books) before listening rather than at its first subscription or REST
      request (~0.1 s for a book of 10,000 levels a side), so a benchmark's sync
      time is the client's.

    Binance (sim/binance.py: venues `binance` and `binance-futures` on the same port,
    WebSocket /{venue}/stream and /{venue}/ws, REST GET /api/v3/depth and
    /fapi/v1/depth; every symbol of `symbols` on both, each venue its own seeded
    book). Of the faults above these apply: drop_every (a withheld event: a broken
    U/pu chain), disconnect_every, malformed_every, stall_after, mute_after,
    ignore_unsubscribe_every (an UNSUBSCRIBE swallowed), and the REST ones
    rest_429_every (with Retry-After), rest_5xx_every, rest_stale_every,
    rest_delay_s and rest_levels (a cap below the request's limit); REST faults
    count every request of the server, Bybit's and Binance's. Not restart_every,
    full_reset_every, delist_after or rest_mismatch_every: Binance has no u=1
    lineage and no seq. Its own (0 = off):

    - binance_pu_break_every N: every Nth event of a book is correct but chains
      wrongly: on futures its pu is not the previous event's u, on spot its U is
      the previous u + 2; the client must resync though nothing was lost.
    - rest_418_every N: every Nth REST request (checked before rest_429_every) is
      answered HTTP 418, code -1003 "Way too many requests; IP banned until <ms>."
      with Retry-After (no ban is enforced: the next request is served).
    - rest_ahead_every N: every Nth REST answer is newer than every event its
      book's subscribers have received: the book's events are held back from all
      its subscribers until at least REST_AHEAD_EVENTS more were made (1 s at
      most), the answer is that newer state, and the held events follow
      REST_AHEAD_RELEASE_S after the answer was sent (after rest_delay_s too).
    - conn_max_age_s S: a Binance connection is closed by the server (1000,
      "connection max age") S seconds after it opened, as Binance does after 24 h.

    Hyperliquid (sim/hyperliquid.py: venue `hyperliquid`, WebSocket /hyperliquid/ws
    on the same port; every symbol of `symbols` as the coin without its trailing
    USDT/USDC/USD, BTCUSDT -> BTC, each coin its own seeded book). Every market step
    each `l2Book` subscriber gets the whole top 20 a side, changed or not. Of the
    faults above these apply: drop_every (every Nth snapshot of a coin is sent to
    nobody; truth keeps it, dropped=True), disconnect_every, malformed_every,
    stall_after, mute_after. Its own:

    - hyperliquid_repeat_every N: every Nth snapshot of a coin is sent twice in a row
      (the same frame); a snapshot drop_every withholds is not repeated.
    - hyperliquid_freeze_after N / hyperliquid_freeze_seconds S: once a coin's Nth
      snapshot was published (the first one after it that drop_every spares),
      every step for S seconds re-sends that same frame (same `time`, same levels)
      while the market walks on unpublished (truth records nothing meanwhile); then
      the current book is published again. Once per coin.
    - hyperliquid_idle_timeout_s S: the server closes (1000, "idle") a Hyperliquid
      connection that sent it nothing (a ping counts) for S seconds; Hyperliquid: 60.

    ping_interval_s S: every connection (every venue's) is sent a WebSocket
    ping every S seconds and closed if its pong is not back within S seconds
    (websockets' keepalive; 0 = no pings). Binance pings every 20 s on spot,
    every 3 min on futures; the default, 20, is websockets' own.
    """

    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    host: str = "127.0.0.1"
    port: int = 0
    rate: float = 50.0  # market steps per second per symbol; 0 = as fast as clients read
    # Replayed topics start spread over one step (topic k of N, k/(N x rate) s
    # late), as an exchange's streams do, rather than all on the same tick:
    # a client then gets a frame every 1/(N x rate) s (for CPU at a pace).
    stagger: bool = False
    deltas: int = 0  # market steps per symbol before it stops; 0 = never stop
    seed: int = 0
    book_levels: int = 200  # levels per side of each symbol's model book
    tick_sizes: Mapping[str, str] = field(default_factory=dict)  # symbol -> "0.10"
    trades_rate: float = 2.0  # publicTrade messages per second per symbol; 0 = none
    drop_every: int = 0
    restart_every: int = 0
    disconnect_every: int = 0
    malformed_every: int = 0
    stall_after: int = 0
    stall_seconds: float = 0.0
    mute_after: int = 0
    ignore_unsubscribe_every: int = 0
    full_categories: tuple[str, ...] = FULL_CATEGORIES
    rest_levels: int = FULL_SNAPSHOT_LEVELS
    full_reset_every: int = 0
    delist_after: int = 0
    relist_after: int = 0
    rest_429_every: int = 0
    rest_5xx_every: int = 0
    rest_stale_every: int = 0
    rest_mismatch_every: int = 0
    rest_delay_s: float = 0.0
    binance_pu_break_every: int = 0
    rest_418_every: int = 0
    rest_ahead_every: int = 0
    conn_max_age_s: float = 0.0
    hyperliquid_repeat_every: int = 0
    hyperliquid_freeze_after: int = 0
    hyperliquid_freeze_seconds: float = 10.0  # with hyperliquid_freeze_after
    hyperliquid_idle_timeout_s: float = 60.0  # 0 = never
    ping_interval_s: float = 20.0  # 0 = no pings
    prepare_full: bool = False  # set up every symbol's whole-book topic at start
    record: bool = True  # keep every published state for truth(); off for benchmarks
    queue_size: int = 1024
    level1_resend_s: float = 3.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class FaultKind(StrEnum):
    DROP = "drop"  # a delta withheld: the client sees a u gap
    RESTART = "restart"  # a u=1 snapshot
    DISCONNECT = "disconnect"  # the server closed the connection
    MALFORMED = "malformed"  # a frame that is not a valid message
    STALL = "stall"  # nothing at all for stall_seconds, pongs included
    MUTE = "mute"  # pongs and acks only, no data, until the client leaves
    IGNORED_UNSUBSCRIBE = "ignored_unsubscribe"  # no ack, data keeps coming


class FullBookFault(StrEnum):
    """Faults of the whole book (`orderbook.full` and its REST snapshot).

    Not FaultKind members: tests/test_faults.py requires every FaultKind to be
    injected (and explained) in its mixed run of the numbered depths, which
    these cannot be. `faults` and `fault_log` hold both kinds.
    """

    REST_429 = "rest_429"  # HTTP 429, retCode 10006
    REST_5XX = "rest_5xx"  # HTTP 503
    REST_STALE = "rest_stale"  # a snapshot older than the subscriber's buffered deltas
    REST_MISMATCH = "rest_mismatch"  # the current seq with a different u
    REST_DELAY = "rest_delay"  # an answer sent rest_delay_s after its request came
    FULL_RESET = "full_reset"  # an empty u=1 delta, the book unchanged
    DELIST = "delist"  # a u=1 delta with b=[], a=[]: the book is empty
    RELIST = "relist"  # an empty u=1 delta after which the book is back
    REFUSED = "full_refused"  # the whole book asked for outside full_categories


class BinanceFault(StrEnum):
    """Faults only the Binance venues inject (sim/binance.py). The Binance books
    also inject FaultKind's connection faults and drops, and FullBookFault's
    REST faults (429, 5xx, stale, delay)."""

    PU_BREAK = "pu_break"  # a correct event whose pu (futures) or U (spot) breaks the chain
    REST_418 = "rest_418"  # HTTP 418, code -1003, Retry-After
    REST_AHEAD = "rest_ahead"  # an answer newer than every event its subscribers have
    MAX_AGE = "conn_max_age"  # the server closed a connection that reached conn_max_age_s


class HyperliquidFault(StrEnum):
    """Faults only the Hyperliquid venue injects (sim/hyperliquid.py). It also
    injects FaultKind's drops and connection faults."""

    REPEAT = "hyperliquid_repeat"  # a snapshot sent twice in a row
    FREEZE = "hyperliquid_freeze"  # a snapshot re-sent, same time, while the market moves
    IDLE = "hyperliquid_idle"  # the server closed a connection silent for the idle timeout


AnyFault = FaultKind | FullBookFault | BinanceFault | HyperliquidFault

# Faults that end (or make useless) the connection they hit; see SimConfig.
CONNECTION_FAULTS = (FaultKind.DISCONNECT, FaultKind.STALL, FaultKind.MUTE)


@dataclass(frozen=True, slots=True)
class InjectedFault:
    """One fault as it reached a client, for tests to hold the client to account."""

    kind: AnyFault
    at_us: int  # wall clock, comparable with a collector's receive times
    conn_id: str = ""  # empty for topic and REST faults: not one connection's
    topic: str = ""
    seq: int = 0  # topic and REST faults: the state's seq (u repeats after restarts, seq never)


@dataclass(slots=True)
class ConnRecord:
    """One client connection's life, kept after it closed (in accept order)."""

    conn_id: str
    fault: FaultKind | None  # the connection fault it was given, if any
    opened_us: int
    book_sent: int = 0  # book messages written to the socket (muted ones are not)
    closed_us: int = 0
    ended_by: AnyFault | None = None  # the fault that ended it; None = the client left


# -- CLI hook ------------------------------------------------------------------


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    add("--port", type=int, default=8765, help="TCP port; 0 picks a free one (default 8765)")
    add("--symbols", default="BTCUSDT,ETHUSDT", help="comma-separated synthetic symbols")
    add("--rate", type=float, default=50.0, help="book steps/s per symbol; 0 = as fast as read")
    add("--deltas", type=int, default=0, help="steps per symbol before stopping; 0 = forever")
    add("--seed", type=int, default=0, help="random seed of the synthetic market")
    add("--book-levels", type=int, default=200, help="levels per side of the model book")
    add("--replay", action="append", default=[], metavar="PATH", help="replay a .data/.zip/.jsonl")
    add("--drop-every", type=int, default=0, help="withhold every Nth delta of a topic (gap)")
    add("--restart-every", type=int, default=0, help="every Nth update: u=1 snapshot (restart)")
    add("--disconnect-every", type=int, default=0, help="close a connection after N book msgs")
    add("--malformed-every", type=int, default=0, help="add a malformed frame every N messages")
    add("--stall-after", type=int, default=0, help="go silent after N messages on a connection")
    add("--stall-seconds", type=float, default=30.0, help="how long a stall lasts (seconds)")
    add(
        "--mute-after",
        type=int,
        default=0,
        help="after N messages on a connection send no data, but keep answering pings",
    )
    add(
        "--ignore-unsubscribe-every",
        type=int,
        default=0,
        help="swallow every Nth unsubscribe request: no ack, the data keeps coming",
    )
    add(
        "--full-categories",
        default=",".join(FULL_CATEGORIES),
        help="categories that have orderbook.full and its REST snapshot (comma-separated)",
    )
    add("--rest-levels", type=int, default=FULL_SNAPSHOT_LEVELS, help="REST levels per side")
    add(
        "--prepare-full",
        action="store_true",
        help="set up every symbol's orderbook.full at start, not at its first subscription "
        "(deep books: ~0.1 s each)",
    )
    add("--full-reset-every", type=int, default=0, help="every Nth full update: empty u=1")
    add("--delist-after", type=int, default=0, help="full book: delist after N steps (u=1)")
    add("--relist-after", type=int, default=0, help="... and relist M steps later (u=1)")
    add("--rest-429-every", type=int, default=0, help="answer every Nth REST request 429")
    add("--rest-5xx-every", type=int, default=0, help="answer every Nth REST request 503")
    add(
        "--rest-stale-every",
        type=int,
        default=0,
        help="every Nth REST answer: a state older than the subscriber's first delta",
    )
    add(
        "--rest-mismatch-every",
        type=int,
        default=0,
        help="every Nth REST answer: the current seq with a different u",
    )
    add("--rest-delay", type=float, default=0.0, help="send each REST answer S seconds late")
    add("--trades-rate", type=float, default=2.0, help="publicTrade messages/s per symbol")
    add(
        "--binance-pu-break-every",
        type=int,
        default=0,
        help="Binance: every Nth event chains wrongly (futures pu, spot U) though nothing is lost",
    )
    add("--rest-418-every", type=int, default=0, help="Binance: answer every Nth REST request 418")
    add(
        "--rest-ahead-every",
        type=int,
        default=0,
        help="Binance: every Nth REST answer is newer than every event its subscribers have",
    )
    add(
        "--conn-max-age",
        type=float,
        default=0.0,
        help="Binance: close a connection S seconds after it opened (Binance: 24 h)",
    )
    add(
        "--hyperliquid-repeat-every",
        type=int,
        default=0,
        help="Hyperliquid: send every Nth snapshot of a coin twice",
    )
    add(
        "--hyperliquid-freeze-after",
        type=int,
        default=0,
        help="Hyperliquid: after a coin's Nth snapshot re-send it (same time) for a while",
    )
    add(
        "--hyperliquid-freeze-seconds",
        type=float,
        default=10.0,
        help="Hyperliquid: how long a frozen book lasts (seconds)",
    )
    add(
        "--hyperliquid-idle-timeout",
        type=float,
        default=60.0,
        help="Hyperliquid: close a connection that sent nothing for S seconds; 0 = never",
    )
    add(
        "--ping-interval",
        type=float,
        default=20.0,
        help="WebSocket ping every S seconds, close if no pong within S; 0 = no pings",
    )
    add(
        "--stagger",
        action="store_true",
        help="replays: spread the topics' start over one step, so frames arrive evenly",
    )


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        symbols=tuple(s.strip() for s in args.symbols.split(",") if s.strip()),
        host=args.host,
        port=args.port,
        rate=args.rate,
        stagger=args.stagger,
        deltas=args.deltas,
        seed=args.seed,
        book_levels=args.book_levels,
        trades_rate=args.trades_rate,
        drop_every=args.drop_every,
        restart_every=args.restart_every,
        disconnect_every=args.disconnect_every,
        malformed_every=args.malformed_every,
        stall_after=args.stall_after,
        stall_seconds=args.stall_seconds,
        mute_after=args.mute_after,
        ignore_unsubscribe_every=args.ignore_unsubscribe_every,
        full_categories=tuple(c.strip() for c in args.full_categories.split(",") if c.strip()),
        rest_levels=args.rest_levels,
        full_reset_every=args.full_reset_every,
        delist_after=args.delist_after,
        relist_after=args.relist_after,
        rest_429_every=args.rest_429_every,
        rest_5xx_every=args.rest_5xx_every,
        rest_stale_every=args.rest_stale_every,
        rest_mismatch_every=args.rest_mismatch_every,
        rest_delay_s=args.rest_delay,
        binance_pu_break_every=args.binance_pu_break_every,
        rest_418_every=args.rest_418_every,
        rest_ahead_every=args.rest_ahead_every,
        conn_max_age_s=args.conn_max_age,
        hyperliquid_repeat_every=args.hyperliquid_repeat_every,
        hyperliquid_freeze_after=args.hyperliquid_freeze_after,
        hyperliquid_freeze_seconds=args.hyperliquid_freeze_seconds,
        hyperliquid_idle_timeout_s=args.hyperliquid_idle_timeout,
        ping_interval_s=args.ping_interval,
        prepare_full=args.prepare_full,
        record=False,  # a long-running server would otherwise grow without bound
    )
