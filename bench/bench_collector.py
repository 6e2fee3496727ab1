"""Collector benchmark: throughput, CPU, latency, memory and disk, against
pybit's order book merge path measured in the same run on the same messages.

    .venv/bin/python bench/bench_collector.py            # full run (~3 minutes)
    .venv/bin/python bench/bench_collector.py --quick    # smaller, for a smoke test
    .venv/bin/python bench/bench_collector.py --baseline main --rounds 2
        # A/B: scenarios 2-5 run alternately on this tree and on a git worktree of
        # `main` (baseline, this, baseline, this ...), then medians side by side

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
     staggered as an exchange's are (`sim --stagger`): collector CPU per
     message over a 60 s window after 10 s of warm-up;
  5. bytes on disk per book message after --paced-minutes (default 60) of
     exchange time recorded at 50 messages/s per stream, 1 s depth snapshots,
     100 ms flushes, depth 50 and depth 1 (bench/record_paced.py: the real
     parser, book and writer, replayed faster than real time).

The machine is shared and noisy (30 % between runs): compare versions only
within one A/B run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "streamlit"
sys.path.insert(0, str(SRC))

from depthwatch.book import StreamBook  # noqa: E402
from depthwatch.feed.parse import FeedParser  # noqa: E402
from depthwatch.sim.market import DepthView, MarketBook, spec_for  # noqa: E402
from depthwatch.storage.db import make_engine, normalise_url, start_embedded  # noqa: E402
from record_paced import LOG_TABLES, stored_messages, table_bytes  # noqa: E402

DEPTH = 50


# ---- the stream -------------------------------------------------------------


def generate_stream(symbol: str, deltas: int, seed: int, start_ms: int) -> list[bytes]:
    """A snapshot and `deltas` deltas of a synthetic depth-50 book, Bybit-shaped."""
    import random

    book = MarketBook(spec_for(symbol), 200, random.Random(f"{seed}:{symbol}"))
    view = DepthView(book, DEPTH)
    topic = f"orderbook.{DEPTH}.{symbol}"
    u, seq, ts = 1_000_000, 5_000_000_000, start_ms
    bids, asks = view.snapshot()
    out = [_message(topic, "snapshot", symbol, bids, asks, u, seq, ts)]
    while len(out) <= deltas:
        bids, asks = view.diff(book.step())
        if not bids and not asks:
            continue
        u, seq, ts = u + 1, seq + 7, ts + 20
        out.append(_message(topic, "delta", symbol, bids, asks, u, seq, ts))
    return out


def _message(topic, kind, symbol, bids, asks, u, seq, ts) -> bytes:
    data = {"s": symbol, "b": bids, "a": asks, "u": u, "seq": seq}
    return orjson.dumps({"topic": topic, "type": kind, "ts": ts, "data": data, "cts": ts - 2})


# ---- scenario 1: merge path in process ---------------------------------------


def pybit_merge_rate(streams: list[list[bytes]]) -> tuple[float, bool]:
    """pybit 5.17's path per message: json.loads, _process_delta_orderbook, deepcopy
    of the message with the merged book (what its callback receives)."""
    from pybit._websocket_stream import _V5WebSocketManager

    manager = _V5WebSocketManager.__new__(_V5WebSocketManager)
    manager.data = {}
    received = []
    count = 0
    start = time.perf_counter()
    for messages in streams:
        for raw in messages:
            message = json.loads(raw)
            topic = message["topic"]
            manager._process_delta_orderbook(message, topic)
            callback_data = copy.deepcopy(message)
            callback_data["type"] = "snapshot"
            callback_data["data"] = manager.data[topic]
            received.append(callback_data["data"]["b"][0][0])
            count += 1
    elapsed = time.perf_counter() - start
    # Is pybit's best bid (b[0]) still the best bid after the last message?
    sorted_ok = all(
        float(book["b"][0][0]) == max(float(p) for p, _ in book["b"])
        for book in manager.data.values()
    )
    return count / elapsed, sorted_ok


class _NullSink:
    def add_book_update(self, update) -> None:
        pass

    def add_quote(self, quote) -> None:
        pass

    def add_depth_snapshot(self, snapshot) -> None:
        pass

    def add_checkpoint(self, checkpoint) -> None:
        pass

    def add_feed_event(self, event) -> None:
        pass


def depthwatch_merge_rate(streams: list[list[bytes]]) -> float:
    """depthwatch's path per message: orjson parse + validation, exact book with
    u continuity, quote and snapshot derivation (records to a null sink)."""
    parser = FeedParser("linear")
    sink = _NullSink()
    books: dict = {}
    count = 0
    start = time.perf_counter()
    for messages in streams:
        for raw in messages:
            update = parser.parse(raw, 0)
            book = books.get(update.stream)
            if book is None:
                book = books[update.stream] = StreamBook(update.stream, sink)
            book.apply(update)
            count += 1
    return count / (time.perf_counter() - start)


# ---- processes ----------------------------------------------------------------


def env(src: Path = SRC) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(src)
    return e


@dataclass
class Version:
    """A depthwatch source tree the collector runs from (the simulator always
    runs from this tree, so both versions read the same feed)."""

    name: str
    src: Path


def start_sim(args: list[str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "depthwatch.cli",
            "--log-level",
            "INFO",
            "sim",
            "--port",
            "0",
            *args,
        ],
        env=env(),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(r"listening on ws://127\.0\.0\.1:(\d+)/", line)
        if found:
            return proc, int(found.group(1))
    raise RuntimeError("simulator did not start")


def start_collector(
    port: int, symbols: list[str], database_url: str, src: Path = SRC
) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "depthwatch.cli",
            "collect",
            "--symbols",
            ",".join(symbols),
            "--depth",
            str(DEPTH),
            "--ws-url",
            f"ws://127.0.0.1:{port}/v5/public/linear",
            "--database-url",
            database_url,
            "--retention-days",
            "0",
        ],
        env=env(src),
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    return stderr or ""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def latency_from_log(stderr: str) -> tuple[float, float]:
    found = re.search(r"latency: p50 ([\d.]+) ms, p99 ([\d.]+) ms", stderr)
    return (float(found.group(1)), float(found.group(2))) if found else (float("nan"),) * 2


def fresh_database(server_url: str, name: str) -> str:
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)


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


def run_replay(
    files: list[Path], symbols: list[str], rate: float, server_url: str, src: Path = SRC
) -> RunResult:
    database_url = fresh_database(server_url, f"dw_bench_{int(rate)}")
    engine = make_engine(database_url)
    expected = sum(sum(1 for _ in f.open()) for f in files)
    replay_args = [arg for f in files for arg in ("--replay", str(f))]
    sim, port = start_sim([*replay_args, "--rate", str(rate), "--symbols", ""])
    collector = start_collector(port, symbols, database_url, src)
    try:
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
                cpu_at_first_row = cpu_seconds(collector.pid)  # start-up excluded
                sim_cpu_at_first_row = cpu_seconds(sim.pid)
            if rows >= expected:
                break
            if time.monotonic() > deadline or collector.poll() is not None:
                raise RuntimeError(f"collector stalled at {rows}/{expected} rows")
            print(f"  ... {rows:,}/{expected:,} rows persisted", end="\r", file=sys.stderr)
        done_at = time.monotonic()
        cpu = cpu_seconds(collector.pid) - cpu_at_first_row
        sim_cpu = cpu_seconds(sim.pid) - sim_cpu_at_first_row
        rss = peak_rss_mb(collector.pid)
    finally:
        log = stop(collector)
        stop(sim)
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
    p50, p99 = latency_from_log(log)
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
    files: list[Path], symbols: list[str], server_url: str, src: Path, warmup: float, window: float
) -> tuple[float, float]:
    """(collector CPU us per message, messages/s) over `window` seconds of a
    staggered 50 msg/s replay, after `warmup`. Messages are counted in the
    database (stored by the end of the window, so the count lags by at most
    a flush, the same for both ends)."""
    database_url = fresh_database(server_url, "dw_bench_steady")
    engine = make_engine(database_url)
    replay_args = [arg for f in files for arg in ("--replay", str(f))]
    sim, port = start_sim([*replay_args, "--rate", "50", "--stagger", "--symbols", ""])
    collector = start_collector(port, symbols, database_url, src)
    try:
        time.sleep(warmup)
        cpu0, rows0, t0 = cpu_seconds(collector.pid), stored_messages(engine), time.monotonic()
        time.sleep(window)
        cpu1, rows1, t1 = cpu_seconds(collector.pid), stored_messages(engine), time.monotonic()
        assert collector.poll() is None, "collector died"
    finally:
        stop(collector)
        stop(sim)
        engine.dispose()
    messages = max(1, rows1 - rows0)
    return (cpu1 - cpu0) * 1e6 / messages, messages / (t1 - t0)


def run_many_symbols(
    server_url: str, symbols: int, seconds: float, src: Path = SRC
) -> tuple[float, int]:
    database_url = fresh_database(server_url, "dw_bench_rss")
    names = [f"S{i:03d}USDT" for i in range(symbols)]
    sim, port = start_sim(["--symbols", ",".join(names), "--rate", "20", "--trades-rate", "0"])
    collector = start_collector(port, names, database_url, src)
    try:
        time.sleep(seconds)
        rss = peak_rss_mb(collector.pid)
        assert collector.poll() is None, "collector died"
    finally:
        stop(collector)
        stop(sim)
    engine = make_engine(database_url)
    rows = stored_messages(engine)
    engine.dispose()
    return rss, rows


# ---- main ---------------------------------------------------------------------------


def run_paced_bytes(server_url: str, src: Path, depth: int, minutes: float) -> dict:
    """bench/record_paced.py on a fresh database, run from `src`."""
    database_url = fresh_database(server_url, f"dw_bench_paced_{depth}")
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "record_paced.py"),
            "--database-url",
            database_url,
            "--depth",
            str(depth),
            "--minutes",
            str(minutes),
        ],
        env=env(src),
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def baseline_tree(ref: str, tmpdir: Path) -> Path:
    """A detached git worktree of `ref`; its streamlit/ is the baseline's source."""
    tree = tmpdir / "baseline"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), ref],
        check=True,
        capture_output=True,
    )
    return tree


