"""Database outage benchmark: the collector at ~1,000 book messages/s while
PostgreSQL is cut off (a TCP proxy in front of it closes every connection and
refuses new ones) for `--outage` seconds (default 600), then comes back.

    .venv/bin/python bench/bench_outage.py                 # 10 minutes of outage
    .venv/bin/python bench/bench_outage.py --outage 30     # a quick look

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
import signal
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "streamlit"))
sys.path.insert(0, str(ROOT))

from tests.conftest import start_collect  # noqa: E402
from tests.dbproxy import DatabaseProxy  # noqa: E402

from depthwatch.sim import SimConfig, SimulatorThread  # noqa: E402
from depthwatch.storage.db import make_engine, start_embedded  # noqa: E402

SYMBOLS = ("BTCUSDT", "ETHUSDT")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def journal_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.glob("*.journal")) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=600.0, help="seconds without database")
    parser.add_argument("--rate", type=float, default=500.0, help="messages/s per symbol")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the outage")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="depthwatch-outage-"))
    server = start_embedded(work)
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("CREATE DATABASE outage"))
    url = sa.make_url(server).set(database="outage").render_as_string(hide_password=False)
    proxy = DatabaseProxy(url)
    sim = SimulatorThread(
        SimConfig(symbols=SYMBOLS, rate=args.rate, seed=1, trades_rate=0, record=False)
    ).start()
    journal = work / "journal"
    collector = start_collect(
        sim.sim.url("linear"),
        proxy.url,
        "--symbols",
        ",".join(SYMBOLS),
        "--journal-dir",
        str(journal),
    )
    print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}")
    print(f"{len(SYMBOLS)} streams at {args.rate:.0f} msg/s each; outage {args.outage:.0f} s")

    def sample(phase: str, seconds: float) -> list[float]:
        rss: list[float] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            assert collector.poll() is None, "the collector died"
            rss.append(rss_mb(collector.pid))
            time.sleep(min(5.0, max(0.0, end - time.monotonic())))
        print(f"  {phase}: RSS max {max(rss):.0f} MB, journal {journal_mb(journal):.1f} MB")
        return rss

    engine = make_engine(url)
    before = sample("before the outage", args.warmup)
    proxy.cut()
    print(f"database cut off at {time.strftime('%H:%M:%S')}")
    during: list[float] = []
    peak_journal = 0.0
    outage_end = time.monotonic() + args.outage
    while time.monotonic() < outage_end:
        during += sample("outage", min(60.0, outage_end - time.monotonic()))
        peak_journal = max(peak_journal, journal_mb(journal))
    proxy.restore()
    restored = time.monotonic()
    print(f"database back at {time.strftime('%H:%M:%S')}")
    while list(journal.glob("*.journal")):
        assert collector.poll() is None, "the collector died"
        assert time.monotonic() - restored < 1800, "the journal did not drain"
        time.sleep(1.0)
    drained = time.monotonic() - restored
    after = sample("after the drain", 10.0)
    collector.send_signal(signal.SIGTERM)
    _, stderr = collector.communicate(timeout=120)
    sim.stop()
    proxy.close()

    print(f"exit status {collector.returncode}")
    journaled = re.search(r"rows journaled (\d+), rows dropped (\d+)", stderr)
    print(f"journal peak {peak_journal:.0f} MB, drained {drained:.0f} s after recovery")
    print(
        f"collector RSS: before {max(before):.0f} MB, outage peak {max(during):.0f} MB "
        f"({max(during) / max(before):.2f}x), after {max(after):.0f} MB"
    )
    if journaled:
        print(f"rows journaled {journaled.group(1)}, rows dropped {journaled.group(2)}")
    ok = collector.returncode == 0
    with engine.connect() as conn:
        for symbol in SYMBOLS:
            first_u, last_u, distinct_u, rows, snapshots = conn.execute(
                sa.text(
                    """SELECT min(u) FILTER (WHERE is_snapshot), max(u), count(DISTINCT u),
                              count(*), count(*) FILTER (WHERE is_snapshot)
                       FROM book_events b JOIN instruments i ON i.id = b.instrument_id
                       WHERE i.symbol = :s"""
                ),
                {"s": symbol},
            ).one()
            sent = last_u - first_u + 1
            print(
                f"  {symbol}: messages sent from the first snapshot to the last {sent:,}, "
                f"update ids stored {distinct_u:,} (rows {rows:,}, snapshots {snapshots})"
            )
            ok &= distinct_u == sent
    print("RESULT: every message stored" if ok else "RESULT: MISSING ROWS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
