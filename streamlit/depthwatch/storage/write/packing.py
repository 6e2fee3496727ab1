"""From book records to the packed rows of schema 4 (pure, no I/O).

The writer thread hands `BookPacker.pack` everything the readers queued since
the last flush: book updates, the quotes that followed them, and top-N depth
snapshots. It returns the COPY lines of three tables:

- `book_chunks`: each stream's messages cut into chunks (storage/codec.py). A
  chunk ends at a flush, at a second of exchange time, and before a snapshot
  that follows a delta, so that `snapshot` (the chunk opens with one) marks
  every place a rebuild can start, and a reader bounds a time range by its
  chunks' first timestamps alone;
- `top_snapshots`: each depth snapshot as a chunk of one message;
- `top_seconds`: per stream and second of exchange time, the last top of book,
  the lowest bid, highest ask, widest spread and the message count. A second
  is written when a later second of its stream begins, and also when the
  clock is QUIET_SECOND_US past its end with no message of its stream in the
  flush (a quiet stream shows up on the dashboard without waiting for its
  next message); it is then written again, whole, if more of it arrives, and
  the database keeps the union (see tables.CONFLICT_ACTIONS). Each rewrite
  leaves a dead row version, so a second is written once where possible.

`split_due` decides which streams' messages a flush takes: at a slow pace a
stream's messages wait a little so that its chunk rows hold more of them.

Per-stream state (price and size exponents, the current top, the open
second) lives here across flushes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from depthwatch.records import SECOND_US, BookUpdate, DepthSnapshot, Quote, StreamKey
from depthwatch.storage.codec import (
    POW10,
    SNAPSHOT,
    TOP_CHANGED,
    ChunkColumns,
    Encoded,
    FloatCache,
    encode_columns,
)

# A quiet stream's open second is written this long after it ended (by the
# writer's clock): past the longest a message waits in `split_due`, so the
# second's last messages are in by then and it is written once.
QUIET_SECOND_US = 500_000

TopTexts = tuple[str, str, str, str]  # "0" for an empty side, as the codec stores it
TopValues = tuple[float, float, float, float]  # NaN for an empty side
_NO_TOP: TopTexts = ("0", "0", "0", "0")
_NAN = math.nan
_NO_VALUES: TopValues = (_NAN, _NAN, _NAN, _NAN)


@dataclass(slots=True)
class _Second:
    """One stream's open second of exchange time (NaN: not known)."""

    second_us: int
    last_ts_us: int = 0
    last_u: int = 0
    top: TopValues = _NO_VALUES
    bid_min: float = _NAN
    ask_max: float = _NAN
    spread_bps_max: float = _NAN
    messages: int = 0
    dirty: bool = False  # changed since it was last written

    def line(self, stream_id: int) -> str:
        values = (*self.top, self.bid_min, self.ask_max, self.spread_bps_max)
        text = "\t".join("\\N" if v != v else repr(v) for v in values)
        return (
            f"{stream_id}\t{self.second_us}\t{self.last_ts_us}\t{self.last_u}\t{text}\t"
            f"{self.messages}\n"
        )


def _spread_bps(bid: float, ask: float) -> float:
    return (ask - bid) / (ask + bid) * 20_000 if bid + ask > 0 else _NAN


@dataclass(slots=True)
class _StreamState:
    price_exp: int = 0
    size_exp: int = 0
    top: TopTexts = _NO_TOP  # after the last message packed
    top_values: TopValues = _NO_VALUES
    second: _Second | None = None


@dataclass(slots=True)
class _Chunk:
    """What the packer keeps of a chunk it laid out, for its row and its second."""

    stream: StreamKey
    ts_us: int
    u: int
    messages: int
    snapshot: bool
    last_ts_us: int
    last_u: int


@dataclass
class Packed:
    """One flush's rows, as COPY lines per table."""

    lines: dict[str, list[str]] = field(default_factory=dict)
    book_local_us: list[int] = field(default_factory=list)  # every message's receive time
    # Messages that could not be encoded (no decimal of at most 12 decimals;
    # the parser lets none through): left out, so their stream's log has a
    # hole that readers see as a `u` gap.
    rejected: list[str] = field(default_factory=list)


