"""`depthwatch up` and `depthwatch dashboard`: run the collector, the dashboard
and (optionally) the simulator as supervised child processes.

Why child processes rather than threads: each piece already is a command with
its own signal handling and event loop (the collector flushes on SIGTERM,
Streamlit owns its server), so the supervisor only has to start them, relay
their output, notice when one dies, and stop them in order.

Each child runs in its own process group, so a Ctrl-C in the terminal reaches
the supervisor alone: it then sends exactly one SIGTERM to each child, in the
order that loses nothing (dashboard and collector first, the collector
flushing every row it received, the simulator last). A second signal would
otherwise hit the collector while it flushes, after its handler is gone. On
Linux each child also gets PR_SET_PDEATHSIG, so it is told to stop even if the
supervisor itself is killed with SIGKILL.

Besides its children, `up` runs the archive as a job: a `depthwatch archive`
that ends, whose exit stops nothing, when archive/schedule.py says.

The process rules (groups, death signal, stop order, restarts, relayed
output, jobs) and the two commands built on them read best together, so they
share this file; the commands' flags live in up_arguments.py.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import depthwatch
from depthwatch.app.clients import (
    FORWARDED_ALLOW_IPS_ENV,
)
from depthwatch.config import (
    STREAM_FLAGS,
    STREAMS_ENV,
    CollectorConfig,
    ConfigError,
    add_collector_arguments,
    archive_url,
    collector_config_from_args,
    parse_streams,
    reader_database_url_from_env,
)
from depthwatch.logs import relay_line
from depthwatch.probes import (
    SIM_HOST,
    accepts_tcp,
    ensure_port_free,
    free_port,
    health_ok,
    probe_host,
    url_host,
)
from depthwatch.records import depth_label
from depthwatch.up_arguments import passthrough_flags

log = logging.getLogger(__name__)

HEALTH_PATH = "/_stcore/health"

POLL_INTERVAL_S = 0.2
STOP_TIMEOUT_S = 30.0  # the collector may need this long to flush a full queue
SIM_START_TIMEOUT_S = 30.0
DASHBOARD_SLOW_START_S = 60.0
RELAY_JOIN_TIMEOUT_S = 2.0
TAIL_LINES = 10

# Stop stages: consumers (dashboard, collector) before the producer (simulator).
STAGE_CONSUMER = 0
STAGE_PRODUCER = 1

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


# -- children ------------------------------------------------------------------


@dataclass
class Child:
    """One supervised process. Its merged stdout/stderr is relayed, line by
    line and prefixed with its name, to our stderr; the last lines are kept to
    explain an unexpected exit."""

    name: str
    argv: list[str]
    env: dict[str, str]
    stage: int = STAGE_CONSUMER
    # Sent by Linux if we die first. SIGTERM lets the collector flush.
    death_signal: signal.Signals = signal.SIGTERM
    process: subprocess.Popen[bytes] | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    relay: threading.Thread | None = None
    reported: bool = False  # its exit was logged already
    job: bool = False  # runs to its end (the archive): its exit stops nothing

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def label(self) -> str:
        return f"{self.name} (pid {self.pid})"


def child_env(**overrides: str | None) -> dict[str, str]:
    """Our environment with overrides (None removes a variable); unbuffered so
    the children's lines reach the relay as they are written."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def depthwatch_argv(log_level: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "depthwatch.cli", "--log-level", log_level, *args]


def app_path() -> Path:
    """The dashboard's entry script, streamlit/app.py next to the package."""
    path = Path(depthwatch.__file__).resolve().parent.parent / "app.py"
    if not path.is_file():
        raise ConfigError(
            f"the dashboard script {path} is missing: run depthwatch from a clone of the "
            "repository installed with `pip install -e .`"
        )
    return path


