"""The notebook API against the simulator's ground truth, on a recording with
sequence gaps (withheld messages) and resyncs: book_at at random instants,
inside gaps and right after them; book_states after every message; the
load_* DataFrames equal the exports."""

from __future__ import annotations

import bisect
import io
import itertools
import random
from decimal import Decimal

import pandas as pd
import pytest

from depthwatch import history
from depthwatch.export.files import write_export
from depthwatch.export.sinks import TIME_COLUMNS
from depthwatch.export.tardis import ExportRequest
from depthwatch.records import StreamKey
from depthwatch.sim import SimConfig, TruthState

from .e2e import ALL_TIME, recorded_from_sim, stored_book_events

SYMBOL = "BTCUSDT"
STREAM = StreamKey("linear", SYMBOL, 50)


@pytest.fixture(scope="module")
def recorded(server_url):
    """~4 s at 300 msg/s with every 250th delta withheld (a gap, then a resync):
    (engine, ground truth)."""
    sim = SimConfig(
        symbols=(SYMBOL,), rate=300, deltas=1200, seed=31, trades_rate=20, drop_every=250
    )
    with recorded_from_sim(server_url, sim, trades=True) as (_, engine, truth):
        yield engine, truth[SYMBOL]


def floats(levels) -> list[tuple[float, float]]:
    return [(float(Decimal(p)), float(Decimal(s))) for p, s in levels]


def truth_at(truth: list[TruthState], t_us: int) -> TruthState:
    """The exchange's book after every message stamped at or before t."""
    times = [s.ts_ms * 1000 for s in truth]
    return truth[bisect.bisect_right(times, t_us) - 1]


def unknown_windows(engine) -> list[tuple[int, int]]:
    """[last message before a hole in u, the snapshot after it): from the stored log."""
    events = stored_book_events(engine, STREAM)
    windows = []
    for before, after in itertools.pairwise(events):
        if after.u != before.u + 1:
            resync = next(e for e in events if e.ts_us >= after.ts_us and e.is_snapshot)
            windows.append((before.ts_us, resync.ts_us))
    return windows


