"""The collector's side of the whole book (`orderbook.full`, a delta-only
stream started from REST snapshots): feed.sync's steps carried out. A mixin of
`Collector`, apart because it is its own concern (syncs, fetch tasks, known
ranges) beside the wiring: it applies what a sync releases, starts the sync
over when the book breaks, and fetches the snapshots it asks for."""

from __future__ import annotations

import asyncio
import logging

from depthwatch.book import Outcome, StreamBook
from depthwatch.clock import now_us
from depthwatch.config import CollectorConfig
from depthwatch.feed.snapshots import SnapshotFetcher, SnapshotUnavailable
from depthwatch.feed.sync import DeltaSync, SyncStep, snapshot_bounds
from depthwatch.logs import LogThrottle
from depthwatch.records import BookUpdate, FeedEvent, FeedEventKind, StreamKey

log = logging.getLogger("depthwatch.collector")

# The book's outcomes as module constants: every message is checked against
# them, and looking a member up on an Enum class costs ~0.2 us in Python 3.11
# (a tenth of a depth-50 message's handling for a handful of checks).
APPLIED, GAP, REJECTED, DROPPED = Outcome.APPLIED, Outcome.GAP, Outcome.REJECTED, Outcome.DROPPED
SNAPSHOT, RESTART, JUMPED = Outcome.SNAPSHOT, Outcome.RESTART, Outcome.JUMPED
# A snapshot's outcomes that started the book.
_STARTED = (SNAPSHOT, RESTART, JUMPED)

# How often a stream whose record lost rows asks again for a fresh snapshot
# (and how long after a failed fetch a whole book asks again).
RESYNC_RETRY_S = 10.0

# How long after Bybit refused a REST snapshot outright (an error code, e.g. a
# category without the whole book yet) we ask again.
REFUSED_RETRY_S = 60.0


