"""History exports against ground truth: book_snapshot_N[_interval] rows equal
the simulator's book at their bucket ends (and come exactly where the top
changed), every format holds the same values, columns are Tardis's, and
several symbols, daily files and failures behave as documented."""

from __future__ import annotations

import gzip
import io

import pandas as pd
import pyarrow.parquet as pq
import pytest

from depthwatch.export.files import file_name, plan_files, split_daily, write_export
from depthwatch.export.kinds import HEADERS, ExportKind, SnapshotSpec
from depthwatch.export.sinks import TIME_COLUMNS
from depthwatch.export.tardis import ExportRequest
from depthwatch.records import StreamKey
from depthwatch.sim import SimConfig, TruthState

from .conftest import run_cli, run_python
from .e2e import ALL_TIME, recorded_from_sim, recorded_sequence
from .test_export import T, event, record

SYMBOLS = ("BTCUSDT", "ETHUSDT")
DAY_US = 86_400_000_000


@pytest.fixture(scope="module")
def recorded(server_url):
    """Two symbols recorded from the simulator (depth 50, ~3 s at 300 msg/s,
    with trades): (database URL, engine, ground truth per symbol)."""
    sim = SimConfig(symbols=SYMBOLS, rate=300, deltas=900, seed=23, trades_rate=20)
    with recorded_from_sim(server_url, sim, trades=True) as recording:
        yield recording


def export_bytes(engine, kind: str, fmt: str, symbols=("BTCUSDT",), start_end=ALL_TIME) -> bytes:
    requests = [ExportRequest(kind, "linear", s, *start_end, depth=50) for s in symbols]
    out = io.BytesIO()
    write_export(engine, requests, fmt, out, progress_to=None)
    return out.getvalue()


def top_cells(state: TruthState, n: int) -> list[str]:
    cells: list[str] = []
    for i in range(n):
        cells += state.asks[i] if i < len(state.asks) else ["", ""]
        cells += state.bids[i] if i < len(state.bids) else ["", ""]
    return cells


