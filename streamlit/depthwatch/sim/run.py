"""Running a simulator: on its own thread for tests and benchmarks
(SimulatorThread), or as the `depthwatch sim` process (run_sim)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import threading
from collections.abc import Iterable
from pathlib import Path

from depthwatch.feed.bybit.topics import CATEGORIES
from depthwatch.sim.binance import VENUES
from depthwatch.sim.config import SimConfig, config_from_args
from depthwatch.sim.market import TruthState
from depthwatch.sim.server import BybitSimulator

log = logging.getLogger(__name__)


class SimulatorThread:
    """Runs a BybitSimulator on its own event loop in a daemon thread."""

    def __init__(
        self, config: SimConfig | None = None, replay_files: Iterable[str | Path] = ()
    ) -> None:
        self.sim = BybitSimulator(config, replay_files)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="bybit-sim", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.sim.start()
        except BaseException as exc:  # surfaced to start() in the caller's thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self.sim.stop()

    def start(self) -> SimulatorThread:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def url(self, category: str = "linear") -> str:
        return self.sim.url(category)

    def binance_url(self, venue: str, raw: bool = False) -> str:
        return self.sim.binance_url(venue, raw)

    def hyperliquid_url(self) -> str:
        return self.sim.hyperliquid_url()

    def rest_url(self) -> str:
        return self.sim.rest_url()

    def truth(self, topic: str) -> list[TruthState]:
        return self.sim.truth(topic)

    def latest(self, topic: str) -> TruthState | None:
        """The topic's current state, read on the simulator's own thread: its
        market changes the books while a reader on another thread walks them."""
        if not self._thread.is_alive():
            return self.sim.latest(topic)

        async def read() -> TruthState | None:
            return self.sim.latest(topic)

        return asyncio.run_coroutine_threadsafe(read(), self._loop).result(10)

    def finished(self, topic: str) -> bool:
        return self.sim.finished(topic)


def run_sim(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code."""

    async def main() -> None:
        sim = BybitSimulator(config_from_args(args), args.replay)
        await sim.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        for category in CATEGORIES:
            log.info("simulator listening on %s", sim.url(category))
        for venue in VENUES:
            log.info("simulator listening on %s", sim.binance_url(venue))
        log.info("simulator listening on %s", sim.hyperliquid_url())
        log.info("REST on %s", sim.rest_url())
        await stop.wait()
        await sim.stop()

    asyncio.run(main())
    return 0
