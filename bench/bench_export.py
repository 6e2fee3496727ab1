"""Export benchmark: `depthwatch export` rows/s and peak RSS over recorded history.

    .venv/bin/python bench/bench_export.py                       # this tree only
    .venv/bin/python bench/bench_export.py --baseline main       # A/B, interleaved

Each version records the same history into its own database with its own
writer (bench/record_paced.py: one depth-50 stream at 50 messages/s for
--minutes of exchange time, default 60: ~180,000 messages, ~1.2 million
incremental_book_L2 rows), then exports it with its own `depthwatch export`
(a fresh process per run: rows/s from start to exit, peak RSS from the
kernel). Rounds alternate versions (baseline, this, baseline, this ...); the
machine is shared and noisy, so compare within one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_collector import (
    ROOT,
    SRC,
    Table,
    Version,
    baseline_tree,
    env,
    fresh_database,
    remove_baseline_tree,
)
from depthwatch.storage.db import normalise_url, start_embedded

KINDS = ("incremental_book_L2", "quotes")
SYMBOL = "P00USDT"  # record_paced.py's first stream


def record(server_url: str, version: Version, minutes: float, end_ms: int) -> str:
    database_url = fresh_database(server_url, f"dw_bench_export_{version.name}".replace("-", "_"))
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "record_paced.py"),
            "--database-url",
            database_url,
            "--streams",
            "1",
            "--minutes",
            str(minutes),
            "--end-ms",
            str(end_ms),
        ],
        env=env(version.src),
        check=True,
        capture_output=True,
    )
    return database_url


def export(database_url: str, version: Version, kind: str, start: str, end: str, out: Path):
    """(rows, seconds, peak RSS MB) of one export run in a fresh process."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "depthwatch.cli",
            "export",
            "--kind",
            kind,
            "--symbol",
            SYMBOL,
            "--start",
            start,
            "--end",
            end,
            "--out",
            str(out),
            "--quiet",
            "--database-url",
            database_url,
        ],
        env=env(version.src),
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"export failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    with out.open("rb") as f:
        rows = sum(1 for _ in f) - 1  # the header
    return rows, seconds, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="git ref to compare with (A/B, interleaved)")
    parser.add_argument("--rounds", type=int, default=0, help="default 2 with --baseline, else 1")
    parser.add_argument("--minutes", type=float, default=60.0, help="of history recorded")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.baseline else 1)
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus, "
        f"Python {platform.python_version()}"
    )
    end_ms = (int(time.time()) // 60) * 60_000
    start = datetime.fromtimestamp(end_ms / 1000 - args.minutes * 60 - 60, UTC).isoformat()
    end = datetime.fromtimestamp(end_ms / 1000 + 60, UTC).isoformat()
    with tempfile.TemporaryDirectory(prefix="depthwatch-bench-export-") as tmp:
        tmpdir = Path(tmp)
        versions = [Version("this", SRC)]
        if args.baseline:
            versions.insert(
                0, Version(args.baseline, baseline_tree(args.baseline, tmpdir) / "streamlit")
            )
        configured = os.environ.get("DATABASE_URL")
        server_url = normalise_url(configured) if configured else start_embedded(tmpdir)
        table = Table([v.name for v in versions])
        try:
            databases = {}
            for version in versions:
                print(f"recording {args.minutes:g} min of {SYMBOL} with {version.name} ...")
                databases[version.name] = record(server_url, version, args.minutes, end_ms)
            for round_ in range(rounds):
                for version in versions:
                    for kind in KINDS:
                        out = tmpdir / f"{kind}.csv"
                        rows, seconds, rss = export(
                            databases[version.name], version, kind, start, end, out
                        )
                        out.unlink()
                        print(
                            f"  [{version.name}, round {round_ + 1}] {kind:20} {rows:10,} rows "
                            f"in {seconds:5.1f} s = {rows / seconds:9,.0f} rows/s, "
                            f"peak RSS {rss:4.0f} MB"
                        )
                        table.add(version.name, f"{kind} CSV: rows/s", rows / seconds)
                        table.add(version.name, f"{kind} CSV: peak RSS MB", rss)
        finally:
            if args.baseline:
                remove_baseline_tree(tmpdir)
        table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
