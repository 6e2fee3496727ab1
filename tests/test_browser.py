"""The dashboard in a real browser, fed by real parts: the simulator, the
collector and the dashboard run as child processes against a fresh PostgreSQL
database, and Debian's headless Chromium (driven by Playwright) reads the Live
page the way a trader sees it. The simulator's `/truth` endpoint is the ground
truth the page's best bid and ask are checked against.

Screenshots and the children's logs land in $DEPTHWATCH_ARTIFACTS (default
tests/artifacts/), so a red CI run can be looked at, not guessed at.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, Locator, Page, ViewportSize, expect, sync_playwright

from children import CHROMIUM, CHROMIUM_ARGS

from .conftest import free_port
from .procs import STOP_TIMEOUT_S, Child, Children, healthy, http_get, listening, wait_until

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "streamlit"
ARTIFACTS = Path(os.environ.get("DEPTHWATCH_ARTIFACTS") or ROOT / "tests" / "artifacts")

# Playwright's own browser download does not work on these machines: CI
# installs Debian's Chromium (.ci/run), and a missing one must fail, not skip.
# Its path and flags are bench/children.py's, which the benchmarks launch too.
VIEWPORT: ViewportSize = {"width": 1600, "height": 1000}

SYMBOL = "BTCUSDT"
DEPTH = 50
TOPIC = f"orderbook.{DEPTH}.{SYMBOL}"
SIM_RATE = 50  # book steps per second: the best bid moves many times between refreshes
WINDOW_MIN = 5
CHARTS = 6  # depth, heatmap, price, spread, imbalance, feed events
PAGES = (("overview", "/"), ("health", "/health"))  # screenshot name, path
OUR_ARTIFACTS = (
    *(f"{shot}.png" for shot in ("live", "overview", "health", "stale", "failure")),
    *(f"{command}.log" for command in ("sim", "collect", "dashboard")),
)

START_TIMEOUT_S = 30.0
CHARTS_TIMEOUT_S = 30.0
EXPECT_MS = 10_000  # for what should already be on the page
CHANGE_WITHIN_S = 3.0
PAGE_POLL_S = 0.05
TRUTH_POLL_S = 0.1
# The page shows a quote read from the database up to a cache second ago,
# redrawn each second: anything the simulator held this recently may be on it.
TRUTH_HORIZON_S = 5.0
TOUCH_READS = 8  # a refresh each second: several chances to catch the page
TOUCH_READ_EVERY_S = 0.5
# Heartbeats every 2 s, STALE after three missed ones, plus the 1 s cache.
STALE_WITHIN_S = 15.0
# "STALE since" names the last sign of life: at most a heartbeat interval (2 s)
# before the collector was told to stop, or its final writes just after.
STALE_SINCE_SLACK_S = 5.0
DAY_S = 86_400

LIVE_BADGE = re.compile(r"\bLIVE$")
STALE_BADGE = re.compile(r"\bSTALE since (\d\d):(\d\d):(\d\d) UTC$")
SIMULATED_BADGE = re.compile(r"\bSIMULATED data$")

# While a fragment reruns, Streamlit keeps the previous copies of its elements
# in the page marked data-stale="true" (hidden, or shown until replaced), next to
# the new ones: count and read only elements outside them.
CURRENT = ":not([data-stale='true'] *)"
CHART = f"[data-testid='stPlotlyChart']{CURRENT}"
METRIC = f"[data-testid='stMetric']{CURRENT}"
TABLE = f"[data-testid='stDataFrame']{CURRENT}"
# The price chart is the one with a "mid" trace; its newest x (ms since the
# epoch) is the last bucket drawn.
NEWEST_PRICE_X_JS = """selector => {
  let newest = null;
  for (const chart of document.querySelectorAll(selector)) {
    const traces = chart.querySelector('.js-plotly-plot')?._fullData || [];
    if (!traces.some(t => t.name === 'mid')) continue;
    for (const t of traces) {
      if (t.x && t.x.length) newest = Math.max(newest ?? -Infinity, Number(t.x[t.x.length - 1]));
    }
  }
  return newest;
}"""
# All header metrics in one call, so the values come from one and the same redraw.
METRICS_JS = """selector => Object.fromEntries(
  [...document.querySelectorAll(selector)].map(m => [
    m.querySelector("[data-testid='stMetricLabel']")?.innerText.trim(),
    m.querySelector("[data-testid='stMetricValue']")?.innerText.trim(),
  ])
)"""
# Controls and figures a narrow column cuts: a segmented control's button
# reaching past its column, a header value wider than its box.
CLIPPED_JS = """() => {
  const clipped = [];
  const within = el =>
    el.closest("[data-testid='stColumn']") || el.closest("[data-testid='stMain']");
  for (const b of document.querySelectorAll("[data-testid='stButtonGroup'] button")) {
    const box = within(b).getBoundingClientRect(), r = b.getBoundingClientRect();
    if (r.right > box.right + 1 || r.left < box.left - 1) clipped.push('button ' + b.innerText);
  }
  for (const m of document.querySelectorAll("[data-testid='stMetricValue']")) {
    if ([m, ...m.querySelectorAll('*')].some(d => d.scrollWidth > d.clientWidth + 1)) {
      clipped.push('metric ' + m.innerText);
    }
  }
  return clipped;
}"""
WIDTHS = (1280, 1440, 1920)  # desktop widths at which nothing may be cut
RELAYOUT_MS = 500  # for the page to lay itself out again after a resize
BUTTON_GROUP = f"[data-testid='stButtonGroup']{CURRENT}"
# Streamlit's main block scrolls inside a viewport-high body, so a "full page"
# screenshot needs a viewport as tall as that block's content.
CONTENT_HEIGHT_JS = "() => document.querySelector(\"[data-testid='stMain']\").scrollHeight"


def parse_price(text: str) -> Decimal:
    """A price as the header shows it ("60,012.3") -> Decimal("60012.3")."""
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        raise AssertionError(f"not a price: {text!r}") from None


def poll(read: Callable[[], T], ok: Callable[[T], bool], timeout_s: float, what: str) -> T:
    """The first value of `read()` that is `ok`, within `timeout_s`: the page
    redraws in steps (a rerun replaces its elements one by one)."""
    deadline = time.monotonic() + timeout_s
    while not ok(value := read()):
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:g} s (last: {value!r})"
        time.sleep(PAGE_POLL_S)
    return value


@pytest.fixture
def artifacts() -> Path:
    """The artifacts directory, without this test's files from an earlier run:
    a failure.png next to an older run's screenshots would mislead."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name in OUR_ARTIFACTS:
        (ARTIFACTS / name).unlink(missing_ok=True)
    return ARTIFACTS


