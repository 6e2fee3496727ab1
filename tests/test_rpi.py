"""Bybit's `orderbook.rpi` (50 levels, each with an ordinary and a Retail
Price Improvement size), recorded by a real collector from the simulator into
a real PostgreSQL as two books (rpi, rpi-sizes), checked against the
simulator's ground truth after every message, under drops, restarts and a
disconnect; the added kind `incremental_book_L2_rpi` rebuilds both sizes."""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator
from decimal import Decimal

import pytest

from depthwatch.feed.bybit.parse import FeedParser
from depthwatch.feed.bybit.topics import book_topic
from depthwatch.feed.messages import MalformedMessage
from depthwatch.records import RPI_DEPTH, RPI_SIZES_DEPTH, StreamKey
from depthwatch.sim import SimConfig, SimulatorThread, TruthState
from depthwatch.sim.config import FaultKind
from depthwatch.sim.topics import rpi_level

from .conftest import new_database, run_cli
from .e2e import (
    Run,
    assert_export_matches_truth,
    collect_until_caught_up,
    export_rows,
    feed_event_kinds,
    sim_collector_config,
    stored_book_events,
)
from .test_book import Sink

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


def sizes_of(truth: list[TruthState], index: int) -> list[TruthState]:
    """The truth of one of the two books: each level's size at `index` (1:
    ordinary, 2: RPI), levels where it is 0 left out."""
    return [
        TruthState(
            state.u,
            state.seq,
            state.ts_ms,
            [[level[0], level[index]] for level in state.bids if Decimal(level[index])],
            [[level[0], level[index]] for level in state.asks if Decimal(level[index])],
            state.dropped,
        )
        for state in truth
    ]


@contextlib.contextmanager
def recorded_rpi(
    server_url: str, sim_config: SimConfig
) -> Iterator[tuple[Run, dict[str, list[TruthState]], str]]:
    """(run, truth per symbol, database URL) once a collector of the linear RPI
    books of sim_config's symbols caught up with the simulator."""
    with new_database(server_url) as url:
        sim = SimulatorThread(sim_config).start()
        try:
            config = sim_collector_config(
                sim, url, tuple(sim_config.symbols), depths=(RPI_DEPTH,), silence_timeout_s=60.0
            )
            run = collect_until_caught_up(sim, config, timeout_s=90)
            truth = {s: sim.sim.truth(book_topic(RPI_DEPTH, s)) for s in sim_config.symbols}
        finally:
            sim.stop()
        try:
            yield run, truth, url
        finally:
            run.engine.dispose()


def rebuild_rpi(rows: list[dict[str, str]]) -> list[tuple[dict, dict]]:
    """The (bids, asks) after each message of an incremental_book_L2_rpi
    export, price -> (amount, rpi_amount), a level gone when both are 0."""
    states: list[tuple[dict, dict]] = []
    bids: dict[Decimal, tuple[Decimal, Decimal]] = {}
    asks: dict[Decimal, tuple[Decimal, Decimal]] = {}
    key = None
    for row in rows:
        row_key = (row["timestamp"], row["local_timestamp"], row["is_snapshot"])
        if row_key != key:
            if key is not None:
                states.append((dict(bids), dict(asks)))
            if row["is_snapshot"] == "true":
                bids.clear()
                asks.clear()
            key = row_key
        side = bids if row["side"] == "bid" else asks
        price = Decimal(row["price"])
        sizes = (Decimal(row["amount"]), Decimal(row["rpi_amount"]))
        if sizes == (0, 0):
            side.pop(price, None)
        else:
            side[price] = sizes
    if key is not None:
        states.append((dict(bids), dict(asks)))
    return states


def truth_sides(state: TruthState) -> tuple[dict, dict]:
    def side(levels: list) -> dict:
        return {Decimal(p): (Decimal(s), Decimal(r)) for p, s, r in levels}

    return side(state.bids), side(state.asks)


