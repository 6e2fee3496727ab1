"""Dashboard benchmark: window queries with 1 h and 24 h of history, what a
browser costs per refresh, and the dashboard's memory over a long run.

    .venv/bin/python bench/bench_dashboard.py                      # every phase (~50 min)
    .venv/bin/python bench/bench_dashboard.py --phase queries      # ~5 min (1-2 of them generating)
    .venv/bin/python bench/bench_dashboard.py --phase queries --layout legacy   # ~7 min
    .venv/bin/python bench/bench_dashboard.py --phase browser      # ~10 min
    .venv/bin/python bench/bench_dashboard.py --phase rss --minutes 30    # ~37 min
    .venv/bin/python bench/bench_dashboard.py --phase queries --keep --explain --what-if

Phases (one stream, depth 50 at 50 messages/s):
  queries  Two layouts of the book's history (--layout):
           packed (default): what a schema 4 collector writes (book_chunks,
             top_seconds, top_snapshots). bench/record_paced.py records one
             hour of P00USDT, a paced synthetic stream, through the real
             parser, book and writer, faster than real time (~30 s at ~7,000
             messages/s), ending "now". 24 h = that 1 h recorded, then
             replicated 23 times back in time in SQL (rows moved by whole
             hours, u moved so it keeps increasing; a chunk decodes relative
             to its row's ts_us and u, so moved rows decode correctly): every
             hour of the 24 h history holds the same book and prices, and
             each starts with the recording's snapshot, like a resync.
           legacy: the schema 1-3 tables, generated in SQL (INSERT ... SELECT
             generate_series, an hour per transaction): BTCUSDT book events
             with 2-20 changed levels as numeric[] arrays, quotes for half
             the messages, a 50+50-level depth snapshot every second. What the
             figures before schema 4 measured.
           Both add, in SQL, ~2 trades/s (priced from the history's mids),
           collector heartbeats every 2 s and a few feed events. Then,
           interleaved on the 1 h and the 24 h database: every query the live
           page's read (`data.live_view`) makes, timed one by one (p50/p95,
           and the part spent in cursor.execute), the whole read (one
           transaction, no Streamlit cache), and the page's figure building
           and Plotly JSON serialisation as Streamlit does it. 24 h / 1 h
           ratios compare the same run. "Now" is pinned to the end of each
           history, so every window is full.
           --explain prints EXPLAIN ANALYZE of each statement (24 h, 60 min);
           --what-if also times the read with rows handed to pandas as tuples.
  browser  A live setup: `depthwatch sim`, `depthwatch collect` and `depthwatch
           dashboard` on 127.0.0.1 over a database seeded with 1 h of history,
           and headless Chromium (Playwright) on the Live page. Stages: no page,
           1 page, 10 pages (10 contexts), 10 pages whose charts are not drawn
           (see Browser), no page again. Per stage: the dashboard's database
           transactions (counted in its process, and pg_stat_database minus the
           collector's baseline), WebSocket bytes per refresh, refreshes/s, the
           "Data age" shown on the page, CPU of the Streamlit server and of
           Chromium, the server's RSS.
  rss      The same live setup with one page open for --minutes (default 30),
           then --viewers pages for --viewer-minutes: the Streamlit server's
           VmRSS every 10 s, summarised after a 2 minute warm-up.

Every process it starts is stopped on exit, SIGTERM and Ctrl-C included; all
traffic stays on 127.0.0.1 (PostgreSQL on a Unix socket).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import inspect
import io
import logging
import math
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "streamlit"
sys.path.insert(0, str(SRC))

from depthwatch.sim.market import spec_for  # noqa: E402
from depthwatch.storage import schema  # noqa: E402
from depthwatch.storage.db import (  # noqa: E402
    make_engine,
    make_reader_engine,
    normalise_url,
    start_embedded,
)

CATEGORY, SYMBOL, DEPTH = "linear", "BTCUSDT", 50
TICK = 0.1  # BTCUSDT's tick; prices are generated in integer ticks
START_TICKS = 600_000  # 60,000.0: where the simulator's BTCUSDT starts
SNAPSHOT_LEVELS = 50
WINDOWS_MIN = (10, 60)
LIVE_URL_PATH = "/live?category=linear&symbol=BTCUSDT&depth=50&window=10"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEFAULT_DATA_DIR = Path("/tmp/depthwatch-bench-dashboard")
HOUR_S = 3_600
LAYOUTS = ("packed", "legacy")


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


# ---- small helpers -------------------------------------------------------------------


def pct(values: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else math.nan


def fmt_s(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60:02d} s" if whole >= 60 else f"{whole} s"


def machine_line() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus ({model}), "
        f"{ram_gb:.1f} GiB RAM, Python {platform.python_version()}"
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                out[int(entry.name)] = int(
                    entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1]
                )
    return out


def children_of(pid: int) -> list[int]:
    return [child for child, parent in parents().items() if parent == pid]


def descendants(pid: int) -> list[int]:
    tree = parents()
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, p in tree.items() if p == parent]
        found += kids
        frontier += kids
    return found


def browser_cpu_seconds() -> float:
    """CPU time of our own Playwright driver and Chromium (processes alive now)."""
    total = 0.0
    for pid in descendants(os.getpid()):
        if any(name in cmdline(pid) for name in ("chromium", "playwright")):
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
    return total


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def current_commit() -> str:
    """HEAD of the checkout the code runs from; a snapshot made with `git archive`
    (to measure one commit while others edit the checkout) names it in
    DEPTHWATCH_BENCH_COMMIT."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if found:
        return found + (" (with uncommitted changes)" if dirty else "")
    return os.environ.get("DEPTHWATCH_BENCH_COMMIT", "unknown (not a git checkout)")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url(server_url: str, name: str) -> str:
    return sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)


def database_exists(server_url: str, name: str) -> bool:
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return bool(
                conn.execute(
                    sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
                ).scalar()
            )
    finally:
        admin.dispose()


