"""One feed connection against the real simulator: pings, acks, backoff."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess

from depthwatch.feed.connection import ConnectionConfig, FeedConnection, ReconnectPolicy
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


async def run_for(connection: FeedConnection, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(connection.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 10)


def test_pings_on_schedule_and_every_ack_is_checked():
    async def main() -> tuple[BybitSimulator, Recorder, FeedConnection]:
        sim = BybitSimulator(SimConfig(symbols=("BTCUSDT",), rate=50, seed=1, trades_rate=0))
        await sim.start()
        recorder = Recorder()
        topics = ("orderbook.50.BTCUSDT", "orderbook.50.NOPEUSDT", "orderbook.7.BTCUSDT")
        connection = FeedConnection(
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
    connection = FeedConnection(
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
    async def main() -> tuple[SlowWriter, FeedConnection]:
        sim = BybitSimulator(SimConfig(symbols=("BTCUSDT",), rate=200, seed=2, trades_rate=0))
        await sim.start()
        handler = SlowWriter(pause_s=2.5)
        connection = FeedConnection(
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


class BlockedWriter(Recorder):
    """A writer full for `pause_s` from the start, noting how much a server
    has sent during the pause (read through `sent`)."""

    def __init__(self, pause_s: float, sent: list[int]) -> None:
        super().__init__()
        self.pause_s, self.sent = pause_s, sent
        self.full = True
        self.sent_during: list[int] = []  # the server's count, 1 s and pause_s - 0.2 s in

    def has_room(self) -> bool:
        return not self.full

    async def wait_for_room(self) -> None:
        await asyncio.sleep(1.0)
        self.sent_during.append(self.sent[0])
        await asyncio.sleep(self.pause_s - 1.2)
        self.sent_during.append(self.sent[0])
        await asyncio.sleep(0.2)
        self.full = False


async def read_a_blast(
    handler: Recorder,
    sent: list[int],
    pad_bytes: int,
    seconds: float,
    tls: ssl.SSLContext | None = None,
) -> FeedConnection:
    """A server that sends pongs padded to `pad_bytes` as fast as it can for
    `seconds` (counting them in `sent`), then closes; a connection with no
    topics (it only reads) handing them to `handler` until the close. A
    handler with a `connection` field gets the connection before it starts.
    With `tls` the server speaks wss:// (the client trusts it through
    SSL_CERT_FILE)."""
    from websockets.asyncio.server import ServerConnection, serve

    pad = "x" * pad_bytes

    async def blast(ws: ServerConnection) -> None:
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            await ws.send(f'{{"op":"pong","args":["{sent[0]}","{pad}"]}}')
            sent[0] += 1
        await ws.close()

    async with serve(blast, "127.0.0.1", 0, ssl=tls) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}/v5/public/linear"
        connection = FeedConnection("linear-0", ConnectionConfig(url, "linear", ()), handler)
        if hasattr(handler, "connection"):
            handler.connection = connection
        # No topics: run() would not start; _run_once reads until the close.
        await asyncio.wait_for(connection._run_once(asyncio.Event()), 15)
    return connection


def test_back_pressure_stops_reading_the_socket_so_the_server_is_held_back():
    """While the writer is full the socket is not read at all (picows' reading
    is paused, not just its frames held): the kernel's buffers fill and the
    server's sends block. Afterwards every message sent arrives, in order."""
    sent = [0]
    handler = BlockedWriter(3.0, sent)
    connection = asyncio.run(read_a_blast(handler, sent, 65_000, 4.0))
    assert FeedEventKind.BACKPRESSURE in [e.kind for e in handler.events]
    early, late = handler.sent_during
    # Some megabytes went into the kernel's buffers; then the server was stuck.
    assert early > 64 and late == early, handler.sent_during
    assert connection.stats.messages == sent[0]  # nothing lost to the pause


