"""`depthwatch archive`: finished days as Parquet files in a hive layout, on a
local directory and on a real S3 server (SeaweedFS), proved by manifests.

The recording is synthetic and spans three UTC days in the past (the
simulator's seeded market, stamped by hand), at two depths, with trades and a
restart: the ground truth is the market's top-D book after every message.
"""

from __future__ import annotations

import hashlib
import random
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from dbproxy import DatabaseProxy
from depthwatch.archive.layout import StreamDay
from depthwatch.archive.log import LOG_TABLES, log_path
from depthwatch.archive.manifest import Manifest
from depthwatch.book import Outcome, StreamBook
from depthwatch.clock import DAY_US, parse_time_us, utc_day
from depthwatch.feed.registry import TARDIS_EXCHANGE
from depthwatch.records import FULL_DEPTH, BookUpdate, StreamKey, Trade
from depthwatch.sim.market import DepthView, MarketBook, spec_for
from depthwatch.storage import schema
from depthwatch.storage.db import make_engine
from depthwatch.storage.schema import ARCHIVE_LOCK
from depthwatch.storage.write import BatchWriter, WriterConfig
from objectstore import S3Server, s3_server

from .conftest import new_database, run_cli
from .procs import spawn

SYMBOL = "BTCUSDT"
DEPTHS = (50, 1)
MIDNIGHT = parse_time_us("2026-01-02")  # the recording runs from 22:00 on Jan 1 to Jan 4
FIRST_US = MIDNIGHT - 2 * 3_600_000_000
EVERY_US = 7 * 60_000_000  # a message every 7 minutes: ~650 over the span
LAST_US = MIDNIGHT + 2 * DAY_US + 5 * 3_600_000_000
RESTART_AT = MIDNIGHT + DAY_US + 6 * 3_600_000_000  # a u=1 snapshot mid-day on Jan 3
L2 = "incremental_book_L2"
DATES = ("2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04")
Book = tuple[list[tuple[float, float]], list[tuple[float, float]]]


@dataclass
class Recording:
    url: str
    engine: sa.Engine
    truth: dict[int, dict[int, Book]]  # depth -> exchange time -> top-D book after it
    trades: list[Trade]
    changed: dict[int, set[int]]  # depth -> times of the messages that changed a level


def levels(side: list[list[str]]) -> list[tuple[float, float]]:
    return [(float(p), float(s)) for p, s in side]


