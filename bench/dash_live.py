"""bench_dashboard.py's live setup for the browser and RSS phases: a
database seeded with 1 h of legacy history, then `depthwatch sim`, `depthwatch
collect` recording it and `depthwatch dashboard`, all on 127.0.0.1, stopped
on the way out; and what the database and the dashboard's process say about
the transactions it runs.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from children import (
    Children,
    sim_url,
    start_collector,
    start_dashboard,
    start_sim,
    streamlit_pid,
    wait_for,
)
from common import SRC, pct
from dash_history import CATEGORY, DEPTH, SYMBOL, generate_history
from databases import drop_database
from depthwatch.storage.db import make_engine
from depthwatch.storage.read.book import quotes
from depthwatch.storage.read.chunks import last_quote
from depthwatch.storage.read.streams import find_stream


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
    try:
        with Children(logs) as children:
            _, port = start_sim(children, ["--rate", f"{rate:g}", "--symbols", SYMBOL])
            collector = start_collector(
                children,
                sim_url(port, CATEGORY),
                history.url,
                [SYMBOL],
                *("--depth", str(DEPTH), "--trades"),
            )
            hooks = work_dir / "hooks"
            hooks.mkdir(parents=True, exist_ok=True)
            (hooks / "sitecustomize.py").write_text(XACT_HOOK)
            xact_file = work_dir / f"dashboard-xacts-{children.stamp}"
            dashboard, base = start_dashboard(
                children,
                history.url,
                env={
                    "PYTHONPATH": f"{hooks}{os.pathsep}{SRC}",
                    "DW_BENCH_XACT_FILE": str(xact_file),
                },
            )
            pid = streamlit_pid(dashboard)
            engine = make_engine(history.url)

            def fresh_quote() -> bool:
                now_us = time.time_ns() // 1000
                with engine.connect() as conn:
                    stream = find_stream(conn, CATEGORY, SYMBOL, DEPTH)
                    newest = last_quote(conn, stream, now_us - 60_000_000)
                return newest is not None and now_us - newest.local_us < 2_000_000

            wait_for(fresh_quote, 60, "the collector's first rows", collector)
            engine.dispose()
            print(
                f"  live: simulator :{port} ({rate:g} msg/s), collector pid {collector.pid}, "
                f"dashboard {base} (streamlit pid {pid}); logs in {logs}",
                flush=True,
            )
            yield Live(history.url, base, pid, collector.pid, xact_file)
    finally:
        if not keep:
            with contextlib.suppress(Exception):
                drop_database(server_url, name)


# ---- what the database says ----------------------------------------------------------


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


def live_diagnostics(engine: sa.Engine) -> str:
    """Why the data age is what it is: how often the top of book changed (the
    age is that of the newest quote), and the collector's own commit latency."""
    now = time.time_ns() // 1000
    since = now - 60_000_000
    # In a transaction (the readers use server-side cursors), whatever `engine`'s default.
    with engine.execution_options(isolation_level="READ COMMITTED").begin() as conn:
        stream = find_stream(conn, CATEGORY, SYMBOL, DEPTH)
        # Quotes received in the last minute (exchange time runs a little
        # ahead of receive time: a second more is read, then filtered).
        received = [
            row[1] for row in quotes(conn, stream, since - 1_000_000, now) if row[1] >= since
        ]
        commit = conn.execute(
            sa.text(
                """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY commit_p50_ms),
                          max(commit_p99_ms)
                   FROM collector_heartbeats
                   WHERE local_us >= :s AND collector <> 'bench-history:1'"""
            ),
            {"s": now - 300_000_000},
        ).one()
    gaps = np.diff(received)
    gap_text = "-"
    if len(gaps):
        gap_text = f"p50 {pct(gaps, 50) / 1e3:.0f} ms, p95 {pct(gaps, 95) / 1e3:.0f} ms"
    return (
        f"live stream: {len(received) / 60:.1f} quotes/s recorded over the last minute (time "
        f"between quotes {gap_text}); collector receive-to-commit p50 "
        f"{commit[0] or math.nan:.0f} ms, worst p99 {commit[1] or math.nan:.0f} ms "
        "(heartbeats, last 5 min)"
    )
