"""SQL injection: hostile symbols pushed through every entry point.

Every entry point (the collector's command line, `depthwatch export`, the
dashboard's URL, the query functions, the writer) gets symbols made of SQL
and driver syntax. After each, a sentinel table `x` still exists with its row,
the schema is intact, and any error is a clear one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from streamlit.testing.v1 import AppTest

from depthwatch.records import BookUpdate, FeedEvent, FeedEventKind, Quote, StreamKey
from depthwatch.storage import schema
from depthwatch.storage.db import make_engine
from depthwatch.storage.read.book import book_events, quotes
from depthwatch.storage.read.chunks import last_quote
from depthwatch.storage.read.events import (
    event_counts,
    feed_events,
    heartbeats,
    last_heartbeat,
    source_simulated,
)
from depthwatch.storage.read.health import commit_p99_ms, oldest_snapshot_us
from depthwatch.storage.read.streams import (
    NotRecorded,
    find_stream,
    instrument_id,
    list_streams,
)
from depthwatch.storage.read.tops import message_count
from depthwatch.storage.write import BatchWriter, WriterConfig

from .conftest import run_cli

EVIL = [
    "BTC'; DROP TABLE x;--",
    'BTC"; DROP TABLE x;--',
    "BTC\\'; DROP TABLE x;--",
    "BTC' OR '1'='1",
    "BTC%s",
    "BTC%(s)s",
    "BTC:name",
    "BTC$1",
    "BTC\t\n\\N",
    "ÄÖÜ€🙂",
]
ALL_TIME = (0, 4_102_444_800_000_000)


@pytest.fixture
def guarded(database_url: str) -> Iterator[tuple[str, sa.Engine]]:
    """A database with the schema and a sentinel table `x` holding one row."""
    engine = make_engine(database_url)
    schema.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE x (i int)"))
        conn.execute(sa.text("INSERT INTO x VALUES (1)"))
    yield database_url, engine
    engine.dispose()


def assert_unharmed(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT i FROM x")).scalars().all() == [1]
        tables = set(
            conn.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ).scalars()
        )
    assert {"x", "instruments", "book_events", "feed_events", "streams"} <= tables


depthwatch = run_cli


def test_the_collector_refuses_hostile_symbols_with_a_clear_error(guarded):
    url, engine = guarded
    for symbol in EVIL:
        result = depthwatch("collect", "--symbols", symbol, "--database-url", url)
        assert result.returncode == 2, (symbol, result.stderr[-500:])
        assert "configuration error" in result.stderr
        assert "is not a symbol" in result.stderr
    assert_unharmed(engine)


def test_export_of_a_hostile_symbol_is_a_clear_not_recorded_error(guarded):
    url, engine = guarded
    for symbol in EVIL:
        result = depthwatch(
            "export",
            "--kind",
            "incremental_book_L2",
            "--symbol",
            symbol,
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-02",
            "--database-url",
            url,
        )
        assert result.returncode == 1, (symbol, result.stderr[-500:])
        assert "has been recorded" in result.stderr, result.stderr[-500:]
    assert_unharmed(engine)


def test_export_input_errors_are_clear():
    base = ["export", "--kind", "quotes", "--symbol", "BTCUSDT"]
    dead = ["--database-url", "postgresql://u@127.0.0.1:9/none", "--database-wait", "0"]
    cases = [
        (["--start", "yesterday", "--end", "2024-01-02"], "not an ISO 8601 time: 'yesterday'"),
        (["--start", "2024-01-02", "--end", "2024-01-01"], "--end must be after --start"),
        (["--start", "2024-01-01", "--end", "2024-01-02", "--depth", "7"], "--depth 7: linear"),
        (
            ["--start", "2024-01-01", "--end", "2024-01-02", "--depth", "x"],
            "a number, full, rpi or rpi-sizes",
        ),
    ]
    for extra, message in cases:
        result = depthwatch(*base, *extra, *dead)
        assert result.returncode == 2, (extra, result.stderr[-300:])
        assert message in result.stderr, result.stderr[-300:]


def write_hostile_streams(engine: sa.Engine) -> list[StreamKey]:
    """A book message, a quote and a feed event for each hostile symbol, written
    by the real writer."""
    writer = BatchWriter(
        engine, WriterConfig(flush_interval_s=0.05, retention_days=0, collector_id="evil';--")
    )
    writer.start()
    streams = [StreamKey("linear", symbol, 50) for symbol in EVIL]
    ts = 1_733_011_200_000_000
    for i, stream in enumerate(streams):
        writer.register_stream(stream)
        bids, asks = [["100.5", "1"]], [["101.0", str(i + 1)]]
        writer.add_book_update(BookUpdate(stream, True, bids, asks, 7, 70, ts, ts, ts + 5))
        writer.add_quote(Quote(stream, ts, ts + 5, 7, "100.5", "1", "101.0", str(i + 1)))
        writer.add_feed_event(
            FeedEvent(FeedEventKind.ANOMALY, ts, "linear", stream.symbol, 50, stream.symbol)
        )
    assert writer.stop(timeout_s=30)
    return streams


def test_the_writer_and_every_query_keep_hostile_symbols_verbatim(guarded):
    _, engine = guarded
    streams = write_hostile_streams(engine)
    with engine.connect() as conn:
        listed = {(s.symbol, s.depth) for s in list_streams(conn)}
        assert listed == {(s.symbol, 50) for s in streams}
        for i, stream in enumerate(streams):
            recorded = find_stream(conn, "linear", stream.symbol, None)
            assert recorded.depth == 50  # the one depth recorded
            events = list(book_events(conn, recorded, *ALL_TIME))
            assert [(e.u, e.ask_sizes) for e in events] == [(7, [str(i + 1)])]
            assert len(list(quotes(conn, recorded, *ALL_TIME))) == 1
            quote = last_quote(conn, recorded, 0)
            assert quote is not None
            assert message_count(conn, recorded, *ALL_TIME) == 1
            key = str(stream)
            assert heartbeats(conn, key, *ALL_TIME).interval_us is None
            assert last_heartbeat(conn, key, 0) is None
            assert source_simulated(conn, [key], *ALL_TIME) is None
        details = {r.detail for r in feed_events(conn, 0)}
        assert set(EVIL) <= details  # stored and read back verbatim
        counts = event_counts(conn, 0)
        assert {symbol for _, symbol, _ in counts} == set(EVIL)
        # Symbols that were never recorded: a clear NotRecorded, nothing run.
        for symbol in EVIL:
            with pytest.raises(NotRecorded, match="has been recorded"):
                instrument_id(conn, "spot", symbol)
            assert commit_p99_ms(conn, symbol, 0) is None
        # Table names cannot be parameters: the one query built with one
        # quotes it, so a hostile name is one (missing) identifier.
        for name in EVIL[:4]:
            with pytest.raises(sa.exc.ProgrammingError, match="does not exist"):
                oldest_snapshot_us(conn, [name])
            conn.rollback()
    assert_unharmed(engine)


def run_page(name: str, params: dict[str, str]) -> AppTest:
    at = AppTest.from_string(f"from depthwatch.app import {name}\n{name}.render()")
    for key, value in params.items():
        at.query_params[key] = value
    return at.run(timeout=60)


def warnings(at: AppTest) -> str:
    return "\n".join(str(w.value) for w in at.warning)


def test_the_dashboard_takes_hostile_url_parameters_with_a_clear_warning(guarded, use_database):
    url, engine = guarded
    write_hostile_streams(engine)
    use_database(url)
    for name in ("overview", "health"):
        at = run_page(name, {})
        assert not at.exception, at.exception
    for symbol in EVIL:
        # A recorded stream with a hostile name opens like any other.
        at = run_page("live", {"category": "linear", "symbol": symbol, "depth": "50"})
        assert not at.exception, (symbol, at.exception)
        # (The rows are from 2024: "no data in the window" is the only warning.)
        assert "URL" not in warnings(at) and "No data for" in warnings(at), warnings(at)
        assert at.selectbox[0].value.symbol == symbol
        # Names of nothing recorded, and hostile window/levels: warned, defaults shown.
        params = {"category": symbol, "symbol": symbol + "x", "depth": symbol}
        params |= {"window": symbol, "levels": symbol}
        at = run_page("live", params)
        assert not at.exception, (symbol, at.exception)
        told = warnings(at)
        assert "No recorded stream matches" in told, told
        assert "URL parameter `window`" in told and "allowed values are 1, 5" in told
        assert "URL parameter `levels`" in told
    at = run_page("live", {"window": "7", "levels": "-1", "depth": "50"})
    told = warnings(at)
    assert "`window` is '7'" in told and "`levels` is '-1'" in told, told
    assert_unharmed(engine)