def expected_snapshots(
    truth: list[TruthState], first_seq: int, spec: SnapshotSpec
) -> list[tuple[int, list[str]]]:
    """Tardis's rule applied to the ground truth, independently of the export:
    from the recorded snapshot on, a row wherever the top N changed; at bucket
    ends (the last state stamped before it) or at each message."""
    states = truth[next(i for i, t in enumerate(truth) if t.seq == first_seq) :]
    rows: list[tuple[int, list[str]]] = []
    if spec.interval_us == 0:
        candidates = [(t.ts_ms * 1000, top_cells(t, spec.levels)) for t in states]
    else:
        candidates = []
        interval = spec.interval_us
        bucket_end = (states[0].ts_ms * 1000 // interval + 1) * interval
        last_ts = states[-1].ts_ms * 1000
        index = 0
        while bucket_end <= last_ts:
            while index + 1 < len(states) and states[index + 1].ts_ms * 1000 < bucket_end:
                index += 1
            candidates.append((bucket_end, top_cells(states[index], spec.levels)))
            bucket_end += interval
        # After the last message, its own bucket's end is a row too.
        candidates.append((bucket_end, top_cells(states[-1], spec.levels)))
    for ts, cells in candidates:
        if not rows or rows[-1][1] != cells:
            rows.append((ts, cells))
    return rows


@pytest.mark.parametrize(
    "kind", ["book_snapshot_5_100ms", "book_snapshot_25_50ms", "book_snapshot_3"]
)
def test_book_snapshots_equal_the_simulators_book_at_each_bucket_end(recorded, kind):
    _, engine, truth = recorded
    spec = SnapshotSpec.parse(kind)
    assert spec is not None
    for symbol in SYMBOLS:
        frame = pd.read_csv(
            io.BytesIO(export_bytes(engine, kind, "csv", (symbol,))),
            dtype=str,
            keep_default_na=False,
        )
        first_seq = recorded_sequence(engine, StreamKey("linear", symbol, 50))[0][1]
        want = expected_snapshots(truth[symbol], first_seq, spec)
        got = [(int(r[2]), list(r[4:])) for r in frame.itertuples(index=False)]
        assert len(got) == len(want) > 3
        for (ts, cells), (want_ts, want_cells) in zip(got, want, strict=True):
            assert ts == want_ts
            assert cells == want_cells, f"{symbol} {kind} at {ts}"
        assert (frame["exchange"] == "bybit").all() and (frame["symbol"] == symbol).all()
        local = frame["local_timestamp"].astype(int)
        assert local.is_monotonic_increasing


def test_every_kind_holds_the_same_values_in_csv_gzip_and_parquet(recorded):
    _, engine, _ = recorded
    for kind in ("incremental_book_L2", "quotes", "trades", "book_snapshot_10_100ms"):
        text = export_bytes(engine, kind, "csv", SYMBOLS)
        assert gzip.decompress(export_bytes(engine, kind, "csv.gz", SYMBOLS)) == text
        as_csv = pd.read_csv(io.BytesIO(text), dtype={"id": str})
        table = pq.read_table(io.BytesIO(export_bytes(engine, kind, "parquet", SYMBOLS)))
        assert table.column_names == [*as_csv.columns, *TIME_COLUMNS]
        as_parquet = table.to_pandas()
        assert len(as_csv) == len(as_parquet) > 0, kind
        assert set(as_csv["symbol"]) == set(SYMBOLS)
        for column in as_csv.columns:
            pd.testing.assert_series_equal(
                as_parquet[column], as_csv[column], check_dtype=False, check_names=False
            )
        exchange_time = as_parquet["exchange_time"]
        assert str(exchange_time.dtype) == "datetime64[us, UTC]"
        assert (exchange_time.astype("int64") == as_csv["timestamp"]).all()


PANDAS_CHECK = """
import io, sys
from depthwatch.export.files import write_export
from depthwatch.export.tardis import ExportRequest
from depthwatch.storage.db import make_engine
engine = make_engine(sys.argv[1])
for kind in sys.argv[2:]:
    for fmt in ("parquet", "csv"):
        out = io.BytesIO()
        request = ExportRequest(kind, "linear", "BTCUSDT", 0, 2**62, depth=50)
        assert write_export(engine, [request], fmt, out, progress_to=None) > 0, kind
print("pandas" in sys.modules)
"""


def test_exports_never_load_pandas(recorded):
    """pyarrow's pa.array() imports pandas (~33 MB of an export's RSS): the
    exports build their columns without it (export.arrays)."""
    url, _, _ = recorded
    kinds = ["incremental_book_L2", "quotes", "trades", "book_snapshot_25", "book_snapshot_5_1s"]
    done = run_python(PANDAS_CHECK, url, *kinds)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_column_names_and_order_are_tardis_layouts():
    common = "exchange,symbol,timestamp,local_timestamp,"
    assert {
        "incremental_book_L2": common + "is_snapshot,side,price,amount",
        "quotes": common + "ask_amount,ask_price,bid_price,bid_amount",
        "trades": common + "id,side,price,amount",
        # Not Tardis's: an RPI book's L2 with the RPI size after the size.
        "incremental_book_L2_rpi": common + "is_snapshot,side,price,amount,rpi_amount",
    } == HEADERS
    assert ExportKind.parse("book_snapshot_2_1s").header() == common + (
        "asks[0].price,asks[0].amount,bids[0].price,bids[0].amount,"
        "asks[1].price,asks[1].amount,bids[1].price,bids[1].amount"
    )
    assert (
        ExportKind.parse("book_snapshot_25").header()
        == ExportKind.parse("book_snapshot_25_100ms").header()
    )
    assert ExportKind.parse("book_snapshot_25").header().count(",") == 3 + 4 * 25


@pytest.mark.parametrize(
    ("kind", "levels", "interval_us"),
    [
        ("book_snapshot_25", 25, 0),
        ("book_snapshot_25_100ms", 25, 100_000),
        ("book_snapshot_5_1s", 5, 1_000_000),
        ("book_snapshot_10_2m", 10, 120_000_000),
    ],
)
def test_snapshot_kinds_parse(kind, levels, interval_us):
    assert SnapshotSpec.parse(kind) == SnapshotSpec(levels, interval_us)


@pytest.mark.parametrize(
    "kind",
    [
        "book_snapshot_",
        "book_snapshot_0",
        "book_snapshot_5_0ms",
        "book_snapshot_5_1h",
        "book_snapshot_x",
    ],
)
def test_malformed_snapshot_kinds_are_refused(kind):
    with pytest.raises(ValueError):
        SnapshotSpec.parse(kind)


def test_a_gap_stops_snapshot_rows_until_the_next_snapshot(engine):
    record(
        engine,
        [
            event(10, 1, T, [("10.0", "1")], [("11.0", "1")], snapshot=True),
            event(11, 2, T + 50, [("10.0", "2")]),
            event(12, 3, T + 120, [("10.0", "3")]),
            # u=13 is missing, stamped anywhere in (T+120, T+230): the buckets
            # ending at T+200 .. T+400 are unknown until the snapshot at T+420.
            event(14, 5, T + 230, [("10.0", "4")]),
            event(20, 9, T + 420, [("10.5", "1")], [("11.0", "2")], snapshot=True),
            event(21, 10, T + 450, [("10.5", "2")]),
        ],
    )
    out = io.BytesIO()
    request = ExportRequest(
        "book_snapshot_1_100ms", "linear", "BTCUSDT", T * 1000, (T + 1000) * 1000
    )
    write_export(engine, [request], "csv", out, progress_to=None)
    rows = [line.split(",")[2:] for line in out.getvalue().decode().splitlines()[1:]]
    ms = 1000
    assert rows == [
        [str((T + 100) * ms), str((T + 50) * ms + 500), "11.0", "1", "10.0", "2"],
        [str((T + 500) * ms), str((T + 450) * ms + 500), "11.0", "2", "10.5", "2"],
    ]


def test_daily_files_are_named_like_tardis_downloads_and_cut_at_midnight():
    midnight = 1_767_225_600_000_000  # 2026-01-01T00:00Z
    request = ExportRequest(
        "incremental_book_L2",
        "linear",
        "BTCUSDT",
        midnight - 3_600_000_000,
        midnight + DAY_US + 60_000_000,
    )
    parts = split_daily(request)
    assert [(p.start_us, p.end_us) for p in parts] == [
        (midnight - 3_600_000_000, midnight),
        (midnight, midnight + DAY_US),
        (midnight + DAY_US, midnight + DAY_US + 60_000_000),
    ]
    assert [f.name for f in plan_files([request], "csv.gz", daily=True)] == [
        "bybit_incremental_book_L2_2025-12-31_BTCUSDT.csv.gz",
        "bybit_incremental_book_L2_2026-01-01_BTCUSDT.csv.gz",
        "bybit_incremental_book_L2_2026-01-02_BTCUSDT.csv.gz",
    ]
    assert file_name(request, "parquet") == (
        "bybit_incremental_book_L2_2025-12-31_2026-01-02_BTCUSDT.parquet"
    )


def test_split_daily_files_each_open_with_the_book_at_midnight(engine, database_url, tmp_path):
    midnight_ms = T  # 2026-01-01T00:00Z
    record(
        engine,
        [
            event(10, 1, midnight_ms - 2_000, [("10.0", "1")], [("11.0", "1")], snapshot=True),
            event(11, 2, midnight_ms - 1_000, [("10.0", "2")]),
            event(12, 3, midnight_ms + 1_000, [], [("11.0", "3")]),
        ],
    )
    result = run_cli(
        "export", "--kind", "incremental_book_L2", "--symbol", "BTCUSDT",
        "--start", "2025-12-31T23:59:00Z", "--end", "2026-01-01T00:01Z",
        "--split", "daily", "--out", f"{tmp_path}/", "--database-url", database_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    first, second = sorted(tmp_path.iterdir())
    assert first.name == "bybit_incremental_book_L2_2025-12-31_BTCUSDT.csv"
    assert second.name == "bybit_incremental_book_L2_2026-01-01_BTCUSDT.csv"
    midnight_us = midnight_ms * 1000
    snap, before = midnight_us - 2_000_000, midnight_us - 1_000_000
    assert first.read_text().splitlines()[1:] == [
        f"bybit,BTCUSDT,{snap},{snap + 500},true,bid,10.0,1",
        f"bybit,BTCUSDT,{snap},{snap + 500},true,ask,11.0,1",
        f"bybit,BTCUSDT,{before},{before + 500},false,bid,10.0,2",
    ]
    assert second.read_text().splitlines()[1:] == [
        f"bybit,BTCUSDT,{midnight_us},{midnight_us},true,bid,10.0,2",
        f"bybit,BTCUSDT,{midnight_us},{midnight_us},true,ask,11.0,1",
        f"bybit,BTCUSDT,{midnight_us + 1_000_000},{midnight_us + 1_000_500},false,ask,11.0,3",
    ]


def test_several_symbols_go_to_one_file_each_or_one_after_another(recorded, tmp_path):
    url, _, _ = recorded
    common = (
        "--kind",
        "quotes",
        "--start",
        "2020-01-01",
        "--end",
        "2100-01-01",
        "--database-url",
        url,
    )
    result = run_cli("export", "--all", "--format", "parquet", "--out", f"{tmp_path}/q/", *common)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "q").iterdir())
    assert names == [f"bybit_quotes_2020-01-01_2099-12-31_{s}.parquet" for s in sorted(SYMBOLS)]
    one = tmp_path / "both.csv"
    result = run_cli("export", "--symbols", "ethusdt,BTCUSDT", "--out", str(one), *common)
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(one)
    assert list(dict.fromkeys(frame["symbol"])) == ["ETHUSDT", "BTCUSDT"]  # in the order asked
    for symbol in SYMBOLS:
        alone = pq.read_table(
            tmp_path / "q" / f"bybit_quotes_2020-01-01_2099-12-31_{symbol}.parquet"
        )
        assert alone.num_rows == (frame["symbol"] == symbol).sum()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ("--symbols", "BTCUSDT,NOPEUSDT", "--out", "{dir}/"),
            1,
            "no linear instrument 'NOPEUSDT'",
        ),
        (("--symbol", "BTCUSDT", "--kind", "book_snapshot_60"), 1, "recorded 50 levels deep"),
        (("--symbol", "BTCUSDT", "--kind", "book_snapshot_5_1h"), 2, "book_snapshot_N_INTERVAL"),
        (("--symbol", "BTCUSDT", "--kind", "depth"), 2, "unknown kind"),
        (("--symbol", "BTCUSDT", "--split", "daily"), 2, "give --out a directory"),
    ],
)
def test_failures_are_one_clear_line_and_leave_no_file(recorded, tmp_path, args, code, message):
    url, _, _ = recorded
    if "--kind" not in args:
        args = (*args, "--kind", "quotes")
    if "--out" not in args:
        args = (*args, "--out", "{dir}/x.csv")
    args = tuple(a.replace("{dir}", str(tmp_path)) for a in args)
    window = ("--start", "2020-01-01", "--end", "2100-01-01", "--database-url", url)
    result = run_cli("export", *args, *window)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_database_without_a_recording_is_one_clear_error(database_url, tmp_path):
    result = run_cli(
        "export", "--kind", "quotes", "--symbol", "BTCUSDT", "--start", "-1h", "--end", "now",
        "--out", str(tmp_path / "q.csv"), "--database-url", database_url,
    )  # fmt: skip
    assert result.returncode == 1
    assert "holds no depthwatch recording" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_integer_book_raises_its_exponents_and_watches_its_top():
    from depthwatch.export.intbook import MISSING, IntBook
    from depthwatch.storage.read.book import int_levels
    from depthwatch.storage.read.rows import IntBookEvent

    book = IntBook(levels=2)
    snapshot = int_levels(["10.5", "10.4", "10.3"], ["1", "2", "3"], ["10.6"], ["4"])
    assert snapshot == (1, 0, [105, 104, 103], [1, 2, 3], [106], [4])
    book.apply(IntBookEvent(1, 1, 1, 1, True, *snapshot))
    top = book.take_top()
    assert top == (106, MISSING, 4, MISSING, -105, -104, 1, 2)
    # A change below the top two leaves it as it was: the same tuple.
    book.apply(IntBookEvent(2, 2, 2, 2, False, 1, 0, [103], [0], [], []))
    assert book.take_top() is top
    # A message with more decimals rescales the book: 10.55 between 10.5 and 10.6.
    book.apply(IntBookEvent(3, 3, 3, 3, False, 2, 1, [1055], [15], [], []))
    assert (book.price_exp, book.size_exp) == (2, 1)
    assert book.take_top() == (1060, MISSING, 40, MISSING, -1055, -1050, 15, 10)


def test_schema_1_to_3_rows_become_exact_integers():
    from depthwatch.storage.read.book import as_ints
    from depthwatch.storage.read.rows import BookEventRow

    row = BookEventRow(5, 6, 7, 8, False, ["100.25", "100"], ["0.001", "2"], ["100.5"], ["0"])
    event = as_ints(row)
    assert (event.price_exp, event.size_exp) == (2, 3)
    assert (event.bid_ticks, event.bid_lots) == ([10025, 10000], [1, 2000])
    assert (event.ask_ticks, event.ask_lots) == ([10050], [0])
