"""The whole book (`orderbook.full` + REST snapshots), recorded by a real
collector from the simulator into a real PostgreSQL, checked against the
simulator's ground truth after every recorded message, under every fault of
the sync: snapshots older or newer than the buffered deltas, equal seq with
another u, 429 and 5xx answers, slow answers, deltas lost after the book
started, restarts (u=1) with and without content, and a delisting."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from decimal import Decimal

import pytest

from depthwatch.collector import Collector
from depthwatch.feed.bybit.topics import book_topic
from depthwatch.history import book_at, book_states
from depthwatch.records import FULL_DEPTH, StreamKey
from depthwatch.sim import SimConfig, SimulatorThread, TruthState
from depthwatch.sim.config import FaultKind, FullBookFault
from depthwatch.storage.read.book import book_bounds
from depthwatch.storage.read.streams import find_stream

from .conftest import new_database, run_cli
from .e2e import (
    Run,
    assert_export_matches_truth,
    collect_until_caught_up,
    export_rows,
    feed_event_kinds,
    rebuild_from_l2,
    recorded_sequence,
    sim_collector_config,
    truth_levels,
)

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


@contextlib.contextmanager
def recorded_full(
    server_url: str, sim_config: SimConfig, **overrides: object
) -> Iterator[tuple[str, Run, dict[str, list[TruthState]], SimulatorThread]]:
    """(database URL, run, truth per symbol, simulator) once a collector of the
    whole spot books of sim_config's symbols caught up with the simulator."""
    with new_database(server_url) as url:
        sim = SimulatorThread(sim_config).start()
        try:
            config = sim_collector_config(
                sim,
                url,
                tuple(sim_config.symbols),
                category="spot",
                depths=(FULL_DEPTH,),
                ws_url=sim.sim.url("spot"),
                # The market stops after its last step: a short silence
                # timeout would reconnect (and resync) in a loop from then on.
                silence_timeout_s=60.0,
                **overrides,
            )
            run = collect_until_caught_up(sim, config, timeout_s=90)
            truth = {s: sim.sim.truth(book_topic(FULL_DEPTH, s)) for s in sim_config.symbols}
        finally:
            sim.stop()
        try:
            yield url, run, truth, sim
        finally:
            run.engine.dispose()


def record_full(
    server_url: str, sim_config: SimConfig
) -> tuple[Collector, SimulatorThread, dict[str, list[TruthState]], list[str]]:
    """Record, check every stream against the truth after every message;
    (collector, simulator, truth, feed event kinds)."""
    with recorded_full(server_url, sim_config) as (_, run, truth, sim):
        for symbol in sim_config.symbols:
            stream = StreamKey("spot", symbol, FULL_DEPTH)
            assert_export_matches_truth(run.engine, stream, truth[symbol])
        return run.collector, sim, truth, feed_event_kinds(run.engine)


def base_config(**faults: object) -> SimConfig:
    settings: dict[str, object] = dict(
        symbols=SYMBOLS, rate=100.0, deltas=300, book_levels=400, trades_rate=0.0, seed=7
    )
    settings.update(faults)
    return SimConfig(**settings)  # type: ignore[arg-type]


def test_three_whole_books_match_the_truth_after_every_message(server_url):
    collector, sim, truth, kinds = record_full(server_url, base_config())
    for symbol in SYMBOLS:
        assert len(truth[symbol]) > 250
    assert sim.sim.rest_requests.total() >= len(SYMBOLS)
    assert "gap" not in kinds and "restart" not in kinds
    assert collector.fetcher is not None and collector.fetcher.stats.answered >= len(SYMBOLS)


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        (dict(rest_stale_every=2), FullBookFault.REST_STALE),
        (dict(rest_mismatch_every=2), FullBookFault.REST_MISMATCH),
        (dict(rest_429_every=2, rest_5xx_every=3), FullBookFault.REST_429),
        (dict(rest_delay_s=0.4), FullBookFault.REST_DELAY),
        (dict(drop_every=70), FaultKind.DROP),
        (dict(restart_every=90), FaultKind.RESTART),
        (dict(full_reset_every=70), FullBookFault.FULL_RESET),
        # One disconnect, a third of the way in (the second connection gets
        # fewer than 1,000): deltas keep coming after the reconnect, which a
        # whole book needs to start again.
        (dict(disconnect_every=1000, deltas=600), FaultKind.DISCONNECT),
        (dict(delist_after=120, relist_after=60), FullBookFault.DELIST),
    ],
    ids=[
        "stale",
        "mismatch",
        "429-503",
        "slow",
        "lost-delta",
        "restart",
        "empty-u1",
        "reconnects",
        "delist-relist",
    ],
)
def test_each_sync_fault_is_survived_exactly(server_url, faults, expected):
    collector, sim, _, kinds = record_full(server_url, base_config(**faults))
    assert sim.sim.faults[expected] > 0, f"the fault {expected} never reached the collector"
    fetched = sum(s.refetches for s in collector.syncs.values())
    if expected in (FullBookFault.REST_STALE, FullBookFault.REST_MISMATCH):
        assert fetched > 0  # the snapshot that did not fit was fetched again
    if expected is FullBookFault.REST_429:
        assert collector.fetcher is not None
        assert collector.fetcher.stats.throttled > 0 and collector.fetcher.stats.failed > 0
    if expected is FaultKind.DROP:
        assert "gap" in kinds and "recovered" in kinds
    if expected in (FaultKind.RESTART, FullBookFault.FULL_RESET, FullBookFault.DELIST):
        assert "restart" in kinds and collector.stats.restarts > 0


