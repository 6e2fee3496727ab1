"""One feed connection against the real simulator: pings, acks, backoff."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from depthwatch.feed.connection import BybitConnection, ConnectionConfig, ReconnectPolicy
from depthwatch.records import BookUpdate, FeedEvent, FeedEventKind, StreamKey, Trade
from depthwatch.sim import BybitSimulator, SimConfig


class Recorder:
    """A FeedHandler that keeps what it is given."""

    def __init__(self) -> None:
        self.updates: list[BookUpdate] = []
        self.events: list[FeedEvent] = []
        self.lost: list[StreamKey] = []

    def on_book_update(self, update: BookUpdate) -> bool:
        self.updates.append(update)
        return False

    def on_malformed_book_message(self, stream: StreamKey, local_us: int, detail: str) -> bool:
        return False

    def on_trades(self, trades: list[Trade]) -> None:
        pass

    def on_feed_event(self, event: FeedEvent) -> None:
        self.events.append(event)

    def on_streams_lost(self, streams: list[StreamKey]) -> None:
        self.lost.extend(streams)

    def has_room(self) -> bool:
        return True

    async def wait_for_room(self) -> None:
        pass


async def run_for(connection: BybitConnection, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(connection.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 10)


def test_pings_on_schedule_and_every_ack_is_checked():
    async def main() -> tuple[BybitSimulator, Recorder, BybitConnection]:
        sim = BybitSimulator(SimConfig(symbols=("BTCUSDT",), rate=50, seed=1, trades_rate=0))
        await sim.start()
        recorder = Recorder()
        topics = ("orderbook.50.BTCUSDT", "orderbook.50.NOPEUSDT", "orderbook.7.BTCUSDT")
        connection = BybitConnection(
            "linear-0",
            ConnectionConfig(sim.url("linear"), "linear", topics, ping_interval_s=0.2),
            recorder,
        )
        await run_for(connection, 1.5)
        await sim.stop()
        return sim, recorder, connection

    sim, recorder, connection = asyncio.run(main())
    assert 5 <= sim.pings_received <= 8  # one every 0.2 s over 1.5 s
    kinds = [(e.kind, e.symbol, e.depth) for e in recorder.events]
    assert (FeedEventKind.SUBSCRIBED, "BTCUSDT", 50) in kinds
    failed = sorted(e.detail for e in recorder.events if e.kind is FeedEventKind.SUBSCRIBE_FAILED)
    assert len(failed) == 2
    assert failed[0].startswith("orderbook.50.NOPEUSDT: error:handler not found")
    assert failed[1].startswith("orderbook.7.BTCUSDT: error:handler not found")
    assert connection.topics == ["orderbook.50.BTCUSDT"]  # refused topics are not retried
    assert recorder.updates and recorder.updates[0].is_snapshot
    us = [u.update_id for u in recorder.updates]
    assert us == list(range(us[0], us[0] + len(us)))
    assert recorder.lost == [StreamKey("linear", "BTCUSDT", 50)]  # books invalid on close


def test_reconnects_back_off_exponentially_while_the_server_is_down():
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    recorder = Recorder()
    connection = BybitConnection(
        "linear-0",
        ConnectionConfig(
            f"ws://127.0.0.1:{port}/v5/public/linear",
            "linear",
            ("orderbook.50.BTCUSDT",),
            reconnect=ReconnectPolicy(initial_s=0.05, max_s=0.4, factor=2.0, jitter=0.0),
        ),
        recorder,
    )
    with contextlib.suppress(TimeoutError):
        asyncio.run(run_for(connection, 1.6))
    delays = connection.stats.reconnect_delays_s
    assert delays[:5] == [0.05, 0.1, 0.2, 0.4, 0.4]  # doubling, then capped
    # Every failed attempt was followed by a delay, but perhaps the one stop cut short.
    assert connection.stats.connect_failures - len(delays) in (0, 1)
    assert connection.stats.connects == 0 and not recorder.lost


class SlowWriter(Recorder):
    """A handler whose writer is full for a while: reading must pause, and the
    watchdog must not take the pause for a silent server."""

    def __init__(self, pause_s: float) -> None:
        super().__init__()
        self.pause_s = pause_s
        self.full = True

    def has_room(self) -> bool:
        return not self.full

    async def wait_for_room(self) -> None:
        await asyncio.sleep(self.pause_s)
        self.full = False


def test_back_pressure_pauses_reading_without_a_false_stall():
    async def main() -> tuple[SlowWriter, BybitConnection]:
        sim = BybitSimulator(SimConfig(symbols=("BTCUSDT",), rate=200, seed=2, trades_rate=0))
        await sim.start()
        handler = SlowWriter(pause_s=2.5)
        connection = BybitConnection(
            "linear-0",
            ConnectionConfig(
                sim.url("linear"), "linear", ("orderbook.50.BTCUSDT",), silence_timeout_s=1.0
            ),
            handler,
        )
        await run_for(connection, 4.0)
        await sim.stop()
        return handler, connection

    handler, connection = asyncio.run(main())
    kinds = [e.kind for e in handler.events]
    assert FeedEventKind.BACKPRESSURE in kinds
    assert FeedEventKind.STALL not in kinds
    assert connection.stats.stalls == 0 and connection.stats.connects == 1
    us = [u.update_id for u in handler.updates]
    assert len(us) > 300 and us == list(range(us[0], us[0] + len(us)))  # nothing skipped


class _Transport:
    def __init__(self) -> None:
        self.aborted = 0

    def abort(self) -> None:
        self.aborted += 1


class _Socket:
    """Only what _on_control touches; the ack logic itself is pure."""

    def __init__(self) -> None:
        self.transport = _Transport()


def ack_logic(*topics: str) -> tuple[BybitConnection, Recorder, _Socket]:
    recorder = Recorder()
    connection = BybitConnection("linear-0", ConnectionConfig("ws://x", "linear", topics), recorder)
    return connection, recorder, _Socket()


def pending(connection: BybitConnection, req_id: str, topics: list[str], resync=False) -> None:
    from depthwatch.feed.connection import _PendingRequest

    connection._pending[req_id] = _PendingRequest("subscribe", topics, 0.0, resync)


def test_an_ack_for_a_request_no_longer_pending_is_not_charged_to_another():
    from depthwatch.feed.parse import ControlMessage

    connection, recorder, ws = ack_logic("orderbook.50.BTCUSDT")
    pending(connection, "r2", ["orderbook.50.BTCUSDT"])
    connection._on_control(ControlMessage("subscribe", False, "error:timeout", "r1"), ws)
    assert connection.topics == ["orderbook.50.BTCUSDT"] and "r2" in connection._pending
    # Without a req_id, acks are matched in request order.
    connection._on_control(ControlMessage("subscribe", True, ""), ws)
    assert not connection._pending
    assert [e.kind for e in recorder.events] == [FeedEventKind.SUBSCRIBED]
    assert ws.transport.aborted == 0


def test_a_failed_resync_reconnects_instead_of_dropping_the_topic():
    from depthwatch.feed.parse import ControlMessage

    connection, recorder, ws = ack_logic("orderbook.50.BTCUSDT", "orderbook.50.ETHUSDT")
    pending(connection, "r9", ["orderbook.50.BTCUSDT"], resync=True)
    refusal = "error:already subscribed,topic:orderbook.50.BTCUSDT"
    connection._on_control(ControlMessage("subscribe", False, refusal, "r9"), ws)
    assert ws.transport.aborted == 1
    assert connection.topics == ["orderbook.50.BTCUSDT", "orderbook.50.ETHUSDT"]
    assert not any(e.kind is FeedEventKind.SUBSCRIBE_FAILED for e in recorder.events)


def test_when_every_topic_is_refused_the_connection_closes():
    from depthwatch.feed.parse import ControlMessage

    connection, recorder, ws = ack_logic("orderbook.50.NOPE")
    pending(connection, "r1", ["orderbook.50.NOPE"])
    refusal = "error:handler not found,topic:orderbook.50.NOPE"
    connection._on_control(ControlMessage("subscribe", False, refusal, "r1"), ws)
    assert connection.topics == [] and ws.transport.aborted == 1
    assert [e.kind for e in recorder.events] == [FeedEventKind.SUBSCRIBE_FAILED]
