"""Collector benchmark: throughput, CPU, latency, memory and disk, against
pybit's order book merge path measured in the same run on the same messages.

    .venv/bin/python bench/bench_collector.py            # full run (~3 minutes)
    .venv/bin/python bench/bench_collector.py --quick    # smaller, for a smoke test
    .venv/bin/python bench/bench_collector.py --baseline main --rounds 2
        # A/B: scenarios 2-5 run alternately on this tree and on a git worktree of
        # `main` (baseline, this, baseline, this ...), then medians side by side

The collector's figures are its process tree's (the collector and any
process it starts; issue 19 measured a packer process this way): CPU summed,
peak RSS each process's own peak summed (an upper bound).

Scenarios (the simulator runs in its own process, replaying pre-generated
Bybit-shaped depth-50 streams, so its cost is not the collector's):
  1. in-process merge path, no socket, no database: pybit's
     `_process_delta_orderbook` + deepcopy vs depthwatch's parse + book;
  2. flat out: the simulator sends as fast as the collector reads; messages
     persisted per second, collector CPU per message, receive-to-commit latency,
     peak RSS, bytes on disk per message;
  3. paced at 10,000 messages/s: receive-to-commit latency p50/p99;
  4. 100 symbols at depth 50 (synthetic, paced): collector peak RSS;
  6. steady pace: 20 symbols at 50 messages/s each (1,000 msg/s), the streams
     staggered as an exchange's are (`sim --stagger`), then in bursts (every
     symbol's message at the same moment, as Bybit pushes a connection's
     topics on 20 ms ticks): collector CPU per message over a 60 s window
     after 10 s of warm-up;
  7. pybit's bare WebSocket, flat out on the same replay, no database
     (bench/pybit_socket.py): messages/s received and merged, and scenario 2's
     persisted rate over it (issue 19's goal: 3x);
  8. scenario 2 sharded: two collectors, each with half the symbols, into
     one database (sharding by symbol, which a deployment can do today):
     the figures summed over both (latency: the worse of the two);
  5. bytes on disk per book message after --paced-minutes (default 60) of
     exchange time recorded at 50 messages/s per stream, 1 s depth snapshots,
     100 ms flushes, depth 50 and depth 1 (bench/record_paced.py: the real
     parser, book and writer, replayed faster than real time).

The machine is shared and noisy (30 % between runs): compare versions only
within one A/B run. The stream and scenario 1 are in collector_merge.py.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from children import Children, run_record_paced, sim_url, start_collector, start_sim
from collector_merge import DEPTH, generate_stream, mean_changed_levels, merge_path
from common import (
    Table,
    Version,
    cpu_seconds,
    exit_on_sigterm,
    machine_line,
    main_thread_cpu_seconds,
    tree_cpu_seconds,
    tree_peak_rss_mb,
    versions,
)
from databases import database_server, fresh_database
from depthwatch.storage.db import make_engine
from pybit_socket import pybit_socket_rate
from record_paced import LOG_TABLES, stored_messages, table_bytes


@dataclass
class Bench:
    """What every end-to-end scenario runs on: the replay files of the stream,
    its symbols, the PostgreSQL server, where the children's logs go."""

    files: list[Path]
    symbols: list[str]
    server_url: str
    logs: Path

    def replay_args(self) -> list[str]:
        return [arg for f in self.files for arg in ("--replay", str(f))]


def latency_from_log(log: str) -> tuple[float, float]:
    found = re.search(r"latency: p50 ([\d.]+) ms, p99 ([\d.]+) ms", log)
    return (float(found.group(1)), float(found.group(2))) if found else (float("nan"),) * 2


def disk_bytes(engine: sa.Engine) -> int:
    """Bytes on disk of the book log's tables, partitions, indexes and TOAST included."""
    return sum(table_bytes(engine, LOG_TABLES).values())


@dataclass
class RunResult:
    messages: int
    seconds: float
    cpu_us_per_msg: float
    sim_cpu_us_per_msg: float
    p50_ms: float
    p99_ms: float
    peak_rss_mb: float
    disk_bytes_per_msg: float


