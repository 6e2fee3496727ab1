"""The History page (app/history.py) and its estimates (dashboard_queries'
book_volume, trade_count, source_simulated, recorded_span):

- the planning logic on its own (kinds, presets, row and byte estimates, the
  equivalent command line, which the CLI's own parser must accept);
- the estimates against what the export really writes, on a recording of the
  simulator by the real collector into a real PostgreSQL;
- the page rendered headless (AppTest): estimate and button, the command
  instead of the button past the limits, URL parameters, empty and dead
  databases;
- the page in Chromium over a live simulator, collector and dashboard: the
  file downloaded equals the CLI's export of the same range, byte for byte,
  and a large request shows a command that, run as shown, writes it again.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa
import streamlit as st
from playwright.sync_api import Browser, Page, expect
from streamlit.testing.v1 import AppTest

from depthwatch.app import downloads
from depthwatch.app import history as h
from depthwatch.app import planning as pl
from depthwatch.clock import DAY_US, SECOND_US, parse_time_us
from depthwatch.export import files
from depthwatch.export.kinds import ExportKind, SnapshotSpec
from depthwatch.export.tardis import ExportRequest
from depthwatch.sim import SimConfig, SimulatorThread
from depthwatch.storage.read.book import book_events
from depthwatch.storage.read.events import source_simulated
from depthwatch.storage.read.rows import BookVolume, TradeCount
from depthwatch.storage.read.streams import Stream, list_streams
from depthwatch.storage.read.tops import book_volume, recorded_span
from depthwatch.storage.read.trades import trade_count

from .conftest import cli_env, free_port, new_database, run_cli
from .e2e import collect_until_caught_up
from .procs import Child, Children, healthy, listening, wait_until
from .test_browser import (  # noqa: F401 (browser: a fixture)
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    EXPECT_MS,
    START_TIMEOUT_S,
    VIEWPORT,
    browser,
    screenshot,
)
from .test_e2e import config_for

K = ExportKind.parse

ROOT = Path(__file__).resolve().parents[1]
SYMBOLS = ("BTCUSDT", "ETHUSDT")
DOWN_URL = "postgresql://watcher:s3cret@127.0.0.1:9/nowhere"
T0 = 1_767_225_600 * SECOND_US  # 2026-01-01T00:00:00Z


# ---- planning logic, no database


def volume(**fields: object) -> BookVolume:
    base: dict[str, object] = dict(
        messages=1_000,
        legacy_messages=0,
        snapshots=1,
        legacy_quotes=0,
        buckets=60,
        first_us=T0,
        last_us=T0 + 59 * SECOND_US,
        sample_messages=500,
        delta_levels=3.0,
        snapshot_levels=100.0,
        new_quotes=0.5,
        recorded_before=True,
    )
    return BookVolume(**(base | fields))  # type: ignore[arg-type]


def test_kind_strings_round_trip():
    assert h.snapshot_kind(25, "100ms") == "book_snapshot_25_100ms"
    assert h.snapshot_kind(25, "") == "book_snapshot_25"
    assert h.split_kind("book_snapshot_25_100ms") == ("book_snapshot", 25, "100ms")
    assert h.split_kind("book_snapshot_5") == ("book_snapshot", 5, "")
    assert h.split_kind("quotes")[0] == "quotes"
    for bad in ("book_snapshot_7_3s", "nonsense", "book_snapshot_x"):
        with pytest.raises(ValueError):
            h.split_kind(bad)


def test_presets_end_at_a_whole_second_and_a_day_is_a_utc_day():
    now = T0 + 5 * 3_600 * SECOND_US + 123_456
    start, end = h.preset_range("Last 10 min", now, now)
    assert (start, end) == (end - 600 * SECOND_US, now - 123_456)
    assert h.preset_range("Last 24 h", now, now)[0] == now - 123_456 - DAY_US
    assert h.preset_range(h.DAY_PRESET, now, T0 + DAY_US + 7) == (T0 + DAY_US, T0 + 2 * DAY_US)


def test_book_rows_per_kind():
    v = volume()
    start, end = T0, T0 + 60 * SECOND_US
    l2 = pl.book_rows(K("incremental_book_L2"), v, 50, start, end)
    # 999 deltas x 3 levels + (1 snapshot + the opening book) x 100 levels
    assert (l2.rows, l2.mark) == (999 * 3 + 2 * 100, "≈")
    no_sample = pl.book_rows(K("incremental_book_L2"), volume(snapshot_levels=None), 50, start, end)
    assert no_sample.rows == 999 * 3 + 2 * 2 * 50  # a full book per snapshot
    first = pl.book_rows(K("incremental_book_L2"), volume(recorded_before=False), 50, start, end)
    assert first.rows == 999 * 3 + 100  # the range holds the recording's start: no opening book
    assert pl.book_rows(K("quotes"), volume(legacy_quotes=7), 50, start, end).rows == 500 + 7
    assert pl.book_rows(K("quotes"), volume(messages=0, legacy_quotes=7), 50, start, end) == (
        pl.RowEstimate(7, "=")
    )
    every_change = pl.book_rows(K("book_snapshot_25"), v, 50, start, end)
    assert (every_change.rows, every_change.mark) == (1_001, "≤")
    # 1 s buckets: 60 hold messages, 60 bucket ends in range: at most 60.
    assert pl.book_rows(K("book_snapshot_25_1s"), v, 50, start, end).rows == 60
    assert pl.book_rows(K("book_snapshot_25_1m"), v, 50, start, end).rows == 1
    busy = volume(buckets=600)  # 100 ms buckets holding messages
    assert pl.book_rows(K("book_snapshot_25_100ms"), busy, 50, start, end).rows == 600
    empty = volume(messages=0, snapshots=0, buckets=0)
    assert pl.book_rows(K("incremental_book_L2"), empty, 50, start, end) == pl.RowEstimate(0, "=")
    assert pl.trade_rows(TradeCount(12, True, T0, T0)) == pl.RowEstimate(12, "=")
    assert pl.trade_rows(TradeCount(120_000, False, T0, T0)).text == "≈ 120,000"
    assert pl.combined_mark(["=", "≤"]) == "≤" and pl.combined_mark(["≈", "≤"]) == "≈"


def test_bytes_follow_the_measured_table():
    rows = 10_000
    csv = pl.file_bytes(K("incremental_book_L2"), "csv", "bybit", "BTCUSDT", rows)
    head = len("exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount\n")
    per_row = len("bybit,BTCUSDT,") + pl.CSV_ROW_BYTES["incremental_book_L2"]
    assert csv == round(rows * per_row + head)
    assert csv - head == pytest.approx(rows * 72.07, rel=0.01)  # as measured
    assert pl.file_bytes(K("incremental_book_L2"), "csv.gz", "bybit", "BTCUSDT", rows) < csv / 5
    five = pl.file_bytes(K("book_snapshot_5"), "csv", "bybit", "BTCUSDT", rows)
    fifty = pl.file_bytes(K("book_snapshot_50"), "csv", "bybit", "BTCUSDT", rows)
    assert five / rows == pytest.approx(198, rel=0.05) and fifty / rows == pytest.approx(
        1548, rel=0.05
    )
    assert pl.human_bytes(1536) == "1.5 KB" and pl.human_bytes(3 * pl.MB) == "3.0 MB"


def test_the_command_line_is_the_clis_own(tmp_path):
    """The command parses with cli.build_parser to the very request."""
    from depthwatch.cli import build_parser

    start, end = T0 + 123_456, T0 + 2 * DAY_US
    requests = [
        ExportRequest("book_snapshot_25_100ms", "linear", s, start, end, 50) for s in SYMBOLS
    ]
    command = pl.cli_command(requests, "csv.gz")
    words = shlex.split(command)
    assert words[:2] == ["depthwatch", "export"]
    args = build_parser().parse_args(words[1:])
    assert (args.kind, args.symbols, args.category) == (
        "book_snapshot_25_100ms",
        "BTCUSDT,ETHUSDT",
        "linear",
    )
    assert (args.start, args.end, args.format, args.depth) == (start, end, "csv.gz", 50)
    assert (args.split, args.out) == ("daily", "exports/")  # two UTC days
    one_day = [ExportRequest("trades", "linear", "BTCUSDT", T0, T0 + DAY_US, 50)]
    args = build_parser().parse_args(shlex.split(pl.cli_command(one_day, "csv", "f.csv"))[1:])
    assert (args.split, args.depth, args.out) == (None, None, "f.csv")  # trades: no depth
    assert parse_time_us(pl.iso(start)) == start and pl.iso(T0) == "2026-01-01T00:00:00Z"


def test_download_names():
    one = ExportRequest("quotes", "linear", "BTCUSDT", T0, T0 + 60 * SECOND_US)
    assert pl.download_name([one], "csv.gz") == "bybit_quotes_2026-01-01_BTCUSDT.csv.gz"
    two = [one, ExportRequest("quotes", "linear", "ETHUSDT", T0, T0 + 60 * SECOND_US)]
    assert pl.download_name(two, "parquet") == "bybit_quotes_2026-01-01_multi.parquet"


def test_limits_come_from_the_environment():
    default = pl.limits({})
    assert (default.rows, default.bytes) == (1_000_000, 100 * pl.MB)
    custom = pl.limits({pl.MAX_ROWS_ENV: "10", pl.MAX_MB_ENV: "0.5"})
    assert (custom.rows, custom.bytes) == (10, pl.MB // 2)
    assert pl.limits({pl.MAX_ROWS_ENV: "lots"}) == default  # logged, ignored
    assert pl.over_limits(11, 0, custom) == "more than 10 rows"
    assert pl.over_limits(5, pl.MB, custom) == "more than 512.0 KB"
    assert pl.over_limits(10, pl.MB // 2, custom) is None


def test_a_file_outgrowing_the_hard_limit_is_refused():
    capped = downloads.CappedFile(io.BytesIO(), 10)
    capped.write(b"12345")
    with pytest.raises(downloads.FileTooLarge):
        capped.write(b"123456")


# ---- estimates against the export, on a real recording


@pytest.fixture(scope="module")
def recorded_url(server_url: str) -> Iterator[str]:
    """A few seconds of two simulated symbols at depths 1 and 50, with trades
    and gaps (so resync snapshots), recorded by the real collector."""
    with new_database(server_url) as url:
        sim = SimulatorThread(
            SimConfig(
                symbols=SYMBOLS, rate=200, deltas=1_200, seed=8, trades_rate=40, drop_every=400
            )
        ).start()
        try:
            # Two depths of each symbol: the page asks which one.
            config = config_for(sim, url, trades=True, depths=(1, 50), heartbeat_interval_s=0.5)
            collect_until_caught_up(sim, config)
        finally:
            sim.stop()
        yield url
        st.cache_resource.clear()  # the dashboard's pool holds connections to it


@pytest.fixture(scope="module")
def recorded(recorded_url: str) -> Iterator[tuple[sa.Engine, list[Stream], int, int]]:
    """(engine, streams, start, end): whole seconds around everything recorded."""
    engine = sa.create_engine(recorded_url)
    with engine.connect() as conn:
        streams = list_streams(conn)
        spans = [recorded_span(conn, s) for s in streams]
    assert all(spans)
    start = min(s[0] for s in spans if s)
    end = max(s[1] for s in spans if s) + SECOND_US
    yield engine, streams, start, end
    engine.dispose()


def exported_rows(engine: sa.Engine, request: ExportRequest) -> int:
    return files.write_export(engine, [request], "csv", io.BytesIO(), progress_to=None)


def test_book_volume_counts_messages_exactly(recorded):
    engine, streams, start, end = recorded
    with engine.connect() as conn:
        for stream in streams:
            v = book_volume(conn, stream, start, end)
            stored = list(book_events(conn, stream, start, end))
            assert v.messages == len(stored) and v.legacy_messages == 0
            snapshots = sum(e.is_snapshot for e in stored)
            if stream.depth == 1:  # all snapshots, most inside chunks: from the sample
                assert v.snapshots == pytest.approx(snapshots, rel=0.05)
            else:  # each opens a chunk: counted
                assert v.snapshots == snapshots > 1  # resyncs after the gaps
            assert v.sample_messages > 0 and (v.delta_levels > 0 or stream.depth == 1)
            assert v.first_us == start - start % SECOND_US or v.first_us >= start
            # A later half-range counts only its seconds.
            middle = start + (end - start) // 2 // SECOND_US * SECOND_US
            later = book_volume(conn, stream, middle, end)
            assert later.messages == sum(1 for e in stored if e.ts_us >= middle)


@pytest.mark.parametrize("kind", ["incremental_book_L2", "quotes"])
def test_book_estimates_are_close_to_the_export(recorded, kind):
    engine, streams, start, end = recorded
    for stream in streams:
        request = ExportRequest(kind, stream.category, stream.symbol, start, end, stream.depth)
        with engine.connect() as conn:
            v = book_volume(conn, stream, start, end)
        estimate = pl.book_rows(K(kind), v, stream.depth, start, end)
        actual = exported_rows(engine, request)
        print(f"{stream.symbol} {kind}: estimated {estimate.text}, exported {actual:,}")
        assert estimate.mark == "≈"
        assert estimate.rows == pytest.approx(actual, rel=0.15)


@pytest.mark.parametrize(
    "kind", ["book_snapshot_5", "book_snapshot_25_100ms", "book_snapshot_10_1s"]
)
def test_snapshot_bounds_hold(recorded, kind):
    engine, streams, start, end = recorded
    spec = SnapshotSpec.parse(kind)
    assert spec is not None
    for stream in streams:
        if spec.levels > stream.depth:
            continue  # the export refuses it; the page offers no such levels
        with engine.connect() as conn:
            v = book_volume(conn, stream, start, end, spec.interval_us)
        bound = pl.book_rows(K(kind), v, stream.depth, start, end)
        actual = exported_rows(
            engine, ExportRequest(kind, "linear", stream.symbol, start, end, stream.depth)
        )
        print(f"{stream.symbol} {kind}: bound {bound.text}, exported {actual:,}")
        assert bound.mark == "≤" and actual <= bound.rows
        if spec.interval_us:  # the buckets' bound is a tight one
            assert bound.rows <= 3 * max(actual, 1)


def test_trades_are_counted_exactly_then_extrapolated(recorded):
    engine, streams, start, end = recorded
    for stream in streams:
        actual = exported_rows(engine, ExportRequest("trades", "linear", stream.symbol, start, end))
        assert actual > 20
        cap = actual // 3
        with engine.connect() as conn:
            exact = trade_count(conn, stream.instrument_id, start, end)
            # A third counted, the rest extrapolated from their pace.
            capped = trade_count(conn, stream.instrument_id, start, end, cap=cap)
            times = (
                conn.execute(
                    sa.text(
                        "SELECT ts_us FROM trades WHERE instrument_id = :i AND ts_us >= :s "
                        "AND ts_us < :e ORDER BY ts_us"
                    ),
                    {"i": stream.instrument_id, "s": start, "e": end},
                )
                .scalars()
                .all()
            )
        assert (exact.rows, exact.exact) == (actual, True) and len(times) == actual
        print(f"trades: {actual} exported, {capped.rows} extrapolated from {cap}")
        # The pace of the first `cap` trades carried over the whole range. How
        # close that comes to the truth depends on how steady the simulator
        # was (a loaded machine sends in bursts), so the arithmetic is checked
        # against the stored times rather than the total.
        span = max(1, times[cap - 1] - times[0])
        expected = max(cap, round(cap * (times[-1] - times[0]) / span))
        assert not capped.exact and (capped.first_us, capped.last_us) == (times[0], times[-1])
        assert capped.rows == expected


def test_source_and_span(recorded):
    engine, streams, start, end = recorded
    with engine.connect() as conn:
        keys = [s.key for s in streams]
        assert source_simulated(conn, keys, start, end + 10 * SECOND_US) is True
        assert source_simulated(conn, keys, T0, T0 + SECOND_US) is None  # no heartbeat kept
        nothing = book_volume(conn, streams[0], T0, T0 + 1)
        assert (nothing.messages, nothing.first_us, nothing.sample_messages) == (0, None, 0)


def test_the_plan_checks_requests_and_is_fast(recorded):
    engine, _, start, end = recorded
    requests = [ExportRequest("incremental_book_L2", "linear", s, start, end, 50) for s in SYMBOLS]
    result = pl.plan(engine, requests, "csv")
    assert result.error is None and result.simulated is True
    assert [s.symbol for s in result.symbols] == list(SYMBOLS)
    assert result.rows.mark == "≈" and result.bytes > 0
    assert result.took_ms < 1_000
    missing = [ExportRequest("quotes", "linear", "NOPEUSDT", start, end)]
    assert "NOPEUSDT" in (pl.plan(engine, missing, "csv").error or "")
    too_deep = [ExportRequest("book_snapshot_200", "linear", "BTCUSDT", start, end, 50)]
    assert "at most book_snapshot_50" in (pl.plan(engine, too_deep, "csv").error or "")


@pytest.mark.parametrize("fmt", files.FORMATS)
def test_the_store_makes_the_exports_bytes_on_disk_within_the_cap(recorded, fmt, tmp_path):
    """Every format writes through the capped file the page uses (gzip and
    Parquet included), byte for byte what the CLI's writer makes."""
    engine, _, start, end = recorded
    requests = [ExportRequest("quotes", "linear", s, start, end, 50) for s in SYMBOLS]
    store = downloads.FileStore(tmp_path)

    def write(out) -> int:
        return files.write_export(engine, requests, fmt, out, progress_to=None)

    ready = store.build("q." + fmt, files.MEDIA_TYPES[fmt], write, cap=100 * pl.MB)
    expected = io.BytesIO()
    rows = files.write_export(engine, requests, fmt, expected, progress_to=None)
    assert ready.path.read_bytes() == expected.getvalue()  # both symbols, one after the other
    assert (ready.rows, ready.size) == (rows, len(expected.getvalue()))
    with pytest.raises(downloads.FileTooLarge):
        store.build("big", "text/csv", write, cap=1_000)
    assert [p.name for p in tmp_path.iterdir()] == [ready.token]  # nothing left of the big one