class WholeBookSyncs:
    """What `Collector` holds for its whole books, and its methods for them."""

    config: CollectorConfig
    books: dict[StreamKey, StreamBook]
    syncs: dict[StreamKey, DeltaSync]
    fetcher: SnapshotFetcher | None
    _fetches: dict[StreamKey, asyncio.Task[None]]
    _restart_log: LogThrottle

    def _apply(self, book: StreamBook, update: BookUpdate) -> Outcome | None:
        raise NotImplementedError  # Collector's

    def on_feed_event(self, event: FeedEvent) -> None:
        raise NotImplementedError  # Collector's

    def _count_restart(self) -> None:
        raise NotImplementedError  # Collector's

    def _count_error(self) -> None:
        raise NotImplementedError  # Collector's

    def _follow(self, book: StreamBook, sync: DeltaSync, step: SyncStep) -> None:
        """Apply what the sync released, start it over when the book breaks,
        and fetch the snapshots it asks for."""
        stream = book.stream
        if step.restarted:
            self._stream_reinitialised(book)
        for update in step.apply:
            outcome = self._apply(book, update)
            if update.is_snapshot and outcome in _STARTED:
                book.set_bounds(update, *snapshot_bounds(update, self.config.snapshot_levels_most))
                self._log_synced(book, update, sync)
            if outcome is None or outcome is GAP or outcome is REJECTED or outcome is DROPPED:
                # Started over from the documented first step; the delta that
                # broke the chain is a real one and begins the next buffer.
                sync.reset()
                if outcome is GAP:
                    self._follow(book, sync, sync.on_delta(update))
                return
        if step.fetch or step.refetch:
            self._fetch_snapshot(stream, sync, again=step.refetch)

    def _stream_reinitialised(self, book: StreamBook) -> None:
        """A `u=1` delta: Bybit restarted the stream (a service restart, a
        delisting, the pre-market auction and its end, a tick or lot change):
        the book so far is void until a snapshot of the new session."""
        self._count_restart()
        self._restart_log.log(
            log,
            logging.WARNING,
            "%s: u restarted: the exchange re-initialised the book",
            book.stream,
        )
        if book.last_update_id is None:
            return  # nothing recorded yet: nothing to void
        book.invalidate()
        book.last_update_id = 1  # the snapshot that follows is no "jump" over old u
        self.on_feed_event(
            FeedEvent.of_stream(
                FeedEventKind.RESTART,
                now_us(),
                book.stream,
                "u restarted (u=1, or a newer seq below our u): the exchange re-initialised "
                "the stream; book void until a snapshot of the new session",
            )
        )

    def _log_synced(self, book: StreamBook, snapshot: BookUpdate, sync: DeltaSync) -> None:
        bids, asks = len(snapshot.bids), len(snapshot.asks)
        if not bids and not asks:
            log.warning(
                "%s: the exchange's book is empty (delisted, or before its pre-market "
                "auction); recording it as it is",
                book.stream,
            )
            return
        floor, ceiling = book.bounds or (None, None)
        exact = (
            "whole"
            if floor is None and ceiling is None
            else f"exact within bids >= {floor or 'all'}, asks <= {ceiling or 'all'}"
        )
        log.info(
            "%s: book started from a REST snapshot (u=%d, %d bids, %d asks, %s; %d refetched)",
            book.stream,
            snapshot.update_id,
            bids,
            asks,
            exact,
            sync.refetches,
        )

    def _fetch_snapshot(self, stream: StreamKey, sync: DeltaSync, again: bool) -> None:
        """One fetch per stream at a time: a newer request replaces an older one."""
        previous = self._fetches.pop(stream, None)
        if previous is not None:
            previous.cancel()
        # A snapshot that did not fit was older than the stream: give the REST
        # side one push interval to catch up, longer each time in a row.
        delay = min(5.0, 0.2 * 2 ** min(sync.misses - 1, 5)) if again else 0.0
        self._fetches[stream] = asyncio.get_running_loop().create_task(
            self._fetch(stream, sync, sync.generation, delay)
        )

    async def _fetch(
        self, stream: StreamKey, sync: DeltaSync, generation: int, delay: float
    ) -> None:
        """Fetch the snapshot (transient failures are the fetcher's to retry)
        and hand it to the sync; a refusal or a bug asks again later."""
        assert self.fetcher is not None
        try:
            if delay:
                await asyncio.sleep(delay)
            snapshot = await self.fetcher.fetch(stream)
        except SnapshotUnavailable as exc:
            log.error("%s: no snapshot: %s; asking again in %.0f s", stream, exc, REFUSED_RETRY_S)
            self.on_feed_event(
                FeedEvent.of_stream(
                    FeedEventKind.SUBSCRIBE_FAILED, now_us(), stream, f"snapshot refused: {exc}"
                )
            )
            await self._fetch_again_later(stream, sync, generation, REFUSED_RETRY_S)
            return
        except Exception:  # a bug must not leave the book waiting forever
            self._count_error()
            log.exception("%s: fetching a snapshot failed; asking again", stream)
            await self._fetch_again_later(stream, sync, generation, RESYNC_RETRY_S)
            return
        if self._fetches.get(stream) is asyncio.current_task():
            del self._fetches[stream]
        self._follow(self.books[stream], sync, sync.on_snapshot(snapshot, generation))

    async def _fetch_again_later(
        self, stream: StreamKey, sync: DeltaSync, generation: int, seconds: float
    ) -> None:
        await asyncio.sleep(seconds)
        # Still this stream's fetch (a newer one cancels this task first).
        self._fetches.pop(stream, None)
        self._follow(self.books[stream], sync, sync.on_fetch_failed(generation))

    def _restart_sync(self, stream: StreamKey) -> None:
        """A fresh snapshot for a delta-only stream: its sync starts over."""
        task = self._fetches.pop(stream, None)
        if task is not None:
            task.cancel()
        self.syncs[stream].reset()
