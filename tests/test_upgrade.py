"""`db upgrade` from a version 2 database with history: the history recorded
in the schema 1-3 tables stays exportable and visible, and a schema 4 writer
continuing the same stream adds to it without a seam."""

from __future__ import annotations

import io
import time

import sqlalchemy as sa

from depthwatch.export.tardis import ExportRequest, export_csv
from depthwatch.records import BookUpdate, Quote, StreamKey
from depthwatch.storage import schema
from depthwatch.storage.read.book import book_events, quotes
from depthwatch.storage.read.chunks import last_quote
from depthwatch.storage.read.streams import find_stream
from depthwatch.storage.read.tops import latest_book, message_count, top_series
from depthwatch.storage.write import BatchWriter, WriterConfig

STREAM = StreamKey("linear", "BTCUSDT", 50)
S = 1_000_000
T0 = (time.time_ns() // 1000 // (10 * S) - 6) * 10 * S  # a whole ten seconds, a minute ago
LEGACY_TABLES = ("book_events", "quotes", "depth_snapshots", "trades", "book_checkpoints")


def write_version_2_history(engine: sa.Engine) -> None:
    """What a version 2 collector left: a snapshot and two deltas, their
    quotes and a depth snapshot, in its own daily partitions."""
    assert schema.upgrade(engine, target=2) == 2
    day = T0 // schema.DAY_US
    with engine.begin() as conn:
        for table in LEGACY_TABLES:
            conn.execute(
                sa.text(
                    f"CREATE TABLE {schema.partition_name(table, day)} PARTITION OF {table} "
                    f"FOR VALUES FROM ({day * schema.DAY_US}) TO ({(day + 1) * schema.DAY_US})"
                )
            )
        conn.execute(
            sa.text(
                "INSERT INTO instruments (exchange, category, symbol) "
                "VALUES ('bybit', 'linear', 'BTCUSDT')"
            )
        )
        for u, snapshot, bids, asks in (
            (1, True, "{100.00,99.90}", "{100.10,100.20}"),
            (2, False, "{100.00}", "{}"),
            (3, False, "{}", "{100.10}"),
        ):
            sizes_b = "{2,1}" if snapshot else ("{5}" if bids != "{}" else "{}")
            sizes_a = "{3,4}" if snapshot else ("{0}" if asks != "{}" else "{}")
            conn.execute(
                sa.text(
                    """INSERT INTO book_events VALUES
                       (1, 50, :ts, :local, NULL, :u, :seq, :snap, :bp, :bs, :ap, :as_)"""
                ),
                {
                    "ts": T0 + u * 1000,
                    "local": T0 + u * 1000 + 5,
                    "u": u,
                    "seq": u * 10,
                    "snap": snapshot,
                    "bp": bids,
                    "bs": sizes_b,
                    "ap": asks,
                    "as_": sizes_a,
                },
            )
        conn.execute(
            sa.text(
                """INSERT INTO quotes VALUES
                   (1, 50, :t1, :t1, 1, 100.00, 2, 100.10, 3),
                   (1, 50, :t2, :t2, 2, 100.00, 5, 100.10, 3),
                   (1, 50, :t3, :t3, 3, 100.00, 5, 100.20, 4)"""
            ),
            {"t1": T0 + 1000, "t2": T0 + 2000, "t3": T0 + 3000},
        )
        conn.execute(
            sa.text(
                """INSERT INTO depth_snapshots VALUES
                   (1, 50, :t, :t, 3, '{100.00,99.90}', '{5,1}', '{100.20}', '{4}')"""
            ),
            {"t": T0 + S},
        )


def test_a_version_2_database_upgrades_and_its_history_stays_exportable_and_visible(engine):
    write_version_2_history(engine)
    assert schema.upgrade(engine) == schema.MIGRATIONS[-1].version
    # A schema 4 collector carries on with the same stream: u = 4, 5, packed.
    writer = BatchWriter(engine, WriterConfig(flush_interval_s=0.05))
    writer.start()
    for u, bid in ((4, "99.80"), (5, "100.05")):
        ts = T0 + 2 * S + u * 1000
        top = ("100.05", "7") if bid == "100.05" else ("100.00", "5")
        writer.add_quote(Quote(STREAM, ts, ts + 5, u, top[0], top[1], "100.20", "4"))
        writer.add_book_update(
            BookUpdate(STREAM, False, [[bid, "7"]], [], u, u * 10, ts, None, ts + 5)
        )
    assert writer.flush_now()
    assert writer.stop()

    with engine.connect() as conn:
        stream = find_stream(conn, "linear", "BTCUSDT", None)  # the one depth recorded
        assert stream.depth == 50
        events = list(book_events(conn, stream, 0, 2**62))
        assert [(e.u, e.is_snapshot) for e in events] == [(1, True)] + [
            (u, False) for u in range(2, 6)
        ]
        assert events[0].bid_prices == ["100.00", "99.90"]  # legacy digits, as stored
        ticks = list(quotes(conn, stream, 0, 2**62))
        # A quote repeating the top before it is not a tick.
        # u = 4 (packed) made the same top as u = 3 (legacy): not a tick.
        assert [(q[4], q[5], q[3]) for q in ticks] == [
            ("100.00", "2", "100.10"),
            ("100.00", "5", "100.10"),
            ("100.00", "5", "100.20"),
            ("100.05", "7", "100.20"),
        ]
        # The dashboard sees both: the legacy snapshot and tops, the packed newest top.
        book = latest_book(conn, stream, 10, 0)
        assert book is not None and book.bids["price"].tolist() == [100.0, 99.9]
        last = last_quote(conn, stream, 0)
        assert last is not None and last.bid_text == "100.05"
        top = top_series(conn, stream, T0, T0 + 3 * S, S)
        assert top["t_ms"].tolist() == [T0 / 1000, (T0 + 2 * S) / 1000]
        assert message_count(conn, stream, T0, T0 + 3 * S) == 5
        # psql sees the same messages, old and new.
        rows = conn.execute(
            sa.text(
                """SELECT DISTINCT u FROM depthwatch_book_updates('BTCUSDT',
                       to_timestamp(0), to_timestamp(4102444800)) ORDER BY u"""
            )
        ).scalars()
        assert list(rows) == [1, 2, 3, 4, 5]

    def exported(kind: str) -> list[list[str]]:
        out = io.StringIO()
        request = ExportRequest(kind, "linear", "BTCUSDT", T0, T0 + 10 * S)
        export_csv(engine, request, out, progress_to=None)
        return [line.split(",")[4:] for line in out.getvalue().splitlines()[1:]]

    # The L2 export replays across the seam: the book after u = 5 is exact.
    lines = exported("incremental_book_L2")
    assert lines[-1] == ["false", "bid", "100.05", "7"]
    assert len(lines) == 4 + 1 + 1 + 1 + 1  # the snapshot's 4 levels, then 4 deltas of one
    # book_snapshot reads both logs too: the top after each message across the seam.
    snapshots = exported("book_snapshot_1")
    assert snapshots[-1][2:] == ["100.05", "7"]  # the best bid after u = 5, as L2 has it
    assert len(snapshots) >= 2