# ---- the page, headless


def page() -> AppTest:
    return AppTest.from_string("from depthwatch.app import history\nhistory.render()")


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += (
        [e.value for e in at.error] + [i.value for i in at.info] + [w.value for w in at.warning]
    )
    return "\n".join(str(p) for p in parts)


def opened(recorded, **params: str) -> AppTest:
    _, _, start, end = recorded
    at = page()
    wanted = {"symbols": "BTCUSDT", "start": pl.iso(start), "end": pl.iso(end)} | params
    for name, value in wanted.items():
        at.query_params[name] = value
    return at.run(timeout=30)


def test_the_page_estimates_and_offers_the_file(recorded, recorded_url, use_database, monkeypatch):
    use_database(recorded_url)
    monkeypatch.delenv(pl.MAX_ROWS_ENV, raising=False)
    at = opened(recorded, kind="quotes", format="csv.gz")
    assert not at.exception
    assert at.title[0].value == "History"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Rows"].startswith("≈ ") and metrics["Size"].startswith("≈ ")
    assert at.segmented_control(key="history_kind").value == "quotes"
    assert at.segmented_control(key="history_format").value == "csv.gz"
    assert at.button(key="history_download").label.startswith("Make bybit_quotes_")
    assert at.selectbox(key="history_depth").value == 50  # recorded at depths 1 and 50
    commands = [c.value for c in at.code]
    assert all("--depth 50" in c for c in commands)
    assert any(
        c.endswith("--out bybit_quotes_" + c.split("_")[-2] + "_BTCUSDT.csv.gz") for c in commands
    ), commands
    shown = texts(at)
    assert "SIMULATED" in shown and "[" in shown and "exchange timestamp" in shown
    # The URL holds every choice (a permalink).
    assert at.query_params["kind"] in ("quotes", ["quotes"])
    # Another kind: the estimate follows, the button stays.
    at.segmented_control(key="history_kind").set_value("book_snapshot").run(timeout=30)
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Rows"].startswith("≤ ")
    assert at.button(key="history_download").label.startswith("Make bybit_book_snapshot_")
    # Clicked: the file is made on disk and the page links to it, once.
    at.button(key="history_download").click().run(timeout=60)
    assert not at.exception
    links = [m.value for m in at.markdown if "/api/download/" in m.value]
    assert len(links) == 1 and 'download="bybit_book_snapshot_' in links[0]
    token = links[0].split("/api/download/")[1].split('"')[0]
    ready = downloads.STORE.take(token)
    assert ready is not None and ready.rows > 0 and ready.path.stat().st_size == ready.size
    assert downloads.STORE.take(token) is None  # spent
    ready.path.unlink()


