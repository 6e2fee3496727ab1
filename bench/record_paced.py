"""Record paced synthetic streams into a database, faster than real time.

    .venv/bin/python bench/record_paced.py --database-url URL [--streams 4]
        [--rate 50] [--depth 50] [--minutes 60] [--flush-ms 100] [--end-ms NOW]
        [--trades-every N]

Each stream is a synthetic book (the simulator's market model) sending a
message every 1000/rate ms of exchange time. Messages go through the real
parser, book and writer in this process; the writer is flushed once per
`--flush-ms` of exchange time (its own timer is off), so the rows it writes
are cut exactly as a collector at that pace cuts them, only sooner. What a
database holds after an hour recorded at pace, in minutes.

Runs against whichever depthwatch is on PYTHONPATH (bench_collector.py runs
it for the version under test and for the baseline). Prints one JSON line:
messages, bytes on disk of the book tables per message, and per table.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import sys
import time

import orjson
import sqlalchemy as sa

from depthwatch.book import StreamBook
from depthwatch.feed.bybit.parse import FeedParser
from depthwatch.records import BookUpdate, StreamKey, Trade
from depthwatch.sim.market import DepthView, MarketBook, spec_for
from depthwatch.storage import schema
from depthwatch.storage.db import make_engine

try:
    from depthwatch.storage.write import BatchWriter, WriterConfig
except ImportError:  # a baseline from before storage/write/ (one module then)
    from depthwatch.storage.writer import (  # type: ignore[no-redef]
        BatchWriter,
        WriterConfig,
    )

# The tables a book's messages cost, whichever schema wrote them; with the
# hourly whole-book checkpoints, which an hour's recording holds.
LOG_TABLES = (
    "book_events",
    "quotes",
    "depth_snapshots",
    "book_chunks",
    "top_seconds",
    "top_snapshots",
)
BOOK_TABLES = (*LOG_TABLES, "book_checkpoints")


def table_bytes(engine: sa.Engine, tables: tuple[str, ...] = BOOK_TABLES) -> dict[str, int]:
    """Bytes on disk per table: partitions, indexes and TOAST."""
    out = {}
    with engine.connect() as conn:
        for table in tables:
            if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": table}).scalar() is None:
                continue
            out[table] = int(
                conn.execute(
                    sa.text(
                        "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) "
                        "FROM pg_inherits WHERE inhparent = to_regclass(:t)"
                    ),
                    {"t": table},
                ).scalar_one()
            )
    return out


def stored_messages(engine: sa.Engine) -> int:
    """Book messages stored: packed (schema 4) and one per row (schema 1-3)."""
    total = 0
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT to_regclass('book_chunks')")).scalar() is not None:
            total += int(
                conn.execute(sa.text("SELECT coalesce(sum(n), 0) FROM book_chunks")).scalar_one()
            )
        if conn.execute(sa.text("SELECT to_regclass('book_events')")).scalar() is not None:
            total += int(conn.execute(sa.text("SELECT count(*) FROM book_events")).scalar_one())
    return total


def paced_messages(symbols: list[str], depth: int, rate: float, minutes: float, end_ms: int):
    """(exchange ms, raw message) of every stream, in time order."""
    step_ms = 1000 / rate
    count = int(minutes * 60 * rate)
    start_ms = end_ms - int(count * step_ms)
    books = []
    for n, symbol in enumerate(symbols):
        market = MarketBook(spec_for(symbol), max(200, depth * 4), random.Random(f"{n}:{symbol}"))
        books.append((symbol, market, DepthView(market, depth)))
    topic = "orderbook.{}.{}"
    sent = [0] * len(books)
    for i in range(count + 1):
        # Streams are staggered within the step, as on the exchange.
        for n, (symbol, market, view) in enumerate(books):
            ts = start_ms + int(i * step_ms + n * step_ms / len(books))
            if i == 0:
                bids, asks = view.snapshot()
                kind = "snapshot"
            else:
                bids, asks = view.diff(market.step())
                kind = "delta"
                if not bids and not asks:
                    continue  # the exchange sends no empty delta
            sent[n] += 1
            data = {"s": symbol, "b": bids, "a": asks, "u": sent[n], "seq": 1000 + i * 3}
            msg = {
                "topic": topic.format(depth, symbol),
                "type": kind,
                "ts": ts,
                "data": data,
                "cts": ts - 3,
            }
            yield ts, orjson.dumps(msg)


def trade_after(update: BookUpdate, number: int) -> Trade:
    """A trade at the update's best level (the export benchmark's trades)."""
    side, levels = ("buy", update.asks) if number % 2 else ("sell", update.bids)
    price = levels[0][0] if levels else "100.00"
    stream = update.stream
    return Trade(
        stream.category,
        stream.symbol,
        f"t{number:09d}",
        side,
        price,
        "0.010",
        update.exchange_us,
        update.local_us,
        number,
    )


def _flush_older(writer: BatchWriter) -> None:
    """A timer-like flush for a writer from before flush_once (schema 1-3):
    its flush_now polls every 10 ms, which over an hour's 36,000 flushes
    would take longer than the recording."""
    writer._wake.set()
    while writer.pending_rows or writer._flushing:
        time.sleep(0.0002)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--rate", type=float, default=50.0, help="messages/s per stream")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=60.0, help="of exchange time")
    parser.add_argument("--flush-ms", type=int, default=100)
    parser.add_argument("--end-ms", type=int, default=0, help="exchange time of the end (now)")
    parser.add_argument(
        "--trades-every", type=int, default=0, help="a trade after every N book messages (0: none)"
    )
    args = parser.parse_args()

    engine = make_engine(args.database_url)
    schema.upgrade(engine)
    # The writer's clock (schema 4 on) is the replay's: the receive time of
    # the latest message. Flushes come from the loop below, not the timer.
    replay_now_us = [0]
    config = WriterConfig(
        flush_interval_s=3600.0, batch_rows=10**9, max_pending_rows=10**9, retention_days=0
    )
    if "clock" in inspect.signature(BatchWriter).parameters:
        writer = BatchWriter(engine, config, clock=lambda: replay_now_us[0])
    else:
        writer = BatchWriter(engine, config)
    flush = getattr(writer, "flush_once", None) or (lambda: _flush_older(writer))
    symbols = [f"P{n:02d}USDT" for n in range(args.streams)]
    streams = [StreamKey("linear", s, args.depth) for s in symbols]
    for stream in streams:
        if hasattr(writer, "register_stream"):
            writer.register_stream(stream)
    writer.start()
    feed = FeedParser("linear")
    books = {s: StreamBook(s, writer, snapshot_levels=min(50, args.depth)) for s in streams}
    end_ms = args.end_ms or int(time.time() * 1000)
    next_flush = None
    messages = 0
    started = time.monotonic()
    for ts, raw in paced_messages(symbols, args.depth, args.rate, args.minutes, end_ms):
        if next_flush is None:
            next_flush = ts + args.flush_ms
        while ts >= next_flush:
            flush()
            next_flush += args.flush_ms
        replay_now_us[0] = ts * 1000 + 4_000
        update = feed.parse(raw, replay_now_us[0])
        books[update.stream].apply(update)
        messages += 1
        if args.trades_every and messages % args.trades_every == 0:
            writer.add_trade(trade_after(update, messages))
        if messages % 50_000 == 0:
            rate = messages / (time.monotonic() - started)
            print(f"  ... {messages:,} messages recorded, {rate:,.0f}/s", end="\r", file=sys.stderr)
    writer.stop()
    stored = stored_messages(engine)
    if stored != messages:
        raise SystemExit(f"{stored:,} of {messages:,} messages stored: the figures would lie")
    with engine.connect() as conn:
        conn.execute(sa.text("CHECKPOINT"))
    sizes = table_bytes(engine)
    engine.dispose()
    print(
        json.dumps(
            {
                "messages": messages,
                "bytes_per_msg": sum(sizes.values()) / messages,
                "tables": {t: round(b / messages, 1) for t, b in sizes.items() if b},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