def dashboard_child(
    app: Path, port: int, address: str, trusted_proxies: str, env: dict[str, str]
) -> Child:
    argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        # The same as .streamlit/config.toml, for runs started outside the repository.
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "viewer",
        "--client.showErrorDetails",
        "none",
    ]
    # uvicorn reads it when Streamlit starts; set even when empty, which trusts
    # no proxy (its default trusts 127.0.0.1: any same-host tunnel).
    env = env | {FORWARDED_ALLOW_IPS_ENV: trusted_proxies}
    # Streamlit's SIGTERM handler prints to the pipe that died with us, fails and
    # leaves the server running; it has nothing to save, so it gets SIGKILL.
    return Child("dashboard", argv, env, death_signal=signal.SIGKILL)


def dashboard_env_for_url(url: str) -> dict[str, str]:
    # The app prefers DASHBOARD_DATABASE_URL; we resolved it already, so pass one URL.
    return child_env(DATABASE_URL=url, DASHBOARD_DATABASE_URL=None)


def sim_ws_url(port: int, category: str) -> str:
    return sim_market_url(f"ws://{SIM_HOST}:{port}", category)


def sim_market_url(server: str, category: str) -> str:
    """Where a simulator at `server` (any URL of it) serves a market."""
    from depthwatch.sim.config import ws_path

    parts = urllib.parse.urlsplit(server)
    return f"{parts.scheme}://{parts.netloc}{ws_path(category)}"


# -- the supervisor ------------------------------------------------------------


