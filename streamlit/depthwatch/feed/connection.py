"""One WebSocket connection to an exchange's public endpoint.

Owns the socket: connects, subscribes in chunks and checks every ack, pings as
the exchange wants, reconnects with exponential backoff and jitter when the connection drops or
a watchdog sees it silent, and resubscribes after reconnecting. Every frame gets
its local receive timestamp the moment it is read, before parsing. Parsed
records go to a `FeedHandler`; a handler that reports a broken book gets the
topic resynced (unsubscribe, then subscribe once the unsubscribe is acked, so a
fresh snapshot arrives). What differs between exchanges (request and ack
shapes, pings, topic names, parsing) is the venue's `Wire` (feed/exchange.py);
this file speaks to every exchange alike.

Only data (book and trade messages) counts as life for the watchdog: a server
that answers pings and acks but sends no data is as useless as a dead one. Any
request left unacked for `ack_timeout_s` also ends the connection: a fresh one
resubscribes everything, so no topic waits forever for a snapshot.

The socket is picows': it calls `FrameListener.on_ws_frame` synchronously for
each frame as it parses the bytes just read, so a message reaches the handler
without an asyncio queue, future or task wake-up of its own (at 1,000 msg/s that
per-message wake-up was most of the reader's CPU). The price is that nothing in
the frame path may await: requests are sent synchronously, and back-pressure
pauses the transport's reading instead of the reader awaiting the writer.

Why one file of ~670 lines: subscribing, acks, resyncs, the watchdog and
reconnection are one state machine over one socket, each step reading and
changing the same state; split apart, no part could be read alone. What is
apart: the socket's frames (feed/socket.py) and the renewal before an age
limit (feed/handover.py, a mixin over the same fields).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from picows import (
    WSCloseCode,
    WSError,
    WSTransport,
    ws_connect,
)

from depthwatch.clock import now_us
from depthwatch.feed.exchange import Wire
from depthwatch.feed.handover import HANDOVER_TIMEOUT_S, Handover, Renewal
from depthwatch.feed.messages import ControlMessage, MalformedMessage
from depthwatch.feed.registry import SIMULATOR_HEADER, venue_of
from depthwatch.feed.socket import (
    CLOSE_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    OPEN_TIMEOUT_S,
    TEXT,
    FrameListener,
    cap_reads,
    discard,
)
from depthwatch.logs import LogThrottle
from depthwatch.records import (
    BookUpdate,
    FeedEvent,
    FeedEventKind,
    StreamKey,
    Trade,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconnectPolicy:
    """Exponential backoff with jitter: initial * factor**attempt, capped, +-jitter."""

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.25  # fraction of the delay, either way
    healthy_after_s: float = 30.0  # a connection that lived this long resets the backoff

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.max_s, self.initial_s * self.factor**attempt)
        return base * (1.0 + rng.uniform(-self.jitter, self.jitter))


@dataclass(frozen=True)
class ConnectionConfig:
    url: str
    category: str
    topics: tuple[str, ...]
    ping_interval_s: float | None = None  # None: the venue's
    # The watchdog reconnects after this long without data (pongs and acks do not
    # count). A stream quiet for longer is reconnected too: the price of catching
    # a socket that answers pings but sends nothing.
    silence_timeout_s: float = 30.0
    ack_timeout_s: float = 10.0
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    # The exchange cuts a connection this old (None: the venue's, 0: never);
    # a successor takes over `renew_before_s` earlier (at most half of it),
    # each try waiting `handover_timeout_s` (at most a quarter of it).
    max_age_s: float | None = None
    renew_before_s: float = 600.0
    handover_timeout_s: float = HANDOVER_TIMEOUT_S

    @property
    def wire(self) -> Wire:
        return venue_of(self.category).wire(self.category)

    @property
    def args_per_request(self) -> int:
        return self.wire.args_per_request


class FeedHandler(Protocol):
    """What a connection hands its records to (the collector)."""

    def on_book_update(self, update: BookUpdate) -> bool:
        """Returns True when the stream's book broke and needs a resync."""
        ...

    def on_book_pair(self, plain: BookUpdate, sizes: BookUpdate) -> bool:
        """The two books of one `orderbook.rpi` message; True: resync the topic."""
        ...

    def on_malformed_book_message(self, stream: StreamKey, local_us: int, detail: str) -> bool:
        """A frame of this stream could not be parsed. Returns True when its
        book broke and needs a resync."""
        ...

    def on_trades(self, trades: list[Trade]) -> None: ...
    def on_feed_event(self, event: FeedEvent) -> None: ...
    def on_streams_lost(self, streams: list[StreamKey]) -> None: ...
    def has_room(self) -> bool: ...
    async def wait_for_room(self) -> None: ...