def remove_baseline_tree(tmpdir: Path) -> None:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmpdir / "baseline")],
        check=False,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, for smoke tests")
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--deltas", type=int, default=5_000, help="deltas per symbol")
    parser.add_argument(
        "--scenarios",
        default="1,2,3,4,5,6",
        help="which scenarios to run (default all: 1,2,3,4,5,6)",
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

    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus, "
        f"Python {platform.python_version()}"
    )
    symbols = [f"B{i:02d}USDT" for i in range(args.symbols)]
    start_ms = int(time.time() * 1000) - 3_600_000
    streams = [generate_stream(s, args.deltas, 42, start_ms) for s in symbols]
    total = sum(len(s) for s in streams)
    mean_levels = sum(
        len(m["data"]["b"]) + len(m["data"]["a"]) for s in streams for m in map(orjson.loads, s[1:])
    ) / (total - len(streams))
    print(
        f"stream: {args.symbols} symbols x {args.deltas} depth-{DEPTH} deltas = {total:,} "
        f"messages, {mean_levels:.1f} changed levels per delta"
    )

    chosen = {int(n) for n in args.scenarios.split(",")}
    if 1 in chosen:
        print("\n1. merge path, in process (no socket, no database), same messages")
        pybit_rate, pybit_sorted = pybit_merge_rate(streams)
        ours_rate = depthwatch_merge_rate(streams)
        print(
            f"   pybit 5.17 merge + deepcopy : {pybit_rate:10,.0f} msg/s "
            f"({1e6 / pybit_rate:5.1f} us/msg); b[0] still the best bid at the end: {pybit_sorted}"
        )
        print(
            f"   depthwatch parse + book     : {ours_rate:10,.0f} msg/s "
            f"({1e6 / ours_rate:5.1f} us/msg); ratio {ours_rate / pybit_rate:.2f}x"
        )

    with tempfile.TemporaryDirectory(prefix="depthwatch-bench-") as tmp:
        tmpdir = Path(tmp)
        versions = [Version("this", SRC)]
        if args.baseline:
            versions.insert(
                0, Version(args.baseline, baseline_tree(args.baseline, tmpdir) / "streamlit")
            )
        files = []
        for symbol, messages in zip(symbols, streams, strict=True):
            path = tmpdir / f"{symbol}.jsonl"
            path.write_bytes(b"\n".join(messages) + b"\n")
            files.append(path)
        del streams
        configured = os.environ.get("DATABASE_URL")
        server_url = normalise_url(configured) if configured else start_embedded(tmpdir)
        table = Table([v.name for v in versions])
        try:
            for round_ in range(rounds):
                for version in versions:
                    tag = f"[{version.name}, round {round_ + 1}]"
                    if 2 in chosen:
                        flat_out(files, symbols, server_url, version, tag, table)
                    if 3 in chosen:
                        paced(files, symbols, server_url, version, tag, table)
                    if 4 in chosen:
                        many_symbols(server_url, args.quick, version, tag, table)
                    if 5 in chosen:
                        paced_bytes(server_url, args.paced_minutes, version, tag, table)
                    if 6 in chosen:
                        steady_pace(files, symbols, server_url, args.quick, version, tag, table)
        finally:
            if args.baseline:
                remove_baseline_tree(tmpdir)
        table.print()
    return 0