def _die_with_parent(death_signal: signal.Signals) -> Callable[[], None] | None:
    """A preexec function asking Linux to signal the child when we die, so no
    child outlives a supervisor killed with SIGKILL. The libc function is looked
    up here, before the fork, so the child runs as little Python as possible."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent:  # we died before the request took effect
            os._exit(1)

    return preexec


def describe_status(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


class Supervisor:
    """Starts children, watches them, and stops them in stages."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.stop_signal: signal.Signals | None = None
        self._output_lock = threading.Lock()
        self._previous: dict[signal.Signals, SignalHandler] = {}

    @property
    def stop_requested(self) -> bool:
        return self.stop_signal is not None

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM/SIGHUP only record themselves for the loops to see:
        the handler runs between two bytecodes of whatever we were doing (even
        a write to stderr), so it neither stops nor logs anything itself."""
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        try:
            yield
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_signal is None:  # a second Ctrl-C must not cut the flush short
            self.stop_signal = signal.Signals(signum)

    def start(self, child: Child) -> Child:
        child.process = subprocess.Popen(
            child.argv,
            env=child.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,
            preexec_fn=_die_with_parent(child.death_signal),
        )
        self.children.append(child)
        child.relay = threading.Thread(
            target=self._relay, args=(child,), name=f"relay-{child.name}", daemon=True
        )
        child.relay.start()
        log.info("started %s", child.label())
        log.debug("%s command: %s", child.name, shlex.join(child.argv))
        return child

    def _relay(self, child: Child) -> None:
        assert child.process is not None and child.process.stdout is not None
        stream: IO[bytes] = child.process.stdout
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:  # Streamlit frames its banner with blank lines
                continue
            child.tail.append(line)
            # Keep draining even when our stderr is gone, or the child would block.
            with self._output_lock, contextlib.suppress(OSError, ValueError):
                sys.stderr.write(relay_line(child.name, line) + "\n")
                sys.stderr.flush()
        stream.close()

    def dead_child(self) -> Child | None:
        for child in self.children:
            if child.job:
                continue
            if child.process is not None and child.process.poll() is not None:
                return child
        return None

    def finished_job(self, name: str) -> int | None:
        """The exit code of job `name` once it ended (logged, and forgotten),
        else None (running, or never started)."""
        for child in self.children:
            if child.job and child.name == name and child.process is not None:
                code = child.process.poll()
                if code is None:
                    return None
                if child.relay is not None:
                    child.relay.join(RELAY_JOIN_TIMEOUT_S)
                self.children.remove(child)
                level = logging.INFO if code == 0 else logging.WARNING
                log.log(level, "%s finished (%s)", child.label(), describe_status(code))
                return code
        return None

    def running(self, name: str) -> bool:
        return any(c.name == name and c.process is not None for c in self.children)

    def report_unexpected_exit(self, child: Child) -> None:
        assert child.process is not None and child.process.returncode is not None
        if child.relay is not None:
            child.relay.join(RELAY_JOIN_TIMEOUT_S)  # its last lines
        tail = "".join(f"\n    {line}" for line in child.tail)
        child.reported = True
        log.error(
            "%s exited unexpectedly (%s); stopping the others.%s",
            child.label(),
            describe_status(child.process.returncode),
            f" Its last lines:{tail}" if tail else "",
        )

    def wait_until(self, ready: Callable[[], bool], timeout_s: float, what: str) -> int | None:
        """Poll `ready` until it holds (None: carry on), or return the exit code
        when a signal, a dead child or the timeout says to give up."""
        deadline = time.monotonic() + timeout_s
        while (code := self._check()) is None:
            if ready():
                return None
            if time.monotonic() > deadline:
                log.error("gave up waiting for %s after %.0f s", what, timeout_s)
                return 1
            time.sleep(POLL_INTERVAL_S)
        return code

    def _check(self) -> int | None:
        """0 once a stop was requested, 1 after reporting a dead child, else None.
        The signal is checked after the children: a child that exited because
        the same signal reached it too (systemd stopping the whole unit) is
        part of the stop, not a crash."""
        dead = self.dead_child()
        if self.stop_requested:
            return 0
        if dead is not None:
            self.report_unexpected_exit(dead)
            return 1
        return None

    def watch(
        self, health_url: str | None, public_url: str, tick: Callable[[], None] | None = None
    ) -> int:
        """Run until a signal (0) or a child's death (1); meanwhile announce the
        dashboard once its health endpoint answers, and call `tick` (jobs)."""
        announced = health_url is None
        slow_warned = False
        started = time.monotonic()
        while (code := self._check()) is None:
            if tick is not None:
                tick()
            if not announced and health_url is not None:
                if health_ok(health_url):
                    log.info("dashboard: %s", public_url)
                    announced = True
                elif not slow_warned and time.monotonic() - started > DASHBOARD_SLOW_START_S:
                    log.warning("the dashboard is not answering at %s yet", health_url)
                    slow_warned = True
            time.sleep(POLL_INTERVAL_S)
        return code

    def stop_all(self) -> bool:
        """SIGTERM every running child, consumers before producers, waiting for
        each stage; SIGKILL what outlives STOP_TIMEOUT_S. True when every child
        not reported already stopped cleanly."""
        if self.stop_signal is not None:
            log.info("%s received: stopping", self.stop_signal.name)
        clean = True
        for stage in sorted({child.stage for child in self.children}):
            group = [c for c in self.children if c.stage == stage and not c.reported]
            for child in group:
                if child.process is not None and child.process.poll() is None:
                    log.info("stopping %s", child.label())
                    with contextlib.suppress(ProcessLookupError):
                        child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for child in group:
                clean &= self._reap(child, deadline)
        for child in self.children:
            if child.relay is not None:
                child.relay.join(RELAY_JOIN_TIMEOUT_S)
        return clean

    def _reap(self, child: Child, deadline: float) -> bool:
        assert child.process is not None
        child.reported = True
        try:
            code = child.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error(
                "%s still running %.0f s after SIGTERM; killing it%s",
                child.label(),
                STOP_TIMEOUT_S,
                " (rows it had not written are lost)" if child.name.startswith("collector") else "",
            )
            child.process.kill()
            child.process.wait()
            return False
        # Death by SIGTERM itself: it had not installed its handler yet, nothing to lose.
        if code in (0, -signal.SIGTERM):
            log.info("%s stopped", child.label())
            return True
        log.error("%s stopped with %s", child.label(), describe_status(code))
        return False


# -- the commands --------------------------------------------------------------


def supervise(body: Callable[[Supervisor], int]) -> int:
    """Run `body` (which starts children and watches them) with our signal
    handling; whatever ends it, a signal, a dead child or a bug, every child is
    stopped before we return."""
    supervisor = Supervisor()
    with supervisor.handling_signals():
        code = 0
        try:
            code = body(supervisor)
        finally:
            clean = supervisor.stop_all()
    return code if clean else max(code, 1)


@dataclass(frozen=True)
class CollectorGroup:
    """One collector child: its name, its arguments and what they configure."""

    name: str
    args: argparse.Namespace
    config: CollectorConfig


def collector_groups(args: argparse.Namespace) -> list[CollectorGroup]:
    """Each collector `up` (or `collect --streams`) runs: one, or with
    --streams one per market and depths. Each is checked as its collector
    would check it (ConfigError: exit 2 before anything starts)."""
    if not args.streams:
        return [CollectorGroup("collector", args, collector_config_from_args(args))]
    groups = []
    for group in parse_streams(args.streams):
        flags = argparse.ArgumentParser(add_help=False)
        add_collector_arguments(flags)
        own = flags.parse_args(group.flags())
        merged = argparse.Namespace(**vars(args))
        for name in STREAM_FLAGS:
            setattr(merged, name, getattr(own, name))
        if args.ws_url:
            # One server for several markets is a simulator: each on its path.
            merged.ws_url = sim_market_url(args.ws_url, group.category)
        depths = "+".join(depth_label(d) for d in group.depths)
        name = f"collector-{group.category}-{depths}"
        groups.append(CollectorGroup(name, merged, collector_config_from_args(merged)))
    return groups


def run_up(args: argparse.Namespace) -> int:
    """`depthwatch up`: database, then simulator, collector(s) and dashboard."""
    groups = collector_groups(args)  # bad settings: exit 2 before starting anything
    app = app_path()
    ensure_port_free(args.address, args.port, "--port")
    if args.source == "sim" and args.sim_port:
        ensure_port_free(SIM_HOST, args.sim_port, "--sim-port")
    if args.source == "sim" and args.sim_rate <= 0:
        raise ConfigError("--sim-rate must be positive")
    return supervise(lambda supervisor: _up(supervisor, args, groups, app))


def _up(
    supervisor: Supervisor,
    args: argparse.Namespace,
    groups: list[CollectorGroup],
    app: Path,
) -> int:
    from depthwatch.storage.db import resolve_database_url

    # Resolved here, once: an embedded server we start lives until we exit,
    # and the children only connect to it.
    url = resolve_database_url(args.database_url, args.data_dir)
    if supervisor.stop_requested:
        return 0
    # The database through the environment (not in `ps`); --streams is this
    # process's to split, never a child's.
    skip = frozenset({"database_url", "streams"})
    sim_port = 0
    if args.source == "sim":
        port = args.sim_port or free_port()
        sim = Child(
            "simulator",
            depthwatch_argv(
                args.log_level,
                "sim",
                f"--host={SIM_HOST}",
                f"--port={port}",
                f"--symbols={','.join(_sim_symbols(groups))}",
                f"--rate={args.sim_rate:g}",
            ),
            child_env(),
            stage=STAGE_PRODUCER,
        )
        supervisor.start(sim)
        failed = supervisor.wait_until(
            lambda: accepts_tcp(SIM_HOST, port),
            SIM_START_TIMEOUT_S,
            "the simulator to accept connections",
        )
        if failed is not None:
            return failed
        for flag in ("ws_url", "rest_url"):
            if getattr(args, flag, None):
                flag_name = flag.replace("_", "-")
                log.warning("--source sim: ignoring --%s %s", flag_name, getattr(args, flag))
        skip |= {"ws_url", "rest_url"}  # the simulator serves REST on its WebSocket port
        sim_port = port
    archive = _archive_url(args)
    # With an archive, the collector's retention waits for it.
    env = child_env(DATABASE_URL=url, DEPTHWATCH_ARCHIVE_URL=archive, **{STREAMS_ENV: None})
    for group in groups:
        argv = depthwatch_argv(args.log_level, "collect", *passthrough_flags(group.args, skip))
        if sim_port:
            extra = [f"--ws-url={sim_ws_url(sim_port, group.config.category)}", "--simulated"]
            argv += [flag for flag in extra if flag not in argv]
        supervisor.start(Child(group.name, argv, env))
    tick = None
    if archive is not None:
        from depthwatch.archive.schedule import ArchiveSchedule

        argv = depthwatch_argv(args.log_level, "archive", f"--archive-url={archive}")
        job_env = child_env(DATABASE_URL=url)
        tick = ArchiveSchedule(
            start=lambda: supervisor.start(Child("archive", argv, job_env, job=True)),
            finished=lambda: supervisor.finished_job("archive"),
            running=lambda: supervisor.running("archive"),
        ).tick
    # A read-only role for the dashboard (DASHBOARD_DATABASE_URL) wins over the writer's URL.
    dashboard_url = reader_database_url_from_env() or url
    env = dashboard_env_for_url(dashboard_url)
    return _serve_dashboard(supervisor, app, args, env, tick)


def run_streams(args: argparse.Namespace) -> int:
    """`depthwatch collect --streams`: one collector per market as child
    processes (Render's worker, from DEPTHWATCH_STREAMS), the database resolved
    once here; a dead one is reported and the others stopped, as `up` does."""
    groups = collector_groups(args)
    return supervise(lambda supervisor: _collect_groups(supervisor, args, groups))


def _collect_groups(
    supervisor: Supervisor, args: argparse.Namespace, groups: list[CollectorGroup]
) -> int:
    from depthwatch.storage.db import resolve_database_url

    url = resolve_database_url(args.database_url, args.data_dir)
    # Never the list itself: a child that read it would split it again.
    env = child_env(DATABASE_URL=url, **{STREAMS_ENV: None})
    skip = frozenset({"database_url", "streams"})
    for group in groups:
        argv = depthwatch_argv(args.log_level, "collect", *passthrough_flags(group.args, skip))
        supervisor.start(Child(group.name, argv, env))
    return supervisor.watch(None, "")


def _sim_symbols(groups: list[CollectorGroup]) -> list[str]:
    """Every symbol any collector asks the simulator for, once."""
    return list(dict.fromkeys(s for group in groups for s in group.config.symbols))


def _archive_url(args: argparse.Namespace) -> str | None:
    """Where up archives: --archive-url, else beside the embedded database;
    None with --no-archive, or with DATABASE_URL and no archive named."""
    return None if args.no_archive else archive_url(args, required=False)


def _serve_dashboard(
    supervisor: Supervisor,
    app: Path,
    args: argparse.Namespace,
    env: dict[str, str],
    tick: Callable[[], None] | None = None,
) -> int:
    address, port = args.address, args.port
    supervisor.start(dashboard_child(app, port, address, args.trusted_proxies, env))
    health = f"http://{probe_host(address)}:{port}{HEALTH_PATH}"
    return supervisor.watch(health, f"http://{url_host(address)}:{port}", tick)


def run_dashboard(args: argparse.Namespace) -> int:
    """`depthwatch dashboard`: only the dashboard; the app finds the database
    itself (the URL we pass, or the embedded server in DEPTHWATCH_DATA_DIR)."""
    app = app_path()
    ensure_port_free(args.address, args.port, "--port")
    if args.database_url:
        from depthwatch.storage.db import normalise_url

        env = dashboard_env_for_url(normalise_url(args.database_url))
    else:
        env = child_env(
            DEPTHWATCH_DATA_DIR=str(Path(args.data_dir).expanduser().resolve()),
            DATABASE_URL=None,
            DASHBOARD_DATABASE_URL=None,
        )
    return supervise(lambda supervisor: _serve_dashboard(supervisor, app, args, env))
