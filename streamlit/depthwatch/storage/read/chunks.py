"""Small reads of a few packed chunks: the newest ones (the last quote, where
a stream's record ends), a sample of a window (latency, an export's volume),
and the ones around a moment (receive times, for `depthwatch gaps`)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa

from depthwatch.archive.log import CHUNKS
from depthwatch.records import SECOND_US
from depthwatch.storage.codec import (
    SNAPSHOT,
    TOP_CHANGED,
    DecodedBatch,
    DecodedChunk,
    decode_chunk,
    decode_many,
    unit_text,
)
from depthwatch.storage.read import legacy
from depthwatch.storage.read.cold import cold_log
from depthwatch.storage.read.rows import (
    VOLUME_SAMPLE_CHUNKS,
    LastQuote,
    LastRecorded,
    Latency,
    Steps,
    VolumeSample,
)
from depthwatch.storage.read.streams import Stream


def last_recorded(conn: sa.Connection, stream: Stream) -> LastRecorded | None:
    """The stream's newest stored book message (receive time and update id):
    where an earlier collector's record of it ends. Backward index probes."""
    ends = [
        (int(c.ts_us[-1]), int(c.local_us[-1]), int(c.u[-1])) for c in newest_chunks(conn, stream)
    ]
    packed = max(ends) if ends else None
    found = [r for r in (legacy.last_recorded(conn, stream),) if r]
    if packed is not None:
        found.append((packed[0], LastRecorded(packed[1], packed[2])))
    return max(found, key=lambda r: r[0])[1] if found else None


def last_quote(conn: sa.Connection, stream: Stream, since_us: int) -> LastQuote | None:
    """The newest top of book at or after `since_us`: the top after the last
    message of the newest packed chunks (a backward index scan of the newest
    partitions), or of the schema 1-3 quotes."""
    return _last_packed_quote(conn, stream, since_us) or legacy.last_quote(conn, stream, since_us)


def newest_chunks(conn: sa.Connection, stream: Stream, since_us: int = 0) -> list[DecodedChunk]:
    """The chunks of the stream's newest second at or after `since_us` (two
    collectors may have cut it differently), decoded; none empty."""
    newest = conn.execute(
        sa.text("SELECT max(ts_us) FROM book_chunks WHERE stream_id = :s AND ts_us >= :f"),
        {"s": stream.id, "f": since_us},
    ).scalar()
    if newest is None:
        return []
    rows = conn.execute(
        sa.text("SELECT ts_us, u, payload FROM book_chunks WHERE stream_id = :s AND ts_us >= :f"),
        {"s": stream.id, "f": max(since_us, int(newest) - int(newest) % SECOND_US)},
    ).all()
    decoded = [decode_chunk(payload, int(ts), int(u)) for ts, u, payload in rows]
    return [chunk for chunk in decoded if len(chunk)]


def _last_packed_quote(conn: sa.Connection, stream: Stream, since_us: int) -> LastQuote | None:
    chunks = newest_chunks(conn, stream, since_us)
    if not chunks:
        return None
    chunk = max(chunks, key=lambda c: (int(c.ts_us[-1]), int(c.u[-1])))
    # Every chunk's first message carries the top, so the last message has one.
    bid, bid_size, ask, ask_size = chunk.tops[chunk.top_of[-1]].tolist()
    pe, se = chunk.price_exp, chunk.size_exp
    return LastQuote(
        int(chunk.ts_us[-1]),
        int(chunk.local_us[-1]),
        bid / 10**pe if bid else None,
        ask / 10**pe if ask else None,
        bid_size / 10**se if bid else None,
        ask_size / 10**se if ask else None,
        unit_text(bid, pe) if bid else None,
        unit_text(ask, pe) if ask else None,
    )


# The exchange-side latency steps come from the newest this many packed chunks
# of the window (decoded here): a sample of recent messages, not all of them,
# so the health page's read stays small whatever the message rate.
LATENCY_SAMPLE_CHUNKS = 400


