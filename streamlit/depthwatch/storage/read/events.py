"""Feed events (`feed_events`: gaps, resyncs, restarts, lost and recovered
books, connections) and collector heartbeats (`collector_heartbeats`): what
happened to a stream, and which collectors were recording it. Receive times
(`local_us`) throughout."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import sqlalchemy as sa

from depthwatch.archive.log import FEED_EVENTS, HEARTBEATS
from depthwatch.coverage import EVENT_KINDS, StreamEvent
from depthwatch.records import SECOND_US
from depthwatch.storage.read.cold import NO_COLD_DAYS, ColdLog, least
from depthwatch.storage.read.frames import EVENT_COLUMNS, frame
from depthwatch.storage.read.rows import Heartbeats, HeartbeatView
from depthwatch.storage.read.streams import Stream

if TYPE_CHECKING:
    import pandas as pd

# The stream's events before a range that can still hold a gap open at its
# start: the writer's `rows_dropped` gap can stay open while the book loses
# and recovers its connection many times.
EVENTS_BEFORE = 100


# How far outside a range the nearest heartbeat is looked for (further off, the
# range's edge stands in for it: coverage.heartbeat_gaps).
HEARTBEAT_LOOKAROUND_US = 3_600 * SECOND_US


# Collectors write their first heartbeat and their first events together; feed
# events older than the oldest heartbeat by more than this had collectors whose
# heartbeats retention deleted.
HEARTBEAT_START_SLACK_US = 60 * SECOND_US


def feed_events(conn: sa.Connection, since_us: int) -> list[sa.Row]:
    return list(
        conn.execute(
            sa.text(
                """SELECT local_us, collector, connection, kind, category, symbol, depth, detail
                   FROM feed_events WHERE local_us >= :s ORDER BY local_us, id"""
            ),
            {"s": since_us},
        )
    )


def stream_events(
    conn: sa.Connection,
    stream: Stream,
    start_us: int,
    end_us: int,
    cold: ColdLog = NO_COLD_DAYS,
) -> list[StreamEvent]:
    """The stream's gap-related events (coverage.EVENT_KINDS) received in
    [start, end), after the last EVENTS_BEFORE before `start`; in receive
    order. Those of the stream's `cold` days come from the archive."""
    rows = conn.execute(
        sa.text(
            """(SELECT local_us, id, kind, detail FROM feed_events
                WHERE symbol = :sym AND local_us < :s AND category = :c AND depth = :d
                  AND kind = ANY(:k)
                ORDER BY local_us DESC, id DESC LIMIT :n)
               UNION ALL
               (SELECT local_us, id, kind, detail FROM feed_events
                WHERE symbol = :sym AND local_us >= :s AND local_us < :e AND category = :c
                  AND depth = :d AND kind = ANY(:k))
               ORDER BY local_us, id"""
        ),
        {
            "sym": stream.symbol,
            "c": stream.category,
            "d": stream.depth,
            "s": start_us,
            "e": end_us,
            "k": sorted(EVENT_KINDS),
            "n": EVENTS_BEFORE,
        },
    ).all()
    found = [(int(r.local_us), int(r.id), r.kind, r.detail) for r in rows]
    if cold:
        found = _with_cold_events(cold, stream, found, start_us, end_us)
    return [StreamEvent(local, kind, detail or "") for local, _, kind, detail in found]


def _with_cold_events(
    cold: ColdLog,
    stream: Stream,
    found: list[tuple[int, int, str, str]],
    start_us: int,
    end_us: int,
) -> list[tuple[int, int, str, str]]:
    """stream_events' rows with those of cold days taken from the archive
    (the database's rows on a cold day are copies that outlived it)."""

    def cold_rows(start: int, end: int, newest_first: bool) -> Iterator[tuple[int, int, str, str]]:
        names = ["local_us", "id", "kind", "detail", "depth"]
        for local, event_id, kind, detail, depth in cold.rows(
            FEED_EVENTS, start, end, newest_first, names
        ):
            if depth == stream.depth and kind in EVENT_KINDS:
                yield int(local), int(event_id), kind, detail

    hot = [r for r in found if not cold.is_cold(r[0])]
    before = [r for r in hot if r[0] < start_us]
    before += itertools.islice(cold_rows(0, start_us, True), EVENTS_BEFORE)
    before = sorted(before)[-EVENTS_BEFORE:]
    inside = [r for r in hot if r[0] >= start_us] + list(cold_rows(start_us, end_us, False))
    return before + sorted(inside)


