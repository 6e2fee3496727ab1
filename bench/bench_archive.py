"""Archive benchmark: `depthwatch archive` over recorded days of the bench
stream (record_paced.py: depth 50, the simulator's market, a trade after every
book message), against `depthwatch export` of the same day in the same run.

    .venv/bin/python bench/bench_archive.py                      # 1 day, 1 M messages
    .venv/bin/python bench/bench_archive.py --days 3 --messages 200000

Prints, per run: archive bytes per book message (L2 Parquet, and Tardis csv.gz
of the same day), the archive's L2 rows/s (whole run: L2, quotes, trades, gaps
written, read back and checked) beside the L2 Parquet export's, both
processes' peak RSS, and the quotes of every recorded day read back with
DuckDB from the archive beside `depthwatch export --kind quotes` of the range.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from children import Children, run_record_paced
from common import exit_on_sigterm, machine_line
from databases import database_server, fresh_database
from depthwatch.clock import DAY_US, now_us, utc_day

SYMBOL = "P00USDT"  # record_paced.py's first stream


def timed(children: Children, name: str, args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS MB) of `depthwatch ARGS` run to its end."""
    started = time.perf_counter()
    child = children.start(name, args)
    _, status, usage = os.wait4(child.pid, 0)
    child.proc.returncode = os.waitstatus_to_exitcode(status)
    if status:
        raise RuntimeError(f"{name} failed: {child.output()}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def main() -> int:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=1, help="UTC days recorded")
    parser.add_argument("--messages", type=int, default=1_000_000, help="book messages a day")
    parser.add_argument(
        "--flush-ms",
        type=int,
        default=10_000,
        help="exchange time between the recorder's flushes (more: a month records faster)",
    )
    args = parser.parse_args()
    print(machine_line(detail=True))
    # The last recorded day is yesterday (finished unless the run starts in
    # the ten minutes after midnight), so --hot-days 2 keeps two of them.
    first_day = now_us() // DAY_US - args.days
    end_ms = (first_day + args.days) * DAY_US // 1000
    rate = args.messages / 86_400
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp:
        base = Path(tmp)
        with database_server(base / "pg") as server, Children(base / "logs") as children:
            url = fresh_database(server, "dw_bench_archive")
            started = time.perf_counter()
            run_record_paced(
                url,
                *("--streams", "1", "--minutes", str(args.days * 1440), "--rate", f"{rate:.4f}"),
                *("--end-ms", str(end_ms - 1), "--trades-every", "1"),
                # A flush per 10 s of exchange time: a day at the collector's
                # 250 ms would be 345,600 flushes to record. The archive's files
                # do not depend on how the log was cut into chunks.
                *("--flush-ms", str(args.flush_ms)),
            )
            print(f"recorded {args.days} day(s) x {args.messages:,} messages in "
                  f"{time.perf_counter() - started:.0f} s")  # fmt: skip
            root = base / "archive"
            seconds, rss = timed(
                children,
                "archive",
                [
                    "archive",
                    "--archive-url",
                    str(root),
                    "--database-url",
                    url,
                    "--format",
                    "csv.gz",
                ],
            )
            log_bytes = sum(p.stat().st_size for p in root.glob("bybit/_log/**/*.parquet"))
            manifests = sorted(root.glob("bybit/_manifests/**/*.json"))
            files = [f for m in manifests for f in json.loads(m.read_text())["files"]]
            messages = sum(json.loads(m.read_text())["source"]["messages"] for m in manifests)
            size = {
                fmt: sum(f["bytes"] for f in files if f["kind"] == "incremental_book_L2"
                         and f["format"] == fmt)
                for fmt in ("parquet", "csv.gz")
            }  # fmt: skip
            l2_rows = sum(
                f["rows"]
                for f in files
                if f["kind"] == "incremental_book_L2" and f["format"] == "parquet"
            )
            day = utc_day(first_day * DAY_US)
            export_s, export_rss = timed(
                children,
                "export",
                [
                    *("export", "--kind", "incremental_book_L2", "--symbol", SYMBOL),
                    *("--start", day, "--end", utc_day((first_day + 1) * DAY_US)),
                    *("--format", "parquet", "--out", str(base / "l2.parquet"), "--quiet"),
                    *("--database-url", url),
                ],
            )
            export_rows = l2_rows // args.days  # the first day's
            print(f"book messages archived: {messages:,}; L2 rows: {l2_rows:,}")
            for fmt, total in size.items():
                print(f"  L2 {fmt:8} {total / 1e6:8.1f} MB  {total / messages:6.1f} bytes/message")
            per_message = log_bytes / messages
            print(f"  the log   {log_bytes / 1e6:8.1f} MB  {per_message:6.1f} bytes/message "
                  "(_log: chunks, checkpoints, trades, events, heartbeats)")  # fmt: skip
            print(f"archive (csv.gz too): {seconds:.1f} s, {l2_rows / seconds:,.0f} L2 rows/s, "
                  f"peak RSS {rss:.0f} MB")  # fmt: skip
            rate_s = export_rows / export_s
            print(f"export L2 Parquet of {day}: {export_s:.1f} s, ~{rate_s:,.0f} rows/s, "
                  f"peak RSS {export_rss:.0f} MB")  # fmt: skip
            import duckdb

            started = time.perf_counter()
            (quotes,) = duckdb.sql(
                f"""SELECT count(*) FROM read_parquet(
                        '{root}/bybit/quotes/*/*/*/*.parquet', hive_partitioning = true)
                    WHERE symbol = '{SYMBOL}'"""
            ).fetchall()
            duck_s = time.perf_counter() - started
            quotes_s, _ = timed(
                children,
                "export-quotes",
                [
                    *("export", "--kind", "quotes", "--symbol", SYMBOL, "--start", day),
                    *("--end", utc_day((first_day + args.days) * DAY_US)),
                    *("--format", "parquet", "--out", str(base / "q.parquet"), "--quiet"),
                    *("--database-url", url),
                ],
            )
            count = quotes[0]
            print(f"quotes of {args.days} day(s) ({count:,} rows): DuckDB over the archive "
                  f"{duck_s:.2f} s, depthwatch export {quotes_s:.1f} s")  # fmt: skip
            l2_to_parquet(url, first_day, base)
            if args.days >= 3:
                hot_days(children, server, url, root, first_day, args.days)
    return 0


def l2_to_parquet(url: str, day: int, base: Path, rounds: int = 3) -> None:
    """A day's incremental_book_L2 from the packed log to a Parquet file, in
    this process (no start-up), made in columns (export.columnar: what the
    export and the archive do) against the row path (CSV's rows into the same
    Parquet writer); best of `rounds`, alternated."""
    from depthwatch.export.sinks import ParquetSink
    from depthwatch.export.tardis import ExportRequest, Progress, export, request_rows
    from depthwatch.storage.db import make_engine

    engine = make_engine(url)
    request = ExportRequest(
        "incremental_book_L2", "linear", SYMBOL, day * DAY_US, (day + 1) * DAY_US
    )

    def by_columns(path: Path) -> int:
        with path.open("wb") as out:
            return export(engine, request, ParquetSink(request.kind, out), progress_to=None)

    def by_rows(path: Path) -> int:
        with path.open("wb") as out, engine.connect() as conn:
            sink = ParquetSink(request.kind, out)
            sink.begin(request)
            rows = list(request_rows(conn, request, Progress([request], None)))
            for start in range(0, len(rows), 5_000):
                sink.write(rows[start : start + 5_000])
            sink.close()
            return len(rows)

    best = {"columns": float("inf"), "rows": float("inf")}
    counted = {}
    for _ in range(rounds):
        for name, make in (("columns", by_columns), ("rows", by_rows)):
            started = time.perf_counter()
            counted[name] = make(base / f"l2-{name}.parquet")
            best[name] = min(best[name], time.perf_counter() - started)
    engine.dispose()
    assert counted["columns"] == counted["rows"], counted
    rows = counted["columns"]
    cols, by_row = rows / best["columns"], rows / best["rows"]
    print(f"L2 to Parquet in process ({rows:,} rows, best of {rounds}): columns "
          f"{cols:,.0f} rows/s, rows {by_row:,.0f} rows/s ({cols / by_row:.2f}x)")  # fmt: skip


def hot_days(
    children: Children, server: str, url: str, root: Path, first_day: int, days: int
) -> None:
    """The database's size with `--hot-days 2` against two recorded days'
    worth: pg_database_size after the drop, less an empty database's (schema
    only), over twice a recorded day's partitions (tables and indexes)."""
    import sqlalchemy as sa

    from depthwatch.storage import schema
    from depthwatch.storage.db import make_engine

    def size_of(database_url: str) -> tuple[int, list[int]]:
        engine = make_engine(database_url)
        try:
            with engine.connect() as conn:
                total = conn.execute(sa.text("SELECT pg_database_size(current_database())"))
                parts = conn.execute(
                    sa.text(
                        """SELECT c.relname, pg_total_relation_size(c.oid)
                           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"""
                    )
                ).all()
                return int(total.scalar_one()), [int(b) for _, b in parts]
        finally:
            engine.dispose()

    empty_url = fresh_database(server, "dw_bench_archive_empty")
    empty_engine = make_engine(empty_url)
    schema.upgrade(empty_engine)
    empty_engine.dispose()
    empty, _ = size_of(empty_url)
    before, parts = size_of(url)
    day_mean = sum(parts) / days
    timed(children, "archive-hot", ["archive", "--archive-url", str(root),
                                    "--database-url", url, "--hot-days", "2"])  # fmt: skip
    after, _ = size_of(url)
    ratio = (after - empty) / (2 * day_mean)
    print(f"--hot-days 2 after {days} recorded days: database {before / 1e6:.1f} MB -> "
          f"{after / 1e6:.1f} MB (empty schema {empty / 1e6:.1f} MB); a recorded day "
          f"{day_mean / 1e6:.1f} MB; (after - empty) / 2 days = {ratio:.2f}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