def run_replay(bench: Bench, rate: float, src: Path, shards: int = 1) -> RunResult:
    """The replay at `rate` (0: flat out) into a fresh database, by `shards`
    collectors each given every shards-th symbol (figures summed over them;
    latency the worst)."""
    database_url = fresh_database(bench.server_url, f"dw_bench_{int(rate)}")
    engine = make_engine(database_url)
    expected = sum(sum(1 for _ in f.open()) for f in bench.files)
    with Children(bench.logs) as children:
        sim, port = start_sim(
            children, [*bench.replay_args(), "--rate", str(rate), "--symbols", ""]
        )
        collectors = [
            start_collector(
                children,
                sim_url(port),
                database_url,
                bench.symbols[shard::shards],
                *("--depth", str(DEPTH)),
                src=src,
            )
            for shard in range(shards)
        ]
        first_row_at = None
        cpu_at_first_row = sim_cpu_at_first_row = 0.0
        deadline = time.monotonic() + 600
        while True:
            time.sleep(0.1)
            try:
                rows = stored_messages(engine)
            except sa.exc.OperationalError:
                # A deadlock with the collector's start-up DDL (its partitions
                # made while this poll reads two tables): poll again.
                rows = 0
            if rows and first_row_at is None:
                first_row_at = time.monotonic()
                # start-up excluded
                cpu_at_first_row = sum(tree_cpu_seconds(c.pid) for c in collectors)
                sim_cpu_at_first_row = cpu_seconds(sim.pid)
            if rows >= expected:
                break
            if time.monotonic() > deadline or not all(c.running() for c in collectors):
                # The logs go with the run's temporary directory: say why here.
                last_lines = "\n".join(c.output().rstrip()[-2000:] for c in collectors)
                raise RuntimeError(
                    f"collector stalled at {rows}/{expected} rows; its log ends:\n{last_lines}"
                )
            print(f"  ... {rows:,}/{expected:,} rows persisted", end="\r", file=sys.stderr)
        done_at = time.monotonic()
        cpu = sum(tree_cpu_seconds(c.pid) for c in collectors) - cpu_at_first_row
        sim_cpu = cpu_seconds(sim.pid) - sim_cpu_at_first_row
        rss = sum(tree_peak_rss_mb(c.pid) for c in collectors)
        for collector in collectors:
            collector.stop()
        logs = [collector.output() for collector in collectors]
    with engine.connect() as conn:
        # Receive times are columns of the schema 1-3 log only (packed, they
        # are inside the chunks): there, the span of the polling alone counts.
        span_us = (
            conn.execute(
                sa.text("SELECT max(local_us) - min(local_us) FROM book_events")
            ).scalar_one()
            if conn.execute(sa.text("SELECT to_regclass('book_events')")).scalar()
            else None
        )
    # From the first message received to the last commit seen by polling
    # (at most 0.1 s late), over every message of the run.
    seconds = max((span_us or 0) / 1e6, done_at - (first_row_at or done_at))
    latencies = [latency_from_log(log) for log in logs]
    p50, p99 = max(p[0] for p in latencies), max(p[1] for p in latencies)
    disk = disk_bytes(engine)
    engine.dispose()
    # CPU from the first row on covers all but the first flush's messages.
    return RunResult(
        expected,
        seconds,
        cpu * 1e6 / expected,
        sim_cpu * 1e6 / expected,
        p50,
        p99,
        rss,
        disk / expected,
    )


def run_steady_pace(
    bench: Bench, src: Path, warmup: float, window: float, stagger: bool
) -> tuple[float, float, float]:
    """(collector CPU us per message, of which its event loop's (the socket
    readers), messages/s) over `window` seconds of a 50 msg/s replay
    (staggered, or in bursts), after `warmup`. Messages are counted in the
    database (stored by the end of the window, so the count lags by at most
    a flush, the same for both ends)."""
    name = "dw_bench_steady" if stagger else "dw_bench_bursts"
    database_url = fresh_database(bench.server_url, name)
    engine = make_engine(database_url)
    try:
        with Children(bench.logs) as children:
            _, port = start_sim(
                children,
                [
                    *bench.replay_args(),
                    *("--rate", "50", "--symbols", ""),
                    *(("--stagger",) if stagger else ()),
                ],
            )
            collector = start_collector(
                children, sim_url(port), database_url, bench.symbols, "--depth", str(DEPTH), src=src
            )
            time.sleep(warmup)
            cpu0, loop0, rows0, t0 = (
                tree_cpu_seconds(collector.pid),
                main_thread_cpu_seconds(collector.pid),
                stored_messages(engine),
                time.monotonic(),
            )
            time.sleep(window)
            cpu1, loop1, rows1, t1 = (
                tree_cpu_seconds(collector.pid),
                main_thread_cpu_seconds(collector.pid),
                stored_messages(engine),
                time.monotonic(),
            )
            assert collector.running(), "collector died"
    finally:
        engine.dispose()
    messages = max(1, rows1 - rows0)
    return (
        (cpu1 - cpu0) * 1e6 / messages,
        (loop1 - loop0) * 1e6 / messages,
        messages / (t1 - t0),
    )


