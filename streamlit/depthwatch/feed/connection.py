"""One WebSocket connection to a Bybit v5 public endpoint.

Owns the socket: connects, subscribes in chunks and checks every ack, pings every
20 s, reconnects with exponential backoff and jitter when the connection drops or
a watchdog sees it silent, and resubscribes after reconnecting. Every frame gets
its local receive timestamp the moment it is read, before parsing. Parsed
records go to a `FeedHandler`; a handler that reports a broken book gets the
topic resynced (unsubscribe, then subscribe once the unsubscribe is acked, so a
fresh snapshot arrives).

Only data (book and trade messages) counts as life for the watchdog: a server
that answers pings and acks but sends no data is as useless as a dead one. Any
request left unacked for `ack_timeout_s` also ends the connection: a fresh one
resubscribes everything, so no topic waits forever for a snapshot.
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

import orjson
import websockets
from websockets.asyncio.client import ClientConnection, connect

from depthwatch.feed.parse import ControlMessage, FeedParser, MalformedMessage, topics_named_in
from depthwatch.feed.topics import (
    DEFAULT_ARGS_PER_REQUEST,
    MAX_ARGS_PER_REQUEST,
    PING_INTERVAL_S,
    SIMULATOR_HEADER,
    split_topic,
)
from depthwatch.logs import LogThrottle
from depthwatch.records import BookUpdate, FeedEvent, FeedEventKind, StreamKey, Trade

log = logging.getLogger(__name__)


def now_us() -> int:
    return time.time_ns() // 1000


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
    ping_interval_s: float = PING_INTERVAL_S
    # The watchdog reconnects after this long without data (pongs and acks do not
    # count). A stream quiet for longer is reconnected too: the price of catching
    # a socket that answers pings but sends nothing.
    silence_timeout_s: float = 30.0
    ack_timeout_s: float = 10.0
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)

    @property
    def args_per_request(self) -> int:
        return MAX_ARGS_PER_REQUEST.get(self.category, DEFAULT_ARGS_PER_REQUEST)


class FeedHandler(Protocol):
    """What a connection hands its records to (the collector)."""

    def on_book_update(self, update: BookUpdate) -> bool:
        """Returns True when the stream's book broke and needs a resync."""
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


