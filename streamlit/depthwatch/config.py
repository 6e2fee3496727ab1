"""The collector's configuration: one frozen object, from CLI flags over
environment variables over defaults. Every setting is listed once, here."""

from __future__ import annotations

import argparse
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from depthwatch.feed.exchange import Venue
from depthwatch.feed.registry import CATEGORIES, VENUES, is_symbol, venue_of
from depthwatch.records import (
    DEFAULT_HEARTBEAT_INTERVAL_S,
    PROFILE_INTERVAL_US,
    RPI_DEPTH,
    StreamKey,
    depth_label,
    parse_depth,
    recorded_depths,
)

BYBIT = "bybit"
# `--exchange`: Bybit (then `--category`), or another exchange's venue by name.
EXCHANGE_CHOICES = (BYBIT, *(c for c, v in VENUES.items() if v.exchange != BYBIT))


class ConfigError(ValueError):
    """A setting that cannot work; the message says which and why."""


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "")
    return value if value.strip() else default


def _env_flag(name: str) -> bool:
    return _env(name, "").lower() in ("1", "true", "yes", "on")


def default_data_dir() -> Path:
    return Path(_env("DEPTHWATCH_DATA_DIR", ".depthwatch"))


def reader_database_url_from_env() -> str | None:
    """DASHBOARD_DATABASE_URL: a read-only role's URL for the dashboard, if set."""
    return _env("DASHBOARD_DATABASE_URL", "") or None


def database_url_from_env(reader: bool = False) -> str | None:
    """The database the environment names, None for the embedded one:
    DATABASE_URL; for a reader (the dashboard), DASHBOARD_DATABASE_URL first.
    The one place this rule is written: the CLI's defaults, `depthwatch up`,
    the dashboard and the Python API all ask here."""
    return (reader and reader_database_url_from_env()) or _env("DATABASE_URL", "") or None