def event_frame(
    conn: sa.Connection, stream: Stream, start_us: int, end_us: int, limit: int = 500
) -> pd.DataFrame:
    """EVENT_COLUMNS: the stream's own feed events (gap, resync, restart,
    book_lost, recovered, anomaly) and its category's connection events
    (connect, disconnect, stall, malformed) received in [start, end)."""
    rows = conn.execute(
        sa.text(
            """SELECT * FROM (
                   SELECT local_us / 1000.0 AS t_ms, kind, detail, symbol IS NOT NULL, id
                   FROM feed_events
                   WHERE local_us >= :s AND local_us < :e AND category = :c
                     AND ((symbol = :sym AND (depth = :d OR depth IS NULL)) OR symbol IS NULL)
                   ORDER BY local_us DESC, id DESC LIMIT :l) ev
               ORDER BY t_ms, id"""
        ),
        {
            "s": start_us,
            "e": end_us,
            "c": stream.category,
            "sym": stream.symbol,
            "d": stream.depth,
            "l": limit,
        },
    ).all()
    return frame([r[:4] for r in rows], EVENT_COLUMNS)


def event_counts(conn: sa.Connection, since_us: int) -> dict[tuple[str, str, int], dict[str, int]]:
    """Per stream (category, symbol, depth) and kind, the feed events received
    since `since_us`; connection-wide events (no symbol) are left out."""
    rows = conn.execute(
        sa.text(
            """SELECT category, symbol, depth, kind, count(*) FROM feed_events
               WHERE local_us >= :s AND symbol IS NOT NULL
               GROUP BY category, symbol, depth, kind"""
        ),
        {"s": since_us},
    ).all()
    counts: dict[tuple[str, str, int], dict[str, int]] = {}
    for category, symbol, depth, kind, count in rows:
        counts.setdefault((category, symbol, depth), {})[kind] = int(count)
    return counts


def heartbeats(
    conn: sa.Connection,
    stream_key: str,
    start_us: int,
    end_us: int,
    cold: ColdLog = NO_COLD_DAYS,
) -> Heartbeats:
    """The stream's heartbeats in [start, end), plus the last one before
    `start` and the first at or after `end` (each looked for within
    HEARTBEAT_LOOKAROUND_US); `stream_key` is str(StreamKey). Those of the
    stream's `cold` days come from the archive."""
    if cold:
        beats = _with_cold_heartbeats(conn, cold, stream_key, start_us, end_us)
    else:
        rows = conn.execute(
            sa.text(
                """(SELECT local_us, interval_s FROM collector_heartbeats
                    WHERE local_us < :s AND local_us >= :s - :w AND :k = ANY(streams)
                    ORDER BY local_us DESC LIMIT 1)
                   UNION ALL
                   (SELECT local_us, interval_s FROM collector_heartbeats
                    WHERE local_us >= :s AND local_us < :e AND :k = ANY(streams))
                   UNION ALL
                   (SELECT local_us, interval_s FROM collector_heartbeats
                    WHERE local_us >= :e AND local_us < :e + :w AND :k = ANY(streams)
                    ORDER BY local_us LIMIT 1)
                   ORDER BY local_us"""
            ),
            {"s": start_us, "e": end_us, "w": HEARTBEAT_LOOKAROUND_US, "k": stream_key},
        ).all()
        beats = [(int(r[0]), float(r[1])) for r in rows]
    times = np.fromiter((b[0] for b in beats), dtype=np.int64, count=len(beats))
    longest = max((b[1] for b in beats), default=None)
    return Heartbeats(times, None if longest is None else round(longest * SECOND_US))


