"""The collector: feed connections -> books -> batch writer -> PostgreSQL.

Wires the pieces together: connections planned within Bybit's limits, records
routed into their books (a whole book's through its sync, an RPI message's
two books together), the books' outcomes turned into resyncs and counts,
heartbeats, a status line every few seconds, the holes a restart declares.
The process around it (schema upgrade, the event loop, SIGTERM, the last
flush and the summary) is `collector_process.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from depthwatch import __version__
from depthwatch.book import Outcome, StreamBook
from depthwatch.clock import now_us
from depthwatch.config import CollectorConfig
from depthwatch.feed.connection import ConnectionConfig, FeedConnection, ReconnectPolicy
from depthwatch.feed.registry import venue_of
from depthwatch.feed.snapshots import RestPolicy, SnapshotFetcher
from depthwatch.feed.sync import DeltaSync
from depthwatch.logs import LogThrottle
from depthwatch.records import (
    FULL_DEPTH,
    HEARTBEATS_MISSED_FOR_STALE,
    BookUpdate,
    CollectorHeartbeat,
    FeedEvent,
    FeedEventKind,
    StreamKey,
    Trade,
    recorded_depths,
)
from depthwatch.storage.read.chunks import last_recorded
from depthwatch.storage.read.events import streams_kept_by_others
from depthwatch.storage.read.rows import LastRecorded
from depthwatch.storage.read.streams import NotRecorded, find_stream
from depthwatch.storage.write import BatchWriter
from depthwatch.whole_books import (
    APPLIED,
    DROPPED,
    GAP,
    JUMPED,
    REJECTED,
    RESTART,
    RESYNC_RETRY_S,
    SNAPSHOT,
    WholeBookSyncs,
)

log = logging.getLogger(__name__)


# How long a book may wait for its snapshot, while deltas arrive, before we resync again.
SNAPSHOT_RETRY_US = 10_000_000


def plan_connections(
    topics: list[str], category: str, topics_per_connection: int
) -> list[list[str]]:
    """Pack topics into connections: at most `topics_per_connection` each, and
    within the venue's per-connection limits (Bybit: 21,000 characters of
    args, options 2,000 args; Binance: 1,024 streams)."""
    venue = venue_of(category)
    cap = min(topics_per_connection, venue.max_topics_per_connection)
    most_chars = venue.max_topic_chars_per_connection
    plans: list[list[str]] = []
    chars = 0
    for topic in topics:
        cost = len(topic) + 3  # quotes and a comma in the JSON args list
        if not plans or len(plans[-1]) >= cap or chars + cost > most_chars:
            plans.append([])
            chars = 0
        plans[-1].append(topic)
        chars += cost
    return plans


@dataclass
class CollectorStats:
    gaps: int = 0  # gap events: deltas that skipped u (not written), snapshots that did
    snapshot_gaps: int = 0  # of which snapshots that jumped u on a valid book (written)
    restarts: int = 0
    dropped: int = 0  # deltas received while a book awaited its snapshot
    refused: int = 0  # messages that would have made an impossible book, or did not parse
    unknown_streams: int = 0
    handler_errors: int = 0


class Collector(WholeBookSyncs):
    """Implements feed.connection.FeedHandler: routes records into books and the writer."""

    def __init__(self, config: CollectorConfig, writer: BatchWriter) -> None:
        self.config = config
        self.writer = writer
        self.stats = CollectorStats()
        # A gap or restart every few messages must not log a line each (the
        # feed_events table and the status line keep every one).
        self._gap_log = LogThrottle()
        self._restart_log = LogThrottle()
        self._stopping = asyncio.Event()  # replaced by run()'s stop event
        # Receive time of each stream's first snapshot: where a hole left by an
        # earlier collector ends.
        self.first_valid_us: dict[StreamKey, int] = {}
        # Holes that may be a deploy's overlap: settled once heartbeats tell.
        self._holes_to_settle: list[Hole] = []
        self._kept_since: Callable[[int], set[str]] | None = None
        self._started_us = now_us()
        interval_us = int(config.snapshot_interval_s * 1_000_000)
        checkpoint_us = int(config.checkpoint_interval_s * 1_000_000)
        self.books: dict[StreamKey, StreamBook] = {
            stream: StreamBook(
                stream,
                writer,
                interval_us,
                config.snapshot_levels,
                checkpoint_us,
                int(config.profile_interval_s * 1_000_000),
            )
            for stream in config.book_streams()
        }
        # The whole book comes as deltas only, started from REST snapshots,
        # stitched by the venue's rule.
        rule = config.venue.sync_rule
        self.syncs: dict[StreamKey, DeltaSync] = {
            stream: DeltaSync(rule())
            for stream in self.books
            if stream.depth == FULL_DEPTH and rule is not None
        }
        self.fetcher = (
            SnapshotFetcher(
                config.rest_endpoint,
                config.category,
                RestPolicy(rate_per_s=config.rest_rate),
                levels=config.snapshot_levels_most,
            )
            if self.syncs
            else None
        )
        self._fetches: dict[StreamKey, asyncio.Task[None]] = {}
        self.connections = [
            FeedConnection(
                f"{config.category}-{i}",
                ConnectionConfig(
                    url=config.endpoint,
                    category=config.category,
                    topics=tuple(topics),
                    silence_timeout_s=config.silence_timeout_s,
                    reconnect=ReconnectPolicy(),
                ),
                self,
            )
            for i, topics in enumerate(
                plan_connections(config.topics(), config.category, config.topics_per_connection)
            )
        ]

    # ---- FeedHandler

    def on_book_update(self, update: BookUpdate) -> bool:
        book = self.books.get(update.stream)
        if book is None:
            self.stats.unknown_streams += 1
            return False
        if self.syncs:  # a delta-only stream's sync decides what reaches its book
            sync = self.syncs.get(update.stream)
            if sync is not None:
                self._follow(book, sync, sync.on_delta(update))
                return False
        outcome = self._apply(book, update)
        if outcome is APPLIED:  # nearly every message
            return False
        if outcome is DROPPED:
            return self._snapshot_overdue(book, update)
        return outcome is None or outcome is GAP or outcome is REJECTED

    def _apply(self, book: StreamBook, update: BookUpdate) -> Outcome | None:
        """One message into its book, counted and logged; None: it raised (a bug)."""
        try:
            outcome = book.apply(update)
        except Exception as exc:
            self.stats.handler_errors += 1
            log.exception("%s: error applying u=%d; resyncing", update.stream, update.update_id)
            book.invalidate()
            self.on_feed_event(
                FeedEvent.of_stream(
                    FeedEventKind.ANOMALY,
                    now_us(),
                    update.stream,
                    f"error applying u={update.update_id}: {exc}",
                )
            )
            return None
        if outcome is APPLIED:
            return outcome
        if outcome is GAP:
            self.stats.gaps += 1
            self._gap_log.log(
                log,
                logging.WARNING,
                "%s: gap before u=%d; book invalid until resync",
                update.stream,
                update.update_id,
            )
        elif outcome is REJECTED:
            self.stats.refused += 1
            log.warning(
                "%s: u=%d refused (impossible book); resyncing", update.stream, update.update_id
            )
        elif outcome is SNAPSHOT or outcome is RESTART:
            self.first_valid_us.setdefault(update.stream, update.local_us)
        if outcome is JUMPED:
            self.first_valid_us.setdefault(update.stream, update.local_us)
            self.stats.gaps += 1
            self.stats.snapshot_gaps += 1
            self._gap_log.log(
                log,
                logging.WARNING,
                "%s: updates missed before snapshot u=%d; the snapshot restored the book",
                update.stream,
                update.update_id,
            )
        elif outcome is RESTART:
            self.stats.restarts += 1
            self._restart_log.log(
                log,
                logging.WARNING,
                "%s: stream restarted (u=1 snapshot); book reset",
                update.stream,
            )
        elif outcome is DROPPED:
            self.stats.dropped += 1
        return outcome

    def _count_restart(self) -> None:
        self.stats.restarts += 1

    def _count_error(self) -> None:
        self.stats.handler_errors += 1

    def _snapshot_overdue(self, book: StreamBook, update: BookUpdate) -> bool:
        """Deltas keep coming but the snapshot we asked for does not (a lost
        resync, a subscription that never took): ask again, every so often."""
        since = book.dropping_since_us
        if since is None or update.local_us - since < SNAPSHOT_RETRY_US:
            return False
        book.dropping_since_us = update.local_us
        log.warning(
            "%s: no snapshot for %.0f s; resyncing again",
            update.stream,
            (update.local_us - since) / 1e6,
        )
        return True

    def on_malformed_book_message(self, stream: StreamKey, local_us: int, detail: str) -> bool:
        for companion in _companions(stream):  # the RPI book's sizes missed it too
            book = self.books.get(companion)
            if book is not None:
                book.reject(local_us, detail)
        book = self.books.get(stream)
        if book is None or book.reject(local_us, detail) is not REJECTED:
            return False
        self.stats.refused += 1
        log.warning("%s: a message did not parse; book invalid until resync", stream)
        if stream in self.syncs:
            self._restart_sync(stream)
            return False
        return True

    def on_trades(self, trades: list[Trade]) -> None:
        for trade in trades:
            self.writer.add_trade(trade)

    def on_book_pair(self, plain: BookUpdate, sizes: BookUpdate) -> bool:
        """An `orderbook.rpi` message's two books (ordinary sizes, RPI sizes)
        move together: a message one of them refuses, the other does not keep
        either, so their logs hold the same messages, which
        incremental_book_L2_rpi joins one to one. True: resync the topic."""
        resync = self.on_book_update(plain)
        book, companion = self.books.get(plain.stream), self.books.get(sizes.stream)
        if book is None or companion is None:
            return resync
        if book.refusing and companion.valid:
            companion.reject(sizes.local_us, f"u={sizes.update_id}: refused with its rpi book")
            return resync
        resync = self.on_book_update(sizes) or resync
        if companion.refusing and book.valid:
            # Refused by the RPI sizes alone (rare: the ordinary book took the
            # same levels): the ordinary book waits for the same snapshot.
            book.reject(plain.local_us, f"u={plain.update_id}: refused with its rpi-sizes book")
            resync = True
        return resync

    def on_feed_event(self, event: FeedEvent) -> None:
        self.writer.add_feed_event(event)
        # A connection's event about a topic (a resync, a subscription) is
        # about every book recorded from it; the books' own events are each's.
        if event.connection and event.depth is not None and event.symbol is not None:
            for depth in recorded_depths(event.depth):
                if depth != event.depth:
                    self.writer.add_feed_event(dataclasses.replace(event, depth=depth))

    def on_streams_lost(self, streams: list[StreamKey]) -> None:
        for stream in [*streams, *(c for s in streams for c in _companions(s))]:
            if stream in self.syncs:
                self._restart_sync(stream)
            book = self.books.get(stream)
            if book is not None and book.valid:
                book.invalidate()
                if self._stopping.is_set():
                    continue  # an orderly stop, not an incident: heartbeats end instead
                # Per stream, so the dashboard can shade exactly this stream's
                # books from the loss to the snapshot that recovers it.
                self.on_feed_event(
                    FeedEvent.of_stream(
                        FeedEventKind.BOOK_LOST,
                        now_us(),
                        stream,
                        "connection lost; book invalid until the next snapshot",
                    )
                )

    def has_room(self) -> bool:
        return self.writer.has_room()

    async def wait_for_room(self) -> None:
        await self.writer.wait_for_room()

    # ---- running

    async def run(self, stop: asyncio.Event) -> None:
        self._stopping = stop
        helpers = [
            asyncio.create_task(self._report_status(stop)),
            asyncio.create_task(self._beat(stop)),
            asyncio.create_task(self._restart_dropped_records(stop)),
            asyncio.create_task(self._settle_holes(stop)),
        ]
        try:
            await asyncio.gather(*(c.run(stop) for c in self.connections))
        finally:
            helpers += self._fetches.values()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    def declare_hole(self, hole: Hole) -> None:
        """Record the hole as a gap from the stream's last stored row, closed by
        `recovered` at this collector's first snapshot (now, if it came already)."""
        stream, last = hole.stream, hole.last
        self.on_feed_event(
            FeedEvent.of_stream(
                FeedEventKind.GAP,
                last.local_us,
                stream,
                f"collector not running: nothing recorded after u={last.u} until this "
                "collector's first snapshot",
            )
        )
        recovered_at = self.first_valid_us.get(stream)
        if recovered_at is None:
            self.books[stream].last_update_id = last.u  # its snapshot records `recovered`
            return
        self.on_feed_event(
            FeedEvent.of_stream(
                FeedEventKind.RECOVERED,
                recovered_at,
                stream,
                "first snapshot after the collector was not running",
            )
        )

    def settle_holes_later(self, holes: list[Hole], kept_since: Callable[[int], set[str]]) -> None:
        """Holes of streams another collector beat for just before this one
        started: a deploy's overlap if that collector keeps beating for them,
        else (a crash and a quick restart) holes to declare."""
        self._holes_to_settle = holes
        self._kept_since = kept_since

    async def _settle_holes(self, stop: asyncio.Event) -> None:
        if not self._holes_to_settle or self._kept_since is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.5 * self.config.heartbeat_interval_s)
            return  # stopped before it could tell
        try:
            kept = await asyncio.to_thread(self._kept_since, self._started_us)
        except Exception:  # the database away: the dashboard's heartbeat holes remain
            log.exception("could not tell a restart from a deploy's overlap")
            return
        for hole in self._holes_to_settle:
            if str(hole.stream) not in kept:
                self.declare_hole(hole)
        self._holes_to_settle = []

    async def _restart_dropped_records(self, stop: asyncio.Event) -> None:
        """Streams whose rows the writer had to drop (journal full; it recorded
        the gap) restart their record from a fresh snapshot, asked for as soon
        as the journal has room again, even if the market is quiet, and again
        every RESYNC_RETRY_S until one comes. Their books stay valid: they are
        exact, only the record has a hole."""
        asked: dict[StreamKey, float] = {}
        while not stop.is_set():
            try:
                now = time.monotonic()
                for stream in self.writer.streams_to_resync:
                    if now - asked.get(stream, -RESYNC_RETRY_S) < RESYNC_RETRY_S:
                        continue
                    asked[stream] = now
                    if stream in self.syncs:
                        if not self.syncs[stream].waiting:  # a sync under way brings one
                            self._restart_sync(stream)
                        continue
                    for connection in self.connections:
                        if await connection.request_resync(stream):
                            break
            except Exception:  # a connection closing under us: try again later
                log.exception("asking for fresh snapshots failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    @property
    def simulated(self) -> bool:
        return self.config.simulated or any(c.simulator_detected for c in self.connections)

    async def _beat(self, stop: asyncio.Event) -> None:
        """A heartbeat row every few seconds, from the first moment on, so the
        dashboard knows this collector is alive even while the market is quiet."""
        started_us = now_us()
        last_messages, last_time = 0, time.monotonic()
        while not stop.is_set():
            if self.writer.failed:  # reading on would only fill memory
                log.error("the writer failed: stopping, so that a supervisor restarts us")
                stop.set()
                return
            messages = sum(c.stats.messages for c in self.connections)
            now = time.monotonic()
            rate = (messages - last_messages) / max(now - last_time, 1e-3)
            last_messages, last_time = messages, now
            self.writer.add_heartbeat(self.heartbeat(started_us, messages, rate))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.heartbeat_interval_s)

    def heartbeat(self, started_us: int, messages: int, rate: float) -> CollectorHeartbeat:
        p50, p99 = self.writer.take_recent_latency_ms()
        return CollectorHeartbeat(
            collector=self.config.collector_id,
            local_us=now_us(),
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            started_us=started_us,
            interval_s=self.config.heartbeat_interval_s,
            simulated=self.simulated,
            endpoint=self.config.endpoint,
            retention_days=self.config.retention_days,
            messages=messages,
            messages_per_s=rate,
            pending_rows=self.writer.pending_rows,
            flush_failures=self.writer.stats.flush_failures,
            commit_p50_ms=p50,
            commit_p99_ms=p99,
            streams=[str(stream) for stream in self.books],
            valid_streams=[str(stream) for stream, book in self.books.items() if book.valid],
        )

    @property
    def refused_everything(self) -> bool:
        return all(not c.topics for c in self.connections)

    async def _report_status(self, stop: asyncio.Event) -> None:
        last_messages, last_time = 0, time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(self.config.status_interval_s)
            messages = sum(c.stats.messages for c in self.connections)
            now = time.monotonic()
            rate = (messages - last_messages) / (now - last_time)
            last_messages, last_time = messages, now
            w = self.writer.stats
            log.info(
                "status: %d msgs (%.0f/s), %d book rows written (%d already stored), %d pending, "
                "journal %.1f MB, dropped %d, valid books %d/%d, gaps %d, resyncs %d, "
                "malformed %d, flush failures %d, back-pressure waits %d",
                messages,
                rate,
                w.book_messages_written,
                w.book_messages_duplicate,
                self.writer.pending_rows,
                self.writer.journal_bytes / 1e6,
                w.rows_dropped,
                sum(b.valid for b in self.books.values()),
                len(self.books),
                self.stats.gaps,
                sum(c.stats.resyncs for c in self.connections),
                sum(c.stats.malformed for c in self.connections),
                w.flush_failures,
                w.backpressure_waits,
            )
            waiting = self.fetcher.status() if self.fetcher is not None else ""
            if waiting:
                log.info("snapshots: %s", waiting)