@dataclass(frozen=True)
class CollectorConfig:
    """
    category: what is recorded, as feed/registry.py names it: a Bybit category
        (linear, inverse, spot, option; env DEPTHWATCH_CATEGORY), or another
        exchange's venue (binance, binance-futures; `--exchange`, env
        DEPTHWATCH_EXCHANGE).
    symbols: symbols to record. Env DEPTHWATCH_SYMBOLS (comma-separated).
    depths: book depths to subscribe, each valid for the category; default the
        venue's (Bybit: 50; Binance: full, its only diff stream). Env DEPTHWATCH_DEPTH.
        RPI_DEPTH (`--rpi`, env DEPTHWATCH_RPI=1) records both books of orderbook.rpi.
    trades: also record publicTrade. Env DEPTHWATCH_TRADES=1.
    ws_url: WebSocket endpoint; default the venue's (mainnet, or testnet).
        Env BYBIT_WS_URL.
    rest_url: REST base URL for the whole book's snapshots (depth `full`);
        default the venue's (mainnet or testnet), or with ws_url set the same
        host over http(s) (the simulator serves both). Env BYBIT_REST_URL.
    rest_rate: snapshot requests per second at most (Bybit bans an IP past
        50 GET/s). Env DEPTHWATCH_REST_RATE.
    rest_levels: the levels a side asked of a REST snapshot, and the most it
        holds (0: the venue's most; Bybit 10,000, Binance spot 5,000, futures
        1,000); a side that long was cut, and the book is recorded as exact
        only within its prices. Env DEPTHWATCH_REST_LEVELS.
    database_url: PostgreSQL URL (postgres:// or postgresql://); None starts the
        embedded server with its data under data_dir. Env DATABASE_URL.
    data_dir: where the embedded PostgreSQL keeps its data. Env DEPTHWATCH_DATA_DIR.
    snapshot_interval_s / snapshot_levels: top-N snapshots for charts.
    checkpoint_interval_s: how often the whole book is stored, so exports and
        rebuilds start from a nearby known book.
    profile_interval_s: how often a whole book (depth full) is summarised for the
        dashboard (records.BookProfile).
    retention_days: drop partitions older than this; 0 keeps all.
    retention_waits_for_archive: with an archive configured (DEPTHWATCH_ARCHIVE_URL
        set), a day older than retention_days is dropped only once every stream
        of it is archived as it is now (`depthwatch archive`).
    topics_per_connection: spread topics over several connections.
    silence_timeout_s: the watchdog reconnects a connection silent this long.
    read_batch_s: wake the event loop at most once per this long under steady
        traffic and read every frame waiting (0: wake for each frame): less
        CPU per message at a slow pace, receive times up to this late. Env
        DEPTHWATCH_READ_BATCH_MS (milliseconds).
    legacy_depths: also accept depth 500 (Bybit archives, simulator replays).
    simulated: mark the recorded data as simulated (`depthwatch up --source sim`
        sets it; a collector pointed at the simulator by hand finds out from the
        handshake anyway). Env DEPTHWATCH_SIMULATED=1.
    heartbeat_interval_s: how often the collector writes its heartbeat row.
    journal_dir: where rows wait on local disk while the database is unreachable
        (and rows a crash left there are picked up at start); default
        <data_dir>/journal. Env DEPTHWATCH_JOURNAL_DIR.
    journal_max_mb: the journal's cap; beyond it rows are dropped and each
        stream's gap is recorded. Env DEPTHWATCH_JOURNAL_MAX_MB.
    spill_rows: rows kept in memory during an outage before they move to the
        journal (the memory bound). Env DEPTHWATCH_SPILL_ROWS.
    """

    category: str = "linear"
    symbols: tuple[str, ...] = ("BTCUSDT",)
    depths: tuple[int, ...] = ()  # empty: the venue's default_depths
    trades: bool = False
    testnet: bool = False
    ws_url: str | None = None
    rest_url: str | None = None
    rest_rate: float = 10.0
    rest_levels: int = 0
    database_url: str | None = None
    data_dir: Path = Path(".depthwatch")
    snapshot_interval_s: float = 1.0
    snapshot_levels: int = 50
    checkpoint_interval_s: float = 3600.0
    profile_interval_s: float = PROFILE_INTERVAL_US / 1_000_000
    retention_days: int = 30
    flush_interval_s: float = 0.25  # the issue asks for at most 0.25; busy: sooner
    topics_per_connection: int = 50
    silence_timeout_s: float = 30.0
    read_batch_s: float = 0.01
    legacy_depths: bool = False
    database_wait_s: float = 60.0
    status_interval_s: float = 10.0
    simulated: bool = False
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    journal_dir: Path | None = None
    journal_max_mb: float = 1024.0
    spill_rows: int = 50_000
    retention_waits_for_archive: bool = False
    collector_id: str = f"{socket.gethostname()}:{os.getpid()}"

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ConfigError(f"unknown category {self.category!r}; use one of {CATEGORIES}")
        if not self.symbols:
            raise ConfigError("no symbols given (--symbols BTCUSDT,ETHUSDT)")
        for symbol in self.symbols:
            if not is_symbol(symbol):
                raise ConfigError(f"{symbol!r} is not a symbol (letters, digits, '-', '_')")
        if not self.depths:
            object.__setattr__(self, "depths", self.venue.default_depths)
        allowed = self.venue.valid_depths(self.legacy_depths)
        for depth in self.depths:
            if depth not in allowed:
                raise ConfigError(
                    f"depth {depth_label(depth)} is not served for {self.category}; "
                    f"valid depths: {', '.join(map(depth_label, allowed))}"
                )
        if self.snapshot_interval_s <= 0 or self.snapshot_levels <= 0:
            raise ConfigError("snapshot interval and levels must be positive")
        if self.trades and self.category == "option":
            raise ConfigError(
                "--trades is not supported for options: Bybit publishes option trades per "
                "base coin (publicTrade.BTC), not per symbol"
            )
        if self.profile_interval_s < 1 or self.profile_interval_s % 1:
            raise ConfigError("the profile interval must be a whole number of seconds")
        if self.checkpoint_interval_s < 1:
            raise ConfigError("the checkpoint interval must be at least 1 second")
        if self.topics_per_connection <= 0:
            raise ConfigError("topics per connection must be positive")
        if self.journal_max_mb <= 0:
            raise ConfigError("the journal cap (--journal-max-mb) must be positive")
        if self.spill_rows <= 0:
            raise ConfigError("--spill-rows must be positive")
        if self.rest_rate <= 0 or self.rest_levels < 0:
            raise ConfigError("--rest-rate must be positive, --rest-levels not negative")
        if not 0 <= self.read_batch_s <= 1:
            raise ConfigError("--read-batch-ms must be between 0 and 1000")

    @property
    def journal_path(self) -> Path:
        return self.journal_dir or self.data_dir / "journal"

    @property
    def venue(self) -> Venue:
        return venue_of(self.category)

    @property
    def snapshot_levels_most(self) -> int:
        """The most levels a side a REST snapshot holds (see rest_levels)."""
        return self.rest_levels or self.venue.snapshot_levels

    @property
    def endpoint(self) -> str:
        venue = self.venue
        return self.ws_url or (venue.testnet_ws_url if self.testnet else venue.ws_url)

    @property
    def rest_endpoint(self) -> str:
        if self.rest_url:
            return self.rest_url
        if self.ws_url:  # the same server over HTTP: what the simulator serves
            parts = urllib.parse.urlsplit(self.ws_url)
            scheme = "https" if parts.scheme == "wss" else "http"
            return f"{scheme}://{parts.netloc}"
        return self.venue.testnet_rest_url if self.testnet else self.venue.rest_url

    @property
    def uses_exchange_endpoint(self) -> bool:
        return self.ws_url is None

    def book_streams(self) -> list[StreamKey]:
        """Every book recorded: a stream per symbol and subscribed depth, two
        for the RPI stream (records.recorded_depths)."""
        return [
            StreamKey(self.category, symbol, recorded)
            for symbol in self.symbols
            for depth in self.depths
            for recorded in recorded_depths(depth)
        ]

    def topics(self) -> list[str]:
        wire = self.venue.wire(self.category)
        topics = [
            wire.book_topic(StreamKey(self.category, symbol, depth))
            for symbol in self.symbols
            for depth in self.depths
        ]
        if self.trades:
            topics += [wire.trade_topic(s) for s in self.symbols]
        return topics


