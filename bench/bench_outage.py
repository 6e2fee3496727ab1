"""Database outage benchmark: the collector at ~1,000 book messages/s while
PostgreSQL is cut off (a TCP proxy in front of it closes every connection and
refuses new ones) for `--outage` seconds (default 600), then comes back.

    .venv/bin/python bench/bench_outage.py                 # 10 minutes of outage
    .venv/bin/python bench/bench_outage.py --outage 30     # a quick look

PostgreSQL is an embedded one (DATABASE_URL's server when set); the collector
is the real `depthwatch collect` process, the simulator runs in this one.

Reports, with the same figures from before the outage as the baseline (ratios):
  - whether the sockets kept reading (messages received during the outage vs sent);
  - collector RSS before, peak during the outage and after (memory bounded?);
  - the journal's peak size and how long the database took to drain it;
  - rows sent vs stored: every update id from the first snapshot to the last
    message must be stored exactly once per stream (no hole, no duplicate).
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from children import Child, Children, start_collector
from common import exit_on_sigterm, memory_mb
from databases import database_server, fresh_database
from dbproxy import DatabaseProxy
from depthwatch.clock import MAX_US
from depthwatch.sim import SimConfig, SimulatorThread
from depthwatch.storage.db import make_engine
from depthwatch.storage.read.book import book_events
from depthwatch.storage.read.streams import list_streams

SYMBOLS = ("BTCUSDT", "ETHUSDT")


def journal_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.glob("*.journal")) / 1e6


def sample(collector: Child, journal: Path, phase: str, seconds: float) -> list[float]:
    """The collector's RSS every 5 s for `seconds`; printed with the journal's size."""
    rss: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert collector.running(), "the collector died"
        rss.append(memory_mb(collector.pid))
        time.sleep(min(5.0, max(0.0, end - time.monotonic())))
    print(f"  {phase}: RSS max {max(rss):.0f} MB, journal {journal_mb(journal):.1f} MB")
    return rss


def check_stored(engine: sa.Engine) -> bool:
    """Per stream: every update id from the first snapshot to the last stored,
    once; printed."""
    ok = True
    with engine.connect() as conn:
        streams = {s.symbol: s for s in list_streams(conn)}
        for symbol in SYMBOLS:
            stream = streams[symbol]
            # Rows as stored (a message written twice counts twice); the
            # reader below gives each message once.
            rows = conn.execute(
                sa.text("SELECT coalesce(sum(n), 0) FROM book_chunks WHERE stream_id = :s"),
                {"s": stream.id},
            ).scalar_one()
            ids: set[int] = set()
            snapshot_ids: list[int] = []
            for event in book_events(conn, stream, 0, MAX_US):
                ids.add(event.u)
                if event.is_snapshot:
                    snapshot_ids.append(event.u)
            sent = max(ids) - min(snapshot_ids) + 1
            print(
                f"  {symbol}: messages sent from the first snapshot to the last {sent:,}, "
                f"update ids stored {len(ids):,} (rows {rows:,}, snapshots {len(snapshot_ids)})"
            )
            ok &= len(ids) == sent
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=600.0, help="seconds without database")
    parser.add_argument("--rate", type=float, default=500.0, help="messages/s per symbol")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the outage")
    args = parser.parse_args()
    exit_on_sigterm()

    with (
        tempfile.TemporaryDirectory(prefix="depthwatch-outage-") as tmp,
        database_server(Path(tmp)) as server,
        Children(Path(tmp) / "logs") as children,
    ):
        work = Path(tmp)
        url = fresh_database(server, "dw_bench_outage")
        proxy = DatabaseProxy(url)
        sim = SimulatorThread(
            SimConfig(symbols=SYMBOLS, rate=args.rate, seed=1, trades_rate=0, record=False)
        ).start()
        try:
            journal = work / "journal"
            collector = start_collector(
                children, sim.sim.url("linear"), proxy.url, SYMBOLS, "--journal-dir", str(journal)
            )
            print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}")
            print(
                f"{len(SYMBOLS)} streams at {args.rate:.0f} msg/s each; outage {args.outage:.0f} s"
            )
            before = sample(collector, journal, "before the outage", args.warmup)
            proxy.cut()
            print(f"database cut off at {time.strftime('%H:%M:%S')}")
            during: list[float] = []
            peak_journal = 0.0
            outage_end = time.monotonic() + args.outage
            while time.monotonic() < outage_end:
                left = min(60.0, outage_end - time.monotonic())
                during += sample(collector, journal, "outage", left)
                peak_journal = max(peak_journal, journal_mb(journal))
            proxy.restore()
            restored = time.monotonic()
            print(f"database back at {time.strftime('%H:%M:%S')}")
            while list(journal.glob("*.journal")):
                assert collector.running(), "the collector died"
                assert time.monotonic() - restored < 1800, "the journal did not drain"
                time.sleep(1.0)
            drained = time.monotonic() - restored
            after = sample(collector, journal, "after the drain", 10.0)
            code = collector.stop(120)
        finally:
            sim.stop()
            proxy.close()

        print(f"exit status {code}")
        journaled = re.search(r"rows journaled (\d+), rows dropped (\d+)", collector.output())
        print(f"journal peak {peak_journal:.0f} MB, drained {drained:.0f} s after recovery")
        print(
            f"collector RSS: before {max(before):.0f} MB, outage peak {max(during):.0f} MB "
            f"({max(during) / max(before):.2f}x), after {max(after):.0f} MB"
        )
        if journaled:
            print(f"rows journaled {journaled.group(1)}, rows dropped {journaled.group(2)}")
        engine = make_engine(url)
        try:
            ok = check_stored(engine) and code == 0
        finally:
            engine.dispose()
    print("RESULT: every message stored" if ok else "RESULT: MISSING ROWS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
