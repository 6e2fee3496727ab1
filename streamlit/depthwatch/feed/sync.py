"""A delta-only book stream started from a REST snapshot: the sync, once.

Bybit's `orderbook.full` (and Binance's depth streams) send deltas only; a
book starts from a snapshot fetched over REST while the deltas are buffered,
and the two must be stitched without a hole or an overlap. This is where
recorders go wrong (a snapshot older than the buffer, a delta lost between the
two, a restart in the middle), so it is done in one place, over the
normalised `BookUpdate` (`update_id`, `sequence`), with each exchange's
documented comparisons in a `SyncRule`.

`DeltaSync` is pure: it is fed deltas and snapshots and answers with a
`SyncStep` (what to apply to the book, whether to fetch a snapshot, whether
the exchange re-initialised the stream). The collector does the fetching and
hands the answers back; the book after the sync checks `u` continuity as it
does for every stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from depthwatch.records import BookUpdate

# Deltas kept while a snapshot is awaited: at Bybit's 200 ms a minute and a
# half of them. Beyond, the oldest go and the buffer restarts (a snapshot that
# slow would be older than its start anyway).
MAX_BUFFERED = 500


class Alignment(Enum):
    """A snapshot judged against the buffered deltas."""

    START = "start"  # it matches: the book starts from it
    WAIT = "wait"  # newer than every buffered delta: hold it until its delta comes
    FETCH_AGAIN = "fetch_again"  # older than the buffer, or inconsistent with it


class SyncRule(Protocol):
    """One exchange's documented comparisons between deltas and a snapshot."""

    # The exchange's ids are not consecutive (Binance's span many updates per
    # message): the sync numbers the deltas it passes on 1, 2, 3, ... as
    # `update_id` (after a hole it skips a number, so the book sees the gap),
    # keeping the exchange's id in `sequence`. Everything after the feed
    # checks continuity as `u == previous u + 1`.
    renumbers: bool

    def restarts(self, delta: BookUpdate) -> bool:
        """The delta re-initialises the stream: the book so far is void."""
        ...

    def follows(self, previous: BookUpdate, delta: BookUpdate) -> bool:
        """`delta` continues the chain after `previous` with nothing missed."""
        ...

    def is_stale(self, previous: BookUpdate, delta: BookUpdate) -> bool:
        """`delta` is older than one already seen (to be discarded, not a gap)."""
        ...

    def new_session(self, last: BookUpdate, delta: BookUpdate) -> bool:
        """On a running book, `delta` (not stale) belongs to a new session whose
        restart was never seen: the book must start over."""
        ...

    def align(self, snapshot: BookUpdate, buffered: Sequence[BookUpdate]) -> tuple[Alignment, int]:
        """How the snapshot meets the buffer; with START, the index of the first
        buffered delta to apply after it (len(buffered): none)."""
        ...


def snapshot_bounds(snapshot: BookUpdate, most_levels: int) -> tuple[str | None, str | None]:
    """(bid floor, ask ceiling) of a book started from `snapshot`, which holds
    at most `most_levels` a side: a side that long was cut at its last
    price, and the book is exact only up to it; None for a whole side."""
    bids, asks = snapshot.bids, snapshot.asks
    return (
        bids[-1][0] if len(bids) >= most_levels else None,
        asks[-1][0] if len(asks) >= most_levels else None,
    )


class SyncState(Enum):
    IDLE = "idle"  # nothing received yet (or reset): the next delta starts a buffer
    BUFFERING = "buffering"  # deltas buffered, a snapshot asked for or held
    SYNCED = "synced"  # the book runs on the live deltas


@dataclass(slots=True)
class SyncStep:
    """What the caller does after feeding the sync one delta or snapshot."""

    apply: list[BookUpdate] = field(default_factory=list)  # to the book, in order
    fetch: bool = False  # ask for a (new) snapshot
    restarted: bool = False  # the exchange re-initialised the stream (u=1)
    refetch: bool = False  # the snapshot was stale or did not match: fetch again later


