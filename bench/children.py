"""The processes benchmarks start: `depthwatch` subcommands (the simulator,
the collector, the dashboard and the Streamlit server under it, exports) and
bench/record_paced.py, each run from a chosen source tree (this one or a
baseline's), without the developer's database settings.

A child runs in its own session (a Ctrl-C reaches the benchmark only, which
stops its children in order), dies with the benchmark (Linux's parent-death
signal, should the benchmark itself be killed) and writes its output to a log
file, read back for figures and shown when it fails. `Children` stops every
child it started on the way out, newest first: SIGTERM, then SIGKILL if it is
not gone in time. Children are always given a database URL, so none starts an
embedded PostgreSQL of its own; the benchmark's own server is stopped by
databases.database_server.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from common import ROOT, SRC

T = TypeVar("T")
STOP_TIMEOUT_S = 60.0
RECORD_PACED = ROOT / "bench" / "record_paced.py"
SIM_LISTENING = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)/")
# Debian's Chromium, headless, for Playwright (its own browser download does
# not work on these machines); the tests launch it the same way.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def child_env(src: Path = SRC, **extra: str) -> dict[str, str]:
    """The environment of a child: depthwatch from `src`, unbuffered output,
    no database or endpoint inherited from the developer's shell."""
    env = dict(os.environ)
    for name in ("DATABASE_URL", "DASHBOARD_DATABASE_URL", "BYBIT_WS_URL", "BYBIT_REST_URL"):
        env.pop(name, None)
    return env | {"PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1"} | extra


def die_with_us() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when this process dies,
    so nothing outlives a killed benchmark (None where prctl is missing)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return preexec


@dataclass
class Child:
    """A child process and the log file its stdout and stderr go to."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM; SIGKILL if it is still there after `timeout_s`. Its exit
        code (negative when killed by a signal)."""
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                print(
                    f"  {self.name} (pid {self.pid}) ignored SIGTERM for {timeout_s:.0f} s: "
                    "killing it"
                )
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Children:
    """The children of one run, their logs in `logs`; a context manager that
    stops them all on the way out, newest first (a dashboard and a collector
    before the simulator they read)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.started: list[Child] = []
        self._numbers = itertools.count()

    def start(
        self,
        name: str,
        args: Sequence[str],
        src: Path = SRC,
        env: dict[str, str] | None = None,
    ) -> Child:
        """`depthwatch ARGS` from `src` (`env` added to child_env's), in ROOT."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}-{self.stamp}-{next(self._numbers)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "depthwatch.cli", *args],
                env=child_env(src, **(env or {})),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_us(),
                cwd=ROOT,
            )
        self.started.append(Child(name, proc, log))
        return self.started[-1]

    def stop(self) -> None:
        while self.started:
            self.started.pop().stop()

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str, *watch: Child) -> T:
    """Poll `check` until it gives a true value, and return that; fail with
    the log of a watched child that exits, or when the time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        for child in watch:
            if not child.running():
                raise RuntimeError(
                    f"{what}: {child.name} exited with {child.proc.returncode}; its log:\n"
                    + child.output()[-4000:]
                )
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what} after {timeout_s:.0f} s")
        time.sleep(0.2)


# ---- the subcommands ------------------------------------------------------------------


def start_sim(
    children: Children, args: Sequence[str], timeout_s: float = 30.0
) -> tuple[Child, int]:
    """`depthwatch sim ARGS` on a free port of 127.0.0.1, from this tree;
    (the child, its port) once it listens."""
    sim = children.start(
        "sim", ["--log-level", "INFO", "sim", "--host", "127.0.0.1", "--port", "0", *args]
    )

    def port() -> int | None:
        found = SIM_LISTENING.search(sim.output())
        return int(found.group(1)) if found else None

    return sim, wait_for(port, timeout_s, "the simulator", sim)


def sim_url(port: int, category: str = "linear") -> str:
    return f"ws://127.0.0.1:{port}/v5/public/{category}"


def start_collector(
    children: Children,
    ws_url: str,
    database_url: str,
    symbols: Sequence[str],
    *extra: str,
    src: Path = SRC,
) -> Child:
    """`depthwatch collect` of `symbols` from `ws_url` into `database_url`,
    keeping everything (no retention)."""
    return children.start(
        "collector",
        [
            *("collect", "--symbols", ",".join(symbols), "--ws-url", ws_url),
            *("--database-url", database_url, "--retention-days", "0", *extra),
        ],
        src=src,
    )


def start_dashboard(
    children: Children,
    database_url: str,
    env: dict[str, str] | None = None,
    timeout_s: float = 90.0,
) -> tuple[Child, str]:
    """`depthwatch dashboard` on a free port of 127.0.0.1; (the child, its
    base URL) once it answers its health check."""
    port = free_port()
    dashboard = children.start(
        "dashboard",
        [
            *("dashboard", "--database-url", database_url),
            *("--port", str(port), "--address", "127.0.0.1"),
        ],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_ok(base + "/_stcore/health"), timeout_s, "the dashboard", dashboard)
    return dashboard, base


def streamlit_pid(dashboard: Child, timeout_s: float = 30.0) -> int:
    """The Streamlit server `depthwatch dashboard` runs as its child."""

    def found() -> int | None:
        task = Path(f"/proc/{dashboard.pid}/task/{dashboard.pid}/children")
        pids = [int(p) for p in task.read_text().split()]
        return next((p for p in pids if "streamlit" in cmdline(p)), None)

    return wait_for(found, timeout_s, "the streamlit process", dashboard)


def run_record_paced(database_url: str, *args: str, src: Path = SRC, progress: bool = False) -> str:
    """bench/record_paced.py into `database_url`, run from `src` to the end;
    its result, one JSON line. With `progress`, its progress lines (stderr)
    show on ours."""
    done = subprocess.run(
        [sys.executable, str(RECORD_PACED), "--database-url", database_url, *args],
        env=child_env(src),
        stdout=subprocess.PIPE,
        stderr=None if progress else subprocess.PIPE,
        text=True,
        check=False,
        cwd=ROOT,
        preexec_fn=die_with_us(),
    )
    if done.returncode:
        raise RuntimeError(f"record_paced.py failed ({done.returncode}): {done.stderr or ''}")
    return done.stdout.strip().splitlines()[-1]


# ---- small things -------------------------------------------------------------------------


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_ok(url: str) -> bool:
    """A GET of `url` answers 200 (no proxy: everything here is on 127.0.0.1)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