def latency(conn: sa.Connection, stream: Stream, start_us: int, end_us: int) -> Latency:
    """Exchange-side steps from the window's book messages (packed: the newest
    LATENCY_SAMPLE_CHUNKS chunks; else the schema 1-3 log); receive-to-commit
    from the heartbeats (median of their p50s, worst of their p99s)."""
    steps = _packed_latency_steps(conn, stream, start_us, end_us)
    if steps is None:
        steps = legacy.latency_steps(conn, stream, start_us, end_us)
    commit = conn.execute(
        sa.text(
            """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY commit_p50_ms),
                      max(commit_p99_ms)
               FROM collector_heartbeats
               WHERE local_us >= :s AND local_us < :e AND :k = ANY(streams)"""
        ),
        {"s": start_us, "e": end_us, "k": stream.key},
    ).one()

    def ms(pair: Sequence[float] | None) -> tuple[float, float] | None:
        return None if pair is None else (pair[0] / 1000, pair[1] / 1000)

    return Latency(
        ms(steps[0]),
        ms(steps[1]),
        None if commit[0] is None else (float(commit[0]), float(commit[1])),
    )


def _packed_latency_steps(
    conn: sa.Connection, stream: Stream, start_us: int, end_us: int
) -> Steps | None:
    batch = _newest_in(conn, stream, start_us, end_us, LATENCY_SAMPLE_CHUNKS)
    if batch is None:
        return None
    ts, match, local = batch.ts_us, batch.match_us, batch.local_us
    inside = (ts >= start_us) & (ts < end_us)
    with_match = inside & (match >= 0)

    def quantiles(values: np.ndarray) -> list[float] | None:
        # percentile_cont's interpolation, as the SQL of the schema 1-3 log.
        return np.quantile(values, [0.5, 0.99]).tolist() if len(values) else None

    return quantiles(ts[with_match] - match[with_match]), quantiles(local[inside] - ts[inside])


def _newest_in(
    conn: sa.Connection, stream: Stream, start_us: int, end_us: int, count: int
) -> DecodedBatch | None:
    """The newest `count` chunks starting in [start, end), decoded without
    their levels (those of cold days when the database has none in range);
    None when there are none."""
    rows: Sequence[Sequence[Any]] = conn.execute(
        sa.text(
            """SELECT ts_us, u, payload FROM book_chunks
               WHERE stream_id = :sid AND ts_us >= :s AND ts_us < :e
               ORDER BY ts_us DESC LIMIT :n"""
        ),
        {"sid": stream.id, "s": start_us, "e": end_us, "n": count},
    ).all()
    if not rows:  # a sample of the cold days', if the range has any
        names = ["ts_us", "u", "payload"]
        cold = cold_log(conn, stream).rows(CHUNKS, start_us, end_us, True, names)
        rows = list(itertools.islice(cold, count))
    if not rows:
        return None
    return decode_many(
        [r[2] for r in rows], [int(r[0]) for r in rows], [int(r[1]) for r in rows], levels=False
    )