def register_instruments(config: CollectorConfig, writer: BatchWriter) -> tuple[str, ...]:
    """Record the instruments; returns the symbols to collect. When talking to
    the exchange itself, REST metadata (where the venue has it, and if
    reachable) names unknown symbols early and supplies tick sizes; against
    any other endpoint the data must suffice."""
    symbols = config.symbols
    fetch = config.venue.instruments
    info = (
        fetch(config.category, symbols, config.testnet)
        if fetch is not None and config.uses_exchange_endpoint
        else None
    )
    if info is not None:
        unknown = [s for s in symbols if s not in info]
        for symbol in unknown:
            log.error("unknown symbol %s for category %s: not collected", symbol, config.category)
        symbols = tuple(s for s in symbols if s in info)
    for symbol in symbols:
        tick = info[symbol].tick_size if info is not None else None
        writer.instrument_id(config.category, symbol, tick)
    for stream in config.book_streams():
        if stream.symbol in symbols:
            writer.register_stream(stream)
    return symbols


def _companions(stream: StreamKey) -> list[StreamKey]:
    """The other books recorded from the same topic (the RPI sizes of an
    `orderbook.rpi` stream), which miss or lose whatever it does."""
    return [
        StreamKey(stream.category, stream.symbol, depth)
        for depth in recorded_depths(stream.depth)
        if depth != stream.depth
    ]


@dataclass(frozen=True)
class Hole:
    """A stream recorded before this collector started: its record ends here."""

    stream: StreamKey
    last: LastRecorded


def find_holes(engine: sa.Engine, collector: Collector) -> tuple[list[Hole], list[Hole]]:
    """Streams recorded before, split into those nobody else was recording
    (a collector that stopped or crashed: a hole to declare now) and those
    another collector beat for within three heartbeats (a deploy's overlap,
    or a crash just now: settled by `Collector.settle_holes_later`)."""
    config = collector.config
    since = now_us() - int(HEARTBEATS_MISSED_FOR_STALE * config.heartbeat_interval_s * 1e6)
    holes: tuple[list[Hole], list[Hole]] = ([], [])
    with engine.connect() as conn:
        kept = streams_kept_by_others(conn, config.collector_id, since)
        for stream in collector.books:
            try:
                recorded = find_stream(conn, stream.category, stream.symbol, stream.depth)
            except NotRecorded:
                continue
            last = last_recorded(conn, recorded)
            if last is not None:
                holes[str(stream) in kept].append(Hole(stream, last))
    return holes