Pair = tuple[BookUpdate, Quote | None]


class BookPacker:
    def __init__(self, stream_id: Callable[[StreamKey], int]) -> None:
        self._stream_id = stream_id
        self._streams: dict[StreamKey, _StreamState] = {}
        self._prices = FloatCache()

    def pack(
        self,
        updates: Sequence[Pair],
        snapshots: Sequence[DepthSnapshot],
        now_us: int | None = None,
        final: bool = False,
    ) -> Packed:
        """`updates` in arrival order, each with the quote it made (None when
        the top of book did not change). `now_us` is the writer's clock (None:
        every quiet stream's open second is written now); `final` writes every
        open second that changed (a stopping or draining writer)."""
        quiet_before = None if final or now_us is None else now_us - QUIET_SECOND_US
        try:
            packed = self._pack(updates, snapshots, quiet_before)
        except ValueError:
            rejected: list[str] = []
            updates = [p for p in updates if _encodable(p[0], rejected)]
            snapshots = [s for s in snapshots if _encodable(s, rejected)]
            packed = self._pack(updates, snapshots, quiet_before)
            packed.rejected = rejected
        if final:
            packed.lines["top_seconds"] += self._open_seconds()
        return packed

    def _open_seconds(self) -> list[str]:
        """The lines of every open second that changed since it was written."""
        lines = []
        for stream, state in self._streams.items():
            second = state.second
            if second is not None and second.dirty:
                second.dirty = False
                lines.append(second.line(self._stream_id(stream)))
        return lines

    @property
    def unwritten_seconds(self) -> bool:
        """Whether an open second changed since it was written: the next pack
        writes it (a stopping writer keeps packing until it has)."""
        return any(st.second is not None and st.second.dirty for st in self._streams.values())

    def _pack(
        self, updates: Sequence[Pair], snapshots: Sequence[DepthSnapshot], quiet_before: int | None
    ) -> Packed:
        by_stream: dict[StreamKey, list[Pair]] = {}
        for pair in updates:
            group = by_stream.get(pair[0].stream)
            if group is None:
                by_stream[pair[0].stream] = [pair]
            else:
                group.append(pair)
        streams = self._streams
        for stream in by_stream:
            if stream not in streams:
                streams[stream] = _StreamState()
        for snapshot in snapshots:
            if snapshot.stream not in streams:
                streams[snapshot.stream] = _StreamState()

        columns = ChunkColumns()
        chunks: list[_Chunk] = []
        ends_top: dict[StreamKey, TopTexts] = {}
        for stream, pairs in by_stream.items():
            state = streams[stream]
            ends_top[stream] = _lay_out(stream, pairs, state, columns, chunks)
        for s in snapshots:
            state = streams[s.stream]
            columns.rows.append(
                (s.exchange_us, s.local_us, -1, s.update_id, 0, SNAPSHOT, len(s.bids), len(s.asks))
            )
            columns.levels += s.bids
            columns.levels += s.asks
            columns.end_chunk(state.price_exp, state.size_exp)

        encoded = encode_columns(columns, self._prices)  # raises before any state changes

        for stream, top in ends_top.items():
            streams[stream].top = top
        exps = encoded.exps.tolist()
        chunk_lines = []
        for chunk, payload, (price_exp, size_exp) in zip(
            chunks, encoded.payloads, exps, strict=False
        ):
            state = streams[chunk.stream]
            state.price_exp, state.size_exp = price_exp, size_exp
            chunk_lines.append(
                f"{self._stream_id(chunk.stream)}\t{chunk.ts_us}\t{chunk.u}\t{chunk.messages}\t"
                f"{'t' if chunk.snapshot else 'f'}\t\\\\x{payload.hex()}\n"
            )
        snapshot_lines = [
            f"{self._stream_id(s.stream)}\t{s.exchange_us}\t\\\\x{payload.hex()}\n"
            for s, payload in zip(snapshots, encoded.payloads[len(chunks) :], strict=True)
        ]
        return Packed(
            lines={
                "book_chunks": chunk_lines,
                "top_snapshots": snapshot_lines,
                "top_seconds": self._fold_seconds(chunks, encoded, by_stream.keys(), quiet_before),
            },
            book_local_us=[pair[0].local_us for pair in updates],
        )

    def _fold_seconds(
        self,
        chunks: list[_Chunk],
        encoded: Encoded,
        packed_streams: Collection[StreamKey],
        quiet_before: int | None,
    ) -> list[str]:
        """Fold each chunk's tops into its stream's open second; the lines of
        the seconds that closed (a later second began), and of the open
        seconds of streams with no message in this flush that ended before
        `quiet_before` (None: all of them)."""
        lines: list[str] = []
        if chunks:
            aggregates = _chunk_tops(encoded, len(chunks))
            for chunk, (bid_min, ask_max, spread_max, *top) in zip(chunks, aggregates, strict=True):
                state = self._streams[chunk.stream]
                start = chunk.ts_us - chunk.ts_us % SECOND_US
                second = state.second
                if second is None or second.second_us != start:
                    if second is not None and second.dirty:
                        lines.append(second.line(self._stream_id(chunk.stream)))
                    # The top carried into the second stood in it too.
                    carried = state.top_values
                    second = state.second = _Second(
                        start,
                        top=carried,
                        bid_min=carried[0],
                        ask_max=carried[2],
                        spread_bps_max=_spread_bps(carried[0], carried[2]),
                    )
                second.bid_min = min(second.bid_min, bid_min, key=_nan_last)
                second.ask_max = max(second.ask_max, ask_max, key=_nan_first)
                second.spread_bps_max = max(second.spread_bps_max, spread_max, key=_nan_first)
                second.top = state.top_values = (top[0], top[1], top[2], top[3])
                second.last_ts_us, second.last_u = chunk.last_ts_us, chunk.last_u
                second.messages += chunk.messages
                second.dirty = True
        for stream, state in self._streams.items():
            second = state.second
            if (
                stream not in packed_streams
                and second is not None
                and second.dirty
                and (quiet_before is None or second.second_us + SECOND_US <= quiet_before)
            ):
                second.dirty = False
                lines.append(second.line(self._stream_id(stream)))
        return lines


