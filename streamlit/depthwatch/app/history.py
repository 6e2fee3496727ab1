"""The History page: pick symbols, a range, a kind and a format; see how many
rows and bytes that makes; download the file.

Nothing here runs on a timer: the page reruns only when an input changes,
and the estimate is cached under the inputs for ESTIMATE_TTL_S (a range that
reaches "now" grows). The file is made only when the download button is
clicked: Streamlit runs the button's `data` callable on its own thread, never
on a rerun; the rows stream from the database's server-side cursors into the
file, which Streamlit then holds in the server's memory for the session. So
requests above the limits (rows or bytes, `DEPTHWATCH_HISTORY_MAX_ROWS` and
`DEPTHWATCH_HISTORY_MAX_MB`) get the equivalent `depthwatch export` command
instead of a button.

Every choice lives in the URL (`/history?category=linear&symbols=BTCUSDT&
start=2026-01-01T10:00:00Z&end=...&kind=quotes&format=csv`), so a link
reopens the same request.
"""

from __future__ import annotations

import io
import logging
import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time

import sqlalchemy as sa
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from depthwatch.app import data
from depthwatch.app.common import load, recorded_streams, utc
from depthwatch.clock import (
    DAY_US,
    SECOND_US,
    TimeFormatError,
    datetime_us,
    parse_time_us,
    utc_datetime,
)
from depthwatch.clock import now_us as clock_now_us
from depthwatch.export import files
from depthwatch.export.snapshots import SnapshotSpec
from depthwatch.export.tardis import ExportRequest, check_kind, check_requests, header
from depthwatch.logs import first_line
from depthwatch.storage import dashboard_queries as q
from depthwatch.storage.db import DatabaseUnavailable
from depthwatch.storage.queries import NotRecorded

log = logging.getLogger("depthwatch.app.history")

KINDS = ("incremental_book_L2", "quotes", "trades", "book_snapshot")
SNAPSHOT_LEVELS = (1, 5, 10, 25, 50, 100, 200, 500, 1000)
DEFAULT_SNAPSHOT_LEVELS = 25
SNAPSHOT_INTERVALS = ("", "100ms", "1s", "10s", "1m")  # "": a row at every change
PRESETS_S = {"Last 10 min": 600, "Last hour": 3_600, "Last 24 h": 86_400}
DAY_PRESET = "Whole UTC day"
DEFAULT_PRESET = "Last hour"
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


# ---- pure planning: kinds, ranges, estimates, the command line


def snapshot_kind(levels: int, interval: str) -> str:
    """`book_snapshot_25_100ms`, or `book_snapshot_25` for a row at every change."""
    return f"book_snapshot_{levels}" + (f"_{interval}" if interval else "")


def split_kind(kind: str) -> tuple[str, int, str]:
    """(choice in KINDS, snapshot levels, snapshot interval) of a kind string;
    ValueError if it is not one the page offers."""
    check_kind(kind)
    if kind in KINDS:
        return kind, DEFAULT_SNAPSHOT_LEVELS, ""
    levels, _, interval = kind.removeprefix("book_snapshot_").partition("_")
    if int(levels) not in SNAPSHOT_LEVELS or interval not in SNAPSHOT_INTERVALS:
        offered = ", ".join(i or "none" for i in SNAPSHOT_INTERVALS)
        raise ValueError(f"{kind!r}: the page offers levels {SNAPSHOT_LEVELS}, intervals {offered}")
    return "book_snapshot", int(levels), interval


def preset_range(preset: str, now_us: int, day_of_us: int) -> tuple[int, int]:
    """[start, end) of a preset: the last N seconds up to now's whole second,
    or the whole UTC day holding `day_of_us`."""
    if preset == DAY_PRESET:
        day = day_of_us - day_of_us % DAY_US
        return day, day + DAY_US
    end = now_us - now_us % SECOND_US
    return end - PRESETS_S[preset] * SECOND_US, end


@dataclass(frozen=True)
class RowEstimate:
    rows: int
    mark: str  # "=" counted exactly, "≈" estimated, "≤" an upper bound

    @property
    def text(self) -> str:
        return f"{self.rows:,}" if self.mark == "=" else f"{self.mark} {self.rows:,}"


