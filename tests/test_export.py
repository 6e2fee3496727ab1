"""The Tardis export's book rules, on hand-made event logs in a real PostgreSQL."""

from __future__ import annotations

import csv
import io

import sqlalchemy as sa

from depthwatch.export.tardis import ExportRequest, export_csv
from depthwatch.records import BookUpdate, StreamKey
from depthwatch.storage import schema
from depthwatch.storage.write import BatchWriter, WriterConfig

STREAM = StreamKey("linear", "BTCUSDT", 50)
T = 1_767_225_600_000  # 2026-01-01, ms


def event(u, seq, ts_ms, bids=(), asks=(), snapshot=False, local_offset_us=500):
    return BookUpdate(
        STREAM,
        snapshot,
        [list(level) for level in bids],
        [list(level) for level in asks],
        u,
        seq,
        ts_ms * 1000,
        None,
        ts_ms * 1000 + local_offset_us,
    )


def record(engine, events):
    schema.upgrade(engine)
    writer = BatchWriter(engine, WriterConfig(flush_interval_s=0.05))
    writer.start()
    for e in events:
        writer.add_book_update(e)
    assert writer.stop()


def l2(engine, start_ms=T - 10_000, end_ms=T + 10_000):
    out = io.StringIO()
    request = ExportRequest(
        "incremental_book_L2", "linear", "BTCUSDT", start_ms * 1000, end_ms * 1000
    )
    export_csv(engine, request, out, progress_to=None)
    return list(csv.DictReader(io.StringIO(out.getvalue())))


def brief(rows):
    return [(r["timestamp"], r["is_snapshot"], r["side"], r["price"], r["amount"]) for r in rows]


def test_a_restart_within_the_same_millisecond_keeps_its_order(engine):
    record(
        engine,
        [
            event(100, 1_000, T, [("10.0", "1")], [("11.0", "1")], snapshot=True),
            event(101, 1_001, T + 1, [("10.0", "2")]),
            # The exchange restarts the stream in that same millisecond: u = 1.
            event(1, 1_002, T + 1, [("20.0", "1")], [("21.0", "1")], True, 700),
            event(2, 1_003, T + 1, [("20.0", "5")], local_offset_us=900),
        ],
    )
    t1 = str((T + 1) * 1000)
    assert brief(l2(engine)) == [
        (str(T * 1000), "true", "bid", "10.0", "1"),
        (str(T * 1000), "true", "ask", "11.0", "1"),
        (t1, "false", "bid", "10.0", "2"),
        (t1, "true", "bid", "20.0", "1"),
        (t1, "true", "ask", "21.0", "1"),
        (t1, "false", "bid", "20.0", "5"),
    ]


def test_an_export_starting_mid_stream_opens_with_the_book_at_start(engine):
    record(
        engine,
        [
            event(10, 1, T, [("10.0", "1"), ("9.0", "1")], [("11.0", "1")], snapshot=True),
            event(11, 2, T + 100, [("9.0", "0")]),
            event(12, 3, T + 200, [("10.0", "3")]),
            event(13, 4, T + 300, [], [("11.0", "4")]),
        ],
    )
    start = T + 150
    rows = l2(engine, start_ms=start)
    assert brief(rows) == [
        (str(start * 1000), "true", "bid", "10.0", "1"),
        (str(start * 1000), "true", "ask", "11.0", "1"),
        (str((T + 200) * 1000), "false", "bid", "10.0", "3"),
        (str((T + 300) * 1000), "false", "ask", "11.0", "4"),
    ]
    # [start, end) on exchange time: the delta at T+300 is excluded by end = T+300.
    assert len(l2(engine, start_ms=start, end_ms=T + 300)) == 3


