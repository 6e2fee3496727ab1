"""bench_dashboard.py's phase 1: the window queries of the Live page on a 1 h
and a 24 h history (see bench_dashboard.py's docstring), timed one by one
where the page's data module calls them, the whole read, the figures built
and serialised as Streamlit does, and the report of p50 / p95 and ratios.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from common import fmt_s, pct
from dash_history import (
    HOUR_S,
    LEGACY_STREAM,
    PACKED_STREAM,
    History,
    database_bytes,
    generate_history,
)
from dash_packed import Recording, generate_packed_history, legacy_name, packed_name
from depthwatch.storage.db import make_reader_engine

WINDOWS_MIN = (10, 60)


def _quiet_streamlit() -> None:
    """The app's cached functions run here without a Streamlit server (bare mode),
    which Streamlit reports with a warning on every call."""
    warnings.simplefilter("ignore")
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("streamlit"):
            logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("streamlit").setLevel(logging.ERROR)


@dataclass
class Timings:
    by_key: dict[tuple, list[float]] = field(default_factory=dict)

    def add(self, key: tuple, seconds: float) -> None:
        self.by_key.setdefault(key, []).append(seconds)

    def get(self, key: tuple) -> list[float]:
        return self.by_key.get(key, [])


class QueryTimer:
    """Wraps every reader (depthwatch.storage.read) that the dashboard's data
    module calls, where it calls them, so that a real `live_view` call records
    how long each took: whatever live_view calls is measured, with no copy of
    its body here. Per call: the whole function
    (rows fetched, converted and framed) and, within it, the time in
    `cursor.execute` (the server's work plus the transfer of every row, which
    psycopg2 reads at execute); the rest is client-side conversion."""

    def __init__(self) -> None:
        from depthwatch.app import data

        self.module = data
        self.current: list[tuple[str, float, float]] = []  # name, total s, execute s
        self.executing = 0.0
        self._started: list[float] = []
        self._originals: dict[str, Callable] = {}
        for name in dir(data):
            value = getattr(data, name)
            if (
                inspect.isfunction(value)
                and value.__module__.startswith("depthwatch.storage.read.")
                and not name.startswith("_")
                and next(iter(inspect.signature(value).parameters), "") == "conn"
            ):
                self._originals[name] = value
                setattr(data, name, self._wrap(name, value))

    def watch(self, engine: sa.Engine) -> None:
        def before(*_args) -> None:
            self._started.append(time.perf_counter())

        def after(*_args) -> None:
            self.executing += time.perf_counter() - self._started.pop()

        sa.event.listen(engine, "before_cursor_execute", before)
        sa.event.listen(engine, "after_cursor_execute", after)

    def _wrap(self, name: str, func: Callable) -> Callable:
        def timed(*args, **kwargs):
            executing = self.executing
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self.current.append((name, elapsed, self.executing - executing))

        return timed

    def restore(self) -> None:
        for name, func in self._originals.items():
            setattr(self.module, name, func)


FIGURES = ("depth", "heatmap", "price", "spread", "imbalance", "events")


def build_page(view, window_min: int, levels: int) -> dict[str, tuple[float, float, int]]:
    """The Live page's figures from a view, built as live.py builds them, then
    serialised as st.plotly_chart does (`to_dict`, then `plotly.io.to_json`
    without validation). Per figure: (build s, serialise s, JSON bytes)."""
    import plotly.io

    from depthwatch.app import figures

    x_range = (view.start_us / 1000, view.now_us / 1000)
    key = f"{view.stream.key}/{window_min}/{levels}"
    builders: dict[str, Callable] = {
        "heatmap": lambda: figures.heatmap_figure(
            view.heatmap, view.grid, view.top, view.trades, view.spans, x_range, key
        ),
        "price": lambda: figures.price_figure(view.top, view.spans, x_range, key),
        "spread": lambda: figures.spread_figure(view.top, view.spans, x_range, key),
        "imbalance": lambda: figures.imbalance_figure(
            view.imbalance, view.spans, x_range, key, levels
        ),
        "events": lambda: figures.events_figure(view.events, view.spans, x_range, key),
    }
    if view.book is not None:
        mid = view.top["mid"].iloc[-1] if not view.top.empty else None
        builders["depth"] = lambda: figures.depth_figure(view.book, mid)
    out = {}
    for name, build in builders.items():
        started = time.perf_counter()
        fig = build()
        built = time.perf_counter()
        text = plotly.io.to_json(fig.to_dict(), validate=False)
        out[name] = (built - started, time.perf_counter() - built, len(text))
    return out


def make_histories(
    args: argparse.Namespace, server_url: str, hours_list: list[float]
) -> list[History]:
    """One database per history length, in the layout asked for."""
    recording = Recording(server_url, args.rate)
    histories: list[History] = []
    try:
        for hours in hours_list:
            label = f"{hours:g} h"
            if args.layout == "legacy":
                name = legacy_name(hours)
                print(f"  {label}: generating history in database {name} ...", flush=True)
                history = generate_history(server_url, name, hours, args.rate, args.keep, label)
            else:
                print(f"  {label}: packed history in database {packed_name(hours)} ...", flush=True)
                history = generate_packed_history(
                    server_url, hours, args.rate, args.keep, label, recording
                )
            size = database_bytes(history.url)
            print(
                f"  {label}: {history.rows:,} book messages stored "
                f"({history.rows / (history.hours * HOUR_S):.1f}/s), "
                f"database {size / 2**30:.2f} GiB"
                + (
                    f", generated in {fmt_s(history.seconds)}"
                    if history.seconds
                    else " (reused as is)"
                ),
                flush=True,
            )
            histories.append(history)
    finally:
        recording.drop()  # every history is a copy by now
    return histories


def run_queries(args: argparse.Namespace, server_url: str) -> None:
    hours_list = [float(h) for h in args.hours.split(",")]
    print(
        f"\n1. window queries ({args.layout} layout): history of "
        f"{', '.join(f'{h:g} h' for h in hours_list)}"
    )
    histories = make_histories(args, server_url, hours_list)
    symbol = (LEGACY_STREAM if args.layout == "legacy" else PACKED_STREAM).symbol

    _quiet_streamlit()
    from depthwatch.app import data

    timer = QueryTimer()

    engines = {h.hours: make_reader_engine(h.url) for h in histories}
    for engine in engines.values():
        timer.watch(engine)
    ends_us = {h.hours: h.end_s * 1_000_000 for h in histories}
    current: list[float] = [hours_list[0]]
    original_engine, original_now = data.engine, data.now_us
    # The app's own reader engine, one per database; "now" pinned to the end of
    # each history, so every window is full however long the run takes.
    data.engine = lambda: engines[current[0]]
    data.now_us = lambda: ends_us[current[0]]
    timings = Timings()
    levels = args.levels
    try:
        streams = {}
        for h in histories:
            with engines[h.hours].connect() as conn:
                found = timer._originals["list_streams"](conn)
                streams[h.hours] = next(s for s in found if s.symbol == symbol)
        total = args.iterations + args.warmup
        print(
            f"  {args.iterations} reads per (history, window) after {args.warmup} warm-up, "
            f"levels {levels}, interleaved ...",
            flush=True,
        )
        for it in range(total):
            if it == args.warmup:
                # As the dashboard's process does once its pages are imported
                # (app/main.py): what the warm-up loaded is frozen out of the
                # garbage collector's walks.
                gc.collect()
                gc.freeze()
            for hours in hours_list:
                current[0] = hours
                for window in WINDOWS_MIN:
                    timer.current.clear()
                    data.live_view.clear()
                    started = time.perf_counter()
                    view = data.live_view(streams[hours], window, levels)
                    read_s = time.perf_counter() - started
                    page = build_page(view, window, levels)
                    if it < args.warmup:
                        continue
                    key = (hours, window)
                    for name, seconds, executing in timer.current:
                        timings.add((*key, name), seconds)
                        timings.add((*key, f"_exec_{name}"), executing)
                    build_s = sum(b for b, _, _ in page.values())
                    json_s = sum(j for _, j, _ in page.values())
                    timings.add((*key, "_read"), read_s)
                    timings.add((*key, "_build"), build_s)
                    timings.add((*key, "_json"), json_s)
                    timings.add((*key, "_total"), read_s + build_s + json_s)
                    timings.add((*key, "_bytes"), sum(n for _, _, n in page.values()))
                    for fig, (b, j, n) in page.items():
                        timings.add((*key, f"_build_{fig}"), b)
                        timings.add((*key, f"_json_{fig}"), j)
                        timings.add((*key, f"_bytes_{fig}"), n)
                    timings.add(
                        (*key, "_rows"), len(view.heatmap) + len(view.top) + len(view.trades)
                    )
                    if args.what_if and hours == hours_list[-1]:
                        what_if_tuples(data, timer, timings, streams[hours], key, levels)
            if (it + 1) % 10 == 0:
                print(f"  ... {it + 1}/{total}", flush=True)
        if args.explain:
            explain(histories[-1], streams[histories[-1].hours], levels)
    finally:
        timer.restore()
        data.engine, data.now_us = original_engine, original_now
        for engine in engines.values():
            engine.dispose()
    report_queries(timings, hours_list, levels)
    if args.what_if:
        report_what_if(timings, hours_list[-1])


def what_if_tuples(data, timer: QueryTimer, timings: Timings, stream, key: tuple, levels: int):
    """The same read with one change in storage.read.frames.frame: rows handed
    to pandas as plain tuples instead of SQLAlchemy Rows (pandas probes every
    Row for namedtuple fields, and a Row answers a missing attribute slowly)."""
    from depthwatch.storage.read import events, frames, legacy, tops, trades

    readers = (events, legacy, tops, trades)  # every module that calls frame()
    original = frames.frame
    for module in readers:
        module.frame = lambda rows, columns: original([tuple(r) for r in rows], columns)
    try:
        timer.current.clear()
        data.live_view.clear()
        started = time.perf_counter()
        data.live_view(stream, key[1], levels)
        timings.add((*key, "_whatif_read"), time.perf_counter() - started)
        for name, seconds, _ in timer.current:
            timings.add((*key, f"_whatif_{name}"), seconds)
    finally:
        for module in readers:
            module.frame = original


def report_what_if(timings: Timings, hours: float) -> None:
    print(f"\n  what if _frame took plain tuples ({hours:g} h history, ms p50 / p95, same run):")
    for window in WINDOWS_MIN:
        for name in ("_read", "heatmap_cells", "top_series", "recent_trades"):
            now = timings.get((hours, window, name))
            then = timings.get((hours, window, f"_whatif_{name.lstrip('_')}"))
            label = "whole read" if name == "_read" else name
            print(
                f"  window {window:>2} min {label:<15} as is {pct(now, 50) * 1e3:7.1f} / "
                f"{pct(now, 95) * 1e3:7.1f}   tuples {pct(then, 50) * 1e3:7.1f} / "
                f"{pct(then, 95) * 1e3:7.1f}   {pct(then, 50) / pct(now, 50):.2f}x"
            )


def report_queries(timings: Timings, hours_list: list[float], levels: int) -> None:
    lo, hi = hours_list[0], hours_list[-1]

    def ms(key: tuple, q: float) -> float:
        return pct(timings.get(key), q) * 1e3

    names = sorted(
        {key[2] for key in timings.by_key if not key[2].startswith("_")},
        key=lambda n: -ms((hi, WINDOWS_MIN[-1], n), 95),
    )
    for window in WINDOWS_MIN:
        reads = max(1, len(timings.get((hi, window, "_read"))))
        print(
            f"\n  window {window} min, levels {levels}, {reads} reads: ms p50 / p95 "
            f"(goals: each query p95 < 50 ms; {hi:g} h / {lo:g} h about 1)"
        )
        print(
            f"  {'':<30}{f'{lo:g} h':>15}{f'{hi:g} h':>16}{'ratio p50':>11}{'ratio p95':>10}"
            f"  {hi:g} h: in execute p50"
        )
        for name in names:
            a, b = (lo, window, name), (hi, window, name)
            executing = ms((hi, window, f"_exec_{name}"), 50)
            flag = "" if ms(b, 95) < 50 else "  <-- p95 over 50 ms"
            print(
                f"  {name:<30}{ms(a, 50):>7.1f} / {ms(a, 95):>6.1f}{ms(b, 50):>8.1f} / "
                f"{ms(b, 95):>6.1f}{ms(b, 50) / ms(a, 50):>10.2f}x{ms(b, 95) / ms(a, 95):>9.2f}x"
                f"  {executing:>7.1f}{flag}"
            )
        for name, label, goal in (
            ("_read", "whole read (live_view)", "goal p95 < 150 ms"),
            ("_build", "figure building", ""),
            ("_json", "Plotly JSON (to_dict+to_json)", ""),
            ("_total", "server time per refresh", "read + build + JSON"),
        ):
            a, b = (lo, window, name), (hi, window, name)
            print(
                f"  {label:<30}{ms(a, 50):>7.1f} / {ms(a, 95):>6.1f}{ms(b, 50):>8.1f} / "
                f"{ms(b, 95):>6.1f}{ms(b, 50) / ms(a, 50):>10.2f}x{ms(b, 95) / ms(a, 95):>9.2f}x"
                f"  {goal}"
            )
        figs = [f for f in FIGURES if timings.get((hi, window, f"_bytes_{f}"))]
        print(
            f"  per figure ({hi:g} h, p50): "
            + ", ".join(
                f"{f} {ms((hi, window, f'_build_{f}'), 50):.0f}+"
                f"{ms((hi, window, f'_json_{f}'), 50):.0f} ms "
                f"{pct(timings.get((hi, window, f'_bytes_{f}')), 50) / 1000:,.0f} KB"
                for f in figs
            )
            + f"; JSON in all {pct(timings.get((hi, window, '_bytes')), 50) / 1000:,.0f} KB"
            f" from {pct(timings.get((hi, window, '_rows')), 50):,.0f} rows "
            "(heatmap cells + top buckets + trades)"
        )


def explain(history: History, stream, levels: int) -> None:
    """EXPLAIN ANALYZE of every statement one live_view read sends (60 min window)."""
    from depthwatch.app import data

    engine = make_reader_engine(history.url)
    statements: list[tuple[str, object]] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    original = data.engine, data.now_us
    data.engine, data.now_us = (lambda: engine), (lambda: history.end_s * 1_000_000)
    try:
        data.live_view.clear()
        data.live_view(stream, 60, levels)
    finally:
        data.engine, data.now_us = original
    sa.event.remove(engine, "before_cursor_execute", capture)
    print(f"\n  EXPLAIN ANALYZE, {history.hours:g} h history, window 60 min:")
    with engine.connect() as conn:
        for statement, parameters in statements:
            if not statement.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            plan = [row[0] for row in cursor.fetchall()]
            first = " ".join(statement.split())[:90]
            timing = [line for line in plan if "Execution Time" in line or "Planning Time" in line]
            print(f"  - {first} ...\n      {' | '.join(t.strip() for t in timing)}")
            for line in plan[:30]:
                print(f"      {line}")
    engine.dispose()