def volume_sample(
    conn: sa.Connection, stream: Stream, start_us: int, end_us: int
) -> VolumeSample | None:
    """The newest VOLUME_SAMPLE_CHUNKS chunks of the range, decoded without
    their levels: levels per message (deltas and snapshots apart), the share
    of messages whose top differs from the quote before (the quotes export's
    rule), the share of snapshots inside chunks; repeats of two collectors'
    chunks counted once."""
    batch = _newest_in(conn, stream, start_us, end_us, VOLUME_SAMPLE_CHUNKS)
    if batch is None:
        return None
    is_snapshot = (batch.flags & SNAPSHOT) != 0
    opens_chunk = np.ones(len(batch.msg_chunk), dtype=bool)
    opens_chunk[1:] = batch.msg_chunk[1:] != batch.msg_chunk[:-1]
    order = np.lexsort((is_snapshot, batch.u, batch.ts_us))
    ts, u, snap = batch.ts_us[order], batch.u[order], is_snapshot[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (ts[1:] != ts[:-1]) | (u[1:] != u[:-1]) | (snap[1:] != snap[:-1])
    order = order[first]
    if not len(order):
        return None
    levels = (batch.nb + batch.na)[order]
    snapshot = is_snapshot[order]
    flagged = order[(batch.flags[order] & TOP_CHANGED) != 0]
    tops = batch.tops[batch.top_of[flagged]]
    new = int(len(tops) > 0) + int(np.any(tops[1:] != tops[:-1], axis=1).sum())
    inner = int((snapshot & ~opens_chunk[order]).sum())
    return VolumeSample(
        len(order),
        float(levels[~snapshot].mean()) if (~snapshot).any() else 0.0,
        float(levels[snapshot].mean()) if snapshot.any() else None,
        new / len(order),
        inner / len(order),
    )


# Exchange time may run ahead of receive time (clock skew) by up to this: a
# message received at t can be stamped up to t + this.
CLOCK_SKEW_US = 10 * SECOND_US


CHUNKS_SCANNED = 2_000  # chunks read around a moment before giving up (then: unknown)


CHUNK_BATCH = 4


class RecordedTimes:
    """coverage.RecordTimes of one stream from its stored book messages: the
    packed chunks (schema 4) and the schema 1-3 log. A chunk is found by its
    first message's exchange time, so the receive times are decoded from the
    chunks around the moment asked about."""

    def __init__(self, conn: sa.Connection, stream: Stream) -> None:
        self.conn = conn
        self.stream = stream
        self.cold = cold_log(conn, stream)

    def last_at_or_before(self, local_us: int) -> int | None:
        def keep(local: np.ndarray) -> np.ndarray:
            return local[local <= local_us]

        hit = self._first_hit(
            "ts_us <= :t + :skew ORDER BY ts_us DESC", {"t": local_us, "skew": CLOCK_SKEW_US}, keep
        )
        cold = self._cold_hit(0, local_us + CLOCK_SKEW_US + 1, True, keep)
        found = [
            self._legacy("<=", "DESC", local_us),
            int(hit.max()) if hit.size else None,
            int(cold.max()) if cold.size else None,
        ]
        return max((t for t in found if t is not None), default=None)

    def first_after(self, local_us: int, before_us: int) -> int | None:
        def keep(local: np.ndarray) -> np.ndarray:
            return local[local > local_us]

        hit = self._first_hit(
            "ts_us >= :t - :skew AND ts_us < :b + :skew ORDER BY ts_us",
            {"t": local_us, "b": before_us, "skew": CLOCK_SKEW_US},
            keep,
        )
        cold = self._cold_hit(local_us - CLOCK_SKEW_US, before_us + CLOCK_SKEW_US, False, keep)
        found = [
            self._legacy(">", "ASC", local_us),
            int(hit.min()) if hit.size else None,
            int(cold.min()) if cold.size else None,
        ]
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
            {"sid": self.stream.id, "n": CHUNKS_SCANNED, **params},
        )
        with contextlib.closing(result):
            for ts_us, u, payload in result:
                picked = keep(decode_chunk(bytes(payload), int(ts_us), int(u)).local_us)
                if picked.size:
                    return picked
        return np.empty(0, dtype=np.int64)

    def _cold_hit(
        self,
        start_us: int,
        end_us: int,
        newest_first: bool,
        keep: Callable[[np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """As _first_hit, over the chunks of cold days starting in [start, end)."""
        rows = self.cold.rows(CHUNKS, start_us, end_us, newest_first, ["ts_us", "u", "payload"])
        for ts_us, u, payload in itertools.islice(rows, CHUNKS_SCANNED):
            picked = keep(decode_chunk(payload, int(ts_us), int(u)).local_us)
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
            {
                "i": self.stream.instrument_id,
                "d": self.stream.depth,
                "t": local_us,
                "skew": CLOCK_SKEW_US,
            },
        ).scalar()
        return None if value is None else int(value)