def book_rows(
    kind: str, volume: q.BookVolume, depth: int, start_us: int, end_us: int
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
    if kind == "incremental_book_L2":
        if total == 0:
            return RowEstimate(0, "=")
        snapshot_levels = volume.snapshot_levels or 2.0 * depth
        deltas = max(0, total - volume.snapshots)
        opening = 1 if volume.recorded_before else 0
        rows = deltas * volume.delta_levels + (volume.snapshots + opening) * snapshot_levels
        return RowEstimate(round(rows), "≈")
    if kind == "quotes":
        if volume.messages == 0:
            return RowEstimate(volume.legacy_quotes, "=")
        return RowEstimate(round(volume.messages * volume.new_quotes) + volume.legacy_quotes, "≈")
    spec = SnapshotSpec.parse(kind)
    if spec is None:
        raise ValueError(f"not a book kind: {kind!r}")
    if not spec.interval_us:
        return RowEstimate(total + 1, "≤")
    ends = -(-end_us // spec.interval_us) - -(-start_us // spec.interval_us)
    return RowEstimate(max(0, min(volume.buckets + 1, ends)), "≤")


def trade_rows(count: q.TradeCount) -> RowEstimate:
    return RowEstimate(count.rows, "=" if count.exact else "≈")


def csv_row_bytes(kind: str, exchange: str, symbol: str) -> float:
    prefix = len(exchange) + len(symbol) + 2
    spec = SnapshotSpec.parse(kind)
    if spec is None:
        return prefix + CSV_ROW_BYTES[kind]
    return prefix + SNAPSHOT_ROW_BYTES + spec.levels * SNAPSHOT_LEVEL_BYTES


def file_bytes(kind: str, fmt: str, exchange: str, symbol: str, rows: int) -> int:
    """≈ bytes of `rows` rows of one symbol in `fmt` (CSV_ROW_BYTES and
    COMPRESSED_SHARE), the CSV header included."""
    csv = rows * csv_row_bytes(kind, exchange, symbol) + len(header(kind)) + 1
    if fmt == "csv":
        return round(csv)
    spec = SnapshotSpec.parse(kind)
    family = kind if spec is None else "book_snapshot" + ("_interval" if spec.interval_us else "")
    gz, parquet = COMPRESSED_SHARE[family]
    return round(csv * (gz if fmt == "csv.gz" else parquet))


def combined_mark(marks: Sequence[str]) -> str:
    if all(m == "=" for m in marks):
        return "="
    return "≤" if "≈" not in marks else "≈"


def iso(ts_us: int) -> str:
    """A time as the CLI takes it: ISO 8601 in UTC, `Z`, microseconds if any."""
    moment = utc_datetime(ts_us)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
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
        words += ["--depth", str(first.depth)]
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
        check_requests(engine, requests)
    except (NotRecorded, ValueError) as exc:
        return Plan(str(exc))
    with engine.connect() as conn, conn.begin():
        return _plan(conn, requests, fmt, started)


def _plan(conn: sa.Connection, requests: Sequence[ExportRequest], fmt: str, started: float) -> Plan:
    streams = q.list_streams(conn)
    estimates = []
    keys = []
    for request in requests:
        stream = _stream_of(streams, request)
        keys.append(stream.key)
        if request.kind == "trades":
            count = q.trade_count(conn, stream.instrument_id, request.start_us, request.end_us)
            rows, first, last = trade_rows(count), count.first_us, count.last_us
        else:
            spec = SnapshotSpec.parse(request.kind)
            volume = q.book_volume(
                conn,
                stream.instrument_id,
                stream.depth,
                request.start_us,
                request.end_us,
                spec.interval_us if spec else 0,
            )
            rows = book_rows(request.kind, volume, stream.depth, request.start_us, request.end_us)
            first, last = volume.first_us, volume.last_us
        recorded = (
            q.recorded_span(conn, stream.instrument_id, stream.depth) if first is None else None
        )
        size = file_bytes(request.kind, fmt, request.exchange, request.symbol, rows.rows)
        estimates.append(SymbolEstimate(request.symbol, rows, size, first, last, recorded))
    # Heartbeats carry receive times, a moment after the exchange's.
    simulated = q.source_simulated(
        conn, keys, requests[0].start_us, requests[0].end_us + 10 * SECOND_US
    )
    took = (time.perf_counter() - started) * 1000
    return Plan(None, tuple(estimates), simulated, took)


def _stream_of(streams: Sequence[q.StreamRow], request: ExportRequest) -> q.StreamRow:
    """The stream a request reads (check_requests made sure there is one)."""
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
    requests = _requests(category, symbols, depth, kind, start_us, end_us)
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


def _requests(
    category: str, symbols: Sequence[str], depth: int | None, kind: str, start_us: int, end_us: int
) -> list[ExportRequest]:
    return [ExportRequest(kind, category, s, start_us, end_us, depth) for s in symbols]


# ---- the file, made when clicked


class FileTooLarge(RuntimeError):
    """The file being made outgrew the hard limit (the estimate was far off)."""


class _CappedBuffer(io.BytesIO):
    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.tell() + len(b) > self.cap:
            raise FileTooLarge(f"the file passed {human_bytes(self.cap)}: use the command line")
        return super().write(b)


def exporter(
    engine: sa.Engine, requests: Sequence[ExportRequest], fmt: str, cap: int
) -> Callable[[], bytes]:
    """The download button's `data`: run by Streamlit only when clicked."""
    chosen = list(requests)

    def generate() -> bytes:
        buffer = _CappedBuffer(cap)
        files.write_export(engine, chosen, fmt, buffer, progress_to=None)
        return buffer.getvalue()

    return generate


# ---- the page


def render() -> None:
    st.title("History")
    streams = recorded_streams()
    if streams is None:
        return
    choice = _controls(streams)
    if choice is None:
        return
    category, symbols, depth, kind, start_us, end_us, fmt = choice
    _explain(kind, start_us, end_us)
    result = load(lambda: cached_plan(category, symbols, depth, kind, start_us, end_us, fmt))
    if result is None:
        return
    requests = _requests(category, symbols, depth, kind, start_us, end_us)
    if result.error is not None:
        st.error(result.error, icon=":material/error:")
        if result.timed_out:
            st.code(cli_command(requests, fmt), language="bash", wrap_lines=True)
        return
    _source_badge(result.simulated)
    _estimate(result, kind)
    _offer(result, requests, fmt)


Choice = tuple[str, tuple[str, ...], int | None, str, int, int, str]
_K = "history_"  # session keys of this page's widgets


def _controls(streams: list[q.StreamRow]) -> Choice | None:
    """The inputs, seeded from the URL on a first visit and written back to it."""
    categories = sorted({s.category for s in streams})
    now = clock_now_us()
    _seed(streams, categories, now)
    by_category = {c: sorted({s.symbol for s in streams if s.category == c}) for c in categories}

    top = st.columns([1, 3, 1], vertical_alignment="bottom")
    category = top[0].selectbox(
        "Category",
        categories,
        index=None,
        key=_K + "category",
        on_change=_category_changed,
        args=(by_category,),
    )
    symbols = top[1].multiselect("Symbols", by_category.get(category or "", []), key=_K + "symbols")
    depth = _depth_control(top[2], streams, category, symbols)

    st.markdown("**Range** (UTC, exchange time: rows stamped at *start* are in, at *end* out)")
    presets = st.columns(len(PRESETS_S) + 1)
    for column, name in zip(presets, [*PRESETS_S, DAY_PRESET], strict=True):
        column.button(
            name,
            key=_K + "preset-" + name,
            on_click=_apply_preset,
            args=(name,),
            help="The UTC day of the start date" if name == DAY_PRESET else None,
            width="stretch",
        )
    when = st.columns(4)
    start_date = when[0].date_input(
        "Start date (UTC)", value=None, key=_K + "start_date", format="YYYY-MM-DD"
    )
    start_time = when[1].time_input(
        "Start time (UTC)", value=None, key=_K + "start_time", step=timedelta(seconds=1)
    )
    end_date = when[2].date_input(
        "End date (UTC)", value=None, key=_K + "end_date", format="YYYY-MM-DD"
    )
    end_time = when[3].time_input(
        "End time (UTC)", value=None, key=_K + "end_time", step=timedelta(seconds=1)
    )

    what = st.columns([3, 1, 1, 2], vertical_alignment="bottom")
    kind_choice = what[0].segmented_control("Kind", KINDS, required=True, key=_K + "kind")
    kind = kind_choice or KINDS[0]
    if kind == "book_snapshot":
        deepest = (
            depth
            if isinstance(depth, int)
            else min(
                (s.depth for s in streams if s.category == category and s.symbol in symbols),
                default=max(SNAPSHOT_LEVELS),
            )
        )
        offered = [n for n in SNAPSHOT_LEVELS if n <= deepest] or [1]
        if st.session_state.get(_K + "levels") not in offered:
            st.session_state[_K + "levels"] = min(DEFAULT_SNAPSHOT_LEVELS, offered[-1])
        levels = what[1].selectbox("Levels", offered, index=None, key=_K + "levels")
        interval = what[2].selectbox(
            "Interval",
            SNAPSHOT_INTERVALS,
            index=None,
            key=_K + "interval",
            format_func=lambda i: i or "every change",
        )
        kind = snapshot_kind(int(levels or offered[-1]), interval or "")
    fmt = what[3].segmented_control("Format", files.FORMATS, required=True, key=_K + "format")
    fmt = fmt or files.FORMATS[0]

    start_us = _combine(start_date, start_time)
    end_us = _combine(end_date, end_time)
    params = {"category": category or "", "symbols": ",".join(symbols), "kind": kind}
    params |= {"format": fmt, "start": iso(start_us) if start_us is not None else ""}
    params |= {"end": iso(end_us) if end_us is not None else ""}
    if isinstance(depth, int):
        params["depth"] = str(depth)
    st.query_params.from_dict(params)

    if category is None or not symbols:
        st.info("Pick at least one symbol.", icon=":material/info:")
        return None
    if start_us is None or end_us is None:
        st.info("Set the start and the end of the range.", icon=":material/info:")
        return None
    if end_us <= start_us:
        st.error("The end must be after the start.", icon=":material/error:")
        return None
    if isinstance(depth, str):
        st.error(depth, icon=":material/error:")
        return None
    return category, tuple(symbols), depth, kind, start_us, end_us, fmt


def _depth_control(
    column: DeltaGenerator, streams: list[q.StreamRow], category: str | None, symbols: list[str]
) -> int | str | None:
    """A depth choice, only when a chosen symbol was recorded at several:
    the depth, None when each symbol has one, or why no depth serves them all."""
    depths = {
        sym: sorted(s.depth for s in streams if s.category == category and s.symbol == sym)
        for sym in symbols
    }
    if all(len(d) <= 1 for d in depths.values()):
        st.session_state.pop(_K + "depth", None)
        return None
    common = sorted(set.intersection(*(set(d) for d in depths.values())))
    if not common:
        listed = "; ".join(f"{sym}: {', '.join(map(str, d))}" for sym, d in depths.items())
        return f"These symbols were recorded at different depths ({listed}): export them apart."
    if st.session_state.get(_K + "depth") not in common:
        st.session_state[_K + "depth"] = common[-1]
    return int(column.selectbox("Depth", common, index=None, key=_K + "depth") or common[-1])


def _combine(day: date | None, moment: clock_time | None) -> int | None:
    if day is None or moment is None:
        return None
    return datetime_us(datetime.combine(day, moment, tzinfo=UTC))


def _set_range(start_us: int, end_us: int) -> None:
    state = st.session_state
    for name, ts in (("start", start_us), ("end", end_us)):
        moment = datetime.fromtimestamp(ts // SECOND_US, UTC)
        state[f"{_K}{name}_date"] = moment.date()
        state[f"{_K}{name}_time"] = moment.time()


def _apply_preset(name: str) -> None:
    start_date = st.session_state.get(_K + "start_date")
    day_of = (
        datetime_us(datetime.combine(start_date, clock_time(), tzinfo=UTC))
        if start_date is not None
        else clock_now_us()
    )
    _set_range(*preset_range(name, clock_now_us(), day_of))


def _category_changed(by_category: dict[str, list[str]]) -> None:
    chosen = st.session_state.get(_K + "category")
    st.session_state[_K + "symbols"] = by_category.get(str(chosen), [])[:1]


def _shown(value: str) -> str:
    """A URL value quoted in a message: short, and unable to close the code span."""
    return repr(value[:60].replace("`", "'"))


def _seed(streams: list[q.StreamRow], categories: list[str], now: int) -> None:
    """Each input's value from the URL, or its default, when the session has
    none yet (a first visit, or back from another page); a URL value that
    names nothing recorded is told so and replaced."""
    state, params = st.session_state, st.query_params
    problems: list[str] = []

    def wanted(name: str) -> str | None:
        value = params.get(name)
        return value if value else None

    if _K + "category" not in state:
        category = wanted("category")
        if category is not None and category not in categories:
            problems.append(f"`category` {_shown(category)}")
            category = None
        state[_K + "category"] = category or categories[0]
    category = state[_K + "category"]
    recorded = sorted({s.symbol for s in streams if s.category == category})
    if _K + "symbols" not in state:
        asked = [s.strip().upper() for s in (wanted("symbols") or "").split(",") if s.strip()]
        unknown = [s for s in asked if s not in recorded]
        if unknown:
            problems.append(f"`symbols` {_shown(','.join(unknown))}")
        state[_K + "symbols"] = [s for s in asked if s in recorded] or recorded[:1]
    if _K + "depth" not in state and wanted("depth") is not None:
        try:
            state[_K + "depth"] = int(wanted("depth") or "")
        except ValueError:
            problems.append(f"`depth` {_shown(wanted('depth') or '')}")
    if _K + "start_date" not in state:
        start, end = preset_range(DEFAULT_PRESET, now, now)
        for name in ("start", "end"):
            text = wanted(name)
            if text is None:
                continue
            try:
                value = parse_time_us(text, now)
            except TimeFormatError:
                problems.append(f"`{name}` {_shown(text)}")
                continue
            start, end = (value, end) if name == "start" else (start, value)
        _set_range(start, end)
    if _K + "kind" not in state:
        choice, levels, interval = KINDS[0], DEFAULT_SNAPSHOT_LEVELS, ""
        kind = wanted("kind")
        if kind is not None:
            try:
                choice, levels, interval = split_kind(kind)
            except ValueError:
                problems.append(f"`kind` {_shown(kind)}")
        state[_K + "kind"] = choice
        state[_K + "levels"] = levels
        state[_K + "interval"] = interval
    if _K + "format" not in state:
        fmt = wanted("format")
        if fmt is not None and fmt not in files.FORMATS:
            problems.append(f"`format` {_shown(fmt)}")
            fmt = None
        state[_K + "format"] = fmt or files.FORMATS[0]
    state.setdefault(_K + "interval", "")
    if problems:
        st.warning(
            "The URL's " + ", ".join(problems) + " names nothing this page can export "
            "(recorded symbols, a kind, csv/csv.gz/parquet, ISO 8601 UTC times): "
            "showing the defaults instead.",
            icon=":material/link_off:",
        )


def _explain(kind: str, start_us: int, end_us: int) -> None:
    span_s = (end_us - start_us) / SECOND_US
    st.caption(
        f"**[{utc(start_us, True)}, {utc(end_us, True)})** ({_duration(span_s)}): the range "
        "is half-open and applies to the exchange timestamp (`timestamp`), in UTC. "
        "Tardis.dev layouts, microsecond timestamps since the epoch (`local_timestamp`: "
        "when the collector received the message); csv.gz is the same CSV gzipped, Parquet "
        "the same columns (prices as float64) plus `exchange_time` and `local_time` typed."
        + (
            " incremental_book_L2 opens with the book as it stood at the start "
            "(`is_snapshot=true` rows stamped at the start)."
            if kind == "incremental_book_L2"
            else ""
        )
    )
    columns = header(kind)
    shown = columns if len(columns) <= 160 else columns[:160] + ",..."
    st.caption(f"Columns: `{shown}`")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:.4g} h"


def _source_badge(simulated: bool | None) -> None:
    if simulated:
        st.badge("SIMULATED data", icon=":material/science:", color="violet")
        st.caption(
            "A collector recording these streams in this range read depthwatch's "
            "simulator, not Bybit (its heartbeats say so)."
        )
    elif simulated is None:
        st.caption(
            "Data source unknown: no collector heartbeat is stored for this range "
            "(recorded before heartbeats existed, schema 3, or nothing recorded)."
        )
    else:
        st.caption("Data source: Bybit (the collectors' heartbeats in this range).")


HOW = {
    "incremental_book_L2": "≈ book messages (counted per second) x mean levels per message "
    "(from the range's newest chunks), plus the opening book",
    "quotes": "≈ book messages (counted per second) x the share of them that changed the "
    "top of book (from the range's newest chunks)",
    "trades": f"counted exactly (≈ past {q.TRADE_COUNT_CAP:,}: extrapolated from the pace "
    "of the first ones)",
}


def _estimate(result: Plan, kind: str) -> None:
    rows = result.rows
    size = result.bytes
    left, middle, right = st.columns(3)
    left.metric("Rows", rows.text)
    middle.metric("Size", ("≤ " if rows.mark == "≤" else "≈ ") + human_bytes(size))
    right.metric("Symbols", len(result.symbols))
    spec = SnapshotSpec.parse(kind)
    how = HOW.get(kind) or (
        "≤ one row per interval bucket holding a message (+ the book at the first bucket end)"
        if spec is not None and spec.interval_us
        else "≤ one row per book message (a row at each change of the top levels)"
    )
    st.caption(
        f"Rows: {how}. Size ≈ rows x bytes per row measured on the simulator's data (real "
        f"markets' digits may compress differently). Estimated in {result.took_ms:,.0f} ms."
    )
    if len(result.symbols) > 1:
        st.dataframe(
            [
                {
                    "symbol": s.symbol,
                    "rows": s.rows.text,
                    "size": human_bytes(s.bytes),
                    "data from": utc(s.first_us, True),
                    "data to": utc(s.last_us, True),
                }
                for s in result.symbols
            ],
            hide_index=True,
            key=_K + "per-symbol",
        )
    for s in result.symbols:
        if s.first_us is None:  # nothing recorded in the range
            span = (
                f"from {utc(s.recorded[0], True)} to {utc(s.recorded[1], True)}"
                if s.recorded
                else ""
            )
            if kind == "trades":
                what = "no trades recorded in this range (a collector records them with `--trades`)"
                recorded = f"; its book was recorded {span}." if span else "."
            else:
                what = "no book messages recorded in this range"
                recorded = f". Recorded {span}." if span else "."
            st.info(f"{s.symbol}: {what}{recorded}", icon=":material/hourglass_empty:")


def _offer(result: Plan, requests: list[ExportRequest], fmt: str) -> None:
    limit = limits()
    rows = result.rows.rows
    too_large = over_limits(rows, result.bytes, limit)
    if too_large is not None:
        st.warning(
            f"This request ({result.rows.text} rows, {human_bytes(result.bytes)}) is over "
            f"this page's limit: {too_large}. Files are made in the dashboard's memory; "
            "export this one from the command line, where `DATABASE_URL` points at this "
            "database (or add `--database-url`):",
            icon=":material/terminal:",
        )
        st.code(cli_command(requests, fmt), language="bash", wrap_lines=True)
        return
    name = download_name(requests, fmt)
    st.download_button(
        f"Download {name}",
        data=exporter(data.engine(), requests, fmt, limit.bytes * HARD_LIMIT_FACTOR),
        file_name=name,
        mime=files.MEDIA_TYPES[fmt],
        on_click="ignore",
        key=_K + "download",
        icon=":material/download:",
        type="primary",
    )
    several = " (the symbols one after another, under one header)" if len(requests) > 1 else ""
    st.caption(f"Made when you click{several}; the same bytes from the command line:")
    st.code(cli_command(requests, fmt, out=name), language="bash", wrap_lines=True)
