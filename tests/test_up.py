"""`depthwatch up` and `depthwatch dashboard` as a user runs them: real child
processes, real sockets, a real database; children found through /proc."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from depthwatch.records import FULL_DEPTH
from depthwatch.storage.db import make_engine

from .conftest import cli_env, free_port
from .procs import Child, listening, spawn

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "streamlit"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40.0

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def healthy(port: int) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a process, None when it is gone. The start
    time tells a process from a later one that reuses its pid."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[19])


def children_of(parent: int) -> dict[int, int]:
    """pid -> start time of every live child of `parent`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat[0] == parent:
                found[int(entry.name)] = stat[1]
    return found


def still_alive(processes: dict[int, int]) -> list[int]:
    return [pid for pid, start in processes.items() if (proc_stat(pid) or (0, -1))[1] == start]


@dataclass
class Running:
    """A `depthwatch` command started in the background, its output in a file."""

    child: Child

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.child.proc

    def output(self) -> str:
        return self.child.output()

    def started(self) -> dict[str, int]:
        """Child name -> pid, from the supervisor's "started NAME (pid N)" lines."""
        found = re.findall(r"started ([\w-]+) \(pid (\d+)\)", self.output())
        return {name: int(pid) for name, pid in found}

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not condition():
            assert self.proc.poll() is None, f"exited ({self.proc.returncode}):\n{self.output()}"
            assert time.monotonic() < deadline, f"no {what} in time:\n{self.output()}"
            time.sleep(0.25)

    def stop(self, sig: int = signal.SIGTERM, group: bool = False) -> tuple[int, float]:
        """Send `sig`, to its whole process group as a terminal's Ctrl-C does
        when `group`; (exit code, seconds it took)."""
        sent = time.monotonic()
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_TIMEOUT_S:.0f} s after {sig!r}:\n{self.output()}")
        return code, time.monotonic() - sent


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Starts `depthwatch ARGS...`; whatever is left running at the end is
    killed, an embedded PostgreSQL it started included (a killed `up` cannot
    stop its own)."""
    started: list[Running] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Running:
        log = tmp_path / f"depthwatch-{len(started)}.log"
        started.append(Running(spawn("depthwatch", args, log, env)))
        return started[-1]

    yield start
    for running in started:
        children = children_of(running.proc.pid)
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()
        for pid in still_alive(children):
            os.kill(pid, signal.SIGKILL)
        running.child.stop_database()


def book_events(database_url: str) -> Callable[[], int]:
    engine = make_engine(database_url)

    def count() -> int:
        with engine.connect() as conn:
            if not conn.execute(sa.text("SELECT to_regclass('book_chunks')")).scalar():
                return 0
            return int(conn.execute(sa.text("SELECT count(*) FROM book_chunks")).scalar() or 0)

    return count


def sim_up_args(port: int, *more: str) -> list[str]:
    return ["up", "--source", "sim", "--symbols", "BTCUSDT", "--port", str(port), *more]


def test_up_with_the_simulator_records_serves_and_stops_cleanly(run, database_url):
    port = free_port()
    up = run(*sim_up_args(port, "--address", "127.0.0.1", "--database-url", database_url))
    up.wait_for(lambda: healthy(port), "dashboard health")
    count = book_events(database_url)
    up.wait_for(lambda: count() > 0, "book_chunks rows")
    up.wait_for(lambda: f"dashboard: http://127.0.0.1:{port}" in up.output(), "dashboard line")

    started = up.started()
    assert set(started) == {"simulator", "collector", "dashboard"}
    children = children_of(up.proc.pid)
    assert set(children) == set(started.values())
    collector_argv = Path(f"/proc/{started['collector']}/cmdline").read_bytes().split(b"\0")
    assert b"--simulated" in collector_argv
    assert any(arg.startswith(b"--ws-url=ws://127.0.0.1:") for arg in collector_argv)
    assert not any(database_url.encode() in arg for arg in collector_argv)  # env, not `ps`

    code, took = up.stop(signal.SIGTERM)
    output = up.output()
    assert code == 0, output
    assert still_alive(children) == []
    assert "everything flushed" in output
    # Consumers first, the simulator last.
    assert output.index(f"collector (pid {started['collector']}) stopped") < output.index(
        f"stopping simulator (pid {started['simulator']})"
    )
    assert "Traceback" not in output
    assert took < 15, f"took {took:.1f} s to stop"


def test_up_records_the_whole_book_from_the_simulators_rest_snapshots(run, database_url):
    """`up --source sim --depth full`: the collector finds the simulator's
    REST endpoint on its WebSocket port, starts the whole book from it, and
    records it beside depth 50."""
    port = free_port()
    up = run(
        *sim_up_args(port, "--address", "127.0.0.1", "--database-url", database_url),
        *("--category", "spot", "--depth", "50,full"),
    )
    up.wait_for(
        lambda: "spot:BTCUSDT@full: book started from a REST snapshot" in up.output(),
        "the whole book's start",
    )
    engine = make_engine(database_url)

    def whole_book_rows() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM book_chunks c JOIN streams s ON s.id = c.stream_id "
                        "WHERE s.depth = :d"
                    ),
                    {"d": FULL_DEPTH},
                ).scalar_one()
            )

    try:
        up.wait_for(lambda: whole_book_rows() > 0, "the whole book's rows")
    finally:
        engine.dispose()
    code, _ = up.stop(signal.SIGTERM)
    assert code == 0 and "Traceback" not in up.output()


def test_a_child_that_dies_is_reported_and_the_others_are_stopped(run, database_url):
    port = free_port()
    up = run(*sim_up_args(port, "--address", "127.0.0.1", "--database-url", database_url))
    up.wait_for(lambda: healthy(port), "dashboard health")
    children = children_of(up.proc.pid)
    collector = up.started()["collector"]
    assert collector in children

    os.kill(collector, signal.SIGKILL)
    code = up.proc.wait(STOP_TIMEOUT_S)
    output = up.output()
    assert code == 1, output
    assert f"collector (pid {collector}) exited unexpectedly (killed by SIGKILL)" in output
    assert still_alive(children) == []
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("up", "--source --port --address --sim-port --sim-rate --symbols --depth --trades"),
        ("up", "--database-url --data-dir"),
        ("dashboard", "--port --address --database-url --data-dir"),
    ],
)
def test_up_and_dashboard_explain_themselves(command, flags):
    result = subprocess.run(
        [sys.executable, "-m", "depthwatch.cli", command, "--help"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"usage: depthwatch {command}" in result.stdout
    for flag in flags.split():
        assert flag in result.stdout


def test_bad_settings_and_a_busy_port_are_one_line_errors(tmp_path):
    def up(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "depthwatch.cli", "up", "--data-dir", str(tmp_path), *args],
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=60,
        )

    result = up("--depth", "500")
    assert result.returncode == 2
    assert "depth 500 is not served for linear" in result.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = up("--address", "127.0.0.1", "--port", str(port))
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use; choose another with --port" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "pgdata").exists()  # nothing was started


def test_dashboard_alone_serves_and_stops_on_sigint(run, database_url):
    port = free_port()
    dashboard = run(
        "dashboard", "--port", str(port), "--address", "127.0.0.1", "--database-url", database_url
    )
    dashboard.wait_for(lambda: healthy(port), "dashboard health")
    children = children_of(dashboard.proc.pid)
    assert set(children) == set(dashboard.started().values())
    code, _ = dashboard.stop(signal.SIGINT)
    assert code == 0, dashboard.output()
    assert still_alive(children) == []


def test_up_on_the_embedded_database_starts_and_stops_it(run, tmp_path):
    port = free_port()
    data_dir = tmp_path / "data"
    up = run(*sim_up_args(port, "--address", "127.0.0.1", "--data-dir", str(data_dir)))
    up.wait_for(lambda: healthy(port), "dashboard health")
    up.wait_for(lambda: "collecting 1 topics" in up.output(), "collector start")
    postmaster = data_dir / "pgdata" / "postmaster.pid"
    assert postmaster.exists()
    # The embedded database's finished days are archived beside it, from the start.
    archived = re.compile(r"archive \(pid \d+\) finished \(exit status 0\)")
    up.wait_for(lambda: bool(archived.search(up.output())), "an archive run")
    assert (data_dir / "archive").is_dir()
    children = children_of(up.proc.pid)
    code, _ = up.stop(signal.SIGINT, group=True)  # Ctrl-C
    output = up.output()
    assert code == 0, output
    assert still_alive(children) == []
    assert "everything flushed" in output
    assert not postmaster.exists()  # the embedded server stopped with us


def test_children_do_not_outlive_a_supervisor_killed_with_sigkill(run, database_url):
    port = free_port()
    up = run(*sim_up_args(port, "--address", "127.0.0.1", "--database-url", database_url))
    up.wait_for(lambda: healthy(port), "dashboard health")
    children = children_of(up.proc.pid)
    assert len(children) == 3

    up.proc.kill()  # no chance to clean up: Linux's parent-death signal must
    up.proc.wait()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while still_alive(children) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert still_alive(children) == [], up.output()


def recorded_streams(database_url: str) -> Callable[[], int]:
    engine = make_engine(database_url)

    def count() -> int:
        with engine.connect() as conn:
            if not conn.execute(sa.text("SELECT to_regclass('book_chunks')")).scalar():
                return 0
            query = "SELECT count(DISTINCT stream_id) FROM book_chunks"
            return int(conn.execute(sa.text(query)).scalar() or 0)

    return count


def test_collect_streams_from_the_env_runs_one_collector_per_market(run, database_url):
    """Render's worker: `collect` with DEPTHWATCH_STREAMS naming two markets
    runs exactly two collectors (children that never split the list again),
    each on its market's path of the simulator, both recording into one
    database; SIGTERM stops both after their last flush."""
    port = free_port()
    sim = run("sim", "--port", str(port), "--symbols", "BTCUSDT", "--rate", "20")
    sim.wait_for(lambda: listening(port), "simulator")
    streams = "binance-futures:BTCUSDT,hyperliquid:BTC"
    collect = run(
        *("collect", "--ws-url", f"ws://127.0.0.1:{port}", "--database-url", database_url),
        env={"DEPTHWATCH_STREAMS": streams},
    )
    collect.wait_for(lambda: recorded_streams(database_url)() == 2, "two markets recorded")
    started = collect.started()
    assert set(started) == {"collector-binance-futures-full", "collector-hyperliquid-20"}
    children = children_of(collect.proc.pid)
    assert set(children) == set(started.values()), collect.output()
    for pid in children:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert not any(b"--streams" in arg for arg in argv)
    code, _ = collect.stop(signal.SIGTERM)
    output = collect.output()
    assert code == 0, output
    assert output.count("everything flushed") == 2, output
    assert still_alive(children) == []
    sim.stop(signal.SIGTERM)
