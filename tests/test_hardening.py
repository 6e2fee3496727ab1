"""Issue 20, tried as an attacker would: a real dashboard process (`depthwatch
dashboard`) over a real PostgreSQL, driven by raw Streamlit WebSocket clients
(bench/stclient.py) that send what no browser would: forged forwarded headers,
crafted widget states, replayed session ids, absurd ranges; and twenty
downloads at once, with the dashboard's memory watched.

The pure rules underneath (the limiter, client keys, trusted proxies, times,
the file store, the log guard) are tested first, on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa

from common import RssWatch
from depthwatch.app import clients, downloads
from depthwatch.app.limiter import LoginLimiter
from depthwatch.app.planning import MAX_MB_ENV, MAX_ROWS_ENV, export_requests, iso, plan
from depthwatch.clock import MAX_US, SECOND_US, TimeFormatError, parse_time_us
from depthwatch.export import files
from depthwatch.logs import ServerLogGuard
from depthwatch.sim import SimConfig, SimulatorThread
from depthwatch.storage.read.streams import list_streams
from depthwatch.storage.read.tops import recorded_span
from stclient import Run, StreamlitClient, download_history_file, flag, log_in, trigger

from .conftest import FakeClock, cli_env, free_port, new_database
from .e2e import collect_until_caught_up, sim_collector_config
from .procs import Child, Children, healthy, spawn, wait_until
from .test_browser import ARTIFACTS, START_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
SECRET = "Hard-Ening-7Kq2"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SHOWN = "Something went wrong drawing this part of the page"


# ---- the rules on their own


def test_the_cap_across_clients_holds_new_addresses_but_not_known_ones():
    clock = FakeClock()
    limiter = LoginLimiter(global_max_failures=10, global_window_s=600, clock=clock)
    limiter.succeeded("198.51.100.7")  # a user who logged in before
    for i in range(10):  # ten addresses, one guess each: no client is locked itself
        assert limiter.failed(f"203.0.113.{i}") == 0
    fresh = limiter.hold("203.0.113.200")
    assert fresh is not None and fresh.scope == "everyone" and fresh.seconds == 600
    assert limiter.hold("198.51.100.7") is None  # the known user is not held
    clock.now += 300
    assert limiter.wait_s("203.0.113.201") == pytest.approx(300)
    clock.now += 300.1  # the oldest failures leave the window
    assert limiter.hold("203.0.113.201") is None
    # A known client that fails is still limited as a client.
    for _ in range(5):
        limiter.failed("198.51.100.7")
    own = limiter.hold("198.51.100.7")
    assert own is not None and own.scope == "client" and own.seconds == 30


def test_a_client_is_its_address_unless_a_forwarded_header_comes_unvouched():
    trusted = {clients.FORWARDED_ALLOW_IPS_ENV: ""}
    assert clients.client_key(None, [], {}) == clients.LOCAL_CLIENT
    assert clients.client_key("203.0.113.9", ["User-Agent"], {}) == "203.0.113.9"
    # A forwarded header with no trusted proxies configured (uvicorn's default
    # would have believed it from 127.0.0.1): one bucket for all of them.
    for header in ("X-Forwarded-For", "x-forwarded-for", "Forwarded"):
        assert clients.client_key("9.9.9.9", [header], {}) == clients.UNTRUSTED_FORWARD
    assert clients.client_key("9.9.9.9", ["X-Forwarded-For"], trusted) == "9.9.9.9"
    # One IPv6 host owns a /64: it cannot hop to a fresh bucket.
    assert clients.address_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert clients.address_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert clients.address_key("::ffff:203.0.113.9") == "203.0.113.9"


def test_trusted_proxies_are_addresses_or_networks_never_everyone():
    assert clients.parse_trusted_proxies("") == ""
    assert (
        clients.parse_trusted_proxies(" 127.0.0.1 , 10.0.0.0/8,::1") == "127.0.0.1,10.0.0.0/8,::1"
    )
    assert clients.parse_trusted_proxies("10.1.2.3/8") == "10.0.0.0/8"
    for bad in ("*", "localhost", "10.0.0.0/33"):
        with pytest.raises(ValueError):
            clients.parse_trusted_proxies(bad)


def test_the_cli_refuses_bad_trusted_proxies_before_starting_anything():
    done = subprocess.run(
        [sys.executable, "-m", "depthwatch.cli", "dashboard", "--trusted-proxies", "*"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "would let any client name its own address" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "text",
    ["-9999999w", "-99999999999999w", "-1" + "0" * 400 + "w", "0001-01-01", "1969-12-31T23:59Z"],
)
def test_absurd_times_are_told_never_raised_otherwise(text):
    with pytest.raises(TimeFormatError):
        parse_time_us(text, now=1_800_000_000 * SECOND_US)


def test_every_time_the_page_can_hold_reads_back_through_the_cli():
    for ts in (0, 1, 1_767_225_600 * SECOND_US + 5, MAX_US):
        assert parse_time_us(iso(ts)) == ts
    assert iso(0) == "1970-01-01T00:00:00Z" and iso(MAX_US).startswith("9999-12-31T23:59:59.")


def test_the_store_hands_a_file_out_once_and_forgets_it(tmp_path):
    clock = FakeClock()
    store = downloads.FileStore(tmp_path, ttl_s=600, clock=clock)

    def write(out) -> int:
        out.write(b"a,b\n1,2\n")
        return 1

    ready = store.build("x.csv", "text/csv", write, cap=100)
    assert ready.path.read_bytes() == b"a,b\n1,2\n" and (ready.rows, ready.size) == (1, 8)
    assert store.take(ready.token) == ready and store.take(ready.token) is None
    late = store.build("y.csv", "text/csv", write, cap=100)
    clock.now += 600
    assert store.take(late.token) is None and not late.path.exists()  # expired, deleted

    def fail(out) -> int:
        out.write(b"partial")
        raise RuntimeError("database gone")

    with pytest.raises(RuntimeError):
        store.build("z.csv", "text/csv", fail, cap=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ready.token]  # taken, not yet sent


def test_the_store_makes_two_files_at_once_and_tells_the_third_it_is_busy(tmp_path):
    store = downloads.FileStore(tmp_path)
    entered, release = threading.Barrier(3), threading.Event()

    def slow(out) -> int:
        entered.wait(10)
        release.wait(10)
        return 0

    makers = [
        threading.Thread(target=store.build, args=(f"{i}.csv", "text/csv", slow, 10))
        for i in range(2)
    ]
    for maker in makers:
        maker.start()
    entered.wait(10)
    with pytest.raises(downloads.Busy):
        store.build("third.csv", "text/csv", lambda out: 0, 10)
    release.set()
    for maker in makers:
        maker.join(10)
    assert store.waiting() == 2
    store.build("now.csv", "text/csv", lambda out: 0, 10)  # the slots were given back


def test_folders_left_by_a_killed_dashboard_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(downloads.tempfile, "gettempdir", lambda: str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f"{downloads.DIR_PREFIX}{dead.pid}-abc"
    left.mkdir()
    (left / "token").write_bytes(b"x" * 100)
    mine = tmp_path / f"{downloads.DIR_PREFIX}{os.getppid()}-def"  # a live process
    mine.mkdir()
    store = downloads.FileStore()
    try:
        assert store.directory.parent == tmp_path
        assert not left.exists() and mine.exists()
    finally:
        store.close()
    assert not any(
        p.name.startswith(f"{downloads.DIR_PREFIX}{os.getpid()}-") for p in tmp_path.iterdir()
    )


def test_server_log_lines_carry_no_session_id_nor_traceback_and_repeats_are_held():
    guard = ServerLogGuard(burst=3, interval_s=60)
    logger = logging.getLogger("streamlit.test_guard")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    logger.addFilter(guard)
    logger.propagate = False
    try:
        session = "c7b5337d-7387-42a8-9139-44a8c4c768a7"
        logger.warning("Session with id %s is already connected!", session)
        for _ in range(100):
            try:
                raise KeyError("crafted")
            except KeyError:
                logger.exception("Uncaught app execution")
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(guard)
    lines = out.getvalue().splitlines()
    assert lines[0] == "Session with id <session> is already connected!"
    assert lines[1:] == ["Uncaught app execution (KeyError: 'crafted')"] * 3  # then held
    assert session not in out.getvalue() and "Traceback" not in out.getvalue()


# ---- a real dashboard, raw WebSocket clients


@pytest.fixture(scope="module")
def small_recording(server_url: str) -> Iterator[str]:
    """A few seconds of BTCUSDT, recorded by the real collector."""
    with new_database(server_url) as url:
        sim = SimulatorThread(
            SimConfig(symbols=("BTCUSDT",), rate=200, deltas=400, seed=20)
        ).start()
        try:
            collect_until_caught_up(sim, sim_collector_config(sim, url, ("BTCUSDT",)))
        finally:
            sim.stop()
        yield url


@dataclass
class Dashboard:
    child: Child
    base: str

    @property
    def log(self) -> str:
        return self.child.output()

    def log_lines(self) -> int:
        return len(self.log.splitlines())

    def streamlit_pid(self) -> int:
        """The Streamlit server under `depthwatch dashboard` (its child)."""
        children = Path(f"/proc/{self.child.proc.pid}/task/{self.child.proc.pid}/children")
        pids = [int(p) for p in children.read_text().split()]
        assert len(pids) == 1, pids
        return pids[0]


class Dashboards:
    """Starts `depthwatch dashboard` (password SECRET) with `args` and `env`;
    `stop` stops every one it started."""

    def __init__(self, name: str) -> None:
        self.children = Children(ARTIFACTS, lambda _, n: f"hardening-{name}-{n}.log")

    def __call__(
        self, database_url: str, *args: str, env: dict[str, str] | None = None
    ) -> Dashboard:
        port = free_port()
        child = self.children(
            "dashboard",
            *("dashboard", "--port", str(port), "--address", "127.0.0.1"),
            *("--database-url", database_url, *args),
            env={"DASHBOARD_PASSWORD": SECRET} | (env or {}),
        )
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: healthy(base), "dashboard health", START_TIMEOUT_S, child)
        return Dashboard(child, base)

    def stop(self) -> None:
        self.children.stop()


@pytest.fixture
def dashboard() -> Iterator[Dashboards]:
    """Dashboards of one test's own (a fresh limiter, its own settings)."""
    started = Dashboards("dashboard")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def shared_dashboard(small_recording: str) -> Iterator[Dashboard]:
    """One dashboard, default settings, for the tests that lock no one out."""
    started = Dashboards("shared")
    try:
        yield started(small_recording)
    finally:
        started.stop()