def synthetic_recording(
    engine: sa.Engine,
) -> tuple[dict[int, dict[int, Book]], list[Trade], dict[int, set[int]]]:
    """Write the seeded market's messages at both depths, and trades, through
    the collector's writer; return the truth after each message, the trades,
    and which messages changed a level (one that did not has no L2 row)."""
    schema.upgrade(engine)
    rng = random.Random(16)
    market = MarketBook(spec_for(SYMBOL), 60, rng)
    views = {d: DepthView(market, d) for d in DEPTHS}
    truth: dict[int, dict[int, Book]] = {d: {} for d in DEPTHS}
    changed_at: dict[int, set[int]] = {d: set() for d in DEPTHS}
    trades = []
    writer = BatchWriter(engine, WriterConfig(flush_interval_s=0.05))
    writer.start()
    # The collector's path: each stream's book checks the message and hands
    # the writer the message, its quote, snapshots and checkpoints.
    books = {d: StreamBook(StreamKey("linear", SYMBOL, d), writer) for d in DEPTHS}
    u = 0
    ts = FIRST_US
    while ts <= LAST_US:
        restart = u == 0 or (ts >= RESTART_AT and ts - EVERY_US < RESTART_AT)
        changed = market.step()
        u = 1 if restart else u + 1
        for depth, view in views.items():
            bids, asks = view.diff(changed)
            if restart:
                bids, asks = view.snapshot()
            if bids or asks:
                changed_at[depth].add(ts)
            stream = StreamKey("linear", SYMBOL, depth)
            update = BookUpdate(stream, restart, bids, asks, u, ts // 1000, ts, None, ts + 3_000)
            assert books[depth].apply(update) is Outcome.APPLIED or restart
            truth[depth][ts] = tuple(levels(side) for side in view.snapshot())  # type: ignore[assignment]
        if u % 3 == 0:
            price = market.fmt.price(market.best_ask())
            trade_id = f"t{u}-{ts}"
            trade = Trade("linear", SYMBOL, trade_id, "buy", price, "0.010", ts + 1, ts + 900, u)
            writer.add_trade(trade)
            trades.append(trade)
        ts += EVERY_US
    assert writer.stop()
    return truth, trades, changed_at


@pytest.fixture(scope="module")
def recording(server_url: str) -> Iterator[Recording]:
    with new_database(server_url) as url:
        engine = sa.create_engine(url)
        try:
            yield Recording(url, engine, *synthetic_recording(engine))
        finally:
            engine.dispose()


@dataclass
class Archived:
    url: str  # a database of its own, which the test may change
    engine: sa.Engine
    root: Path  # the archive, every day written once


@pytest.fixture
def archived(server_url: str, tmp_path: Path) -> Iterator[Archived]:
    """The recording in a new database, archived to a local directory."""
    with new_database(server_url) as url:
        engine = sa.create_engine(url)
        try:
            synthetic_recording(engine)
            root = tmp_path / "archive"
            assert archive(str(root), url).returncode == 0
            yield Archived(url, engine, root)
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


def archive(url: str, database_url: str, *extra: str, env: dict[str, str] | None = None):
    return run_cli("archive", "--archive-url", url, "--database-url", database_url, *extra, env=env)


def rebuild(table) -> dict[int, Book]:
    """The book after each message of an archived L2 file, rebuilt as a Tardis
    reader does (plain dicts; a snapshot message replaces the book)."""
    books: dict[int, Book] = {}
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    key = None
    names = ["timestamp", "local_timestamp", "is_snapshot", "side", "price", "amount"]
    columns = [c.to_pylist() for c in table.select(names).columns]
    for ts, local, snap, side, price, amount in zip(*columns, strict=True):
        if (ts, local, snap) != key:
            if snap:
                bids, asks = {}, {}
            key = (ts, local, snap)
        book = bids if side == "bid" else asks
        if amount == 0:
            book.pop(price, None)
        else:
            book[price] = amount
        books[ts] = (sorted(bids.items(), reverse=True), sorted(asks.items()))
    return books


def expected_at(truth: dict[int, Book], ts: int) -> Book:
    """The true book at `ts`: after the last message at or before it."""
    return truth[max(t for t in truth if t <= ts)]


def quote_times(truth: dict[int, Book], date: str) -> list[int]:
    """When a day's quotes file has a row: the day's first message, then each
    message that changed the touch."""
    start = parse_time_us(date)
    times = sorted(t for t in truth if start <= t < start + DAY_US)
    touch = {t: (truth[t][0][0], truth[t][1][0]) for t in times}
    before = [None, *times[:-1]]
    return [t for p, t in zip(before, times, strict=True) if p is None or touch[p] != touch[t]]


def test_every_finished_day_is_archived_in_the_hive_layout_and_rebuilds_the_truth(
    recording: Recording, tmp_path: Path
):
    root = tmp_path / "archive"
    result = archive(str(root), recording.url, "--format", "csv.gz")
    assert result.returncode == 0, result.stderr
    for depth in DEPTHS:
        for date in DATES:
            day = StreamDay("bybit", SYMBOL, depth, date)
            manifest = Manifest.from_json((root / day.manifest_path()).read_bytes())
            assert (manifest.symbol, manifest.depth, manifest.date) == (SYMBOL, depth, date)
            assert manifest.schema_version == schema.MIGRATIONS[-1].version
            kinds = {(f.kind, f.format) for f in manifest.files}
            assert kinds == {
                (k, fmt)
                for k in ("incremental_book_L2", "quotes", "trades", "gaps")
                for fmt in ("parquet", "csv.gz")
            } | {(f"_log/{t.name}", "parquet") for t in LOG_TABLES}
            for file in manifest.files:
                data = (root / file.path).read_bytes()
                assert (len(data), hashlib.sha256(data).hexdigest()) == (file.bytes, file.sha256)
                if file.kind.startswith("_log/"):
                    table = next(t for t in LOG_TABLES if file.kind == f"_log/{t.name}")
                    assert file.path == log_path(day, table)
                    assert pq.read_metadata(root / file.path).num_rows == file.rows
                else:
                    assert file.path == day.file_path(file.kind, file.format)
            # The log holds the day's chunks and trades as the database did.
            log_rows = {f.kind: f.rows for f in manifest.files if f.kind.startswith("_log/")}
            assert log_rows["_log/book_chunks"] == manifest.source.chunks > 0
            assert log_rows["_log/trades"] == manifest.source.trades
            # The day's L2 opens with the book at midnight and then follows the
            # market exactly, message by message.
            start = parse_time_us(date)
            l2 = pq.read_table(root / day.file_path(L2))
            books = rebuild(l2)
            truth = recording.truth[depth]
            assert books, (depth, date)
            for ts, book in books.items():
                assert start <= ts < start + DAY_US
                assert book == expected_at(truth, ts), (depth, date, ts)
            changed = sorted(t for t in recording.changed[depth] if start <= t < start + DAY_US)
            assert sorted(set(books) - {start}) == changed
            l2_file = next(f for f in manifest.files if f.path == day.file_path(L2))
            assert l2_file.rows == l2.num_rows
            assert (l2_file.first_timestamp, l2_file.last_timestamp) == (min(books), max(books))
            # Quotes: the touch at the day's first message, then at each
            # message that changed it.
            quotes = pq.read_table(root / day.file_path("quotes")).to_pylist()
            assert [q["timestamp"] for q in quotes] == quote_times(truth, date)
            for q in quotes:
                bids, asks = truth[q["timestamp"]]
                assert (q["bid_price"], q["bid_amount"]) == bids[0]
                assert (q["ask_price"], q["ask_amount"]) == asks[0]
    # Trades: one tape per symbol and day, no depth in the path, every trade once.
    archived_trades = ds.dataset(root / "bybit" / "trades", format="parquet", partitioning="hive")
    ids = archived_trades.to_table(columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted(t.trade_id for t in recording.trades)
    assert not [p for p in root.rglob("*") if p.name.startswith(".")]  # no partial, no probe


def test_the_archive_is_the_daily_export_byte_for_byte(recording: Recording, tmp_path: Path):
    root = tmp_path / "archive"
    assert archive(str(root), recording.url).returncode == 0
    out = tmp_path / "export"
    for kind in ("incremental_book_L2", "quotes"):
        result = run_cli(
            "export", "--kind", kind, "--symbol", SYMBOL, "--depth", "50",
            "--start", DATES[0], "--end", "2026-01-05", "--split", "daily",
            "--format", "parquet", "--out", f"{out}/", "--database-url", recording.url,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        for date in DATES:
            path = StreamDay("bybit", SYMBOL, 50, date).file_path(kind)
            exported = out / Path(path).name
            assert (root / path).read_bytes() == exported.read_bytes(), path


def late_trade(engine: sa.Engine, trade_id: str, at: int) -> None:
    """A trade written now into a past day, as a journal drained late writes it."""
    late = Trade("linear", SYMBOL, trade_id, "sell", "60000.0", "1.000", at, at + 500, None)
    writer = BatchWriter(engine, WriterConfig(flush_interval_s=0.05))
    writer.start()
    writer.add_trade(late)
    assert writer.stop()


def test_a_rerun_changes_nothing_and_late_rows_archive_their_day_again(archived: Archived):
    url, engine, root = archived.url, archived.engine, archived.root
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    again = archive(str(root), url)
    assert again.returncode == 0, again.stderr
    assert "every finished day is archived" in again.stderr
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before

    # A journal drained late: a trade lands in Jan 3, long archived.
    late_trade(engine, "late-1", MIDNIGHT + DAY_US + 3_600_000_000)
    third = archive(str(root), url)
    assert third.returncode == 0, third.stderr
    assert "2 stream-days to write" in third.stderr  # Jan 3 at both depths
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    changed = {str(p.relative_to(root)) for p in after if after[p] != before.get(p)}
    trades_path = StreamDay("bybit", SYMBOL, 50, "2026-01-03").file_path("trades")
    assert trades_path in changed
    assert all("2026-01-03" in p for p in changed), changed
    assert "late-1" in pq.read_table(root / trades_path).column("id").to_pylist()


def test_the_s3_archive_holds_the_same_bytes_and_engines_read_it(
    recording: Recording, s3: S3Server, tmp_path: Path
):
    import pyarrow.fs as pafs

    local = tmp_path / "archive"
    assert archive(str(local), recording.url).returncode == 0
    result = archive(s3.url("month"), recording.url, env=s3.env())
    assert result.returncode == 0, result.stderr
    fs = s3.filesystem()
    selector = pafs.FileSelector("depthwatch-archive/month", recursive=True)
    remote = {
        i.path.removeprefix("depthwatch-archive/month/"): i
        for i in fs.get_file_info(selector)
        if i.type == pafs.FileType.File
    }
    files = {str(p.relative_to(local)): p for p in local.rglob("*") if p.is_file()}
    assert set(remote) == set(files)
    for path, file in files.items():
        with fs.open_input_stream(f"depthwatch-archive/month/{path}") as src:
            assert src.read() == file.read_bytes(), path
    # A month of quotes, read by partition as an analyst would: pyarrow over S3.
    quotes = ds.dataset(
        "depthwatch-archive/month/bybit/quotes", filesystem=fs, format="parquet",
        partitioning="hive",
    )  # fmt: skip
    table = quotes.to_table(filter=(ds.field("depth") == 50)).sort_by("timestamp")
    expected = [t for date in DATES for t in quote_times(recording.truth[50], date)]
    assert table.column("timestamp").to_pylist() == expected


def test_a_second_run_at_once_finds_the_lock_taken_and_writes_nothing(
    recording: Recording, tmp_path: Path
):
    engine = sa.create_engine(recording.url)
    try:
        with engine.connect() as conn:
            lock = {"k": ARCHIVE_LOCK}
            assert conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), lock).scalar()
            result = archive(str(tmp_path / "archive"), recording.url)
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), lock)
    finally:
        engine.dispose()
    assert result.returncode == 0, result.stderr
    assert "another `depthwatch archive` is running" in result.stderr
    assert not list((tmp_path / "archive").glob("bybit/**/*.parquet"))


