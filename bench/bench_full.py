"""The whole book (`--depth full`): how long from subscribing to a valid book,
and what 20 books of 10,000+ levels a side cost the collector.

    .venv/bin/python bench/bench_full.py                      # 20 symbols, 10,000 levels
    .venv/bin/python bench/bench_full.py --symbols 5 --levels 2000 --seconds 10

The simulator (`depthwatch sim`, its own process) serves `orderbook.full` and
the REST snapshots of books of `--levels` levels a side at Bybit's 200 ms
(`--rate 5` steps a second); the collector (`depthwatch collect --depth full`,
its own process) records them into a scratch database of an embedded
PostgreSQL (DATABASE_URL's server when set).

Reports:
  - sync time per symbol: from the connection's subscribe to the book's start
    (the collector's log lines), p50 / p99 / max, with all symbols starting
    together and the REST rate limit at its default (10 requests/s);
  - collector RSS once every book runs, and its peak (VmHWM), against the
    same collector recording the same symbols at depth 50 in the same run;
  - bytes on disk per whole-book delta, and per checkpoint of the whole book,
    beside depth 50's;
  - the whole book's profiles (book_profiles): a row's stored bytes;
  - the Live page's whole read of one stream, full against depth 50.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from children import Child, Children, sim_url, start_sim, wait_for
from common import exit_on_sigterm, machine_line, memory_mb, pct, peak_rss_mb
from databases import database_server, fresh_database
from depthwatch.records import PROFILE_INTERVAL_US

SYMBOLS = [f"S{i:02d}USDT" for i in range(40)]


def log_time(entry: dict[str, object]) -> float:
    return datetime.fromisoformat(str(entry["time"]).replace("Z", "+00:00")).timestamp()


def entries(child: Child) -> list[dict[str, object]]:
    out = []
    for line in child.output().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def sync_times(collector: Child, symbols: list[str]) -> dict[str, float]:
    """Seconds from the first connect line to each symbol's book start."""
    lines = entries(collector)
    connected = [log_time(e) for e in lines if "connected to" in str(e["message"])]
    started: dict[str, float] = {}
    for e in lines:
        message = str(e["message"])
        if "book started from a REST snapshot" in message:
            symbol = message.split(":")[1].split("@")[0]
            started.setdefault(symbol, log_time(e))
    if not connected:
        return {}
    return {s: started[s] - connected[0] for s in symbols if s in started}


def table_bytes(url: str, table: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                        "JOIN pg_inherits i ON i.inhrelid = c.oid "
                        "WHERE i.inhparent = CAST(:t AS regclass)"
                    ),
                    {"t": table},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def book_messages(url: str) -> tuple[int, int, int, int]:
    """Messages, checkpoints; and of the chunks holding no snapshot (deltas
    only): their messages and payload bytes."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            messages = conn.execute(sa.text("SELECT coalesce(sum(n), 0) FROM book_chunks"))
            checkpoints = conn.execute(sa.text("SELECT count(*) FROM book_checkpoints"))
            deltas = conn.execute(
                sa.text(
                    "SELECT coalesce(sum(n), 0), coalesce(sum(octet_length(payload)), 0) "
                    "FROM book_chunks WHERE NOT snapshot"
                )
            ).one()
            return (
                int(messages.scalar_one()),
                int(checkpoints.scalar_one()),
                int(deltas[0]),
                int(deltas[1]),
            )
    finally:
        engine.dispose()


def profiles(url: str) -> tuple[int, float]:
    """Whole-book profiles written, and a row's stored size (pg_column_size,
    after TOAST compression: a short run's table is mostly empty pages)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            count, row_bytes = conn.execute(
                sa.text(
                    "SELECT count(*), coalesce(avg(pg_column_size(p.*)), 0) FROM book_profiles p"
                )
            ).one()
    finally:
        engine.dispose()
    return int(count), float(row_bytes)


def live_read_ms(url: str, symbol: str, reads: int = 15) -> float:
    """Median time of the Live page's whole read (data.live_view: 10 min, 25
    levels, ±100 bps) of one stream, uncached, "now" pinned to its last second."""
    import statistics

    from depthwatch.app import data
    from depthwatch.storage.read.streams import list_streams

    engine = sa.create_engine(url)
    original_engine, original_now = data.engine, data.now_us
    try:
        with engine.connect() as conn:
            stream = next(s for s in list_streams(conn) if s.symbol == symbol)
            last = conn.execute(
                sa.text("SELECT max(ts_us) FROM top_seconds WHERE stream_id = :s"),
                {"s": stream.id},
            ).scalar_one()
        data.engine = lambda: engine  # type: ignore[assignment]
        data.now_us = lambda: int(last) + 1_000_000  # type: ignore[assignment]
        times = []
        for _ in range(reads + 3):
            data.live_view.clear()
            started = time.perf_counter()
            data.live_view(stream, 10, 25, 100)
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times[3:])
    finally:
        data.engine, data.now_us = original_engine, original_now
        engine.dispose()


