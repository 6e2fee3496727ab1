"""Every venue side by side: from subscribing to a valid book, the collector's
CPU per message at pace, and bytes on disk per message, with 20 symbols per
venue, in one run against one simulator.

    .venv/bin/python bench/bench_venues.py                       # 20 symbols, 10 steps/s
    .venv/bin/python bench/bench_venues.py --symbols 5 --seconds 20

One simulator (`depthwatch sim`, its own process) serves every venue's books of
the same symbols (Hyperliquid's coins: BTCUSDT -> BTC), `--rate` steps a second
each, `--levels` levels a side. Venue by venue, one collector (its own
process) records the 20 books into a scratch database of an embedded
PostgreSQL (DATABASE_URL's server when set): Bybit linear depth 50 (the
reference), Binance USDⓈ-M futures and spot (REST snapshot + diff stream,
whole books), Hyperliquid (20-level snapshots every step, stored as changes).

Reports per venue:
  - sync time (Binance: subscribe -> the book started from its REST snapshot,
    from the collector's log, all symbols starting together under the REST
    rate limit's default 10/s; Bybit and Hyperliquid send a snapshot on
    subscribing: the time to every book's first record);
  - CPU per message at pace: the collector's user+system CPU over
    `--seconds` of recording once every book runs, over the messages it
    recorded meanwhile;
  - bytes per message in book_chunks with its index, and a delta's payload;
  - for Hyperliquid, how many levels a stored message holds against the 40
    of the snapshot it stands for.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from bench_full import entries, log_time
from children import Child, Children, start_sim, wait_for
from common import cpu_seconds, exit_on_sigterm, machine_line, pct
from databases import database_server, fresh_database
from depthwatch.feed.registry import asset_of

SYMBOLS = [f"S{i:02d}USDT" for i in range(40)]
# venue -> (the collector's flags, the simulator's path, symbols as coins?)
VENUES: dict[str, tuple[tuple[str, ...], str, bool]] = {
    "bybit linear 50": (
        ("--exchange", "bybit", "--category", "linear", "--depth", "50"),
        "/v5/public/linear",
        False,
    ),
    "binance-futures": (
        (
            "--exchange",
            "binance-futures",
        ),
        "/binance-futures/stream",
        False,
    ),
    "binance": (
        (
            "--exchange",
            "binance",
        ),
        "/binance/stream",
        False,
    ),
    "hyperliquid": (
        (
            "--exchange",
            "hyperliquid",
        ),
        "/hyperliquid/ws",
        True,
    ),
}


def connected_at(collector: Child) -> float | None:
    times = [log_time(e) for e in entries(collector) if "connected to" in str(e["message"])]
    return times[0] if times else None


def rest_sync_times(collector: Child) -> list[float]:
    """Seconds from the first connect to each book's start from a REST snapshot."""
    lines = entries(collector)
    start = connected_at(collector)
    started: dict[str, float] = {}
    for e in lines:
        message = str(e["message"])
        if "book started from a REST snapshot" in message:
            started.setdefault(message.split(":")[1].split("@")[0], log_time(e))
    return [] if start is None else [t - start for t in started.values()]


def first_records(url: str) -> dict[str, float]:
    """Each stream's first recorded message: its receive time, in seconds."""
    from depthwatch.storage.read.book import message_batches
    from depthwatch.storage.read.streams import list_streams

    engine = sa.create_engine(url)
    firsts = {}
    try:
        with engine.connect() as conn:
            if not conn.execute(sa.text("SELECT to_regclass('book_chunks')")).scalar():
                return {}
            for stream in list_streams(conn):
                for batch, order in message_batches(conn, stream, 0, 2**62, levels=False):
                    if len(order):
                        firsts[stream.key] = float(batch.local_us[order].min()) / 1e6
                    break
    finally:
        engine.dispose()
    return firsts


