"""The Compare page in Chromium with three venues simulated at once: the
simulator serves BTCUSDT on Bybit and Binance futures and BTC on Hyperliquid,
three collectors (child processes, one per venue) record them into one fresh
PostgreSQL, and the dashboard's Compare page shows BTC on all three: every
venue LIVE with a fresh data age, the basis each row states agrees with the
mids it states, the four charts drawn and moving, and nothing cut at desktop
widths. The page's pure parts (which streams line up, the basis) are tested
below it."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, Page, expect

from depthwatch.app.compare_data import assets
from depthwatch.app.compare_figures import basis_bps
from depthwatch.records import FULL_DEPTH
from depthwatch.storage.read.streams import Stream

from .conftest import free_port
from .procs import Child, healthy, listening, wait_until
from .test_browser import (  # noqa: F401 (artifacts, chromium, spawn: fixtures)
    CHART,
    CLIPPED_JS,
    EXPECT_MS,
    RELAYOUT_MS,
    START_TIMEOUT_S,
    WIDTHS,
    artifacts,
    chromium,
    open_tab,
    poll,
    screenshot,
    spawn,
    wait_drawn,
)

SIM_RATE = 20
VENUES = {  # venue as the page names it -> the collector's flags
    "bybit linear": ("--exchange", "bybit", "--category", "linear", "--symbols", "BTCUSDT"),
    "binance-futures": ("--exchange", "binance-futures", "--symbols", "BTCUSDT"),
    "hyperliquid": ("--exchange", "hyperliquid", "--symbols", "BTC"),
}
PATHS = {"bybit linear": "/v5/public/linear", "binance-futures": "/binance-futures/stream"}
CHARTS = 4  # mids, spreads, basis, depth
TABLE = "[data-testid='stTable']"
TABLE_ROWS = f"{TABLE} tbody tr"
FRESH_S = 5.0
# The newest time any venue's line of the mids chart (the first chart) reaches.
NEWEST_MID_JS = """selector => {
  const chart = document.querySelector(selector + ' .js-plotly-plot');
  let newest = null;
  for (const t of chart?._fullData || []) {
    for (const x of Array.from(t.x || [])) {
      if (x !== null && Number.isFinite(Number(x))) newest = Math.max(newest ?? 0, Number(x));
    }
  }
  return newest;
}"""


def streams_recorded(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        if not conn.execute(sa.text("SELECT to_regclass('book_chunks')")).scalar():
            return 0
        query = "SELECT count(DISTINCT stream_id) FROM book_chunks"
        return int(conn.execute(sa.text(query)).scalar() or 0)


def table_rows(page: Page) -> dict[str, dict[str, str]]:
    """The venues table as {venue: {column: text}}, read in one go: the page
    redraws every second, and rows read one by one could come from two draws
    (a basis from one, the reference mid from the next)."""
    table = page.locator(TABLE).first.evaluate(
        """t => ({
            headers: [...t.querySelectorAll('thead th')].map(e => e.innerText),
            rows: [...t.querySelectorAll('tbody tr')].map(
                r => [...r.querySelectorAll('th, td')].map(e => e.innerText)),
        })"""
    )
    headers = table["headers"]
    return {
        cells[0].strip(): dict(zip(headers[1:], (c.strip() for c in cells[1:]), strict=False))
        for cells in table["rows"]
    }


def age_s(text: str) -> float:
    match = re.fullmatch(r"([\d.]+) s", text)
    assert match, f"data age {text!r} is not in seconds"
    return float(match.group(1))


@pytest.mark.timeout(180)
def test_compare_page_shows_three_simulated_venues_live(
    database_url: str,
    engine: sa.Engine,
    spawn: Callable[..., Child],  # noqa: F811 (the fixtures imported above)
    chromium: Callable[[], Browser],  # noqa: F811
    artifacts: Path,  # noqa: F811
) -> None:
    browser = chromium()
    sim_port, dash_port = free_port(), free_port()
    sim = spawn("sim", "--port", str(sim_port), "--symbols", "BTCUSDT", "--rate", str(SIM_RATE))
    wait_until(lambda: listening(sim_port), "simulator", START_TIMEOUT_S, sim)
    collectors = []
    for name, flags in VENUES.items():
        path = PATHS.get(name, "/hyperliquid/ws")
        collectors.append(
            spawn(
                "collect",
                *flags,
                *("--ws-url", f"ws://127.0.0.1:{sim_port}{path}"),
                *("--retention-days", "0", "--database-url", database_url),
            )
        )
    dashboard = spawn(
        "dashboard",
        "--port",
        str(dash_port),
        "--address",
        "127.0.0.1",
        "--database-url",
        database_url,
    )
    everyone = (sim, *collectors, dashboard)
    base = f"http://127.0.0.1:{dash_port}"
    wait_until(lambda: healthy(base), "dashboard health", START_TIMEOUT_S, *everyone)
    wait_until(lambda: streams_recorded(engine) == 3, "three venues", START_TIMEOUT_S, *everyone)

    errors: list[str] = []
    page = open_tab(browser, f"{base}/compare?asset=BTC&window=1&range=25", errors)
    try:
        wait_drawn(page, TABLE_ROWS)
        expect(page.locator(CHART)).to_have_count(CHARTS, timeout=EXPECT_MS * 3)
        rows = poll(
            lambda: table_rows(page),
            lambda r: set(r) == set(VENUES) and all(v["status"] == "LIVE" for v in r.values()),
            EXPECT_MS / 1000 * 3,
            "three LIVE venues",
        )
        for name, row in rows.items():
            assert age_s(row["data age"]) < FRESH_S, f"{name} is {row['data age']} old"
        # The basis each row states is its mid over the reference's (the first row).
        reference = float(next(iter(rows.values()))["mid"].replace(",", ""))
        for name, row in rows.items():
            mid = float(row["mid"].replace(",", ""))
            stated = float(row["basis (bps)"])
            assert abs(stated - (mid / reference - 1) * 10_000) < 0.01, (name, row)
        # Venues are separate books, a few bps apart.
        assert len({row["mid"] for row in rows.values()}) == 3, rows
        expect(page.get_by_text("SIMULATED data")).to_be_visible(timeout=EXPECT_MS)

        # The mids chart moves: its newest point advances.
        def newest() -> float:
            return float(page.evaluate(NEWEST_MID_JS, CHART) or 0.0)

        first = poll(newest, lambda x: x > 0, EXPECT_MS / 1000, "mids drawn")
        poll(newest, lambda x: x > first, 5.0, "mids newer than the first read")
        screenshot(page, artifacts / "compare.png")
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 1000})
            page.wait_for_timeout(RELAYOUT_MS)
            assert page.evaluate(CLIPPED_JS) == [], f"cut at {width} px"
    finally:
        page.close()
    assert errors == [], errors
    time.sleep(0)  # children stop in the fixture, newest first


def stream(id_: int, category: str, symbol: str, depth: int) -> Stream:
    return Stream(id_, id_, category, symbol, depth)


def test_an_asset_lines_up_one_stream_per_venue_its_deepest_and_never_rpi():
    recorded = [
        stream(1, "linear", "BTCUSDT", 50),
        stream(2, "linear", "BTCUSDT", FULL_DEPTH),
        stream(3, "linear", "BTCUSDT", 32766),  # rpi
        stream(4, "binance-futures", "BTCUSDT", FULL_DEPTH),
        stream(5, "hyperliquid", "BTC", 20),
        stream(6, "linear", "ETHUSDT", 50),  # one venue only: not comparable
        stream(7, "inverse", "BTCUSD", 50),
    ]
    lined_up = assets(recorded)
    assert list(lined_up) == ["BTC"]
    # By exchange, then market: binance-futures, bybit inverse, bybit linear
    # (its whole book, not depth 50), hyperliquid.
    assert [s.id for s in lined_up["BTC"]] == [4, 7, 2, 5]


def test_the_basis_is_taken_in_the_buckets_both_venues_have():
    reference = pd.DataFrame({"t_ms": [1.0, 2.0, 3.0], "mid": [100.0, 100.0, 200.0]})
    other = pd.DataFrame({"t_ms": [2.0, 3.0, 4.0], "mid": [101.0, 199.0, 5.0]})
    basis = basis_bps(reference, other)
    assert basis["t_ms"].tolist() == [2.0, 3.0]
    assert basis["basis_bps"].round(6).tolist() == [100.0, -50.0]
