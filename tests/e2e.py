"""Helpers for end-to-end tests: run a real collector against the real simulator
and a real PostgreSQL, export, and rebuild books from the export."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from depthwatch.collector import Collector, register_instruments
from depthwatch.config import CollectorConfig
from depthwatch.export.tardis import ExportRequest, export_csv
from depthwatch.feed.bybit.topics import book_topic
from depthwatch.records import StreamKey
from depthwatch.sim import SimConfig, SimulatorThread, TruthState
from depthwatch.sim import truth_key as binance_truth_key
from depthwatch.storage import schema
from depthwatch.storage.db import make_engine
from depthwatch.storage.read.book import book_events
from depthwatch.storage.read.rows import BookEventRow
from depthwatch.storage.read.streams import NotRecorded, find_stream, list_streams
from depthwatch.storage.write import BatchWriter, WriterConfig

ALL_TIME = (0, 4_102_444_800_000_000)  # 1970 .. 2100


@dataclass
class Run:
    collector: Collector
    writer: BatchWriter
    engine: sa.Engine


def sim_collector_config(
    sim: SimulatorThread, database_url: str, symbols: tuple[str, ...], **overrides: object
) -> CollectorConfig:
    """A collector of the simulator's linear depth-50 books, quick to notice silence."""
    settings: dict[str, object] = dict(
        category="linear",
        symbols=symbols,
        depths=(50,),
        ws_url=sim.sim.url("linear"),
        database_url=database_url,
        retention_days=0,
        silence_timeout_s=2.0,
        status_interval_s=3600,
    )
    settings.update(overrides)
    return CollectorConfig(**settings)  # type: ignore[arg-type]


@contextlib.contextmanager
def recorded_from_sim(
    server_url: str, sim_config: SimConfig, **overrides: object
) -> Iterator[tuple[str, sa.Engine, dict[str, list[TruthState]]]]:
    """(database URL, engine, ground truth per symbol) of a new database in
    which a collector recorded the simulator until caught up."""
    from .conftest import new_database

    with new_database(server_url) as url:
        sim = SimulatorThread(sim_config).start()
        try:
            config = sim_collector_config(sim, url, tuple(sim_config.symbols), **overrides)
            run = collect_until_caught_up(sim, config)
            truth = {s: sim.sim.truth(f"orderbook.50.{s}") for s in sim_config.symbols}
        finally:
            sim.stop()
        try:
            yield url, run.engine, truth
        finally:
            run.engine.dispose()


@contextlib.contextmanager
def one_symbol_sim(symbol: str = "BTCUSDT", **overrides: Any) -> Iterator[SimulatorThread]:
    """A simulator of one symbol, stepping as fast as its clients read unless told."""
    config: dict[str, Any] = {"symbols": (symbol,), "rate": 0, "trades_rate": 0} | overrides
    sim = SimulatorThread(SimConfig(**config))
    try:
        yield sim.start()
    finally:
        sim.stop()


def is_binance(stream: StreamKey) -> bool:
    return stream.category in ("binance", "binance-futures")


def truth_key(stream: StreamKey) -> str:
    """The simulator's name for a stream's ground truth."""
    if is_binance(stream) or stream.category == "hyperliquid":
        return binance_truth_key(stream.category, stream.symbol)
    return book_topic(stream.depth, stream.symbol)


