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
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from children import Children, run_record_paced
from common import Table, Version, exit_on_sigterm, machine_line, versions
from databases import database_server, fresh_database

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
    run_record_paced(
        database_url,
        *("--streams", "1", "--minutes", str(minutes), "--rate", str(rate)),
        *("--end-ms", str(end_ms), "--trades-every", "1"),
        src=version.src,
    )
    return database_url


def export(
    children: Children,
    database_url: str,
    version: Version,
    kind: str,
    fmt: str,
    span: tuple[str, str],
    out: Path,
) -> tuple[int, float, float] | None:
    """(rows, seconds, peak RSS MB) of one export run in a fresh process; None
    if this version cannot export the kind or format."""
    started = time.perf_counter()
    child = children.start(
        "export",
        [
            *("export", "--kind", kind, "--symbol", SYMBOL, "--start", span[0], "--end", span[1]),
            *("--format", fmt, "--out", str(out), "--quiet", "--database-url", database_url),
        ],
        src=version.src,
    )
    _, status, usage = os.wait4(child.pid, 0)  # its own peak RSS, from the kernel
    seconds = time.perf_counter() - started
    child.proc.returncode = os.waitstatus_to_exitcode(status)
    if status != 0:
        if "invalid choice" in child.output() or "unknown kind" in child.output():
            return None  # a baseline without this kind or format
        raise RuntimeError(f"export failed: {child.output()}")
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
    exit_on_sigterm()
    print(machine_line())
    end_ms = (int(time.time()) // 60) * 60_000
    start = datetime.fromtimestamp(end_ms / 1000 - args.minutes * 60 - 60, UTC).isoformat()
    end = datetime.fromtimestamp(end_ms / 1000 + 60, UTC).isoformat()
    with (
        tempfile.TemporaryDirectory(prefix="depthwatch-bench-export-") as tmp,
        versions(args.baseline, Path(tmp)) as tried,
        database_server(Path(tmp)) as server_url,
        Children(Path(tmp) / "logs") as children,
    ):
        tmpdir = Path(tmp)
        table = Table([v.name for v in tried])
        databases = {}
        for version in tried:
            print(
                f"recording {args.minutes:g} min of {SYMBOL} at {args.rate:g} msg/s "
                f"with {version.name} ..."
            )
            databases[version.name] = record(server_url, version, args.minutes, args.rate, end_ms)
        for round_ in range(rounds):
            for kind in kinds:
                for fmt in formats:
                    for version in tried:
                        out = tmpdir / f"{kind}.{fmt}"
                        result = export(
                            children, databases[version.name], version, kind, fmt, (start, end), out
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
        table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