def add_database_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=database_url_from_env(),
        help="PostgreSQL URL, postgres:// or postgresql:// (env DATABASE_URL); "
        "unset: an embedded PostgreSQL with its data in --data-dir",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help="directory of the embedded PostgreSQL's data; survives restarts "
        "(env DEPTHWATCH_DATA_DIR, default .depthwatch)",
    )
    _add_number(
        parser,
        "--database-wait",
        float,
        "DEPTHWATCH_DATABASE_WAIT",
        60.0,
        "seconds to keep retrying an unreachable database before giving up",
    )


ARCHIVE_URL_ENV = "DEPTHWATCH_ARCHIVE_URL"
HOT_DAYS_ENV = "DEPTHWATCH_HOT_DAYS"


def archive_url_from_env() -> str | None:
    """DEPTHWATCH_ARCHIVE_URL: where `depthwatch archive` writes, if set."""
    return _env(ARCHIVE_URL_ENV, "") or None


def default_archive_dir(data_dir: Path) -> Path:
    """The archive beside the embedded database: <data dir>/archive."""
    return data_dir / "archive"


def add_archive_arguments(parser: argparse.ArgumentParser) -> None:
    from depthwatch.archive.layout import CSV_GZ, PARQUET
    from depthwatch.archive.store import DEFAULT_RETRY_FOR_S

    parser.add_argument(
        "--archive-url",
        default=archive_url_from_env(),
        help="a directory, or s3://bucket/prefix (endpoint: AWS_ENDPOINT_URL; keys: "
        f"AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) (env {ARCHIVE_URL_ENV}); unset: "
        "<data dir>/archive beside the embedded database",
    )
    parser.add_argument(
        "--format",
        action="append",
        choices=[PARQUET, CSV_GZ],
        help="parquet is always written; --format csv.gz also writes Tardis's gzip CSVs",
    )
    parser.add_argument(
        "--if-configured",
        action="store_true",
        help="with no --archive-url nor DEPTHWATCH_ARCHIVE_URL, say so and exit 0 "
        "(a scheduled job deployed before its archive is set up)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="first read back every archived file: a missing or changed one is archived "
        "again while the database still holds its day, else reported lost (exit 1)",
    )
    hot = _env(HOT_DAYS_ENV, "")
    if hot and not hot.isdigit():
        raise ConfigError(f"{HOT_DAYS_ENV}={hot!r} is not a number of days")
    parser.add_argument(
        "--hot-days",
        type=int,
        default=int(hot) if hot else None,
        metavar="N",
        help="keep today and the N days before it in PostgreSQL: older days whose every "
        "stream is archived, its manifest found in the archive, are dropped from it; "
        f"the rest stay and the run says why (env {HOT_DAYS_ENV}; unset: drop nothing)",
    )
    _add_number(
        parser,
        "--retry-for",
        float,
        "DEPTHWATCH_ARCHIVE_RETRY_S",
        DEFAULT_RETRY_FOR_S,
        "seconds to keep retrying a failing store (with backoff) before exiting 1",
    )
    add_database_arguments(parser)


