"""Rows of a long query through a server-side cursor, a batch at a time, so
an export's memory does not grow with its range."""

from __future__ import annotations

from collections.abc import Iterator

import sqlalchemy as sa

STREAM_BATCH_ROWS = 5_000


def stream_rows(
    conn: sa.Connection, sql: str, params: dict[str, object], batch: int = STREAM_BATCH_ROWS
) -> Iterator[sa.Row]:
    result = conn.execution_options(stream_results=True, yield_per=batch).execute(
        sa.text(sql), params
    )
    yield from result
