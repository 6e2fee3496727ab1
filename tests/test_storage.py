"""Storage against a real PostgreSQL: schema upgrades, idempotent batched writes,
partitions, retention, and a writer that survives losing its connection."""

from __future__ import annotations

import asyncio
import threading
import time

import sqlalchemy as sa

from depthwatch.records import BookUpdate, FeedEvent, FeedEventKind, StreamKey, Trade
from depthwatch.storage import schema
from depthwatch.storage.db import normalise_url
from depthwatch.storage.read.book import book_events
from depthwatch.storage.read.rows import BookEventRow
from depthwatch.storage.read.streams import NotRecorded, find_stream
from depthwatch.storage.write import BatchWriter, WriterConfig

STREAM = StreamKey("linear", "BTCUSDT", 50)
DAY_MS = 86_400_000
NOW_MS = int(time.time() * 1000)


def make_update(u: int, ts_ms: int = NOW_MS, snapshot: bool = False) -> BookUpdate:
    return BookUpdate(
        STREAM,
        snapshot,
        [["100.50", f"{u}.000"], ["100.40", "0"]],
        [["100.60", "1.250"]],
        u,
        u * 7,
        ts_ms * 1000,
        ts_ms * 1000 - 300,
        ts_ms * 1000 + 1_234,
    )


def count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def stored_messages(engine: sa.Engine, stream: StreamKey = STREAM) -> int:
    """Distinct book messages stored for the stream (packed or legacy)."""
    with engine.connect() as conn:
        try:
            recorded = find_stream(conn, stream.category, stream.symbol, stream.depth)
        except NotRecorded:
            return 0
        return sum(1 for _ in book_events(conn, recorded, 0, 2**62))


def started_writer(engine: sa.Engine, **overrides) -> BatchWriter:
    schema.upgrade(engine)
    writer = BatchWriter(engine, WriterConfig(flush_interval_s=0.05, **overrides))
    writer.start()
    return writer


def test_normalise_url_accepts_both_schemes():
    assert normalise_url("postgres://u:p@h:5432/d") == "postgresql+psycopg2://u:p@h:5432/d"
    assert normalise_url("postgresql://u:p@h/d") == "postgresql+psycopg2://u:p@h/d"
    assert normalise_url("postgresql+psycopg2://h/d") == "postgresql+psycopg2://h/d"


def test_concurrent_upgrades_apply_each_migration_once(engine):
    errors: list[BaseException] = []
    versions: list[int] = []

    def run() -> None:
        try:
            versions.append(schema.upgrade(engine))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    latest = schema.MIGRATIONS[-1].version
    assert versions == [latest] * 5
    assert schema.schema_version(engine) == latest
    assert count(engine, "depthwatch_schema") == len(schema.MIGRATIONS)


def test_writes_are_exact_and_idempotent(engine):
    writer = started_writer(engine)
    updates = [make_update(u, snapshot=(u == 1)) for u in range(1, 201)]
    for update in updates:
        writer.add_book_update(update)
    trade = Trade("linear", "BTCUSDT", "t-1\tweird", "buy", "100.55", "0.001", NOW_MS * 1000, 1, 9)
    writer.add_trade(trade)
    assert writer.flush_now()
    # The same messages again, as an overlapping collector or a retry would write them.
    for update in updates:
        writer.add_book_update(update)
    writer.add_trade(trade)
    assert writer.flush_now()
    assert writer.stop()
    assert count(engine, "book_events") == 0  # schema 4 writes the packed log only
    assert count(engine, "book_chunks") == 1  # one flush, one second: one chunk, stored once
    assert count(engine, "trades") == 1
    with engine.connect() as conn:
        events = list(book_events(conn, find_stream(conn, "linear", "BTCUSDT", 50), 0, 2**62))
        trade_row = conn.execute(sa.text("SELECT trade_id, price::text FROM trades")).one()
    assert [e.u for e in events] == list(range(1, 201))
    assert tuple(vars_of(events[6])) == (
        NOW_MS * 1000,
        NOW_MS * 1000 + 1_234,
        7,
        49,
        False,
        ["100.50", "100.40"],
        ["7.000", "0"],
        ["100.60"],
        ["1.250"],  # the exchange's digits, trailing zeros included
    )
    assert tuple(trade_row) == ("t-1\tweird", "100.55")
    # What was written and what was already there are counted apart.
    assert writer.stats.book_messages_written == 200
    assert writer.stats.book_messages_duplicate == 200
    assert (writer.stats.rows_written["trades"], writer.stats.rows_duplicate["trades"]) == (1, 1)
    assert len(writer.stats.latencies_us) == 400


def vars_of(event: BookEventRow) -> list[object]:
    return [getattr(event, name) for name in event.__slots__]


def test_a_message_that_cannot_be_stored_costs_only_itself(engine):
    """A message whose decimals cannot be packed (the parser lets none
    through) is left out and counted as rejected; its stream's log shows the
    hole as a `u` gap, and everything else is stored."""
    writer = started_writer(engine)
    for u in range(1, 11):
        writer.add_book_update(make_update(u, snapshot=(u == 1)))
    assert writer.flush_now()
    bad = make_update(15)
    bad.bids[0][1] = "not-a-number"
    for u in range(1, 21):
        writer.add_book_update(bad if u == 15 else make_update(u, snapshot=(u == 1)))
    assert writer.flush_now()
    assert writer.stop()
    stats = writer.stats
    assert stats.rows_rejected == 1
    with engine.connect() as conn:
        stream = find_stream(conn, "linear", "BTCUSDT", 50)
        stored = [e.u for e in book_events(conn, stream, 0, 2**62)]
    assert stored == [u for u in range(1, 21) if u != 15]