def run_many_symbols(bench: Bench, symbols: int, seconds: float, src: Path) -> tuple[float, int]:
    database_url = fresh_database(bench.server_url, "dw_bench_rss")
    names = [f"S{i:03d}USDT" for i in range(symbols)]
    with Children(bench.logs) as children:
        _, port = start_sim(
            children, ["--symbols", ",".join(names), "--rate", "20", "--trades-rate", "0"]
        )
        collector = start_collector(
            children, sim_url(port), database_url, names, "--depth", str(DEPTH), src=src
        )
        time.sleep(seconds)
        rss = tree_peak_rss_mb(collector.pid)
        assert collector.running(), "collector died"
    engine = make_engine(database_url)
    rows = stored_messages(engine)
    engine.dispose()
    return rss, rows


def run_paced_bytes(server_url: str, src: Path, depth: int, minutes: float) -> dict:
    """bench/record_paced.py on a fresh database, run from `src`."""
    database_url = fresh_database(server_url, f"dw_bench_paced_{depth}")
    result = run_record_paced(
        database_url, "--depth", str(depth), "--minutes", str(minutes), src=src
    )
    return dict(json.loads(result))


# ---- main ---------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, for smoke tests")
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--deltas", type=int, default=5_000, help="deltas per symbol")
    parser.add_argument(
        "--scenarios",
        default="1,2,3,4,5,6,7,8",
        help="which scenarios to run (default all: 1,2,3,4,5,6,7,8)",
    )
    parser.add_argument("--baseline", help="git ref to compare with (A/B, interleaved)")
    parser.add_argument(
        "--rounds", type=int, default=0, help="runs per version (default 2 with --baseline, else 1)"
    )
    parser.add_argument("--paced-minutes", type=float, default=60.0)
    args = parser.parse_args()
    if args.quick:
        args.symbols, args.deltas, args.paced_minutes = 4, 1_000, 2.0
    rounds = args.rounds or (2 if args.baseline else 1)
    exit_on_sigterm()

    print(machine_line())
    symbols = [f"B{i:02d}USDT" for i in range(args.symbols)]
    start_ms = int(time.time() * 1000) - 3_600_000
    streams = [generate_stream(s, args.deltas, 42, start_ms) for s in symbols]
    total = sum(len(s) for s in streams)
    print(
        f"stream: {args.symbols} symbols x {args.deltas} depth-{DEPTH} deltas = {total:,} "
        f"messages, {mean_changed_levels(streams):.1f} changed levels per delta"
    )

    chosen = {int(n) for n in args.scenarios.split(",")}
    if 1 in chosen:
        merge_path(streams)

    with (
        tempfile.TemporaryDirectory(prefix="depthwatch-bench-") as tmp,
        versions(args.baseline, Path(tmp)) as tried,
        database_server(Path(tmp)) as server_url,
    ):
        tmpdir = Path(tmp)
        files = []
        for symbol, messages in zip(symbols, streams, strict=True):
            path = tmpdir / f"{symbol}.jsonl"
            path.write_bytes(b"\n".join(messages) + b"\n")
            files.append(path)
        del streams
        bench = Bench(files, symbols, server_url, tmpdir / "logs")
        table = Table([v.name for v in tried])
        for round_ in range(rounds):
            for version in tried:
                tag = f"[{version.name}, round {round_ + 1}]"
                if 2 in chosen:
                    flat_out(bench, version, tag, table)
                if 3 in chosen:
                    paced(bench, version, tag, table)
                if 4 in chosen:
                    many_symbols(bench, args.quick, version, tag, table)
                if 5 in chosen:
                    paced_bytes(server_url, args.paced_minutes, version, tag, table)
                if 6 in chosen:
                    steady_pace(bench, args.quick, version, tag, table)
                if 8 in chosen:
                    flat_out(bench, version, tag, table, shards=2)
            if 7 in chosen:  # pybit is no version of ours: once per round
                pybit_flat_out(bench, f"[round {round_ + 1}]", table, [v.name for v in tried])
        table.print()
    return 0


def flat_out(bench: Bench, version: Version, tag: str, table: Table, shards: int = 1) -> None:
    """Scenario 2 (one collector), or 8 (`shards` collectors, by symbol)."""
    if shards == 1:
        n, label, who = 2, "2. flat out", "collector"
    else:
        n, label, who = 8, f"8. flat out, {shards} collectors", f"{shards} collectors, by symbol"
    print(f"\n{n}. end to end, flat out: simulator (own process) -> {who} -> PostgreSQL {tag}")
    flat = run_replay(bench, 0, version.src, shards)
    rate = flat.messages / flat.seconds
    print(
        f"   persisted                   : {rate:10,.0f} msg/s "
        f"({flat.messages:,} messages in {flat.seconds:.1f} s)"
    )
    print(
        f"   collector CPU               : {flat.cpu_us_per_msg:10.1f} us/msg "
        f"(simulator: {flat.sim_cpu_us_per_msg:.1f} us/msg)"
    )
    print(f"   receive-to-commit latency   : p50 {flat.p50_ms:.0f} ms, p99 {flat.p99_ms:.0f} ms")
    print(f"   collector peak RSS          : {flat.peak_rss_mb:10.0f} MB")
    print(f"   on disk, book tables        : {flat.disk_bytes_per_msg:10.0f} bytes/msg")
    for figure, value in (
        (f"{label}: msg/s persisted", rate),
        (f"{label}: collector CPU us/msg", flat.cpu_us_per_msg),
        (f"{label}: latency p99 ms", flat.p99_ms),
        (f"{label}: peak RSS MB", flat.peak_rss_mb),
        (f"{label}: bytes on disk/msg", flat.disk_bytes_per_msg),
    ):
        table.add(version.name, figure, value)