def collect_until_caught_up(
    sim: SimulatorThread,
    config: CollectorConfig,
    timeout_s: float = 60.0,
    wait_for: list[StreamKey] | None = None,
    prepare: Callable[[Collector], None] | None = None,
) -> Run:
    """Run the collector until every stream's book (or those in `wait_for`) is
    valid at the simulator's final state and everything is written, then stop it.
    `prepare` may adjust the collector before it runs (e.g. faster timeouts).
    The collector's task ending before that is an AssertionError."""
    engine = make_engine(config.database_url or "")
    schema.upgrade(engine)
    writer = BatchWriter(
        engine, WriterConfig(flush_interval_s=0.05, retention_days=0, collector_id="test")
    )
    writer.start()
    register_instruments(config, writer)
    collector = Collector(config, writer)
    if prepare is not None:
        prepare(collector)

    def caught_up() -> bool:
        for stream, book in collector.books.items():
            if wait_for is not None and stream not in wait_for:
                continue
            topic = truth_key(stream)
            latest = sim.latest(topic)
            if not sim.sim.finished(topic) or latest is None:
                return False
            if not book.valid:
                return False
            if is_binance(stream):  # numbered by the sync; Binance's own u is `sequence`
                if book.last_sequence != latest.seq:
                    return False
            elif stream.category == "hyperliquid":
                # Numbered by the parser, and a push that changed nothing is
                # not recorded: compare the books themselves.
                if book.book.sides() != (latest.bids, latest.asks):
                    return False
            elif book.last_update_id != latest.u:
                return False
        return True

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run(stop))
        deadline = time.monotonic() + timeout_s
        while not caught_up():
            if time.monotonic() > deadline or task.done():
                stop.set()
                await task
                raise AssertionError(
                    "collector did not catch up: "
                    + ", ".join(
                        f"{s} valid={b.valid} u={b.last_update_id}"
                        for s, b in collector.books.items()
                    )
                )
            await asyncio.sleep(0.05)
        stop.set()
        await task

    asyncio.run(main())
    assert writer.stop(timeout_s=30), "writer did not flush everything"
    return Run(collector, writer, engine)


def export_rows(engine: sa.Engine, kind: str, stream: StreamKey) -> list[dict[str, str]]:
    out = io.StringIO()
    request = ExportRequest(kind, stream.category, stream.symbol, *ALL_TIME, depth=stream.depth)
    export_csv(engine, request, out, progress_to=None)
    return list(csv.DictReader(io.StringIO(out.getvalue())))


def assert_columns_match_rows(engine: sa.Engine, stream: StreamKey) -> None:
    """incremental_book_L2 and quotes made in columns (export.columnar:
    Parquet, Arrow) equal the row paths' (CSV's) rows, value for value."""
    from depthwatch.export.columnar import l2_columns, quote_columns
    from depthwatch.export.sinks import ArrowSink
    from depthwatch.export.tardis import Progress, _plan, export, request_rows

    for kind, columnar in (("incremental_book_L2", l2_columns), ("quotes", quote_columns)):
        request = ExportRequest(kind, stream.category, stream.symbol, *ALL_TIME, stream.depth)
        by_rows = ArrowSink(kind)
        with engine.connect() as conn:
            planned = _plan(conn, request)
            assert planned.stream is not None
            assert columnar(conn, planned.stream, *ALL_TIME) is not None  # not the row path
            by_rows.begin(request)
            by_rows.write(list(request_rows(conn, request, Progress([request], None))))
        by_rows.close()
        by_columns = ArrowSink(kind)
        export(engine, request, by_columns, progress_to=None)
        rows, columns = by_rows.table(), by_columns.table()
        assert rows.num_rows > 0 and columns.num_rows == rows.num_rows, kind
        assert columns.equals(rows), f"{kind}: the columns differ from the rows"


@dataclass
class RebuiltState:
    timestamp: int
    local_timestamp: int
    is_snapshot: bool
    bids: list[tuple[Decimal, Decimal]]
    asks: list[tuple[Decimal, Decimal]]


def rebuild_from_l2(rows: list[dict[str, str]]) -> list[RebuiltState]:
    """The book after each message of an incremental_book_L2 export, rebuilt the
    way a Tardis reader does (rows of one message share their timestamps; a new
    snapshot message replaces the book) with a plain dict per side, independent
    of depthwatch's own book."""
    states: list[RebuiltState] = []
    bids: dict[Decimal, Decimal] = {}
    asks: dict[Decimal, Decimal] = {}
    key: tuple[str, str, str] | None = None
    for row in rows:
        row_key = (row["timestamp"], row["local_timestamp"], row["is_snapshot"])
        if row_key != key:
            if key is not None:
                states.append(_state(key, bids, asks))
            if row["is_snapshot"] == "true":
                bids.clear()
                asks.clear()
            key = row_key
        side = bids if row["side"] == "bid" else asks
        price, amount = Decimal(row["price"]), Decimal(row["amount"])
        if amount == 0:
            side.pop(price, None)
        else:
            side[price] = amount
    if key is not None:
        states.append(_state(key, bids, asks))
    return states