def attempt(base: str, password: str, **client: object) -> Run:
    with StreamlitClient(base, **client) as c:  # type: ignore[arg-type]
        return log_in(c, password)


def logged_in(run: Run) -> bool:
    return "Recorded streams" in run.text


def test_forged_forwarded_for_values_from_localhost_share_one_bucket(small_recording, dashboard):
    """No trusted proxy (the default): a header naming a new address each time
    buys no new guesses; the right password is refused during the lock-out."""
    dash = dashboard(small_recording)
    for i in range(5):
        run = attempt(dash.base, f"guess {i}", headers={"X-Forwarded-For": f"203.0.113.{i}"})
        assert not logged_in(run)
    assert "Too many failed attempts: try again in 30 s." in run.text
    forged = {"X-Forwarded-For": "198.51.100.77", "X-Real-IP": "198.51.100.78"}
    run = attempt(dash.base, SECRET, headers=forged)
    assert not logged_in(run) and "Too many failed attempts" in run.text


class ForwardingProxy:
    """A reverse proxy on 127.0.0.1, as nginx would be: it appends the address
    each connection comes from to X-Forwarded-For (keeping what the client
    sent), then relays the connection (a WebSocket upgrade included) as is."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None

    def __enter__(self) -> ForwardingProxy:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port), self.loop
        ).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            assert self.server is not None
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            found = [
                i for i, line in enumerate(lines) if line.lower().startswith("x-forwarded-for:")
            ]
            if found:
                lines[found[0]] += f", {peer}"
            else:
                lines.insert(1, f"X-Forwarded-For: {peer}")
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            up_writer.write("\r\n".join(lines).encode("latin-1"))
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def test_behind_a_trusted_proxy_each_client_has_its_own_bucket(small_recording, dashboard):
    """Two machines (127.0.0.2 and 127.0.0.3) reach the dashboard through a
    proxy it trusts: the one that guesses (forging headers too) is locked out,
    the other logs in."""
    dash = dashboard(small_recording, "--trusted-proxies", "127.0.0.1")
    port = int(dash.base.rsplit(":", 1)[1])
    with ForwardingProxy(port) as proxy:
        base = f"http://127.0.0.1:{proxy.port}"
        for i in range(5):
            forged = {"X-Forwarded-For": f"203.0.113.{i}"}  # the proxy appends the truth
            run = attempt(base, f"guess {i}", source="127.0.0.2", headers=forged)
            assert not logged_in(run)
        assert "Too many failed attempts: try again in 30 s." in run.text
        locked = attempt(base, SECRET, source="127.0.0.2")
        assert not logged_in(locked) and "Too many failed attempts" in locked.text
        other = attempt(base, SECRET, source="127.0.0.3")
        assert logged_in(other), other.text
    # Straight to the dashboard from 127.0.0.4 (no proxy): its own bucket too.
    assert logged_in(attempt(dash.base, SECRET, source="127.0.0.4"))


def history_query(start_us: int, end_us: int, **extra: str) -> str:
    params = {"symbols": "BTCUSDT", "start": iso(start_us), "end": iso(end_us)} | extra
    return urlencode(params)


def test_crafted_states_and_absurd_ranges_get_a_message_and_few_log_lines(shared_dashboard):
    dash = shared_dashboard
    before = dash.log_lines()
    started = time.monotonic()
    messages = 0
    with StreamlitClient(dash.base) as c:
        for i in range(50):  # before login: the login flag as a widget state
            run = c.rerun(widgets=[flag("depthwatch_logged_in", True), flag(f"x{i}", True)])
            messages += 1
            assert not logged_in(run) and not run.exceptions
            assert SHOWN in run.text and "Traceback" not in run.text and ".py" not in run.text
    with StreamlitClient(dash.base) as c:
        assert logged_in(log_in(c, SECRET))
        for i in range(50):  # after login: ranges no clock has
            query = urlencode({"symbols": "BTCUSDT", "start": f"-{9999999 + i}w", "end": "now"})
            run = c.rerun(page="history", query=query)
            messages += 1
            assert not run.exceptions and "Traceback" not in run.text
    for text in ("-99999999999999w", "0001-01-01", "1e999"):
        with StreamlitClient(dash.base) as c:  # fresh sessions: the URL seeds the page
            log_in(c, SECRET)
            run = c.rerun(page="history", query=urlencode({"start": text, "end": "now"}))
            assert not run.exceptions and "Traceback" not in run.text
            assert "names nothing this page can export" in run.text  # told, defaults shown
    took = time.monotonic() - started
    time.sleep(1)  # the last lines reach the log
    grown = dash.log_lines() - before
    print(f"{messages} crafted messages in {took:.1f} s: {grown} log lines")
    assert grown <= 8, dash.log.splitlines()[before:]
    assert "Traceback" not in dash.log


def test_a_session_id_gives_another_client_nothing_and_is_never_logged(shared_dashboard):
    dash = shared_dashboard
    owner = StreamlitClient(dash.base, source="127.0.0.2", headers={"User-Agent": "Owner/1"})
    try:
        assert logged_in(log_in(owner, SECRET))
        stolen = owner.session_id
        assert stolen and UUID.fullmatch(stolen)
        # Another machine, and the same machine with another browser, replay it.
        for client in (
            {"source": "127.0.0.3"},
            {"source": "127.0.0.2", "headers": {"User-Agent": "X/2"}},
        ):
            with StreamlitClient(dash.base, session_id=stolen, **client) as thief:  # type: ignore[arg-type]
                run = thief.rerun()
                assert thief.session_id in (None, stolen)
                assert not logged_in(run) and "Password" in [w.label for w in run.widgets]
        time.sleep(1)
    finally:
        owner.close()
    assert stolen not in dash.log
    assert "<session>" in dash.log  # Streamlit did log the reconnect, without the id


def test_after_logout_a_replayed_fragment_rerun_draws_no_data(shared_dashboard):
    """The Live page's one-second fragment, rerun by hand after Log out (its id
    taken from the logged-in page): the login form, no book."""
    dash = shared_dashboard
    query = urlencode({"symbol": "BTCUSDT", "window": "60"})
    with StreamlitClient(dash.base) as c:
        live = log_in(c, SECRET, page="live", query=query)
        assert "Best bid" in live.text and live.fragment_ids, live.text
        logout = live.widget("Log out", "button")
        out = c.rerun(page="live", query=query, widgets=[trigger(logout.id)])
        assert "Best bid" not in out.text and "Password" in [w.label for w in out.widgets]
        for fragment in live.fragment_ids:
            c.rerun(page="live", query=query, fragment_id=fragment, wait=False)
            replayed = c.collect(timeout_s=5)  # (a fragment it no longer has: no end)
            assert "Best bid" not in replayed.text and "BTCUSDT" not in replayed.text


# ---- twenty downloads at once


MB = 2**20
DOWNLOADS = 20
PEAK_RSS_LIMIT = 400 * MB
SETTLED_GROWTH_LIMIT = 50 * MB
SETTLE_S = 60


def recorded_seconds(engine: sa.Engine, symbol: str, start_us: int, end_us: int) -> int:
    """Seconds in [start, end) for which `symbol`'s book was recorded."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                """SELECT count(*) FROM top_seconds t
                   JOIN streams s ON s.id = t.stream_id
                   JOIN instruments i ON i.id = s.instrument_id
                   WHERE i.symbol = :symbol AND t.ts_us >= :start AND t.ts_us < :end"""
            ),
            {"symbol": symbol, "start": start_us, "end": end_us},
        ).scalar_one()


@pytest.mark.timeout(600)
def test_twenty_downloads_at_once_keep_memory_flat_while_the_collector_records(
    server_url, dashboard
):
    """Twenty sessions download the largest file the page allows (its limits
    set to this file's estimate) at the same time: peak RSS of the dashboard
    under 400 MB, back within 50 MB of where it started a minute later, every
    file whole, and a collector recording another stream misses no second."""
    with new_database(server_url) as url:
        # A large file: 35,000 book messages of BTCUSDT (~230,000 L2 rows, ~16 MB;
        # twenty held in memory would pass 500 MB).
        sim = SimulatorThread(
            SimConfig(symbols=("BTCUSDT",), rate=0, deltas=35_000, seed=21, trades_rate=0)
        ).start()
        try:
            collect_until_caught_up(sim, sim_collector_config(sim, url, ("BTCUSDT",)), 300)
        finally:
            sim.stop()
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            stream = list_streams(conn)[0]
            first, last = recorded_span(conn, stream)
        end = last + SECOND_US
        requests = export_requests("linear", ("BTCUSDT",), None, "incremental_book_L2", first, end)
        estimate = plan(engine, requests, "csv")
        body = io.BytesIO()
        rows = files.write_export(engine, requests, "csv", body, progress_to=None)
        size, digest = body.tell(), hashlib.sha256(body.getvalue()).hexdigest()
        del body
        assert rows > 200_000 and size > 14 * MB, (rows, size)
        limits = {
            MAX_ROWS_ENV: str(estimate.rows.rows),
            MAX_MB_ENV: f"{estimate.bytes / MB + 0.01:.2f}",
        }
        query = history_query(first, end, kind="incremental_book_L2", format="csv")

        live = SimulatorThread(SimConfig(symbols=("ETHUSDT",), rate=50, seed=22)).start()
        collector = spawn(
            "collector",
            [
                *("collect", "--ws-url", live.url("linear"), "--symbols", "ETHUSDT"),
                *("--depth", "50", "--database-url", url),
            ],
            ARTIFACTS / "hardening-collector.log",
        )
        try:
            dash = dashboard(url, env=limits)
            with StreamlitClient(dash.base) as c:  # imports, estimate cached: the start
                warm = log_in(c, SECRET, page="history", query=query)
                assert "Make bybit_incremental_book_L2_" in str([w.label for w in warm.widgets])
            wait_until(
                lambda: recorded_seconds(engine, "ETHUSDT", 0, 2**62) >= 3,
                "the collector recording",
                START_TIMEOUT_S,
                collector,
            )
            time.sleep(2)
            watch = RssWatch(dash.streamlit_pid())
            start_rss = watch.now()
            began_us = time.time_ns() // 1000
            deadline = time.monotonic() + 300
            results: list[tuple[str, int]] = []
            failures: list[BaseException] = []

            def one() -> None:
                try:
                    results.append(download_history_file(dash.base, SECRET, query, deadline))
                except BaseException as exc:  # reported below
                    failures.append(exc)

            with watch:
                threads = [threading.Thread(target=one) for _ in range(DOWNLOADS)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(360)
            ended_us = time.time_ns() // 1000
            assert not failures, failures[0]
            digests = sorted({r[0] for r in results})
            busy = sum(r[1] for r in results)
            took_s = (ended_us - began_us) / 1e6
            print(
                f"{DOWNLOADS} downloads of {size / MB:.1f} MB in {took_s:.1f} s ({busy} busy "
                f"answers): RSS {start_rss / MB:.0f} MB at the start, peak {watch.peak / MB:.0f} MB"
            )
            assert len(results) == DOWNLOADS and digests == [digest]  # each file whole
            assert busy > 0  # at most two at once: the others were told to wait
            assert watch.peak < PEAK_RSS_LIMIT
            # Back within the limit within SETTLE_S (polled: it usually is at once).
            settle_by = time.monotonic() + SETTLE_S
            while (settled := watch.now()) > start_rss + SETTLED_GROWTH_LIMIT:
                assert time.monotonic() < settle_by, f"{settled / MB:.0f} MB after {SETTLE_S} s"
                time.sleep(1)
            waited = SETTLE_S - (settle_by - time.monotonic())
            print(f"{waited:.0f} s later: {settled / MB:.0f} MB")
            # Every second of the downloads in which the simulator sent ETHUSDT
            # messages is recorded. (Not every second: on a loaded machine the
            # simulator's thread, beside twenty downloading ones, can pause.)
            whole = range(-(-began_us // SECOND_US) + 1, ended_us // SECOND_US - 1)
            sent = {
                s.ts_ms // 1000
                for s in live.truth("orderbook.50.ETHUSDT")
                if not s.dropped and whole.start <= s.ts_ms // 1000 < whole.stop
            }
            assert len(sent) > len(whole) // 2, (len(sent), len(whole))
            # (A second's row is written once the next one begins, a flush later.)
            written_by = time.monotonic() + 30
            while (
                got := recorded_seconds(
                    engine, "ETHUSDT", whole.start * SECOND_US, whole.stop * SECOND_US
                )
            ) < len(sent) and time.monotonic() < written_by:
                time.sleep(0.5)
            assert got == len(sent), (got, len(sent), len(whole))
            assert collector.proc.poll() is None
            # Every file sent and deleted: a file goes once its answer is sent
            # (a background task after the last byte), so a client can finish first.
            deleted_by = time.monotonic() + 10
            while (left := list(downloads_dir(dash).iterdir())) and time.monotonic() < deleted_by:
                time.sleep(0.2)
            assert not left
        finally:
            collector.stop()
            live.stop()
            engine.dispose()


def downloads_dir(dash: Dashboard) -> Path:
    """The dashboard's private folder of made files."""
    pid = dash.streamlit_pid()
    (found,) = Path(downloads.tempfile.gettempdir()).glob(f"{downloads.DIR_PREFIX}{pid}-*")
    return found