class OftenFull(Recorder):
    """A writer that fills up every `every` messages for 0.1 s, noting the
    most frames the paused socket held at once."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every
        self.connection: FeedConnection | None = None
        self.pause_at = every
        self.most_held = 0
        self.pauses = 0

    def has_room(self) -> bool:
        assert self.connection is not None
        return self.connection.stats.messages < self.pause_at

    async def wait_for_room(self) -> None:
        assert self.connection is not None and self.connection._listener is not None
        self.pauses += 1
        self.most_held = max(self.most_held, len(self.connection._listener.held))
        await asyncio.sleep(0.1)
        self.pause_at = self.connection.stats.messages + self.every


def test_a_paused_socket_holds_at_most_one_bounded_read_of_frames():
    """picows doubles its read buffer whenever a read fills it, so a reader
    kept busy would come to read megabytes at once, thousands of frames
    stamped as received and then held through every pause (seconds of
    latency in the benchmark). A read takes at most MAX_READ_BYTES; every
    message still arrives, in order."""
    from depthwatch.feed.socket import MAX_READ_BYTES

    sent = [0]
    handler = OftenFull(every=3_000)
    connection = asyncio.run(read_a_blast(handler, sent, 1_000, 3.0))
    assert handler.pauses >= 3, handler.pauses
    frame_bytes = 1_000 + 30
    # Something was held (the test pauses mid-read), never more than one read's worth.
    assert 0 < handler.most_held <= MAX_READ_BYTES // frame_bytes + 1, handler.most_held
    assert connection.stats.messages == sent[0]  # nothing lost to the pauses


def test_reads_over_tls_are_bounded_too_and_lose_nothing(tmp_path, monkeypatch):
    """Production reads wss://: the read cap sits on the TLS transport too
    (aiofastnet's, which picows uses where it is installed). A local TLS server
    with a self-signed certificate the client trusts: pauses hold at most a
    read's worth of frames, and every message arrives."""
    from depthwatch.feed.socket import MAX_READ_BYTES

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    sent = [0]
    handler = OftenFull(every=3_000)
    connection = asyncio.run(read_a_blast(handler, sent, 1_000, 3.0, tls))
    assert handler.pauses >= 3, handler.pauses
    assert 0 < handler.most_held <= MAX_READ_BYTES // 1_030 + 1, handler.most_held
    assert connection.stats.messages == sent[0]


class _Transport:
    """Only what _on_control touches through _cut: the ack logic itself is pure."""

    def __init__(self) -> None:
        self.aborted = 0  # closed without a close handshake
        self.closed = 0

    def disconnect(self, graceful: bool = True) -> None:
        if graceful:
            self.closed += 1
        else:
            self.aborted += 1


def ack_logic(*topics: str) -> tuple[FeedConnection, Recorder, _Transport]:
    recorder = Recorder()
    connection = FeedConnection("linear-0", ConnectionConfig("ws://x", "linear", topics), recorder)
    transport = _Transport()
    connection._transport = transport
    return connection, recorder, transport


def pending(connection: FeedConnection, req_id: str, topics: list[str], resync=False) -> None:
    from depthwatch.feed.connection import _PendingRequest

    connection._pending[req_id] = _PendingRequest("subscribe", topics, 0.0, resync)


def test_an_ack_for_a_request_no_longer_pending_is_not_charged_to_another():
    from depthwatch.feed.messages import ControlMessage

    connection, recorder, transport = ack_logic("orderbook.50.BTCUSDT")
    pending(connection, "r2", ["orderbook.50.BTCUSDT"])
    connection._on_control(ControlMessage("subscribe", False, "error:timeout", "r1"))
    assert connection.topics == ["orderbook.50.BTCUSDT"] and "r2" in connection._pending
    # Without a req_id, acks are matched in request order.
    connection._on_control(ControlMessage("subscribe", True, ""))
    assert not connection._pending
    assert [e.kind for e in recorder.events] == [FeedEventKind.SUBSCRIBED]
    assert transport.aborted == 0


def test_a_failed_resync_reconnects_instead_of_dropping_the_topic():
    from depthwatch.feed.messages import ControlMessage

    connection, recorder, transport = ack_logic("orderbook.50.BTCUSDT", "orderbook.50.ETHUSDT")
    pending(connection, "r9", ["orderbook.50.BTCUSDT"], resync=True)
    refusal = "error:already subscribed,topic:orderbook.50.BTCUSDT"
    connection._on_control(ControlMessage("subscribe", False, refusal, "r9"))
    assert transport.aborted == 1
    assert connection.topics == ["orderbook.50.BTCUSDT", "orderbook.50.ETHUSDT"]
    assert not any(e.kind is FeedEventKind.SUBSCRIBE_FAILED for e in recorder.events)


def test_when_every_topic_is_refused_the_connection_closes():
    from depthwatch.feed.messages import ControlMessage

    connection, recorder, transport = ack_logic("orderbook.50.NOPE")
    pending(connection, "r1", ["orderbook.50.NOPE"])
    refusal = "error:handler not found,topic:orderbook.50.NOPE"
    connection._on_control(ControlMessage("subscribe", False, refusal, "r1"))
    assert connection.topics == [] and transport.aborted == 1
    assert [e.kind for e in recorder.events] == [FeedEventKind.SUBSCRIBE_FAILED]