class Table:
    """Figures per version across rounds; printed as medians side by side."""

    def __init__(self, versions: list[str]) -> None:
        self.versions = versions
        self.figures: dict[str, dict[str, list[float]]] = {}

    def add(self, version: str, figure: str, value: float) -> None:
        self.figures.setdefault(figure, {}).setdefault(version, []).append(value)

    def print(self) -> None:
        import statistics

        print(
            "\nsummary (median of the rounds"
            + (", ratio = this / baseline)" if len(self.versions) > 1 else ")")
        )
        head = "".join(f"{v:>14}" for v in self.versions)
        print(f"   {'figure':44}{head}" + ("     ratio" if len(self.versions) > 1 else ""))
        for figure, per in self.figures.items():
            medians = [
                statistics.median(per[v]) if v in per else float("nan") for v in self.versions
            ]
            cells = "".join(f"{m:14,.1f}" for m in medians)
            ratio = f"{medians[-1] / medians[0]:10.2f}" if len(medians) > 1 and medians[0] else ""
            print(f"   {figure:44}{cells}{ratio}")


def flat_out(files, symbols, server_url, version: Version, tag: str, table: Table) -> None:
    print(f"\n2. end to end, flat out: simulator (own process) -> collector -> PostgreSQL {tag}")
    flat = run_replay(files, symbols, 0, server_url, version.src)
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
        ("2. flat out: msg/s persisted", rate),
        ("2. flat out: collector CPU us/msg", flat.cpu_us_per_msg),
        ("2. flat out: latency p99 ms", flat.p99_ms),
        ("2. flat out: peak RSS MB", flat.peak_rss_mb),
        ("2. flat out: bytes on disk/msg", flat.disk_bytes_per_msg),
    ):
        table.add(version.name, figure, value)