def test_partitions_are_created_on_demand_for_any_day_and_retention_drops_old_ones(engine):
    writer = started_writer(engine)
    old_ms = 1_733_011_200_691  # 2024-12-01, as in Bybit's archive
    writer.add_book_update(make_update(1, ts_ms=old_ms, snapshot=True))
    writer.add_book_update(make_update(2, ts_ms=NOW_MS))
    assert writer.stop()
    assert stored_messages(engine) == 2
    with engine.begin() as conn:
        days = schema.existing_partition_days(conn)
        assert old_ms // DAY_MS in days
        assert NOW_MS // DAY_MS + 2 in days  # created ahead
        dropped = schema.drop_expired_partitions(conn, 30, NOW_MS * 1000)
    assert "book_events_d20241201" in dropped
    assert stored_messages(engine) == 1


def test_writer_keeps_its_batch_when_the_connection_dies_and_loses_nothing(engine):
    writer = started_writer(engine)
    writer.add_book_update(make_update(1, snapshot=True))
    assert writer.flush_now()
    with engine.connect() as conn:  # kill the writer's session, as a database restart would
        conn.execute(
            sa.text(
                """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                   WHERE datname = current_database() AND pid <> pg_backend_pid()"""
            )
        )
    for u in range(2, 1_002):
        writer.add_book_update(make_update(u))
    writer.add_feed_event(FeedEvent(FeedEventKind.GAP, 1, "linear", "BTCUSDT", 50, "test"))
    assert writer.flush_now(timeout_s=30)
    assert writer.stop()
    assert writer.stats.flush_failures >= 1
    assert stored_messages(engine) == 1_001
    assert count(engine, "feed_events") == 1


def test_back_pressure_is_reported_when_the_queue_is_full(engine):
    schema.upgrade(engine)
    writer = BatchWriter(engine, WriterConfig(flush_interval_s=0.05, max_pending_rows=10))
    for u in range(1, 50):  # the writer thread is not running yet: the queue fills
        writer.add_book_update(make_update(u))
    assert not writer.has_room()
    writer.start()
    asyncio.run(asyncio.wait_for(writer.wait_for_room(), timeout=30))
    assert writer.stats.backpressure_waits == 1
    assert writer.has_room()
    assert writer.stop()
    assert stored_messages(engine) == 49


def test_a_dead_database_is_retried_counted_and_reported_at_stop():
    dead = sa.create_engine("postgresql+psycopg2://nobody@127.0.0.1:9/none")
    writer = BatchWriter(dead, WriterConfig(flush_interval_s=0.05))
    # start() and instrument registration need a live database; the collector does
    # both before reading, so fake their results and start the flush thread alone.
    writer._instrument_ids[("linear", "BTCUSDT")] = 1
    writer._stream_ids[STREAM] = 1
    writer._thread = threading.Thread(target=writer._run, daemon=True)
    writer._thread.start()
    for u in range(1, 101):
        writer.add_book_update(make_update(u))
    deadline = time.monotonic() + 10
    while writer.stats.flush_failures < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.stats.flush_failures >= 2  # retried, not given up
    assert writer.stats.book_messages_written == 0
    started = time.monotonic()
    assert writer.stop(timeout_s=15) is False  # says rows were not written
    assert time.monotonic() - started < 10


def test_a_partition_dropped_under_the_writer_is_recreated_on_retry(engine):
    writer = started_writer(engine)
    writer.add_book_update(make_update(1, snapshot=True))
    assert writer.flush_now()
    day = schema.partition_name("book_chunks", NOW_MS // DAY_MS)
    with engine.begin() as conn:  # as another collector's retention, or an operator, might
        conn.execute(sa.text(f"DROP TABLE {day}"))
    writer.add_book_update(make_update(2))
    assert writer.flush_now(timeout_s=30)
    assert writer.stop()
    assert writer.stats.flush_failures >= 1
    assert stored_messages(engine) == 1  # the new row; the old one went with its table


def test_retention_does_not_see_dropped_days_recreated_by_later_writes(engine):
    writer = started_writer(engine, retention_days=30)
    old_ms = 1_733_011_200_691  # 2024-12-01: far past the retention window
    writer.add_book_update(make_update(1, ts_ms=old_ms, snapshot=True))
    assert writer.flush_now()
    old_day = old_ms // DAY_MS
    writer._run_maintenance()  # the hourly pass: drops the old day
    writer.add_book_update(make_update(2))  # today's rows keep flowing
    assert writer.flush_now()
    assert writer.stop()
    with engine.connect() as conn:
        assert old_day not in schema.existing_partition_days(conn)
    assert stored_messages(engine) == 1


def test_rows_postgresql_cannot_take_do_not_wedge_the_writer(engine):
    """A NUL (a server's close reason may hold one) in a feed event or a row:
    not an outage to retry forever, but a bad row, refused alone (events are
    cleaned), and everything else written."""
    writer = started_writer(engine)
    writer.add_feed_event(
        FeedEvent(FeedEventKind.DISCONNECT, NOW_MS * 1000, "linear", detail="bye\x00now")
    )
    bad = make_update(2)
    bad.bids[0][1] = "1\x00"
    for update in (make_update(1, snapshot=True), bad, make_update(3)):
        writer.add_book_update(update)
    assert writer.flush_now()
    assert writer.stop()
    assert stored_messages(engine) == 2
    assert writer.stats.rows_rejected == 1
    assert writer.stats.flush_failures == 0
    with engine.connect() as conn:
        detail = conn.execute(sa.text("SELECT detail FROM feed_events")).scalar_one()
    assert detail == "byenow"