@dataclass
class ConnectionStats:
    messages: int = 0
    book_updates: int = 0
    malformed: int = 0
    connects: int = 0
    connect_failures: int = 0
    reconnect_delays_s: list[float] = field(default_factory=list)  # the most recent ones
    resyncs: int = 0
    stalls: int = 0
    probes: int = 0  # a silent connection asked for a snapshot to tell quiet from dead
    failed_topics: list[str] = field(default_factory=list)


@dataclass
class _PendingRequest:
    op: str
    topics: list[str]
    sent_at: float
    # Part of a resync. A subscribe: of a topic that was being served a moment
    # ago (so a refusal is no unknown symbol). An unsubscribe: its ack is what
    # sends the subscribe.
    resync: bool = False


class FeedConnection(Renewal):
    def __init__(self, name: str, config: ConnectionConfig, handler: FeedHandler) -> None:
        self.name = name
        self.config = config
        self.handler = handler
        self.wire = config.wire
        self.parser = self.wire.parser()
        self.topics: list[str] = list(config.topics)  # minus topics the server refused
        self.stats = ConnectionStats()
        self._transport: WSTransport | None = None
        self._listener: FrameListener | None = None
        self._pending: OrderedDict[str, _PendingRequest] = OrderedDict()
        self._req_ids = itertools.count(1)
        self._last_rx = 0.0  # time.monotonic() of the last frame
        self._last_data = 0.0  # time.monotonic() of the last book or trade message
        self._probed_at: float | None = None  # a silence probe since the last data
        # Topics with a resync (unsubscribe, then subscribe) under way: a second
        # one would meet "already subscribed" and cost the whole connection.
        self._resyncing: set[str] = set()
        self._cut_reason = ""  # why we ended the current socket ourselves, if we did
        self.simulator_detected = False  # the server said it is depthwatch's simulator
        self._paused = False  # reading paused by writer back-pressure
        self._resume: asyncio.Task[None] | None = None  # waits for the writer, then reads on
        self._rng = random.Random()
        self._malformed_log = LogThrottle()
        self._resync_log = LogThrottle()
        # Before the exchange's connection limit: the successor taking over,
        # told what this socket delivers (None: none under way).
        self._handover: Handover | None = None
        self._successor: FeedConnection | None = None
        self._successor_task: asyncio.Task[None] | None = None
        self.retired = False  # handed over: this socket is gone, the successor serves

    # ---- lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, read, reconnect; until `stop` is set or no topic is left."""
        attempt = 0
        while not stop.is_set() and self.topics:
            started = time.monotonic()
            await self._run_once(stop)
            if self.retired and self._successor_task is not None:
                await self._successor_task  # it runs on until `stop`
                return
            if stop.is_set() or not self.topics:
                break
            if time.monotonic() - started > self.config.reconnect.healthy_after_s:
                attempt = 0
            delay = self.config.reconnect.delay(attempt, self._rng)
            attempt += 1
            self.stats.reconnect_delays_s = [*self.stats.reconnect_delays_s[-19:], delay]
            log.info("%s: reconnecting in %.2f s", self.name, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        if not self.topics:
            log.error("%s: every topic was refused; connection closed", self.name)

    async def _run_once(self, stop: asyncio.Event) -> None:
        connected = False
        opened_at = time.monotonic()
        book_updates_before = self.stats.book_updates
        self._cut_reason = ""
        ended = ""  # how the server ended it, when it did
        try:
            transport, listener = await self._open()
            connected = True
            self._transport, self._listener = transport, listener
            opened_at = self._last_rx = self._last_data = time.monotonic()
            self._probed_at = None
            self._resyncing.clear()
            self.stats.connects += 1
            if transport.response.headers.get(SIMULATOR_HEADER):
                self.simulator_detected = True
            self._event(FeedEventKind.CONNECT, detail=self.config.url)
            log.info("%s: connected to %s", self.name, self.config.url)
            self._subscribe(self.topics)
            helpers = [
                asyncio.create_task(self._watchdog()),
                asyncio.create_task(self._close_on_stop(transport, stop)),
            ]
            if self._ping_interval_s:
                helpers.append(asyncio.create_task(self._ping_loop(transport)))
            if self._max_age_s:
                helpers.append(asyncio.create_task(self._renew(stop, opened_at)))
            try:
                ended = await self._read(transport, listener)
            finally:
                for task in helpers:
                    task.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
        except (OSError, TimeoutError, WSError) as exc:
            if not connected:
                self.stats.connect_failures += 1
            ended = str(exc) or type(exc).__name__
            if not stop.is_set():
                log.warning("%s: connection failed: %s", self.name, ended)
        finally:
            self._drop_socket()
            self._pending.clear()
            self._abandon_successor()
            if connected and not self.retired:
                self.handler.on_streams_lost(self._book_streams())
                # Why, and what this socket delivered: enough to tell a server
                # that drops every connection early from an occasional blip.
                why = "stopping" if stop.is_set() else self._cut_reason or ended
                received = self.stats.book_updates - book_updates_before
                lived = time.monotonic() - opened_at
                detail = f"{why} ({received} book messages in {lived:.1f} s)"
                self._event(FeedEventKind.DISCONNECT, detail=detail[:500])

    def _new_successor(self) -> FeedConnection:
        return FeedConnection(self.name, self.config, self.handler)

    def _book_streams(self) -> list[StreamKey]:
        streams = []
        for topic in self.topics:
            with contextlib.suppress(MalformedMessage):  # a trade topic
                streams.append(self.parser.stream_of(topic))
        return streams

    async def _open(self) -> tuple[WSTransport, FrameListener]:
        """Connect and upgrade, all within OPEN_TIMEOUT_S. TLS for wss:// with
        the default context, as websockets did (SSL_CERT_FILE is honoured)."""
        transport, listener = await asyncio.wait_for(
            ws_connect(
                FrameListener,
                self.config.url,
                websocket_handshake_timeout=OPEN_TIMEOUT_S,
                # Pings are the wire's (Bybit's at the application level); a
                # server's PING picows answers itself.
                enable_auto_ping=False,
                max_frame_size=MAX_MESSAGE_BYTES,
                logger_name=log.getChild("picows"),  # its lines under ours
            ),
            OPEN_TIMEOUT_S,
        )
        # picows returns without a listener when the server hung up mid-handshake.
        if not isinstance(listener, FrameListener) or transport.is_disconnected:
            transport.disconnect(graceful=False)
            raise ConnectionResetError("the server closed the connection during the handshake")
        cap_reads(transport)
        return transport, listener

    def _drop_socket(self) -> None:
        """Forget the socket, closing it if it is still open (an exception or a
        cancellation ended its reading), and any wait for the writer."""
        if self._transport is not None and not self._transport.is_disconnected:
            self._transport.disconnect(graceful=False)
        if self._resume is not None and not self._resume.done():
            self._resume.cancel()
        self._transport = self._listener = self._resume = None
        self._paused = False

    async def _close_on_stop(self, transport: WSTransport, stop: asyncio.Event) -> None:
        """The close handshake: our close, then up to CLOSE_TIMEOUT_S for the
        server's, while frames still in flight are read and handled."""
        await stop.wait()
        transport.send_close(WSCloseCode.OK)
        with contextlib.suppress(TimeoutError, WSError):
            await asyncio.wait_for(transport.wait_disconnected(), CLOSE_TIMEOUT_S)
        transport.disconnect()

    # ---- reading

    async def _read(self, transport: WSTransport, listener: FrameListener) -> str:
        """Hand frames to the handler until the connection ends; returns how
        it ended. Frames are handled in picows' callback (`_on_message`); this
        only waits."""
        self._deliver_held()  # frames that came with the handshake, if any
        try:
            await transport.wait_disconnected()
        except WSError as exc:  # picows ended it: a protocol error, a frame too big
            log.warning("%s: connection closed: %s", self.name, exc)
            ended = str(exc) or type(exc).__name__
        else:
            ended = self._how_it_ended(transport)
        # Frames read before the end still reach the handler, once it has room
        # (a resumed delivery can fill the writer again: a new wait).
        while (resume := self._resume) is not None:
            await resume
        return ended

    def _how_it_ended(self, transport: WSTransport) -> str:
        handshake = transport.close_handshake
        received = handshake.recv if handshake is not None else None
        if received is None:
            if not self._cut_reason:
                log.warning("%s: connection lost: no close frame received", self.name)
            return "connection lost: no close frame received"
        code = received.code.value  # 3000-4999 too: picows makes pseudo-members of them
        reason = received.reason or ""
        log.warning("%s: closed by the server: %s %s", self.name, code, reason)
        return f"closed by the server: {code} {reason}".strip()

    def _on_message(self, raw: bytes, local_us: int) -> None:
        """One message, synchronously in picows' read callback: parse it and
        hand it on. Nothing here may await (see the module docstring)."""
        handler = self.handler
        stats = self.stats
        self._last_rx = time.monotonic()
        stats.messages += 1
        try:
            parsed = self.parser.parse(raw, local_us)
        except MalformedMessage as exc:
            self._malformed(exc)
            # A known stream's message we could not use: its book has
            # missed an update.
            if exc.stream is not None and handler.on_malformed_book_message(
                exc.stream, local_us, str(exc)
            ):
                self._resync(exc.stream)
            return
        try:
            if parsed is None:
                pass  # an event of the exchange's that is not recorded
            elif isinstance(parsed, BookUpdate):
                stats.book_updates += 1
                self._last_data = self._last_rx
                if handler.on_book_update(parsed):
                    self._resync(parsed.stream)
                if self._handover is not None:
                    self._handover.old_delivered(parsed)
            elif isinstance(parsed, tuple):  # two books in one message (Bybit's RPI)
                stats.book_updates += 1
                self._last_data = self._last_rx
                if handler.on_book_pair(*parsed):
                    self._resync(parsed[0].stream)
            elif isinstance(parsed, list):
                self._last_data = self._last_rx
                handler.on_trades(parsed)
                if self._handover is not None:
                    self._handover.old_trades(parsed)
            else:
                resubscribe = self._on_control(parsed)
                if resubscribe:
                    self._send_request("subscribe", resubscribe, resync=True)
        except Exception as exc:  # a bug must cost one frame, not the collector
            log.exception("%s: error handling a frame", self.name)
            self._malformed(MalformedMessage(f"could not handle frame: {exc}"))
        # Checking the writer's queue every 64 messages is plenty for a
        # bound of hundreds of thousands of rows, and cheaper than every one.
        if not stats.messages & 63 and not handler.has_room():
            self._pause_for_writer()

    def _deliver_held(self) -> None:
        """Hand over the frames held (early or during a pause), in order, then
        let new ones through directly. Stops early if they fill the writer
        again or end the socket."""
        listener = self._listener
        if listener is None:
            return
        held = listener.held
        while held and not self._paused and listener.sink is not discard:
            self._on_message(*held.popleft())
        if not self._paused and listener.sink is not discard:
            listener.sink = self._on_message

    def _pause_for_writer(self) -> None:
        """Back-pressure: stop reading the socket (the kernel's buffers fill,
        then TCP's window closes on the server) until the writer has room."""
        if self._paused or self._transport is None or self._listener is None:
            return
        self._event(FeedEventKind.BACKPRESSURE, detail="writer queue full; reading paused")
        self._paused = True
        if self._listener.sink is not discard:
            self._listener.sink = self._listener.hold
        self._transport.underlying_transport.pause_reading()
        self._resume = asyncio.get_running_loop().create_task(self._wait_for_writer())

    async def _wait_for_writer(self) -> None:
        """The watchdog must not mistake this pause for a silent server."""
        try:
            await self.handler.wait_for_room()
        except Exception as exc:
            # Raised again where _read awaits this; meanwhile read nothing more.
            self._cut(f"waiting for the writer failed: {exc}")
            raise
        finally:
            self._paused = False
            self._last_rx = self._last_data = time.monotonic()
        transport = self._transport
        self._resume = None
        self._deliver_held()
        if not self._paused and transport is not None:
            transport.underlying_transport.resume_reading()  # a no-op once closed

    def _malformed(self, exc: MalformedMessage) -> None:
        self.stats.malformed += 1
        # The first few in full, then one line a minute with the count: a flood
        # must not drown the log (nor the feed_events table).
        if self._malformed_log.log(
            log,
            logging.WARNING,
            "%s: malformed message #%d: %s",
            self.name,
            self.stats.malformed,
            exc,
        ):
            self._event(FeedEventKind.MALFORMED, detail=str(exc)[:500])

    # ---- subscriptions

    def _subscribe(self, topics: list[str]) -> None:
        step = self.config.args_per_request
        for i in range(0, len(topics), step):
            self._send_request("subscribe", topics[i : i + step])

    def _send_request(self, op: str, topics: list[str], resync: bool = False) -> None:
        if self._transport is None:
            return
        req_id = self.wire.request_id(self.name, next(self._req_ids))
        self._pending[req_id] = _PendingRequest(op, topics, time.monotonic(), resync)
        self._send(self.wire.request(op, topics, req_id))

    def _send(self, frame: bytes) -> None:
        """picows sends synchronously: the frame goes to the transport's buffer
        (a closed socket drops it, as the reconnect will resend what matters)."""
        if self._transport is not None:
            self._transport.send(TEXT, frame)

    def _on_control(self, msg: ControlMessage) -> list[str]:
        """Settle the request an ack answers. Returns the topics to subscribe
        now: those of a resync whose unsubscribe was just acked."""
        if msg.is_pong:
            return []
        # Not every ack echoes req_id; those come back in request order. An ack
        # naming a request we no longer wait for (expired, before a reconnect)
        # must not be charged to another one.
        request = self._pending.pop(msg.req_id, None) if msg.req_id else self._oldest_pending()
        if request is None:
            log.warning("%s: control message matching no request: %s", self.name, msg)
            return []
        failed = msg.fail_topics
        if not msg.success and not failed:
            failed = list(request.topics)  # the ack names none: the whole request failed
        if request.op == "unsubscribe":
            if failed:
                # Not subscribed (any more) is fine for a resync: the subscribe
                # that follows brings the snapshot either way.
                log.warning("%s: unsubscribe %s refused: %s", self.name, failed, msg.ret_msg)
            return list(request.topics) if request.resync else []
        if request.resync:
            self._resyncing.difference_update(request.topics)
        if failed and request.resync:
            # The topic was served a moment ago, so this is not an unknown symbol:
            # start over on a fresh connection, which resubscribes everything.
            log.warning(
                "%s: resync of %s failed (%s); reconnecting", self.name, failed, msg.ret_msg
            )
            self._cut(f"resync of {', '.join(failed)} refused: {msg.ret_msg}")
            return []
        for topic in failed:
            self._topic_refused(topic, msg.ret_msg or "refused")
        for topic in request.topics:
            if topic not in failed:
                self._event(FeedEventKind.SUBSCRIBED, topic=topic)
        if not self.topics:
            log.error("%s: every topic was refused; closing the connection", self.name)
            self._cut("every topic was refused")
        return []

    def _oldest_pending(self) -> _PendingRequest | None:
        if not self._pending:
            return None
        _, request = self._pending.popitem(last=False)
        return request

    def _topic_refused(self, topic: str, reason: str) -> None:
        log.error("%s: subscription to %s failed: %s", self.name, topic, reason)
        self.stats.failed_topics.append(topic)
        self._event(FeedEventKind.SUBSCRIBE_FAILED, topic=topic, detail=f"{topic}: {reason}")
        if topic in self.topics:
            self.topics.remove(topic)  # do not retry it on every reconnect

    async def request_resync(self, stream: StreamKey) -> bool:
        """Resync a stream this connection serves (a fresh snapshot), e.g. when
        its record lost rows; False when it is not connected or not served here."""
        if self.retired and self._successor is not None:
            return await self._successor.request_resync(stream)
        topic = self.wire.book_topic(stream)
        if self._transport is None or topic not in self.topics:
            return False
        self._resync(stream)
        return True

    def _resync(self, stream: StreamKey) -> None:
        """Unsubscribe; the ack sends the subscribe (see _on_control). Sent back
        to back, a subscribe could meet a server that has not (or never) dropped
        the topic, and get "already subscribed" or no snapshot at all. An
        unsubscribe never acked ends the connection (_ack_overdue). A topic
        whose subscription sends no snapshot cannot be resynced so: its book
        waits for the collector's REST snapshot."""
        topic = self.wire.book_topic(stream)
        if not self.wire.snapshot_on_subscribe(topic):
            return
        if topic in self._resyncing:
            return  # the snapshot asked for is on its way
        self._resyncing.add(topic)
        self.stats.resyncs += 1
        self._event(FeedEventKind.RESYNC, topic=topic, detail="unsubscribe + subscribe")
        self._resync_log.log(log, logging.WARNING, "%s: resyncing %s", self.name, topic)
        self._send_request("unsubscribe", [topic], resync=True)

    # ---- liveness

    @property
    def _ping_interval_s(self) -> float:
        interval = self.config.ping_interval_s
        return self.wire.ping_interval_s if interval is None else interval

    async def _ping_loop(self, transport: WSTransport) -> None:
        ping = self.wire.ping(self.name)
        while True:
            await asyncio.sleep(self._ping_interval_s)
            transport.send(TEXT, ping)

    async def _watchdog(self) -> None:
        timeout = self.config.silence_timeout_s
        every = min(1.0, timeout / 4)
        while True:
            asleep = time.monotonic()
            await asyncio.sleep(every)
            if self._paused:
                continue  # back-pressure: we stopped reading, the server did not stop
            now = time.monotonic()
            if now - asleep > 2 * every:
                # We were not running (a busy machine, a blocked loop): what the
                # server sent meanwhile may wait unread, and acks with it. Judge
                # next round, once the reader has had its turn; a silence probe
                # now would cost the messages sent between its unsubscribe and
                # its subscribe.
                continue
            silent = now - self._last_data
            if self._probed_at is not None and self._last_data > self._probed_at:
                self._probed_at = None  # the probe (or the market) answered
            if silent > timeout and self._probed_at is None and self._probe():
                self._probed_at = now
                continue
            if silent > timeout and (self._probed_at is None or now - self._probed_at > timeout):
                self.stats.stalls += 1
                since_frame = now - self._last_rx
                detail = f"no data for {silent:.1f} s"
                if since_frame < silent:  # pongs or acks kept coming: a mute socket
                    detail += f", though the server still answers ({since_frame:.1f} s ago)"
                if self._probed_at is not None:
                    detail += "; a snapshot asked for did not come"
                log.warning("%s: %s; reconnecting", self.name, detail)
                self._event(FeedEventKind.STALL, detail=detail)
                self._cut(detail)
                return
            overdue = self._ack_overdue()
            if overdue:
                self._cut(overdue)
                return

    def _probe(self) -> bool:
        """A quiet market sends nothing either (Bybit repeats only depth-1
        books, every 3 s): before calling a silent socket dead, resubscribe one
        book topic. A live server answers with a fresh snapshot (stored like
        any snapshot: the book stays valid); a dead or muted one does not, and
        the watchdog reconnects a timeout later. False: nothing to probe with."""
        topic = next((t for t in self.topics if self.wire.snapshot_on_subscribe(t)), None)
        if topic is None or self._pending:
            return False
        self._resyncing.add(topic)
        self.stats.probes += 1
        log.debug("%s: no data for a while; probing with a fresh %s snapshot", self.name, topic)
        self._send_request("unsubscribe", [topic], resync=True)
        return True

    def _ack_overdue(self) -> str:
        """A subscribe nobody answered leaves its books without a snapshot, an
        unsubscribe (of a resync) never sends its subscribe: say so, and let a
        fresh connection subscribe again. Returns the reason, or ""."""
        timeout = self.config.ack_timeout_s
        deadline = time.monotonic() - timeout
        for request in self._pending.values():
            if request.sent_at < deadline:
                what = f"{request.op}{' (resync)' if request.resync else ''}"
                reason = f"no ack for {what} within {timeout:g} s"
                log.error("%s: %s of %s; reconnecting", self.name, reason, request.topics)
                for topic in request.topics:
                    self._event(
                        FeedEventKind.SUBSCRIBE_FAILED, topic=topic, detail=f"{topic}: {reason}"
                    )
                return reason
        return ""

    def _cut(self, reason: str) -> None:
        """End the socket now (no close handshake with a server we no longer
        trust), and read nothing more from it, not even frames already in the
        buffer picows is parsing; the reason goes into the disconnect event."""
        self._cut_reason = reason
        if self._listener is not None:
            self._listener.sink = discard
        if self._transport is not None:
            self._transport.disconnect(graceful=False)

    def _event(self, kind: FeedEventKind, topic: str | None = None, detail: str = "") -> None:
        symbol: str | None = None
        depth: int | None = None
        if topic is not None:
            try:
                symbol, depth = self.wire.topic_fields(topic)
            except ValueError:  # a topic name the server made up: keep it in the detail
                symbol = topic[:64]
        self.handler.on_feed_event(
            FeedEvent(kind, now_us(), self.config.category, symbol, depth, detail, self.name)
        )