@pytest.fixture
def spawn(artifacts: Path) -> Iterator[Callable[..., Child]]:
    """Starts `depthwatch NAME ARGS...` (its log in NAME.log); stops whatever
    is still running at the end, newest first (dashboard and collector before
    the simulator)."""
    children = Children(artifacts)
    try:
        yield lambda name, *args: children(name, name, *args)
    finally:
        children.stop()


Touch = tuple[Decimal, Decimal]  # (best bid, best ask)


@dataclass
class TruthTape:
    """The simulator's best bid and ask, polled every TRUTH_POLL_S in a thread,
    so the page can be compared with what the exchange really held a moment ago."""

    url: str
    seen: deque[tuple[float, Touch]] = field(default_factory=lambda: deque(maxlen=10_000))
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=10))

    def run(self) -> None:
        while not self.done.wait(TRUTH_POLL_S):
            try:
                status, body = http_get(self.url)
            except OSError as exc:
                self.errors.append(repr(exc))
                continue
            if status != 200:  # 404 until the collector has subscribed
                continue
            book = json.loads(body)
            if book["bids"] and book["asks"]:
                touch = (Decimal(book["bids"][0][0]), Decimal(book["asks"][0][0]))
                with self.lock:
                    self.seen.append((time.monotonic(), touch))

    def recent(self, horizon_s: float = TRUTH_HORIZON_S) -> set[Touch]:
        """Every (best bid, best ask) the simulator held in the last `horizon_s` seconds."""
        since = time.monotonic() - horizon_s
        with self.lock:
            return {touch for at, touch in self.seen if at >= since}


@pytest.fixture
def truth_tape() -> Iterator[Callable[[int], TruthTape]]:
    threads: list[tuple[TruthTape, threading.Thread]] = []

    def start(sim_port: int) -> TruthTape:
        tape = TruthTape(f"http://127.0.0.1:{sim_port}/truth?topic={TOPIC}")
        thread = threading.Thread(target=tape.run, name="truth-tape", daemon=True)
        thread.start()
        threads.append((tape, thread))
        return tape

    try:
        yield start
    finally:
        for tape, thread in threads:
            tape.done.set()
            thread.join(STOP_TIMEOUT_S)