def archive_url(args: argparse.Namespace, required: bool = True) -> str | None:
    """--archive-url, else the embedded database's archive; for a server's
    database with no archive named, ConfigError, or None when not `required`
    (`depthwatch up`) or with --if-configured."""
    if args.archive_url:
        return str(args.archive_url)
    if args.database_url and (not required or getattr(args, "if_configured", False)):
        return None
    if args.database_url:
        raise ConfigError(
            f"no archive named for this database: give --archive-url or {ARCHIVE_URL_ENV} "
            "(a directory or s3://bucket/prefix)"
        )
    return str(default_archive_dir(args.data_dir))


def add_collector_arguments(parser: argparse.ArgumentParser) -> None:
    d = CollectorConfig
    parser.add_argument(
        "--exchange",
        choices=EXCHANGE_CHOICES,
        default=_env("DEPTHWATCH_EXCHANGE", BYBIT),
        help="what to record: bybit (its --category), binance (spot) or binance-futures "
        "(USD-M) (env DEPTHWATCH_EXCHANGE, default bybit)",
    )
    parser.add_argument(
        "--category",
        choices=[c for c in CATEGORIES if VENUES[c].exchange == BYBIT],
        default=_env("DEPTHWATCH_CATEGORY", d.category),
        help="Bybit category, with --exchange bybit (env DEPTHWATCH_CATEGORY, default linear)",
    )
    parser.add_argument(
        "--streams",
        default=os.environ.get(STREAMS_ENV) or None,
        metavar="LIST",
        help="several markets at once, one collector (a child process) per market and "
        "depths: comma-separated EXCHANGE[:CATEGORY]:SYMBOL[:DEPTH], e.g. "
        "bybit:linear:BTCUSDT:50,binance-futures:BTCUSDT,hyperliquid:BTC (CATEGORY for "
        "bybit only; DEPTH default the exchange's); replaces --exchange, --category, "
        "--symbols and --depth; with --ws-url, that server (the simulator) serves each "
        f"market on its own path (env {STREAMS_ENV})",
    )
    parser.add_argument(
        "--symbols",
        default=_env("DEPTHWATCH_SYMBOLS", ",".join(d.symbols)),
        help="comma-separated symbols (env DEPTHWATCH_SYMBOLS, default BTCUSDT)",
    )
    parser.add_argument(
        "--depth",
        default=_env("DEPTHWATCH_DEPTH", "") or None,
        help="book depth, or several comma-separated; linear/inverse/spot: 1, 50, 200, 1000, "
        "full (the whole book: REST snapshot + orderbook.full deltas) or rpi (see --rpi); "
        "option: 25, 100; binance, binance-futures: full (REST snapshot + the diff depth "
        "stream) (env DEPTHWATCH_DEPTH, default 50 on Bybit, full on Binance)",
    )
    parser.add_argument(
        "--rpi",
        action="store_true",
        default=_env_flag("DEPTHWATCH_RPI"),
        help="also record orderbook.rpi.{symbol}: 50 levels with the ordinary and the "
        "Retail Price Improvement size of each, as the books rpi and rpi-sizes "
        "(same as adding rpi to --depth; linear/inverse/spot; env DEPTHWATCH_RPI=1)",
    )
    parser.add_argument(
        "--trades",
        action="store_true",
        default=_env_flag("DEPTHWATCH_TRADES"),
        help="also record publicTrade.{symbol} (env DEPTHWATCH_TRADES=1)",
    )
    parser.add_argument(
        "--testnet", action="store_true", help="connect to Bybit testnet instead of mainnet"
    )
    parser.add_argument(
        "--ws-url",
        default=os.environ.get("BYBIT_WS_URL") or None,
        help="WebSocket URL to connect to instead of Bybit's, e.g. "
        "ws://127.0.0.1:8765/v5/public/linear (env BYBIT_WS_URL)",
    )
    parser.add_argument(
        "--rest-url",
        default=os.environ.get("BYBIT_REST_URL") or None,
        help="REST base URL for the whole book's snapshots (--depth full), e.g. "
        "http://127.0.0.1:8765 (env BYBIT_REST_URL; default Bybit's, or the "
        "--ws-url host over http)",
    )
    _add_number(
        parser,
        "--rest-rate",
        float,
        "DEPTHWATCH_REST_RATE",
        d.rest_rate,
        "snapshot requests per second at most (Bybit bans an IP past 50 GET/s)",
    )
    _add_number(
        parser,
        "--rest-levels",
        int,
        "DEPTHWATCH_REST_LEVELS",
        d.rest_levels,
        "levels a side asked of a whole REST snapshot (default the exchange's most: "
        "Bybit 10000, Binance spot 5000, futures 1000); a side that long was cut and the "
        "book is exact only within it",
    )
    add_database_arguments(parser)
    _add_number(
        parser,
        "--snapshot-interval",
        float,
        "DEPTHWATCH_SNAPSHOT_INTERVAL",
        d.snapshot_interval_s,
        "seconds between recorded top-N book snapshots",
    )
    _add_number(
        parser,
        "--snapshot-levels",
        int,
        "DEPTHWATCH_SNAPSHOT_LEVELS",
        d.snapshot_levels,
        "levels per side in those snapshots",
    )
    _add_number(
        parser,
        "--checkpoint-interval",
        float,
        "DEPTHWATCH_CHECKPOINT_INTERVAL",
        d.checkpoint_interval_s,
        "seconds between stored whole-book checkpoints (exports start from the nearest)",
    )
    _add_number(
        parser,
        "--profile-interval",
        float,
        "DEPTHWATCH_PROFILE_INTERVAL",
        d.profile_interval_s,
        "seconds between a whole book's (--depth full) price-bucket profiles for the dashboard",
    )
    _add_number(
        parser,
        "--retention-days",
        int,
        "DEPTHWATCH_RETENTION_DAYS",
        d.retention_days,
        "drop daily partitions older than this many days; 0 keeps everything",
    )
    _add_number(
        parser,
        "--topics-per-connection",
        int,
        "DEPTHWATCH_TOPICS_PER_CONNECTION",
        d.topics_per_connection,
        "spread subscriptions over connections of at most this many topics",
    )
    _add_number(
        parser,
        "--silence-timeout",
        float,
        "DEPTHWATCH_SILENCE_TIMEOUT",
        d.silence_timeout_s,
        "reconnect a connection that received nothing for this many seconds",
    )
    _add_number(
        parser,
        "--read-batch-ms",
        float,
        "DEPTHWATCH_READ_BATCH_MS",
        d.read_batch_s * 1000,
        "wake at most once per this many ms and read all frames waiting: less CPU at a "
        "slow pace, receive times up to this late; 0 wakes for each frame",
    )
    parser.add_argument(
        "--journal-dir",
        type=Path,
        default=_env("DEPTHWATCH_JOURNAL_DIR", "") or None,
        help="where rows wait on disk while the database is unreachable "
        "(env DEPTHWATCH_JOURNAL_DIR, default <data dir>/journal)",
    )
    _add_number(
        parser,
        "--journal-max-mb",
        float,
        "DEPTHWATCH_JOURNAL_MAX_MB",
        d.journal_max_mb,
        "cap of that journal; beyond it rows are dropped and the gap recorded",
    )
    _add_number(
        parser,
        "--spill-rows",
        int,
        "DEPTHWATCH_SPILL_ROWS",
        d.spill_rows,
        "rows kept in memory while the database is unreachable; beyond, they go to the journal",
    )
    parser.add_argument(
        "--simulated",
        action="store_true",
        default=_env_flag("DEPTHWATCH_SIMULATED"),
        help="mark the recorded data as simulated (env DEPTHWATCH_SIMULATED=1; "
        "data from depthwatch's simulator is marked anyway)",
    )
    parser.add_argument(
        "--legacy-depths",
        action="store_true",
        help="also accept depth 500 (switched off by Bybit in 2025; for archive replays)",
    )


