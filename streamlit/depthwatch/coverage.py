"""Where a stream's record is incomplete: pure rules over its feed events and
its collectors' heartbeats, so that missing data is never read as a quiet market.

Times are integer microseconds of receive time (`local_us`, the collector's
clock), the time feed events and heartbeats carry; ranges are [start, end).
Exchange time (`ts_us`, what exports are bounded by) runs a few milliseconds
ahead of it on a live feed, so an exported range and its gaps line up to that
much (a replayed archive's exchange times do not line up at all).

A gap is one of:

- `collector_down`: no collector recording the stream beat for longer than
  HEARTBEAT_HOLE_FACTOR heartbeat intervals (also before a range's first
  heartbeat, when none came shortly before it), or a restarted collector
  declared the hole since the stream's last stored row (a `gap` event with
  DECLARED_HOLE_DETAIL);
- `gap`: `u` continuity broke (a message never arrived);
- `book_lost`: the stream's connection ended (collector.on_streams_lost: one
  per valid book, so the connection's own `disconnect` is not counted again);
- `resync`: a message was refused (impossible book, malformed frame) and a
  fresh snapshot asked for;
- `rows_dropped`: the writer dropped rows (database unreachable and journal
  full), a `gap` event with ROWS_DROPPED_DETAIL;
- `untrusted`: a `recovered` with nothing before it in the events given, so
  the book was broken from the range's start.

The book's gaps (gap, book_lost, resync, a declared hole) end at the stream's
next `recovered` (the snapshot that made its book valid again); rows dropped
end at the writer's own `recovered` (RECORDING_AGAIN_DETAIL), since the book
itself may recover while the writer is still dropping rows. A `resync` while a
gap is open opens nothing: it is that gap's own recovery, or (while rows are
dropped) the writer's request for a fresh snapshot of a book still valid.

Given a RecordTimes, a gap opened by an event starts at the stream's last
recorded message at or before it (a lost message was due after that one, and
the event only says when the loss was noticed), a gap with no `recovered`
in the events ends at the next recorded message, if any, and a heartbeat hole
starts at the last message its collector recorded, if after its last beat. Without it (the
dashboard) gaps start at their event. A gap still open at the end of the range
ends there, one that began before it starts at its start: every gap is
clipped to [start, end).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from depthwatch.records import FeedEventKind, StreamKey

K = FeedEventKind

COLLECTOR_DOWN = "collector_down"
SEQUENCE_GAP = "gap"
BOOK_LOST = "book_lost"
RESYNC = "resync"
ROWS_DROPPED = "rows_dropped"
UNTRUSTED = "untrusted"
CAUSES = (COLLECTOR_DOWN, SEQUENCE_GAP, BOOK_LOST, RESYNC, ROWS_DROPPED, UNTRUSTED)
# Span labels where the cause names above read badly on a chart.
CAUSE_BEFORE_WINDOW = "not trusted"  # a span whose opener precedes the window
CAUSE_COLLECTOR_DOWN = "collector not running"
SPAN_LABELS = {UNTRUSTED: CAUSE_BEFORE_WINDOW, COLLECTOR_DOWN: CAUSE_COLLECTOR_DOWN}
# Not a gap: the time before a stream's first recorded message (shaded lightly).
NOT_RECORDED_YET = "not recorded yet"

# A heartbeat hole longer than this many intervals is a collector not running
# (one late beat is a busy collector, not a missing one).
HEARTBEAT_HOLE_FACTOR = 3.0

# How the collector and the writer word the events this module tells apart
# (FeedEvent.detail starts with these): collector.declare_hole, writer._refuse.
DECLARED_HOLE_DETAIL = "collector not running"
ROWS_DROPPED_DETAIL = "rows dropped"
RECORDING_AGAIN_DETAIL = "recording again"

# Stream-level event kinds that open a gap, and every kind these rules read.
OPENERS = frozenset({K.GAP, K.BOOK_LOST, K.RESYNC})
EVENT_KINDS = OPENERS | {K.RECOVERED}

_BOOK = "book"  # the collector's book was not valid
_RECORD = "record"  # the book was, but the writer dropped its rows


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """A stream-level feed event (one with the stream's symbol and depth)."""

    local_us: int
    kind: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Gap:
    """[start_us, end_us) of receive time in which the stream's record is
    incomplete: its book there is unknown, whatever the stored rows show."""

    category: str
    symbol: str
    depth: int
    start_us: int
    end_us: int
    cause: str  # one of CAUSES, or several joined by "+" (see disjoint)
    detail: str = ""

    @property
    def stream(self) -> StreamKey:
        return StreamKey(self.category, self.symbol, self.depth)

    @property
    def duration_us(self) -> int:
        return self.end_us - self.start_us

    def covers(self, t_us: int) -> bool:
        return self.start_us <= t_us < self.end_us


@dataclass(frozen=True)
class Span:
    """An interval in which the recorded book is not to be trusted or is missing."""

    start_ms: float
    end_ms: float
    cause: str  # e.g. "gap", "disconnect", "collector not running"


class RecordTimes(Protocol):
    """Receive times of a stream's recorded book messages (the storage layer's)."""

    def last_at_or_before(self, local_us: int) -> int | None:
        """The newest recorded message received at or before `local_us`."""
        ...

    def first_after(self, local_us: int, before_us: int) -> int | None:
        """The first recorded message received after `local_us` and before `before_us`."""
        ...


def stream_gaps(
    stream: StreamKey,
    events: Iterable[StreamEvent],
    heartbeats_us: Sequence[int] | np.ndarray,
    start_us: int,
    end_us: int,
    heartbeat_interval_us: int,
    record: RecordTimes | None = None,
    heartbeats_from_us: int | None = None,
    recorded_from_us: int | None = None,
) -> list[Gap]:
    """The stream's gaps in [start, end) from its stream-level events (those
    before `start` tell what was open at it) and the receive times of the
    heartbeats of collectors recording it (the last before `start` and the
    first at or after `end` too, when there are such). Heartbeats before
    `heartbeats_from_us` were not kept: holes are looked for from there on.
    Before `recorded_from_us` (the stream's first recorded message, when in
    the range) nothing was missed: no gap starts before it.

    Sorted by start; overlapping or touching gaps of one cause are merged,
    gaps of different causes may overlap (`disjoint` joins them)."""
    if heartbeat_interval_us <= 0:
        raise ValueError(f"heartbeat_interval_us must be positive, got {heartbeat_interval_us}")
    if recorded_from_us is not None:
        start_us = max(start_us, recorded_from_us)
    if end_us <= start_us:
        return []
    gaps = event_gaps(stream, events, start_us, end_us, record)
    beats_from = start_us if heartbeats_from_us is None else max(start_us, heartbeats_from_us)
    if beats_from < end_us:
        gaps += heartbeat_gaps(
            stream, heartbeats_us, beats_from, end_us, heartbeat_interval_us, record
        )
    return merge_same_cause(gaps)


def window_spans(
    events: Iterable[StreamEvent],
    heartbeats_us: Sequence[int] | np.ndarray,
    start_us: int,
    end_us: int,
    heartbeat_interval_us: int,
    recorded_from_us: int | None = None,
) -> list[Span]:
    """One stream's `stream_gaps` over a window, as the charts shade them: in
    milliseconds, causes labelled for display (SPAN_LABELS); the time before
    the stream's first recorded message (`recorded_from_us`) as one
    NOT_RECORDED_YET span, drawn lighter: nothing was missed there."""
    gaps = stream_gaps(
        _ANY_STREAM,
        events,
        heartbeats_us,
        start_us,
        end_us,
        heartbeat_interval_us,
        recorded_from_us=recorded_from_us,
    )
    spans = [
        Span(g.start_us / 1000, g.end_us / 1000, SPAN_LABELS.get(g.cause, g.cause)) for g in gaps
    ]
    if recorded_from_us is not None and recorded_from_us > start_us:
        spans.insert(0, Span(start_us / 1000, recorded_from_us / 1000, NOT_RECORDED_YET))
    return spans


_ANY_STREAM = StreamKey("", "", 0)  # one stream's spans: which one does not matter


def _classify(event: StreamEvent) -> tuple[str, str] | None:
    """(track, cause) of an event these rules read; None for the others."""
    kind, detail = event.kind, event.detail
    if kind == K.RECOVERED:
        return (_RECORD if detail.startswith(RECORDING_AGAIN_DETAIL) else _BOOK), ""
    if kind == K.GAP:
        if detail.startswith(ROWS_DROPPED_DETAIL):
            return _RECORD, ROWS_DROPPED
        if detail.startswith(DECLARED_HOLE_DETAIL):
            return _BOOK, COLLECTOR_DOWN
        return _BOOK, SEQUENCE_GAP
    if kind == K.BOOK_LOST:
        return _BOOK, BOOK_LOST
    if kind == K.RESYNC:
        return _BOOK, RESYNC
    return None


@dataclass(frozen=True, slots=True)
class _Open:
    at_us: int
    cause: str
    detail: str


def event_gaps(
    stream: StreamKey,
    events: Iterable[StreamEvent],
    start_us: int,
    end_us: int,
    record: RecordTimes | None = None,
) -> list[Gap]:
    """Gaps from feed events alone (see the module's rules), clipped to [start, end)."""
    ordered = sorted(events, key=lambda e: e.local_us)  # stable: ties keep the caller's order
    opened: dict[str, _Open] = {}
    out: list[Gap] = []
    seen = False  # any opener or recovered so far
    for event in ordered:
        found = _classify(event)
        if found is None:
            continue
        track, cause = found
        if event.kind == K.RECOVERED:
            was = opened.pop(track, None)
            if was is not None:
                out += _closed(stream, was, event.local_us, start_us, end_us, record)
            elif not seen:
                detail = "recovered with no earlier gap event: broken since before the range"
                out += _clip(stream, start_us, event.local_us, UNTRUSTED, detail, start_us, end_us)
            seen = True
            continue
        seen = True
        if track in opened or (event.kind == K.RESYNC and opened):
            continue
        opened[track] = _Open(event.local_us, cause, event.detail)
    for was in opened.values():
        until = record.first_after(was.at_us, end_us) if record is not None else None
        out += _closed(stream, was, end_us if until is None else until, start_us, end_us, record)
    return out


def _closed(
    stream: StreamKey,
    was: _Open,
    until_us: int,
    start_us: int,
    end_us: int,
    record: RecordTimes | None,
) -> list[Gap]:
    """The gap of an opener closed at `until_us`, from the last recorded
    message before the opener when the record can tell (and it matters)."""
    since = was.at_us
    if record is not None and start_us < since < end_us and until_us > start_us:
        last = record.last_at_or_before(since)
        if last is not None and last < since:
            since = last
    return _clip(stream, since, until_us, was.cause, was.detail, start_us, end_us)


def _clip(
    stream: StreamKey, start: int, end: int, cause: str, detail: str, lo: int, hi: int
) -> list[Gap]:
    start, end = max(start, lo), min(end, hi)
    if end <= start:
        return []
    return [Gap(stream.category, stream.symbol, stream.depth, start, end, cause, detail)]


def heartbeat_gaps(
    stream: StreamKey,
    heartbeats_us: Sequence[int] | np.ndarray,
    start_us: int,
    end_us: int,
    interval_us: int,
    record: RecordTimes | None = None,
) -> list[Gap]:
    """Stretches longer than HEARTBEAT_HOLE_FACTOR intervals without a
    heartbeat. The nearest heartbeat outside [start, end) counts when given;
    otherwise the range's edge does. Given a RecordTimes, a hole after a
    heartbeat starts at the stream's last message recorded before the next
    beat was due, if later (the collector recorded until it stopped)."""
    hole_us = round(HEARTBEAT_HOLE_FACTOR * interval_us)
    beats = np.sort(np.asarray(heartbeats_us, dtype=np.int64))
    before = beats[beats <= start_us][-1:]
    after = beats[beats >= end_us][:1]
    inside = beats[(beats > start_us) & (beats < end_us)]
    points = np.concatenate(
        [
            before if before.size else np.array([start_us], dtype=np.int64),
            inside,
            after if after.size else np.array([end_us], dtype=np.int64),
        ]
    )
    out: list[Gap] = []
    for i in np.nonzero(np.diff(points) > hole_us)[0]:
        a, b = int(points[i]), int(points[i + 1])
        detail = f"no heartbeat of a collector recording the stream for {(b - a) / 1e6:,.1f} s"
        since = a
        if record is not None and (i > 0 or before.size) and a + interval_us > start_us:
            last = record.last_at_or_before(a + interval_us)
            since = a if last is None else max(a, min(last, b))
        out += _clip(stream, since, b, COLLECTOR_DOWN, detail, start_us, end_us)
    return out


def _by_time(gap: Gap) -> tuple[int, int, str]:
    return gap.start_us, gap.end_us, gap.cause


def _runs(gaps: Iterable[Gap]) -> list[list[Gap]]:
    """Gaps sorted by start, grouped into runs that overlap or touch."""
    runs: list[list[Gap]] = []
    end = 0
    for gap in sorted(gaps, key=_by_time):
        if runs and gap.start_us <= end:
            runs[-1].append(gap)
            end = max(end, gap.end_us)
        else:
            runs.append([gap])
            end = gap.end_us
    return runs


def merge_same_cause(gaps: Iterable[Gap]) -> list[Gap]:
    """Overlapping or touching gaps of one stream and cause as one (with the
    first one's detail); sorted by start."""
    merged = []
    keyed = sorted(gaps, key=lambda g: (g.category, g.symbol, g.depth, g.cause))
    for _, same in itertools.groupby(keyed, key=lambda g: (g.category, g.symbol, g.depth, g.cause)):
        merged += [replace(run[0], end_us=max(g.end_us for g in run)) for run in _runs(same)]
    return sorted(merged, key=_by_time)


def disjoint(gaps: Iterable[Gap]) -> list[Gap]:
    """One gap per overlapping or touching run of a stream's gaps, whatever
    their causes: the causes joined by "+", the details by "; " (each once, in
    order of start). Sorted by stream, then start."""
    out = []
    keyed = sorted(gaps, key=lambda g: (g.category, g.symbol, g.depth))
    for _, same in itertools.groupby(keyed, key=lambda g: (g.category, g.symbol, g.depth)):
        for run in _runs(same):
            out.append(
                replace(
                    run[0],
                    end_us=max(g.end_us for g in run),
                    cause="+".join(dict.fromkeys(g.cause for g in run)),
                    detail="; ".join(dict.fromkeys(g.detail for g in run if g.detail)),
                )
            )
    return out
