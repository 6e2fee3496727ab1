"""Every page rendered headless by Streamlit's AppTest against a real
PostgreSQL: with data recorded from the simulator, with an empty database, and
with the database down (a banner, never a stack trace)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import streamlit as st
from streamlit.testing.v1 import AppTest

from depthwatch.sim import SimConfig, SimulatorThread
from depthwatch.storage.read.book import quotes
from depthwatch.storage.read.streams import list_streams

from .conftest import free_port, new_database, run_python
from .e2e import collect_until_caught_up
from .test_e2e import config_for

ROOT = Path(__file__).resolve().parents[1]
SYMBOLS = ("BTCUSDT", "ETHUSDT")
DOWN_URL = "postgresql://watcher:s3cret@127.0.0.1:9/nowhere"


def page(name: str) -> AppTest:
    return AppTest.from_string(f"from depthwatch.app import {name}\n{name}.render()")


@pytest.fixture(scope="module")
def recorded_url(server_url: str) -> Iterator[str]:
    """A database holding a few seconds of two simulated streams, with gaps."""
    with new_database(server_url) as url:
        sim = SimulatorThread(
            SimConfig(symbols=SYMBOLS, rate=200, deltas=800, seed=5, trades_rate=20, drop_every=300)
        ).start()
        try:
            config = config_for(sim, url, trades=True, heartbeat_interval_s=0.5)
            collect_until_caught_up(sim, config)
        finally:
            sim.stop()
        yield url
        st.cache_resource.clear()  # the dashboard's pool holds connections to it


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += (
        [e.value for e in at.error] + [i.value for i in at.info] + [w.value for w in at.warning]
    )
    return "\n".join(str(p) for p in parts)


def test_overview_lists_every_stream(recorded_url, use_database):
    use_database(recorded_url)
    at = page("overview").run(timeout=30)
    assert not at.exception
    table = at.dataframe[0].value
    assert sorted(table["symbol"]) == sorted(SYMBOLS)
    assert all("SIMULATED" in status for status in table["status"])
    assert (table["gaps 24h"] > 0).all()  # the simulator dropped deltas
    assert all(len(mids) > 0 for mids in table["mid"])
    assert all(link.startswith("./live?") for link in table["open"])
    # Only simulated data: one line says how to record Bybit and how to deploy.
    assert "depthwatch up --symbols BTCUSDT,ETHUSDT" in texts(at)
    assert "Deploy to Render" in texts(at)


def test_live_page_draws_the_stream_in_the_url(recorded_url, use_database):
    use_database(recorded_url)
    at = page("live")
    at.query_params["symbol"] = "ETHUSDT"
    at.query_params["window"] = "5"
    at.run(timeout=30)
    assert not at.exception
    assert at.selectbox(key="stream").value.symbol == "ETHUSDT"
    assert len(at.get("plotly_chart")) == 6
    engine = sa.create_engine(recorded_url)
    with engine.connect() as conn:
        eth = next(s for s in list_streams(conn) if s.symbol == "ETHUSDT")
        *_, newest = quotes(conn, eth, 0, 2**62)
        best_bid = newest[4]  # (ts, local, ask size, ask, bid, bid size)
    engine.dispose()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Best bid"].replace(",", "") == best_bid  # the exchange's digits
    shown = texts(at)
    assert "SIMULATED" in shown
    assert ("LIVE]" in shown) != ("STALE since" in shown)  # exactly one state badge
    assert "Latency" in shown
    assert at.query_params["window"] == ["5"] or at.query_params["window"] == "5"
    assert "PAUSED" not in shown
    at.toggle(key="paused").set_value(True).run(timeout=30)
    assert not at.exception
    assert "PAUSED at" in texts(at) and "zoom and hover freely" in texts(at)
    assert len(at.get("plotly_chart")) == 6


def test_health_page_lists_the_collector_and_the_tables(recorded_url, use_database):
    use_database(recorded_url)
    at = page("health").run(timeout=30)
    assert not at.exception
    collectors, recorded, events, sizes = (d.value for d in at.dataframe)
    assert len(collectors) == 1 and collectors["data"].tolist() == ["SIMULATED"]
    assert recorded["streams"].tolist() == ["linear:BTCUSDT@50, linear:ETHUSDT@50"]
    assert (events["gap"] > 0).all()
    assert {"book_events", "quotes", "collector_heartbeats"} <= set(sizes["table"])
    labels = {m.label: m.value for m in at.metric}
    assert labels["Retention in force"] == "keep everything"
    assert labels["Oldest data"].endswith("UTC")


@pytest.mark.parametrize("name", ["overview", "live", "health"])
def test_pages_explain_an_empty_database(name, database_url, use_database):
    use_database(database_url)  # a new database: no schema, nothing recorded
    at = page(name).run(timeout=30)
    assert not at.exception
    assert "Nothing has been recorded yet" in texts(at)
    assert "depthwatch up" in texts(at)


@pytest.mark.parametrize("name", ["overview", "live", "health"])
def test_pages_survive_a_dead_database(name, use_database):
    use_database(DOWN_URL)
    at = page(name).run(timeout=30)
    assert not at.exception
    banner = " ".join(e.value for e in at.error)
    assert "Database unreachable" in banner and "Retrying" in banner
    assert "s3cret" not in texts(at)


def test_the_page_script_opens_the_overview(recorded_url, use_database):
    use_database(recorded_url)
    at = AppTest.from_file(str(ROOT / "streamlit" / "dashboard.py")).run(timeout=30)
    assert not at.exception
    assert at.title[0].value == "Recorded streams"


def test_stale_when_the_collector_misses_heartbeats_or_the_feed_falls_silent():
    from depthwatch.app.data import stale_since
    from depthwatch.storage.read.rows import HeartbeatView, LastQuote

    now = 1_000_000_000_000
    beat = HeartbeatView("h:1", now - 1_000_000, 2.0, False, True)
    fresh = LastQuote(now - 200_000, now - 100_000, 1.0, 2.0, 1.0, 1.0)
    assert stale_since(beat, fresh, now) is None
    silent = HeartbeatView("h:1", now - 7_000_000, 2.0, False, True)  # 3 beats missed
    assert stale_since(silent, fresh, now) == now - 7_000_000
    quiet = LastQuote(now - 40_000_000, now - 40_000_000, 1.0, 2.0, 1.0, 1.0)
    assert stale_since(beat, quiet, now) == now - 40_000_000  # the feed went quiet
    assert stale_since(None, fresh, now) == fresh.local_us  # no collector ever reported


def test_a_postgres_scheme_url_is_accepted(recorded_url, use_database):
    """Render hands out postgres:// URLs; the dashboard takes them as they are."""
    use_database(recorded_url.replace("postgresql+psycopg2://", "postgres://", 1))
    assert os.environ["DATABASE_URL"].startswith("postgres://")
    at = page("overview").run(timeout=30)
    assert not at.exception
    assert sorted(at.dataframe[0].value["symbol"]) == sorted(SYMBOLS)