def test_book_at_equals_the_exchanges_book_or_says_it_is_unknown(recorded):
    engine, truth = recorded
    events = stored_book_events(engine, STREAM)
    windows = unknown_windows(engine)
    assert len(windows) >= 3, "the recording should hold several gaps"
    first, last = events[0].ts_us, events[-1].ts_us
    rng = random.Random(7)
    instants = [rng.randrange(first, last) for _ in range(60)]
    for start, end in windows:
        # Just before the gap's hole, inside it, at its resync and right after.
        instants += [start - 1_000, (start + end) // 2, end - 1, end, end + 1, end + 5_000]
    known = 0
    for t in instants:
        book = history.book_at(SYMBOL, t, engine=engine)
        inside = any(start <= t < end for start, end in windows)
        if inside:
            assert not book.known, f"{t} lies in a hole of the log, yet a book was given"
            assert "gap" in book.reason and book.bids == [] and book.asks == []
            continue
        assert book.known, f"{t}: {book.reason}"
        want = truth_at(truth, t)
        assert book.bids == floats(want.bids), t
        assert book.asks == floats(want.asks), t
        assert [p for p, _ in book.bids] == sorted((p for p, _ in book.bids), reverse=True)
        known += 1
    assert known > 60
    before = history.book_at(SYMBOL, first - 1, engine=engine)
    assert not before.known and "no recorded book" in before.reason


def test_book_states_follow_every_message_and_mark_the_holes(recorded):
    engine, truth = recorded
    by_seq = {s.seq: s for s in truth}
    events = stored_book_events(engine, STREAM)
    states = list(history.book_states(SYMBOL, *ALL_TIME, levels=10, engine=engine))
    known = [s for s in states if s.known]
    lost = [s for s in states if not s.known]
    assert len(lost) == len(unknown_windows(engine))
    # Each known state is the book after a recorded message applied to a valid
    # book: the log's messages minus those on a broken book.
    applied = []
    valid, last_u = False, 0
    for e in events:
        if e.is_snapshot:
            valid = True
        elif not valid or e.u != last_u + 1:
            valid = False
            continue
        last_u = e.u
        applied.append(e)
    assert len(known) == len(applied)
    for state, event in zip(known, applied, strict=True):
        want = by_seq[event.seq]
        assert state.time_us == event.ts_us
        assert state.bids == floats(want.bids[:10]) and state.asks == floats(want.asks[:10])


@pytest.mark.parametrize("kind", ["incremental_book_L2", "quotes", "trades"])
def test_load_gives_typed_frames_equal_to_the_export(recorded, kind):
    engine, _ = recorded
    loader = {
        "incremental_book_L2": history.load_book_l2,
        "quotes": history.load_quotes,
        "trades": history.load_trades,
    }[kind]
    frame = loader(SYMBOL, "2020-01-01", "now", engine=engine)
    out = io.BytesIO()
    write_export(engine, [ExportRequest(kind, "linear", SYMBOL, *ALL_TIME)], "csv", out, None)
    exported = pd.read_csv(io.BytesIO(out.getvalue()), dtype={"id": str})
    assert list(frame.columns) == [*exported.columns, *TIME_COLUMNS]
    assert len(frame) == len(exported) > 0
    assert frame["timestamp"].dtype == "int64"
    assert str(frame["exchange_time"].dtype) == "datetime64[us, UTC]"
    assert frame["price" if kind != "quotes" else "bid_price"].dtype == "float64"
    for column in exported.columns:
        pd.testing.assert_series_equal(
            frame[column], exported[column], check_dtype=False, check_names=False
        )


def test_book_snapshots_load_and_times_in_every_form(recorded):
    engine, truth = recorded
    start_us = truth[len(truth) // 2].ts_ms * 1000
    as_text = pd.Timestamp(start_us, unit="us", tz="UTC").isoformat()
    frames = [
        history.load_book_snapshots(SYMBOL, when, "now", levels=5, interval="50ms", engine=engine)
        for when in (start_us, as_text, pd.Timestamp(start_us, unit="us", tz="UTC"))
    ]
    # How many rows depends on how long the resyncs took (a loaded machine
    # reconnects slower and loses more of the stream), so the rows are checked
    # for what they must be, not counted: bucket ends, none inside a hole.
    assert len(frames[0]) > 0
    windows = unknown_windows(engine)
    for ts in frames[0]["timestamp"]:
        assert ts % 50_000 == 0 and ts >= start_us
        assert not any(a < ts <= b for a, b in windows), (ts, windows)
    for other in frames[1:]:
        pd.testing.assert_frame_equal(frames[0], other)
    assert frames[0].columns[4:8].tolist() == [
        "asks[0].price",
        "asks[0].amount",
        "bids[0].price",
        "bids[0].amount",
    ]
    with pytest.raises(ValueError, match="end must be after start"):
        history.load_quotes(SYMBOL, "now", "-1h", engine=engine)
    # `end` defaults to now, as --end does.
    pd.testing.assert_frame_equal(
        history.load_quotes(SYMBOL, start_us, engine=engine),
        history.load_quotes(SYMBOL, start_us, "2100-01-01", engine=engine),
    )


def test_load_gaps_covers_every_hole_in_the_log(recorded):
    engine, truth = recorded
    first, last = truth[0].ts_ms * 1000, truth[-1].ts_ms * 1000 + 1_000_000
    gaps = history.load_gaps(SYMBOL, first, last, engine=engine)
    assert str(gaps["start_time"].dtype) == "datetime64[us, UTC]"
    assert (gaps["symbol"] == SYMBOL).all() and (gaps["exchange"] == "bybit").all()
    slack = 50_000  # receive time trails exchange time by a few ms in the simulator
    spans = list(zip(gaps["start_timestamp"], gaps["end_timestamp"], strict=True))
    for start, end in unknown_windows(engine):
        middle = (start + end) // 2
        assert any(a - slack <= middle < b + slack for a, b in spans), (start, end, spans)


def test_export_kind_gaps_holds_what_load_gaps_finds_in_every_format(recorded):
    import gzip

    import pyarrow.parquet as pq

    engine, truth = recorded
    first, last = truth[0].ts_ms * 1000, truth[-1].ts_ms * 1000 + 1_000_000
    want = history.load_gaps(SYMBOL, first, last, engine=engine)
    assert len(want) >= 3
    request = ExportRequest("gaps", "linear", SYMBOL, first, last)
    files = {}
    for fmt in ("csv", "csv.gz", "parquet"):
        out = io.BytesIO()
        write_export(engine, [request], fmt, out, None)
        files[fmt] = out.getvalue()
    assert gzip.decompress(files["csv.gz"]) == files["csv"]
    as_csv = pd.read_csv(io.BytesIO(files["csv"]), keep_default_na=False)
    table = pq.read_table(io.BytesIO(files["parquet"])).to_pandas()
    assert list(table.columns) == list(want.columns)
    for column in as_csv.columns:
        pd.testing.assert_series_equal(as_csv[column], want[column], check_dtype=False)
        pd.testing.assert_series_equal(table[column], want[column], check_dtype=False)