def messages(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not conn.execute(sa.text("SELECT to_regclass('book_chunks')")).scalar():
                return 0
            return int(
                conn.execute(sa.text("SELECT coalesce(sum(n), 0) FROM book_chunks")).scalar_one()
            )
    finally:
        engine.dispose()


def storage(url: str) -> dict[str, float]:
    """book_chunks' size with its index per message; a delta's payload bytes
    and levels (chunks of deltas only)."""
    from depthwatch.storage.codec import SNAPSHOT
    from depthwatch.storage.read.book import message_batches
    from depthwatch.storage.read.streams import list_streams

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            total = conn.execute(
                sa.text(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "JOIN pg_inherits i ON i.inhrelid = c.oid "
                    "WHERE i.inhparent = CAST('book_chunks' AS regclass)"
                )
            ).scalar_one()
            n, payload = conn.execute(
                sa.text(
                    "SELECT coalesce(sum(n), 0), coalesce(sum(octet_length(payload)), 0) "
                    "FROM book_chunks WHERE NOT snapshot"
                )
            ).one()
            # Chunks holding a snapshot: the first message of each stream.
            snapshot_n, snapshot_payload = conn.execute(
                sa.text(
                    "SELECT coalesce(sum(n), 0), coalesce(sum(octet_length(payload)), 0) "
                    "FROM book_chunks WHERE snapshot"
                )
            ).one()
            count = conn.execute(
                sa.text("SELECT coalesce(sum(n), 0) FROM book_chunks")
            ).scalar_one()
            stream = list_streams(conn)[0]
            levels, deltas = 0, 0
            for batch, order in message_batches(conn, stream, 0, 2**62):
                delta = (batch.flags[order] & SNAPSHOT) == 0
                levels += int((batch.nb[order][delta] + batch.na[order][delta]).sum())
                deltas += int(delta.sum())
    finally:
        engine.dispose()
    return {
        "bytes_per_message": int(total) / max(1, int(count)),
        "delta_payload": int(payload) / max(1, int(n)),
        "levels_per_delta": levels / max(1, deltas),
        "snapshot_chunk_payload": int(snapshot_payload) / max(1, int(snapshot_n)),
    }


def run_venue(
    args: argparse.Namespace, server: str, port: int, name: str, logs: Path
) -> dict[str, float]:
    flags, path, coins = VENUES[name]
    symbols = SYMBOLS[: args.symbols]
    shown = [asset_of(s) for s in symbols] if coins else symbols
    url = fresh_database(server, "bench_venues_" + name.replace(" ", "_").replace("-", "_"))
    with Children(logs) as children:
        collector = children.start(
            "collector",
            [
                *("collect", *flags, "--symbols", ",".join(shown)),
                *("--ws-url", f"ws://127.0.0.1:{port}{path}"),
                *("--database-url", url, "--retention-days", "0"),
            ],
            env={"DEPTHWATCH_LOG_FORMAT": "json"},
        )
        wait_for(lambda: connected_at(collector), 60, f"{name} connected", collector)
        wait_for(
            lambda: len(first_records(url)) == len(symbols), 120, f"every {name} book", collector
        )
        start = connected_at(collector) or 0.0
        rest = rest_sync_times(collector)
        firsts = [t - start for t in first_records(url).values()]
        before_cpu, before_messages = cpu_seconds(collector.pid), messages(url)
        time.sleep(args.seconds)
        cpu = cpu_seconds(collector.pid) - before_cpu
        # Rows still queued in the writer count a few hundred ms late: both
        # ends of the window are read the same way, so the rate holds.
        recorded = messages(url) - before_messages
        collector.stop()
    times = sorted(rest or firsts)
    return {
        "sync_p50": pct(times, 50),
        "sync_p99": pct(times, 99),
        "sync_max": times[-1] if times else float("nan"),
        "cpu_us_per_message": cpu / max(1, recorded) * 1e6,
        "messages_per_s": recorded / args.seconds,
        **storage(url),
    }


def main() -> int:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--levels", type=int, default=1000, help="levels a side of a book")
    parser.add_argument("--rate", type=float, default=10.0, help="steps a second per symbol")
    parser.add_argument("--seconds", type=float, default=30.0, help="recording after sync")
    parser.add_argument("--venues", default=",".join(VENUES), help="comma-separated")
    args = parser.parse_args()
    print(machine_line())
    print(
        f"{args.symbols} symbols per venue, {args.levels:,} levels a side, {args.rate:g} "
        f"steps/s each, {args.seconds:g} s recorded after every book started"
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp, database_server(Path(tmp) / "pg") as server:
        logs = Path(tmp) / "logs"
        with Children(logs) as children:
            symbols = ",".join(SYMBOLS[: args.symbols])
            sim_args = ["--symbols", symbols, "--book-levels", str(args.levels)]
            sim_args += ["--rate", str(args.rate), "--trades-rate", "0", "--seed", "3"]
            sim_args += ["--prepare-full"]
            _, port = start_sim(children, sim_args)
            for name in args.venues.split(","):
                results[name] = run_venue(args, server, port, name, logs)
                r = results[name]
                print(
                    f"{name:>16}: sync p50 {r['sync_p50']:.2f} s, p99 {r['sync_p99']:.2f} s, "
                    f"max {r['sync_max']:.2f} s; CPU {r['cpu_us_per_message']:.1f} us/msg at "
                    f"{r['messages_per_s']:,.0f} msg/s; {r['bytes_per_message']:.1f} B/msg in "
                    f"book_chunks with its index, a delta's payload {r['delta_payload']:.1f} B, "
                    f"{r['levels_per_delta']:.2f} levels a delta (a chunk holding a snapshot: "
                    f"{r['snapshot_chunk_payload']:.0f} B a message)",
                    flush=True,
                )
    reference = results.get("bybit linear 50")
    if reference:
        for name, r in results.items():
            cpu = r["cpu_us_per_message"] / reference["cpu_us_per_message"]
            size = r["bytes_per_message"] / reference["bytes_per_message"]
            print(f"{name:>16} / bybit linear 50: CPU {cpu:.2f}x, bytes {size:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
