"""bench_dashboard.py's history: the stream a history holds, and the legacy
layout (schema 1-3 tables) generated in SQL, with the trades, collector
heartbeats and feed events every history has (the packed layout: dash_packed.py).

Prices are integer ticks in a helper table bench_mid (one random-walk mid per
second, drawn with NumPy); every table is then filled by one INSERT ... SELECT
per hour. Message i of an hour is at t0 + i / rate; its u is ts_us / interval,
so u keeps increasing across hours and top-ups.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import sqlalchemy as sa

from common import fmt_s
from databases import database_exists, database_url, fresh_database
from depthwatch.sim.market import spec_for
from depthwatch.storage import schema
from depthwatch.storage.db import make_engine, normalise_url

CATEGORY, SYMBOL, DEPTH = "linear", "BTCUSDT", 50
TICK = 0.1  # BTCUSDT's tick; prices are generated in integer ticks
START_TICKS = 600_000  # 60,000.0: where the simulator's BTCUSDT starts
SNAPSHOT_LEVELS = 50
HOUR_S = 3_600


@dataclass(frozen=True)
class BenchStream:
    """The stream a history holds. The legacy history is BTCUSDT (what the
    simulator of the browser phase also sends); the packed one is whatever
    bench/record_paced.py records: its first stream, P00USDT, at the
    simulator's tick for that symbol."""

    symbol: str
    tick: float

    @property
    def key(self) -> str:
        return f"{CATEGORY}:{self.symbol}@{DEPTH}"

    @property
    def places(self) -> int:
        """Decimals of a price: the tick's."""
        return max(0, -int(Decimal(str(self.tick)).as_tuple().exponent))


LEGACY_STREAM = BenchStream(SYMBOL, TICK)
PACKED_STREAM = BenchStream("P00USDT", float(spec_for("P00USDT").tick))


BOOK_EVENTS_SQL = """
INSERT INTO book_events (instrument_id, depth, ts_us, local_us, match_us, u, seq, is_snapshot,
                         bid_prices, bid_sizes, ask_prices, ask_sizes)
SELECT :iid, :depth, g.ts, g.ts + 3000 + (random() * 25000)::int,
       g.ts - 1000 - (random() * 4000)::int, g.ts / :iv, g.ts / :iv * 7, false,
       b.p, b.s, a.p, a.s
FROM (SELECT CAST(:t0 AS bigint) * 1000000 + i * :iv AS ts
      FROM generate_series(CAST(0 AS bigint), (CAST(:t1 AS bigint) - :t0) * 1000000 / :iv - 1) i) g
JOIN bench_mid m ON m.sec = g.ts / 1000000
-- 1-10 changed levels per side (2-20 per message), near the touch, 15 % deletions.
-- The (... * 0) terms tie each lateral to its row, so none is computed once and reused.
CROSS JOIN LATERAL (
    SELECT array_agg(round((m.mid - (k - 1) * 3 - floor(random() * 3))::numeric / 10, 1)) AS p,
           array_agg(CASE WHEN random() < 0.15 THEN 0 * k
                          ELSE round((0.001 - ln(1 - random()) * 0.4)::numeric, 3) END) AS s
    FROM generate_series(1, 1 + floor(random() * 10)::int + (g.ts * 0)::int) k) b
CROSS JOIN LATERAL (
    SELECT array_agg(round((m.mid + 1 + (k - 1) * 3 + floor(random() * 3))::numeric / 10, 1))
               AS p,
           array_agg(CASE WHEN random() < 0.15 THEN 0 * k
                          ELSE round((0.001 - ln(1 - random()) * 0.4)::numeric, 3) END) AS s
    FROM generate_series(1, 1 + floor(random() * 10)::int + (g.ts * 0)::int) k) a
"""

QUOTES_SQL = """
INSERT INTO quotes (instrument_id, depth, ts_us, local_us, u,
                    bid_price, bid_size, ask_price, ask_size)
SELECT :iid, :depth, x.ts, x.ts + 3000 + (random() * 25000)::int, x.ts / :iv,
       round(x.b::numeric / 10, 1), round((0.001 - ln(1 - random()) * 0.4)::numeric, 3),
       round((x.b + 1 + (random() < 0.1)::int)::numeric / 10, 1),
       round((0.001 - ln(1 - random()) * 0.4)::numeric, 3)
FROM (SELECT g.ts, m.mid + floor(random() * 3)::bigint - 1 AS b
      FROM (SELECT CAST(:t0 AS bigint) * 1000000 + i * 2 * :iv AS ts
            FROM generate_series(CAST(0 AS bigint),
                                 (CAST(:t1 AS bigint) - :t0) * 1000000 / (2 * :iv) - 1) i) g
      JOIN bench_mid m ON m.sec = g.ts / 1000000) x
"""

