"""One client connection of the simulator, whichever protocol it speaks: an
outbox drained by its own sender task, and the connection faults
(disconnect, malformed frames, stall, mute) injected as its data goes out."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from typing import TYPE_CHECKING

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from depthwatch.clock import now_us
from depthwatch.sim.config import ConnRecord, FaultKind

if TYPE_CHECKING:
    from depthwatch.sim.server import BybitSimulator
    from depthwatch.sim.topics import Pub

log = logging.getLogger(__name__)


class Conn:
    """One client connection: an outbox drained by a sender task, plus fault counters."""

    def __init__(
        self,
        sim: BybitSimulator,
        ws: ServerConnection,
        category: str,
        fault: FaultKind | None = None,
    ) -> None:
        self.sim = sim
        self.ws = ws
        self.category = category
        self.conn_id = uuid.uuid4().hex[:20]
        self.fault = fault  # the connection fault this connection will suffer
        self.muted = False
        self.record = ConnRecord(self.conn_id, fault, now_us())
        self.topics: set[str] = set()
        self.out: deque[Pub | bytes] = deque()
        self.has_data = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.closed = False
        self.book_sent = 0
        self.data_sent = 0

    def receive(self, raw: str | bytes) -> None:
        """A frame from the client: a Bybit request (BinanceConn speaks Binance's)."""
        self.sim.on_request(self, raw)

    def leave(self) -> None:
        """The client is gone: out of every topic it subscribed."""
        for name in self.topics:
            topic = self.sim.find_topic(name)
            if topic is not None:
                topic.subscribers.pop(self, None)

    def push(self, item: Pub | bytes) -> None:
        if self.closed:
            return
        self.out.append(item)
        self.has_data.set()
        limit = self.sim.config.queue_size
        if len(self.out) >= limit:
            self.room.clear()
            if self.sim.config.rate > 0 and len(self.out) > 16 * limit:
                log.warning("closing slow consumer %s", self.conn_id)
                self.close_soon(1008, "slow consumer")

    async def wait_room(self) -> None:
        while not self.closed and len(self.out) >= self.sim.config.queue_size:
            self.room.clear()
            await self.room.wait()

    def close_soon(self, code: int, reason: str) -> None:
        self.shutdown()
        asyncio.get_running_loop().create_task(self.ws.close(code, reason))

    def shutdown(self) -> None:
        self.closed = True
        self.out.clear()
        self.room.set()  # wake a market waiting for room
        self.has_data.set()

    async def run_sender(self) -> None:
        cfg = self.sim.config
        try:
            while True:
                while not self.out and not self.closed:
                    self.has_data.clear()
                    await self.has_data.wait()
                if self.closed:
                    return
                item = self.out.popleft()
                if len(self.out) < cfg.queue_size:
                    self.room.set()
                if isinstance(item, bytes):
                    await self.ws.send(item, text=True)
                    continue
                if self.muted:
                    continue  # control frames (bytes) still go; data is discarded
                await self.ws.send(item.render(self.category), text=True)
                self.data_sent += 1
                self.book_sent += item.is_book
                self.record.book_sent = self.book_sent
                if cfg.malformed_every and self.data_sent % cfg.malformed_every == 0:
                    n = self.data_sent // cfg.malformed_every
                    await self.ws.send(_malformed(item.topic, n), text=True)
                    self.sim.injected(FaultKind.MALFORMED, self, item.topic)
                fault = self.fault
                if fault is FaultKind.DISCONNECT and self.book_sent == cfg.disconnect_every:
                    self.sim.injected(fault, self)
                    self.shutdown()
                    await self.ws.close(1001, "simulated disconnect")
                    return
                if fault is FaultKind.STALL and self.data_sent == cfg.stall_after:
                    self.sim.injected(fault, self)
                    # Silence everything, pongs included: they wait in the outbox.
                    await asyncio.sleep(cfg.stall_seconds)
                elif fault is FaultKind.MUTE and self.data_sent == cfg.mute_after:
                    self.sim.injected(fault, self)
                    self.muted = True
        except ConnectionClosed:
            self.shutdown()


def _malformed(topic: str, n: int) -> bytes:
    # Alternate a truncated frame with plain garbage: both must be survivable.
    if n % 2 == 0:
        return b"}{ not json at all"
    return orjson.dumps({"topic": topic, "type": "delta"})[:-1] + b',"data":'
