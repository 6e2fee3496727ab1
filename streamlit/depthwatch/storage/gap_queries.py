"""Reads behind `depthwatch gaps` (depthwatch.coverage's inputs): a stream's
feed events and its collectors' heartbeats over a range, since when
heartbeats were kept, and the receive times of its recorded book messages
around a moment. Integer microseconds of receive time (`local_us`) throughout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from depthwatch.coverage import EVENT_KINDS, StreamEvent
from depthwatch.records import SECOND_US, StreamKey
from depthwatch.storage.codec import decode_chunk
from depthwatch.storage.queries import stream_id

# The stream's events before a range that can still hold a gap open at its
# start: the writer's `rows_dropped` gap can stay open while the book loses
# and recovers its connection many times.
EVENTS_BEFORE = 100
# How far outside a range the nearest heartbeat is looked for (further off, the
# range's edge stands in for it: coverage.heartbeat_gaps).
HEARTBEAT_LOOKAROUND_US = 3_600 * SECOND_US
# Exchange time may run ahead of receive time (clock skew) by up to this: a
# message received at t can be stamped up to t + this.
CLOCK_SKEW_US = 10 * SECOND_US
# Collectors write their first heartbeat and their first events together; feed
# events older than the oldest heartbeat by more than this had collectors whose
# heartbeats retention deleted.
HEARTBEAT_START_SLACK_US = 60 * SECOND_US
CHUNKS_SCANNED = 2_000  # chunks read around a moment before giving up (then: unknown)
CHUNK_BATCH = 4


def stream_events(
    conn: sa.Connection, stream: StreamKey, start_us: int, end_us: int
) -> list[StreamEvent]:
    """The stream's gap-related events (coverage.EVENT_KINDS) received in
    [start, end), after the last EVENTS_BEFORE before `start`; in receive order."""
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
    return [StreamEvent(int(r.local_us), r.kind, r.detail or "") for r in rows]


@dataclass(frozen=True)
class Heartbeats:
    """Heartbeats of the collectors recording a stream."""

    times_us: np.ndarray  # int64, ascending
    interval_us: int | None  # the longest interval any of them announced; None: no heartbeat


def heartbeats(conn: sa.Connection, stream_key: str, start_us: int, end_us: int) -> Heartbeats:
    """The stream's heartbeats in [start, end), plus the last one before
    `start` and the first at or after `end` (each looked for within
    HEARTBEAT_LOOKAROUND_US); `stream_key` is str(StreamKey)."""
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
    times = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    longest = max((float(r[1]) for r in rows), default=None)
    return Heartbeats(times, None if longest is None else round(longest * SECOND_US))


def heartbeats_kept_from(conn: sa.Connection) -> int | None:
    """Since when heartbeats tell whether collectors ran: the oldest one kept,
    when collectors recorded before it (retention deleted their heartbeats);
    None when the heartbeats reach back to the first recorded event."""
    oldest_event, oldest_beat = conn.execute(
        sa.text(
            """SELECT (SELECT min(local_us) FROM feed_events),
                      (SELECT min(local_us) FROM collector_heartbeats)"""
        )
    ).one()
    if oldest_event is None:
        return None
    if oldest_beat is None:  # collectors ran, and every heartbeat is gone
        return int(conn.execute(sa.text("SELECT max(local_us) FROM feed_events")).scalar_one()) + 1
    if oldest_event < oldest_beat - HEARTBEAT_START_SLACK_US:
        return int(oldest_beat)
    return None


class RecordedTimes:
    """coverage.RecordTimes of one stream from its stored book messages: the
    packed chunks (schema 4) and the schema 1-3 log. A chunk is found by its
    first message's exchange time, so the receive times are decoded from the
    chunks around the moment asked about."""

    def __init__(self, conn: sa.Connection, instrument_id: int, depth: int) -> None:
        self.conn = conn
        self.instrument_id = instrument_id
        self.depth = depth
        self.stream_id = stream_id(conn, instrument_id, depth)

    def last_at_or_before(self, local_us: int) -> int | None:
        found = [self._legacy("<=", "DESC", local_us)]
        if self.stream_id is not None:
            hit = self._first_hit(
                "ts_us <= :t + :skew ORDER BY ts_us DESC",
                {"t": local_us, "skew": CLOCK_SKEW_US},
                lambda local: local[local <= local_us],
            )
            found.append(int(hit.max()) if hit.size else None)
        return max((t for t in found if t is not None), default=None)

    def first_after(self, local_us: int, before_us: int) -> int | None:
        found = [self._legacy(">", "ASC", local_us)]
        if self.stream_id is not None:
            hit = self._first_hit(
                "ts_us >= :t - :skew AND ts_us < :b + :skew ORDER BY ts_us",
                {"t": local_us, "b": before_us, "skew": CLOCK_SKEW_US},
                lambda local: local[local > local_us],
            )
            found.append(int(hit.min()) if hit.size else None)
        first = min((t for t in found if t is not None), default=None)
        return first if first is not None and first < before_us else None

    def _first_hit(
        self,
        where_order: str,
        params: dict[str, int],
        keep: Callable[[np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """The receive times `keep` picks from the first of the stream's chunks
        (in `where_order`, at most CHUNKS_SCANNED) where it picks any; the
        chunks come a few at a time, since most lookups need one or two."""
        # `where_order` is one of the two literals above, never user input.
        result = self.conn.execution_options(stream_results=True, yield_per=CHUNK_BATCH).execute(
            sa.text(
                "SELECT ts_us, u, payload FROM book_chunks WHERE stream_id = :sid AND "
                f"{where_order} LIMIT :n"
            ),
            {"sid": self.stream_id, "n": CHUNKS_SCANNED, **params},
        )
        with contextlib.closing(result):
            for ts_us, u, payload in result:
                picked = keep(decode_chunk(bytes(payload), int(ts_us), int(u)).local_us)
                if picked.size:
                    return picked
        return np.empty(0, dtype=np.int64)

    def _legacy(self, compare: str, order: str, local_us: int) -> int | None:
        """The schema 1-3 log's nearest message received `compare` local_us."""
        skewed = ":t + :skew" if order == "DESC" else ":t - :skew"
        bound = "<=" if order == "DESC" else ">="
        # Operators and orders are the literals of the two callers above.
        value = self.conn.execute(
            sa.text(
                f"""SELECT local_us FROM book_events
                    WHERE instrument_id = :i AND depth = :d AND ts_us {bound} {skewed}
                      AND local_us {compare} :t
                    ORDER BY ts_us {order} LIMIT 1"""
            ),
            {"i": self.instrument_id, "d": self.depth, "t": local_us, "skew": CLOCK_SKEW_US},
        ).scalar()
        return None if value is None else int(value)