def test_a_large_request_gets_the_command_instead_of_the_button(
    recorded, recorded_url, use_database, monkeypatch
):
    use_database(recorded_url)
    monkeypatch.setenv(pl.MAX_ROWS_ENV, "10")
    at = opened(recorded, symbols="BTCUSDT,ETHUSDT", kind="incremental_book_L2")
    assert not at.exception
    assert not [b for b in at.button if b.key == "history_download"]
    commands = [c.value for c in at.code]
    assert len(commands) == 1 and commands[0].startswith(
        "depthwatch export --kind incremental_book_L2"
    )
    assert "--symbols BTCUSDT,ETHUSDT" in commands[0] and commands[0].endswith("--out exports/")
    assert "more than 10 rows" in texts(at)


def test_presets_set_the_range(recorded, recorded_url, use_database):
    use_database(recorded_url)
    at = opened(recorded, start="2026-01-01T10:20:30Z", end="2026-01-01T10:20:40Z")
    assert not at.exception
    assert str(at.time_input(key="history_start_time").value) == "10:20:30"
    at.button(key="history_preset-Last 10 min").click().run(timeout=30)
    assert not at.exception
    state = at.session_state
    span = (h._combine(state["history_end_date"], state["history_end_time"]) or 0) - (
        h._combine(state["history_start_date"], state["history_start_time"]) or 0
    )
    assert span == 600 * SECOND_US
    at.button(key="history_preset-" + h.DAY_PRESET).click().run(timeout=30)
    start = h._combine(state["history_start_date"], state["history_start_time"]) or 0
    end = h._combine(state["history_end_date"], state["history_end_time"]) or 0
    assert (start % DAY_US, end - start) == (0, DAY_US)
    assert at.query_params["start"] in (pl.iso(start), [pl.iso(start)])