def _add_number(
    parser: argparse.ArgumentParser,
    flag: str,
    kind: type[int] | type[float],
    env: str,
    default: float,
    meaning: str,
) -> None:
    raw = _env(env, str(default))
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{env}={raw!r} is not a valid {kind.__name__}") from None
    parser.add_argument(
        flag, type=kind, default=value, help=f"{meaning} (env {env}, default {default:g})"
    )


def book_depth(text: str) -> int:
    """An argparse type: a depth as users type it ("50", "full")."""
    try:
        return parse_depth(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a depth is a number, full, rpi or rpi-sizes, not {text!r}"
        ) from None


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def collector_config_from_args(args: argparse.Namespace) -> CollectorConfig:
    category = args.category if args.exchange == BYBIT else args.exchange
    try:
        depths = (
            tuple(parse_depth(d) for d in _split(args.depth))
            if args.depth
            else venue_of(category).default_depths
        )
    except ValueError:
        raise ConfigError(f"--depth takes integers, full or rpi, got {args.depth!r}") from None
    if args.rpi and RPI_DEPTH not in depths:
        depths += (RPI_DEPTH,)
    return CollectorConfig(
        category=category,
        symbols=tuple(s.upper() for s in _split(args.symbols)),
        depths=depths,
        trades=args.trades,
        testnet=args.testnet,
        ws_url=args.ws_url,
        rest_url=args.rest_url,
        rest_rate=args.rest_rate,
        rest_levels=args.rest_levels,
        database_url=args.database_url,
        data_dir=args.data_dir,
        snapshot_interval_s=args.snapshot_interval,
        snapshot_levels=args.snapshot_levels,
        checkpoint_interval_s=args.checkpoint_interval,
        profile_interval_s=args.profile_interval,
        retention_days=args.retention_days,
        topics_per_connection=args.topics_per_connection,
        silence_timeout_s=args.silence_timeout,
        read_batch_s=args.read_batch_ms / 1000,
        legacy_depths=args.legacy_depths,
        database_wait_s=args.database_wait,
        simulated=args.simulated,
        journal_dir=args.journal_dir,
        journal_max_mb=args.journal_max_mb,
        spill_rows=args.spill_rows,
        retention_waits_for_archive=archive_url_from_env() is not None,
    )