def pybit_flat_out(bench: Bench, tag: str, table: Table, names: list[str]) -> None:
    print(f"\n7. pybit's bare WebSocket, flat out: simulator (own process) -> pybit {tag}")
    expected = sum(sum(1 for _ in f.open()) for f in bench.files)
    with Children(bench.logs) as children:
        _, port = start_sim(children, [*bench.replay_args(), "--rate", "0", "--symbols", ""])
        rate = pybit_socket_rate(sim_url(port), bench.symbols, DEPTH, expected)
    print(f"   received and merged         : {rate:10,.0f} msg/s (no database)")
    for name in names:  # the yardstick of every version's scenario 2 alike
        table.add(name, "7. pybit bare WebSocket: msg/s", rate)
        persisted = table.values(name, "2. flat out: msg/s persisted")
        if persisted:
            table.add(name, "7. flat out persisted / pybit", persisted[-1] / rate)


def paced(bench: Bench, version: Version, tag: str, table: Table) -> None:
    per_symbol = 10_000 / len(bench.symbols)
    print(
        f"\n3. end to end, paced at 10,000 msg/s "
        f"({per_symbol:.0f}/s x {len(bench.symbols)} symbols) {tag}"
    )
    result = run_replay(bench, per_symbol, version.src)
    print(f"   persisted                   : {result.messages / result.seconds:10,.0f} msg/s")
    print(
        f"   receive-to-commit latency   : p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms"
    )
    print(f"   collector CPU               : {result.cpu_us_per_msg:10.1f} us/msg")
    table.add(version.name, "3. 10k msg/s: latency p99 ms", result.p99_ms)
    table.add(version.name, "3. 10k msg/s: collector CPU us/msg", result.cpu_us_per_msg)


def many_symbols(bench: Bench, quick: bool, version: Version, tag: str, table: Table) -> None:
    n, secs = (20, 10.0) if quick else (100, 30.0)
    print(f"\n4. {n} symbols at depth {DEPTH}, synthetic, 20 msg/s each, {secs:.0f} s {tag}")
    rss, rows = run_many_symbols(bench, n, secs, version.src)
    print(f"   collector peak RSS          : {rss:10.0f} MB ({rows:,} book messages written)")
    table.add(version.name, f"4. {n} symbols: peak RSS MB", rss)


def steady_pace(bench: Bench, quick: bool, version: Version, tag: str, table: Table) -> None:
    warmup, window = (5.0, 10.0) if quick else (10.0, 60.0)
    for stagger, how in ((True, "staggered"), (False, "in bursts")):
        print(
            f"\n6. steady pace: {len(bench.symbols)} symbols x 50 msg/s, {how}, "
            f"{window:.0f} s window after {warmup:.0f} s {tag}"
        )
        cpu, loop, rate = run_steady_pace(bench, version.src, warmup, window, stagger)
        print(f"   collector CPU               : {cpu:10.1f} us/msg ({rate:,.0f} msg/s stored)")
        rest = cpu - loop
        print(
            f"     event loop (readers)      : {loop:10.1f} us/msg (writer and the rest {rest:.1f})"
        )
        table.add(version.name, f"6. 50 msg/s x streams, {how}: CPU us/msg", cpu)
        table.add(version.name, f"6. {how}: event loop's part us/msg", loop)


def paced_bytes(server_url: str, minutes: float, version: Version, tag: str, table: Table) -> None:
    print(
        f"\n5. on disk after {minutes:g} min at 50 msg/s per stream "
        f"(4 streams), 100 ms flushes {tag}"
    )
    for depth in (DEPTH, 1):
        result = run_paced_bytes(server_url, version.src, depth, minutes)
        parts = ", ".join(f"{t} {b}" for t, b in result["tables"].items())
        print(
            f"   depth {depth:2d}: {result['bytes_per_msg']:6.1f} bytes/msg over "
            f"{result['messages']:,} messages ({parts})"
        )
        table.add(
            version.name, f"5. paced, depth {depth}: bytes on disk/msg", result["bytes_per_msg"]
        )


if __name__ == "__main__":
    sys.exit(main())