def check_against_truth(run: Run, truth: dict[str, list[TruthState]]) -> None:
    for symbol, states in truth.items():
        for index, depth in ((1, RPI_DEPTH), (2, RPI_SIZES_DEPTH)):
            stream = StreamKey("linear", symbol, depth)
            assert_export_matches_truth(run.engine, stream, sizes_of(states, index))
        # The added kind joins both books: every message's levels with both sizes.
        stream = StreamKey("linear", symbol, RPI_DEPTH)
        rows = export_rows(run.engine, "incremental_book_L2_rpi", stream)
        rebuilt = rebuild_rpi(rows)
        plain = export_rows(run.engine, "incremental_book_L2", stream)
        assert len(rows) >= len(plain)  # a level only RPI has is a row of its own
        by_seq = {state.seq: state for state in states}
        recorded = [
            event.seq
            for event in stored_book_events(run.engine, stream)
            if not event.is_snapshot or truth_sides(by_seq[event.seq]) != ({}, {})
        ]
        assert len(rebuilt) == len(recorded) > 0
        for i, (state, seq) in enumerate(zip(rebuilt, recorded, strict=True)):
            assert state == truth_sides(by_seq[seq]), f"{symbol}: message {i} (seq {seq})"


def base_config(**faults: object) -> SimConfig:
    settings: dict[str, object] = dict(
        symbols=SYMBOLS, rate=100.0, deltas=300, book_levels=200, trades_rate=0.0, seed=11
    )
    settings.update(faults)
    return SimConfig(**settings)  # type: ignore[arg-type]


def test_both_sizes_of_three_rpi_books_match_the_truth(server_url, tmp_path, use_database):
    with recorded_rpi(server_url, base_config()) as (run, truth, url):
        for states in truth.values():
            assert len(states) > 250
            last = states[-1]
            levels = last.bids + last.asks
            # The simulated book has every kind of level: ordinary, RPI only, both.
            assert any(s != "0" and r == "0" for _, s, r in levels)
            assert any(s == "0" and r != "0" for _, s, r in levels)
            assert any(s != "0" and r != "0" for _, s, r in levels)
        check_against_truth(run, truth)
        kinds = feed_event_kinds(run.engine)
        assert "gap" not in kinds and "anomaly" not in kinds
        # The command line gives the same file; the kind asks for the rpi book.
        out = tmp_path / "rpi.csv"
        span = ("--start", "2020-01-01", "--end", "2100-01-01", "--database-url", url)
        result = run_cli(
            *("export", "--kind", "incremental_book_L2_rpi", "--symbol", "ETHUSDT"),
            *(*span, "--out", str(out)),
        )
        assert result.returncode == 0, result.stderr
        stream = StreamKey("linear", "ETHUSDT", RPI_DEPTH)
        with out.open() as f:
            assert list(csv.DictReader(f)) == export_rows(
                run.engine, "incremental_book_L2_rpi", stream
            )
        result = run_cli(
            *("export", "--kind", "incremental_book_L2_rpi", "--symbol", "ETHUSDT"),
            *(*span, "--depth", "rpi-sizes", "--out", str(tmp_path / "no.csv")),
        )
        assert result.returncode == 1
        assert "only the rpi book has RPI sizes (--depth rpi)" in result.stderr
        assert not (tmp_path / "no.csv").exists()
        check_live_page(url, truth["BTCUSDT"][-1], use_database)


def check_live_page(url: str, last: TruthState, use_database) -> None:
    """The Live page of the rpi book shows the best levels without and with
    RPI as the truth's last state has them, and the RPI shares."""
    from streamlit.testing.v1 import AppTest

    use_database(url)
    at = AppTest.from_string("from depthwatch.app import live\nlive.render()")
    at.query_params.update(category="linear", symbol="BTCUSDT", depth="rpi")
    at.run(timeout=30)
    assert not at.exception
    table = next(m.value for m in at.markdown if "Retail Price Improvement" in m.value)
    cells = {
        row[0]: row[1:]
        for line in table.splitlines()
        if line.startswith("| ") and (row := [c.strip() for c in line.strip("|").split("|")])
    }

    def best(levels: list, index: int | None, bids: bool) -> str:
        prices = [Decimal(p) for p, *sizes in levels if index is None or Decimal(sizes[index])]
        return str(max(prices) if bids else min(prices))

    def shown(cell: str) -> str:
        return cell.split(" (")[0].replace(",", "")

    without, with_rpi = cells["without RPI"], cells["with RPI"]
    assert [shown(c) for c in without] == [best(last.bids, 0, True), best(last.asks, 0, False)]
    assert [shown(c) for c in with_rpi] == [
        best(last.bids, None, True),
        best(last.asks, None, False),
    ]
    for share in cells["RPI share, top 25 levels"]:
        assert share.endswith("%") and 0 < float(share[:-1]) < 100, share


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        (dict(drop_every=70), FaultKind.DROP),
        (dict(restart_every=90), FaultKind.RESTART),
        (dict(disconnect_every=1000, deltas=600), FaultKind.DISCONNECT),
    ],
    ids=["drop", "restart", "disconnect"],
)
def test_rpi_books_match_the_truth_under_faults(server_url, faults, expected):
    with recorded_rpi(server_url, base_config(**faults)) as (run, truth, _):
        check_against_truth(run, truth)
        kinds = feed_event_kinds(run.engine)
        if expected is FaultKind.DROP:
            assert kinds.count("gap") >= 2 * len(SYMBOLS)  # both books of each stream
        if expected is FaultKind.RESTART:
            assert "restart" in kinds


