"""Dashboard downloads under load: the dashboard's resident memory while many
sessions make and fetch the largest file the History page allows, round after
round.

    .venv/bin/python bench/bench_downloads.py                 # 20 at once, 3 rounds
    .venv/bin/python bench/bench_downloads.py --sessions 40 --rounds 6 --deltas 60000

One BTCUSDT stream is recorded flat out from the simulator (`--deltas` book
messages: 60,000 make a ~27 MB incremental_book_L2 CSV) into an embedded
PostgreSQL; `depthwatch dashboard` (the real process, password set, the page's
limits set to this file's estimate) serves it. Each round, `--sessions` raw
WebSocket clients (tests/stclient.py) log in, click "Make ...", click again a
second later while the server says it is busy, and fetch the file. Printed:
the Streamlit process's RSS before, at its peak (sampled every 50 ms) and
after each round, the files' bytes and time; then RSS `--settle` seconds later.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "streamlit"))
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from tests.conftest import cli_env, free_port  # noqa: E402
from tests.e2e import collect_until_caught_up, sim_collector_config  # noqa: E402
from tests.test_hardening import (  # noqa: E402
    SECRET,
    RssWatch,
    download_once,
    history_query,
)

from depthwatch.app.planning import (  # noqa: E402
    MAX_MB_ENV,
    MAX_ROWS_ENV,
    export_requests,
    plan,
)
from depthwatch.sim import SimConfig, SimulatorThread  # noqa: E402
from depthwatch.storage.db import start_embedded  # noqa: E402
from depthwatch.storage.read.streams import list_streams  # noqa: E402
from depthwatch.storage.read.tops import recorded_span  # noqa: E402

MB = 2**20


def record(server_url: str, deltas: int) -> str:
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("DROP DATABASE IF EXISTS dw_bench_downloads WITH (FORCE)"))
        conn.execute(sa.text("CREATE DATABASE dw_bench_downloads"))
    admin.dispose()
    url = sa.make_url(server_url).set(database="dw_bench_downloads")
    database_url = url.render_as_string(hide_password=False)
    sim = SimulatorThread(
        SimConfig(symbols=("BTCUSDT",), rate=0, deltas=deltas, seed=21, trades_rate=0)
    ).start()
    try:
        collect_until_caught_up(sim, sim_collector_config(sim, database_url, ("BTCUSDT",)), 600)
    finally:
        sim.stop()
    return database_url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deltas", type=int, default=60_000, help="book messages recorded")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds after the last round")
    args = parser.parse_args()
    print(f"{platform.machine()}, {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory(prefix="depthwatch-bench-dl-") as tmp:
        server_url = start_embedded(Path(tmp))
        started = time.perf_counter()
        database_url = record(server_url, args.deltas)
        engine = sa.create_engine(database_url)
        with engine.connect() as conn:
            stream = list_streams(conn)[0]
            span = recorded_span(conn, stream)
        assert span is not None, "nothing recorded"
        first, end = span[0], span[1] + 1_000_000
        requests = export_requests("linear", ("BTCUSDT",), None, "incremental_book_L2", first, end)
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
        port = free_port()
        log = Path(tmp) / "dashboard.log"
        with log.open("wb") as out:
            dashboard = subprocess.Popen(
                [
                    *(sys.executable, "-m", "depthwatch.cli", "dashboard", "--port", str(port)),
                    *("--address", "127.0.0.1", "--database-url", database_url),
                ],
                cwd=ROOT,
                env=cli_env() | {"DASHBOARD_PASSWORD": SECRET} | limits,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        base = f"http://127.0.0.1:{port}"
        query = history_query(first, end, kind="incremental_book_L2", format="csv")
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(base + "/_stcore/health", timeout=1)
                    break
                except OSError:
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.3)
            task = Path(f"/proc/{dashboard.pid}/task/{dashboard.pid}/children")
            watch = RssWatch(int(task.read_text().split()[0]))
            download_once(base, query, time.monotonic() + 300)  # warm: imports, caches
            time.sleep(2)
            print(f"RSS at the start: {watch.now() / MB:.0f} MB")
            with watch:
                for n in range(args.rounds):
                    began = time.perf_counter()
                    busy: list[int] = []

                    def one(answers: list[int] = busy) -> None:
                        answers.append(download_once(base, query, time.monotonic() + 600)[1])

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
        finally:
            dashboard.terminate()
            dashboard.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
