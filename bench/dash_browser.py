"""bench_dashboard.py's browser and RSS phases: headless Chromium on the
Live page of the live setup (dash_live.py), what each page receives, and the
figures per stage (transactions, bytes and refreshes, data age, CPU, RSS) or
over a long run (RSS every 10 s).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from children import CHROMIUM, CHROMIUM_ARGS, cmdline
from common import cpu_seconds, memory_mb, pct
from dash_live import Live, live_diagnostics, live_setup, xacts
from depthwatch.storage.db import normalise_url

LIVE_URL_PATH = "/live?category=linear&symbol=BTCUSDT&depth=50&window=10"


# ---- CPU of the machine and of our browser ------------------------------------------


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                out[int(entry.name)] = int(
                    entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1]
                )
    return out


def descendants(pid: int) -> list[int]:
    tree = parents()
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, p in tree.items() if p == parent]
        found += kids
        frontier += kids
    return found


def browser_cpu_seconds() -> float:
    """CPU time of our own Playwright driver and Chromium (processes alive now)."""
    total = 0.0
    for pid in descendants(os.getpid()):
        if any(name in cmdline(pid) for name in ("chromium", "playwright")):
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
    return total


# ---- browser pages ----------------------------------------------------------------------


class PageStats:
    """WebSocket frames one page received, decoded as Streamlit ForwardMsgs:
    bytes, script runs finished (one per refresh of the live fragment), Plotly
    charts sent in full, and messages sent as a reference to one the browser
    already holds (Streamlit's message cache: an element identical to the
    previous refresh's, e.g. when the refresh was served the same cached view)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.frames = 0
        self.refreshes = 0
        self.charts = 0
        self.references = 0

    def on_frame(self, payload: str | bytes) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        raw = payload.encode() if isinstance(payload, str) else payload
        self.bytes += len(raw)
        self.frames += 1
        msg = ForwardMsg()
        with contextlib.suppress(Exception):
            msg.ParseFromString(raw)
            kind = msg.WhichOneof("type")
            if kind == "script_finished":
                self.refreshes += 1
            elif kind == "ref_hash":
                self.references += 1
            elif (
                kind == "delta"
                and msg.delta.WhichOneof("type") == "new_element"
                and msg.delta.new_element.WhichOneof("type") == "plotly_chart"
            ):
                self.charts += 1


DATA_AGE_JS = """() => {
    for (const m of document.querySelectorAll('[data-testid="stMetric"]')) {
        const label = m.querySelector('[data-testid="stMetricLabel"]');
        if (label && label.innerText.trim() === 'Data age') {
            const value = m.querySelector('[data-testid="stMetricValue"]');
            return value ? value.innerText.trim() : null;
        }
    }
    return null;
}"""


def parse_age(text: str | None) -> float | None:
    """The page's age() text back to seconds: '0.4 s', '12 s', '3 min', '2 h', '4 days'."""
    if not text:
        return None
    found = re.match(r"([\d.,]+)\s*(s|min|h|days)", text)
    if not found:
        return None
    value = float(found.group(1).replace(",", ""))
    return value * {"s": 1, "min": 60, "h": 3_600, "days": 86_400}[found.group(2)]


class Browser:
    """Headless Chromium with one context (a separate Streamlit session) per page.

    A page opened with `draw_charts=False` never loads Plotly's chunk (the
    request is aborted), so its charts are not drawn while everything else,
    the 1 s fragment timer and every WebSocket frame included, stays as in a
    real page: ten such pages drive the server as ten remote viewers would,
    without ten renderers competing for this machine's two cores."""

    def __init__(self, base_url: str) -> None:
        from playwright.sync_api import sync_playwright

        self.url = base_url + LIVE_URL_PATH
        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        self.pages: list = []
        self.stats: list[PageStats] = []

    def open_page(self, draw_charts: bool = True) -> None:
        context = self.browser.new_context(viewport={"width": 1400, "height": 1000})
        if not draw_charts:
            context.route("**/PlotlyChart.*.js", lambda route: route.abort())
        page = context.new_page()
        stats = PageStats()
        page.on("websocket", lambda ws: ws.on("framereceived", stats.on_frame))
        page.goto(self.url, wait_until="domcontentloaded")
        self.pages.append(page)
        self.stats.append(stats)
        deadline = time.monotonic() + 90
        while parse_age(page.evaluate(DATA_AGE_JS)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the Live page showed no data age within 90 s")
            page.wait_for_timeout(250)

    def close_pages(self) -> None:
        for page in self.pages:
            page.context.close()
        self.pages, self.stats = [], []

    def data_age(self, index: int = 0) -> float | None:
        return parse_age(self.pages[index].evaluate(DATA_AGE_JS))

    def pump(self, seconds: float) -> None:
        """Let the browser deliver events (frames) for `seconds`."""
        self.pages[0].wait_for_timeout(seconds * 1000)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.browser.close()
        with contextlib.suppress(Exception):
            self._playwright.stop()


# ---- phase 2: bytes, transactions, data age ------------------------------------------


@dataclass
class Stage:
    name: str
    pages: int
    seconds: float
    xact_per_s: float  # the database's, all clients (pg_stat_database)
    dashboard_xact_per_s: float  # counted in the streamlit process: reads + pre-pings
    dashboard_reads_per_s: float  # its read transactions alone
    bytes_per_s: float  # per page
    refreshes_per_s: float  # per page
    charts_per_refresh: float  # Plotly charts sent in full
    references_per_refresh: float  # messages sent as references to cached ones
    cpu_pct: float  # streamlit server, % of one core
    browser_pct: float  # our Chromium and Playwright, % of one core
    machine_pct: float  # whole machine, % of all cores
    rss_mb: float  # max over the stage
    ages: list[float]

    @property
    def bytes_per_refresh(self) -> float:
        return self.bytes_per_s / self.refreshes_per_s if self.refreshes_per_s else math.nan


def measure_stage(
    name: str, live: Live, stats_engine: sa.Engine, browser: Browser | None, seconds: float
) -> Stage:
    pages = len(browser.pages) if browser else 0
    stats = browser.stats if browser else []
    bytes0 = [s.bytes for s in stats]
    refresh0 = [s.refreshes for s in stats]
    charts0 = sum(s.charts for s in stats)
    refs0 = sum(s.references for s in stats)
    x0 = xacts(stats_engine)
    d0 = live.dashboard_xacts()
    cpu0 = cpu_seconds(live.dashboard_pid)
    browser0 = browser_cpu_seconds()
    busy0, total0 = machine_busy()
    t0 = time.monotonic()
    ages: list[float] = []
    rss = memory_mb(live.dashboard_pid)
    tick = 0
    while (elapsed := time.monotonic() - t0) < seconds:
        if browser:
            # Every second, from page 1, 2, ... in turn (all pages share the same view).
            age = browser.data_age(tick % pages)
            if age is not None:
                ages.append(age)
            browser.pump(max(0.0, min(1.0, seconds - elapsed) - 0.02))
        else:
            time.sleep(min(1.0, seconds - elapsed))
        tick += 1
        rss = max(rss, memory_mb(live.dashboard_pid))
    wall = time.monotonic() - t0
    x1 = xacts(stats_engine)
    d1 = live.dashboard_xacts()
    cpu = cpu_seconds(live.dashboard_pid) - cpu0
    browser_cpu = browser_cpu_seconds() - browser0
    busy1, total1 = machine_busy()
    stage = Stage(
        name,
        pages,
        wall,
        (x1 - x0 - 1) / wall,  # -1: the sampling query's own transaction
        (d1[0] - d0[0] + d1[1] - d0[1]) / wall,
        (d1[0] - d0[0]) / wall,
        sum(s.bytes - b for s, b in zip(stats, bytes0, strict=True)) / wall / max(1, pages),
        sum(s.refreshes - r for s, r in zip(stats, refresh0, strict=True)) / wall / max(1, pages),
        (sum(s.charts for s in stats) - charts0)
        / max(1, sum(s.refreshes for s in stats) - sum(refresh0)),
        (sum(s.references for s in stats) - refs0)
        / max(1, sum(s.refreshes for s in stats) - sum(refresh0)),
        cpu / wall * 100,
        browser_cpu / wall * 100,
        (busy1 - busy0) / max(1, total1 - total0) * 100,
        rss,
        ages,
    )
    age_text = (
        f", data age p50 {pct(ages, 50):.2f} s / p95 {pct(ages, 95):.2f} s ({len(ages)} reads)"
        if ages
        else ""
    )
    print(
        f"  {name:<13} {stage.xact_per_s:6.2f} xact/s (dashboard "
        f"{stage.dashboard_xact_per_s:.2f}), CPU: streamlit {stage.cpu_pct:5.1f} %, "
        f"browser {stage.browser_pct:5.1f} %, machine {stage.machine_pct:3.0f} %; "
        f"RSS {stage.rss_mb:4.0f} MB"
        + (
            f", per page {stage.refreshes_per_s:.2f} refreshes/s, "
            f"{stage.bytes_per_s / 1000:,.0f} KB/s"
            if pages
            else ""
        )
        + age_text,
        flush=True,
    )
    return stage


def run_browser(args: argparse.Namespace, server_url: str, work_dir: Path) -> None:
    print(f"\n2. browser: bytes per refresh, transactions/s, data age ({args.seconds:g} s stages)")
    with live_setup(server_url, work_dir, args.rate, args.keep) as live:
        stats_engine = sa.create_engine(normalise_url(live.url), isolation_level="AUTOCOMMIT")
        browser = None
        try:
            time.sleep(args.settle)
            stages = [measure_stage("no page", live, stats_engine, None, args.seconds)]
            browser = Browser(live.dashboard_url)
            browser.open_page()
            browser.pump(args.settle)
            stages.append(measure_stage("1 page", live, stats_engine, browser, args.seconds))
            for _ in range(args.viewers - 1):
                browser.open_page()
            browser.pump(args.settle)
            stages.append(
                measure_stage(f"{args.viewers} pages", live, stats_engine, browser, args.seconds)
            )
            browser.close_pages()
            for _ in range(args.viewers):
                browser.open_page(draw_charts=False)
            browser.pump(args.settle)
            stages.append(
                measure_stage(f"{args.viewers} undrawn", live, stats_engine, browser, args.seconds)
            )
            browser.close()
            browser = None
            time.sleep(args.settle)
            stages.append(measure_stage("no page again", live, stats_engine, None, args.seconds))
            diagnostics = live_diagnostics(stats_engine)
        finally:
            if browser is not None:
                browser.close()
            stats_engine.dispose()
    base_runs = [stages[0].xact_per_s, stages[-1].xact_per_s]
    base = sum(base_runs) / 2
    one, many, undrawn = stages[1], stages[2], stages[3]
    print(
        "\n  the dashboard's transactions/s, counted in its process and, as a check, the "
        f"database's minus the collector's baseline ({base:.2f}/s: {base_runs[0]:.2f} before, "
        f"{base_runs[1]:.2f} after); per page refresh; ratio to 1 page (goal <= 1.2x):"
    )
    one_x = one.dashboard_xact_per_s
    for stage in (one, many, undrawn):
        own = stage.dashboard_xact_per_s
        print(
            f"  {stage.name:<13} {own:5.2f}/s, of which reads {stage.dashboard_reads_per_s:.2f}/s "
            f"and pre-pings the rest (database minus baseline {stage.xact_per_s - base:5.2f}); "
            f"{_per(own, stage.refreshes_per_s * stage.pages)} per page refresh "
            f"({stage.refreshes_per_s * stage.pages:.2f} page refreshes/s); "
            f"{own / one_x if one_x > 0 else math.nan:.2f}x"
        )
    print("  bytes received per page refresh (WebSocket payloads, no compression):")
    for stage in (one, many, undrawn):
        print(
            f"  {stage.name:<13} {stage.bytes_per_refresh / 1000:,.0f} KB "
            f"({stage.refreshes_per_s:.2f} refreshes/s per page, "
            f"{stage.bytes_per_s * stage.pages / 1e6:.2f} MB/s in all; per refresh "
            f"{stage.charts_per_refresh:.1f} charts sent in full, "
            f"{stage.references_per_refresh:.1f} elements sent as cache references)"
        )
    print("  data age shown on the page (goal p95 < 2 s):")
    for stage in (one, many, undrawn):
        print(
            f"  {stage.name:<13} p50 {pct(stage.ages, 50):.2f} s, p95 {pct(stage.ages, 95):.2f} s,"
            f" max {max(stage.ages, default=math.nan):.2f} s over {len(stage.ages)} reads"
        )
    print("  CPU, % of one core (streamlit server / our Chromium / whole machine of 2 cores):")
    for stage in stages:
        print(
            f"  {stage.name:<13} {stage.cpu_pct:5.1f} / {stage.browser_pct:5.1f} / "
            f"{stage.machine_pct:3.0f} %"
        )
    print(
        f"  streamlit RSS, max: 1 page {one.rss_mb:.0f} MB, {many.name} {many.rss_mb:.0f} MB, "
        f"{undrawn.name} {undrawn.rss_mb:.0f} MB (goal < 400 MB)"
    )
    print(f"  {diagnostics}")


def _per(xact_per_s: float, refreshes_per_s: float) -> str:
    return f"{xact_per_s / refreshes_per_s:.2f}" if refreshes_per_s > 0 else "-"


# ---- phase 3: RSS over a long run --------------------------------------------------------


def run_rss(args: argparse.Namespace, server_url: str, work_dir: Path) -> None:
    warmup_s = 120.0
    print(
        f"\n3. dashboard RSS: 1 page for {args.minutes:g} min, then {args.viewers} pages for "
        f"{args.viewer_minutes:g} min (VmRSS every 10 s, warm-up {warmup_s:.0f} s)"
    )
    with live_setup(server_url, work_dir, args.rate, args.keep) as live:
        browser = Browser(live.dashboard_url)
        try:
            browser.open_page()
            one = sample_rss(live, browser, args.minutes * 60, "1 page")
            # Nine more viewers whose charts are not drawn (see Browser): they ask
            # for refreshes at the page's pace, which nine drawn pages on this
            # machine's two cores could not.
            for _ in range(args.viewers - 1):
                browser.open_page(draw_charts=False)
            before = [s.refreshes for s in browser.stats]
            started = time.monotonic()
            many = sample_rss(live, browser, args.viewer_minutes * 60, f"{args.viewers} pages")
            rates = [
                (s.refreshes - b) / (time.monotonic() - started)
                for s, b in zip(browser.stats, before, strict=True)
            ]
        finally:
            browser.close()
    print(
        "  1 page, RSS series (MB, one sample a minute): "
        + " ".join(f"{mb:.0f}" for t, mb in one if round(t) % 60 < 10)
    )
    after = [(t, mb) for t, mb in one if t >= warmup_s]
    if after:
        start, end = after[0][1], after[-1][1]
        peak = max(mb for _, mb in after)
        # A line through the samples: growth not hidden by where the last sample fell.
        ts = np.array([t for t, _ in after])
        slope = float(np.polyfit(ts, [mb for _, mb in after], 1)[0]) if len(after) > 2 else 0.0
        print(
            f"  1 page, after warm-up ({len(after)} samples over "
            f"{(after[-1][0] - after[0][0]) / 60:.1f} min): start {start:.0f} MB, "
            f"end {end:.0f} MB, "
            f"max {peak:.0f} MB, growth {(end - start) / start * 100:+.1f} % "
            f"(fitted {slope * 3600:+.1f} MB/h; goal growth < 10 %)"
        )
    print(
        f"  1 page: first sample {one[0][1]:.0f} MB; {args.viewers} pages: max "
        f"{max(mb for _, mb in many):.0f} MB, end {many[-1][1]:.0f} MB (goal < 400 MB); "
        f"refreshes/s per page meanwhile {min(rates):.2f}-{max(rates):.2f}"
    )


def sample_rss(
    live: Live, browser: Browser, seconds: float, label: str
) -> list[tuple[float, float]]:
    samples: list[tuple[float, float]] = []
    t0 = time.monotonic()
    next_at = 0.0
    last_print = -60.0
    while (elapsed := time.monotonic() - t0) <= seconds:
        if elapsed >= next_at:
            samples.append((elapsed, memory_mb(live.dashboard_pid)))
            next_at += 10.0
            if elapsed - last_print >= 60:
                cpu = cpu_seconds(live.dashboard_pid)
                print(
                    f"  {label}: {elapsed / 60:5.1f} min, RSS {samples[-1][1]:6.1f} MB, "
                    f"streamlit CPU {cpu:.0f} s so far, data age {browser.data_age()} s",
                    flush=True,
                )
                last_print = elapsed
        browser.pump(max(0.05, min(next_at - (time.monotonic() - t0), 1.0)))
    return samples