def split_due(
    pairs: Sequence[Pair], now_us: int, hold_us: int, enough: int
) -> tuple[list[Pair], list[Pair]]:
    """The messages of the streams due for a chunk, and the rest (held for a
    later flush), each in arrival order. A stream is due once `enough` of its
    messages wait or its oldest has waited `hold_us` (by receive time): a
    busy stream is written at every flush, a slow one every `hold_us`, with
    several messages per chunk row."""
    oldest: dict[StreamKey, int] = {}
    counts: dict[StreamKey, int] = {}
    for update, _ in pairs:
        stream = update.stream
        if stream in counts:
            counts[stream] += 1
        else:
            counts[stream] = 1
            oldest[stream] = update.local_us
    due = {s for s, n in counts.items() if n >= enough or now_us - oldest[s] >= hold_us}
    if len(due) == len(counts):
        return list(pairs), []
    taken: list[Pair] = []
    held: list[Pair] = []
    for pair in pairs:
        (taken if pair[0].stream in due else held).append(pair)
    return taken, held


def _nan_last(value: float) -> float:
    return math.inf if value != value else value


def _nan_first(value: float) -> float:
    return -math.inf if value != value else value


def _lay_out(
    stream: StreamKey,
    pairs: list[Pair],
    state: _StreamState,
    columns: ChunkColumns,
    chunks: list[_Chunk],
) -> TopTexts:
    """Append a stream's messages to `columns`, cut into chunks: a new chunk
    at each second of exchange time, and at a snapshot after a delta. Each
    chunk's first message carries the top of book, so a chunk reads alone.
    Returns the top after the last message."""
    rows, levels, top_texts = columns.rows, columns.levels, columns.top_texts
    top = state.top
    second_start = second_end = 0
    previous_snapshot = False
    first: BookUpdate | None = None
    count = 0
    last: BookUpdate | None = None
    for update, quote in pairs:
        ts = update.exchange_us
        snapshot = update.is_snapshot
        if not second_start <= ts < second_end or (snapshot and not previous_snapshot):
            if first is not None and last is not None:
                columns.end_chunk(state.price_exp, state.size_exp)
                chunks.append(_chunk(stream, first, last, count))
            second_start = ts - ts % SECOND_US
            second_end = second_start + SECOND_US
            first, count = update, 0
            if quote is None:  # the chunk's first message carries the top
                top_texts += top
                flags = TOP_CHANGED
            else:
                flags = 0
        else:
            flags = 0
        if quote is not None:
            top = (
                quote.bid_price or "0",
                quote.bid_size or "0",
                quote.ask_price or "0",
                quote.ask_size or "0",
            )
            top_texts += top
            flags = TOP_CHANGED
        if snapshot:
            flags |= SNAPSHOT
        previous_snapshot = snapshot
        bids, asks = update.bids, update.asks
        cts = update.match_us
        rows.append(
            (
                ts,
                update.local_us,
                -1 if cts is None else cts,
                update.update_id,
                update.sequence,
                flags,
                len(bids),
                len(asks),
            )
        )
        levels += bids
        levels += asks
        count += 1
        last = update
    if first is not None and last is not None:
        columns.end_chunk(state.price_exp, state.size_exp)
        chunks.append(_chunk(stream, first, last, count))
    return top