def rpi_frame(kind: str, bids: list, asks: list, u: int = 5) -> bytes:
    import orjson

    data = {"s": "BTCUSDT", "b": bids, "a": asks, "u": u, "seq": 77}
    msg = {"topic": "orderbook.rpi.BTCUSDT", "ts": 1752472188075, "type": kind, "data": data}
    return orjson.dumps(msg | {"cts": 1752472188067})


def test_parse_splits_an_rpi_message_into_its_two_books():
    parser = FeedParser("spot")
    # Bybit's documented example (docs/v5/websocket/public/orderbook-rpi.mdx).
    bids = [["121975.1", "0.114259", "0"], ["121969.9", "0", "0"], ["121960.5", "0", "0.163986"]]
    asks = [["121990.8", "0.441585", "0.78821"], ["121996.1", "0.016393", "0"]]
    plain, sizes = parser.parse(rpi_frame("delta", bids, asks), 1)
    assert plain.stream == StreamKey("spot", "BTCUSDT", RPI_DEPTH)
    assert sizes.stream == StreamKey("spot", "BTCUSDT", RPI_SIZES_DEPTH)
    assert plain.bids == [["121975.1", "0.114259"], ["121969.9", "0"], ["121960.5", "0"]]
    assert sizes.bids == [["121975.1", "0"], ["121969.9", "0"], ["121960.5", "0.163986"]]
    assert sizes.asks == [["121990.8", "0.78821"], ["121996.1", "0"]]
    assert (plain.update_id, plain.sequence, plain.exchange_us, plain.match_us) == (
        sizes.update_id,
        sizes.sequence,
        sizes.exchange_us,
        sizes.match_us,
    )
    # A snapshot lists each book's own levels only.
    plain, sizes = parser.parse(rpi_frame("snapshot", bids[:1] + bids[2:], asks), 1)
    assert plain.is_snapshot and sizes.is_snapshot
    assert plain.bids == [["121975.1", "0.114259"]]
    assert sizes.bids == [["121960.5", "0.163986"]]
    assert sizes.asks == [["121990.8", "0.78821"]]


@pytest.mark.parametrize(
    "level",
    [["1.5", "2"], ["1.5", "2", "-1"], ["1.5", "2", "x"], ["1.5", "2", 3], ["1.5", "2", "1", "1"]],
)
def test_parse_refuses_a_malformed_rpi_level(level):
    with pytest.raises(MalformedMessage) as caught:
        FeedParser("spot").parse(rpi_frame("delta", [level], []), 1)
    assert caught.value.stream == StreamKey("spot", "BTCUSDT", RPI_DEPTH)


def test_the_simulated_split_keeps_a_level_s_kind_and_removes_both_sizes():
    assert rpi_level(["100.5", "0"]) == ["100.5", "0", "0"]
    kinds = {tuple(s != "0" for s in rpi_level([f"{p}.5", "3"])[1:]) for p in range(200)}
    assert kinds == {(True, False), (False, True), (True, True)}
    assert rpi_level(["100.5", "3"])[1:].count("0") == rpi_level(["100.5", "7"])[1:].count("0")


def test_rpi_flag_adds_the_rpi_book_and_its_topic():
    import argparse

    from depthwatch.config import add_collector_arguments, collector_config_from_args

    parser = argparse.ArgumentParser()
    add_collector_arguments(parser)
    config = collector_config_from_args(parser.parse_args(["--symbols", "BTCUSDT", "--rpi"]))
    assert config.depths == (50, RPI_DEPTH)
    assert config.topics() == ["orderbook.50.BTCUSDT", "orderbook.rpi.BTCUSDT"]
    assert [s.depth for s in config.book_streams()] == [50, RPI_DEPTH, RPI_SIZES_DEPTH]
    same = collector_config_from_args(parser.parse_args(["--depth", "50,rpi", "--rpi"]))
    assert same.depths == (50, RPI_DEPTH)