def _with_cold_heartbeats(
    conn: sa.Connection,
    cold: ColdLog,
    stream_key: str,
    start_us: int,
    end_us: int,
) -> list[tuple[int, float]]:
    """heartbeats' rows (the same last-before and first-after), those of
    cold days read from the archive instead of the database."""
    low, high = start_us - HEARTBEAT_LOOKAROUND_US, end_us + HEARTBEAT_LOOKAROUND_US
    hot = conn.execute(
        sa.text(
            """SELECT local_us, interval_s FROM collector_heartbeats
               WHERE local_us >= :s AND local_us < :e AND :k = ANY(streams)"""
        ),
        {"s": low, "e": high, "k": stream_key},
    ).all()
    every = [(int(t), float(i)) for t, i in hot if not cold.is_cold(int(t))]
    every += [
        (int(t), float(i))
        for t, i in cold.rows(HEARTBEATS, low, high, columns=["local_us", "interval_s"])
    ]
    every.sort()
    before = [b for b in every if b[0] < start_us][-1:]
    after = [b for b in every if b[0] >= end_us][:1]
    return before + [b for b in every if start_us <= b[0] < end_us] + after


def last_heartbeat(conn: sa.Connection, stream_key: str, since_us: int) -> HeartbeatView | None:
    row = conn.execute(
        sa.text(
            """SELECT collector, local_us, interval_s, simulated, :k = ANY(valid_streams)
               FROM collector_heartbeats
               WHERE local_us >= :s AND :k = ANY(streams)
               ORDER BY local_us DESC LIMIT 1"""
        ),
        {"s": since_us, "k": stream_key},
    ).first()
    return None if row is None else HeartbeatView(row[0], int(row[1]), *row[2:])


def heartbeats_kept_from(conn: sa.Connection, cold: ColdLog = NO_COLD_DAYS) -> int | None:
    """Since when heartbeats tell whether collectors ran: the oldest one kept,
    when collectors recorded before it (retention deleted their heartbeats);
    None when the heartbeats reach back to the first recorded event. A
    stream's `cold` days keep theirs in the archive."""
    oldest_event, oldest_beat = conn.execute(
        sa.text(
            """SELECT (SELECT min(local_us) FROM feed_events),
                      (SELECT min(local_us) FROM collector_heartbeats)"""
        )
    ).one()
    if cold:
        oldest_event = least(oldest_event, cold.first_time(FEED_EVENTS))
        oldest_beat = least(oldest_beat, cold.first_time(HEARTBEATS))
    if oldest_event is None:
        return None
    if oldest_beat is None:  # collectors ran, and every heartbeat is gone
        return int(conn.execute(sa.text("SELECT max(local_us) FROM feed_events")).scalar_one()) + 1
    if oldest_event < oldest_beat - HEARTBEAT_START_SLACK_US:
        return int(oldest_beat)
    return None


def source_simulated(
    conn: sa.Connection, stream_keys: Sequence[str], start_us: int, end_us: int
) -> bool | None:
    """Whether the collectors that recorded these streams in [start, end)
    (by their heartbeats' receive times) read the simulator: True if any did,
    False if none did, None if no heartbeat is stored for the range."""
    value = conn.execute(
        sa.text(
            """SELECT bool_or(simulated) FROM collector_heartbeats
               WHERE local_us >= :s AND local_us < :e
                 AND streams && CAST(:k AS text[])"""
        ),
        {"s": start_us, "e": end_us, "k": list(stream_keys)},
    ).scalar()
    return None if value is None else bool(value)


def streams_kept_by_others(conn: sa.Connection, collector: str, since_us: int) -> set[str]:
    """Streams (as `str(StreamKey)`) another collector was recording in a
    heartbeat since `since_us`: during a deploy the old collector keeps
    recording while the new one starts, so there is no hole to declare (a
    hole of its own it records itself)."""
    return set(
        conn.execute(
            sa.text(
                """SELECT DISTINCT unnest(streams) FROM collector_heartbeats
                   WHERE local_us >= :since AND collector <> :me"""
            ),
            {"since": since_us, "me": collector},
        ).scalars()
    )
