"""The processes tests start: a `depthwatch` subcommand as a child in its own
session, its output in a log file; stopped with SIGTERM, then SIGKILL if it
does not go; waited on while watching the children, so a broken one is
reported, not waited out.

A child that runs an embedded PostgreSQL of its own (no --database-url nor
DATABASE_URL) cannot stop that server once it is killed: `Child.stop` stops it
then, so that no server a test started outlives the test.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from depthwatch.storage.db import stop_embedded

from .conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT_S = 15.0
PROCESS_POLL_S = 0.25
# Subcommands that open the database (the embedded one when given no URL).
DATABASE_COMMANDS = frozenset({"collect", "up", "dashboard", "export", "gaps", "db", "archive"})


@dataclass
class Child:
    """A `depthwatch` subcommand running in the background, its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    data_dir: Path | None = None  # where its own embedded PostgreSQL lives, if it runs one

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL if it is not gone within `timeout_s`; its
        exit code (negative when killed). `depthwatch up` and `dashboard` give
        their own children a parent-death signal, so nothing outlives a kill,
        and an embedded server it leaves running is stopped here."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        self.stop_database()
        return self.proc.returncode

    def stop_database(self) -> None:
        """Stop the child's own embedded PostgreSQL if it is still running (a
        killed child could not): a no-op for a child given a database URL."""
        if self.data_dir is not None:
            stop_embedded(self.data_dir)


def embedded_data_dir(args: Sequence[str], env: Mapping[str, str], cwd: Path) -> Path | None:
    """Where `depthwatch ARGS` keeps the embedded PostgreSQL it starts, or
    None when it starts none (a command without a database, or one given a
    URL)."""
    command = next((a for a in args if not a.startswith("-")), None)
    if command not in DATABASE_COMMANDS or env.get("DATABASE_URL"):
        return None
    data_dir = cwd / env.get("DEPTHWATCH_DATA_DIR", ".depthwatch")  # the CLI's default
    for i, arg in enumerate(args):
        if arg == "--database-url" or arg.startswith("--database-url="):
            return None
        if arg == "--data-dir" and i + 1 < len(args):
            data_dir = cwd / args[i + 1]
        elif arg.startswith("--data-dir="):
            data_dir = cwd / arg.partition("=")[2]
    return data_dir


def spawn(
    name: str,
    args: Sequence[str],
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
) -> Child:
    """Start `depthwatch ARGS...` (this checkout's, without the developer's
    database or endpoint settings, `env` added) in its own session, stdin
    closed, stdout and stderr into `log`."""
    child_env = cli_env() | dict(env or {})
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "depthwatch.cli", *args],
            cwd=cwd,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Child(name, proc, log, embedded_data_dir(args, child_env, cwd))


class Children:
    """Children started for one test (or module), each with its log in
    `logs` (named by `log_name`); `stop` stops them all, newest first
    (dashboards and collectors before the simulator they read)."""

    def __init__(
        self, logs: Path, log_name: Callable[[str, int], str] = lambda name, _: f"{name}.log"
    ) -> None:
        self.logs = logs
        self.log_name = log_name
        self.started: list[Child] = []

    def __call__(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> Child:
        log = self.logs / self.log_name(name, len(self.started))
        self.started.append(spawn(name, args, log, env))
        return self.started[-1]

    def stop(self) -> None:
        for child in reversed(self.started):
            child.stop()


def wait_until(condition: Callable[[], bool], what: str, timeout: float, *watch: Child) -> None:
    """Poll `condition`; fail with the logs of `watch` when one of them exits
    or the time is up, so a broken child is reported, not waited out."""
    deadline = time.monotonic() + timeout
    while not condition():
        for child in watch:
            code = child.proc.poll()
            assert code is None, f"{child.name} exited ({code}):\n{child.output()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s:\n" + "\n".join(
            f"--- {child.name}\n{child.output()}" for child in watch
        )
        time.sleep(PROCESS_POLL_S)


def http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """(status, body); no proxy, since everything here is on 127.0.0.1."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def healthy(base: str) -> bool:
    """The dashboard at `base` answers its health check."""
    try:
        return http_get(f"{base}/_stcore/health")[0] == 200
    except OSError:
        return False


def listening(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:`port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