@pytest.mark.parametrize("problem", ["wrong keys", "missing bucket", "unwritable directory"])
def test_a_store_that_refuses_gets_one_line_and_no_secret(
    recording: Recording, s3: S3Server, tmp_path: Path, problem: str
):
    env = s3.env()
    url = s3.url("refused")
    if problem == "wrong keys":
        env = s3.env(AWS_SECRET_ACCESS_KEY="not-" + s3.secret_key)
    elif problem == "missing bucket":
        url = "s3://no-such-bucket/archive"
    else:
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        url = str(blocker / "archive")
    result = archive(url, recording.url, "--retry-for", "3", env=env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, result.stderr
    expected = {
        "wrong keys": "the keys were refused",
        "missing bucket": "the bucket does not exist",
        "unwritable directory": "a file stands where a directory should be",
    }[problem]
    assert expected in errors[0], errors[0]
    assert s3.secret_key not in result.stderr + result.stdout


def test_verify_rewrites_a_damaged_file_and_reports_a_lost_day(archived: Archived):
    url, engine, root = archived.url, archived.engine, archived.root
    damaged = root / StreamDay("bybit", SYMBOL, 50, "2026-01-02").file_path("quotes")
    good = damaged.read_bytes()
    damaged.write_bytes(good[:-10] + b"0123456789")
    gone = root / StreamDay("bybit", SYMBOL, 1, "2026-01-03").file_path(L2)
    gone_bytes = gone.read_bytes()
    gone.unlink()
    # Without --verify nothing is read back: the run trusts its manifests.
    assert "every finished day is archived" in archive(str(root), url).stderr
    result = archive(str(root), url, "--verify")
    assert result.returncode == 0, result.stderr
    assert "does not match its sha256" in result.stderr
    assert "is missing" in result.stderr
    assert damaged.read_bytes() == good and gone.read_bytes() == gone_bytes

    # Jan 2 leaves the database (retention); its file is then damaged.
    with engine.begin() as conn:
        for table in schema.PARTITIONED_TABLES:
            name = schema.partition_name(table, MIDNIGHT // DAY_US)
            conn.execute(sa.text(f"DROP TABLE {name}"))
    damaged.write_bytes(b"not parquet")
    lost = archive(str(root), url, "--verify")
    assert lost.returncode == 1
    assert "no longer in the database: lost" in lost.stderr
    manifest = root / StreamDay("bybit", SYMBOL, 50, "2026-01-02").manifest_path()
    assert manifest.exists()  # still says what the day was; --verify reports it again


def test_the_dashboards_read_only_role_reads_the_archive_status_and_cannot_change_it(
    recording: Recording, tmp_path: Path
):
    from depthwatch.storage.roles import create_readonly_role, role_url

    assert archive(str(tmp_path / "archive"), recording.url).returncode == 0
    role = f"reader_{random.randrange(10**6)}"
    create_readonly_role(recording.engine, role, "pw-" + role)
    reader = make_engine(role_url(recording.url, role, "pw-" + role))
    try:
        with reader.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM archived_days")).scalar() == 8
            assert conn.execute(sa.text("SELECT count(*) FROM archive_runs")).scalar() >= 1
        for statement in (
            "DELETE FROM archived_days",
            "INSERT INTO archive_runs (started_us, archive_url) VALUES (1, 'x')",
            f"DROP TABLE {schema.partition_name('book_chunks', MIDNIGHT // DAY_US)}",
        ):
            # Refused twice over: its transactions are read-only, and a
            # transaction made read-write still lacks the privilege.
            with reader.connect() as conn, pytest.raises(sa.exc.InternalError, match="read-only"):
                conn.execute(sa.text(statement))
            with reader.connect() as conn, pytest.raises(sa.exc.ProgrammingError):
                conn.execute(sa.text("SET TRANSACTION READ WRITE"))
                conn.execute(sa.text(statement))
        result = run_cli(
            "archive", "--archive-url", str(tmp_path / "other"),
            "--database-url", role_url(recording.url, role, "pw-" + role),
        )  # fmt: skip
        assert result.returncode == 1
        assert "the database refused the archive's writes" in result.stderr
        assert "Traceback" not in result.stderr
        assert not list((tmp_path / "other").glob("bybit/**/*.json"))
    finally:
        reader.dispose()
        with recording.engine.begin() as conn:
            conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
            conn.execute(sa.text(f'DROP ROLE "{role}"'))


def test_duckdb_reads_a_month_of_quotes_from_the_local_archive_as_the_export_gives_it(
    recording: Recording, tmp_path: Path
):
    import duckdb

    root = tmp_path / "archive"
    assert archive(str(root), recording.url).returncode == 0
    # The README's query: the hive partitions prune symbol, depth and date.
    query = f"""
        SELECT timestamp, local_timestamp, ask_amount, ask_price, bid_price, bid_amount
        FROM read_parquet('{root}/bybit/quotes/*/*/*/*.parquet', hive_partitioning = true)
        WHERE symbol = 'BTCUSDT' AND depth = 50
          AND date BETWEEN '2026-01-01' AND '2026-01-31'
        ORDER BY timestamp"""
    archived_rows = duckdb.sql(query).fetchall()
    # The archive holds `export --split daily`'s files: each day's quotes open
    # with the touch at its first message, whether it moved or not.
    out = tmp_path / "daily"
    result = run_cli(
        "export", "--kind", "quotes", "--symbol", SYMBOL, "--depth", "50",
        "--start", "2026-01-01", "--end", "2026-02-01", "--split", "daily",
        "--out", f"{out}/", "--database-url", recording.url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    exported = [
        line.split(",")[2:]
        for path in sorted(out.iterdir())
        for line in path.read_text().splitlines()[1:]
    ]
    assert len(archived_rows) == len(exported) > 300
    for got, want in zip(archived_rows, exported, strict=True):
        assert list(got[:2]) == [int(v) for v in want[:2]]
        assert list(got[2:]) == [float(v) for v in want[2:]]


# The export's read of a day's trades: holding it stops a run inside a day,
# after that day's L2 and quotes files were written and before its manifest.
TRADES_READ = b"ORDER BY ts_us, seq, trade_id"


def files_under(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def test_a_run_killed_inside_a_day_leaves_no_manifest_and_the_next_run_finishes_it(
    recording: Recording, tmp_path: Path
):
    root = tmp_path / "archive"
    first = StreamDay("bybit", SYMBOL, 50, DATES[0])  # the first stream-day written
    proxy = DatabaseProxy(recording.url)
    try:
        proxy.hold(TRADES_READ)
        run = spawn(
            "archive",
            ["archive", "--archive-url", str(root), "--database-url", proxy.url],
            tmp_path / "killed.log",
        )
        try:
            assert proxy.wait_held(60), run.output()
            assert (root / first.file_path(L2)).exists()
            assert (root / first.file_path("quotes")).exists()
            run.proc.send_signal(signal.SIGKILL)
            assert run.proc.wait(10) == -signal.SIGKILL
        finally:
            run.stop()
    finally:
        proxy.release()
        proxy.close()
    assert not (root / first.manifest_path()).exists()  # not archived
    rerun = archive(str(root), recording.url)
    assert rerun.returncode == 0, rerun.stderr
    assert "8 stream-days to write" in rerun.stderr
    clean = tmp_path / "clean"
    assert archive(str(clean), recording.url).returncode == 0
    assert files_under(root) == files_under(clean)


def test_a_store_that_stops_mid_run_is_retried_then_the_run_fails_and_the_next_finishes(
    recording: Recording, s3: S3Server, tmp_path: Path
):
    url = s3.url("outage")
    first = StreamDay("bybit", SYMBOL, 50, DATES[0])
    proxy = DatabaseProxy(recording.url)
    try:
        proxy.hold(TRADES_READ)
        run = spawn(
            "archive",
            [
                *("archive", "--archive-url", url, "--database-url", proxy.url),
                *("--retry-for", "4"),
            ],
            tmp_path / "outage.log",
            env=s3.env(),
        )
        try:
            assert proxy.wait_held(60), run.output()
            s3.stop()  # the store goes away with the day half written
            proxy.release()
            assert run.proc.wait(60) == 1
        finally:
            run.stop()
            s3.start()
    finally:
        proxy.release()
        proxy.close()
    output = run.output()
    assert "retrying in" in output  # with backoff
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "days not archived stay in the database" in errors[0], output
    fs = s3.filesystem()
    manifest = f"depthwatch-archive/outage/{first.manifest_path()}"
    assert fs.get_file_info(manifest).type.name == "NotFound"
    with sa.create_engine(recording.url).connect() as conn:  # the day is still there
        assert conn.execute(sa.text("SELECT count(*) FROM book_chunks")).scalar()
    again = archive(url, recording.url, env=s3.env())
    assert again.returncode == 0, again.stderr
    local = tmp_path / "local"
    assert archive(str(local), recording.url).returncode == 0
    for path, data in files_under(local).items():
        with fs.open_input_stream(f"depthwatch-archive/outage/{path}") as src:
            assert src.read() == data, path


def partition_days(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return {utc_day(d * DAY_US) for d in schema.existing_partition_days(conn)}


def test_hot_days_drop_archived_days_and_keep_one_whose_manifest_is_not_the_recorded_one(
    archived: Archived,
):
    url, engine, root = archived.url, archived.engine, archived.root
    assert set(DATES) <= partition_days(engine)
    # Jan 2's manifest at depth 1 is replaced by another (same counts, so the
    # run does not write the day again): that day cannot be proved, it stays.
    manifest = root / StreamDay("bybit", SYMBOL, 1, "2026-01-02").manifest_path()
    manifest.write_bytes(manifest.read_bytes().replace(b'"manifest": 1', b'"manifest": 1 '))
    result = archive(str(root), url, "--hot-days", "2")
    assert result.returncode == 0, result.stderr
    assert "keeping 2026-01-02 in the database" in result.stderr
    assert "is not the manifest recorded" in result.stderr
    assert "dropped 3 archived days" in result.stderr
    left = partition_days(engine)
    assert "2026-01-02" in left and not {"2026-01-01", "2026-01-03", "2026-01-04"} & left
    with engine.connect() as conn:
        run = conn.execute(
            sa.text("SELECT days_dropped, kept FROM archive_runs ORDER BY id DESC LIMIT 1")
        ).one()
    assert run.days_dropped == 3 and run.kept.startswith("2026-01-02: ")
    # The archive still holds every day, byte for byte what was written.
    for date in DATES:
        l2 = pq.read_table(root / StreamDay("bybit", SYMBOL, 50, date).file_path(L2))
        assert l2.num_rows > 0


def test_the_collectors_retention_waits_for_the_archive_when_one_is_configured(
    archived: Archived,
):
    engine = archived.engine
    # A journal drains into Jan 3 after it was archived: Jan 3 is no longer
    # archived as the database holds it.
    late_trade(engine, "late-2", MIDNIGHT + DAY_US + 7_200_000_000)
    config = WriterConfig(flush_interval_s=0.05, retention_days=1, retention_waits_for_archive=True)
    writer = BatchWriter(engine, config)
    writer.start()  # partition upkeep, retention included, runs at start
    assert writer.stop()
    left = partition_days(engine)
    assert "2026-01-03" in left and not {"2026-01-01", "2026-01-02", "2026-01-04"} & left
    # Archived again, the day goes at the next upkeep.
    assert archive(str(archived.root), archived.url).returncode == 0
    writer = BatchWriter(engine, config)
    writer.start()
    assert writer.stop()
    assert "2026-01-03" not in partition_days(engine)


def test_up_runs_the_archive_after_each_finished_day_and_an_hour_after_a_failure():
    from depthwatch.archive.schedule import RETRY_US, ArchiveSchedule, next_due
    from depthwatch.storage.archived import SETTLE_US

    noon = parse_time_us("2026-12-05T12:00Z")
    after_midnight = parse_time_us("2026-12-06") + SETTLE_US
    assert next_due(noon, 0) == after_midnight
    assert next_due(noon, 1) == noon + RETRY_US
    late = parse_time_us("2026-12-05T23:30Z")
    assert next_due(late, 1) == after_midnight  # the day's own run comes first
    # One run at a time: started at once, not again while it runs; its end
    # sets the next.
    now = [noon]
    started: list[int] = []
    exits: list[int] = []
    schedule = ArchiveSchedule(
        start=lambda: started.append(now[0]),
        finished=lambda: exits.pop() if exits else None,
        running=lambda: len(started) > len(done),
        clock=lambda: now[0],
    )
    done: list[int] = []
    schedule.tick()
    schedule.tick()
    assert started == [noon]
    exits.append(1)  # it failed
    done.append(1)
    schedule.tick()
    now[0] = noon + RETRY_US - 1
    schedule.tick()
    assert started == [noon]
    now[0] = noon + RETRY_US
    schedule.tick()
    assert started == [noon, noon + RETRY_US]


def test_the_health_page_shows_the_archive_per_stream_and_the_last_failure(
    archived: Archived, use_database, tmp_path: Path
):
    from streamlit.testing.v1 import AppTest

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert archive(str(blocker / "archive"), archived.url).returncode == 1  # a failed run
    with archived.engine.begin() as conn:  # Jan 3 waits again
        conn.execute(sa.text(f"DELETE FROM archived_days WHERE day = {MIDNIGHT // DAY_US + 1}"))
    use_database(archived.url)
    at = AppTest.from_string("from depthwatch.app import health\nhealth.render()").run(timeout=30)
    assert not at.exception
    table = at.dataframe[-1].value  # the archive's, last on the page
    assert table["stream"].tolist() == ["BTCUSDT · linear · depth 1", "BTCUSDT · linear · depth 50"]
    assert table["last archived day"].tolist() == ["2026-01-04", "2026-01-04"]
    assert table["days archived"].tolist() == [3, 3]
    assert table["days waiting"].tolist() == [1, 1]
    assert table["archive MB"].iloc[1] > 0  # depth 50 (depth 1 rounds to 0.0)
    captions = " ".join(c.value for c in at.caption)
    assert "Last run: " in captions and "a-file" in captions
    (failure,) = [e.value for e in at.error]
    assert "a file stands where a directory should be" in failure


SEAM_KINDS = ("incremental_book_L2", "quotes", "trades", "book_snapshot_5_1m", "book_snapshot_3")


def everything_read(url: str, out: Path) -> dict[str, bytes | list[str]]:
    """What a user reads of the whole recording: every export kind and the
    gaps as CSV, `depthwatch gaps`, and the Python API's books."""
    from depthwatch import history

    out.mkdir()
    read: dict[str, bytes | list[str]] = {}
    span = ("--start", DATES[0], "--end", "2026-01-05", "--database-url", url)
    for kind in (*SEAM_KINDS, "gaps"):
        depth = () if kind == "trades" else ("--depth", "50")
        path = out / f"{kind}.csv"
        result = run_cli(
            "export", "--kind", kind, "--symbol", SYMBOL, *depth, *span, "--out", str(path)
        )
        assert result.returncode == 0, result.stderr
        read[kind] = path.read_bytes()
    result = run_cli("gaps", "--symbol", SYMBOL, "--format", "csv", *span)
    assert result.returncode == 0, result.stderr
    read["depthwatch gaps"] = result.stdout.encode()
    engine = make_engine(url)
    try:
        moments = [FIRST_US + 1, MIDNIGHT, MIDNIGHT + DAY_US - 1, MIDNIGHT + DAY_US, RESTART_AT]
        moments += [MIDNIGHT + DAY_US + k * 3_600_000_000 for k in range(0, 48, 5)]
        read["book_at"] = [
            repr(history.book_at(SYMBOL, t, depth=depth, engine=engine))
            for t in moments
            for depth in DEPTHS
        ]
        states = history.book_states(
            SYMBOL, MIDNIGHT - 3_600_000_000, LAST_US, levels=5, depth=50, engine=engine
        )
        read["book_states"] = [repr(book) for book in states]
        trades = history.load_trades(SYMBOL, DATES[0], "2026-01-05", engine=engine)
        read["load_trades"] = [trades.to_csv(index=False)]
        check_history_page_estimates(engine, read)
    finally:
        engine.dispose()
    return read


def check_history_page_estimates(engine: sa.Engine, read: dict[str, bytes | list[str]]) -> None:
    """The History page's estimate of each kind: within a factor of two of
    the rows the export wrote, and its recorded span the recording's."""
    from depthwatch.app.planning import plan
    from depthwatch.export.tardis import ExportRequest

    for kind in SEAM_KINDS:
        depth = None if kind == "trades" else 50
        request = ExportRequest(
            kind, "linear", SYMBOL, MIDNIGHT - DAY_US, MIDNIGHT + 3 * DAY_US, depth
        )
        estimate = plan(engine, [request], "csv")
        assert estimate.error is None, estimate.error
        written = read[kind].count(b"\n") - 1  # type: ignore[union-attr]
        assert written / 2 <= estimate.rows.rows <= written * 2, (kind, estimate.rows, written)


def test_reading_across_the_seam_of_hot_and_archived_days_gives_the_same_bytes(
    archived: Archived, tmp_path: Path
):
    url, engine, root = archived.url, archived.engine, archived.root
    before = everything_read(url, tmp_path / "before")
    assert before["incremental_book_L2"].count(b"\n") > 1_000
    # Jan 2 stays in the database (its depth-1 manifest is not the one
    # recorded); Jan 1, 3 and 4 leave it: two seams, in both directions.
    manifest = root / StreamDay("bybit", SYMBOL, 1, "2026-01-02").manifest_path()
    manifest.write_bytes(manifest.read_bytes().replace(b'"manifest": 1', b'"manifest": 1 '))
    result = archive(str(root), url, "--hot-days", "2")
    assert result.returncode == 0, result.stderr
    assert partition_days(engine) & set(DATES) == {"2026-01-02"}
    after = everything_read(url, tmp_path / "after")
    for name, value in before.items():
        assert after[name] == value, name
    # The archived days come from the archive: without it, the reads say
    # which file is missing, in one line, and write nothing wrong.
    moved = tmp_path / "moved"
    root.rename(moved)
    result = run_cli(
        "export", "--kind", "quotes", "--symbol", SYMBOL, "--depth", "50",
        "--start", DATES[0], "--end", "2026-01-05", "--database-url", url,
        "--out", str(tmp_path / "none.csv"),
    )  # fmt: skip
    assert result.returncode == 1
    assert "book_chunks.parquet is missing from" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "none.csv").exists()
    # Days still in the database read without the archive.
    result = run_cli(
        "export", "--kind", "quotes", "--symbol", SYMBOL, "--depth", "50",
        "--start", "2026-01-02 01:00", "--end", "2026-01-03", "--database-url", url,
        "--out", "-",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") > 10


def test_days_archived_to_s3_and_dropped_read_back_from_s3(
    server_url: str, s3: S3Server, tmp_path: Path
):
    with new_database(server_url) as url:
        engine = sa.create_engine(url)
        try:
            synthetic_recording(engine)
            span = ("--start", DATES[0], "--end", "2026-01-05", "--database-url", url)
            kinds = ("incremental_book_L2", "trades")

            def exported(name: str) -> dict[str, bytes]:
                files = {}
                for kind in kinds:
                    path = tmp_path / f"{name}-{kind}.csv"
                    depth = () if kind == "trades" else ("--depth", "1")
                    result = run_cli(
                        "export", "--kind", kind, "--symbol", SYMBOL, *depth, *span,
                        "--out", str(path), env=s3.env(),
                    )  # fmt: skip
                    assert result.returncode == 0, result.stderr
                    files[kind] = path.read_bytes()
                return files

            before = exported("before")
            result = archive(s3.url("cold"), url, "--hot-days", "2", env=s3.env())
            assert result.returncode == 0, result.stderr
            assert not partition_days(engine) & set(DATES)  # every day left the database
            assert exported("after") == before
        finally:
            engine.dispose()


@pytest.mark.parametrize(
    ("category", "symbol", "depth"),
    [("binance-futures", "BTCUSDT", FULL_DEPTH), ("hyperliquid", "BTC", 20)],
)
def test_other_venues_archive_under_their_tardis_id_and_rebuild_their_books(
    server_url: str, tmp_path: Path, category: str, symbol: str, depth: int
):
    """A Binance whole book and a Hyperliquid book, written through the
    collector's path over two finished days, are archived under their
    exchange ids (`binance-futures/...`, `hyperliquid/...`), and each day's L2
    rebuilds the book after every message."""
    market = MarketBook(spec_for(SYMBOL), 40, random.Random(18))
    view = DepthView(market, min(depth, 40))
    stream = StreamKey(category, symbol, depth)
    truth: dict[int, Book] = {}
    with new_database(server_url) as url:
        engine = sa.create_engine(url)
        try:
            schema.upgrade(engine)
            writer = BatchWriter(engine, WriterConfig(flush_interval_s=0.05))
            writer.start()
            book = StreamBook(stream, writer)
            ts, u = MIDNIGHT - 3_600_000_000, 0
            while ts < MIDNIGHT + DAY_US + 3_600_000_000:
                changed = market.step()
                bids, asks = view.snapshot() if u == 0 else view.diff(changed)
                u += 1
                update = BookUpdate(stream, u == 1, bids, asks, u, ts // 1000, ts, None, ts + 5)
                book.apply(update)
                truth[ts] = tuple(levels(side) for side in view.snapshot())  # type: ignore[assignment]
                ts += EVERY_US
            assert writer.stop()
            root = tmp_path / "archive"
            result = archive(str(root), url)
            assert result.returncode == 0, result.stderr
        finally:
            engine.dispose()
    for date in ("2026-01-01", "2026-01-02"):
        day = StreamDay(TARDIS_EXCHANGE[category], symbol, depth, date)
        assert day.file_path(L2).startswith(f"{category}/{L2}/symbol={symbol}/depth={depth}/")
        manifest = Manifest.from_json((root / day.manifest_path()).read_bytes())
        assert manifest.exchange == category and manifest.symbol == symbol
        books = rebuild(pq.read_table(root / day.file_path(L2)))
        assert books
        for at, rebuilt in books.items():
            assert rebuilt == expected_at(truth, at), (category, date, at)