def test_a_category_without_the_whole_book_is_refused_in_one_line_and_the_rest_goes_on(
    server_url, caplog
):
    """Bybit's linear has no `orderbook.full` on mainnet yet: that
    subscription fails, the depth-50 streams beside it are recorded."""
    config = base_config(full_categories=("spot",), symbols=("BTCUSDT",), deltas=150)
    with new_database(server_url) as url:
        sim = SimulatorThread(config).start()
        try:
            collector_config = sim_collector_config(sim, url, ("BTCUSDT",), depths=(50, FULL_DEPTH))
            with caplog.at_level(logging.ERROR, logger="depthwatch"):
                run = collect_until_caught_up(
                    sim, collector_config, wait_for=[StreamKey("linear", "BTCUSDT", 50)]
                )
        finally:
            sim.stop()
        try:
            refused = [r for r in caplog.records if "orderbook.full.BTCUSDT" in r.getMessage()]
            assert len(refused) == 1, [r.getMessage() for r in caplog.records]
            assert "subscribe_failed" in feed_event_kinds(run.engine)
        finally:
            run.engine.dispose()


class Range:
    """A book's exact range: bids at or above `floor`, asks at or below `ceiling`."""

    def __init__(self, floor: str | None, ceiling: str | None) -> None:
        self.floor = None if floor is None else Decimal(floor)
        self.ceiling = None if ceiling is None else Decimal(ceiling)

    def bids(self, levels: list) -> list:
        return [lv for lv in levels if self.floor is None or Decimal(str(lv[0])) >= self.floor]

    def asks(self, levels: list) -> list:
        return [lv for lv in levels if self.ceiling is None or Decimal(str(lv[0])) <= self.ceiling]


