"""Rows of a long query through a server-side cursor, a batch at a time, so
an export's memory does not grow with its range.

The driver's own named cursor is used, not SQLAlchemy's result: the packed
log is read as tens of thousands of small rows, and SQLAlchemy's row objects
took half the time of reading them (bench/bench_archive.py). Outside a
transaction (AUTOCOMMIT), where PostgreSQL has no named cursors,
SQLAlchemy's streamed result stands in."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg2
import sqlalchemy as sa

STREAM_BATCH_ROWS = 5_000

_names = itertools.count()


def stream_rows(
    conn: sa.Connection, sql: str, params: dict[str, object], batch: int = STREAM_BATCH_ROWS
) -> Iterator[Sequence[Any]]:
    """The rows of `sql` (with :name parameters) as tuples, in order."""
    for rows in stream_batches(conn, sql, params, batch):
        yield from rows


def stream_batches(
    conn: sa.Connection, sql: str, params: dict[str, object], batch: int = STREAM_BATCH_ROWS
) -> Iterator[Sequence[Sequence[Any]]]:
    """The rows of `sql` (with :name parameters), `batch` at a time, in order."""
    statement = sa.text(sql)
    raw = conn.connection.dbapi_connection
    if raw is None or getattr(raw, "autocommit", True):
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(
            statement, params
        )
        yield from result.partitions(batch)
        return
    compiled = statement.compile(dialect=conn.dialect)
    sql_text, values = str(compiled), compiled.construct_params(params)
    cursor = raw.cursor(name=f"depthwatch_rows_{next(_names)}")
    try:
        cursor.execute(sql_text, values)
        while rows := cursor.fetchmany(batch):
            yield rows
    except psycopg2.Error as exc:
        # As SQLAlchemy would raise it (callers catch sa.exc.OperationalError
        # for a database gone), the connection invalidated if it is lost, so
        # closing it does not fail again.
        lost = conn.dialect.is_disconnect(exc, raw, cursor)
        wrapped = sa.exc.DBAPIError.instance(
            sql_text, values, exc, psycopg2.Error, connection_invalidated=lost
        )
        if lost:
            conn.invalidate(wrapped)
        raise wrapped from exc
    finally:
        # Gone already if the transaction ended first (a failed read upstream).
        with contextlib.suppress(psycopg2.Error):
            cursor.close()