def test_the_render_web_command_serves_with_only_database_url(recorded_url, tmp_path):
    """Exactly Render's start command, from the repository root, with nothing but
    DATABASE_URL (and PATH) in the environment: no `pip install -e`, no
    PYTHONPATH, so streamlit/app.py must make the package importable itself."""
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    port = free_port()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DATABASE_URL": recorded_url}
    command = [sys.executable, "-m", "streamlit", "run", "streamlit/app.py"]
    command += ["--server.port", str(port), "--server.address", "0.0.0.0"]
    server = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                url = f"http://127.0.0.1:{port}/_stcore/health"
                with urllib.request.urlopen(url, timeout=2) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
                assert time.monotonic() < deadline, "the dashboard did not come up in 30 s"
                time.sleep(0.3)
        # It is the st.App of streamlit/app.py: the download route answers
        # (an unknown link: gone), Streamlit's metrics do not.
        for path, status in (("/api/download/nothing", 404), ("/_stcore/metrics", 404)):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5)
                raise AssertionError(f"{path} answered 200")
            except urllib.error.HTTPError as answer:
                assert answer.code == status, path
                body = answer.read().decode()
                assert ("expired" in body) == (path.startswith("/api/")), body
    finally:
        server.terminate()
        server.wait(10)


def test_prices_keep_the_exchange_digits():
    from depthwatch.app.common import mid_and_spread, price

    assert price("60020.0") == "60,020.0"
    assert price("0.00001234") == "0.00001234"
    assert price("1234567.50") == "1,234,567.50"
    assert price(None) == "-"
    assert mid_and_spread("59999.60", "59999.80") == ("59999.70", "0.20")
    assert mid_and_spread(None, "1") is None


def test_latency_p99s_are_marked_against_depthwatch_s_targets():
    from depthwatch.app.live import LATENCY_TARGETS_MS, _latency_line

    target = LATENCY_TARGETS_MS["received → committed"]
    assert ":green[ok]" in _latency_line("received → committed", (100.0, target))
    assert ":orange[over]" in _latency_line("received → committed", (100.0, target + 1))
    assert f"| {target:,.0f} |" in _latency_line("received → committed", None)
    exchange = _latency_line("push → received", (5.0, 900.0))  # the network's: no target
    assert "ok" not in exchange and "over" not in exchange and exchange.endswith("| - |")


def test_the_dashboard_puts_what_its_imports_leave_out_of_the_collectors_reach():
    """A full cyclic collection over Streamlit, pandas and plotly's objects
    paused about one Live read in ten by ~60 ms: the page module freezes them."""
    done = run_python("import gc, depthwatch.app.main; print(gc.get_freeze_count())")
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip().splitlines()[-1]) > 10_000