def _state(key: tuple[str, str, str], bids: dict, asks: dict) -> RebuiltState:
    return RebuiltState(
        int(key[0]),
        int(key[1]),
        key[2] == "true",
        sorted(bids.items(), reverse=True),
        sorted(asks.items()),
    )


def truth_levels(state: TruthState) -> tuple[list, list]:
    return (
        [(Decimal(p), Decimal(s)) for p, s in state.bids],
        [(Decimal(p), Decimal(s)) for p, s in state.asks],
    )


def recorded_sequence(engine: sa.Engine, stream: StreamKey) -> list[tuple[int, int, bool]]:
    """(u, seq, is_snapshot) of the recorded messages, in the export's order."""
    return [(e.u, e.seq, e.is_snapshot) for e in stored_book_events(engine, stream)]


def assert_export_matches_truth(
    engine: sa.Engine, stream: StreamKey, truth: list[TruthState]
) -> list[RebuiltState]:
    """The book rebuilt from the export equals the simulator's ground truth
    after every recorded message; the Parquet/Arrow export, made in columns,
    holds the same rows."""
    assert_columns_match_rows(engine, stream)
    rows = export_rows(engine, "incremental_book_L2", stream)
    states = rebuild_from_l2(rows)
    by_seq = {state.seq: state for state in truth}
    # An empty snapshot (a delisted whole book) has no rows in
    # incremental_book_L2, which cannot say "empty": checked from the log.
    recorded = []
    for event in stored_book_events(engine, stream):
        if event.is_snapshot and not event.bid_prices and not event.ask_prices:
            assert not by_seq[event.seq].bids and not by_seq[event.seq].asks, event.u
            continue
        recorded.append((event.u, event.seq, event.is_snapshot))
    assert len(states) == len(recorded), (len(states), len(recorded))
    for i, (state, (u, seq, is_snapshot)) in enumerate(zip(states, recorded, strict=True)):
        assert state.is_snapshot == is_snapshot, f"message {i} (u={u})"
        bids, asks = truth_levels(by_seq[seq])
        assert state.bids == bids, f"bids differ after message {i} (u={u}, seq={seq})"
        assert state.asks == asks, f"asks differ after message {i} (u={u}, seq={seq})"
    return states


def feed_event_kinds(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT kind FROM feed_events ORDER BY id")).scalars())


@dataclass(frozen=True)
class StoredEvent:
    id: int
    local_us: int
    kind: str
    symbol: str | None
    depth: int | None
    detail: str
    connection: str


def stored_feed_events(engine: sa.Engine) -> list[StoredEvent]:
    """Every feed event, in the order written."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                """SELECT id, local_us, kind, symbol, depth, detail, connection
                   FROM feed_events ORDER BY id"""
            )
        )
        return [StoredEvent(*row) for row in rows]


def stored_book_events(engine: sa.Engine, stream: StreamKey) -> list[BookEventRow]:
    """The recorded messages of a stream, in the order they apply (none yet:
    an empty list, as while a collector starts)."""
    with engine.connect() as conn:
        try:
            recorded = find_stream(conn, stream.category, stream.symbol, stream.depth)
        except NotRecorded:
            return []
        return list(book_events(conn, recorded, *ALL_TIME))


def stored_message_count(engine: sa.Engine) -> int:
    """Distinct book messages stored, all streams (0 before the schema exists)."""
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT to_regclass('streams')")).scalar() is None:
            return 0
        return sum(
            sum(1 for _ in book_events(conn, stream, *ALL_TIME)) for stream in list_streams(conn)
        )