class DeltaSync:
    """One stream's sync state: buffer, snapshot, live.

    A snapshot is asked for once the first delta is buffered (the documented
    order: a snapshot fetched before any delta could not be matched). Each
    snapshot fetch is numbered; an answer to a fetch asked before a reset is
    ignored (`generation`)."""

    def __init__(self, rule: SyncRule) -> None:
        self.rule = rule
        self.state = SyncState.IDLE
        self.buffer: list[BookUpdate] = []
        self.held: BookUpdate | None = None  # a snapshot newer than the buffer
        self.last: BookUpdate | None = None  # the last delta passed on while synced
        self.generation = 0  # bumped by every reset: stale fetches are told apart
        self.discarded = 0  # deltas dropped as stale or superseded
        self.refetches = 0  # snapshots that did not fit and were fetched again
        self.misses = 0  # of which since the book last started: how long to wait
        self.numbered = 0  # the last number given, when the rule renumbers

    @property
    def waiting(self) -> bool:
        """Deltas are arriving but the book has not started yet."""
        return self.state is SyncState.BUFFERING

    def reset(self) -> None:
        """Start over (the connection was lost, or the book broke): the next
        delta begins a new buffer. Fetches under way are forgotten."""
        self.state = SyncState.IDLE
        self.buffer = []
        self.held = None
        self.last = None
        self.generation += 1

    def on_delta(self, delta: BookUpdate) -> SyncStep:
        if self.rule.restarts(delta):
            self.reset()
            return self._buffer_first(delta, restarted=True)
        if self.state is SyncState.SYNCED:
            last = self.last
            if last is not None and self.rule.is_stale(last, delta):
                self.discarded += 1  # the documented rule: an older u is ignored
                return SyncStep()
            if last is not None and self.rule.new_session(last, delta):
                # E.g. a u not above ours yet a newer seq: a new session whose
                # u=1 we never saw. Its deltas must not run on the old book
                # (they would be ignored until u passed ours, then applied).
                self.reset()
                return self._buffer_first(delta, restarted=True)
            if self.rule.renumbers and last is not None:
                # A hole skips a number: the book finds the gap.
                self._number(delta, 1 if self.rule.follows(last, delta) else 2)
            self.last = delta
            return SyncStep([delta])  # a gap is the book's to find
        if self.state is SyncState.IDLE:
            return self._buffer_first(delta)
        buffer = self.buffer
        previous = buffer[-1] if buffer else None
        if previous is not None:
            if self.rule.is_stale(previous, delta):
                self.discarded += 1
                return SyncStep()
            if not self.rule.follows(previous, delta):
                # A hole in the buffer: what it holds can no longer be stitched.
                self.discarded += len(buffer)
                buffer.clear()
        if self.rule.renumbers:
            # A new buffer leaves a number free for the snapshot before it.
            self._number(delta, 1 if buffer else 2)
        buffer.append(delta)
        if len(buffer) > MAX_BUFFERED:
            self.discarded += len(buffer) - 1
            del buffer[:-1]
        if self.held is not None:
            return self._judge(self.held)
        return SyncStep()

    def _buffer_first(self, delta: BookUpdate, restarted: bool = False) -> SyncStep:
        self.state = SyncState.BUFFERING
        if self.rule.renumbers:
            self._number(delta, 2)
        self.buffer = [delta]
        return SyncStep(fetch=True, restarted=restarted)

    def _number(self, delta: BookUpdate, step: int) -> None:
        """The next number (see SyncRule.renumbers); numbers only rise, across
        resets too, so a book restarted from a snapshot never goes back."""
        self.numbered += step
        delta.update_id = self.numbered

    def on_snapshot(self, snapshot: BookUpdate, generation: int) -> SyncStep:
        """A fetched snapshot (is_snapshot=True), for the fetch asked at `generation`."""
        if generation != self.generation or self.state is not SyncState.BUFFERING:
            return SyncStep()  # asked for a book since reset or already started
        return self._judge(snapshot)

    def on_fetch_failed(self, generation: int) -> SyncStep:
        """The fetch gave up (the fetcher already retried): ask again, unless
        it no longer matters."""
        if generation != self.generation or self.state is not SyncState.BUFFERING:
            return SyncStep()
        return SyncStep(refetch=True)

    def _judge(self, snapshot: BookUpdate) -> SyncStep:
        alignment, start = self.rule.align(snapshot, self.buffer)
        if alignment is Alignment.WAIT:
            self.held = snapshot
            if self.buffer:
                # Every buffered delta is older than the snapshot: drop them,
                # its own delta is still to come.
                self.discarded += len(self.buffer)
                self.buffer = []
            return SyncStep()
        self.held = None
        if alignment is Alignment.FETCH_AGAIN:
            self.refetches += 1
            self.misses += 1
            return SyncStep(refetch=True)
        self.discarded += start - 1 if start else 0
        # The snapshot is the book after its matched delta: it takes that
        # delta's exchange times. Its own `ts` may be when the answer was
        # made, later than the deltas that follow it, which would then sort
        # before it in the record.
        # (Binance's snapshot lies within the first delta applied: its times.)
        matched = self.buffer[start - 1] if start else self.buffer[0]
        snapshot.exchange_us, snapshot.match_us = matched.exchange_us, matched.match_us
        if self.rule.renumbers:
            after = self.buffer[start] if start < len(self.buffer) else None
            snapshot.update_id = after.update_id - 1 if after else self.buffer[-1].update_id
        return self._start(snapshot, self.buffer[start:])

    def _start(self, snapshot: BookUpdate, rest: list[BookUpdate]) -> SyncStep:
        self.buffer = []
        # A buffered delta's book was knowable only once the snapshot came:
        # its receive time becomes the snapshot's, so receive times never go
        # backwards along the recorded stream (Tardis files are in that
        # order), a microsecond apart (a Tardis reader tells messages apart
        # by their times: two equal ones would read as one message).
        after = snapshot.local_us
        for delta in rest:
            after = delta.local_us = max(delta.local_us, after + 1)
        self.state = SyncState.SYNCED
        self.misses = 0
        self.last = rest[-1] if rest else snapshot
        return SyncStep([snapshot, *rest])
