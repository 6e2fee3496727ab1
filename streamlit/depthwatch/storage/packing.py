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
  is written when a later second begins, and also when a flush found no
  message of its stream (a quiet stream shows up on the dashboard without
  waiting); it is then written again, whole, if more of it arrives, and the
  database keeps the union (see writer.CONFLICT_ACTIONS).

Per-stream state (price and size exponents, the current top, the open
second) lives here across flushes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from depthwatch.records import BookUpdate, DepthSnapshot, Quote, StreamKey
from depthwatch.storage.codec import ChunkMessage, ChunkToEncode, encode_chunks

SECOND_US = 1_000_000

Top = tuple[str | None, str | None, str | None, str | None]


@dataclass(slots=True)
class _Second:
    """One stream's open second of exchange time."""

    second_us: int
    last_ts_us: int = 0
    last_u: int = 0
    bid: float | None = None
    bid_size: float | None = None
    ask: float | None = None
    ask_size: float | None = None
    bid_min: float | None = None
    ask_max: float | None = None
    spread_bps_max: float | None = None
    messages: int = 0
    dirty: bool = False  # changed since it was last written

    def take_top(self, top: Top) -> None:
        bid = None if top[0] is None else float(top[0])
        ask = None if top[2] is None else float(top[2])
        self.bid, self.ask = bid, ask
        self.bid_size = None if top[1] is None else float(top[1])
        self.ask_size = None if top[3] is None else float(top[3])
        if bid is not None and (self.bid_min is None or bid < self.bid_min):
            self.bid_min = bid
        if ask is not None and (self.ask_max is None or ask > self.ask_max):
            self.ask_max = ask
        if bid is not None and ask is not None and bid + ask > 0:
            spread = (ask - bid) / (ask + bid) * 20_000
            if self.spread_bps_max is None or spread > self.spread_bps_max:
                self.spread_bps_max = spread

    def line(self, stream_id: int) -> str:
        values = (
            self.bid,
            self.bid_size,
            self.ask,
            self.ask_size,
            self.bid_min,
            self.ask_max,
            self.spread_bps_max,
        )
        text = "\t".join("\\N" if v is None else repr(v) for v in values)
        return (
            f"{stream_id}\t{self.second_us}\t{self.last_ts_us}\t{self.last_u}\t{text}\t"
            f"{self.messages}\n"
        )


@dataclass(slots=True)
class _StreamState:
    price_exp: int = 0
    size_exp: int = 0
    top: Top = (None, None, None, None)
    second: _Second | None = None


@dataclass
class Packed:
    """One flush's rows, as COPY lines per table."""

    lines: dict[str, list[str]] = field(default_factory=dict)
    book_local_us: list[int] = field(default_factory=list)  # every message's receive time
    # Messages that could not be encoded (no decimal of at most 15 digits;
    # the parser lets none through): left out, so their stream's log has a
    # hole that readers see as a `u` gap.
    rejected: list[str] = field(default_factory=list)


