"""Security: the dashboard's password gate and its rate limit, the read-only
database role, and no secret in any log, page or error message."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy as sa
import streamlit as st
from streamlit.testing.v1 import AppTest

from depthwatch.app import auth
from depthwatch.app.auth import password_matches
from depthwatch.app.clients import LOCAL_CLIENT
from depthwatch.app.limiter import LoginLimiter
from depthwatch.cli import ROLE_PASSWORD_ENV
from depthwatch.records import Trade
from depthwatch.sim import SimConfig, SimulatorThread
from depthwatch.storage import schema
from depthwatch.storage.db import make_engine
from depthwatch.storage.roles import RoleError, validate_role_name
from depthwatch.storage.write import BatchWriter, WriterConfig

from .conftest import FakeClock, cli_env, free_port, new_database
from .e2e import collect_until_caught_up
from .test_e2e import config_for

ROOT = Path(__file__).resolve().parents[1]
ENTRY = str(ROOT / "streamlit" / "dashboard.py")
DASHBOARD_SECRET = "Gate-Qv7Zr9wXk2"  # distinctive: greppable in any output
DOWN_URL = "postgresql://watcher:DbPw-Hn4Lm8Tq3@127.0.0.1:9/nowhere"
DB_SECRET = "DbPw-Hn4Lm8Tq3"


# ---- the limiter (pure logic)


def test_five_failures_in_a_minute_lock_a_client_out_for_longer_each_time():
    clock = FakeClock()
    limiter = LoginLimiter(clock=clock)
    assert [limiter.failed("a") for _ in range(4)] == [0, 0, 0, 0]
    assert limiter.wait_s("a") == 0
    assert limiter.failed("a") == 30  # the fifth within the minute
    assert limiter.wait_s("a") == 30 and limiter.wait_s("b") == 0  # per client
    clock.now += 30
    assert limiter.wait_s("a") == 0
    assert [limiter.failed("a") for _ in range(5)][-1] == 60  # growing
    clock.now += 60
    assert [limiter.failed("a") for _ in range(5)][-1] == 120
    for _ in range(10):  # capped
        clock.now += 1_000
        lockout = [limiter.failed("a") for _ in range(5)][-1]
    assert lockout == 900


def test_failures_spread_over_more_than_a_minute_never_lock_out():
    clock = FakeClock()
    limiter = LoginLimiter(clock=clock)
    for _ in range(20):
        assert limiter.failed("a") == 0
        clock.now += 15.1  # four in any minute
    assert limiter.wait_s("a") == 0


def test_a_success_or_a_long_quiet_starts_a_client_afresh():
    clock = FakeClock()
    limiter = LoginLimiter(clock=clock)
    for _ in range(5):
        limiter.failed("a")
    clock.now += 30
    limiter.succeeded("a")
    assert [limiter.failed("a") for _ in range(5)][-1] == 30  # not 60
    clock.now += 30 + 901  # quiet for longer than the longest lock-out
    assert [limiter.failed("a") for _ in range(5)][-1] == 30


def test_passwords_compare_by_digest():
    assert password_matches("correct horse", "correct horse")
    assert not password_matches("correct hors", "correct horse")
    assert not password_matches("", "x")


# ---- the gate in the app (Streamlit's AppTest, the real entry script)


@pytest.fixture
def gated(monkeypatch) -> Iterator[FakeClock]:
    """A dashboard with a password whose pages would hit a dead database; a
    fresh limiter on a fake clock (it is module-level, shared by sessions)."""
    clock = FakeClock()
    monkeypatch.setenv("DASHBOARD_PASSWORD", DASHBOARD_SECRET)
    monkeypatch.setenv("DATABASE_URL", DOWN_URL)
    monkeypatch.delenv("DASHBOARD_DATABASE_URL", raising=False)
    monkeypatch.setattr(auth, "LIMITER", LoginLimiter(clock=clock))
    # AppTest gives every session the same id: logins must not carry over.
    monkeypatch.setattr(auth, "_logins", {})
    st.cache_resource.clear()
    yield clock
    st.cache_resource.clear()


def app_texts(at: AppTest) -> str:
    """Every text the page shows (and the values of its widgets)."""
    parts: list[object] = []
    for kind in ("title", "markdown", "caption", "error", "info", "warning", "success"):
        parts += [element.value for element in at.get(kind)]
    parts += [m.label for m in at.metric] + [m.value for m in at.metric]
    parts += [t.label for t in at.text_input] + [b.label for b in at.button]
    parts += [str(d.value) for d in at.dataframe]
    return "\n".join(str(p) for p in parts)


def log_in(at: AppTest, password: str) -> AppTest:
    at.text_input(key=auth.PASSWORD_WIDGET_KEY).input(password)
    return at.button[0].click().run(timeout=30)


def test_nothing_but_the_login_form_before_login(gated):
    at = AppTest.from_file(ENTRY).run(timeout=30)
    assert not at.exception
    assert [t.value for t in at.title] == ["depthwatch"]
    assert len(at.text_input) == 1 and at.text_input[0].label == "Password"
    assert [b.label for b in at.button] == ["Log in"]
    # No page ran: no data read (it would show the dead database's banner), no
    # chart, no table, no navigation.
    assert not at.error and not at.dataframe and not at.metric
    assert not at.get("plotly_chart") and not at.sidebar.button
    assert "Database unreachable" not in app_texts(at)


def test_a_wrong_password_is_refused_and_counted(gated):
    at = AppTest.from_file(ENTRY).run(timeout=30)
    log_in(at, "guess")
    assert not at.exception
    assert [e.value for e in at.error] == ["Wrong password."]
    assert "Recorded streams" not in app_texts(at)
    # The app counted it: four more failures make five, a lock-out.
    assert [auth.LIMITER.failed(LOCAL_CLIENT) for _ in range(4)] == [0, 0, 0, 30]


def test_repeated_failures_lock_out_every_session_even_with_the_right_password(gated):
    first = AppTest.from_file(ENTRY).run(timeout=30)
    for attempt in range(5):
        log_in(first, f"guess {attempt}")
    assert "Too many failed attempts: try again in 30 s." in app_texts(first)
    # A new session (another browser tab) from the same client is locked out
    # too, and the right password is not even checked.
    second = AppTest.from_file(ENTRY).run(timeout=30)
    assert "Too many failed attempts: try again in 30 s." in app_texts(second)
    log_in(second, DASHBOARD_SECRET)
    assert "Too many failed attempts" in app_texts(second)
    assert "Recorded streams" not in app_texts(second)
    gated.now += 30  # the lock-out ends
    log_in(second, DASHBOARD_SECRET)
    assert not at_login(second)


def at_login(at: AppTest) -> bool:
    return any(b.label == "Log in" for b in at.button)


def test_the_right_password_opens_every_page_until_logout(gated):
    at = AppTest.from_file(ENTRY).run(timeout=30)
    log_in(at, DASHBOARD_SECRET)
    assert not at.exception
    assert not at_login(at)
    assert [t.value for t in at.title] == ["Recorded streams"]  # the overview page
    assert "Database unreachable" in app_texts(at)  # the page ran (its database is down)
    at.run(timeout=30)  # a later run of the same session: still logged in
    assert not at_login(at) and at.sidebar.button(key=auth.LOGOUT_KEY).label == "Log out"
    at.sidebar.button(key=auth.LOGOUT_KEY).click().run(timeout=30)
    assert at_login(at)
    assert "Recorded streams" not in app_texts(at)


def test_without_a_password_the_dashboard_is_open(monkeypatch):
    monkeypatch.delenv("DASHBOARD_PASSWORD", raising=False)
    monkeypatch.setenv("DATABASE_URL", DOWN_URL)
    monkeypatch.delenv("DASHBOARD_DATABASE_URL", raising=False)
    st.cache_resource.clear()
    at = AppTest.from_file(ENTRY).run(timeout=30)
    assert not at.exception
    assert not at_login(at) and not at.sidebar.button
    assert [t.value for t in at.title] == ["Recorded streams"]
    st.cache_resource.clear()


# ---- the read-only role


def depthwatch_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "depthwatch.cli", *args],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        timeout=120,
    )


@pytest.fixture
def role_name(database_url: str) -> Iterator[str]:
    """A role name unique to the test (roles are server-wide); the role and
    its grants are dropped afterwards, before the database is."""
    name = f"dw_ro_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    template1_open = public_connects_to_template1(admin)
    yield name
    with admin.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": name})
        if exists.scalar():
            conn.execute(sa.text(f'DROP OWNED BY "{name}"'))
            conn.execute(sa.text(f'DROP ROLE "{name}"'))
    if template1_open and not public_connects_to_template1(admin):
        # The command closed template1 to PUBLIC: open it again for the next test
        # (and for a server given as DATABASE_URL).
        with admin.connect() as conn:
            conn.execute(sa.text("GRANT CONNECT ON DATABASE template1 TO PUBLIC"))
    admin.dispose()


def public_connects_to_template1(admin: sa.Engine) -> bool:
    with admin.connect() as conn:
        query = "SELECT has_database_privilege('public', 'template1', 'CONNECT')"
        return bool(conn.execute(sa.text(query)).scalar())


def create_role(database_url: str, name: str, password: str | None = None) -> tuple[str, str]:
    """Run the command; returns (the printed DASHBOARD_DATABASE_URL, stderr)."""
    env = cli_env()
    if password is not None:
        env[ROLE_PASSWORD_ENV] = password
    result = depthwatch_cli(
        "db", "create-readonly-role", name, "--database-url", database_url, env=env
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("DASHBOARD_DATABASE_URL=postgresql://")
    url = lines[0].split("=", 1)[1]
    password_in_url = sa.make_url(url).password
    assert password_in_url and str(password_in_url) not in result.stderr  # printed once
    return url, result.stderr


def insert_quote(conn: sa.Connection, ts_us: int) -> None:
    conn.execute(
        sa.text(
            """INSERT INTO quotes (instrument_id, depth, ts_us, local_us, u, bid_price,
                                   bid_size, ask_price, ask_size)
               VALUES (1, 50, :ts, :ts, 1, 100.5, 1, 101.0, 2)"""
        ),
        {"ts": ts_us},
    )


def test_the_readonly_role_reads_every_table_and_later_partitions_and_writes_nothing(
    database_url, role_name
):
    url, stderr = create_role(database_url, role_name)
    assert f"read-only role {role_name} created" in stderr
    admin = make_engine(database_url)
    reader = make_engine(url)
    day = 25_000  # 2038-06-13: a partition made after the role was
    try:
        with admin.begin() as conn:
            schema.ensure_partitions(conn, {day})
            insert_quote(conn, day * schema.DAY_US + 5)
        tables = [*schema.PARTITIONED_TABLES, "feed_events", "instruments"]
        tables += ["collector_heartbeats", "streams", "depthwatch_schema"]
        with reader.connect() as conn:
            for table in tables:
                conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()
            assert conn.execute(sa.text("SELECT count(*) FROM quotes")).scalar() == 1
            partition = schema.partition_name("quotes", day)
            direct = conn.execute(sa.text(f"SELECT bid_price::text FROM {partition}")).scalar()
            assert direct == "100.5"  # the new partition directly, too
            # Its sessions start read-only ...
            with pytest.raises(sa.exc.InternalError) as refused:
                insert_quote(conn, day * schema.DAY_US + 6)
            assert isinstance(refused.value.orig, psycopg2.errors.ReadOnlySqlTransaction)
            conn.rollback()
        writes = [
            "INSERT INTO quotes (instrument_id, depth, ts_us, local_us, u) VALUES (1, 50, 1, 1, 2)",
            f"INSERT INTO {schema.partition_name('quotes', day)} (instrument_id, depth, ts_us, "
            f"local_us, u) VALUES (1, 50, {day * schema.DAY_US + 7}, 1, 3)",
            "UPDATE quotes SET bid_price = 0",
            "DELETE FROM book_events",
            "TRUNCATE quotes",
            "UPDATE depthwatch_schema SET version = 0",
            "CREATE TABLE intruder (x int)",
            f"CREATE TABLE public.quotes_d20990101 PARTITION OF quotes FOR VALUES FROM "
            f"({47_482 * schema.DAY_US}) TO ({47_483 * schema.DAY_US})",
        ]
        for statement in writes:
            # ... and even with that switched off, it has no privilege to write.
            with reader.connect() as conn:
                conn.execute(sa.text("SET default_transaction_read_only = off"))
                conn.commit()  # the next transaction starts read-write
                with pytest.raises(sa.exc.ProgrammingError) as refused:
                    conn.execute(sa.text(statement))
                assert isinstance(refused.value.orig, psycopg2.errors.InsufficientPrivilege), (
                    statement
                )
        with admin.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM quotes")).scalar() == 1
            assert conn.execute(sa.text("SELECT to_regclass('intruder')")).scalar() is None
    finally:
        reader.dispose()
        admin.dispose()


def assert_no_temporary_objects(url: str) -> None:
    """Connected as the role (its read-only default switched off, which it may
    do): temporary tables and functions are refused."""
    reader = make_engine(url)
    try:
        for statement in [
            "CREATE TEMP TABLE scratch (x int)",
            "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        ]:
            with reader.connect() as conn:
                conn.execute(sa.text("SET default_transaction_read_only = off"))
                conn.commit()
                with pytest.raises(sa.exc.ProgrammingError) as refused:
                    conn.execute(sa.text(statement))
                assert isinstance(refused.value.orig, psycopg2.errors.InsufficientPrivilege)
                assert "permission denied" in str(refused.value.orig), statement
    finally:
        reader.dispose()


def assert_template1_refused(url: str) -> None:
    with pytest.raises(psycopg2.OperationalError) as refused_db:
        psycopg2.connect(sa.make_url(url).set(database="template1").render_as_string(False))
    assert "permission denied for database" in str(refused_db.value)


def create_temp_table(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("CREATE TEMP TABLE stage_quotes (LIKE quotes INCLUDING DEFAULTS)"))
    finally:
        engine.dispose()


def test_the_readonly_role_creates_no_temporary_objects_and_stays_out_of_template1(
    database_url, server_url, role_name
):
    """TEMPORARY is PUBLIC's on every database: taken from PUBLIC, given back
    to the admin, the tables' owner and a writer that owns nothing, and the
    roles that lose it are named. template1 is closed to PUBLIC."""
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    writer_role, bystander = f"{role_name}_w", f"{role_name}_b"
    schema.upgrade(admin)
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE \"{writer_role}\" LOGIN PASSWORD 'Writer-pw_1'"))
        conn.execute(
            sa.text(f'GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO "{writer_role}"')
        )
        conn.execute(sa.text(f'CREATE ROLE "{bystander}" LOGIN'))
    writer_url = sa.make_url(database_url).set(username=writer_role, password="Writer-pw_1")
    try:
        url, stderr = create_role(database_url, role_name)
        notes = [line for line in stderr.splitlines() if "note: " in line]
        lost = [line for line in notes if "these roles lose it" in line]
        assert len(lost) == 1 and bystander in lost[0] and writer_role not in lost[0], notes
        admin_name = sa.make_url(database_url).username
        assert admin_name not in lost[0].split(": ")[-1].split(", ")  # the admin keeps it
        others = [line for line in notes if "can also connect to database(s)" in line]
        assert len(others) == 1 and sa.make_url(server_url).database in others[0], notes
        assert "could not revoke" not in stderr  # a superuser may revoke both
        assert "no connection to template1" in stderr
        assert_no_temporary_objects(url)
        assert_template1_refused(url)
        # Those who had it keep it: the admin, and the writer that owns no table.
        create_temp_table(database_url)
        create_temp_table(writer_url.render_as_string(hide_password=False))
        # The collector's staging path: a flush that meets what is stored already.
        engine = make_engine(database_url)
        writer = BatchWriter(engine, WriterConfig(flush_interval_s=0.05))
        writer.start()
        now_us = int(time.time() * 1e6)
        trade = Trade("linear", "BTCUSDT", "t-1", "buy", "100.55", "0.001", now_us, 1, 9)
        try:
            for _ in range(2):
                writer.add_trade(trade)
                assert writer.flush_now()
        finally:
            assert writer.stop()
            engine.dispose()
        assert writer.stats.rows_duplicate["trades"] == 1
        # Twice is fine: nothing more to take, nobody else loses anything.
        again, stderr = create_role(database_url, role_name)
        assert "updated (password reset)" in stderr and "these roles lose it" not in stderr
        assert_no_temporary_objects(again)
        assert_template1_refused(again)
        create_temp_table(writer_url.render_as_string(hide_password=False))
    finally:
        with admin.connect() as conn:
            for extra in (writer_role, bystander):
                conn.execute(sa.text(f'DROP OWNED BY "{extra}"'))
                conn.execute(sa.text(f'DROP ROLE "{extra}"'))
        admin.dispose()


def test_an_admin_that_is_not_superuser_gets_notes_not_failures(server_url, role_name):
    """As on Render: the admin owns its database but not template1. TEMPORARY
    is taken all the same; template1 stays open to PUBLIC, said in one line."""
    superuser = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    admin_role = f"{role_name}_a"
    template1_open = public_connects_to_template1(superuser)
    with superuser.connect() as conn:
        conn.execute(sa.text("GRANT CONNECT ON DATABASE template1 TO PUBLIC"))
        conn.execute(sa.text(f"CREATE ROLE \"{admin_role}\" LOGIN CREATEROLE PASSWORD 'Adm-pw_7'"))
    try:
        with new_database(server_url) as database_url:
            database = sa.make_url(database_url).database
            with superuser.connect() as conn:
                conn.execute(sa.text(f'ALTER DATABASE "{database}" OWNER TO "{admin_role}"'))
            admin_url = sa.make_url(database_url).set(username=admin_role, password="Adm-pw_7")
            admin_url_text = admin_url.render_as_string(hide_password=False)
            url, stderr = create_role(admin_url_text, role_name)
            notes = [line for line in stderr.splitlines() if "note: " in line]
            template1 = [line for line in notes if "template1" in line]
            assert len(template1) == 1, notes
            assert (
                "note: could not revoke CONNECT on template1 from PUBLIC (needs its owner"
                in template1[0]
            )
            assert template1[0].endswith(
                "the role can connect there but not create temporary tables"
            )
            assert "could not revoke TEMPORARY" not in stderr
            assert "no temporary tables or functions" in stderr
            create_temp_table(admin_url_text)
            assert_no_temporary_objects(url)
            template_url = sa.make_url(url).set(database="template1")
            reader = make_engine(template_url.render_as_string(hide_password=False))
            try:
                with reader.connect() as conn:  # it connects, and creates nothing
                    conn.execute(sa.text("SET default_transaction_read_only = off"))
                    conn.commit()
                    for statement in [
                        "CREATE TEMP TABLE scratch (x int)",
                        "CREATE TABLE x (i int)",
                    ]:
                        with pytest.raises(sa.exc.ProgrammingError) as refused:
                            conn.execute(sa.text(statement))
                        assert "permission denied" in str(refused.value.orig), statement
                        conn.rollback()
            finally:
                reader.dispose()
    finally:
        with superuser.connect() as conn:
            conn.execute(sa.text(f'DROP ROLE "{admin_role}"'))
            if not template1_open:
                conn.execute(sa.text("REVOKE CONNECT ON DATABASE template1 FROM PUBLIC"))
        superuser.dispose()


def test_running_it_again_resets_the_password_with_a_scram_verifier(database_url, role_name):
    first, _ = create_role(database_url, role_name)
    second, stderr = create_role(database_url, role_name, password="Chosen-pw_42")
    assert "updated (password reset)" in stderr
    assert sa.make_url(second).password == "Chosen-pw_42" != sa.make_url(first).password
    admin = make_engine(database_url)
    with admin.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT rolpassword FROM pg_authid WHERE rolname = :n"), {"n": role_name}
        ).scalar()
    admin.dispose()
    assert stored.startswith("SCRAM-SHA-256$") and "Chosen-pw_42" not in stored


@pytest.mark.parametrize(
    "name",
    ["x; DROP TABLE book_events;--", 'dash"ro', "1abc", "a" * 64, "pg_reader", "lecteur_é", ""],
)
def test_a_bad_role_name_is_refused_before_touching_the_database(name, database_url):
    result = depthwatch_cli("db", "create-readonly-role", name, "--database-url", DOWN_URL)
    assert result.returncode == 2
    assert "role name" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    with pytest.raises(RoleError):
        validate_role_name(name)


def test_roles_that_could_write_anyway_are_refused(database_url, role_name):
    result = depthwatch_cli(
        "db", "create-readonly-role", "postgres", "--database-url", database_url
    )
    assert result.returncode == 1 and result.stdout == ""
    assert "is the role this command connects as" in result.stderr
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role_name}" LOGIN SUPERUSER'))
    admin.dispose()
    result = depthwatch_cli("db", "create-readonly-role", role_name, "--database-url", database_url)
    assert result.returncode == 1 and result.stdout == ""
    assert "exists and is a superuser" in result.stderr


def test_the_dashboard_reads_through_the_readonly_role(database_url, role_name, monkeypatch):
    """Data recorded by the real collector from the simulator; the dashboard
    given DASHBOARD_DATABASE_URL (the role) and a dead DATABASE_URL, which it
    must not use."""
    sim = SimulatorThread(SimConfig(symbols=("BTCUSDT",), rate=200, deltas=300, seed=4)).start()
    try:
        config = config_for(sim, database_url, symbols=("BTCUSDT",), heartbeat_interval_s=0.5)
        collect_until_caught_up(sim, config)
    finally:
        sim.stop()
    url, _ = create_role(database_url, role_name)
    monkeypatch.setenv("DASHBOARD_DATABASE_URL", url)
    monkeypatch.setenv("DATABASE_URL", DOWN_URL)
    monkeypatch.delenv("DASHBOARD_PASSWORD", raising=False)
    st.cache_resource.clear()
    try:
        overview = page("overview").run(timeout=30)
        assert not overview.exception and not overview.error
        assert overview.dataframe[0].value["symbol"].tolist() == ["BTCUSDT"]
        live = page("live").run(timeout=30)
        assert not live.exception and not live.error
        assert len(live.get("plotly_chart")) == 6
        health = page("health").run(timeout=30)
        assert not health.exception and not health.error
        sizes = [d.value for d in health.dataframe if "table" in d.value.columns]
        assert "book_events" in set(sizes[0]["table"])  # sizes are readable to the role
    finally:
        st.cache_resource.clear()


def page(name: str) -> AppTest:
    return AppTest.from_string(f"from depthwatch.app import {name}\n{name}.render()")


# ---- no secret in any output


LEAK_DB_SECRET = "LeakPw-Ux5Vb2Nc8"  # the database password of the runs below


@pytest.fixture
def secret_database(server_url: str) -> Iterator[str]:
    """A database owned by a role with a distinctive password; its URL carries
    it. (The embedded server trusts local connections, so it is never checked;
    it must still never be printed.)"""
    name = f"dw_leak_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            sa.text(f"CREATE ROLE \"{name}\" LOGIN CREATEROLE PASSWORD '{LEAK_DB_SECRET}'")
        )
    with new_database(server_url) as url:
        with admin.connect() as conn:
            database = sa.make_url(url).database
            conn.execute(sa.text(f'ALTER DATABASE "{database}" OWNER TO "{name}"'))
        yield (
            sa.make_url(url)
            .set(username=name, password=LEAK_DB_SECRET)
            .render_as_string(hide_password=False)
        )
        st.cache_resource.clear()  # the dashboard's pool
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP ROLE "{name}"'))
    admin.dispose()


def assert_no_secret(what: str, *outputs: str) -> None:
    for output in outputs:
        for secret in (LEAK_DB_SECRET, DB_SECRET, DASHBOARD_SECRET):
            assert secret not in output, f"{what} printed a secret:\n{output}"


def secret_env() -> dict[str, str]:
    return cli_env() | {"DASHBOARD_PASSWORD": DASHBOARD_SECRET}


def run_until(command: list[str], env: dict[str, str], done: Callable[[], bool]) -> tuple[str, str]:
    """Start a long-running command, SIGTERM it once `done()`; its output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "depthwatch.cli", *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not done():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "never got there"
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out, err