def test_a_cut_rest_snapshot_makes_a_book_exact_within_its_range_and_says_so(server_url, tmp_path):
    """The REST snapshot holds 60 levels a side of books of ~150: the record
    says where it is exact (book_bounds), every recorded state equals the
    truth within that range, and book_at leaves out what lies beyond."""
    config = base_config(rest_levels=60, book_levels=150, symbols=("BTCUSDT",), deltas=400)
    stream = StreamKey("spot", "BTCUSDT", FULL_DEPTH)
    recording = recorded_full(server_url, config, rest_levels=60, checkpoint_interval_s=1.0)
    with recording as (url, run, truths, _):
        truth = truths["BTCUSDT"]
        with run.engine.connect() as conn:
            recorded = find_stream(conn, "spot", "BTCUSDT", FULL_DEPTH)
            bounds = book_bounds(conn, recorded, 0, 4_102_444_800_000_000)
        assert bounds and not bounds[0].whole
        # One at the snapshot, and one with each checkpoint after it.
        assert len(bounds) >= 2 and len({(b.bid_floor, b.ask_ceiling) for b in bounds}) == 1
        exact = Range(bounds[0].bid_floor, bounds[0].ask_ceiling)
        states = rebuild_from_l2(export_rows(run.engine, "incremental_book_L2", stream))
        by_seq = {state.seq: state for state in truth}
        beyond = 0
        sequence = recorded_sequence(run.engine, stream)
        for state, (u, seq, _) in zip(states, sequence, strict=True):
            bids, asks = truth_levels(by_seq[seq])
            assert exact.bids(state.bids) == exact.bids(bids), f"bids after u={u}"
            assert exact.asks(state.asks) == exact.asks(asks), f"asks after u={u}"
            beyond = max(beyond, len(state.bids) - len(exact.bids(state.bids)))
        assert beyond > 0, "no delta ever touched a level beyond the snapshot: a weak test"
        final = truth[-1]
        book = book_at(
            "BTCUSDT", final.ts_ms * 1000, category="spot", depth=FULL_DEPTH, engine=run.engine
        )
        assert book.known and book.beyond_bounds > 0
        assert (book.bid_floor, book.ask_ceiling) == (float(exact.floor), float(exact.ceiling))
        bids, asks = truth_levels(final)
        assert [p for p, _ in exact.bids(bids)] == [Decimal(str(p)) for p, _ in book.bids]
        assert [p for p, _ in exact.asks(asks)] == [Decimal(str(p)) for p, _ in book.asks]
        # book_states says the same, state by state, and cuts before its top N.
        states_after = list(
            book_states(
                "BTCUSDT",
                truth[0].ts_ms * 1000,
                final.ts_ms * 1000 + 1,
                levels=5,
                category="spot",
                depth=FULL_DEPTH,
                engine=run.engine,
            )
        )
        last = states_after[-1]
        assert last.known and (last.bid_floor, last.beyond_bounds) == (
            book.bid_floor,
            book.beyond_bounds,
        )
        assert (last.bids, last.asks) == (book.bids[:5], book.asks[:5])
        # An export of it says so, in one line.
        result = run_cli(
            *("export", "--kind", "book_snapshot_5", "--category", "spot"),
            *("--symbol", "BTCUSDT", "--depth", "full", "--database-url", url),
            *("--start", "2020-01-01", "--end", "2100-01-01", "--out", str(tmp_path / "f.csv")),
        )
        assert result.returncode == 0, result.stderr
        said = [line for line in result.stderr.splitlines() if "REST snapshot's range" in line]
        assert len(said) == 1
        assert f"bids >= {bounds[0].bid_floor}" in said[0]


def test_profiles_of_a_whole_book_match_the_truth_and_the_live_page_draws_them(
    server_url, use_database
):
    """Every profile the collector wrote sums the truth's levels per price
    bucket as the book stood at its u; the Live page draws a whole book from
    them, over a price range, aggregated in SQL."""
    import math

    import sqlalchemy as sa
    from streamlit.testing.v1 import AppTest

    config = base_config(symbols=("BTCUSDT",), deltas=700, rate=150.0)
    with recorded_full(server_url, config, profile_interval_s=1.0) as (url, run, truth, _):
        by_u = {state.u: state for state in truth["BTCUSDT"]}
        with run.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT u, step, bid_first, bid_sizes, ask_first, ask_sizes "
                    "FROM book_profiles ORDER BY ts_us"
                )
            ).all()
        assert len(rows) >= 3
        for u, step, bid_first, bid_sizes, ask_first, ask_sizes in rows:
            state = by_u[u]
            for levels, first, sizes in (
                (state.bids, bid_first, bid_sizes),
                (state.asks, ask_first, ask_sizes),
            ):
                expected: dict[int, Decimal] = {}
                for price, size in levels:  # the simulated book is well within 5 %
                    bucket = int(Decimal(price) / Decimal(repr(step)) // 1)  # exact
                    expected[bucket] = expected.get(bucket, Decimal(0)) + Decimal(size)
                got = {first + i: s for i, s in enumerate(sizes) if s}
                assert got.keys() == expected.keys(), f"u={u}"
                for bucket, size in expected.items():
                    assert math.isclose(got[bucket], float(size), rel_tol=1e-6), (u, bucket)
        use_database(url)
        at = AppTest.from_string("from depthwatch.app import live\nlive.render()")
        at.query_params.update(category="spot", symbol="BTCUSDT", depth="full", range="25")
        at.run(timeout=30)
        assert not at.exception
        assert at.segmented_control(key="range").value == 25
        captions = " ".join(c.value for c in at.caption)
        assert "price buckets in the database" in captions and "±25 bps of the mid" in captions
        assert "Depth: prices" in captions  # drawn from the newest profile
        assert len(at.get("plotly_chart")) == 6
