"""The command line as a user runs it: real processes, real sockets, real database."""

from __future__ import annotations

import csv
import io
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from depthwatch.sim import SimConfig, SimulatorThread
from depthwatch.storage import schema
from depthwatch.storage.db import make_engine

from .conftest import cli_env, run_cli, start_collect
from .e2e import stored_message_count

SRC = Path(__file__).resolve().parents[1] / "streamlit"


depthwatch = run_cli


@pytest.mark.parametrize(
    "command", [[], ["collect"], ["export"], ["sim"], ["db"], ["db", "upgrade"]]
)
def test_every_command_explains_itself(command):
    result = depthwatch(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: depthwatch" in result.stdout
    assert len(result.stdout.splitlines()) > 5


def test_the_render_worker_script_runs_the_collector_command():
    result = subprocess.run(
        [sys.executable, str(SRC / "worker.py"), "--help"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: depthwatch collect" in result.stdout


def test_bad_settings_are_clear_errors():
    result = depthwatch("collect", "--depth", "500", "--database-url", "postgresql://x/y")
    assert result.returncode == 2
    assert "depth 500 is not served for linear; valid depths: 1, 50, 200, 1000" in result.stderr
    result = depthwatch("collect", "--category", "option", "--depth", "50")
    assert result.returncode == 2 and "valid depths: 25, 100" in result.stderr
    env = cli_env() | {"DEPTHWATCH_RETENTION_DAYS": "a week"}
    result = subprocess.run(
        [sys.executable, "-m", "depthwatch.cli", "collect"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2
    assert "DEPTHWATCH_RETENTION_DAYS='a week' is not a valid int" in result.stderr


@pytest.mark.parametrize("command", [["collect"], ["db", "upgrade"]])
def test_an_unreachable_database_is_a_clear_error_after_retrying(command):
    started = time.monotonic()
    result = depthwatch(
        *command,
        "--database-url",
        "postgres://someone:secret@127.0.0.1:9/nowhere",
        "--database-wait",
        "2",
    )
    assert result.returncode == 1
    assert "database not reachable yet" in result.stderr  # it retried
    assert "cannot reach the database at postgresql+psycopg2://someone:***@127.0.0.1:9" in (
        result.stderr
    )
    assert "secret" not in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30


def test_a_collector_whose_every_topic_is_refused_exits_2(database_url):
    sim = SimulatorThread(SimConfig(symbols=("BTCUSDT",), rate=10, seed=1)).start()
    try:
        result = depthwatch(
            "collect",
            "--symbols",
            "NOPEUSDT,NADAUSDT",
            "--ws-url",
            sim.sim.url("linear"),
            "--database-url",
            database_url,
        )
    finally:
        sim.stop()
    assert result.returncode == 2, result.stderr
    assert "subscription to orderbook.50.NOPEUSDT failed: error:handler not found" in (
        result.stderr
    )
    assert "every subscription was refused" in result.stderr


def test_db_upgrade_creates_the_schema(database_url):
    result = depthwatch("db", "upgrade", "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    assert f"schema at version {schema.MIGRATIONS[-1].version}" in result.stdout
    engine = make_engine(database_url)
    assert schema.schema_version(engine) == schema.MIGRATIONS[-1].version
    engine.dispose()


def test_sigterm_flushes_everything_and_exits_zero(database_url, tmp_path):
    """The collector under a fast stream gets SIGTERM: it stops within seconds,
    exits 0, and every book message it received is in the database; then the
    export command writes those rows as Tardis CSV."""
    sim = SimulatorThread(SimConfig(symbols=("BTCUSDT", "ETHUSDT"), rate=0, seed=5)).start()
    try:
        proc = start_collect(
            sim.sim.url("linear"), database_url, "--symbols", "BTCUSDT,ETHUSDT", "--trades"
        )
        engine = make_engine(database_url)
        deadline = time.monotonic() + 60
        while True:
            time.sleep(0.5)
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "collector wrote nothing"
            if stored_message_count(engine):
                break
        time.sleep(1.0)  # let it run at full speed for a moment
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        sim.stop()
    assert proc.returncode == 0, stderr
    assert elapsed < 5.0, f"took {elapsed:.1f} s to stop"
    match = re.search(
        r"stopped: (\d+) book messages received \((\d+) dropped.*?\); written: (\d+) book events",
        stderr,
    )
    assert match, stderr
    received, dropped, written = map(int, match.groups())
    assert "everything flushed" in stderr
    assert received > 1_000
    assert written == received - dropped
    with engine.connect() as conn:
        goodbyes = conn.execute(
            sa.text("SELECT detail FROM feed_events WHERE kind = 'disconnect'")
        ).scalars()
        lost = conn.execute(sa.text("SELECT count(*) FROM feed_events WHERE kind = 'book_lost'"))
        assert lost.scalar() == 0  # an orderly stop is not an incident
    assert stored_message_count(engine) == written
    goodbyes = list(goodbyes)
    assert goodbyes and all(g.startswith("stopping") for g in goodbyes)  # a clean disconnect

    out = tmp_path / "l2.csv"
    result = depthwatch(
        "export",
        "--kind",
        "incremental_book_L2",
        "--symbol",
        "btcusdt",
        "--start",
        "2020-01-01",
        "--end",
        "2100-01-01T00:00:00Z",
        "--out",
        str(out),
        "--database-url",
        database_url,
    )
    assert result.returncode == 0, result.stderr
    # Piped: no progress bar, only the summary of what was written.
    assert "rows/s" not in result.stderr and f"wrote {out}" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["l2.csv"]  # renamed into place, whole
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert rows[0]["exchange"] == "bybit" and rows[0]["is_snapshot"] == "true"
    assert {r["symbol"] for r in rows} == {"BTCUSDT"}
    trades = depthwatch(
        "export",
        "--kind",
        "trades",
        "--symbol",
        "ETHUSDT",
        "--start",
        "2020-01-01",
        "--end",
        "2100-01-01",
        "--database-url",
        database_url,
        "--quiet",
    )
    assert trades.returncode == 0, trades.stderr
    # --end defaults to now: everything recorded so far.
    until_now = depthwatch(
        *("export", "--kind", "trades", "--symbol", "ETHUSDT", "--start", "2020-01-01"),
        *("--database-url", database_url, "--quiet"),
    )
    assert until_now.returncode == 0, until_now.stderr
    assert until_now.stdout == trades.stdout
    header, *lines = trades.stdout.splitlines()
    assert header == "exchange,symbol,timestamp,local_timestamp,id,side,price,amount"
    assert lines and all(line.split(",")[5] in ("buy", "sell") for line in lines)

    def export_l2(fmt: str, path: Path) -> None:
        result = depthwatch(
            "export", "--kind", "incremental_book_L2", "--symbol", "BTCUSDT",
            "--start", "2020-01-01", "--end", "2100-01-01", "--format", fmt,
            "--out", str(path), "--database-url", database_url, "--quiet",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr

    parquet = tmp_path / "l2.parquet"
    export_l2("parquet", parquet)
    import pyarrow.parquet as pq

    assert pq.read_table(parquet).num_rows == len(rows)
    gzipped = tmp_path / "l2.csv.gz"
    export_l2("csv.gz", gzipped)
    import gzip

    assert gzip.decompress(gzipped.read_bytes()) == out.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    engine.dispose()


def test_export_of_an_unrecorded_symbol_is_a_clear_error_and_leaves_no_file(database_url, tmp_path):
    depthwatch("db", "upgrade", "--database-url", database_url)
    for fmt in ("csv", "parquet"):
        out = tmp_path / f"nope.{fmt}"
        result = depthwatch(
            "export",
            "--kind",
            "quotes",
            "--symbol",
            "NOPE",
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-02",
            "--format",
            fmt,
            "--out",
            str(out),
            "--database-url",
            database_url,
        )
        assert result.returncode == 1
        assert "no linear instrument 'NOPE' has been recorded" in result.stderr
        assert "Traceback" not in result.stderr
        assert list(tmp_path.iterdir()) == []  # no file, no partial file


def test_simulated_comes_from_the_flag_or_the_environment(monkeypatch):
    from depthwatch.cli import build_parser
    from depthwatch.config import collector_config_from_args

    def config(*argv: str):
        return collector_config_from_args(build_parser().parse_args(["collect", *argv]))

    monkeypatch.delenv("DEPTHWATCH_SIMULATED", raising=False)
    assert not config().simulated
    assert config("--simulated").simulated
    monkeypatch.setenv("DEPTHWATCH_SIMULATED", "1")
    assert config().simulated


def test_the_whole_book_is_depth_full_with_its_snapshots_from_rest(monkeypatch):
    from depthwatch.cli import build_parser
    from depthwatch.config import ConfigError, collector_config_from_args
    from depthwatch.records import FULL_DEPTH

    def config(*argv: str):
        return collector_config_from_args(build_parser().parse_args(["collect", *argv]))

    for name in ("BYBIT_REST_URL", "BYBIT_WS_URL", "DEPTHWATCH_DEPTH"):
        monkeypatch.delenv(name, raising=False)
    whole = config("--category", "spot", "--depth", "50,full", "--symbols", "BTCUSDT")
    assert whole.depths == (50, FULL_DEPTH)
    assert whole.topics() == ["orderbook.50.BTCUSDT", "orderbook.full.BTCUSDT"]
    assert whole.rest_endpoint == "https://api.bybit.com"
    assert config("--testnet").rest_endpoint == "https://api-testnet.bybit.com"
    # Pointed at the simulator, its REST is the same host over HTTP.
    sim = config("--depth", "full", "--ws-url", "ws://127.0.0.1:8765/v5/public/linear")
    assert sim.rest_endpoint == "http://127.0.0.1:8765"
    monkeypatch.setenv("BYBIT_REST_URL", "http://rest.example:9000")
    assert config("--depth", "full").rest_endpoint == "http://rest.example:9000"
    assert config("--rest-url", "http://other:1").rest_endpoint == "http://other:1"
    with pytest.raises(ConfigError, match="depth full is not served for option"):
        config("--category", "option", "--depth", "full")
    with pytest.raises(ConfigError, match="integers, full or rpi"):
        config("--depth", "deep")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-24", "2026-11-24T00:00:00+00:00"),
        ("2026-11-24T10:30Z", "2026-11-24T10:30:00+00:00"),
        ("2026-11-24T10:30:00.000250", "2026-11-24T10:30:00.000250+00:00"),  # naive: UTC
        ("2026-11-24T12:30+02:00", "2026-11-24T10:30:00+00:00"),
        ("now", "2026-11-24T10:00:00+00:00"),
        ("-90s", "2026-11-24T09:58:30+00:00"),
        ("-30m", "2026-11-24T09:30:00+00:00"),
        ("-1h", "2026-11-24T09:00:00+00:00"),
        ("-1.5h", "2026-11-24T08:30:00+00:00"),
        ("-2d", "2026-11-22T10:00:00+00:00"),
        ("-1w", "2026-11-17T10:00:00+00:00"),
    ],
)
def test_export_times_are_iso_dates_or_spans_back_from_now(text, expected):
    from datetime import datetime

    from depthwatch.clock import parse_time_us

    now_us = int(datetime.fromisoformat("2026-11-24T10:00:00+00:00").timestamp()) * 1_000_000
    want = datetime.fromisoformat(expected)
    want_us = int(want.timestamp()) * 1_000_000 + want.microsecond
    assert parse_time_us(text, now_us) == want_us


@pytest.mark.parametrize("text", ["yesterday", "-1y", "1h", "--1h", "-h", "2026-13-01"])
def test_a_time_that_is_none_of_those_is_a_clear_error(text):
    from depthwatch.clock import TimeFormatError, parse_time_us

    with pytest.raises(TimeFormatError, match="not an ISO 8601 time"):
        parse_time_us(text, 0)