def test_rpi_view_joins_the_two_books():
    import pandas as pd

    from depthwatch.app.rpi import rpi_view
    from depthwatch.storage.read.rows import BookView, LastQuote

    def book(bids: list, asks: list) -> BookView:
        frame = lambda levels: pd.DataFrame(levels, columns=["price", "size"], dtype="float64")  # noqa: E731
        return BookView(1_000, 1_000, frame(bids), frame(asks))

    plain = LastQuote(1, 1, 100.0, 101.0, 2.0, 3.0, "100.0", "101.0")
    rpi = LastQuote(1, 1, 100.5, 101.0, 1.0, 4.0, "100.5", "101.0")
    view = rpi_view(
        plain,
        rpi,
        book([(100.0, 2.0), (99.0, 6.0)], [(101.0, 3.0), (102.0, 5.0)]),
        book([(100.5, 1.0), (99.0, 1.0)], [(101.0, 4.0)]),
        levels=2,
    )
    assert (view.without.bid, view.without.ask) == ("100.0", "101.0")
    assert (view.with_rpi.bid, view.with_rpi.bid_size) == ("100.5", 1.0)  # RPI alone improves it
    assert (view.with_rpi.ask, view.with_rpi.ask_size) == ("101.0", 7.0)  # both at one price
    assert view.bid_share == pytest.approx(1.0 / 3.0)  # 100.5 (rpi 1) and 100.0 (2)
    assert view.ask_share == pytest.approx(4.0 / 12.0)  # 101 (3 + 4) and 102 (5)
    empty = rpi_view(None, None, None, None, levels=5)
    assert empty.with_rpi.bid is None and empty.bid_share is None


def test_the_two_books_keep_or_refuse_each_message_together():
    """A message the rpi book refuses (a crossed ordinary book) is not kept by
    the rpi-sizes book either, and a resync is asked for: both logs hold the
    same messages, which incremental_book_L2_rpi joins one to one."""
    from depthwatch.collector import Collector
    from depthwatch.config import CollectorConfig

    class Records(Sink):
        """What the collector hands its writer, kept (the writer's own tests
        cover what it does with them)."""

        def __getattr__(self, name: str) -> object:  # bounds, profiles: not looked at
            return lambda *args: None

    writer = Records()
    config = CollectorConfig(ws_url="ws://127.0.0.1:9", symbols=("BTCUSDT",), depths=(RPI_DEPTH,))
    collector = Collector(config, writer)  # type: ignore[arg-type]
    parser = FeedParser("linear")
    pair = parser.parse(rpi_frame("snapshot", [["100", "1", "2"]], [["101", "1", "0"]], u=5), 1)
    assert collector.on_book_pair(*pair) is False
    kept = len(writer.updates)
    assert kept == 2  # the snapshot, in both books
    # The ordinary bid crosses the ask: the rpi book refuses, and so does its companion.
    crossed = parser.parse(rpi_frame("delta", [["102", "1", "0"]], [], u=6), 2)
    assert collector.on_book_pair(*crossed) is True
    assert len(writer.updates) == kept
    books = collector.books
    plain, sizes = (books[StreamKey("linear", "BTCUSDT", d)] for d in (RPI_DEPTH, RPI_SIZES_DEPTH))
    assert not plain.valid and not sizes.valid
    # An RPI bid above an RPI ask alone is not refused (RPI orders never match each other).
    pair = parser.parse(rpi_frame("snapshot", [["100", "1", "0"]], [["103", "1", "0"]], u=9), 3)
    collector.on_book_pair(*pair)
    rpi_cross = parser.parse(rpi_frame("delta", [["102", "0", "1"]], [["101", "0", "1"]], u=10), 4)
    assert collector.on_book_pair(*rpi_cross) is False
    assert plain.valid and sizes.valid
    # A topic's resync, from its connection, is about both books.
    from depthwatch.records import FeedEvent, FeedEventKind

    collector.on_feed_event(
        FeedEvent(FeedEventKind.RESYNC, 5, "linear", "BTCUSDT", RPI_DEPTH, "x", "linear-0")
    )
    resyncs = [e for e in writer.events if getattr(e, "kind", None) is FeedEventKind.RESYNC]
    assert sorted(e.depth for e in resyncs) == [RPI_SIZES_DEPTH, RPI_DEPTH]