def _chunk(stream: StreamKey, first: BookUpdate, last: BookUpdate, count: int) -> _Chunk:
    return _Chunk(
        stream,
        first.exchange_us,
        first.update_id,
        count,
        first.is_snapshot,
        last.exchange_us,
        last.update_id,
    )


def _chunk_tops(encoded: Encoded, n_chunks: int) -> list[list[float]]:
    """Per log chunk (the first n_chunks; each has at least one top): the
    lowest bid, highest ask and widest spread of its tops, then its last top
    (bid, bid size, ask, ask size); NaN for an empty side. Floats of integers
    over a power of ten: the same floats as parsing the texts (one correctly
    rounded division)."""
    tops, top_chunk = encoded.tops, encoded.top_chunk
    in_log = top_chunk < n_chunks
    tops, top_chunk = tops[in_log], top_chunk[in_log]
    price_scale = POW10[encoded.exps[top_chunk, 0]]
    size_scale = POW10[encoded.exps[top_chunk, 1]]
    bid = np.where(tops[:, 0] > 0, tops[:, 0] / price_scale, np.nan)
    ask = np.where(tops[:, 2] > 0, tops[:, 2] / price_scale, np.nan)
    bid_size = np.where(tops[:, 0] > 0, tops[:, 1] / size_scale, np.nan)
    ask_size = np.where(tops[:, 2] > 0, tops[:, 3] / size_scale, np.nan)
    with np.errstate(invalid="ignore"):
        spread = (ask - bid) / (ask + bid) * 20_000
    starts = np.flatnonzero(np.diff(top_chunk, prepend=-1))
    last = np.append(starts[1:], len(top_chunk)) - 1
    table = np.column_stack(
        (
            np.fmin.reduceat(bid, starts),
            np.fmax.reduceat(ask, starts),
            np.fmax.reduceat(spread, starts),
            bid[last],
            bid_size[last],
            ask[last],
            ask_size[last],
        )
    )
    return table.tolist()


def _encodable(record: BookUpdate | DepthSnapshot, rejected: list[str]) -> bool:
    """Whether one message encodes alone; if not, why goes to `rejected`."""
    columns = ChunkColumns()
    columns.rows.append(
        (
            record.exchange_us,
            record.local_us,
            -1,
            record.update_id,
            0,
            0,
            len(record.bids),
            len(record.asks),
        )
    )
    columns.levels += record.bids
    columns.levels += record.asks
    columns.end_chunk()
    try:
        encode_columns(columns)
    except ValueError as exc:
        rejected.append(f"u={record.update_id} ts={record.exchange_us}: {exc}")
        return False
    return True