class BookPacker:
    def __init__(self, stream_id: Callable[[StreamKey], int]) -> None:
        self._stream_id = stream_id
        self._streams: dict[StreamKey, _StreamState] = {}

    def pack(
        self, updates: Iterable[tuple[BookUpdate, Quote | None]], snapshots: list[DepthSnapshot]
    ) -> Packed:
        """`updates` in arrival order, each with the quote it made (None when
        the top of book did not change)."""
        by_stream: dict[StreamKey, list[ChunkMessage]] = {}
        local: list[int] = []
        for update, quote in updates:
            by_stream.setdefault(update.stream, []).append(
                ChunkMessage(
                    update.exchange_us,
                    update.local_us,
                    update.match_us,
                    update.update_id,
                    update.sequence,
                    update.is_snapshot,
                    update.bids,
                    update.asks,
                    None
                    if quote is None
                    else (quote.bid_price, quote.bid_size, quote.ask_price, quote.ask_size),
                )
            )
            local.append(update.local_us)

        to_encode: list[ChunkToEncode] = []
        chunk_streams: list[StreamKey] = []
        second_lines: list[str] = []
        for stream, messages in by_stream.items():
            state = self._streams.get(stream)
            if state is None:
                state = self._streams[stream] = _StreamState()
            # Seconds first: it leaves state.top as it stood before the
            # messages, which _cut gives each chunk's opening message.
            carried = state.top
            second_lines += self._fold_seconds(stream, state, messages)
            for cut in _cut(messages, carried):
                to_encode.append(ChunkToEncode(cut, state.price_exp, state.size_exp))
                chunk_streams.append(stream)
        # Quiet streams: their open second is written now, not at their next message.
        for stream, state in self._streams.items():
            second = state.second
            if stream not in by_stream and second is not None and second.dirty:
                second.dirty = False
                second_lines.append(second.line(self._stream_id(stream)))

        n_chunks = len(to_encode)
        to_encode += [
            ChunkToEncode(
                [
                    ChunkMessage(
                        s.exchange_us, s.local_us, None, s.update_id, 0, True, s.bids, s.asks
                    )
                ],
                *self._exps(s.stream),
            )
            for s in snapshots
        ]
        packed = Packed(book_local_us=local)
        try:
            encoded = encode_chunks(to_encode)
        except ValueError:
            to_encode, chunk_streams, n_chunks, encoded = _isolate_bad(
                to_encode, chunk_streams, n_chunks, packed
            )
        chunk_lines = []
        for chunk, stream, (payload, price_exp, size_exp) in zip(
            to_encode[:n_chunks], chunk_streams, encoded[:n_chunks], strict=True
        ):
            state = self._streams[stream]
            state.price_exp, state.size_exp = price_exp, size_exp
            chunk_lines.append(
                f"{self._stream_id(stream)}\t{chunk.ts_us}\t{chunk.u}\t{len(chunk.messages)}\t"
                f"{'t' if chunk.messages[0].is_snapshot else 'f'}\t\\\\x{payload.hex()}\n"
            )
        snapshot_lines = [
            f"{self._stream_id(s.stream)}\t{s.exchange_us}\t\\\\x{payload.hex()}\n"
            for s, (payload, _, _) in zip(snapshots, encoded[n_chunks:], strict=True)
        ]
        packed.lines = {
            "book_chunks": chunk_lines,
            "top_snapshots": snapshot_lines,
            "top_seconds": second_lines,
        }
        return packed

    @property
    def unwritten_seconds(self) -> bool:
        """Whether an open second changed since it was written: the next pack
        writes it (a stopping writer keeps packing until it has)."""
        return any(st.second is not None and st.second.dirty for st in self._streams.values())

    def _exps(self, stream: StreamKey) -> tuple[int, int]:
        state = self._streams.get(stream)
        return (state.price_exp, state.size_exp) if state is not None else (0, 0)

    def _fold_seconds(
        self, stream: StreamKey, state: _StreamState, messages: list[ChunkMessage]
    ) -> list[str]:
        """Fold the messages into per-second tops; the lines of the seconds
        that closed (a later second began)."""
        lines = []
        second = state.second
        top = state.top
        for m in messages:
            start = m.ts_us - m.ts_us % SECOND_US
            if second is None or start != second.second_us:
                if second is not None and second.dirty:
                    lines.append(second.line(self._stream_id(stream)))
                second = _Second(start)
                second.take_top(top)  # the top carried into the second
            if m.top is not None:
                top = m.top
                second.take_top(top)
            second.last_ts_us, second.last_u = m.ts_us, m.u
            second.messages += 1
            second.dirty = True
        state.second, state.top = second, top
        return lines


def _cut(messages: list[ChunkMessage], top: Top) -> list[list[ChunkMessage]]:
    """A stream's messages of one flush as chunks: a new chunk at each second
    of exchange time, and at a snapshot after a delta. Each chunk's first
    message carries the top of book (`top` is the one before the messages),
    so a chunk is read alone."""
    chunks: list[list[ChunkMessage]] = []
    current: list[ChunkMessage] = []
    second = -1
    previous_snapshot = False
    for m in messages:
        start = m.ts_us - m.ts_us % SECOND_US
        if current and (start != second or (m.is_snapshot and not previous_snapshot)):
            chunks.append(current)
            current = []
        if not current:
            second = start
            if m.top is None:
                m.top = top
        current.append(m)
        if m.top is not None:
            top = m.top
        previous_snapshot = m.is_snapshot
    if current:
        chunks.append(current)
    return chunks


def _isolate_bad(
    chunks: list[ChunkToEncode], streams: list[StreamKey], n_chunks: int, packed: Packed
) -> tuple[list[ChunkToEncode], list[StreamKey], int, list[tuple[bytes, int, int]]]:
    """Encode chunk by chunk, and a chunk that fails message by message,
    leaving out (and reporting in `packed.rejected`) what cannot be encoded."""
    kept: list[ChunkToEncode] = []
    kept_streams: list[StreamKey] = []
    encoded: list[tuple[bytes, int, int]] = []
    kept_chunks = 0
    for index, chunk in enumerate(chunks):
        is_log = index < n_chunks
        try:
            pieces = [chunk], encode_chunks([chunk])
        except ValueError:
            good = []
            for m in chunk.messages:
                try:
                    encode_chunks([ChunkToEncode([m], chunk.price_exp, chunk.size_exp)])
                    good.append(m)
                except ValueError as exc:
                    packed.rejected.append(f"u={m.u} ts={m.ts_us}: {exc}")
            if not good:
                continue
            retry = ChunkToEncode(good, chunk.price_exp, chunk.size_exp)
            pieces = [retry], encode_chunks([retry])
        kept += pieces[0]
        encoded += pieces[1]
        if is_log:
            kept_streams.append(streams[index])
            kept_chunks += 1
    return kept, kept_streams, kept_chunks, encoded