class BybitConnection:
    def __init__(self, name: str, config: ConnectionConfig, handler: FeedHandler) -> None:
        self.name = name
        self.config = config
        self.handler = handler
        self.parser = FeedParser(config.category)
        self.topics: list[str] = list(config.topics)  # minus topics Bybit refused
        self.stats = ConnectionStats()
        self._ws: ClientConnection | None = None
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
        self._rng = random.Random()
        self._malformed_log = LogThrottle()
        self._resync_log = LogThrottle()

    # ---- lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, read, reconnect; until `stop` is set or no topic is left."""
        attempt = 0
        while not stop.is_set() and self.topics:
            started = time.monotonic()
            await self._run_once(stop)
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
            async with connect(
                self.config.url,
                ping_interval=None,  # Bybit wants application-level pings; we send them
                max_size=2**24,
                max_queue=4096,
                compression=None,
                open_timeout=10,
                close_timeout=2,
            ) as ws:
                connected = True
                self._ws = ws
                opened_at = self._last_rx = self._last_data = time.monotonic()
                self._probed_at = None
                self._resyncing.clear()
                self.stats.connects += 1
                if ws.response is not None and ws.response.headers.get(SIMULATOR_HEADER):
                    self.simulator_detected = True
                self._event(FeedEventKind.CONNECT, detail=self.config.url)
                log.info("%s: connected to %s", self.name, self.config.url)
                await self._subscribe(self.topics)
                helpers = [
                    asyncio.create_task(self._ping_loop(ws)),
                    asyncio.create_task(self._watchdog(ws)),
                    asyncio.create_task(self._close_on_stop(ws, stop)),
                ]
                try:
                    ended = await self._read(ws)
                finally:
                    for task in helpers:
                        task.cancel()
                    await asyncio.gather(*helpers, return_exceptions=True)
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            if not connected:
                self.stats.connect_failures += 1
            ended = str(exc) or type(exc).__name__
            if not stop.is_set():
                log.warning("%s: connection failed: %s", self.name, ended)
        finally:
            self._ws = None
            self._pending.clear()
            if connected:
                self.handler.on_streams_lost(
                    [self.parser.stream_of(t) for t in self.topics if t.startswith("orderbook.")]
                )
                # Why, and what this socket delivered: enough to tell a server
                # that drops every connection early from an occasional blip.
                why = "stopping" if stop.is_set() else self._cut_reason or ended
                received = self.stats.book_updates - book_updates_before
                lived = time.monotonic() - opened_at
                detail = f"{why} ({received} book messages in {lived:.1f} s)"
                self._event(FeedEventKind.DISCONNECT, detail=detail[:500])

    async def _close_on_stop(self, ws: ClientConnection, stop: asyncio.Event) -> None:
        await stop.wait()
        await ws.close()

    # ---- reading

    async def _read(self, ws: ClientConnection) -> str:
        """Read until the connection ends; returns how it ended."""
        handler = self.handler
        parse = self.parser.parse
        stats = self.stats
        monotonic = time.monotonic
        try:
            async for raw in ws:
                local_us = time.time_ns() // 1000  # before anything else
                self._last_rx = monotonic()
                stats.messages += 1
                try:
                    parsed = parse(raw, local_us)
                except MalformedMessage as exc:
                    self._malformed(exc)
                    # A known stream's message we could not use: its book has
                    # missed an update.
                    if exc.stream is not None and handler.on_malformed_book_message(
                        exc.stream, local_us, str(exc)
                    ):
                        await self._resync(exc.stream)
                    continue
                try:
                    if isinstance(parsed, BookUpdate):
                        stats.book_updates += 1
                        self._last_data = self._last_rx
                        if handler.on_book_update(parsed):
                            await self._resync(parsed.stream)
                    elif isinstance(parsed, list):
                        self._last_data = self._last_rx
                        handler.on_trades(parsed)
                    else:
                        resubscribe = self._on_control(parsed, ws)
                        if resubscribe:
                            await self._send_request("subscribe", resubscribe, resync=True)
                except websockets.exceptions.ConnectionClosed:
                    raise
                except Exception as exc:  # a bug must cost one frame, not the collector
                    log.exception("%s: error handling a frame", self.name)
                    self._malformed(MalformedMessage(f"could not handle frame: {exc}"))
                # Checking the writer's queue every 64 messages is plenty for a
                # bound of hundreds of thousands of rows, and cheaper than every one.
                if not stats.messages & 63 and not handler.has_room():
                    await self._wait_for_writer()
        except websockets.exceptions.ConnectionClosed as exc:
            log.warning("%s: connection closed: %s", self.name, exc)
            return str(exc)
        # A normal close (1000, 1001) ends the iteration without an exception.
        log.warning("%s: closed by the server: %s %s", self.name, ws.close_code, ws.close_reason)
        return f"closed by the server: {ws.close_code} {ws.close_reason}".strip()

    async def _wait_for_writer(self) -> None:
        """Back-pressure: stop reading until the writer has room. The watchdog
        must not mistake this pause for a silent server."""
        self._event(FeedEventKind.BACKPRESSURE, detail="writer queue full; reading paused")
        self._paused = True
        try:
            await self.handler.wait_for_room()
        finally:
            self._paused = False
            self._last_rx = self._last_data = time.monotonic()

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

    async def _subscribe(self, topics: list[str]) -> None:
        step = self.config.args_per_request
        for i in range(0, len(topics), step):
            await self._send_request("subscribe", topics[i : i + step])

    async def _send_request(self, op: str, topics: list[str], resync: bool = False) -> None:
        if self._ws is None:
            return
        req_id = f"{self.name}-{next(self._req_ids)}"
        self._pending[req_id] = _PendingRequest(op, topics, time.monotonic(), resync)
        await self._ws.send(orjson.dumps({"req_id": req_id, "op": op, "args": topics}).decode())

    def _on_control(self, msg: ControlMessage, ws: ClientConnection) -> list[str]:
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
        failed = msg.fail_topics or ([] if msg.success else topics_named_in(msg.ret_msg))
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
            self._cut(ws, f"resync of {', '.join(failed)} refused: {msg.ret_msg}")
            return []
        for topic in failed:
            self._topic_refused(topic, msg.ret_msg or "refused")
        for topic in request.topics:
            if topic not in failed:
                self._event(FeedEventKind.SUBSCRIBED, topic=topic)
        if not self.topics:
            log.error("%s: every topic was refused; closing the connection", self.name)
            self._cut(ws, "every topic was refused")
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
        topic = f"orderbook.{stream.depth}.{stream.symbol}"
        if self._ws is None or topic not in self.topics:
            return False
        await self._resync(stream)
        return True

    async def _resync(self, stream: StreamKey) -> None:
        """Unsubscribe; the ack sends the subscribe (see _on_control). Sent back
        to back, a subscribe could meet a server that has not (or never) dropped
        the topic, and get "already subscribed" or no snapshot at all. An
        unsubscribe never acked ends the connection (_ack_overdue)."""
        topic = f"orderbook.{stream.depth}.{stream.symbol}"
        if topic in self._resyncing:
            return  # the snapshot asked for is on its way
        self._resyncing.add(topic)
        self.stats.resyncs += 1
        self._event(FeedEventKind.RESYNC, topic=topic, detail="unsubscribe + subscribe")
        self._resync_log.log(log, logging.WARNING, "%s: resyncing %s", self.name, topic)
        await self._send_request("unsubscribe", [topic], resync=True)

    # ---- liveness

    async def _ping_loop(self, ws: ClientConnection) -> None:
        while True:
            await asyncio.sleep(self.config.ping_interval_s)
            await ws.send(orjson.dumps({"req_id": f"ping-{self.name}", "op": "ping"}).decode())

    async def _watchdog(self, ws: ClientConnection) -> None:
        timeout = self.config.silence_timeout_s
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            if self._paused:
                continue  # back-pressure: we stopped reading, the server did not stop
            now = time.monotonic()
            silent = now - self._last_data
            if self._probed_at is not None and self._last_data > self._probed_at:
                self._probed_at = None  # the probe (or the market) answered
            if silent > timeout and self._probed_at is None and await self._probe():
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
                self._cut(ws, detail)
                return
            overdue = self._ack_overdue()
            if overdue:
                self._cut(ws, overdue)
                return

    async def _probe(self) -> bool:
        """A quiet market sends nothing either (Bybit repeats only depth-1
        books, every 3 s): before calling a silent socket dead, resubscribe one
        book topic. A live server answers with a fresh snapshot (stored like
        any snapshot: the book stays valid); a dead or muted one does not, and
        the watchdog reconnects a timeout later. False: nothing to probe with."""
        topic = next((t for t in self.topics if t.startswith("orderbook.")), None)
        if topic is None or self._pending:
            return False
        self._resyncing.add(topic)
        self.stats.probes += 1
        log.debug("%s: no data for a while; probing with a fresh %s snapshot", self.name, topic)
        await self._send_request("unsubscribe", [topic], resync=True)
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

    def _cut(self, ws: ClientConnection, reason: str) -> None:
        """End the socket now (no close handshake with a server we no longer
        trust); the reason goes into the disconnect event."""
        self._cut_reason = reason
        ws.transport.abort()

    def _event(self, kind: FeedEventKind, topic: str | None = None, detail: str = "") -> None:
        symbol: str | None = None
        depth: int | None = None
        if topic is not None:
            try:
                _, depth, symbol = split_topic(topic)
            except ValueError:  # a topic name the server made up: keep it in the detail
                symbol = topic[:64]
        self.handler.on_feed_event(
            FeedEvent(kind, now_us(), self.config.category, symbol, depth, detail, self.name)
        )
