"""Dashboard downloads under load: the dashboard's resident memory while many
sessions make and fetch the largest file the History page allows, round after
round.

    .venv/bin/python bench/bench_downloads.py                 # 20 at once, 3 rounds
    .venv/bin/python bench/bench_downloads.py --sessions 40 --rounds 6 --deltas 60000

One BTCUSDT stream is recorded flat out from the simulator (`--deltas` book
messages: 60,000 make a ~27 MB incremental_book_L2 CSV) by `depthwatch
collect` into an embedded PostgreSQL (DATABASE_URL's server when set, as in
every benchmark); `depthwatch dashboard` (the real process, password set, the page's
limits set to this file's estimate) serves it. Each round, `--sessions` raw
WebSocket clients (bench/stclient.py) log in, click "Make ...", click again a
second later while the server says it is busy, and fetch the file. Printed:
the Streamlit process's RSS before, at its peak (sampled every 50 ms) and
after each round, the files' bytes and time; then RSS `--settle` seconds later.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import sqlalchemy as sa

from children import Children, start_collector, start_dashboard, streamlit_pid, wait_for
from common import RssWatch, exit_on_sigterm
from databases import database_server, fresh_database
from depthwatch.app.planning import MAX_MB_ENV, MAX_ROWS_ENV, export_requests, iso, plan
from depthwatch.sim import SimConfig, SimulatorThread
from depthwatch.storage.read.chunks import last_recorded
from depthwatch.storage.read.streams import NotRecorded, find_stream, list_streams
from depthwatch.storage.read.tops import recorded_span
from stclient import download_history_file

MB = 2**20
SYMBOL = "BTCUSDT"
PASSWORD = "Bench-Downloads-4Tz8"


def record(children: Children, server_url: str, deltas: int) -> str:
    """`deltas` steps of the simulator's BTCUSDT, flat out, recorded by the
    real collector until it stored the last message sent; the database's URL."""
    database_url = fresh_database(server_url, "dw_bench_downloads")
    sim = SimulatorThread(
        SimConfig(symbols=(SYMBOL,), rate=0, deltas=deltas, seed=21, trades_rate=0)
    ).start()
    engine = sa.create_engine(database_url)
    try:
        collector = start_collector(children, sim.url("linear"), database_url, (SYMBOL,))
        topic = f"orderbook.50.{SYMBOL}"

        def caught_up() -> bool:
            latest = sim.latest(topic)
            if not sim.finished(topic) or latest is None:
                return False
            try:
                with engine.connect() as conn:
                    stored = last_recorded(conn, find_stream(conn, "linear", SYMBOL, 50))
            except (NotRecorded, sa.exc.DBAPIError):
                return False  # nothing stored yet, or no schema yet
            return stored is not None and stored.u == latest.u

        wait_for(caught_up, 600, "the collector to store every message", collector)
        collector.stop()
    finally:
        sim.stop()
        engine.dispose()
    return database_url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deltas", type=int, default=60_000, help="book messages recorded")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds after the last round")
    args = parser.parse_args()
    exit_on_sigterm()
    print(f"{platform.machine()}, {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    with (
        tempfile.TemporaryDirectory(prefix="depthwatch-bench-dl-") as tmp,
        database_server(Path(tmp)) as server_url,
        Children(Path(tmp) / "logs") as children,
    ):
        started = time.perf_counter()
        database_url = record(children, server_url, args.deltas)
        engine = sa.create_engine(database_url)
        with engine.connect() as conn:
            stream = list_streams(conn)[0]
            span = recorded_span(conn, stream)
        assert span is not None, "nothing recorded"
        first, end = span[0], span[1] + 1_000_000
        requests = export_requests("linear", (SYMBOL,), None, "incremental_book_L2", first, end)
        estimate = plan(engine, requests, "csv")
        engine.dispose()
        print(
            f"recorded {args.deltas:,} messages in {time.perf_counter() - started:.0f} s: "
            f"the file ~{estimate.rows.rows:,} rows, ~{estimate.bytes / MB:.1f} MB"
        )
        limits = {
            MAX_ROWS_ENV: str(estimate.rows.rows),
            MAX_MB_ENV: f"{estimate.bytes / MB + 0.01:.2f}",
        }
        dashboard, base = start_dashboard(
            children, database_url, env={"DASHBOARD_PASSWORD": PASSWORD} | limits, timeout_s=60
        )
        query = urlencode(
            {"symbols": SYMBOL, "start": iso(first), "end": iso(end)}
            | {"kind": "incremental_book_L2", "format": "csv"}
        )
        watch = RssWatch(streamlit_pid(dashboard))
        # Warm: imports, caches.
        download_history_file(base, PASSWORD, query, time.monotonic() + 300)
        time.sleep(2)
        print(f"RSS at the start: {watch.now() / MB:.0f} MB")
        with watch:
            for n in range(args.rounds):
                began = time.perf_counter()
                busy: list[int] = []

                def one(answers: list[int] = busy) -> None:
                    deadline = time.monotonic() + 600
                    answers.append(download_history_file(base, PASSWORD, query, deadline)[1])

                threads = [threading.Thread(target=one) for _ in range(args.sessions)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                print(
                    f"round {n + 1}: {len(busy)} files in {time.perf_counter() - began:.1f} s "
                    f"({sum(busy)} busy answers); RSS now {watch.now() / MB:.0f} MB, "
                    f"peak so far {watch.peak / MB:.0f} MB"
                )
        time.sleep(args.settle)
        print(f"{args.settle:g} s later: {watch.now() / MB:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