def test_no_secret_in_any_command_output_or_log(secret_database, server_url):
    """Every command at DEBUG level (the most talkative), with a database URL
    holding a password and DASHBOARD_PASSWORD set: the collector, db upgrade,
    export, create-readonly-role, `up` (the supervisor relays its children),
    and every error path of an unreachable or malformed URL with a password."""
    env = secret_env()
    url = secret_database
    debug = ["--log-level", "DEBUG"]

    result = depthwatch_cli(*debug, "db", "upgrade", "--database-url", url, env=env)
    assert result.returncode == 0, result.stderr
    assert_no_secret("db upgrade", result.stdout, result.stderr)

    engine = make_engine(url)

    def quotes_stored() -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM top_seconds")).scalar() or 0)

    sim = SimulatorThread(SimConfig(symbols=("BTCUSDT",), rate=100, seed=9)).start()
    try:
        collect = ["collect", "--symbols", "BTCUSDT", "--ws-url", sim.sim.url("linear")]
        out, err = run_until([*debug, *collect], env | {"DATABASE_URL": url}, quotes_stored)
    finally:
        sim.stop()
    assert "database schema at version" in err  # it ran, and talked
    assert_no_secret("collect", out, err)

    export = ["export", "--kind", "quotes", "--symbol", "BTCUSDT"]
    export += ["--start", "2020-01-01", "--end", "2100-01-01", "--database-url", url]
    result = depthwatch_cli(*debug, *export, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") > 1  # rows went out
    assert_no_secret("export", result.stdout, result.stderr)

    role = f"dw_ro_{uuid.uuid4().hex[:10]}"
    result = depthwatch_cli(
        *debug, "db", "create-readonly-role", role, "--database-url", url, env=env
    )
    assert result.returncode == 0, result.stderr
    assert_no_secret("create-readonly-role", result.stdout, result.stderr)
    superuser = sa.make_url(server_url).set(database=sa.make_url(url).database)
    with sa.create_engine(superuser).connect() as conn:  # tidy: roles are server-wide
        conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
        conn.execute(sa.text(f'DROP ROLE "{role}"'))
        conn.commit()

    port = free_port()

    def dashboard_up() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return True
        except OSError:
            return False

    up = ["up", "--source", "sim", "--port", str(port), "--database-url", url]
    before = quotes_stored()
    out, err = run_until([*debug, *up], env, lambda: dashboard_up() and quotes_stored() > before)
    engine.dispose()
    assert "collector | " in err and "started dashboard" in err  # all of them talked
    assert_no_secret("up", out, err)

    # Error paths: an unreachable server, and URLs that do not even parse.
    bad_urls = [DOWN_URL, f"postgresql://watcher:{DB_SECRET}@127.0.0.1:notaport/db"]
    bad_urls.append(f"postgres://watcher:{DB_SECRET}@[::1/db")
    for bad in bad_urls:
        for command in (
            ["db", "upgrade"],
            ["collect", "--ws-url", "ws://127.0.0.1:9/v5/public/linear"],
            export[:-2],
            ["db", "create-readonly-role", "dw_never"],
        ):
            result = depthwatch_cli(
                *debug, *command, "--database-url", bad, "--database-wait", "1", env=env
            )
            assert result.returncode != 0, (command, result.stderr)
            assert "Traceback" not in result.stderr, result.stderr
            assert_no_secret(f"{command} with {bad.split('@')[-1]}", result.stdout, result.stderr)


def test_no_secret_on_any_dashboard_page_or_in_its_log(secret_database, monkeypatch, caplog):
    """The login page, a refused password, every page logged in over real
    data, and the banners of a dead and of a malformed database URL: neither
    the database's password nor the dashboard's appears in a page or a log."""
    caplog.set_level(logging.DEBUG)
    sim = SimulatorThread(SimConfig(symbols=("BTCUSDT",), rate=200, deltas=200, seed=8)).start()
    try:
        config = config_for(sim, secret_database, symbols=("BTCUSDT",))
        collect_until_caught_up(sim, config)
    finally:
        sim.stop()
    monkeypatch.setenv("DASHBOARD_PASSWORD", DASHBOARD_SECRET)
    monkeypatch.setattr(auth, "LIMITER", LoginLimiter())
    monkeypatch.setattr(auth, "_logins", {})
    shown: list[str] = []
    bad_urls = [secret_database, DOWN_URL, f"postgresql://watcher:{DB_SECRET}@127.0.0.1:x/db"]
    for url in bad_urls:
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.delenv("DASHBOARD_DATABASE_URL", raising=False)
        st.cache_resource.clear()
        auth._logins.clear()  # AppTest's sessions share one id
        at = AppTest.from_file(ENTRY).run(timeout=30)
        shown.append(app_texts(at))
        log_in(at, "not it")
        shown.append(app_texts(at))
        log_in(at, DASHBOARD_SECRET)
        assert not at.exception and not at_login(at)
        shown.append(app_texts(at))
        for name in ("overview", "live", "health"):
            rendered = page(name).run(timeout=30)
            assert not rendered.exception
            shown.append(app_texts(rendered))
        if url == secret_database:
            assert "BTCUSDT" in shown[-3]  # the overview listed the stream
        else:
            assert "Database unreachable" in shown[-1]
    st.cache_resource.clear()
    assert "does not parse" in shown[-1]  # the malformed URL, explained
    assert_no_secret("the dashboard", *shown, caplog.text)