def paced(files, symbols, server_url, version: Version, tag: str, table: Table) -> None:
    per_symbol = 10_000 / len(symbols)
    print(
        f"\n3. end to end, paced at 10,000 msg/s "
        f"({per_symbol:.0f}/s x {len(symbols)} symbols) {tag}"
    )
    result = run_replay(files, symbols, per_symbol, server_url, version.src)
    print(f"   persisted                   : {result.messages / result.seconds:10,.0f} msg/s")
    print(
        f"   receive-to-commit latency   : p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms"
    )
    print(f"   collector CPU               : {result.cpu_us_per_msg:10.1f} us/msg")
    table.add(version.name, "3. 10k msg/s: latency p99 ms", result.p99_ms)
    table.add(version.name, "3. 10k msg/s: collector CPU us/msg", result.cpu_us_per_msg)


def many_symbols(server_url: str, quick: bool, version: Version, tag: str, table: Table) -> None:
    n, secs = (20, 10.0) if quick else (100, 30.0)
    print(f"\n4. {n} symbols at depth {DEPTH}, synthetic, 20 msg/s each, {secs:.0f} s {tag}")
    rss, rows = run_many_symbols(server_url, n, secs, version.src)
    print(f"   collector peak RSS          : {rss:10.0f} MB ({rows:,} book messages written)")
    table.add(version.name, f"4. {n} symbols: peak RSS MB", rss)


def steady_pace(files, symbols, server_url, quick: bool, version: Version, tag: str, table):
    warmup, window = (5.0, 10.0) if quick else (10.0, 60.0)
    print(
        f"\n6. steady pace: {len(symbols)} symbols x 50 msg/s, staggered, "
        f"{window:.0f} s window after {warmup:.0f} s {tag}"
    )
    cpu, rate = run_steady_pace(files, symbols, server_url, version.src, warmup, window)
    print(f"   collector CPU               : {cpu:10.1f} us/msg ({rate:,.0f} msg/s stored)")
    table.add(version.name, "6. steady 50 msg/s x streams: CPU us/msg", cpu)


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
