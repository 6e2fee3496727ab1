"""The History page: pick symbols, a range, a kind and a format; see how many
rows and bytes that makes (app.planning); make the file and download it.

Nothing here runs on a timer: the page reruns only when an input changes. The
file is made only when its button is clicked, on disk (app.downloads), and
handed out once through the download route; requests above the limits get
the equivalent `depthwatch export` command instead of a button.

Every choice lives in the URL (`/history?category=linear&symbols=BTCUSDT&
start=2026-01-01T10:00:00Z&end=...&kind=quotes&format=csv`), so a link
reopens the same request.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from depthwatch.app import data, downloads
from depthwatch.app.common import load, recorded_streams, shown_param, utc
from depthwatch.app.planning import (
    HARD_LIMIT_FACTOR,
    Plan,
    cached_plan,
    cli_command,
    download_name,
    export_requests,
    human_bytes,
    iso,
    limits,
    over_limits,
)
from depthwatch.clock import (
    DAY_US,
    MAX_US,
    MIN_US,
    SECOND_US,
    TimeFormatError,
    datetime_us,
    parse_time_us,
)
from depthwatch.clock import now_us as clock_now_us
from depthwatch.export import files, kinds
from depthwatch.export.kinds import ExportKind
from depthwatch.export.tardis import ExportRequest
from depthwatch.records import depth_label, parse_depth
from depthwatch.storage.read.streams import Stream
from depthwatch.storage.read.trades import TRADE_COUNT_CAP

KINDS = kinds.FAMILIES  # book_snapshot is one choice, its levels and interval apart
SNAPSHOT_LEVELS = (1, 5, 10, 25, 50, 100, 200, 500, 1000)
DEFAULT_SNAPSHOT_LEVELS = 25
SNAPSHOT_INTERVALS = ("", "100ms", "1s", "10s", "1m")  # "": a row at every change
PRESETS_S = {"Last 10 min": 600, "Last hour": 3_600, "Last 24 h": 86_400}
DAY_PRESET = "Whole UTC day"
DEFAULT_PRESET = "Last hour"

# ---- the page's choices: kinds, presets


def snapshot_kind(levels: int, interval: str) -> str:
    """`book_snapshot_25_100ms`, or `book_snapshot_25` for a row at every change."""
    return f"book_snapshot_{levels}" + (f"_{interval}" if interval else "")


def split_kind(kind: str) -> tuple[str, int, str]:
    """(choice in KINDS, snapshot levels, snapshot interval) of a kind string;
    ValueError if it is not one the page offers."""
    spec = ExportKind.parse(kind)
    if spec.family not in KINDS:
        raise ValueError(f"{kind!r}: the page offers {', '.join(KINDS)}")
    if spec.snapshot is None:
        return kind, DEFAULT_SNAPSHOT_LEVELS, ""
    levels, _, interval = kind.removeprefix("book_snapshot_").partition("_")
    if spec.snapshot.levels not in SNAPSHOT_LEVELS or interval not in SNAPSHOT_INTERVALS:
        offered = ", ".join(i or "none" for i in SNAPSHOT_INTERVALS)
        raise ValueError(f"{kind!r}: the page offers levels {SNAPSHOT_LEVELS}, intervals {offered}")
    return kinds.BOOK_SNAPSHOT, int(levels), interval


def preset_range(preset: str, now_us: int, day_of_us: int) -> tuple[int, int]:
    """[start, end) of a preset: the last N seconds up to now's whole second,
    or the whole UTC day holding `day_of_us`."""
    if preset == DAY_PRESET:
        day = day_of_us - day_of_us % DAY_US
        return day, day + DAY_US
    end = now_us - now_us % SECOND_US
    return end - PRESETS_S[preset] * SECOND_US, end


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
    requests = export_requests(category, symbols, depth, kind, start_us, end_us)
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


def _controls(streams: list[Stream]) -> Choice | None:
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

    # The kinds' labels are long: their own row, so none is cut at 1280 px.
    kind_choice = st.segmented_control("Kind", KINDS, required=True, key=_K + "kind")
    what = st.columns([2, 1, 1], vertical_alignment="bottom")
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
    fmt = what[0].segmented_control("Format", files.FORMATS, required=True, key=_K + "format")
    fmt = fmt or files.FORMATS[0]

    start_us = _combine(start_date, start_time)
    end_us = _combine(end_date, end_time)
    params = {"category": category or "", "symbols": ",".join(symbols), "kind": kind}
    params |= {"format": fmt, "start": iso(start_us) if start_us is not None else ""}
    params |= {"end": iso(end_us) if end_us is not None else ""}
    if isinstance(depth, int):
        params["depth"] = depth_label(depth)
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
    if start_us < MIN_US or end_us > MAX_US:
        st.error("The range must lie between 1970 and the year 9999.", icon=":material/error:")
        return None
    if isinstance(depth, str):
        st.error(depth, icon=":material/error:")
        return None
    return category, tuple(symbols), depth, kind, start_us, end_us, fmt


def _depth_control(
    column: DeltaGenerator, streams: list[Stream], category: str | None, symbols: list[str]
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
        listed = "; ".join(f"{sym}: {', '.join(map(depth_label, d))}" for sym, d in depths.items())
        return f"These symbols were recorded at different depths ({listed}): export them apart."
    if st.session_state.get(_K + "depth") not in common:
        st.session_state[_K + "depth"] = common[-1]
    chosen = column.selectbox(
        "Depth", common, index=None, key=_K + "depth", format_func=depth_label
    )
    return int(chosen or common[-1])


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


def _seed(streams: list[Stream], categories: list[str], now: int) -> None:
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
            problems.append(f"`category` {shown_param(category)}")
            category = None
        state[_K + "category"] = category or categories[0]
    category = state[_K + "category"]
    recorded = sorted({s.symbol for s in streams if s.category == category})
    if _K + "symbols" not in state:
        asked = [s.strip().upper() for s in (wanted("symbols") or "").split(",") if s.strip()]
        unknown = [s for s in asked if s not in recorded]
        if unknown:
            problems.append(f"`symbols` {shown_param(','.join(unknown))}")
        state[_K + "symbols"] = [s for s in asked if s in recorded] or recorded[:1]
    if _K + "depth" not in state and wanted("depth") is not None:
        try:
            state[_K + "depth"] = parse_depth(wanted("depth") or "")
        except ValueError:
            problems.append(f"`depth` {shown_param(wanted('depth') or '')}")
    if _K + "start_date" not in state:
        start, end = preset_range(DEFAULT_PRESET, now, now)
        for name in ("start", "end"):
            text = wanted(name)
            if text is None:
                continue
            try:
                value = parse_time_us(text, now)
            except TimeFormatError:
                problems.append(f"`{name}` {shown_param(text)}")
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
                problems.append(f"`kind` {shown_param(kind)}")
        state[_K + "kind"] = choice
        state[_K + "levels"] = levels
        state[_K + "interval"] = interval
    if _K + "format" not in state:
        fmt = wanted("format")
        if fmt is not None and fmt not in files.FORMATS:
            problems.append(f"`format` {shown_param(fmt)}")
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
    columns = ExportKind.parse(kind).header()
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
    "trades": f"counted exactly (≈ past {TRADE_COUNT_CAP:,}: extrapolated from the pace "
    "of the first ones)",
}


def _estimate(result: Plan, kind: str) -> None:
    rows = result.rows
    size = result.bytes
    left, middle, right = st.columns(3)
    left.metric("Rows", rows.text)
    middle.metric("Size", ("≤ " if rows.mark == "≤" else "≈ ") + human_bytes(size))
    right.metric("Symbols", len(result.symbols))
    spec = ExportKind.parse(kind).snapshot
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
    too_large = over_limits(result.rows.rows, result.bytes, limit)
    if too_large is not None:
        st.warning(
            f"This request ({result.rows.text} rows, {human_bytes(result.bytes)}) is over "
            f"this page's limit: {too_large}. Export this one from the command line, where "
            "`DATABASE_URL` points at this database (or add `--database-url`):",
            icon=":material/terminal:",
        )
        st.code(cli_command(requests, fmt), language="bash", wrap_lines=True)
        return
    name = download_name(requests, fmt)
    downloads.offer(
        _K + "download",
        name,
        files.MEDIA_TYPES[fmt],
        lambda out: files.write_export(data.engine(), requests, fmt, out, progress_to=None),
        limit.bytes * HARD_LIMIT_FACTOR,
    )
    several = " (the symbols one after another, under one header)" if len(requests) > 1 else ""
    st.caption(
        f"Made on this server when you click{several}; the same bytes from the command line:"
    )
    st.code(cli_command(requests, fmt, out=name), language="bash", wrap_lines=True)