SNAPSHOTS_SQL = """
INSERT INTO depth_snapshots (instrument_id, depth, ts_us, local_us, u,
                             bid_prices, bid_sizes, ask_prices, ask_sizes)
SELECT :iid, :depth, (m.sec + 1) * 1000000,
       (m.sec + 1) * 1000000 - :iv + 3000 + (random() * 15000)::int,
       (m.sec + 1) * 1000000 / :iv - 1, b.p, b.s, a.p, a.s
FROM bench_mid m
CROSS JOIN LATERAL (
    SELECT array_agg(round((m.mid - k)::numeric / 10, 1) ORDER BY k) AS p,
           array_agg(round((0.001 - ln(1 - random()) * 0.4)::numeric, 3) + 0 * k ORDER BY k) AS s
    FROM generate_series(0, :levels - 1 + (m.sec * 0)::int) k) b
CROSS JOIN LATERAL (
    SELECT array_agg(round((m.mid + 1 + k)::numeric / 10, 1) ORDER BY k) AS p,
           array_agg(round((0.001 - ln(1 - random()) * 0.4)::numeric, 3) + 0 * k ORDER BY k) AS s
    FROM generate_series(0, :levels - 1 + (m.sec * 0)::int) k) a
WHERE m.sec >= :t0 AND m.sec < :t1
"""

TRADES_SQL = """
INSERT INTO trades (instrument_id, ts_us, local_us, trade_id, side, price, size, seq)
SELECT :iid, x.ts, x.ts + 3000 + (random() * 25000)::int, 'bench-' || x.j,
       CASE WHEN x.buy THEN 'buy' ELSE 'sell' END,
       round((m.mid + x.buy::int) * CAST(:tick AS numeric), CAST(:places AS int)),
       round((0.001 - ln(1 - random()) * 0.05)::numeric, 3), x.j
FROM (SELECT j, j * 500000 + (random() * 499999)::bigint AS ts, random() < 0.5 AS buy
      FROM generate_series(CAST(:t0 AS bigint) * 2, CAST(:t1 AS bigint) * 2 - 1) j) x
JOIN bench_mid m ON m.sec = x.ts / 1000000
"""

HEARTBEATS_SQL = """
INSERT INTO collector_heartbeats (collector, local_us, host, pid, version, started_us,
    interval_s, simulated, endpoint, retention_days, messages, messages_per_s, pending_rows,
    flush_failures, commit_p50_ms, commit_p99_ms, streams, valid_streams)
SELECT 'bench-history:1', s * 1000000 + 150000, 'bench-history', 1, 'bench',
       CAST(:started AS bigint) * 1000000, 2, false,
       'wss://stream.bybit.com/v5/public/linear', 0, (s - :started) * :rate, :rate,
       (random() * 100)::int, 0, 20 + random() * 20, 60 + random() * 90,
       ARRAY[CAST(:key AS text)], ARRAY[CAST(:key AS text)]
FROM generate_series(CAST(:t0 AS bigint), CAST(:t1 AS bigint) - 1) s
WHERE s % 2 = 0
"""

FEED_EVENTS_SQL = """
INSERT INTO feed_events (local_us, collector, connection, kind, category, symbol, depth, detail)
VALUES (:local_us, 'bench-history:1', 'linear-1', :kind, :category, :symbol, :depth, :detail)
"""


