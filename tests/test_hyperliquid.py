"""Hyperliquid books, recorded by a real collector from the simulator (its
Hyperliquid venue) into a real PostgreSQL: every push is a whole snapshot,
stored as the changes from the one before. After every recorded message the
book rebuilt from the export equals the push it stands for, three coins at
once; every push that changed the book is in the record; and so under a
repeated push, a frozen book, a withheld push, malformed frames, a
disconnect, and the server's idle cut (which the collector's pings keep
away)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import pytest

from depthwatch.collector import Collector
from depthwatch.records import StreamKey
from depthwatch.sim import SimConfig, SimulatorThread, TruthState
from depthwatch.sim.config import FaultKind

from .conftest import new_database
from .e2e import (
    Run,
    assert_export_matches_truth,
    collect_until_caught_up,
    export_rows,
    feed_event_kinds,
    recorded_sequence,
    sim_collector_config,
    truth_key,
)

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
COINS = ("BTC", "ETH", "SOL")
VENUE = "hyperliquid"
DEPTH = 20


def base_config(**faults: object) -> SimConfig:
    settings: dict[str, object] = dict(
        symbols=SYMBOLS, rate=50.0, deltas=200, book_levels=60, trades_rate=0.0, seed=13
    )
    settings.update(faults)
    return SimConfig(**settings)  # type: ignore[arg-type]


@contextlib.contextmanager
def recorded(
    server_url: str, sim_config: SimConfig, ping_s: float | None = None, **overrides: object
) -> Iterator[tuple[Run, dict[str, list[TruthState]], SimulatorThread]]:
    with new_database(server_url) as url:
        sim = SimulatorThread(sim_config).start()
        try:
            config = sim_collector_config(
                sim,
                url,
                COINS,
                category=VENUE,
                depths=(DEPTH,),
                ws_url=f"ws://{sim.sim.config.host}:{sim.sim.port}/hyperliquid/ws",
                silence_timeout_s=60.0,
                **overrides,
            )

            def pings(collector: Collector) -> None:
                if ping_s is not None:
                    for connection in collector.connections:
                        connection.config = dataclasses.replace(
                            connection.config, ping_interval_s=ping_s
                        )

            run = collect_until_caught_up(sim, config, timeout_s=60, prepare=pings)
            truth = {c: sim.sim.truth(truth_key(StreamKey(VENUE, c, DEPTH))) for c in COINS}
        finally:
            sim.stop()
        try:
            yield run, truth, sim
        finally:
            run.engine.dispose()


def check_every_push(run: Run, truth: dict[str, list[TruthState]], complete: bool) -> None:
    """Every recorded message rebuilds the push of its time; with `complete`,
    every push that was sent and changed the book is recorded."""
    for coin in COINS:
        stream = StreamKey(VENUE, coin, DEPTH)
        assert_export_matches_truth(run.engine, stream, truth[coin])
        if complete:
            recorded = {seq for _, seq, _ in recorded_sequence(run.engine, stream)}
            before = None
            for state in truth[coin]:
                book = (state.bids, state.asks)
                if not state.dropped and book != before and before is not None:
                    assert state.seq in recorded, f"{coin}: push at {state.seq} not recorded"
                if not state.dropped:
                    before = book


def test_three_coins_match_every_push_and_store_only_changes(server_url):
    with recorded(server_url, base_config()) as (run, truth, _):
        check_every_push(run, truth, complete=True)
        assert "gap" not in feed_event_kinds(run.engine)
        stream = StreamKey(VENUE, "BTC", DEPTH)
        rows = export_rows(run.engine, "incremental_book_L2", stream)
        assert {row["exchange"] for row in rows} == {VENUE}
        messages = recorded_sequence(run.engine, stream)
        snapshots = [m for m in messages if m[2]]
        assert len(snapshots) == 1 and len(messages) > 150
        # Changes only: far fewer rows than 40 levels a push.
        assert len(rows) < 40 * len(messages) / 3


@pytest.mark.parametrize(
    ("faults", "complete"),
    [
        (dict(hyperliquid_repeat_every=5), True),
        (dict(hyperliquid_freeze_after=60, hyperliquid_freeze_seconds=1.0), True),
        (dict(drop_every=7), False),
        (dict(malformed_every=25), False),
        (dict(disconnect_every=150), False),
    ],
    ids=["repeat", "freeze", "withheld", "malformed", "disconnect"],
)
def test_faults_leave_every_recorded_message_exact(server_url, faults, complete):
    with recorded(server_url, base_config(**faults)) as (run, truth, sim):
        check_every_push(run, truth, complete)
        assert sum(sim.sim.faults.values()) > 0, "no fault reached the collector"
        if "disconnect_every" in faults:
            assert sim.sim.faults[FaultKind.DISCONNECT] > 0
            assert "disconnect" in feed_event_kinds(run.engine)


def test_pings_keep_an_idle_connection_open(server_url):
    """The server closes a connection that sent nothing for 1.5 s (Hyperliquid:
    60 s); pinging every 0.5 s keeps the one connection for the whole run."""
    sim_config = base_config(hyperliquid_idle_timeout_s=1.5, deltas=300)
    with recorded(server_url, sim_config, ping_s=0.5) as (run, truth, sim):
        check_every_push(run, truth, complete=True)
        assert len(sim.sim.connection_log) == 1