def recreate_database(server_url: str, name: str) -> str:
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return database_url(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


# ---- history generation -------------------------------------------------------------
#
# Prices are integer ticks in a helper table bench_mid (one random-walk mid per
# second, drawn with NumPy); every table is then filled by one INSERT ... SELECT
# per hour. Message i of an hour is at t0 + i / rate; its u is ts_us / interval,
# so u keeps increasing across hours and top-ups.

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


def _register(conn: sa.Connection, stream: BenchStream = LEGACY_STREAM) -> int:
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


def _meta(conn: sa.Connection) -> tuple[float, int, int] | None:
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
            meta = _meta(conn)
        engine.dispose()
        if meta is not None and (meta[0] != hours or now_s - meta[2] > hours * HOUR_S):
            meta = None
    if meta is None:
        recreate_database(server_url, name)
    engine = make_engine(url)
    started = time.perf_counter()
    try:
        schema.upgrade(engine)
        span_start = int(now_s - hours * HOUR_S)
        with engine.begin() as conn:
            iid = _register(conn)
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
        rows = _fill(engine, iid, start_s, now_s, first_s, rate, label)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS bench_mid"))
            conn.execute(sa.text("UPDATE bench_meta SET end_s = :e"), {"e": now_s})
            if meta is not None:
                _trim(conn, now_s - int(hours * HOUR_S))
                conn.execute(sa.text("UPDATE bench_meta SET start_s = :s"), {"s": span_start})
        if rows:
            _vacuum(url, label)
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


def _fill(
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


def _trim(conn: sa.Connection, cutoff_s: int) -> None:
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


# ---- packed history: recorded by the real writer, replicated back in time ------------
#
# bench/record_paced.py records one hour of a paced synthetic stream through
# the real parser, book and writer (schema 4: book_chunks, top_seconds,
# top_snapshots), ending at a whole second E. Its chunks and per-second tops
# cover the seconds E-3600 .. E (the last message falls at E itself), its top-N
# snapshots the ends of seconds, (E-3600, E]. A longer history is that hour
# replicated: copy k holds the rows of [E-3600, E) (snapshots: shifted by a
# second) moved k hours back, so copies tile the time axis without overlap.
# A chunk's payload is relative to its row's ts_us and u, so a moved row
# decodes to the same messages at the moved times. u moves too, by a whole
# recording's worth per hour, and the recorded hour is first moved up by as
# much as all the copies take, so u keeps increasing with time (what a resync
# or a replay expects) and stays positive.

PACKED_RECORDING = "dw_bench_dash_packed_rec"
RECORD_PACED = ROOT / "bench" / "record_paced.py"

# Per packed table: the statement moving the recorded hour's u up, and the copy.
# :lo/:hi bound the recorded hour's rows; k counts the copies, 1 = an hour back.
PACKED_TABLES: dict[str, tuple[str | None, str]] = {
    "book_chunks": (
        "UPDATE book_chunks SET u = u + :u_up",
        """INSERT INTO book_chunks (stream_id, ts_us, u, n, snapshot, payload)
           SELECT c.stream_id, c.ts_us - k * :period_us, c.u - k * :u_step, c.n, c.snapshot,
                  c.payload
           FROM book_chunks c, generate_series(1, :copies) k
           WHERE c.ts_us >= :lo AND c.ts_us < :hi""",
    ),
    "top_seconds": (
        "UPDATE top_seconds SET last_u = last_u + :u_up",
        """INSERT INTO top_seconds (stream_id, ts_us, last_ts_us, last_u, bid, bid_size, ask,
                                   ask_size, bid_min, ask_max, spread_bps_max, messages)
           SELECT t.stream_id, t.ts_us - k * :period_us, t.last_ts_us - k * :period_us,
                  t.last_u - k * :u_step, t.bid, t.bid_size, t.ask, t.ask_size, t.bid_min,
                  t.ask_max, t.spread_bps_max, t.messages
           FROM top_seconds t, generate_series(1, :copies) k
           WHERE t.ts_us >= :lo AND t.ts_us < :hi""",
    ),
    # Stamped at the end of the second they close: the recorded hour's are (lo, hi].
    "top_snapshots": (
        None,
        """INSERT INTO top_snapshots (stream_id, ts_us, payload)
           SELECT s.stream_id, s.ts_us - k * :period_us, s.payload
           FROM top_snapshots s, generate_series(1, :copies) k
           WHERE s.ts_us > :lo AND s.ts_us <= :hi""",
    ),
    # Hourly whole books, if the writer wrote any in the recorded hour.
    "book_checkpoints": (
        "UPDATE book_checkpoints SET u = u + :u_up",
        """INSERT INTO book_checkpoints (instrument_id, depth, ts_us, local_us, u, seq,
                                        bid_prices, bid_sizes, ask_prices, ask_sizes)
           SELECT b.instrument_id, b.depth, b.ts_us - k * :period_us,
                  b.local_us - k * :period_us, b.u - k * :u_step, b.seq,
                  b.bid_prices, b.bid_sizes, b.ask_prices, b.ask_sizes
           FROM book_checkpoints b, generate_series(1, :copies) k
           WHERE b.ts_us >= :lo AND b.ts_us < :hi""",
    ),
}


def packed_name(hours: float) -> str:
    return f"dw_bench_dash_packed_{hours:g}h".replace(".", "_")


def legacy_name(hours: float) -> str:
    return f"dw_bench_dash_{hours:g}h".replace(".", "_")


def history_names(layout: str, hours_list: list[float]) -> list[str]:
    """The databases a queries phase creates (dropped at the end unless --keep)."""
    if layout == "legacy":
        return [legacy_name(h) for h in hours_list]
    return [packed_name(h) for h in hours_list] + [PACKED_RECORDING]


@dataclass
class Recording:
    """One hour recorded by bench/record_paced.py, made on first use and shared
    by every packed history of the run (each starts as a copy of it)."""

    server_url: str
    rate: float
    end_s: int = 0  # the recording ends at this whole second (its last message)

    def ensure(self) -> int:
        if not self.end_s:
            self.end_s = record_hour(self.server_url, self.rate)
        return self.end_s

    def drop(self) -> None:
        if self.end_s:
            drop_database(self.server_url, PACKED_RECORDING)
            self.end_s = 0


def record_hour(server_url: str, rate: float) -> int:
    """Record the last hour up to now's whole second into PACKED_RECORDING
    with the real writer, in a child process (record_paced.py as it is);
    returns that second."""
    url = recreate_database(server_url, PACKED_RECORDING)
    end_s = int(time.time())
    argv = [
        sys.executable,
        str(RECORD_PACED),
        "--database-url",
        url,
        "--streams",
        "1",
        "--depth",
        str(DEPTH),
        "--rate",
        f"{rate:g}",
        "--minutes",
        str(HOUR_S // 60),
        "--end-ms",
        str(end_s * 1000),
    ]
    print(
        f"  recording {HOUR_S * rate:,.0f} messages of {PACKED_STREAM.symbol} (1 h at "
        f"{rate:g} msg/s) through the real writer ...",
        flush=True,
    )
    started = time.perf_counter()
    # The child prints its progress on stderr (ours) and one JSON line on stdout.
    done = subprocess.run(
        argv,
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        cwd=ROOT,
        preexec_fn=_die_with_us(),
    )
    print(
        f"\n  recorded in {fmt_s(time.perf_counter() - started)}: {done.stdout.strip()}",
        flush=True,
    )
    return end_s


def generate_packed_history(
    server_url: str, hours: float, rate: float, keep: bool, label: str, recording: Recording
) -> History:
    """A database holding `hours` of packed history ending at the recording's
    end: the recorded hour, replicated back in time `hours` - 1 times, plus
    the trades, heartbeats and feed events the legacy history also has. With
    `keep`, one generated earlier for the same `hours` is reused as it is
    ("now" stays pinned at its end)."""
    copies = round(hours) - 1
    if copies < 0 or copies + 1 != hours:
        raise SystemExit(f"--layout packed takes whole hours (1 h recorded, replicated): {hours:g}")
    name = packed_name(hours)
    url = database_url(server_url, name)
    reused = _reusable(server_url, name, hours) if keep else None
    if reused is not None:
        return History(name, url, hours, reused[1], reused[2], _packed_messages(url, reused[1]), 0)
    started = time.perf_counter()  # the recording counts for the history that makes it
    end_s = recording.ensure()
    start_s = end_s - copies * HOUR_S - HOUR_S
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        # A file copy of the recording: its rows, partitions and statistics.
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{PACKED_RECORDING}"'))
    admin.dispose()
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            schema.ensure_partitions(conn, set(range(start_s // 86_400, end_s // 86_400 + 1)))
            replicated = _replicate(conn, end_s, copies)
            iid = _register(conn, PACKED_STREAM)  # sets the tick, as a collector does
            conn.execute(
                sa.text("CREATE TABLE bench_meta (hours float8, start_s bigint, end_s bigint)")
            )
            conn.execute(
                sa.text("INSERT INTO bench_meta VALUES (:h, :s, :e)"),
                {"h": hours, "s": start_s, "e": end_s},
            )
            _mids_from_tops(conn, PACKED_STREAM.tick)
        print(f"  {label}: {replicated:,} packed rows replicated ({copies} copies)", flush=True)
        _fill(engine, iid, start_s, end_s, start_s, rate, label, PACKED_STREAM, book_sql=())
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE bench_mid"))
    finally:
        engine.dispose()
    _vacuum(url, label)
    elapsed = time.perf_counter() - started
    return History(name, url, hours, start_s, end_s, _packed_messages(url, start_s), elapsed)


def _reusable(server_url: str, name: str, hours: float) -> tuple[float, int, int] | None:
    if not database_exists(server_url, name):
        return None
    engine = make_engine(database_url(server_url, name))
    try:
        with engine.connect() as conn:
            meta = _meta(conn)
    finally:
        engine.dispose()
    return meta if meta is not None and meta[0] == hours else None


def _replicate(conn: sa.Connection, end_s: int, copies: int) -> int:
    """Copy the recorded hour `copies` times, each an hour further back."""
    if copies == 0:
        return 0
    u_step = int(
        conn.execute(sa.text("SELECT coalesce(max(u + n), 1) FROM book_chunks")).scalar_one()
    )
    params = {
        "u_up": copies * u_step,
        "u_step": u_step,
        "period_us": HOUR_S * 1_000_000,
        "copies": copies,
        "lo": (end_s - HOUR_S) * 1_000_000,
        "hi": end_s * 1_000_000,
    }
    rows = 0
    for move_up, copy in PACKED_TABLES.values():
        if move_up is not None:
            conn.execute(sa.text(move_up), params)
        rows += conn.execute(sa.text(copy), params).rowcount
    return rows


def _mids_from_tops(conn: sa.Connection, tick: float) -> None:
    """bench_mid (what the trades are priced from) from the recorded tops, in
    ticks: the trades stay near the book the dashboard draws them on."""
    conn.execute(sa.text("DROP TABLE IF EXISTS bench_mid"))
    conn.execute(
        sa.text(
            """CREATE UNLOGGED TABLE bench_mid AS
               SELECT ts_us / 1000000 AS sec, round((bid + ask) / 2 / :tick)::bigint AS mid
               FROM top_seconds WHERE bid IS NOT NULL AND ask IS NOT NULL"""
        ),
        {"tick": tick},
    )
    conn.execute(sa.text("ALTER TABLE bench_mid ADD PRIMARY KEY (sec)"))
    conn.execute(sa.text("ANALYZE bench_mid"))


def _packed_messages(url: str, start_s: int) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT coalesce(sum(n), 0) FROM book_chunks WHERE ts_us >= :s"),
                    {"s": start_s * 1_000_000},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def _vacuum(url: str, label: str) -> None:
    print(f"  {label}: VACUUM ANALYZE ...", flush=True)
    vacuum = sa.create_engine(normalise_url(url), isolation_level="AUTOCOMMIT")
    with vacuum.connect() as conn:
        conn.execute(sa.text("VACUUM (ANALYZE)"))
    vacuum.dispose()


def table_bytes(url: str) -> int:
    engine = make_engine(url)
    with engine.connect() as conn:
        size = int(
            conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar_one()
        )
    engine.dispose()
    return size


# ---- phase 1: the window queries ----------------------------------------------------


def _quiet_streamlit() -> None:
    """The app's cached functions run here without a Streamlit server (bare mode),
    which Streamlit reports with a warning on every call."""
    warnings.simplefilter("ignore")
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("streamlit"):
            logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("streamlit").setLevel(logging.ERROR)


@dataclass
class Timings:
    by_key: dict[tuple, list[float]] = field(default_factory=dict)

    def add(self, key: tuple, seconds: float) -> None:
        self.by_key.setdefault(key, []).append(seconds)

    def get(self, key: tuple) -> list[float]:
        return self.by_key.get(key, [])


class QueryTimer:
    """Wraps every reader (depthwatch.storage.read) that the dashboard's data
    module calls, where it calls them, so that a real `live_view` call records
    how long each took: whatever live_view calls is measured, with no copy of
    its body here. Per call: the whole function
    (rows fetched, converted and framed) and, within it, the time in
    `cursor.execute` (the server's work plus the transfer of every row, which
    psycopg2 reads at execute); the rest is client-side conversion."""

    def __init__(self) -> None:
        from depthwatch.app import data

        self.module = data
        self.current: list[tuple[str, float, float]] = []  # name, total s, execute s
        self.executing = 0.0
        self._started: list[float] = []
        self._originals: dict[str, Callable] = {}
        for name in dir(data):
            value = getattr(data, name)
            if (
                inspect.isfunction(value)
                and value.__module__.startswith("depthwatch.storage.read.")
                and not name.startswith("_")
                and next(iter(inspect.signature(value).parameters), "") == "conn"
            ):
                self._originals[name] = value
                setattr(data, name, self._wrap(name, value))

    def watch(self, engine: sa.Engine) -> None:
        def before(*_args) -> None:
            self._started.append(time.perf_counter())

        def after(*_args) -> None:
            self.executing += time.perf_counter() - self._started.pop()

        sa.event.listen(engine, "before_cursor_execute", before)
        sa.event.listen(engine, "after_cursor_execute", after)

    def _wrap(self, name: str, func: Callable) -> Callable:
        def timed(*args, **kwargs):
            executing = self.executing
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self.current.append((name, elapsed, self.executing - executing))

        return timed

    def restore(self) -> None:
        for name, func in self._originals.items():
            setattr(self.module, name, func)


FIGURES = ("depth", "heatmap", "price", "spread", "imbalance", "events")


def build_page(view, window_min: int, levels: int) -> dict[str, tuple[float, float, int]]:
    """The Live page's figures from a view, built as live.py builds them, then
    serialised as st.plotly_chart does (`to_dict`, then `plotly.io.to_json`
    without validation). Per figure: (build s, serialise s, JSON bytes)."""
    import plotly.io

    from depthwatch.app import figures

    x_range = (view.start_us / 1000, view.now_us / 1000)
    key = f"{view.stream.key}/{window_min}/{levels}"
    builders: dict[str, Callable] = {
        "heatmap": lambda: figures.heatmap_figure(
            view.heatmap, view.grid, view.top, view.trades, view.spans, x_range, key
        ),
        "price": lambda: figures.price_figure(view.top, view.spans, x_range, key),
        "spread": lambda: figures.spread_figure(view.top, view.spans, x_range, key),
        "imbalance": lambda: figures.imbalance_figure(
            view.imbalance, view.spans, x_range, key, levels
        ),
        "events": lambda: figures.events_figure(view.events, view.spans, x_range, key),
    }
    if view.book is not None:
        mid = view.top["mid"].iloc[-1] if not view.top.empty else None
        builders["depth"] = lambda: figures.depth_figure(view.book, mid)
    out = {}
    for name, build in builders.items():
        started = time.perf_counter()
        fig = build()
        built = time.perf_counter()
        text = plotly.io.to_json(fig.to_dict(), validate=False)
        out[name] = (built - started, time.perf_counter() - built, len(text))
    return out


def make_histories(
    args: argparse.Namespace, server_url: str, hours_list: list[float]
) -> list[History]:
    """One database per history length, in the layout asked for."""
    recording = Recording(server_url, args.rate)
    histories: list[History] = []
    try:
        for hours in hours_list:
            label = f"{hours:g} h"
            if args.layout == "legacy":
                name = legacy_name(hours)
                print(f"  {label}: generating history in database {name} ...", flush=True)
                history = generate_history(server_url, name, hours, args.rate, args.keep, label)
            else:
                print(f"  {label}: packed history in database {packed_name(hours)} ...", flush=True)
                history = generate_packed_history(
                    server_url, hours, args.rate, args.keep, label, recording
                )
            size = table_bytes(history.url)
            print(
                f"  {label}: {history.rows:,} book messages stored "
                f"({history.rows / (history.hours * HOUR_S):.1f}/s), "
                f"database {size / 2**30:.2f} GiB"
                + (
                    f", generated in {fmt_s(history.seconds)}"
                    if history.seconds
                    else " (reused as is)"
                ),
                flush=True,
            )
            histories.append(history)
    finally:
        recording.drop()  # every history is a copy by now
    return histories


def run_queries(args: argparse.Namespace, server_url: str) -> None:
    hours_list = [float(h) for h in args.hours.split(",")]
    print(
        f"\n1. window queries ({args.layout} layout): history of "
        f"{', '.join(f'{h:g} h' for h in hours_list)}"
    )
    histories = make_histories(args, server_url, hours_list)
    symbol = (LEGACY_STREAM if args.layout == "legacy" else PACKED_STREAM).symbol

    _quiet_streamlit()
    from depthwatch.app import data

    timer = QueryTimer()

    engines = {h.hours: make_reader_engine(h.url) for h in histories}
    for engine in engines.values():
        timer.watch(engine)
    ends_us = {h.hours: h.end_s * 1_000_000 for h in histories}
    current: list[float] = [hours_list[0]]
    original_engine, original_now = data.engine, data.now_us
    # The app's own reader engine, one per database; "now" pinned to the end of
    # each history, so every window is full however long the run takes.
    data.engine = lambda: engines[current[0]]
    data.now_us = lambda: ends_us[current[0]]
    timings = Timings()
    levels = args.levels
    try:
        streams = {}
        for h in histories:
            with engines[h.hours].connect() as conn:
                found = timer._originals["list_streams"](conn)
                streams[h.hours] = next(s for s in found if s.symbol == symbol)
        total = args.iterations + args.warmup
        print(
            f"  {args.iterations} reads per (history, window) after {args.warmup} warm-up, "
            f"levels {levels}, interleaved ...",
            flush=True,
        )
        for it in range(total):
            for hours in hours_list:
                current[0] = hours
                for window in WINDOWS_MIN:
                    timer.current.clear()
                    data.live_view.clear()
                    started = time.perf_counter()
                    view = data.live_view(streams[hours], window, levels)
                    read_s = time.perf_counter() - started
                    page = build_page(view, window, levels)
                    if it < args.warmup:
                        continue
                    key = (hours, window)
                    for name, seconds, executing in timer.current:
                        timings.add((*key, name), seconds)
                        timings.add((*key, f"_exec_{name}"), executing)
                    build_s = sum(b for b, _, _ in page.values())
                    json_s = sum(j for _, j, _ in page.values())
                    timings.add((*key, "_read"), read_s)
                    timings.add((*key, "_build"), build_s)
                    timings.add((*key, "_json"), json_s)
                    timings.add((*key, "_total"), read_s + build_s + json_s)
                    timings.add((*key, "_bytes"), sum(n for _, _, n in page.values()))
                    for fig, (b, j, n) in page.items():
                        timings.add((*key, f"_build_{fig}"), b)
                        timings.add((*key, f"_json_{fig}"), j)
                        timings.add((*key, f"_bytes_{fig}"), n)
                    timings.add(
                        (*key, "_rows"), len(view.heatmap) + len(view.top) + len(view.trades)
                    )
                    if args.what_if and hours == hours_list[-1]:
                        what_if_tuples(data, timer, timings, streams[hours], key, levels)
            if (it + 1) % 10 == 0:
                print(f"  ... {it + 1}/{total}", flush=True)
        if args.explain:
            explain(histories[-1], streams[histories[-1].hours], levels)
    finally:
        timer.restore()
        data.engine, data.now_us = original_engine, original_now
        for engine in engines.values():
            engine.dispose()
    report_queries(timings, hours_list, levels)
    if args.what_if:
        report_what_if(timings, hours_list[-1])


def what_if_tuples(data, timer: QueryTimer, timings: Timings, stream, key: tuple, levels: int):
    """The same read with one change in storage.read.frames.frame: rows handed
    to pandas as plain tuples instead of SQLAlchemy Rows (pandas probes every
    Row for namedtuple fields, and a Row answers a missing attribute slowly)."""
    from depthwatch.storage.read import events, frames, legacy, tops, trades

    readers = (events, legacy, tops, trades)  # every module that calls frame()
    original = frames.frame
    for module in readers:
        module.frame = lambda rows, columns: original([tuple(r) for r in rows], columns)
    try:
        timer.current.clear()
        data.live_view.clear()
        started = time.perf_counter()
        data.live_view(stream, key[1], levels)
        timings.add((*key, "_whatif_read"), time.perf_counter() - started)
        for name, seconds, _ in timer.current:
            timings.add((*key, f"_whatif_{name}"), seconds)
    finally:
        for module in readers:
            module.frame = original


def report_what_if(timings: Timings, hours: float) -> None:
    print(f"\n  what if _frame took plain tuples ({hours:g} h history, ms p50 / p95, same run):")
    for window in WINDOWS_MIN:
        for name in ("_read", "heatmap_cells", "top_series", "recent_trades"):
            now = timings.get((hours, window, name))
            then = timings.get((hours, window, f"_whatif_{name.lstrip('_')}"))
            label = "whole read" if name == "_read" else name
            print(
                f"  window {window:>2} min {label:<15} as is {pct(now, 50) * 1e3:7.1f} / "
                f"{pct(now, 95) * 1e3:7.1f}   tuples {pct(then, 50) * 1e3:7.1f} / "
                f"{pct(then, 95) * 1e3:7.1f}   {pct(then, 50) / pct(now, 50):.2f}x"
            )


def report_queries(timings: Timings, hours_list: list[float], levels: int) -> None:
    lo, hi = hours_list[0], hours_list[-1]

    def ms(key: tuple, q: float) -> float:
        return pct(timings.get(key), q) * 1e3

    names = sorted(
        {key[2] for key in timings.by_key if not key[2].startswith("_")},
        key=lambda n: -ms((hi, WINDOWS_MIN[-1], n), 95),
    )
    for window in WINDOWS_MIN:
        reads = max(1, len(timings.get((hi, window, "_read"))))
        print(
            f"\n  window {window} min, levels {levels}, {reads} reads: ms p50 / p95 "
            f"(goals: each query p95 < 50 ms; {hi:g} h / {lo:g} h about 1)"
        )
        print(
            f"  {'':<30}{f'{lo:g} h':>15}{f'{hi:g} h':>16}{'ratio p50':>11}{'ratio p95':>10}"
            f"  {hi:g} h: in execute p50"
        )
        for name in names:
            a, b = (lo, window, name), (hi, window, name)
            executing = ms((hi, window, f"_exec_{name}"), 50)
            flag = "" if ms(b, 95) < 50 else "  <-- p95 over 50 ms"
            print(
                f"  {name:<30}{ms(a, 50):>7.1f} / {ms(a, 95):>6.1f}{ms(b, 50):>8.1f} / "
                f"{ms(b, 95):>6.1f}{ms(b, 50) / ms(a, 50):>10.2f}x{ms(b, 95) / ms(a, 95):>9.2f}x"
                f"  {executing:>7.1f}{flag}"
            )
        for name, label, goal in (
            ("_read", "whole read (live_view)", "goal p95 < 150 ms"),
            ("_build", "figure building", ""),
            ("_json", "Plotly JSON (to_dict+to_json)", ""),
            ("_total", "server time per refresh", "read + build + JSON"),
        ):
            a, b = (lo, window, name), (hi, window, name)
            print(
                f"  {label:<30}{ms(a, 50):>7.1f} / {ms(a, 95):>6.1f}{ms(b, 50):>8.1f} / "
                f"{ms(b, 95):>6.1f}{ms(b, 50) / ms(a, 50):>10.2f}x{ms(b, 95) / ms(a, 95):>9.2f}x"
                f"  {goal}"
            )
        figs = [f for f in FIGURES if timings.get((hi, window, f"_bytes_{f}"))]
        print(
            f"  per figure ({hi:g} h, p50): "
            + ", ".join(
                f"{f} {ms((hi, window, f'_build_{f}'), 50):.0f}+"
                f"{ms((hi, window, f'_json_{f}'), 50):.0f} ms "
                f"{pct(timings.get((hi, window, f'_bytes_{f}')), 50) / 1000:,.0f} KB"
                for f in figs
            )
            + f"; JSON in all {pct(timings.get((hi, window, '_bytes')), 50) / 1000:,.0f} KB"
            f" from {pct(timings.get((hi, window, '_rows')), 50):,.0f} rows "
            "(heatmap cells + top buckets + trades)"
        )


def explain(history: History, stream, levels: int) -> None:
    """EXPLAIN ANALYZE of every statement one live_view read sends (60 min window)."""
    from depthwatch.app import data

    engine = make_reader_engine(history.url)
    statements: list[tuple[str, object]] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    original = data.engine, data.now_us
    data.engine, data.now_us = (lambda: engine), (lambda: history.end_s * 1_000_000)
    try:
        data.live_view.clear()
        data.live_view(stream, 60, levels)
    finally:
        data.engine, data.now_us = original
    sa.event.remove(engine, "before_cursor_execute", capture)
    print(f"\n  EXPLAIN ANALYZE, {history.hours:g} h history, window 60 min:")
    with engine.connect() as conn:
        for statement, parameters in statements:
            if not statement.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            plan = [row[0] for row in cursor.fetchall()]
            first = " ".join(statement.split())[:90]
            timing = [line for line in plan if "Execution Time" in line or "Planning Time" in line]
            print(f"  - {first} ...\n      {' | '.join(t.strip() for t in timing)}")
            for line in plan[:30]:
                print(f"      {line}")
    engine.dispose()


# ---- live setup: simulator, collector, dashboard ---------------------------------------


def _die_with_us() -> Callable[[], None] | None:
    """Ask Linux to SIGTERM a child when this process dies, so nothing outlives a
    killed benchmark."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC)
    env["PYTHONUNBUFFERED"] = "1"
    for name in ("DATABASE_URL", "DASHBOARD_DATABASE_URL"):
        env.pop(name, None)
    return env


def spawn(argv: list[str], log_path: Path, **env: str) -> subprocess.Popen:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "depthwatch.cli", *argv],
            env=child_env() | env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C reaches us only; we stop them in order
            preexec_fn=_die_with_us(),
            cwd=ROOT,
        )


def stop_process(proc: subprocess.Popen | None, name: str, timeout_s: float = 60.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        print(f"  {name} (pid {proc.pid}) ignored SIGTERM for {timeout_s:.0f} s: killing it")
        proc.kill()
        proc.wait()


def wait_for(check: Callable[[], object], timeout_s: float, what: str, proc=None) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what} after {timeout_s:.0f} s")
        time.sleep(0.2)


def http_ok(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local only
    try:
        with opener.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass
class Live:
    url: str  # database
    dashboard_url: str
    dashboard_pid: int  # the streamlit server (child of `depthwatch dashboard`)
    collector_pid: int
    xact_file: Path  # where the streamlit process's hook writes its transaction count

    def dashboard_xacts(self) -> tuple[int, int]:
        """(transactions its SQLAlchemy engines ended, pool checkouts) so far in
        the streamlit process. Each checkout runs pool_pre_ping's SELECT 1, which
        the psycopg2 dialect sends in autocommit: a transaction of its own."""
        path = self.xact_file.with_name(f"{self.xact_file.name}.{self.dashboard_pid}")
        with contextlib.suppress(OSError, ValueError, IndexError):
            ended, checkouts = path.read_text().split()[:2]
            return int(ended), int(checkouts)
        return 0, 0


# Loaded by the dashboard's Python processes only (their PYTHONPATH starts with
# its directory): counts the transactions the process's SQLAlchemy engines end,
# for a count that does not depend on subtracting the collector's commits.
XACT_HOOK = """\
import os, threading, time

_path = os.environ.get("DW_BENCH_XACT_FILE")
if _path:
    import sqlalchemy

    _count = [0, 0]  # transactions ended (commit or rollback), pool checkouts

    def _ended(*_args):
        _count[0] += 1

    def _checkout(*_args):
        _count[1] += 1

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "commit", _ended)
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "rollback", _ended)
    sqlalchemy.event.listen(sqlalchemy.pool.Pool, "checkout", _checkout)

    def _write():
        mine = f"{_path}.{os.getpid()}"
        while True:
            with open(mine + ".tmp", "w") as out:
                out.write(f"{_count[0]} {_count[1]}\\n")
            os.replace(mine + ".tmp", mine)
            time.sleep(0.2)

    threading.Thread(target=_write, name="bench-xact-count", daemon=True).start()
"""


@contextlib.contextmanager
def live_setup(server_url: str, work_dir: Path, rate: float, keep: bool) -> Iterator[Live]:
    """A database seeded with 1 h of history, then the simulator, the collector
    recording it, and the dashboard, all on 127.0.0.1; everything stopped on exit."""
    name = "dw_bench_dash_live"
    print(f"  seeding {name} with 1 h of history ...", flush=True)
    history = generate_history(server_url, name, 1.0, rate, False, "live seed")
    logs = work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    sim = collector = dashboard = None
    try:
        sim_log = logs / f"sim-{stamp}.log"
        sim = spawn(
            [
                "sim",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--rate",
                f"{rate:g}",
                "--symbols",
                SYMBOL,
            ],
            sim_log,
        )

        def sim_port() -> int | None:
            found = re.search(r"listening on ws://127\.0\.0\.1:(\d+)/", sim_log.read_text())
            return int(found.group(1)) if found else None

        port = int(wait_for(sim_port, 30, "the simulator", sim))  # type: ignore[arg-type]
        collector = spawn(
            [
                "collect",
                "--symbols",
                SYMBOL,
                "--depth",
                str(DEPTH),
                "--trades",
                "--ws-url",
                f"ws://127.0.0.1:{port}/v5/public/{CATEGORY}",
                "--database-url",
                history.url,
                "--retention-days",
                "0",
            ],
            logs / f"collector-{stamp}.log",
        )
        dash_port = free_port()
        hooks = work_dir / "hooks"
        hooks.mkdir(parents=True, exist_ok=True)
        (hooks / "sitecustomize.py").write_text(XACT_HOOK)
        xact_file = work_dir / f"dashboard-xacts-{stamp}"
        dashboard = spawn(
            [
                "dashboard",
                "--database-url",
                history.url,
                "--port",
                str(dash_port),
                "--address",
                "127.0.0.1",
            ],
            logs / f"dashboard-{stamp}.log",
            PYTHONPATH=f"{hooks}{os.pathsep}{SRC}",
            DW_BENCH_XACT_FILE=str(xact_file),
        )
        base = f"http://127.0.0.1:{dash_port}"
        wait_for(lambda: http_ok(base + "/_stcore/health"), 90, "the dashboard", dashboard)

        def streamlit_pid() -> int | None:
            found = [p for p in children_of(dashboard.pid) if "streamlit" in cmdline(p)]
            return found[0] if found else None

        pid = int(wait_for(streamlit_pid, 30, "the streamlit process"))  # type: ignore[arg-type]
        engine = make_engine(history.url)

        def fresh_quote() -> bool:
            with engine.connect() as conn:
                newest = conn.execute(sa.text("SELECT max(local_us) FROM quotes")).scalar()
            return newest is not None and time.time() * 1e6 - newest < 2e6

        wait_for(fresh_quote, 60, "the collector's first rows", collector)
        engine.dispose()
        print(
            f"  live: simulator :{port} ({rate:g} msg/s), collector pid {collector.pid}, "
            f"dashboard {base} (streamlit pid {pid}); logs in {logs}",
            flush=True,
        )
        yield Live(history.url, base, pid, collector.pid, xact_file)
    finally:
        stop_process(dashboard, "dashboard")
        stop_process(collector, "collector")
        stop_process(sim, "simulator")
        if not keep:
            with contextlib.suppress(Exception):
                drop_database(server_url, name)


# ---- browser pages ----------------------------------------------------------------------


class PageStats:
    """WebSocket frames one page received, decoded as Streamlit ForwardMsgs:
    bytes, script runs finished (one per refresh of the live fragment), Plotly
    charts sent in full, and messages sent as a reference to one the browser
    already holds (Streamlit's message cache: an element identical to the
    previous refresh's, e.g. when the refresh was served the same cached view)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.frames = 0
        self.refreshes = 0
        self.charts = 0
        self.references = 0

    def on_frame(self, payload: str | bytes) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        raw = payload.encode() if isinstance(payload, str) else payload
        self.bytes += len(raw)
        self.frames += 1
        msg = ForwardMsg()
        with contextlib.suppress(Exception):
            msg.ParseFromString(raw)
            kind = msg.WhichOneof("type")
            if kind == "script_finished":
                self.refreshes += 1
            elif kind == "ref_hash":
                self.references += 1
            elif (
                kind == "delta"
                and msg.delta.WhichOneof("type") == "new_element"
                and msg.delta.new_element.WhichOneof("type") == "plotly_chart"
            ):
                self.charts += 1


DATA_AGE_JS = """() => {
    for (const m of document.querySelectorAll('[data-testid="stMetric"]')) {
        const label = m.querySelector('[data-testid="stMetricLabel"]');
        if (label && label.innerText.trim() === 'Data age') {
            const value = m.querySelector('[data-testid="stMetricValue"]');
            return value ? value.innerText.trim() : null;
        }
    }
    return null;
}"""


def parse_age(text: str | None) -> float | None:
    """The page's age() text back to seconds: '0.4 s', '12 s', '3 min', '2 h', '4 days'."""
    if not text:
        return None
    found = re.match(r"([\d.,]+)\s*(s|min|h|days)", text)
    if not found:
        return None
    value = float(found.group(1).replace(",", ""))
    return value * {"s": 1, "min": 60, "h": 3_600, "days": 86_400}[found.group(2)]


class Browser:
    """Headless Chromium with one context (a separate Streamlit session) per page.

    A page opened with `draw_charts=False` never loads Plotly's chunk (the
    request is aborted), so its charts are not drawn while everything else,
    the 1 s fragment timer and every WebSocket frame included, stays as in a
    real page: ten such pages drive the server as ten remote viewers would,
    without ten renderers competing for this machine's two cores."""

    def __init__(self, base_url: str) -> None:
        from playwright.sync_api import sync_playwright

        self.url = base_url + LIVE_URL_PATH
        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        self.pages: list = []
        self.stats: list[PageStats] = []

    def open_page(self, draw_charts: bool = True) -> None:
        context = self.browser.new_context(viewport={"width": 1400, "height": 1000})
        if not draw_charts:
            context.route("**/PlotlyChart.*.js", lambda route: route.abort())
        page = context.new_page()
        stats = PageStats()
        page.on("websocket", lambda ws: ws.on("framereceived", stats.on_frame))
        page.goto(self.url, wait_until="domcontentloaded")
        self.pages.append(page)
        self.stats.append(stats)
        deadline = time.monotonic() + 90
        while parse_age(page.evaluate(DATA_AGE_JS)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the Live page showed no data age within 90 s")
            page.wait_for_timeout(250)

    def close_pages(self) -> None:
        for page in self.pages:
            page.context.close()
        self.pages, self.stats = [], []

    def data_age(self, index: int = 0) -> float | None:
        return parse_age(self.pages[index].evaluate(DATA_AGE_JS))

    def pump(self, seconds: float) -> None:
        """Let the browser deliver events (frames) for `seconds`."""
        self.pages[0].wait_for_timeout(seconds * 1000)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.browser.close()
        with contextlib.suppress(Exception):
            self._playwright.stop()


# ---- phase 2: bytes, transactions, data age ------------------------------------------


def xacts(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    """SELECT xact_commit + xact_rollback FROM pg_stat_database
                       WHERE datname = current_database()"""
                )
            ).scalar_one()
        )


@dataclass
class Stage:
    name: str
    pages: int
    seconds: float
    xact_per_s: float  # the database's, all clients (pg_stat_database)
    dashboard_xact_per_s: float  # counted in the streamlit process: reads + pre-pings
    dashboard_reads_per_s: float  # its read transactions alone
    bytes_per_s: float  # per page
    refreshes_per_s: float  # per page
    charts_per_refresh: float  # Plotly charts sent in full
    references_per_refresh: float  # messages sent as references to cached ones
    cpu_pct: float  # streamlit server, % of one core
    browser_pct: float  # our Chromium and Playwright, % of one core
    machine_pct: float  # whole machine, % of all cores
    rss_mb: float  # max over the stage
    ages: list[float]

    @property
    def bytes_per_refresh(self) -> float:
        return self.bytes_per_s / self.refreshes_per_s if self.refreshes_per_s else math.nan


def measure_stage(
    name: str, live: Live, stats_engine: sa.Engine, browser: Browser | None, seconds: float
) -> Stage:
    pages = len(browser.pages) if browser else 0
    stats = browser.stats if browser else []
    bytes0 = [s.bytes for s in stats]
    refresh0 = [s.refreshes for s in stats]
    charts0 = sum(s.charts for s in stats)
    refs0 = sum(s.references for s in stats)
    x0 = xacts(stats_engine)
    d0 = live.dashboard_xacts()
    cpu0 = cpu_seconds(live.dashboard_pid)
    browser0 = browser_cpu_seconds()
    busy0, total0 = machine_busy()
    t0 = time.monotonic()
    ages: list[float] = []
    rss = rss_mb(live.dashboard_pid)
    tick = 0
    while (elapsed := time.monotonic() - t0) < seconds:
        if browser:
            # Every second, from page 1, 2, ... in turn (all pages share the same view).
            age = browser.data_age(tick % pages)
            if age is not None:
                ages.append(age)
            browser.pump(max(0.0, min(1.0, seconds - elapsed) - 0.02))
        else:
            time.sleep(min(1.0, seconds - elapsed))
        tick += 1
        rss = max(rss, rss_mb(live.dashboard_pid))
    wall = time.monotonic() - t0
    x1 = xacts(stats_engine)
    d1 = live.dashboard_xacts()
    cpu = cpu_seconds(live.dashboard_pid) - cpu0
    browser_cpu = browser_cpu_seconds() - browser0
    busy1, total1 = machine_busy()
    stage = Stage(
        name,
        pages,
        wall,
        (x1 - x0 - 1) / wall,  # -1: the sampling query's own transaction
        (d1[0] - d0[0] + d1[1] - d0[1]) / wall,
        (d1[0] - d0[0]) / wall,
        sum(s.bytes - b for s, b in zip(stats, bytes0, strict=True)) / wall / max(1, pages),
        sum(s.refreshes - r for s, r in zip(stats, refresh0, strict=True)) / wall / max(1, pages),
        (sum(s.charts for s in stats) - charts0)
        / max(1, sum(s.refreshes for s in stats) - sum(refresh0)),
        (sum(s.references for s in stats) - refs0)
        / max(1, sum(s.refreshes for s in stats) - sum(refresh0)),
        cpu / wall * 100,
        browser_cpu / wall * 100,
        (busy1 - busy0) / max(1, total1 - total0) * 100,
        rss,
        ages,
    )
    age_text = (
        f", data age p50 {pct(ages, 50):.2f} s / p95 {pct(ages, 95):.2f} s ({len(ages)} reads)"
        if ages
        else ""
    )
    print(
        f"  {name:<13} {stage.xact_per_s:6.2f} xact/s (dashboard "
        f"{stage.dashboard_xact_per_s:.2f}), CPU: streamlit {stage.cpu_pct:5.1f} %, "
        f"browser {stage.browser_pct:5.1f} %, machine {stage.machine_pct:3.0f} %; "
        f"RSS {stage.rss_mb:4.0f} MB"
        + (
            f", per page {stage.refreshes_per_s:.2f} refreshes/s, "
            f"{stage.bytes_per_s / 1000:,.0f} KB/s"
            if pages
            else ""
        )
        + age_text,
        flush=True,
    )
    return stage


def run_browser(args: argparse.Namespace, server_url: str, work_dir: Path) -> None:
    print(f"\n2. browser: bytes per refresh, transactions/s, data age ({args.seconds:g} s stages)")
    with live_setup(server_url, work_dir, args.rate, args.keep) as live:
        stats_engine = sa.create_engine(normalise_url(live.url), isolation_level="AUTOCOMMIT")
        browser = None
        try:
            time.sleep(args.settle)
            stages = [measure_stage("no page", live, stats_engine, None, args.seconds)]
            browser = Browser(live.dashboard_url)
            browser.open_page()
            browser.pump(args.settle)
            stages.append(measure_stage("1 page", live, stats_engine, browser, args.seconds))
            for _ in range(args.viewers - 1):
                browser.open_page()
            browser.pump(args.settle)
            stages.append(
                measure_stage(f"{args.viewers} pages", live, stats_engine, browser, args.seconds)
            )
            browser.close_pages()
            for _ in range(args.viewers):
                browser.open_page(draw_charts=False)
            browser.pump(args.settle)
            stages.append(
                measure_stage(f"{args.viewers} undrawn", live, stats_engine, browser, args.seconds)
            )
            browser.close()
            browser = None
            time.sleep(args.settle)
            stages.append(measure_stage("no page again", live, stats_engine, None, args.seconds))
            diagnostics = live_diagnostics(stats_engine)
        finally:
            if browser is not None:
                browser.close()
            stats_engine.dispose()
    base_runs = [stages[0].xact_per_s, stages[-1].xact_per_s]
    base = sum(base_runs) / 2
    one, many, undrawn = stages[1], stages[2], stages[3]
    print(
        "\n  the dashboard's transactions/s, counted in its process and, as a check, the "
        f"database's minus the collector's baseline ({base:.2f}/s: {base_runs[0]:.2f} before, "
        f"{base_runs[1]:.2f} after); per page refresh; ratio to 1 page (goal <= 1.2x):"
    )
    one_x = one.dashboard_xact_per_s
    for stage in (one, many, undrawn):
        own = stage.dashboard_xact_per_s
        print(
            f"  {stage.name:<13} {own:5.2f}/s, of which reads {stage.dashboard_reads_per_s:.2f}/s "
            f"and pre-pings the rest (database minus baseline {stage.xact_per_s - base:5.2f}); "
            f"{_per(own, stage.refreshes_per_s * stage.pages)} per page refresh "
            f"({stage.refreshes_per_s * stage.pages:.2f} page refreshes/s); "
            f"{own / one_x if one_x > 0 else math.nan:.2f}x"
        )
    print("  bytes received per page refresh (WebSocket payloads, no compression):")
    for stage in (one, many, undrawn):
        print(
            f"  {stage.name:<13} {stage.bytes_per_refresh / 1000:,.0f} KB "
            f"({stage.refreshes_per_s:.2f} refreshes/s per page, "
            f"{stage.bytes_per_s * stage.pages / 1e6:.2f} MB/s in all; per refresh "
            f"{stage.charts_per_refresh:.1f} charts sent in full, "
            f"{stage.references_per_refresh:.1f} elements sent as cache references)"
        )
    print("  data age shown on the page (goal p95 < 2 s):")
    for stage in (one, many, undrawn):
        print(
            f"  {stage.name:<13} p50 {pct(stage.ages, 50):.2f} s, p95 {pct(stage.ages, 95):.2f} s,"
            f" max {max(stage.ages, default=math.nan):.2f} s over {len(stage.ages)} reads"
        )
    print("  CPU, % of one core (streamlit server / our Chromium / whole machine of 2 cores):")
    for stage in stages:
        print(
            f"  {stage.name:<13} {stage.cpu_pct:5.1f} / {stage.browser_pct:5.1f} / "
            f"{stage.machine_pct:3.0f} %"
        )
    print(
        f"  streamlit RSS, max: 1 page {one.rss_mb:.0f} MB, {many.name} {many.rss_mb:.0f} MB, "
        f"{undrawn.name} {undrawn.rss_mb:.0f} MB (goal < 400 MB)"
    )
    print(f"  {diagnostics}")


def _per(xact_per_s: float, refreshes_per_s: float) -> str:
    return f"{xact_per_s / refreshes_per_s:.2f}" if refreshes_per_s > 0 else "-"


def live_diagnostics(engine: sa.Engine) -> str:
    """Why the data age is what it is: how often the top of book changed (the
    age is that of the newest quote), and the collector's own commit latency."""
    now = time.time_ns() // 1000
    with engine.connect() as conn:
        quotes = conn.execute(
            sa.text("SELECT count(*) FROM quotes WHERE local_us >= :s"), {"s": now - 60_000_000}
        ).scalar_one()
        gaps = conn.execute(
            sa.text(
                """SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY d)
                   FROM (SELECT local_us - lag(local_us) OVER (ORDER BY ts_us, u) AS d
                         FROM quotes WHERE local_us >= :s) x WHERE d IS NOT NULL"""
            ),
            {"s": now - 60_000_000},
        ).scalar()
        commit = conn.execute(
            sa.text(
                """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY commit_p50_ms),
                          max(commit_p99_ms)
                   FROM collector_heartbeats
                   WHERE local_us >= :s AND collector <> 'bench-history:1'"""
            ),
            {"s": now - 300_000_000},
        ).one()
    gap_text = f"p50 {gaps[0] / 1e3:.0f} ms, p95 {gaps[1] / 1e3:.0f} ms" if gaps else "-"
    return (
        f"live stream: {quotes / 60:.1f} quotes/s recorded over the last minute (time between "
        f"quotes {gap_text}); collector receive-to-commit p50 {commit[0] or math.nan:.0f} ms, "
        f"worst p99 {commit[1] or math.nan:.0f} ms (heartbeats, last 5 min)"
    )


# ---- phase 3: RSS over a long run --------------------------------------------------------


def run_rss(args: argparse.Namespace, server_url: str, work_dir: Path) -> None:
    warmup_s = 120.0
    print(
        f"\n3. dashboard RSS: 1 page for {args.minutes:g} min, then {args.viewers} pages for "
        f"{args.viewer_minutes:g} min (VmRSS every 10 s, warm-up {warmup_s:.0f} s)"
    )
    with live_setup(server_url, work_dir, args.rate, args.keep) as live:
        browser = Browser(live.dashboard_url)
        try:
            browser.open_page()
            one = sample_rss(live, browser, args.minutes * 60, "1 page")
            # Nine more viewers whose charts are not drawn (see Browser): they ask
            # for refreshes at the page's pace, which nine drawn pages on this
            # machine's two cores could not.
            for _ in range(args.viewers - 1):
                browser.open_page(draw_charts=False)
            before = [s.refreshes for s in browser.stats]
            started = time.monotonic()
            many = sample_rss(live, browser, args.viewer_minutes * 60, f"{args.viewers} pages")
            rates = [
                (s.refreshes - b) / (time.monotonic() - started)
                for s, b in zip(browser.stats, before, strict=True)
            ]
        finally:
            browser.close()
    print(
        "  1 page, RSS series (MB, one sample a minute): "
        + " ".join(f"{mb:.0f}" for t, mb in one if round(t) % 60 < 10)
    )
    after = [(t, mb) for t, mb in one if t >= warmup_s]
    if after:
        start, end = after[0][1], after[-1][1]
        peak = max(mb for _, mb in after)
        # A line through the samples: growth not hidden by where the last sample fell.
        ts = np.array([t for t, _ in after])
        slope = float(np.polyfit(ts, [mb for _, mb in after], 1)[0]) if len(after) > 2 else 0.0
        print(
            f"  1 page, after warm-up ({len(after)} samples over "
            f"{(after[-1][0] - after[0][0]) / 60:.1f} min): start {start:.0f} MB, "
            f"end {end:.0f} MB, "
            f"max {peak:.0f} MB, growth {(end - start) / start * 100:+.1f} % "
            f"(fitted {slope * 3600:+.1f} MB/h; goal growth < 10 %)"
        )
    print(
        f"  1 page: first sample {one[0][1]:.0f} MB; {args.viewers} pages: max "
        f"{max(mb for _, mb in many):.0f} MB, end {many[-1][1]:.0f} MB (goal < 400 MB); "
        f"refreshes/s per page meanwhile {min(rates):.2f}-{max(rates):.2f}"
    )


def sample_rss(
    live: Live, browser: Browser, seconds: float, label: str
) -> list[tuple[float, float]]:
    samples: list[tuple[float, float]] = []
    t0 = time.monotonic()
    next_at = 0.0
    last_print = -60.0
    while (elapsed := time.monotonic() - t0) <= seconds:
        if elapsed >= next_at:
            samples.append((elapsed, rss_mb(live.dashboard_pid)))
            next_at += 10.0
            if elapsed - last_print >= 60:
                cpu = cpu_seconds(live.dashboard_pid)
                print(
                    f"  {label}: {elapsed / 60:5.1f} min, RSS {samples[-1][1]:6.1f} MB, "
                    f"streamlit CPU {cpu:.0f} s so far, data age {browser.data_age()} s",
                    flush=True,
                )
                last_print = elapsed
        browser.pump(max(0.05, min(next_at - (time.monotonic() - t0), 1.0)))
    return samples


# ---- main -----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--phase", default="queries,browser,rss", help="comma-separated: queries, browser, rss"
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="embedded PG data")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the generated history databases and reuse them next time (legacy: topped "
        "up to now; packed: as they are, 'now' pinned at their end)",
    )
    parser.add_argument("--hours", default="1,24", help="histories to compare (default 1,24)")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="packed",
        help="queries: book history recorded packed (schema 4, default) or legacy tables",
    )
    parser.add_argument("--rate", type=float, default=50.0, help="messages/s of the stream")
    parser.add_argument("--levels", type=int, default=25, help="levels per side (page default)")
    parser.add_argument("--iterations", type=int, default=50, help="reads per history and window")
    parser.add_argument("--warmup", type=int, default=3, help="reads discarded first")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the queries")
    parser.add_argument(
        "--what-if",
        action="store_true",
        help="also time the read with rows passed to pandas as plain tuples (one-line change)",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="browser stage length")
    parser.add_argument("--settle", type=float, default=15.0, help="pause before each stage")
    parser.add_argument("--viewers", type=int, default=10, help="pages in the many-viewer stage")
    parser.add_argument("--minutes", type=float, default=30.0, help="rss: minutes with 1 page")
    parser.add_argument(
        "--viewer-minutes", type=float, default=5.0, help="rss: minutes with --viewers pages"
    )
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    phases = [p.strip() for p in args.phase.split(",") if p.strip()]
    unknown = set(phases) - {"queries", "browser", "rss"}
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")

    print(machine_line())
    print(f"commit: {current_commit()}, code from {SRC}")
    logging.getLogger("depthwatch").setLevel(logging.WARNING)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    configured = os.environ.get("DATABASE_URL")
    server_url = normalise_url(configured) if configured else start_embedded(args.data_dir)
    created: list[str] = []
    try:
        if "queries" in phases:
            created += history_names(args.layout, [float(h) for h in args.hours.split(",")])
            run_queries(args, server_url)
        if "browser" in phases:
            run_browser(args, server_url, args.data_dir)
        if "rss" in phases:
            run_rss(args, server_url, args.data_dir)
    finally:
        if not args.keep:
            for name in created:
                with contextlib.suppress(Exception):
                    drop_database(server_url, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