STREAMS_ENV = "DEPTHWATCH_STREAMS"


@dataclass(frozen=True)
class StreamGroup:
    """The books one collector of `up --streams` records: one market, one set
    of depths, its symbols."""

    category: str
    depths: tuple[int, ...]
    symbols: tuple[str, ...]

    def flags(self) -> list[str]:
        """The collector flags that say what this group records."""
        venue = VENUES[self.category]
        exchange = ["--exchange=bybit", f"--category={self.category}"]
        if venue.exchange != BYBIT:
            exchange = [f"--exchange={self.category}"]
        return [
            *exchange,
            f"--symbols={','.join(self.symbols)}",
            f"--depth={','.join(depth_label(d) for d in self.depths)}",
        ]


# The collector flags --streams stands for.
STREAM_FLAGS = frozenset({"exchange", "category", "symbols", "depth", "rpi"})


def parse_streams(text: str) -> list[StreamGroup]:
    """`--streams`: EXCHANGE[:CATEGORY]:SYMBOL[:DEPTH] items, grouped by market
    and depths in the order given; ConfigError naming the item otherwise."""
    groups: dict[tuple[str, tuple[int, ...]], list[str]] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        parts = item.split(":")
        if parts[0] == BYBIT:
            parts = parts[1:]
            if not parts or parts[0] not in VENUES or VENUES[parts[0]].exchange != BYBIT:
                raise ConfigError(f"--streams {item!r}: bybit takes a category first")
        elif parts[0] not in VENUES or VENUES[parts[0]].exchange == BYBIT:
            raise ConfigError(
                f"--streams {item!r}: the exchange is one of {', '.join(EXCHANGE_CHOICES)}"
            )
        if len(parts) not in (2, 3):
            raise ConfigError(f"--streams {item!r}: EXCHANGE[:CATEGORY]:SYMBOL[:DEPTH]")
        category, symbol = parts[0], parts[1].upper()
        try:
            depths = (
                (parse_depth(parts[2]),) if len(parts) == 3 else VENUES[category].default_depths
            )
        except ValueError:
            raise ConfigError(f"--streams {item!r}: {parts[2]!r} is no depth") from None
        symbols = groups.setdefault((category, depths), [])
        if symbol not in symbols:
            symbols.append(symbol)
    if not groups:
        raise ConfigError("--streams names no stream")
    return [StreamGroup(c, d, tuple(s)) for (c, d), s in groups.items()]