@contextlib.contextmanager
def launched_chromium() -> Iterator[Browser]:
    """Debian's Chromium, closed at the end; a missing one fails the test."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's Chromium "
            "(`apt-get install -y chromium`, as .ci/run does); "
            "Playwright's own browser download does not work here"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=START_TIMEOUT_S * 1000
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def chromium() -> Iterator[Callable[[], Browser]]:
    """Launches Chromium when the test asks (so that a missing one fails the
    test itself, not its setup); closed at the end."""
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(launched_chromium())


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Chromium for the whole test (test_history_page, test_standby)."""
    with launched_chromium() as launched:
        yield launched


def book_chunks(engine: sa.Engine) -> int:
    """Rows the collector has committed to book_chunks (0 before its schema exists)."""
    with engine.connect() as conn:
        if not conn.execute(sa.text("SELECT to_regclass('book_chunks')")).scalar():
            return 0
        return int(conn.execute(sa.text("SELECT count(*) FROM book_chunks")).scalar() or 0)


def screenshot(page: Page, path: Path) -> None:
    """The whole page, below the fold too, at the normal width."""
    height = max(VIEWPORT["height"], int(page.evaluate(CONTENT_HEIGHT_JS)))
    page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
    try:
        page.screenshot(path=path, full_page=True)
    finally:
        page.set_viewport_size(VIEWPORT)


def badge(page: Page, text: re.Pattern[str]) -> Locator:
    """A Streamlit badge (st.badge) whose text, after its icon's name, matches."""
    return page.locator(".stMarkdownBadge").filter(has_text=text)


def stale_since_offset_s(page: Page, stopped_at: float) -> float:
    """Seconds from the collector's stop (epoch time) to the time in the STALE
    badge, which has no date: compared within the UTC day, across midnight too."""
    text = badge(page, STALE_BADGE).inner_text()
    match = STALE_BADGE.search(" ".join(text.split()))
    assert match, f"unexpected STALE badge: {text!r}"
    hours, minutes, seconds = map(int, match.groups())
    offset = (hours * 3600 + minutes * 60 + seconds) - stopped_at % DAY_S
    return (offset + DAY_S / 2) % DAY_S - DAY_S / 2


def newest_price_x(page: Page) -> float:
    """The price chart's newest x, in ms since the epoch; 0 while none is drawn."""
    return page.evaluate(NEWEST_PRICE_X_JS, CHART) or 0.0


def shown_touch(page: Page) -> Touch:
    """(best bid, best ask) from the header, both from the same redraw."""
    shown = poll(
        lambda: page.evaluate(METRICS_JS, METRIC),
        lambda metrics: "Best bid" in metrics and "Best ask" in metrics,
        CHANGE_WITHIN_S,
        "best bid and ask in the header",
    )
    bid, ask = parse_price(shown["Best bid"]), parse_price(shown["Best ask"])
    assert bid < ask, f"crossed or locked book shown: {shown}"
    return bid, ask


def open_tab(browser: Browser, url: str, errors: list[str]) -> Page:
    """A new tab loading `url`; Streamlit draws it afterwards, over its
    websocket, so tabs opened one after another render in parallel. The
    page's uncaught JavaScript errors are appended to `errors`."""
    page = browser.new_page(viewport=VIEWPORT)
    page.on("pageerror", lambda exc: errors.append(f"{url}: {exc}"))
    page.set_default_timeout(CHARTS_TIMEOUT_S * 1000)
    page.goto(url)
    return page


def wait_drawn(page: Page, ready: str) -> None:
    """Until Streamlit's app shell and the element `ready` are on the page."""
    page.locator("[data-testid='stApp']").wait_for()
    page.locator(ready).first.wait_for()