def run(args: argparse.Namespace, server: str, depth: str, logs: Path) -> dict[str, float]:
    symbols = SYMBOLS[: args.symbols]
    url = fresh_database(server, f"bench_full_{depth}")
    with Children(logs) as children:
        sim_args = ["--symbols", ",".join(symbols), "--book-levels", str(args.levels)]
        sim_args += ["--rate", str(args.rate), "--trades-rate", "0", "--seed", "3"]
        sim_args += ["--prepare-full"]
        sim, port = start_sim(children, sim_args)
        collector = children.start(
            "collector",
            [
                *("collect", "--category", "spot", "--depth", depth),
                *("--symbols", ",".join(symbols), "--ws-url", sim_url(port, "spot")),
                *("--database-url", url, "--retention-days", "0"),
                *("--checkpoint-interval", str(args.checkpoint_interval)),
            ],
            env={"DEPTHWATCH_LOG_FORMAT": "json"},
        )
        started = time.monotonic()

        def all_started() -> bool:
            if depth != "full":
                return "connected to" in collector.output()
            return len(sync_times(collector, symbols)) == len(symbols)

        try:
            wait_for(all_started, 120, f"every {depth} book to start", collector, sim)
        except RuntimeError:
            print(collector.output()[-4000:])
            raise
        synced_after = time.monotonic() - started
        rss_synced = memory_mb(collector.pid)
        time.sleep(args.seconds)
        figures = {
            "rss_synced": rss_synced,
            "rss": memory_mb(collector.pid),
            "peak": peak_rss_mb(collector.pid),
            "all_synced_s": synced_after,
        }
        times = sync_times(collector, symbols) if depth == "full" else {}
        collector.stop()
    messages, checkpoints, deltas, delta_bytes = book_messages(url)
    profile_count, profile_bytes = profiles(url)
    figures |= {
        "profiles": profile_count,
        "profile_bytes": profile_bytes,
        "live_read_ms": live_read_ms(url, symbols[0]),
        "deltas": deltas,
        "delta_payload": delta_bytes / max(1, deltas),
        "messages": messages,
        "chunks_bytes": table_bytes(url, "book_chunks"),
        "checkpoints": checkpoints,
        "checkpoint_bytes": table_bytes(url, "book_checkpoints"),
    }
    if times:
        values = sorted(times.values())
        figures |= {"p50": pct(values, 50), "p99": pct(values, 99), "max": values[-1]}
    return figures


def main() -> int:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--levels", type=int, default=10_000, help="levels a side per book")
    parser.add_argument("--rate", type=float, default=5.0, help="deltas a second per symbol")
    parser.add_argument("--seconds", type=float, default=60.0, help="recording after sync")
    parser.add_argument("--checkpoint-interval", type=float, default=20.0)
    args = parser.parse_args()
    print(machine_line())
    print(
        f"{args.symbols} symbols, {args.levels:,} levels a side, {args.rate:g} deltas/s each, "
        f"{args.seconds:g} s recorded after every book started"
    )
    with tempfile.TemporaryDirectory() as tmp, database_server(Path(tmp) / "pg") as server:
        results = {d: run(args, server, d, Path(tmp) / "logs") for d in ("full", "50")}
    full, fifty = results["full"], results["50"]
    print(
        f"sync time, subscribe -> valid book: p50 {full['p50']:.2f} s, p99 {full['p99']:.2f} s, "
        f"max {full['max']:.2f} s (all {args.symbols} within {full['all_synced_s']:.1f} s)"
    )
    for name, r in results.items():
        per_message = r["chunks_bytes"] / max(1, r["messages"])
        per_checkpoint = r["checkpoint_bytes"] / max(1, r["checkpoints"])
        print(
            f"depth {name:>4}: RSS {r['rss']:.0f} MB (at sync {r['rss_synced']:.0f}, peak "
            f"{r['peak']:.0f}); {r['messages']:,} messages, {per_message:.1f} B each in "
            f"book_chunks with its index (snapshots included); a delta's payload "
            f"{r['delta_payload']:.1f} B (chunks of deltas only: {r['deltas']:,}); "
            f"{r['checkpoints']} checkpoints, {per_checkpoint / 1e3:.0f} kB each"
        )
    print(f"RSS ratio full / 50: {full['rss'] / fifty['rss']:.2f}x")
    per_day = full["profile_bytes"] * 86_400 / (PROFILE_INTERVAL_US / 1e6) / 1e6
    print(
        f"profiles: {full['profiles']:,}, {full['profile_bytes'] / 1e3:.1f} kB a row stored "
        f"(~{per_day:.0f} MB a day per symbol at the default interval, "
        f"{PROFILE_INTERVAL_US / 1e6:g} s)"
    )
    read_full, read_fifty = full["live_read_ms"], fifty["live_read_ms"]
    print(
        f"Live page read (10 min, +-100 bps / 25 levels), median: full {read_full:.0f} ms, "
        f"depth 50 {read_fifty:.0f} ms ({read_full / read_fifty:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
