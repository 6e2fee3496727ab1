"""What an export request would produce, for the pages that offer files
(History, and Live's window): row and byte estimates from what the database
counts, the page's limits, the equivalent `depthwatch export` command, and
the file's name.

The estimate runs in one read-only transaction and is cached under the
inputs for ESTIMATE_TTL_S (a range that reaches "now" grows); requests above
the limits (rows or bytes, `DEPTHWATCH_HISTORY_MAX_ROWS` and
`DEPTHWATCH_HISTORY_MAX_MB`) get the command instead of a file.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import sqlalchemy as sa
import streamlit as st

from depthwatch.app import data
from depthwatch.clock import DAY_US, SECOND_US, utc_datetime
from depthwatch.export import files, kinds
from depthwatch.export.kinds import ExportKind
from depthwatch.export.tardis import ExportRequest, PlannedRequest, check_requests
from depthwatch.logs import first_line
from depthwatch.records import depth_label, levels_of
from depthwatch.storage.db import DatabaseUnavailable
from depthwatch.storage.read.events import source_simulated
from depthwatch.storage.read.rows import BookVolume, TradeCount
from depthwatch.storage.read.streams import NotRecorded, Stream, list_streams
from depthwatch.storage.read.tops import book_volume, recorded_span
from depthwatch.storage.read.trades import trade_count

log = logging.getLogger("depthwatch.app.planning")

ESTIMATE_TTL_S = 30.0
CLI_OUT_DIR = "exports/"

MAX_ROWS_ENV = "DEPTHWATCH_HISTORY_MAX_ROWS"
MAX_MB_ENV = "DEPTHWATCH_HISTORY_MAX_MB"
DEFAULT_MAX_ROWS = 1_000_000
DEFAULT_MAX_MB = 100.0
# A file being made is refused past this many times the byte limit: the
# estimate is approximate, the server's memory is not.
HARD_LIMIT_FACTOR = 4
MB = 1024 * 1024

# Bytes per row, measured once (the simulator's BTCUSDT, depth 50, prices
# like 60000.20 and sizes like 0.196, trade ids as UUIDs): scripts recorded 31 s
# at 500 msg/s and 81 s at 50 msg/s with the real collector, exported every
# kind in each format with files.write_export, and divided the file sizes by
# the rows; both paces agreed within a few per cent (below: the 50 msg/s run).
# CSV: bytes of a row after its `exchange,symbol,` prefix (which is added per
# symbol); csv.gz and Parquet: a share of the CSV's bytes.
CSV_ROW_BYTES = {"incremental_book_L2": 58.1, "quotes": 64.0, "trades": 90.6}
SNAPSHOT_ROW_BYTES = 34.0  # the two timestamps
SNAPSHOT_LEVEL_BYTES = 30.0  # one level: ask price and amount, bid price and amount
COMPRESSED_SHARE = {
    # kind: (csv.gz, parquet); measured 0.089/0.090, 0.164/0.299, 0.310/0.370
    "incremental_book_L2": (0.09, 0.09),
    "quotes": (0.165, 0.30),
    "trades": (0.31, 0.37),
    # a row at every change: rows differ by a level or two (5, 25, 50 levels:
    # gz 0.12, 0.08, 0.06; Parquet 0.22, 0.18, 0.16)
    "book_snapshot": (0.09, 0.19),
    # at interval ends rows differ more (25 levels, 100 ms: 0.15 / 0.33; 1 s:
    # 0.22 / Parquet's fixed footer dominates small files)
    "book_snapshot_interval": (0.2, 0.35),
}


# ---- estimates, limits, the command line


@dataclass(frozen=True)
class RowEstimate:
    rows: int
    mark: str  # "=" counted exactly, "≈" estimated, "≤" an upper bound

    @property
    def text(self) -> str:
        return f"{self.rows:,}" if self.mark == "=" else f"{self.mark} {self.rows:,}"


def book_rows(
    kind: ExportKind, volume: BookVolume, depth: int, start_us: int, end_us: int
) -> RowEstimate:
    """Rows of a book kind, from what book_volume counted:

    - incremental_book_L2 ≈ deltas x their mean levels + (snapshots + the
      opening book at `start`, when recorded before it) x a snapshot's levels
      (the sample's, else 2 x depth: a full book);
    - quotes ≈ messages x the sample's share of new tops, + schema 1-3 quotes;
    - book_snapshot_N_interval ≤ the interval buckets holding a message, + 1
      (the book at the first bucket end), and never more than the bucket ends
      in [start, end); book_snapshot_N ≤ messages + 1 (a row per change)."""
    total = volume.total_messages
    if kind.family == kinds.L2:
        if total == 0:
            return RowEstimate(0, "=")
        snapshot_levels = volume.snapshot_levels or 2.0 * levels_of(depth)
        deltas = max(0, total - volume.snapshots)
        opening = 1 if volume.recorded_before else 0
        rows = deltas * volume.delta_levels + (volume.snapshots + opening) * snapshot_levels
        return RowEstimate(round(rows), "≈")
    if kind.family == kinds.QUOTES:
        if volume.messages == 0:
            return RowEstimate(volume.legacy_quotes, "=")
        return RowEstimate(round(volume.messages * volume.new_quotes) + volume.legacy_quotes, "≈")
    spec = kind.snapshot
    if spec is None:
        raise ValueError(f"not a book kind: {kind.name!r}")
    if not spec.interval_us:
        return RowEstimate(total + 1, "≤")
    ends = -(-end_us // spec.interval_us) - -(-start_us // spec.interval_us)
    return RowEstimate(max(0, min(volume.buckets + 1, ends)), "≤")


def trade_rows(count: TradeCount) -> RowEstimate:
    return RowEstimate(count.rows, "=" if count.exact else "≈")


def csv_row_bytes(kind: ExportKind, exchange: str, symbol: str) -> float:
    prefix = len(exchange) + len(symbol) + 2
    spec = kind.snapshot
    if spec is None:
        return prefix + CSV_ROW_BYTES[kind.family]
    return prefix + SNAPSHOT_ROW_BYTES + spec.levels * SNAPSHOT_LEVEL_BYTES


def file_bytes(kind: ExportKind, fmt: str, exchange: str, symbol: str, rows: int) -> int:
    """≈ bytes of `rows` rows of one symbol in `fmt` (CSV_ROW_BYTES and
    COMPRESSED_SHARE), the CSV header included."""
    csv = rows * csv_row_bytes(kind, exchange, symbol) + len(kind.header()) + 1
    if fmt == "csv":
        return round(csv)
    spec = kind.snapshot
    family = kind.family + ("_interval" if spec is not None and spec.interval_us else "")
    gz, parquet = COMPRESSED_SHARE[family]
    return round(csv * (gz if fmt == "csv.gz" else parquet))


def combined_mark(marks: Sequence[str]) -> str:
    if all(m == "=" for m in marks):
        return "="
    return "≤" if "≈" not in marks else "≈"


def iso(ts_us: int) -> str:
    """A time as the CLI takes it: ISO 8601 in UTC, `Z`, microseconds if any."""
    moment = utc_datetime(ts_us)
    # %Y would write the year 1 as "1", which no ISO 8601 parser takes.
    text = f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}"
    return text + (f".{moment.microsecond:06d}" if moment.microsecond else "") + "Z"


def spans_days(start_us: int, end_us: int) -> bool:
    return start_us // DAY_US != (end_us - 1) // DAY_US


def cli_command(requests: Sequence[ExportRequest], fmt: str, out: str = CLI_OUT_DIR) -> str:
    """The `depthwatch export` command writing the same rows (cli.build_parser's
    flags): to a file, or with `out` ending in / one file per symbol (per UTC
    day when the range spans several, `--split daily`)."""
    first = requests[0]
    words = ["depthwatch", "export", "--kind", first.kind]
    words += ["--symbols", ",".join(r.symbol for r in requests), "--category", first.category]
    words += ["--start", iso(first.start_us), "--end", iso(first.end_us), "--format", fmt]
    if first.depth is not None and first.kind != "trades":
        words += ["--depth", depth_label(first.depth)]
    if out.endswith("/") and spans_days(first.start_us, first.end_us):
        words += ["--split", "daily"]
    words += ["--out", out]
    return " ".join(shlex.quote(word) for word in words)


def download_name(requests: Sequence[ExportRequest], fmt: str) -> str:
    """Tardis's name for one symbol (files.file_name); several symbols, one
    after another in one file, are `multi` in its place."""
    if len(requests) == 1:
        return files.file_name(requests[0], fmt)
    return files.file_name(replace(requests[0], symbol="multi"), fmt)


@dataclass(frozen=True)
class Limits:
    rows: int
    bytes: int


def limits(environ: Mapping[str, str] | None = None) -> Limits:
    """The largest request the page makes itself (the environment's, else
    1,000,000 rows and 100 MB); a bad value is logged and ignored."""
    if environ is None:
        environ = {
            MAX_ROWS_ENV: os.environ.get(MAX_ROWS_ENV, ""),
            MAX_MB_ENV: os.environ.get(MAX_MB_ENV, ""),
        }

    def number(name: str, default: float) -> float:
        raw = environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if value < 0:
            log.warning("%s=%r is not a non-negative number; using %g", name, raw, default)
            return default
        return value

    return Limits(
        int(number(MAX_ROWS_ENV, DEFAULT_MAX_ROWS)), int(number(MAX_MB_ENV, DEFAULT_MAX_MB) * MB)
    )


def over_limits(rows: int, size: int, limit: Limits) -> str | None:
    """Why a request is too large for the page, or None."""
    reasons = []
    if rows > limit.rows:
        reasons.append(f"more than {limit.rows:,} rows")
    if size > limit.bytes:
        reasons.append(f"more than {human_bytes(limit.bytes)}")
    return " and ".join(reasons) or None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.2f} GB"


# ---- the estimate: one read-only transaction, cached under the inputs


@dataclass(frozen=True)
class SymbolEstimate:
    symbol: str
    rows: RowEstimate
    bytes: int
    first_us: int | None  # recorded data in the range: first and last (seconds)
    last_us: int | None
    recorded: tuple[int, int] | None  # the stream's whole recording, for an empty range


@dataclass(frozen=True)
class Plan:
    """What the request would produce, or why it cannot be served."""

    error: str | None
    symbols: tuple[SymbolEstimate, ...] = ()
    simulated: bool | None = None
    took_ms: float = 0.0
    timed_out: bool = False

    @property
    def rows(self) -> RowEstimate:
        marks = [s.rows.mark for s in self.symbols]
        return RowEstimate(sum(s.rows.rows for s in self.symbols), combined_mark(marks))

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.symbols)


def plan(engine: sa.Engine, requests: Sequence[ExportRequest], fmt: str) -> Plan:
    """The requests checked as the export checks them first (check_requests),
    then the estimate of each (each symbol) in one read-only transaction."""
    started = time.perf_counter()
    try:
        planned = check_requests(engine, requests)
    except (NotRecorded, ValueError) as exc:
        return Plan(str(exc))
    with engine.connect() as conn, conn.begin():
        return _plan(conn, planned, fmt, started)


def _plan(
    conn: sa.Connection, requests: Sequence[PlannedRequest], fmt: str, started: float
) -> Plan:
    streams: list[Stream] | None = None  # read for trades only: their plan names no book
    estimates = []
    keys = []
    for request in requests:
        stream = request.stream
        if stream is None:
            streams = list_streams(conn) if streams is None else streams
            stream = _stream_of(streams, request)
        keys.append(stream.key)
        if request.spec.family == kinds.TRADES:
            count = trade_count(conn, stream.instrument_id, request.start_us, request.end_us)
            rows, first, last = trade_rows(count), count.first_us, count.last_us
        else:
            spec = request.spec.snapshot
            volume = book_volume(
                conn, stream, request.start_us, request.end_us, spec.interval_us if spec else 0
            )
            rows = book_rows(request.spec, volume, stream.depth, request.start_us, request.end_us)
            first, last = volume.first_us, volume.last_us
        recorded = recorded_span(conn, stream) if first is None else None
        size = file_bytes(request.spec, fmt, request.exchange, request.symbol, rows.rows)
        estimates.append(SymbolEstimate(request.symbol, rows, size, first, last, recorded))
    # Heartbeats carry receive times, a moment after the exchange's.
    simulated = source_simulated(
        conn, keys, requests[0].start_us, requests[0].end_us + 10 * SECOND_US
    )
    took = (time.perf_counter() - started) * 1000
    return Plan(None, tuple(estimates), simulated, took)


def _stream_of(streams: Sequence[Stream], request: ExportRequest) -> Stream:
    """A book stream of the request's symbol (its heartbeats say whether the
    data was simulated, its recorded span where the range holds nothing)."""
    found = [
        s
        for s in streams
        if (s.category, s.symbol) == (request.category, request.symbol)
        and (request.depth is None or s.depth == request.depth)
    ]
    return found[0]


@st.cache_data(ttl=ESTIMATE_TTL_S, show_spinner="Estimating ...", max_entries=256)
def cached_plan(
    category: str,
    symbols: tuple[str, ...],
    depth: int | None,
    kind: str,
    start_us: int,
    end_us: int,
    fmt: str,
) -> Plan:
    requests = export_requests(category, symbols, depth, kind, start_us, end_us)
    try:
        return plan(data.engine(), requests, fmt)
    except sa.exc.OperationalError as exc:
        if _sqlstate(exc) == QUERY_CANCELED:
            return Plan(TIMED_OUT, timed_out=True)
        raise data.DatabaseDown(first_line(exc)) from None
    except (sa.exc.InterfaceError, DatabaseUnavailable) as exc:
        raise data.DatabaseDown(first_line(exc)) from None


QUERY_CANCELED = "57014"  # the reader engine's statement_timeout ended a query
TIMED_OUT = (
    "Estimating this request took longer than the dashboard allows a query (5 s): "
    "it is too large for this page."
)


def _sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    orig = exc.orig
    return getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)


def export_requests(
    category: str, symbols: Sequence[str], depth: int | None, kind: str, start_us: int, end_us: int
) -> list[ExportRequest]:
    return [ExportRequest(kind, category, s, start_us, end_us, depth) for s in symbols]