@pytest.mark.timeout(180)  # a hang guard: 25-45 s normally, ~100 s on 2 loaded CPUs
def test_live_page_follows_the_simulator_and_turns_stale(
    database_url: str,
    engine: sa.Engine,
    spawn: Callable[..., Child],
    truth_tape: Callable[[int], TruthTape],
    chromium: Callable[[], Browser],
    artifacts: Path,
) -> None:
    # The database is asked for first so that it is dropped last, after the
    # browser, the truth tape and the children are gone.
    browser = chromium()
    sim_port, dash_port = free_port(), free_port()
    sim = spawn("sim", "--port", str(sim_port), "--symbols", SYMBOL, "--rate", str(SIM_RATE))
    wait_until(lambda: listening(sim_port), "simulator", START_TIMEOUT_S, sim)
    tape = truth_tape(sim_port)
    collector = spawn(
        "collect",
        *("--ws-url", f"ws://127.0.0.1:{sim_port}/v5/public/linear"),
        *("--symbols", SYMBOL, "--depth", str(DEPTH), "--retention-days", "0"),
        *("--database-url", database_url),
    )
    dashboard = spawn(
        "dashboard",
        *("--port", str(dash_port), "--address", "127.0.0.1"),
        *("--database-url", database_url),
    )
    base = f"http://127.0.0.1:{dash_port}"
    everyone = (sim, collector, dashboard)
    wait_until(lambda: healthy(base), "dashboard health", START_TIMEOUT_S, *everyone)
    wait_until(lambda: book_chunks(engine) > 0, "book_chunks rows", START_TIMEOUT_S, *everyone)

    query = urlencode(
        {"category": "linear", "symbol": SYMBOL, "depth": DEPTH, "window": WINDOW_MIN}
    )
    page_errors: list[str] = []
    live = open_tab(browser, f"{base}/live?{query}", page_errors)
    try:
        wait_drawn(live, CHART)
        expect(live.locator(CHART)).to_have_count(CHARTS, timeout=CHARTS_TIMEOUT_S * 1000)

        # 1. The charts move: the price chart's newest bucket advances within 3 s.
        first = poll(lambda: newest_price_x(live), bool, EXPECT_MS / 1000, "price chart data")
        poll(
            lambda: newest_price_x(live),
            lambda x: x > first,
            CHANGE_WITHIN_S,
            f"price chart newer than x={first}",
        )

        # 2. The best bid shown is one the simulator really held a moment ago.
        # Bids alone are a weak check (the bid wanders over a few ticks within
        # seconds), so one read must also show the very ask that went with it.
        # Touches that lasted less than a poll may be missed: several reads.
        reads: list[tuple[Touch, bool, bool]] = []
        for _ in range(TOUCH_READS):
            touch = shown_touch(live)
            held = tape.recent()
            reads.append((touch, touch[0] in {bid for bid, _ in held}, touch in held))
            time.sleep(TOUCH_READ_EVERY_S)
        assert tape.seen, f"the simulator's /truth never answered: {list(tape.errors)}"
        bids_held = sum(bid_ok for _, bid_ok, _ in reads)
        touches_held = sum(touch_ok for _, _, touch_ok in reads)
        print(f"of {len(reads)} reads, bid held: {bids_held}, bid and ask held: {touches_held}")
        assert bids_held * 2 >= len(reads), f"best bid not the simulator's recent one: {reads}"
        assert touches_held, f"no (bid, ask) shown was one the simulator held: {reads}"

        # 3. Badges: live data, and marked as the simulator's.
        expect(badge(live, LIVE_BADGE)).to_be_visible(timeout=EXPECT_MS)
        expect(badge(live, SIMULATED_BADGE)).to_be_visible(timeout=EXPECT_MS)
        screenshot(live, artifacts / "live.png")

        # The other pages, while the data is live (a table is their last part drawn).
        others = {name: open_tab(browser, base + path, page_errors) for name, path in PAGES}
        try:
            for name, page in others.items():
                wait_drawn(page, TABLE)
                screenshot(page, artifacts / f"{name}.png")
        finally:
            for page in others.values():
                page.close()

        # Nothing is cut at common desktop widths (the phone layout stacks):
        # one tab per page, resized (the layout follows without a rerun).
        for path, ready in ((f"/live?{query}", METRIC), ("/history", BUTTON_GROUP)):
            page = open_tab(browser, base + path, page_errors)
            try:
                wait_drawn(page, ready)
                for width in WIDTHS:
                    page.set_viewport_size({"width": width, "height": VIEWPORT["height"]})
                    page.wait_for_timeout(RELAYOUT_MS)
                    assert page.evaluate(CLIPPED_JS) == [], f"cut at {width} px on {path}"
            finally:
                page.close()

        # 4. The collector stops cleanly; the page says STALE and no longer LIVE.
        stopped_at = time.time()
        code = collector.stop()
        assert code == 0, f"collector exited {code}:\n{collector.output()}"
        expect(badge(live, STALE_BADGE)).to_be_visible(timeout=STALE_WITHIN_S * 1000)
        offset = stale_since_offset_s(live, stopped_at)
        print(f"STALE since {offset:+.1f} s from the collector's stop")
        assert abs(offset) <= STALE_SINCE_SLACK_S, f"STALE since {offset:+.1f} s from the stop"
        expect(badge(live, LIVE_BADGE)).to_have_count(0, timeout=EXPECT_MS)
        expect(badge(live, SIMULATED_BADGE)).to_be_visible(timeout=EXPECT_MS)
        screenshot(live, artifacts / "stale.png")
        assert page_errors == []
    except BaseException:
        with contextlib.suppress(Exception):  # the failure itself matters more
            screenshot(live, artifacts / "failure.png")
        raise
    finally:
        live.close()
