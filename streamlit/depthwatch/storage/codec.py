"""The packed book format of schema 4: many book messages in one bytea.

A *chunk* is a run of one stream's book messages stored as one row of
`book_chunks` (the messages one flush took, never crossing a second of
exchange time). Its payload is a sequence of LEB128 varints laid out by
column, so that equal or slowly changing values cost one byte and a reader
(NumPy here, PL/pgSQL in the database's `depthwatch_*` functions) decodes it
with one pass over the bytes:

    header  format, n (messages), price_exp, size_exp, seq_first,
            n_levels (bid + ask levels of all messages), n_tops
    per message (n values each, in this order):
            ts      zigzag(ts_i - ts_{i-1}) / unit, ts_{-1} = the row's ts_us
            local   zigzag(local_i - ts_i)
            match   0 when Bybit sent no `cts`, else zigzag(ts_i - cts_i) / unit + 1
            u       zigzag(u_i - u_{i-1} - 1), u_{-1} = the row's u - 1
            seq     zigzag(seq_i - seq_{i-1}), seq_{-1} = seq_first
            flags   bit 0: a snapshot; bit 1: the top of book changed (a top follows)
            nb, na  bid and ask levels of the message
    levels  (n_levels values each, message by message, bids then asks):
            price   zigzag(ticks - the previous level's ticks on the same side)
            size    lots
    tops    (4 x n_tops, for each message flagged bit 1, after the message):
            zigzag deltas of best bid ticks, bid lots, best ask ticks, ask lots
            against the previous top (0 at the start; an empty side is 0, 0)

The format says the unit of the ts and match columns: FORMAT_MS (2), 1000 us,
when every ts and cts of the chunk is a whole millisecond (what Bybit sends;
a 20 ms step then costs one byte, not three), else FORMAT_US (1), 1 us.
Receive times (local) are always in microseconds.

Prices and sizes are integers of 10**-price_exp and 10**-size_exp: exact,
since the exponent is chosen per chunk as the most decimals any value needs.
Decoded text has exactly `exp` decimals (and "0" for a zero size): the digits
Bybit sends, which use a fixed number of decimals per symbol.

Depth snapshots (the dashboard's 1 s top-N books) use the same format: a
chunk of one snapshot message.

Why one file of ~720 lines: the layout above, its encoder and its decoder
must change together, and a reader checking one against the others wants
them side by side (the PL/pgSQL decoder in sql_functions.py is the third).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np

FORMAT_US = 1  # ts and match columns in microseconds
FORMAT_MS = 2  # ... in milliseconds
_PRICE = itemgetter(0)
_SIZE = itemgetter(1)
HEADER_FIELDS = 7
SNAPSHOT = 1
TOP_CHANGED = 2

# Decimal exponents tried for a chunk's prices and sizes. 15 significant
# digits is the book's own limit (float keys), so 10**exp * value stays exact.
MAX_EXP = 12
POW10 = np.array([10.0**e for e in range(MAX_EXP + 1)])


@dataclass(slots=True)
class ChunkMessage:
    """One book message as the chunk encoder takes it (the writer's view of a
    BookUpdate plus the top of book after it, when that changed)."""

    ts_us: int
    local_us: int
    match_us: int | None
    u: int
    seq: int
    is_snapshot: bool
    bids: list[list[str]]
    asks: list[list[str]]
    top: tuple[str | None, str | None, str | None, str | None] | None = None


# ---- varints ---------------------------------------------------------------


def zigzag(values: np.ndarray) -> np.ndarray:
    """Signed int64 -> unsigned (0, -1, 1, -2 ... -> 0, 1, 2, 3 ...)."""
    v = values.astype(np.int64)
    return ((v << 1) ^ (v >> 63)).astype(np.uint64)


def unzigzag(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.uint64)
    return ((v >> np.uint64(1)).astype(np.int64)) ^ -((v & np.uint64(1)).astype(np.int64))


def decode_varints(data: bytes | memoryview) -> np.ndarray:
    """All varints of `data` as uint64, in order."""
    b = np.frombuffer(data, dtype=np.uint8)
    if not len(b):
        return np.zeros(0, dtype=np.uint64)
    last = (b & 0x80) == 0
    if not last[-1]:
        raise ValueError("truncated varint")
    index = np.concatenate(([0], np.cumsum(last)[:-1]))  # value number of each byte
    starts = np.flatnonzero(np.concatenate(([True], last[:-1])))
    position = np.arange(len(b)) - starts[index]
    parts = (b & 0x7F).astype(np.uint64) << (np.uint64(7) * position.astype(np.uint64))
    return np.add.reduceat(parts, starts)


# ---- decimals <-> integers --------------------------------------------------


def decimals(texts: Sequence[str]) -> int:
    """Digits after the point of the first text (0 for none or no text)."""
    if not texts:
        return 0
    point = texts[0].find(".")
    return 0 if point < 0 else min(MAX_EXP, len(texts[0]) - point - 1)


def unit_text(units: int, exp: int) -> str:
    """An integer of 10**-exp as the exchange writes it ("0" for zero)."""
    if units == 0:
        return "0"
    if exp == 0:
        return str(units)
    digits = str(units).rjust(exp + 1, "0")
    return f"{digits[:-exp]}.{digits[-exp:]}"


def most_decimals(texts: Sequence[str]) -> int:
    """Digits after the point of the text that has the most (0 for none)."""
    return max((len(t) - t.index(".") - 1 for t in texts if "." in t), default=0)


def text_units(text: str, exp: int) -> int:
    """unit_text's inverse: a decimal text as an integer of 10**-exp (exp at
    least the text's decimals)."""
    whole, _, fraction = text.partition(".")
    return int(whole + fraction.ljust(exp, "0"))


