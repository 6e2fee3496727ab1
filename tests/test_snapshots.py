"""feed.snapshots: the REST snapshot client against the simulator's real HTTP
endpoint: what it returns, the rate limit for many symbols, the shared
backoff on 429 and 5xx, and a refusal told apart from a hiccup."""

from __future__ import annotations

import asyncio
import time

import pytest

from depthwatch.feed.bybit.topics import book_topic
from depthwatch.feed.snapshots import RestPolicy, SnapshotFetcher, SnapshotUnavailable
from depthwatch.records import FULL_DEPTH, StreamKey
from depthwatch.sim import SimConfig, SimulatorThread

SYMBOLS = tuple(f"S{i:02d}USDT" for i in range(12))


def base_url(sim: SimulatorThread) -> str:
    return f"http://127.0.0.1:{sim.sim.port}"


def stream(symbol: str) -> StreamKey:
    return StreamKey("spot", symbol, FULL_DEPTH)


def test_a_snapshot_is_the_simulators_book_with_its_u_and_seq():
    sim = SimulatorThread(SimConfig(symbols=("BTCUSDT",), rate=20.0, trades_rate=0)).start()
    try:
        fetcher = SnapshotFetcher(base_url(sim), "spot")
        snapshot = asyncio.run(fetcher.fetch(stream("BTCUSDT")))
        truth = {s.u: s for s in sim.sim.truth(book_topic(FULL_DEPTH, "BTCUSDT"))}
        state = truth[snapshot.update_id]
        assert snapshot.is_snapshot and snapshot.sequence == state.seq
        assert (snapshot.bids, snapshot.asks) == (state.bids, state.asks)
        assert fetcher.stats.answered == 1 and not fetcher.waiting
    finally:
        sim.stop()


def test_many_symbols_wait_their_turn_within_the_rate():
    """Twelve symbols at 4 a second after a burst of 2: the last answer comes
    no sooner than the rate allows (a lower bound: a slow machine only adds),
    and the status line names who waits meanwhile."""
    sim = SimulatorThread(SimConfig(symbols=SYMBOLS, rate=5.0, trades_rate=0)).start()
    try:
        fetcher = SnapshotFetcher(base_url(sim), "spot", RestPolicy(rate_per_s=4, burst=2))
        lines: list[str] = []

        async def main() -> float:
            started = time.monotonic()
            tasks = [asyncio.create_task(fetcher.fetch(stream(s))) for s in SYMBOLS]
            await asyncio.sleep(0.5)
            lines.append(fetcher.status())
            await asyncio.gather(*tasks)
            return time.monotonic() - started

        elapsed = asyncio.run(main())
        assert elapsed >= (len(SYMBOLS) - 2) / 4 - 0.05
        assert fetcher.stats.requests == len(SYMBOLS) == fetcher.stats.answered
        assert lines[0].startswith("awaiting a snapshot: ") and "more" in lines[0]
        assert fetcher.status() == ""
    finally:
        sim.stop()


@pytest.mark.parametrize(
    ("faults", "counter"),
    [(dict(rest_429_every=2), "throttled"), (dict(rest_5xx_every=2), "failed")],
)
def test_429_and_503_back_off_for_every_symbol_and_retry_until_answered(faults, counter):
    config = SimConfig(symbols=SYMBOLS[:4], rate=5.0, trades_rate=0, **faults)  # type: ignore[arg-type]
    sim = SimulatorThread(config).start()
    try:
        policy = RestPolicy(rate_per_s=50, burst=50, backoff_first_s=0.2, backoff_max_s=0.5)
        fetcher = SnapshotFetcher(base_url(sim), "spot", policy)

        async def main() -> list:
            return await asyncio.gather(*(fetcher.fetch(stream(s)) for s in SYMBOLS[:4]))

        snapshots = asyncio.run(main())
        assert [s.stream.symbol for s in snapshots] == list(SYMBOLS[:4])
        assert getattr(fetcher.stats, counter) >= 1
        assert fetcher.stats.answered == 4
        assert fetcher.stats.requests == 4 + getattr(fetcher.stats, counter)
    finally:
        sim.stop()


def test_an_unknown_symbol_is_refused_not_retried():
    sim = SimulatorThread(SimConfig(symbols=("BTCUSDT",), rate=5.0, trades_rate=0)).start()
    try:
        fetcher = SnapshotFetcher(base_url(sim), "spot")
        with pytest.raises(SnapshotUnavailable, match="retCode 10001"):
            asyncio.run(fetcher.fetch(stream("NOPEUSDT")))
        assert fetcher.stats.requests == 1 and fetcher.stats.refused == 1
    finally:
        sim.stop()


def test_an_unreachable_server_is_retried_and_said_in_the_status():
    fetcher = SnapshotFetcher(
        "http://127.0.0.1:9", "spot", RestPolicy(backoff_first_s=0.05, backoff_max_s=0.1)
    )

    async def main() -> str:
        task = asyncio.create_task(fetcher.fetch(stream("BTCUSDT")))
        deadline = time.monotonic() + 60
        while fetcher.stats.failed < 3:
            assert time.monotonic() < deadline, "three refused connections took a minute"
            await asyncio.sleep(0.02)
        status = fetcher.status()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return status

    status = asyncio.run(main())
    assert status.startswith("awaiting a snapshot: BTCUSDT")
    assert "127.0.0.1:9" in fetcher.stats.last_error
    assert not fetcher.waiting  # a cancelled fetch waits no more