def test_after_a_hole_in_the_log_the_export_waits_for_the_next_snapshot(engine):
    record(
        engine,
        [
            event(10, 1, T, [("10.0", "1")], [("11.0", "1")], snapshot=True),
            event(11, 2, T + 1, [("10.0", "2")]),
            # u=12 is missing (say a collector's row lost to a bug): 13 and 14 are
            # deltas on a book we do not have, and must not be exported.
            event(13, 4, T + 3, [("10.0", "4")]),
            event(14, 5, T + 4, [("10.0", "5")]),
            event(20, 9, T + 9, [("10.5", "1")], [("11.0", "2")], snapshot=True),
            event(21, 10, T + 10, [("10.5", "2")]),
        ],
    )
    amounts = [(r["is_snapshot"], r["price"], r["amount"]) for r in l2(engine)]
    assert amounts == [
        ("true", "10.0", "1"),
        ("true", "11.0", "1"),
        ("false", "10.0", "2"),
        ("true", "10.5", "1"),
        ("true", "11.0", "2"),
        ("false", "10.5", "2"),
    ]


def test_no_data_before_the_first_snapshot_is_exported(engine):
    record(
        engine,
        [
            event(5, 1, T, [("10.0", "1")]),  # a delta with no snapshot before it
            event(6, 2, T + 1, [("10.0", "2")], [("11.0", "1")], snapshot=True),
        ],
    )
    assert [r["is_snapshot"] for r in l2(engine)] == ["true", "true"]


def test_an_export_starts_from_a_checkpoint_when_the_snapshot_is_gone(engine):
    from depthwatch.book import StreamBook

    schema.upgrade(engine)
    writer = BatchWriter(engine, WriterConfig(flush_interval_s=0.05))
    writer.start()
    book = StreamBook(STREAM, writer, checkpoint_interval_us=10_000_000)
    hour = T - T % 10_000  # a 10 s boundary
    book.apply(event(10, 1, hour - 5_000, [("10.0", "1")], [("11.0", "1")], snapshot=True))
    book.apply(event(11, 2, hour - 1_000, [("10.0", "2")]))
    book.apply(event(12, 3, hour + 1_000, [("10.0", "3")]))  # checkpoint at `hour`: u=11
    book.apply(event(13, 4, hour + 2_000, [], [("11.0", "4")]))
    assert writer.stop()
    with engine.begin() as conn:  # retention took the exchange snapshot's rows
        conn.execute(sa.text("DELETE FROM book_events WHERE is_snapshot"))
    start = hour + 500
    rows = brief(l2(engine, start_ms=start, end_ms=hour + 60_000))
    assert rows == [
        (str(start * 1000), "true", "bid", "10.0", "2"),
        (str(start * 1000), "true", "ask", "11.0", "1"),
        (str((hour + 1_000) * 1000), "false", "bid", "10.0", "3"),
        (str((hour + 2_000) * 1000), "false", "ask", "11.0", "4"),
    ]


def test_several_recorded_depths_need_a_choice(engine):
    import pytest

    from depthwatch.storage.read.streams import NotRecorded

    record(engine, [event(1, 1, T, [("10.0", "1")], [("11.0", "1")], snapshot=True)])
    deep = BookUpdate(
        StreamKey("linear", "BTCUSDT", 200),
        True,
        [["10.0", "1"]],
        [],
        1,
        1,
        T * 1000,
        None,
        T * 1000,
    )
    writer = BatchWriter(engine, WriterConfig(flush_interval_s=0.05))
    writer.start()
    writer.add_book_update(deep)
    assert writer.stop()
    with pytest.raises(NotRecorded, match=r"recorded at depths 50, 200: choose one"):
        l2(engine)
    out = io.StringIO()
    request = ExportRequest(
        "incremental_book_L2", "linear", "BTCUSDT", 0, (T + 1) * 1000, depth=200
    )
    export_csv(engine, request, out, progress_to=None)
    assert out.getvalue().splitlines()[1:] == [
        f"bybit,BTCUSDT,{T * 1000},{T * 1000},true,bid,10.0,1"
    ]
