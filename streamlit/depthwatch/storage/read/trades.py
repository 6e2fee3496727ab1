"""Recorded trades (`trades`): every trade of a range for exports, the newest
for the live chart, and a cheap count for the History page."""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from depthwatch.archive.log import TRADES
from depthwatch.storage.read.cold import greatest, instrument_cold_log, least
from depthwatch.storage.read.cursor import stream_rows
from depthwatch.storage.read.frames import TRADE_COLUMNS, frame
from depthwatch.storage.read.rows import TradeCount
from depthwatch.storage.read.streams import instrument_streams

if TYPE_CHECKING:
    import pandas as pd


def trades(conn: sa.Connection, iid: int, start_us: int, end_us: int) -> Iterator[Sequence[Any]]:
    """(ts_us, local_us, trade_id, side, price, size) in time order, the
    archive's copy read for cold days (storage/read/cold.py)."""
    hot = stream_rows(
        conn,
        """SELECT ts_us, local_us, trade_id, side, price::text, size::text
           FROM trades
           WHERE instrument_id = :i AND ts_us >= :s AND ts_us < :e
           ORDER BY ts_us, seq, trade_id""",
        {"i": iid, "s": start_us, "e": end_us},
    )
    cold = instrument_cold_log(conn, instrument_streams(conn, iid))
    if not cold.days_in(start_us, end_us):
        return hot
    names = ["ts_us", "local_us", "trade_id", "side", "price", "size"]
    archived = cold.rows(TRADES, start_us, end_us, columns=names)
    # A day is hot or cold, never both: merging by time keeps each day's order.
    return heapq.merge(hot, archived, key=_trade_time)


def _trade_time(row: Sequence[Any]) -> int:
    return int(row[0])


def recent_trades(
    conn: sa.Connection, iid: int, start_us: int, end_us: int, limit: int
) -> pd.DataFrame:
    """TRADE_COLUMNS: the newest `limit` trades of the window, oldest first."""
    rows = conn.execute(
        sa.text(
            """SELECT * FROM (
                   SELECT ts_us / 1000.0 AS t_ms, price::float8, size::float8, side
                   FROM trades
                   WHERE instrument_id = :i AND ts_us >= :s AND ts_us < :e
                   ORDER BY ts_us DESC LIMIT :l) t
               ORDER BY t_ms"""
        ),
        {"i": iid, "s": start_us, "e": end_us, "l": limit},
    ).all()
    return frame(rows, TRADE_COLUMNS)


TRADE_COUNT_CAP = 100_000  # beyond it the count is extrapolated from the trades' pace


def trade_count(
    conn: sa.Connection, iid: int, start_us: int, end_us: int, cap: int = TRADE_COUNT_CAP
) -> TradeCount:
    """The trades of [start, end): counted in the database (up to `cap`,
    then extrapolated), plus cold days' archived counts prorated."""
    hot = _hot_trade_count(conn, iid, start_us, end_us, cap)
    cold = instrument_cold_log(conn, instrument_streams(conn, iid)).volume(start_us, end_us)
    if not cold.trades:
        return hot
    return TradeCount(
        hot.rows + cold.trades,
        False,
        least(hot.first_us, cold.first_us),
        greatest(hot.last_us, cold.last_us),
    )


def _hot_trade_count(
    conn: sa.Connection, iid: int, start_us: int, end_us: int, cap: int
) -> TradeCount:
    params = {"i": iid, "s": start_us, "e": end_us, "cap": cap}
    count, first, capped_last = conn.execute(
        sa.text(
            """SELECT count(*), min(ts_us), max(ts_us) FROM (
                   SELECT ts_us FROM trades
                   WHERE instrument_id = :i AND ts_us >= :s AND ts_us < :e
                   ORDER BY ts_us LIMIT :cap) t"""
        ),
        params,
    ).one()
    if count < cap:
        return TradeCount(int(count), True, first, capped_last)
    last = int(
        conn.execute(
            sa.text(
                """SELECT max(ts_us) FROM trades
                   WHERE instrument_id = :i AND ts_us >= :s AND ts_us < :e"""
            ),
            params,
        ).scalar_one()
    )
    span = max(1, int(capped_last) - int(first))
    rows = max(cap, round(cap * (last - int(first)) / span))
    return TradeCount(rows, rows == cap, int(first), last)
