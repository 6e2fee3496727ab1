"""Logging: the JSON format for Render's log streams, and the throttle that keeps
a per-message warning from flooding the log (unit tests, then the real collector
against the simulator)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import sqlalchemy as sa

from depthwatch.logs import JsonFormatter, LogThrottle, iso_utc, setup_logging
from depthwatch.records import StreamKey
from depthwatch.sim import SimConfig, SimulatorThread

from .conftest import FakeClock, cli_env, free_port
from .e2e import stored_book_events

TOPIC = "orderbook.50.BTCUSDT"
STREAM = StreamKey("linear", "BTCUSDT", 50)


@contextlib.contextmanager
def started(command: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """A `depthwatch` command with its stderr piped; killed (and its group:
    `up`'s children) if still running when the block ends, a failed assertion
    included."""
    proc = subprocess.Popen(
        command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def test_the_throttle_lets_a_burst_through_then_one_line_per_interval_with_the_count():
    clock = FakeClock()
    throttle = LogThrottle(burst=3, interval_s=60.0, clock=clock)
    assert [throttle.admit() for _ in range(3)] == [0, 0, 0]
    assert [throttle.admit() for _ in range(500)] == [None] * 500
    clock.now += 59.9
    assert throttle.admit() is None
    clock.now += 0.1
    assert throttle.admit() == 501  # the ones held back since the last line
    assert throttle.admit() is None
    clock.now += 60.0
    assert throttle.admit() == 1
    assert throttle.seen == 507


def test_throttled_lines_name_the_held_back_count():
    clock = FakeClock()
    out = io.StringIO()
    logger = logging.getLogger("depthwatch.test_throttle")
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        throttle = LogThrottle(burst=2, interval_s=10.0, clock=clock)
        sent = [throttle.log(logger, logging.WARNING, "bad frame #%d", n) for n in range(1, 101)]
        clock.now += 10.0
        assert throttle.log(logger, logging.WARNING, "bad frame #%d", 101)
    finally:
        logger.removeHandler(handler)
    assert sent.count(True) == 2
    assert out.getvalue().splitlines() == [
        "bad frame #1",
        "bad frame #2",
        "bad frame #101 (98 more like this since the last such line)",
    ]


def test_json_lines_carry_time_level_logger_message_and_exception():
    formatter = JsonFormatter()
    try:
        raise ValueError("broken\nacross lines")
    except ValueError:
        record = logging.getLogger("depthwatch.x").makeRecord(
            "depthwatch.x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info()
        )
    record.created = 1_795_000_000.5
    line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["time"] == iso_utc(1_795_000_000.5) == "2026-11-18T11:06:40.500Z"
    assert entry["level"] == "ERROR" and entry["logger"] == "depthwatch.x"
    assert entry["message"] == "failed here"
    assert "ValueError: broken\nacross lines" in entry["exception"]
    plain = json.loads(formatter.format(logging.makeLogRecord({"msg": "ok", "name": "n"})))
    assert "exception" not in plain


def test_setup_twice_installs_one_handler(monkeypatch):
    root = logging.getLogger()
    before = list(root.handlers)
    out = io.StringIO()
    try:
        setup_logging("INFO", "json", stream=out)
        setup_logging("INFO", "json", stream=out)
        logging.getLogger("depthwatch.once").info("only once")
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["only once"]


def test_an_unknown_log_format_is_a_clear_error():
    env = cli_env() | {"DEPTHWATCH_LOG_FORMAT": "xml"}
    result = subprocess.run(
        [sys.executable, "-m", "depthwatch.cli", "db", "upgrade"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "DEPTHWATCH_LOG_FORMAT='xml' is not one of text, json" in result.stderr


def test_a_malformed_frame_every_ten_messages_costs_a_bounded_log_in_json(database_url):
    """The real collector (CLI) records 4,000 deltas from the simulator, which
    slips a malformed frame in after every tenth message (about 400 of them):
    every stderr line is a JSON object, and the malformed ones are the first ten
    only (the run lasts under the throttle's minute), not one per frame."""
    deltas = 4_000
    sim = SimulatorThread(
        SimConfig(
            symbols=("BTCUSDT",), rate=0, deltas=deltas, seed=3, trades_rate=0, malformed_every=10
        )
    ).start()
    env = cli_env() | {"DEPTHWATCH_LOG_FORMAT": "json"}
    command = [sys.executable, "-m", "depthwatch.cli", "collect", "--symbols", "BTCUSDT"]
    command += ["--ws-url", sim.sim.url("linear"), "--database-url", database_url]
    command += ["--retention-days", "0"]
    engine = sa.create_engine(database_url)
    try:
        with started(command, env) as proc:
            deadline = time.monotonic() + 90
            stored_u = None
            while True:  # until the simulator's last message is stored
                time.sleep(0.5)
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, f"stored up to u={stored_u}"
                last = sim.latest(TOPIC)
                with engine.connect() as conn:
                    registered = conn.execute(
                        sa.text("SELECT to_regclass('streams')")
                    ).scalar() and (conn.execute(sa.text("SELECT count(*) FROM streams")).scalar())
                if registered:
                    stored_u = max((e.u for e in stored_book_events(engine, STREAM)), default=None)
                if sim.sim.finished(TOPIC) and last is not None and stored_u == last.u:
                    break
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)
    finally:
        sim.stop()
        engine.dispose()
    assert proc.returncode == 0, stderr
    lines = stderr.splitlines()
    entries = [json.loads(line) for line in lines]  # every line parses
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert all(e["time"].endswith("Z") for e in entries)
    malformed = [e for e in entries if "malformed message #" in e["message"]]
    assert len(malformed) == 10, [e["message"] for e in malformed]
    assert malformed[-1]["message"].startswith("linear-0: malformed message #10:")
    assert len(lines) < 60, stderr  # about 400 malformed frames; a bounded log
    # ... while the collector counted every one of them.
    counted = [re.search(r"\bmalformed (\d+)", e["message"]) for e in entries]
    assert [int(m.group(1)) for m in counted if m] == [deltas_seen(entries) // 10]


def deltas_seen(entries: list[dict[str, str]]) -> int:
    """Book messages the collector reports receiving when it stops."""
    for entry in entries:
        found = re.search(r"stopped: (\d+) book messages received", entry["message"])
        if found:
            return int(found.group(1))
    raise AssertionError("no stop summary")


def test_up_in_json_mode_writes_only_json_lines(database_url):
    """`up --source sim`: the supervisor's lines, the collector's and the
    simulator's (relayed with a `process` field) and the dashboard's (Streamlit's
    plain banner wrapped) are all JSON objects."""
    port = free_port()
    env = cli_env() | {"DEPTHWATCH_LOG_FORMAT": "json"}
    command = [sys.executable, "-m", "depthwatch.cli", "up", "--source", "sim"]
    command += ["--port", str(port), "--database-url", database_url]
    engine = sa.create_engine(database_url)
    try:
        with started(command, env) as proc:
            deadline = time.monotonic() + 60
            while True:
                time.sleep(0.5)
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "up never recorded anything"
                with engine.connect() as conn:
                    if conn.execute(sa.text("SELECT to_regclass('top_seconds')")).scalar() and (
                        conn.execute(sa.text("SELECT count(*) FROM top_seconds")).scalar()
                    ):
                        break
            try:
                health = f"http://127.0.0.1:{port}/_stcore/health"
                while True:
                    try:
                        urllib.request.urlopen(health, timeout=2).close()
                        break
                    except OSError:
                        assert time.monotonic() < deadline, "the dashboard never answered"
                        time.sleep(0.3)
            finally:
                proc.send_signal(signal.SIGTERM)
                _, stderr = proc.communicate(timeout=30)
    finally:
        engine.dispose()
    assert proc.returncode == 0, stderr
    entries = [json.loads(line) for line in stderr.splitlines()]
    processes = {e.get("process") for e in entries}
    assert {"collector", "simulator", "dashboard", None} <= processes  # None: the supervisor
    assert any(e["logger"] == "depthwatch.supervisor" for e in entries)


def test_a_gap_every_ten_messages_costs_a_bounded_log(database_url):
    """The simulator withholds every tenth delta: a gap and a resync each time,
    each recorded in feed_events, but logged ten times, not hundreds."""
    sim = SimulatorThread(
        SimConfig(symbols=("BTCUSDT",), rate=400, seed=3, trades_rate=0, drop_every=10)
    ).start()
    command = [sys.executable, "-m", "depthwatch.cli", "collect", "--symbols", "BTCUSDT"]
    command += ["--ws-url", sim.sim.url("linear"), "--database-url", database_url]
    engine = sa.create_engine(database_url)
    gaps = 0
    try:
        with started(command, cli_env()) as proc:
            deadline = time.monotonic() + 90
            while gaps < 100:
                time.sleep(0.5)
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, f"only {gaps} gaps recorded"
                with engine.connect() as conn:
                    if conn.execute(sa.text("SELECT to_regclass('feed_events')")).scalar():
                        gaps = conn.execute(
                            sa.text("SELECT count(*) FROM feed_events WHERE kind = 'gap'")
                        ).scalar()
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)
    finally:
        sim.stop()
        engine.dispose()
    assert proc.returncode == 0, stderr
    lines = stderr.splitlines()
    assert len([line for line in lines if ": gap before u=" in line]) == 10
    assert len([line for line in lines if ": resyncing orderbook" in line]) == 10
    assert len(lines) < 60, stderr