class TextCache:
    """unit_text with memory: prices and sizes recur constantly."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], str] = {}

    def __call__(self, units: int, exp: int) -> str:
        key = (units, exp)
        text = self._cache.get(key)
        if text is None:
            if len(self._cache) > 200_000:
                self._cache.clear()
            text = self._cache[key] = unit_text(units, exp)
        return text


# ---- chunks ----------------------------------------------------------------


@dataclass(slots=True)
class ChunkToEncode:
    """One chunk's messages and where its row starts; the exponents are the
    stream's so far (a chunk may raise them, never lower them)."""

    messages: Sequence[ChunkMessage]
    price_exp: int = 0
    size_exp: int = 0

    @property
    def ts_us(self) -> int:
        return self.messages[0].ts_us

    @property
    def u(self) -> int:
        return self.messages[0].u


def _within(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values[i] - values[i - 1] along runs of equal `groups` (sorted), the
    first of each run kept as it is."""
    deltas = np.diff(values, prepend=0)
    if len(values):
        first = np.flatnonzero(np.diff(groups, prepend=-1))
        deltas[first] = values[first]
    return deltas


@dataclass(slots=True)
class ChunkColumns:
    """Many chunks' messages laid out as the encoder reads them. A caller
    appends each message's `rows` entry (ts, local, cts or -1, u, seq, flags,
    number of bids, number of asks), its levels (bids then asks), and for a
    message flagged TOP_CHANGED the four texts of its top ("0" for an empty
    side), then closes the chunk with `end_chunk`. Building these lists is
    the only per-message Python work of encoding."""

    rows: list[tuple[int, int, int, int, int, int, int, int]] = field(default_factory=list)
    levels: list[list[str]] = field(default_factory=list)
    top_texts: list[str] = field(default_factory=list)  # bid, bid size, ask, ask size per top
    counts: list[tuple[int, int, int]] = field(default_factory=list)  # messages, levels, tops
    exps: list[tuple[int, int]] = field(default_factory=list)  # the exponents so far
    _marks: tuple[int, int, int] = (0, 0, 0)

    def end_chunk(self, price_exp: int = 0, size_exp: int = 0) -> None:
        """Close the chunk of the messages appended since the last call.
        Exponents are the stream's so far (a chunk may raise them, never
        lower them): the exchange's own decimals, read off the chunk's first
        level (Bybit writes a symbol's values with fixed decimals), raise
        them further, and so does any value that needs more (in encoding)."""
        rows, levels, tops = len(self.rows), len(self.levels), len(self.top_texts)
        m0, l0, t0 = self._marks
        self.counts.append((rows - m0, levels - l0, (tops - t0) // 4))
        self._marks = (rows, levels, tops)
        if levels > l0:
            first_price = self.levels[l0][0]
            first_sizes = [lv[1] for lv in self.levels[l0 : l0 + 4] if lv[1] != "0"][:1]
        else:
            first_price, first_sizes = (self.top_texts[t0] if tops > t0 else "0"), []
        self.exps.append(
            (max(price_exp, decimals((first_price,))), max(size_exp, decimals(first_sizes)))
        )


@dataclass(slots=True)
class Encoded:
    """The payloads of a ChunkColumns, with what the encoder learnt on the
    way: each chunk's final exponents and every top as integers (for
    per-second aggregates without parsing the texts again)."""

    payloads: list[bytes]
    exps: np.ndarray  # (chunks, 2): price_exp, size_exp
    tops: np.ndarray  # (tops, 4): bid ticks, bid lots, ask ticks, ask lots (0, 0 = empty)
    top_chunk: np.ndarray  # chunk of each top


def encode_chunks(chunks: Sequence[ChunkToEncode]) -> list[tuple[bytes, int, int]]:
    """The payloads of ChunkMessage chunks: (payload, price_exp, size_exp) per
    chunk (a convenience over ChunkColumns and encode_columns)."""
    columns = ChunkColumns()
    for chunk in chunks:
        for m in chunk.messages:
            flags = SNAPSHOT if m.is_snapshot else 0
            if m.top is not None:
                flags |= TOP_CHANGED
                columns.top_texts += (t or "0" for t in m.top)
            cts = -1 if m.match_us is None else m.match_us
            columns.rows.append(
                (m.ts_us, m.local_us, cts, m.u, m.seq, flags, len(m.bids), len(m.asks))
            )
            columns.levels += m.bids
            columns.levels += m.asks
        columns.end_chunk(chunk.price_exp, chunk.size_exp)
    encoded = encode_columns(columns)
    return [
        (payload, pe, se)
        for payload, (pe, se) in zip(encoded.payloads, encoded.exps.tolist(), strict=True)
    ]


def encode_columns(columns: ChunkColumns, prices: FloatCache | None = None) -> Encoded:
    """The payloads of many chunks at once (one flush's worth): a few NumPy
    passes over all their values, so a small chunk costs no more per message
    than a large one. Raises ValueError when a value is not a decimal of at
    most MAX_EXP decimals (nothing is encoded then). `prices` parses prices
    with memory across calls."""
    n_chunks = len(columns.counts)
    if not n_chunks:
        empty = np.zeros((0, 4), dtype=np.int64)
        return Encoded([], np.zeros((0, 2), dtype=np.int64), empty, np.zeros(0, np.int64))
    levels, top_texts = columns.levels, columns.top_texts
    per_chunk = np.array(columns.counts, dtype=np.int64).reshape(-1, 3)
    exps = np.array(columns.exps, dtype=np.int64).reshape(-1, 2)
    price_texts = list(map(_PRICE, levels)) + top_texts[0::2]
    size_texts = list(map(_SIZE, levels)) + top_texts[1::2]
    n_msgs, n_lvls, n_tops = per_chunk[:, 0], per_chunk[:, 1], per_chunk[:, 2]
    chunk_numbers = np.arange(n_chunks)
    msg_chunk = np.repeat(chunk_numbers, n_msgs)
    lvl_chunk = np.repeat(chunk_numbers, n_lvls)
    top_chunk = np.repeat(chunk_numbers, n_tops)

    value_chunk = np.concatenate((lvl_chunk, np.repeat(top_chunk, 2)))
    price_units = _units(price_texts, value_chunk, exps, 0, prices.parse if prices else _parse)
    size_units = _units(size_texts, value_chunk, exps, 1)
    n_levels = len(levels)

    table = np.array(columns.rows, dtype=np.int64).reshape(-1, 8)
    ts_a, local_a, cts_a, u_a, seq_a, flags_a = (table[:, k] for k in range(6))
    side_counts = table[:, 6:8]
    first_msg = np.concatenate(([0], np.cumsum(n_msgs)[:-1]))
    # Whole milliseconds throughout a chunk: its times are stored in them.
    not_ms = (ts_a % 1000 != 0) | ((cts_a >= 0) & (cts_a % 1000 != 0))
    chunk_ms = np.bincount(msg_chunk, weights=not_ms, minlength=n_chunks) == 0
    unit = np.where(chunk_ms, 1000, 1)[msg_chunk]
    dts = np.diff(ts_a, prepend=0)
    dts[first_msg] = 0
    dts //= unit
    du = np.diff(u_a, prepend=0) - 1
    du[first_msg] = 0
    dseq = np.diff(seq_a, prepend=0)
    dseq[first_msg] = 0
    match = np.where(cts_a < 0, np.uint64(0), zigzag((ts_a - cts_a) // unit) + np.uint64(1))

    # A level's price against the previous level of the same side in the same
    # chunk: for a book's neighbours, a few ticks.
    side_of_level = np.repeat(np.tile([0, 1], len(table)), side_counts.reshape(-1))
    group = lvl_chunk * 2 + side_of_level
    order = np.argsort(group, kind="stable")
    price_deltas = np.empty(n_levels, dtype=np.int64)
    price_deltas[order] = _within(group[order], price_units[:n_levels][order])

    tops = np.column_stack(
        (
            price_units[n_levels::2],
            size_units[n_levels::2],
            price_units[n_levels + 1 :: 2],
            size_units[n_levels + 1 :: 2],
        )
    ).reshape(-1, 4)
    top_deltas = np.diff(tops, axis=0, prepend=np.zeros((1, 4), dtype=np.int64))
    if len(tops):
        first_top = np.flatnonzero(np.diff(top_chunk, prepend=-1))
        top_deltas[first_top] = tops[first_top]

    # Every value's place in its chunk's payload (header, then the message,
    # level and top columns), all chunks laid end to end.
    sizes_of = HEADER_FIELDS + 8 * n_msgs + 2 * n_lvls + 4 * n_tops
    base = np.concatenate(([0], np.cumsum(sizes_of)[:-1]))
    values = np.empty(int(sizes_of.sum()), dtype=np.uint64)
    header = np.column_stack(
        (
            np.where(chunk_ms, FORMAT_MS, FORMAT_US),
            n_msgs,
            exps[:, 0],
            exps[:, 1],
            seq_a[first_msg],
            n_lvls,
            n_tops,
        )
    )
    values[(base[:, None] + np.arange(HEADER_FIELDS)).reshape(-1)] = header.reshape(-1)
    msg_index = np.arange(len(table)) - first_msg[msg_chunk]
    msg_base = base[msg_chunk] + HEADER_FIELDS + msg_index
    message_columns = (
        zigzag(dts),
        zigzag(local_a - ts_a),
        match,
        zigzag(du),
        zigzag(dseq),
        flags_a,
        side_counts[:, 0],
        side_counts[:, 1],
    )
    for k, column in enumerate(message_columns):
        values[msg_base + k * n_msgs[msg_chunk]] = column
    first_lvl = np.concatenate(([0], np.cumsum(n_lvls)[:-1]))
    lvl_base = (
        base[lvl_chunk]
        + HEADER_FIELDS
        + 8 * n_msgs[lvl_chunk]
        + np.arange(n_levels)
        - first_lvl[lvl_chunk]
    )
    values[lvl_base] = zigzag(price_deltas)
    values[lvl_base + n_lvls[lvl_chunk]] = size_units[:n_levels]
    first_top_row = np.concatenate(([0], np.cumsum(n_tops)[:-1]))
    top_base = (
        base[top_chunk]
        + HEADER_FIELDS
        + 8 * n_msgs[top_chunk]
        + 2 * n_lvls[top_chunk]
        + 4 * (np.arange(len(tops)) - first_top_row[top_chunk])
    )
    values[(top_base[:, None] + np.arange(4)).reshape(-1)] = zigzag(top_deltas.reshape(-1))

    data, value_ends = _varints_with_ends(values)
    ends = value_ends[np.cumsum(sizes_of) - 1].tolist()
    starts = [0, *ends[:-1]]
    payloads = [data[a:b] for a, b in zip(starts, ends, strict=True)]
    return Encoded(payloads, exps, tops, top_chunk)


class FloatCache:
    """Decimal text -> float, remembered. A stream's prices recur from message
    to message (the levels near the touch), and a lookup costs half a parse;
    sizes recur too seldom to gain (a third of a real book's sizes repeat
    within 50 messages, against three quarters of its prices)."""

    __slots__ = ("_floats", "_limit")

    def __init__(self, limit: int = 200_000) -> None:
        self._floats: dict[str, float] = {}
        self._limit = limit

    def parse(self, texts: list[str]) -> np.ndarray:
        # A miss is None, which NumPy makes NaN.
        values = np.array(list(map(self._floats.get, texts)), dtype=np.float64)
        missing = np.flatnonzero(np.isnan(values))
        if len(missing):
            new_texts = [texts[i] for i in missing.tolist()]
            new = np.array(new_texts, dtype=np.float64)
            values[missing] = new
            if len(self._floats) > self._limit:
                self._floats.clear()
            self._floats.update(zip(new_texts, new.tolist(), strict=True))
        return values


def _parse(texts: list[str]) -> np.ndarray:
    return np.array(texts, dtype=np.float64)


def _units(
    texts: list[str],
    chunk_of: np.ndarray,
    exps: np.ndarray,
    column: int,
    parse: Callable[[list[str]], np.ndarray] = _parse,
) -> np.ndarray:
    """Decimal strings -> integers of 10**-exp with each chunk's exponent,
    raising a chunk's exponent (in `exps`) until all its values are exact."""
    values = parse(texts) if texts else np.zeros(0)
    if not np.isfinite(values).all():
        raise ValueError("a value that is not a finite decimal")
    while True:
        exp = exps[chunk_of, column]
        scale = POW10[exp]
        units = np.rint(values * scale)
        # Exact when scaling back gives the parsed float again (values have at
        # most 15 significant digits, the parser's bound).
        bad = units / scale != values
        if not bad.any():
            return units.astype(np.int64)
        inexact = np.unique(chunk_of[bad])
        if (exps[inexact, column] >= MAX_EXP).any():
            raise ValueError("a decimal with more than 12 decimals")
        exps[inexact, column] += 1


def _varints_with_ends(values: np.ndarray) -> tuple[bytes, np.ndarray]:
    """encode_varints, plus the byte offset where each value ends. Byte k of
    every value longer than k bytes is written in one pass, over the values
    still that long: most are one or two bytes, so later passes are short."""
    v = values.astype(np.uint64)
    nbytes = np.ones(len(v), dtype=np.int64)
    for k in range(1, 10):
        longer = v >= np.uint64(1 << (7 * k))
        if not longer.any():
            break
        nbytes += longer
    ends = np.cumsum(nbytes)
    out = np.empty(int(ends[-1]) if len(v) else 0, dtype=np.uint8)
    at, left = ends - nbytes, nbytes
    for k in range(int(nbytes.max()) if len(v) else 0):
        if k:
            still = left > k
            v, at, left = v[still], at[still], left[still]
        byte = (v & np.uint64(0x7F)).astype(np.uint8)
        byte |= (left > k + 1).astype(np.uint8) << 7
        out[at + k] = byte
        v = v >> np.uint64(7)
    return out.tobytes(), ends


def encode_chunk(
    messages: Sequence[ChunkMessage], price_exp: int = 0, size_exp: int = 0
) -> tuple[bytes, int, int]:
    """One chunk's payload (see encode_chunks)."""
    return encode_chunks([ChunkToEncode(messages, price_exp, size_exp)])[0]


def encode_varints(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of every value, in order."""
    return _varints_with_ends(values)[0]


@dataclass(slots=True)
class MessageColumns:
    """The message columns DecodedChunk and DecodedBatch open with, a value
    per message. Times in microseconds."""

    ts_us: np.ndarray
    local_us: np.ndarray
    match_us: np.ndarray  # -1 where Bybit sent no cts
    u: np.ndarray
    seq: np.ndarray
    flags: np.ndarray


@dataclass(slots=True)
class DecodedChunk(MessageColumns):
    """A chunk's columns: MessageColumns, then prices and sizes integers of
    10**-price_exp and 10**-size_exp; `level_start[i]` indexes message i's
    first bid in the level arrays (its asks follow its nb bids)."""

    nb: np.ndarray
    na: np.ndarray
    prices: np.ndarray
    sizes: np.ndarray
    level_start: np.ndarray
    top_of: np.ndarray  # per message: row in `tops` of the top after it (carried)
    tops: np.ndarray  # (n_tops, 4): bid ticks, bid lots, ask ticks, ask lots
    price_exp: int
    size_exp: int

    def __len__(self) -> int:
        return len(self.ts_us)


def decode_chunk(payload: bytes | memoryview, row_ts_us: int, row_u: int) -> DecodedChunk:
    """One chunk's columns: decode_many of one chunk (the one decoder of the
    format in Python), in the per-chunk shape."""
    batch = decode_many([payload], [row_ts_us], [row_u])
    return DecodedChunk(
        batch.ts_us,
        batch.local_us,
        batch.match_us,
        batch.u,
        batch.seq,
        batch.flags,
        batch.nb,
        batch.na,
        batch.ticks,
        batch.lots,
        batch.msg_first_level,
        batch.top_of,
        batch.tops,
        int(batch.price_exp[0]),
        int(batch.size_exp[0]),
    )


@dataclass(slots=True)
class DecodedBatch(MessageColumns):
    """Many chunks decoded at once, their columns laid end to end.
    MessageColumns, with `msg_chunk` (the chunk of each message); level
    columns (when decoded) with `level_chunk`, `level_msg` (the message of
    each level, an index into the message columns), `level_is_bid` and
    `level_rank` (0 for a side's best level in its message); prices and sizes
    as floats (the exchange's decimals applied)."""

    msg_chunk: np.ndarray
    msg_first_level: np.ndarray  # index of each message's first level
    nb: np.ndarray  # bid and ask levels of each message (its bids come first)
    na: np.ndarray
    prices: np.ndarray
    sizes: np.ndarray
    level_chunk: np.ndarray
    level_msg: np.ndarray
    level_is_bid: np.ndarray
    level_rank: np.ndarray
    # Exact values: integers of 10**-exp with each chunk's exponents.
    ticks: np.ndarray
    lots: np.ndarray
    price_exp: np.ndarray  # per chunk
    size_exp: np.ndarray
    # Per message its row in `tops` (the top after it, carried; -1 before its
    # chunk's first); tops as in DecodedChunk.
    top_of: np.ndarray
    tops: np.ndarray


def _segment_cumsum(values: np.ndarray, segment_start: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each True of `segment_start` (the first
    element must start a segment)."""
    total = np.cumsum(values)
    if not len(values):
        return total
    starts = np.flatnonzero(segment_start)
    before = total[starts] - values[starts]  # the sum up to each segment
    return total - before[np.cumsum(segment_start) - 1]


def _batch_levels(
    v: np.ndarray,
    vstart: np.ndarray,
    n: np.ndarray,
    n_levels: np.ndarray,
    msg_chunk: np.ndarray,
    msg_first_level: np.ndarray,
    nb: np.ndarray,
    na: np.ndarray,
    price_exp: np.ndarray,
    size_exp: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """decode_many's level columns: prices, sizes, level_chunk, level_msg,
    is_bid, rank, ticks, lots."""
    level_msg = np.repeat(np.arange(len(msg_chunk)), nb + na)
    level_chunk = msg_chunk[level_msg]
    first_lvl = np.concatenate(([0], np.cumsum(n_levels)[:-1]))
    lvl_i = np.arange(len(level_msg)) - first_lvl[level_chunk]
    lbase = vstart[level_chunk] + HEADER_FIELDS + 8 * n[level_chunk] + lvl_i
    deltas = unzigzag(v[lbase])
    lots = v[lbase + n_levels[level_chunk]].astype(np.int64)
    in_msg = np.arange(len(level_msg)) - msg_first_level[level_msg]
    is_bid = in_msg < nb[level_msg]
    rank = np.where(is_bid, in_msg, in_msg - nb[level_msg])
    # Prices are deltas along a side within a chunk, across its messages.
    group = level_chunk * 2 + (~is_bid)
    order = np.argsort(group, kind="stable")
    grouped = group[order]
    ticks = np.empty(len(deltas), dtype=np.int64)
    ticks[order] = _segment_cumsum(deltas[order], np.r_[True, grouped[1:] != grouped[:-1]])
    prices = ticks / POW10[price_exp[level_chunk]]
    sizes = lots / POW10[size_exp[level_chunk]]
    return prices, sizes, level_chunk, level_msg, is_bid, rank, ticks, lots


def decode_many(
    payloads: Sequence[bytes | memoryview],
    row_ts_us: Sequence[int],
    row_u: Sequence[int],
    levels: bool = True,
) -> DecodedBatch:
    """Many chunks in one NumPy pass (a dashboard window reads hundreds, an
    export thousands; one at a time, the calls cost more than the bytes).
    `levels=False` skips the level columns (not the tops)."""
    n_chunks = len(payloads)
    data = b"".join(payloads)
    b = np.frombuffer(data, dtype=np.uint8)
    v = decode_varints(data)
    lengths = np.fromiter(map(len, payloads), dtype=np.int64, count=n_chunks)
    ends_b = np.cumsum(lengths)
    last = (b & 0x80) == 0
    if not last[ends_b[lengths > 0] - 1].all():
        raise ValueError("a chunk ends inside a varint (cut short)")
    values_before = np.concatenate(([0], np.cumsum(last)))
    vstart = values_before[ends_b - lengths]  # index of each chunk's first value
    held = values_before[ends_b] - vstart  # values in each chunk
    if (held < HEADER_FIELDS).any():
        raise ValueError("a chunk shorter than its header")
    head = v[(vstart[:, None] + np.arange(HEADER_FIELDS)).reshape(-1)].astype(np.int64)
    head = head.reshape(n_chunks, HEADER_FIELDS)
    fmt, n, price_exp, size_exp, seq_first, n_levels, n_tops = (head[:, k] for k in range(7))
    if not np.isin(fmt, (FORMAT_US, FORMAT_MS)).all():
        raise ValueError(f"unknown chunk format {sorted(set(fmt.tolist()))}")
    # Each chunk must end where its header says: a corrupt one fails here,
    # not as wrong numbers.
    if (held != HEADER_FIELDS + 8 * n + 2 * n_levels + 4 * n_tops).any():
        extra = int((held - HEADER_FIELDS - 8 * n - 2 * n_levels - 4 * n_tops).max())
        raise ValueError(
            f"chunk has {extra} values past its end"
            if extra > 0
            else "a chunk holds fewer values than its header says"
        )
    unit = np.where(fmt == FORMAT_MS, 1000, 1)

    chunks = np.arange(n_chunks)
    msg_chunk = np.repeat(chunks, n)
    first_msg = np.concatenate(([0], np.cumsum(n)[:-1]))
    msg_i = np.arange(len(msg_chunk)) - first_msg[msg_chunk]
    base = vstart[msg_chunk] + HEADER_FIELDS + msg_i
    n_of = n[msg_chunk]

    def column(k: int) -> np.ndarray:
        return v[base + k * n_of]

    opens = msg_i == 0
    ts = np.asarray(row_ts_us, dtype=np.int64)[msg_chunk] + _segment_cumsum(
        unzigzag(column(0)) * unit[msg_chunk], opens
    )
    local = ts + unzigzag(column(1))
    match_raw = column(2).astype(np.int64)
    match = np.where(match_raw == 0, -1, ts - unzigzag((match_raw - 1).clip(0)) * unit[msg_chunk])
    u = (
        np.asarray(row_u, dtype=np.int64)[msg_chunk]
        - 1
        + _segment_cumsum(unzigzag(column(3)) + 1, opens)
    )
    seq = seq_first[msg_chunk] + _segment_cumsum(unzigzag(column(4)), opens)
    flags = column(5).astype(np.int64)
    nb = column(6).astype(np.int64)
    na = column(7).astype(np.int64)
    msg_first_level = np.concatenate(([0], np.cumsum(nb + na)[:-1]))
    # Tops follow the levels: 4 deltas each, running along their chunk.
    top_chunk = np.repeat(chunks, n_tops)
    first_top = np.concatenate(([0], np.cumsum(n_tops)[:-1]))
    top_i = np.arange(len(top_chunk)) - first_top[top_chunk]
    tbase = (
        vstart[top_chunk] + HEADER_FIELDS + 8 * n[top_chunk] + 2 * n_levels[top_chunk] + 4 * top_i
    )
    top_deltas = unzigzag(v[(tbase[:, None] + np.arange(4)).reshape(-1)]).reshape(-1, 4)
    tops = np.column_stack([_segment_cumsum(top_deltas[:, k], top_i == 0) for k in range(4)])
    changed = ((flags & TOP_CHANGED) != 0).astype(np.int64)
    top_of = _segment_cumsum(changed, opens) - 1  # within the chunk
    top_of = np.where(top_of >= 0, top_of + first_top[msg_chunk], -1)
    if levels:
        (prices, sizes, level_chunk, level_msg, is_bid, rank, ticks, lots) = _batch_levels(
            v, vstart, n, n_levels, msg_chunk, msg_first_level, nb, na, price_exp, size_exp
        )
    else:
        empty = np.zeros(0, dtype=np.int64)
        prices = sizes = np.zeros(0)
        level_chunk = level_msg = rank = ticks = lots = empty
        is_bid = np.zeros(0, dtype=bool)
    return DecodedBatch(
        ts,
        local,
        match,
        u,
        seq,
        flags,
        msg_chunk,
        msg_first_level,
        nb,
        na,
        prices,
        sizes,
        level_chunk,
        level_msg,
        is_bid,
        rank,
        ticks,
        lots,
        price_exp,
        size_exp,
        top_of,
        tops.reshape(-1, 4),
    )


def chunk_levels(
    chunk: DecodedChunk, i: int, text: TextCache
) -> tuple[list[list[str]], list[list[str]]]:
    """Message i's bid and ask levels as the exchange's [price, size] strings."""
    start = int(chunk.level_start[i])
    nb, na = int(chunk.nb[i]), int(chunk.na[i])
    pe, se = chunk.price_exp, chunk.size_exp
    prices = chunk.prices[start : start + nb + na].tolist()
    sizes = chunk.sizes[start : start + nb + na].tolist()
    levels = [[text(p, pe), text(s, se)] for p, s in zip(prices, sizes, strict=True)]
    return levels[:nb], levels[nb:]