def feed_events_for(
    t0: int, t1: int, history_start: int, symbol: str = SYMBOL
) -> list[dict[str, object]]:
    """A connect at the start; every hour a gap, its resync and the recovering
    snapshot; every 6 hours a disconnect and reconnect."""
    rows: list[tuple[float, str, str | None, int | None, str]] = []
    if t0 == history_start:
        rows += [
            (t0 + 0.05, "connect", None, None, "wss://stream.bybit.com/v5/public/linear"),
            (t0 + 0.2, "subscribed", symbol, DEPTH, f"orderbook.{DEPTH}.{symbol}"),
        ]
    for hour_start in range(t0 - t0 % HOUR_S, t1, HOUR_S):
        at = hour_start + 1_380  # 23 minutes past
        if t0 <= at < t1:
            rows += [
                (at, "gap", symbol, DEPTH, "u jumped from 1001 to 1003"),
                (at + 0.01, "resync", symbol, DEPTH, "unsubscribe + subscribe"),
                (at + 0.9, "recovered", symbol, DEPTH, "snapshot u=1"),
            ]
        at = hour_start + 2_400
        if t0 <= at < t1 and (hour_start // HOUR_S) % 6 == 0:
            rows += [
                (at, "disconnect", None, None, "code 1006"),
                (at + 1.5, "connect", None, None, "wss://stream.bybit.com/v5/public/linear"),
                (at + 1.7, "subscribed", symbol, DEPTH, f"orderbook.{DEPTH}.{symbol}"),
            ]
    return [
        {
            "local_us": int(t * 1e6),
            "kind": kind,
            "category": CATEGORY,
            "symbol": symbol,
            "depth": depth,
            "detail": detail,
        }
        for t, kind, symbol, depth, detail in rows
    ]


@dataclass
class History:
    """What a generated database holds: [start_s, end_s) of exchange time."""

    name: str
    url: str
    hours: float
    start_s: int
    end_s: int
    rows: int
    seconds: float  # spent generating in this run (0 when reused as is)


def register(conn: sa.Connection, stream: BenchStream = LEGACY_STREAM) -> int:
    iid = conn.execute(
        sa.text(
            """INSERT INTO instruments (exchange, category, symbol, tick_size)
               VALUES ('bybit', :c, :s, :t)
               ON CONFLICT (exchange, category, symbol) DO UPDATE SET tick_size = :t
               RETURNING id"""
        ),
        {"c": CATEGORY, "s": stream.symbol, "t": stream.tick},
    ).scalar_one()
    conn.execute(
        sa.text(
            "INSERT INTO streams (instrument_id, depth) VALUES (:i, :d) ON CONFLICT DO NOTHING"
        ),
        {"i": iid, "d": DEPTH},
    )
    return int(iid)


def _load_mids(conn: sa.Connection, start_s: int, end_s: int, anchor: tuple[str, int]) -> None:
    """One mid per second in integer ticks: a random walk (steps of 2 USD a
    second, BTC's usual pace) that ends at `anchor` ("end", ticks) or starts
    there ("start", ticks, a top-up). An "end" walk is drawn backwards from the
    end with a fixed seed, so every history ends with the same last hour of
    prices and the 1 h and 24 h windows hold the same price ranges."""
    where, ticks = anchor
    if where == "end":
        steps = np.random.default_rng(7).normal(0.0, 20.0, end_s - start_s)
        back = np.concatenate([[0.0], np.cumsum(steps[:-1])])  # mid(end-1-i) = ticks - back[i]
        walk = (ticks - back)[::-1]
    else:
        walk = ticks + np.cumsum(np.random.default_rng(start_s).normal(0.0, 20.0, end_s - start_s))
    conn.execute(sa.text("DROP TABLE IF EXISTS bench_mid"))
    conn.execute(
        sa.text("CREATE UNLOGGED TABLE bench_mid (sec bigint PRIMARY KEY, mid bigint NOT NULL)")
    )
    text = "".join(f"{start_s + i}\t{int(m)}\n" for i, m in enumerate(walk))
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    cursor.copy_expert("COPY bench_mid (sec, mid) FROM STDIN", io.StringIO(text))
    conn.execute(sa.text("ANALYZE bench_mid"))


def read_meta(conn: sa.Connection) -> tuple[float, int, int] | None:
    if conn.execute(sa.text("SELECT to_regclass('bench_meta')")).scalar() is None:
        return None
    row = conn.execute(sa.text("SELECT hours, start_s, end_s FROM bench_meta")).first()
    return None if row is None else (float(row[0]), int(row[1]), int(row[2]))


def generate_history(
    server_url: str, name: str, hours: float, rate: float, keep: bool, label: str
) -> History:
    """A database holding the last `hours` of one stream, ending now. With
    `keep`, a database generated earlier is reused: topped up to now and
    trimmed to `hours`, or regenerated when too old."""
    now_s = int(time.time())
    url = database_url(server_url, name)
    meta = None
    if keep and database_exists(server_url, name):
        engine = make_engine(url)
        with engine.connect() as conn:
            meta = read_meta(conn)
        engine.dispose()
        if meta is not None and (meta[0] != hours or now_s - meta[2] > hours * HOUR_S):
            meta = None
    if meta is None:
        fresh_database(server_url, name)
    engine = make_engine(url)
    started = time.perf_counter()
    try:
        schema.upgrade(engine)
        span_start = int(now_s - hours * HOUR_S)
        with engine.begin() as conn:
            iid = register(conn)
            if meta is None:
                start_s, anchor = span_start, ("end", START_TICKS)
                conn.execute(sa.text("DROP TABLE IF EXISTS bench_meta"))
                conn.execute(
                    sa.text("CREATE TABLE bench_meta (hours float8, start_s bigint, end_s bigint)")
                )
                conn.execute(
                    sa.text("INSERT INTO bench_meta VALUES (:h, :s, :s)"),
                    {"h": hours, "s": span_start},
                )
                first_s = span_start
            else:
                start_s = meta[2]
                last = conn.execute(
                    sa.text("SELECT bid_prices[1] FROM depth_snapshots ORDER BY ts_us DESC LIMIT 1")
                ).scalar()
                anchor = ("start", round(float(last) / TICK) if last is not None else START_TICKS)
                first_s = meta[1]
            days = set(range(start_s // 86_400, now_s // 86_400 + 1))
            schema.ensure_partitions(conn, days)
            if start_s < now_s:
                _load_mids(conn, start_s, now_s, anchor)
        rows = fill(engine, iid, start_s, now_s, first_s, rate, label)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS bench_mid"))
            conn.execute(sa.text("UPDATE bench_meta SET end_s = :e"), {"e": now_s})
            if meta is not None:
                trim(conn, now_s - int(hours * HOUR_S))
                conn.execute(sa.text("UPDATE bench_meta SET start_s = :s"), {"s": span_start})
        if rows:
            vacuum(url, label)
        with engine.connect() as conn:
            stored = int(
                conn.execute(
                    sa.text("SELECT count(*) FROM book_events WHERE ts_us >= :s"),
                    {"s": span_start * 1_000_000},
                ).scalar_one()
            )
    finally:
        engine.dispose()
    elapsed = time.perf_counter() - started
    return History(name, url, hours, span_start, now_s, stored, elapsed if rows else 0.0)


def fill(
    engine: sa.Engine,
    iid: int,
    start_s: int,
    end_s: int,
    first_s: int,
    rate: float,
    label: str,
    stream: BenchStream = LEGACY_STREAM,
    book_sql: tuple[str, ...] = (BOOK_EVENTS_SQL, QUOTES_SQL, SNAPSHOTS_SQL),
) -> int:
    """Every table from start_s to end_s, an hour per transaction, with
    progress: the legacy book tables (`book_sql`; none when the book was
    recorded packed), trades, heartbeats and feed events."""
    if end_s <= start_s:
        return 0
    interval_us = round(1e6 / rate)
    chunks = [(t, min(t + HOUR_S, end_s)) for t in range(start_s, end_s, HOUR_S)]
    total_s = end_s - start_s
    rows = 0
    began = time.perf_counter()
    for t0, t1 in chunks:
        params = {
            "iid": iid,
            "depth": DEPTH,
            "t0": t0,
            "t1": t1,
            "iv": interval_us,
            "levels": SNAPSHOT_LEVELS,
            "tick": stream.tick,
            "places": stream.places,
        }
        with engine.begin() as conn:
            # The laterals must run once per row; a memoize cache would repeat arrays.
            conn.execute(sa.text("SET LOCAL enable_memoize = off"))
            for sql in (*book_sql, TRADES_SQL):
                rows += conn.execute(sa.text(sql), params).rowcount
            rows += conn.execute(
                sa.text(HEARTBEATS_SQL),
                {"t0": t0, "t1": t1, "started": first_s, "rate": rate, "key": stream.key},
            ).rowcount
            events = feed_events_for(t0, t1, first_s, stream.symbol)
            if events:
                conn.execute(sa.text(FEED_EVENTS_SQL), events)
                rows += len(events)
        elapsed = time.perf_counter() - began
        done_s = t1 - start_s
        eta = elapsed / done_s * (total_s - done_s)
        print(
            f"  {label}: {done_s / HOUR_S:5.1f}/{total_s / HOUR_S:.1f} h generated, "
            f"{rows:,} rows, {rows / elapsed:,.0f} rows/s, ETA {fmt_s(eta)}",
            flush=True,
        )
    return rows


def trim(conn: sa.Connection, cutoff_s: int) -> None:
    """Drop what a reused database holds beyond its span: whole days, then rows."""
    cutoff_us = cutoff_s * 1_000_000
    for day in sorted(schema.existing_partition_days(conn)):
        if (day + 1) * schema.DAY_US <= cutoff_us:
            for table in schema.PARTITIONED_TABLES:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {schema.partition_name(table, day)}"))
    for table in ("book_events", "quotes", "depth_snapshots", "trades"):
        conn.execute(sa.text(f"DELETE FROM {table} WHERE ts_us < :c"), {"c": cutoff_us})
    for table in ("collector_heartbeats", "feed_events"):
        conn.execute(sa.text(f"DELETE FROM {table} WHERE local_us < :c"), {"c": cutoff_us})


def vacuum(url: str, label: str) -> None:
    print(f"  {label}: VACUUM ANALYZE ...", flush=True)
    vacuum = sa.create_engine(normalise_url(url), isolation_level="AUTOCOMMIT")
    with vacuum.connect() as conn:
        conn.execute(sa.text("VACUUM (ANALYZE)"))
    vacuum.dispose()


def database_bytes(url: str) -> int:
    engine = make_engine(url)
    with engine.connect() as conn:
        size = int(
            conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar_one()
        )
    engine.dispose()
    return size
