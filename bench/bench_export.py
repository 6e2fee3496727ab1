"""Export benchmark: `depthwatch export` rows/s and peak RSS over recorded
history, per kind and format.

    .venv/bin/python bench/bench_export.py                       # this tree only
    .venv/bin/python bench/bench_export.py --baseline main       # A/B, interleaved
    .venv/bin/python bench/bench_export.py --minutes 10 --kinds quotes --formats csv
    .venv/bin/python bench/bench_export.py --minutes 1 --rate 2000 --baseline main  # a busy stream

Each version records the same history into its own database with its own
writer (bench/record_paced.py: one depth-50 stream at 50 messages/s, and a
trade after every book message, for --minutes of exchange time; the default
360 is 1.08 million book messages, ~7 million incremental_book_L2 rows, and
1.08 million trades), then exports every kind in every format with its own
`depthwatch export` (a fresh process per run: rows/s from start to exit, peak
RSS from the kernel). A baseline runs only the kinds and formats it knows.
Rounds alternate versions (baseline, this, baseline, this ...); the machine
is shared and noisy, so compare within one run.
"""

from __future__ import annotations

import argparse
import gzip
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

KINDS = (
    "incremental_book_L2",
    "quotes",
    "trades",
    "book_snapshot_25",
    "book_snapshot_25_100ms",
    "book_snapshot_5_1s",
)
FORMATS = ("csv", "csv.gz", "parquet")
SYMBOL = "P00USDT"  # record_paced.py's first stream


def record(server_url: str, version: Version, minutes: float, rate: float, end_ms: int) -> str:
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
            "--rate",
            str(rate),
            "--end-ms",
            str(end_ms),
            "--trades-every",
            "1",
        ],
        env=env(version.src),
        check=True,
        capture_output=True,
    )
    return database_url


def export(
    database_url: str, version: Version, kind: str, fmt: str, start: str, end: str, out: Path
) -> tuple[int, float, float] | None:
    """(rows, seconds, peak RSS MB) of one export run in a fresh process; None
    if this version cannot export the kind or format."""
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
            "--format",
            fmt,
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
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if status != 0:
        if "invalid choice" in stderr or "unknown kind" in stderr:
            return None  # a baseline without this kind or format
        raise RuntimeError(f"export failed: {stderr}")
    return count_rows(out, fmt), seconds, usage.ru_maxrss / 1024


def count_rows(path: Path, fmt: str) -> int:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    opener = gzip.open if fmt == "csv.gz" else open
    with opener(path, "rb") as f:
        return sum(1 for _ in f) - 1  # the header


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="git ref to compare with (A/B, interleaved)")
    parser.add_argument("--rounds", type=int, default=0, help="default 2 with --baseline, else 1")
    parser.add_argument("--minutes", type=float, default=360.0, help="of history recorded")
    parser.add_argument(
        "--rate",
        type=float,
        default=50.0,
        help="book messages/s of the recorded stream (default 50; a busy stream's "
        "chunks hold hundreds of messages)",
    )
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated")
    args = parser.parse_args()
    kinds, formats = args.kinds.split(","), args.formats.split(",")
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
                print(
                    f"recording {args.minutes:g} min of {SYMBOL} at {args.rate:g} msg/s "
                    f"with {version.name} ..."
                )
                databases[version.name] = record(
                    server_url, version, args.minutes, args.rate, end_ms
                )
            for round_ in range(rounds):
                for kind in kinds:
                    for fmt in formats:
                        for version in versions:
                            out = tmpdir / f"{kind}.{fmt}"
                            result = export(
                                databases[version.name], version, kind, fmt, start, end, out
                            )
                            out.unlink(missing_ok=True)
                            if result is None:
                                continue
                            rows, seconds, rss = result
                            print(
                                f"  [{version.name}, round {round_ + 1}] {kind:22} {fmt:7} "
                                f"{rows:10,} rows in {seconds:6.1f} s = "
                                f"{rows / seconds:9,.0f} rows/s, peak RSS {rss:4.0f} MB",
                                flush=True,
                            )
                            table.add(version.name, f"{kind} {fmt}: rows/s", rows / seconds)
                            table.add(version.name, f"{kind} {fmt}: peak RSS MB", rss)
        finally:
            if args.baseline:
                remove_baseline_tree(tmpdir)
        table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
