"""The dashboard's queries against a real PostgreSQL, on rows written through
the real writer: every figure starts from these numbers, so each is checked
against values computed here by hand."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from depthwatch.records import (
    BookUpdate,
    CollectorHeartbeat,
    DepthSnapshot,
    FeedEvent,
    FeedEventKind,
    Quote,
    StreamKey,
)
from depthwatch.storage import schema
from depthwatch.storage.read.chunks import last_quote
from depthwatch.storage.read.events import (
    event_counts,
    event_frame,
    heartbeats,
    last_heartbeat,
    source_simulated,
)
from depthwatch.storage.read.frames import TOP_COLUMNS
from depthwatch.storage.read.health import (
    SIZED_TABLES,
    collectors,
    commit_p99_ms,
    oldest_snapshot_us,
    table_sizes,
)
from depthwatch.storage.read.rows import HeatmapGrid
from depthwatch.storage.read.streams import Stream, list_streams
from depthwatch.storage.read.tops import (
    heatmap_cells,
    imbalance_series,
    latest_book,
    periodic_snapshots,
    price_step,
    top_series,
)
from depthwatch.storage.write import BatchWriter, WriterConfig

STREAM = StreamKey("linear", "BTCUSDT", 50)
OTHER = StreamKey("linear", "ETHUSDT", 50)
S = 1_000_000
# A whole ten seconds, a minute ago: the 1 s and 2 s buckets below start there.
T0 = (time.time_ns() // 1000 // (10 * S) - 6) * 10 * S


@pytest.fixture
def writer(engine):
    schema.upgrade(engine)
    w = BatchWriter(engine, WriterConfig(flush_interval_s=0.05, collector_id="test"))
    w.start()
    w.register_stream(STREAM)
    w.register_stream(OTHER)
    yield w
    w.stop()


def quote(t_us: int, u: int, bid: str, ask: str, stream: StreamKey = STREAM) -> Quote:
    return Quote(stream, t_us, t_us + 500, u, bid, "1", ask, "2")


def add_top(writer: BatchWriter, top: Quote) -> None:
    """A book message that makes this top, sent as StreamBook sends it: the
    quote, then its update (the writer stores the top with the message)."""
    writer.add_quote(top)
    writer.add_book_update(
        BookUpdate(
            top.stream,
            False,
            [[top.bid_price, top.bid_size]],
            [[top.ask_price, top.ask_size]],
            top.update_id,
            top.update_id,
            top.exchange_us,
            None,
            top.local_us,
        )
    )


def stream_row(conn: sa.Connection, key: StreamKey = STREAM) -> Stream:
    return next(s for s in list_streams(conn) if s.symbol == key.symbol)


def test_streams_are_listed_from_the_registry(writer, engine):
    with engine.connect() as conn:
        rows = list_streams(conn)
    assert [(r.category, r.symbol, r.depth) for r in rows] == [
        ("linear", "BTCUSDT", 50),
        ("linear", "ETHUSDT", 50),
    ]
    assert rows[0].key == "linear:BTCUSDT@50"


def test_top_series_takes_last_min_max_per_bucket(writer, engine):
    # Bucket 0: three quotes; bucket 1: one; another stream's quotes are ignored.
    for i, (bid, ask) in enumerate([("100", "101"), ("99", "100.5"), ("100.2", "100.4")]):
        add_top(writer, quote(T0 + i * 200_000, i + 1, bid, ask))
    add_top(writer, quote(T0 + S + 10, 4, "100.1", "100.3"))
    add_top(writer, quote(T0 + 10, 1, "5", "6", OTHER))
    assert writer.flush_now()
    with engine.connect() as conn:
        top = top_series(conn, stream_row(conn), T0, T0 + 2 * S, S)
    assert list(top.columns) == list(TOP_COLUMNS)
    assert top["t_ms"].tolist() == [T0 / 1000, (T0 + S) / 1000]
    first = top.iloc[0]
    assert (first.bid, first.ask) == (100.2, 100.4)  # the last quote of the bucket
    assert first.bid_min == 99 and first.ask_max == 101
    assert first.mid == pytest.approx(100.3)
    assert first.spread_bps == pytest.approx(0.2 / 100.3 * 10_000)
    worst = max(
        (a - b) / ((a + b) / 2) * 10_000 for b, a in [(100, 101), (99, 100.5), (100.2, 100.4)]
    )
    assert first.spread_bps_max == pytest.approx(worst)
    assert top.iloc[1].bid == 100.1


def test_window_bounds_are_half_open(writer, engine):
    add_top(writer, quote(T0 - 1, 1, "1", "2"))
    add_top(writer, quote(T0, 2, "3", "4"))
    add_top(writer, quote(T0 + S, 3, "5", "6"))
    assert writer.flush_now()
    with engine.connect() as conn:
        stream = stream_row(conn)
        top = top_series(conn, stream, T0, T0 + S, S)
        last = last_quote(conn, stream, T0)
    assert top["bid"].tolist() == [3.0]
    assert last is not None and (last.bid, last.ask, last.ts_us) == (5.0, 6.0, T0 + S)


def snapshot(t_us: int, bids: list[list[str]], asks: list[list[str]]) -> DepthSnapshot:
    return DepthSnapshot(STREAM, t_us, t_us + 700, 1, bids, asks)


def test_latest_book_heatmap_and_imbalance(writer, engine):
    writer.add_depth_snapshot(
        snapshot(T0, [["100.0", "1"], ["99.9", "2"], ["99.0", "4"]], [["100.1", "3"], ["101", "5"]])
    )
    writer.add_depth_snapshot(
        snapshot(T0 + S, [["100.0", "2"], ["99.9", "2"]], [["100.1", "1"], ["100.2", "1"]])
    )
    assert writer.flush_now()
    with engine.connect() as conn:
        stream = stream_row(conn)
        book = latest_book(conn, stream, 2, T0)
        # One-second price buckets; two-second time buckets: both snapshots meet.
        grid = HeatmapGrid(time_bucket_ms=2000, price_step=1.0)
        cells = heatmap_cells(conn, stream, T0, T0 + 2 * S, grid, levels=3)
        imbalance = imbalance_series(conn, stream, T0, T0 + 2 * S, 2, S)
    assert book is not None and book.ts_us == T0 + S
    assert book.bids.to_dict("list") == {"price": [100.0, 99.9], "size": [2.0, 2.0]}
    assert book.asks.to_dict("list") == {"price": [100.1, 100.2], "size": [1.0, 1.0]}
    got = {(row.t_ms, row.price): row.size for row in cells.itertuples()}
    # First snapshot: [99,100) holds 99.9 (2) + 99.0 (4) = 6; [100,101) holds 100.0 + 100.1
    # = 4; [101,102) holds 5. Second: [99,100) = 2, [100,101) = 2 + 1 + 1 = 4. Max per cell.
    t = T0 / 1000
    assert got == {(t, 99.0): 6.0, (t, 100.0): 4.0, (t, 101.0): 5.0}
    # Long windows take the snapshot at each bucket's start ("last"), not the max.
    # T0 + S is inside a 2 s bucket, not at its start: "max" counts it, "last" not.
    with engine.connect() as conn:
        last_rule = HeatmapGrid(time_bucket_ms=2000, price_step=1.0, cell_rule="last")
        sampled = heatmap_cells(conn, stream, T0, T0 + 2 * S, last_rule, levels=3)
        second = heatmap_cells(conn, stream, T0 + S, T0 + 2 * S, grid, levels=3)
        none = heatmap_cells(conn, stream, T0 + S, T0 + 2 * S, last_rule, levels=3)
    assert {(r.t_ms, r.price): r.size for r in sampled.itertuples()} == got
    assert len(second) == 2 and none.empty
    assert imbalance["bid_size"].tolist() == [3.0, 4.0]  # top 2 levels only
    assert imbalance["ask_size"].tolist() == [8.0, 2.0]
    assert imbalance["imbalance"].tolist() == pytest.approx([-5 / 11, 2 / 6])


def test_snapshots_read_once_serve_the_heatmap_and_imbalance_alike(writer, engine):
    """The Live page decodes the window's snapshots once (every second here)
    and hands them to both readers: the same frames as each reading its own."""
    for k in range(12):
        bids = [[f"{100 - k * 0.1 - i:.1f}", str(1 + (i * k) % 5)] for i in range(4)]
        asks = [[f"{101 + k * 0.1 + i:.1f}", str(1 + (i + k) % 3)] for i in range(4)]
        writer.add_depth_snapshot(snapshot(T0 + k * S, bids, asks))
    assert writer.flush_now()
    end = T0 + 12 * S
    with engine.connect() as conn:
        stream = stream_row(conn)
        shared = periodic_snapshots(conn, stream, T0, end, S, 3)
        assert len(shared.snapshots) == 12
        for step_ms in (2000, 3000):  # the heatmap takes every 2nd or 3rd of them
            grid = HeatmapGrid(time_bucket_ms=step_ms, price_step=0.5, cell_rule="last")
            own = heatmap_cells(conn, stream, T0, end, grid, levels=3)
            given = heatmap_cells(conn, stream, T0, end, grid, 3, shared)
            pd.testing.assert_frame_equal(given, own)
            assert len(own) > 0
        for bucket in (S, 2 * S, 4 * S):
            own = imbalance_series(conn, stream, T0, end, 3, bucket)
            given = imbalance_series(conn, stream, T0, end, 3, bucket, shared)
            pd.testing.assert_frame_equal(given, own)
            assert len(own) == 12 * S // bucket
        # What the read does not hold is read: another window, other levels.
        other = imbalance_series(conn, stream, T0 + S, end, 3, S, shared)
        assert len(other) == 11
        assert shared.pick(T0, end, S, 2) is None and shared.pick(T0, end, 1_500_000, 3) is None


def test_events_of_a_stream_and_its_connections(writer, engine):
    events = [
        FeedEvent(FeedEventKind.GAP, T0 + 1, "linear", "BTCUSDT", 50, "expected u=5"),
        FeedEvent(FeedEventKind.RECOVERED, T0 + 2, "linear", "BTCUSDT", 50, "snapshot"),
        FeedEvent(FeedEventKind.DISCONNECT, T0 + 3, "linear", None, None, "", "linear-0"),
        FeedEvent(FeedEventKind.GAP, T0 + 4, "linear", "ETHUSDT", 50, "other stream"),
        FeedEvent(FeedEventKind.GAP, T0 + 5, "linear", "BTCUSDT", 200, "other depth"),
        FeedEvent(FeedEventKind.DISCONNECT, T0 + 6, "spot", None, None, "", "spot-0"),
    ]
    for event in events:
        writer.add_feed_event(event)
    assert writer.flush_now()
    with engine.connect() as conn:
        frame = event_frame(conn, stream_row(conn), T0, T0 + S)
        counts = event_counts(conn, T0)
    assert frame["kind"].tolist() == ["gap", "recovered", "disconnect"]
    assert frame["stream_level"].tolist() == [True, True, False]
    assert frame["t_ms"].tolist() == [(T0 + i) / 1000 for i in (1, 2, 3)]
    assert counts[("linear", "BTCUSDT", 50)] == {"gap": 1, "recovered": 1}
    assert counts[("linear", "BTCUSDT", 200)] == {"gap": 1}


def heartbeat(t_us: int, simulated: bool, valid: bool, p99: float = 40.0) -> CollectorHeartbeat:
    return CollectorHeartbeat(
        collector="host:1",
        local_us=t_us,
        host="host",
        pid=1,
        version="test",
        started_us=T0,
        interval_s=2.0,
        simulated=simulated,
        endpoint="ws://sim",
        retention_days=30,
        messages=10,
        messages_per_s=5.0,
        pending_rows=0,
        flush_failures=0,
        commit_p50_ms=10.0,
        commit_p99_ms=p99,
        streams=[str(STREAM)],
        valid_streams=[str(STREAM)] if valid else [],
    )


def test_heartbeats_say_alive_valid_and_simulated(writer, engine):
    writer.add_heartbeat(heartbeat(T0, simulated=False, valid=True, p99=30.0))
    writer.add_heartbeat(heartbeat(T0 + 2 * S, simulated=True, valid=False, p99=90.0))
    assert writer.flush_now()
    with engine.connect() as conn:
        key = str(STREAM)
        times = heartbeats(conn, key, T0, T0 + 10 * S).times_us
        last = last_heartbeat(conn, key, T0)
        sim_first = source_simulated(conn, [key], T0, T0 + S)
        sim_all = source_simulated(conn, [key], T0, T0 + 10 * S)
        other = last_heartbeat(conn, str(OTHER), T0)
        found = collectors(conn, T0)
        worst = commit_p99_ms(conn, "host:1", T0)
    np.testing.assert_array_equal(times, [T0, T0 + 2 * S])
    assert last is not None and last.local_us == T0 + 2 * S and not last.valid
    assert (sim_first, sim_all) == (False, True)
    assert other is None
    assert found["collector"].tolist() == ["host:1"] and found["local_us"].tolist() == [T0 + 2 * S]
    assert worst == 90.0


def test_table_sizes_cover_partitioned_and_plain_tables(writer, engine):
    add_top(writer, quote(T0, 1, "1", "2"))
    writer.add_feed_event(FeedEvent(FeedEventKind.GAP, T0, "linear", "BTCUSDT", 50, "x"))
    assert writer.flush_now()
    with engine.connect() as conn:
        sizes = dict(table_sizes(conn).itertuples(index=False))
        oldest = oldest_snapshot_us(conn, schema.partitions_oldest_first(conn, "top_seconds"))
    assert set(sizes) == set(SIZED_TABLES)
    assert sizes["book_chunks"] > 0 and sizes["top_seconds"] > 0 and sizes["feed_events"] > 0
    assert oldest == T0


@pytest.mark.parametrize(
    ("low", "high", "tick", "step"),
    [
        (100.0, 108.0, 0.1, 0.1),  # 8 / 80 = 0.1: one tick
        (100.0, 124.0, 0.1, 0.30000000000000004),  # 0.3 = three ticks
        (100.0, 108.0, None, 0.1),
        (100.0, 124.0, None, 0.5),  # 0.3 -> next 1-2-5 step
        (5.0, 5.0, None, 1.0),  # an empty range still buckets
    ],
)
def test_price_step(low, high, tick, step):
    assert price_step(low, high, tick) == pytest.approx(step)