def test_a_range_before_1970_is_told_not_offered(recorded, recorded_url, use_database):
    """The year 1 typed into the date: a message, no estimate, no button and
    no command that the CLI could not parse (the date widget drops it, or the
    page's own check refuses it)."""
    use_database(recorded_url)
    at = opened(recorded)
    at.date_input(key="history_start_date").set_value(datetime.date(1, 1, 1)).run(timeout=30)
    assert not at.exception
    shown = texts(at)
    assert "between 1970 and the year 9999" in shown or "Set the start and the end" in shown
    assert not at.code and not [b for b in at.button if b.key == "history_download"]


def test_a_query_cut_by_the_statement_timeout_is_recognised(recorded_url):
    """The dashboard's reader engine cancels statements after 5 s; the page
    tells such a cancel (SQLSTATE 57014) from a database that is down."""
    engine = sa.create_engine(recorded_url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SET statement_timeout = 50"))
            with pytest.raises(sa.exc.OperationalError) as cut:
                conn.execute(sa.text("SELECT pg_sleep(2)"))
        assert pl._sqlstate(cut.value) == pl.QUERY_CANCELED
    finally:
        engine.dispose()


def test_bad_url_parameters_are_told_and_replaced(recorded, recorded_url, use_database):
    use_database(recorded_url)
    at = opened(
        recorded, symbols="NOPE", kind="book_snapshot_3_7s", format="xls", start="yesterday"
    )
    assert not at.exception
    warning = " ".join(w.value for w in at.warning)
    for name in ("symbols", "kind", "format", "start"):
        assert f"`{name}`" in warning
    assert at.multiselect(key="history_symbols").value == ["BTCUSDT"]


def test_an_empty_range_says_what_is_recorded(recorded, recorded_url, use_database):
    use_database(recorded_url)
    at = opened(recorded, start="2026-01-01T00:00:00Z", end="2026-01-01T00:10:00Z")
    assert not at.exception
    assert "no book messages recorded in this range" in texts(at)
    assert "Recorded from" in texts(at)
    at.segmented_control(key="history_kind").set_value("trades").run(timeout=30)
    assert "no trades recorded in this range" in texts(at)
    assert "its book was recorded from" in texts(at)


def test_the_page_explains_an_empty_database(database_url, use_database):
    use_database(database_url)
    at = page().run(timeout=30)
    assert not at.exception
    assert "Nothing has been recorded yet" in texts(at)


def test_the_page_survives_a_dead_database(use_database):
    use_database(DOWN_URL)
    at = page().run(timeout=30)
    assert not at.exception
    assert "Database unreachable" in " ".join(e.value for e in at.error)
    assert "s3cret" not in texts(at)


# ---- the page in Chromium, over a live simulator, collector and dashboards

HISTORY_ARTIFACTS = (
    "history.png",
    "history-command.png",
    "history-failure.png",
    *(f"history-{name}.log" for name in ("sim", "collect", "dashboard", "dashboard-small", "nav")),
)
ROWS_METRIC = "[data-testid='stMetric']:has-text('Rows') [data-testid='stMetricValue']"
DOWNLOAD = ".st-key-history_download button"  # makes the file
LINK = "[data-testid='depthwatch-download']"  # then downloads it
CODE = "[data-testid='stCode'] code"
RANGE_S = 4  # seconds of book exported
AFTER_S = 2  # seconds recorded after the range before it is read: all of it committed


@pytest.fixture
def history_artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name in HISTORY_ARTIFACTS:
        (ARTIFACTS / name).unlink(missing_ok=True)
    return ARTIFACTS


@pytest.fixture
def children(history_artifacts: Path) -> Iterator[Callable[..., Child]]:
    """Starts `depthwatch ARGS...` (log in history-NAME.log, `env` added to
    the environment); stops them all at the end, newest first."""
    started = Children(history_artifacts, lambda name, _: f"history-{name}.log")
    try:
        yield started
    finally:
        started.stop()


def run_shown(command: str, cwd: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    """A command as the page shows it, run as it is (`depthwatch` being this
    checkout's CLI), the database given the way the page says: DATABASE_URL."""
    words = shlex.split(command)
    assert words[0] == "depthwatch", command
    return subprocess.run(
        [sys.executable, "-m", "depthwatch.cli", *words[1:]],
        cwd=cwd,
        env=cli_env() | {"DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )


def recorded_until(engine: sa.Engine) -> tuple[int, int] | None:
    """(first, last) recorded second of the stream; None before there is one."""
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT to_regclass('top_seconds')")).scalar() is None:
            return None
        streams = list_streams(conn)
        if not streams:
            return None
        return recorded_span(conn, streams[0])


def rows_shown(page: Page) -> int:
    text = page.locator(ROWS_METRIC).inner_text()
    return int(re.sub(r"[^\d]", "", text))


@pytest.mark.timeout(240)  # a hang guard: ~40 s normally
def test_the_downloaded_file_is_the_clis_export(
    database_url: str,
    engine: sa.Engine,
    children: Callable[..., Child],
    browser: Browser,  # noqa: F811 (the fixture imported above)
    history_artifacts: Path,
    tmp_path: Path,
):
    sim_port, dash_port, small_port = free_port(), free_port(), free_port()
    sim = children("sim", "sim", "--port", str(sim_port), "--symbols", "BTCUSDT", "--rate", "50")
    wait_until(lambda: listening(sim_port), "simulator", START_TIMEOUT_S, sim)
    collector = children(
        "collect",
        *("collect", "--ws-url", f"ws://127.0.0.1:{sim_port}/v5/public/linear"),
        *("--symbols", "BTCUSDT", "--depth", "50", "--retention-days", "0"),
        *("--database-url", database_url),
    )
    dashboard_args = ("dashboard", "--address", "127.0.0.1", "--database-url", database_url)
    dashboard = children("dashboard", *dashboard_args, "--port", str(dash_port))
    # The same dashboard with a limit of 10 rows: every request is "large".
    small = children(
        "dashboard-small", *dashboard_args, "--port", str(small_port), env={pl.MAX_ROWS_ENV: "10"}
    )
    everyone = (sim, collector, dashboard, small)
    base, small_base = f"http://127.0.0.1:{dash_port}", f"http://127.0.0.1:{small_port}"
    for url in (base, small_base):
        wait_until(lambda url=url: healthy(url), "dashboard health", START_TIMEOUT_S, *everyone)

    # Whole seconds, two after the first recorded one (so the L2 file opens
    # with the book rebuilt at `start`), read once AFTER_S more are recorded.
    wait_until(lambda: recorded_until(engine) is not None, "a recorded second", 30, *everyone)
    first = recorded_until(engine)
    assert first is not None
    start = first[0] + 2 * SECOND_US
    end = start + RANGE_S * SECOND_US
    wait_until(
        lambda: (recorded_until(engine) or (0, 0))[1] >= end + AFTER_S * SECOND_US,
        "the range and two seconds more recorded",
        30,
        *everyone,
    )
    query = urlencode(
        {
            "category": "linear",
            "symbols": "BTCUSDT",
            "start": pl.iso(start),
            "end": pl.iso(end),
            "kind": "quotes",
            "format": "csv.gz",
        }
    )
    errors: list[str] = []
    page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(30_000)
    try:
        page.goto(f"{base}/history?{query}")
        page.locator(DOWNLOAD).wait_for()
        expect(page.locator(DOWNLOAD)).to_contain_text("bybit_quotes_")
        # Pick the kind and the format in the page itself.
        page.get_by_role("radio", name="incremental_book_L2", exact=True).click()
        page.get_by_role("radio", name="csv", exact=True).click()
        name = f"bybit_incremental_book_L2_{pl.iso(start)[:10]}_BTCUSDT.csv"
        # (the name of the .csv ends the label: a .csv.gz one is still the old page)
        label = re.compile(re.escape(name) + "$")
        expect(page.locator(DOWNLOAD)).to_have_text(label, timeout=EXPECT_MS)
        expect(page).to_have_url(re.compile("kind=incremental_book_L2&format=csv&"))
        expect(page.locator(ROWS_METRIC)).to_contain_text("≈", timeout=EXPECT_MS)
        estimated = rows_shown(page)
        screenshot(page, history_artifacts / "history.png")

        page.locator(DOWNLOAD).click()
        expect(page.locator(LINK)).to_have_text(f"Download {name}", timeout=30_000)
        with page.expect_download(timeout=30_000) as download:
            page.locator(LINK).click()
        assert download.value.suggested_filename == name
        downloaded = tmp_path / "downloaded.csv"
        download.value.save_as(downloaded)
        body = downloaded.read_bytes()
        rows = body.count(b"\n") - 1
        print(f"{name}: {rows:,} rows, {len(body):,} bytes; the page estimated {estimated:,}")
        assert body.startswith(b"exchange,symbol,timestamp,local_timestamp,is_snapshot,")
        assert rows > 100 and body.split(b"\n")[1].split(b",")[4] == b"true"  # opening book
        assert estimated == pytest.approx(rows, rel=0.3)

        # The CLI's export of the same range: the same bytes.
        out = tmp_path / "cli.csv"
        done = run_cli(
            *("export", "--kind", "incremental_book_L2", "--symbol", "BTCUSDT"),
            *("--start", pl.iso(start), "--end", pl.iso(end), "--format", "csv"),
            *("--out", str(out), "--database-url", database_url),
        )
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == body
        # And the command the page shows under the button, run as shown.
        shown = page.locator(CODE).text_content() or ""
        assert shown.endswith(f"--out {name}"), shown
        done = run_shown(shown, tmp_path, database_url)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / name).read_bytes() == body
        assert errors == []
    except BaseException:
        with contextlib.suppress(Exception):
            screenshot(page, history_artifacts / "history-failure.png")
        raise
    finally:
        page.close()

    # Past the limit: the command instead of the button; run as shown, it
    # writes the same file into exports/.
    page = browser.new_page(viewport=VIEWPORT)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(30_000)
    try:
        query = query.replace("kind=quotes", "kind=incremental_book_L2")
        page.goto(f"{small_base}/history?{query.replace('format=csv.gz', 'format=csv')}")
        page.locator(CODE).wait_for()
        expect(page.get_by_text("more than 10 rows")).to_be_visible()
        expect(page.locator(DOWNLOAD)).to_have_count(0)
        command = page.locator(CODE).text_content() or ""
        assert command.startswith("depthwatch export --kind incremental_book_L2 --symbols BTCUSDT")
        assert command.endswith("--out exports/"), command
        screenshot(page, history_artifacts / "history-command.png")
        cwd = tmp_path / "cli"
        cwd.mkdir()
        done = run_shown(command, cwd, database_url)
        assert done.returncode == 0, done.stderr
        assert (cwd / "exports" / name).read_bytes() == body

        # The page is in the navigation.
        page.goto(small_base)
        page.locator("[data-testid='stSidebarNav']").get_by_text("History").click()
        expect(page.locator("h1")).to_have_text("History", timeout=EXPECT_MS)
        assert page.url.split("?")[0].endswith("/history")
        assert errors == []
    except BaseException:
        with contextlib.suppress(Exception):
            screenshot(page, history_artifacts / "history-failure.png")
        raise
    finally:
        page.close()
