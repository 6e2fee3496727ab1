"""The SQL functions that read the packed log in psql (storage/sql_functions.py),
against a real PostgreSQL: every value equal to what storage/codec.py decodes
from the stored rows, overlapping chunks of two collectors and legacy rows
merged without repeats, [from, to) bounds, and the errors an analyst meets."""

from __future__ import annotations

import dataclasses
import itertools
import random
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
import sqlalchemy as sa

from depthwatch.storage import codec, schema, sql_functions
from depthwatch.storage.read.book import quotes
from depthwatch.storage.read.streams import list_streams

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What README.md tells an analyst to type in psql.
README_QUERIES = (
    "SELECT * FROM depthwatch_tops('BTCUSDT', '2026-11-24 10:00Z', '2026-11-24 11:00Z',"
    " depth => 50, category => 'linear')",
    "SELECT * FROM depthwatch_book_updates('BTCUSDT', '2026-11-24 10:00Z',"
    " '2026-11-24 10:05Z', depth => 50, category => 'linear')",
)
SECOND_US = 1_000_000
START_US = int(datetime(2026, 11, 24, 10, tzinfo=UTC).timestamp()) * SECOND_US
END_US = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp()) * SECOND_US
Top = tuple[str | None, str | None, str | None, str | None]
NO_TOP: Top = (None, None, None, None)


def at(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


@pytest.fixture
def db(engine: sa.Engine) -> sa.Engine:
    """A migrated database with the functions; run through sa.text as the
    migrations run them (CREATE OR REPLACE: harmless once migration 4 has them)."""
    schema.upgrade(engine)
    with engine.begin() as conn:
        for statement in sql_functions.STATEMENTS:
            assert not sa.text(statement)._bindparams, "a ':name' in the SQL would be a bind"
            conn.execute(sa.text(statement))
    return engine


# ---- a realistic book feed ------------------------------------------------


@dataclasses.dataclass
class Feed:
    messages: list[codec.ChunkMessage]
    # The top of book after each message, by (ts_us, u, is_snapshot).
    top_after: dict[tuple[int, int, bool], Top]


def simulate(
    rng: random.Random,
    n: int,
    start_us: int,
    price_exp: int,
    size_exp: int,
    depth: int,
    cts: bool = True,
    snapshot_rate: float = 0.01,
    microseconds: bool = False,
) -> Feed:
    """Bybit-like messages: fixed decimals, ms exchange times (several per
    ms, gaps of seconds), deltas with deletes ("0"), an uncrossed book, now
    and then a snapshot or an emptied side, `cts` missing on spot and at
    random. `top` is set where the top of book changed. `microseconds`: times
    that are not whole milliseconds (stored in the codec's FORMAT_US)."""
    text = codec.unit_text
    mid = rng.randrange(10 ** (price_exp + 3), 10 ** (price_exp + 5))
    bids: dict[int, int] = {}
    asks: dict[int, int] = {}
    ts, u, seq = start_us, rng.randrange(1, 10**9), rng.randrange(10**9, 10**11)
    standing = NO_TOP
    messages: list[codec.ChunkMessage] = []
    top_after: dict[tuple[int, int, bool], Top] = {}

    def lots() -> int:
        return rng.randrange(1, 10 ** (size_exp + 2))

    for i in range(n):
        if rng.random() < 0.01:
            ts += rng.randrange(1, 4) * SECOND_US + rng.randrange(0, 1000) * 1000
        else:
            ts += rng.choice((0, 10_000, 10_000, 20_000, 100_000))
        if microseconds:
            ts += rng.randrange(0, 1000)
        u += 1
        seq += rng.randrange(1, 300)
        snapshot = i == 0 or rng.random() < snapshot_rate
        if snapshot:
            bids = {mid - k: lots() for k in range(depth)}
            asks = {} if rng.random() < 0.1 else {mid + 1 + k: lots() for k in range(depth)}
            bid_levels = sorted(bids.items(), reverse=True)
            ask_levels = sorted(asks.items())
        else:
            bid_levels, ask_levels = [], []
            mid += rng.choice((0, 0, 0, 1, -1, 2, -2))
            # Levels the move crossed are deleted, so the book stays uncrossed.
            for p in sorted(p for p in asks if p <= mid):
                del asks[p]
                ask_levels.append((p, 0))
            for p in sorted((p for p in bids if p > mid), reverse=True):
                del bids[p]
                bid_levels.append((p, 0))
            if rng.random() < 0.005:  # the ask side emptied
                ask_levels += [(p, 0) for p in sorted(asks)]
                asks.clear()
            for side, levels, sign in ((bids, bid_levels, -1), (asks, ask_levels, 1)):
                touched = {p for p, _ in levels}
                for _ in range(rng.randrange(0, 6)):
                    p = (
                        mid - rng.randrange(0, depth)
                        if sign < 0
                        else mid + 1 + rng.randrange(depth)
                    )
                    if p in touched:
                        continue
                    touched.add(p)
                    if p in side and rng.random() < 0.3:
                        del side[p]
                        levels.append((p, 0))
                    else:
                        side[p] = lots()
                        levels.append((p, side[p]))
        best_bid = max(bids) if bids else None
        best_ask = min(asks) if asks else None
        top: Top = (
            None if best_bid is None else text(best_bid, price_exp),
            None if best_bid is None else text(bids[best_bid], size_exp),
            None if best_ask is None else text(best_ask, price_exp),
            None if best_ask is None else text(asks[best_ask], size_exp),
        )
        match = None if not cts or rng.random() < 0.05 else ts - rng.randrange(0, 3) * 1000
        if match is not None and microseconds:
            match -= rng.randrange(0, 1000)
        messages.append(
            codec.ChunkMessage(
                ts_us=ts,
                local_us=ts + rng.randrange(500, 40_000),
                match_us=match,
                u=u,
                seq=seq,
                is_snapshot=snapshot,
                bids=[[text(p, price_exp), text(s, size_exp)] for p, s in bid_levels],
                asks=[[text(p, price_exp), text(s, size_exp)] for p, s in ask_levels],
                top=top if top != standing else None,
            )
        )
        top_after[(ts, u, snapshot)] = standing = top
    return Feed(messages, top_after)


def cut(
    feed: Feed, messages: list[codec.ChunkMessage], rng: random.Random, force_top: float = 1.0
) -> list[list[codec.ChunkMessage]]:
    """Chunks as a collector cuts them: at a second of exchange time, at a
    random flush, before a snapshot that follows a delta. Like the writer, a
    chunk's first message carries the top of book (with probability
    `force_top`; otherwise its top may be unknown until the first change)."""
    chunks: list[list[codec.ChunkMessage]] = []
    current: list[codec.ChunkMessage] = []
    limit = rng.randrange(1, 80)
    for m in messages:
        if current and (
            m.ts_us // SECOND_US != current[0].ts_us // SECOND_US
            or len(current) >= limit
            or (m.is_snapshot and not current[-1].is_snapshot)
        ):
            chunks.append(current)
            current, limit = [], rng.randrange(1, 80)
        if not current and m.top is None and rng.random() < force_top:
            m = dataclasses.replace(m, top=feed.top_after[(m.ts_us, m.u, m.is_snapshot)])
        current.append(m)
    if current:
        chunks.append(current)
    return chunks


def book_at(messages: list[codec.ChunkMessage], last: int) -> tuple[list, list]:
    """The whole book after messages[last], best levels first."""
    bids: dict[str, str] = {}
    asks: dict[str, str] = {}
    for m in messages[: last + 1]:
        if m.is_snapshot:
            bids.clear()
            asks.clear()
        for side, levels in ((bids, m.bids), (asks, m.asks)):
            for price, size in levels:
                if size == "0":
                    side.pop(price, None)
                else:
                    side[price] = size
    return (
        [[p, s] for p, s in sorted(bids.items(), key=lambda kv: -Decimal(kv[0]))],
        [[p, s] for p, s in sorted(asks.items(), key=lambda kv: Decimal(kv[0]))],
    )


def received_by(messages: list[codec.ChunkMessage], rng: random.Random) -> list[codec.ChunkMessage]:
    """The same messages as another collector receives them (its own local times)."""
    return [
        dataclasses.replace(m, local_us=m.local_us + rng.randrange(-300, 3000)) for m in messages
    ]


# ---- storing --------------------------------------------------------------


def add_stream(conn: sa.Connection, symbol: str, depth: int, category: str = "linear") -> int:
    iid = conn.execute(
        sa.text(
            """INSERT INTO instruments (exchange, category, symbol) VALUES ('bybit', :c, :s)
               ON CONFLICT (exchange, category, symbol) DO UPDATE SET symbol = excluded.symbol
               RETURNING id"""
        ),
        {"c": category, "s": symbol},
    ).scalar_one()
    return int(
        conn.execute(
            sa.text("INSERT INTO streams (instrument_id, depth) VALUES (:i, :d) RETURNING id"),
            {"i": iid, "d": depth},
        ).scalar_one()
    )


def days_of(messages: Iterable[codec.ChunkMessage]) -> set[int]:
    return {m.ts_us // schema.DAY_US for m in messages}


def store_chunks(
    conn: sa.Connection, stream_id: int, chunks: list[list[codec.ChunkMessage]], rng: random.Random
) -> None:
    """Encode as the writer does (flushes of several chunks, the stream's
    exponents carried from flush to flush) and insert; a chunk another
    collector already stored (same key) is kept as it is."""
    schema.ensure_partitions(conn, days_of(m for chunk in chunks for m in chunk))
    price_exp = size_exp = 0
    rows = []
    at_chunk = 0
    while at_chunk < len(chunks):
        flush = chunks[at_chunk : at_chunk + rng.randrange(1, 12)]
        at_chunk += len(flush)
        encoded = codec.encode_chunks([codec.ChunkToEncode(c, price_exp, size_exp) for c in flush])
        for chunk, (payload, pe, se) in zip(flush, encoded, strict=True):
            price_exp, size_exp = max(price_exp, pe), max(size_exp, se)
            rows.append(
                {
                    "s": stream_id,
                    "t": chunk[0].ts_us,
                    "u": chunk[0].u,
                    "n": len(chunk),
                    "snap": chunk[0].is_snapshot,
                    "p": payload,
                }
            )
    conn.execute(
        sa.text(
            """INSERT INTO book_chunks (stream_id, ts_us, u, n, snapshot, payload)
               VALUES (:s, :t, :u, :n, :snap, :p) ON CONFLICT DO NOTHING"""
        ),
        rows,
    )


def store_legacy(conn: sa.Connection, stream_id: int, messages: list[codec.ChunkMessage]) -> None:
    """Schema 1-3 rows: book_events with numeric arrays, quotes where the top changed."""
    schema.ensure_partitions(conn, days_of(messages))
    iid, depth = conn.execute(
        sa.text("SELECT instrument_id, depth FROM streams WHERE id = :s"), {"s": stream_id}
    ).one()
    conn.execute(
        sa.text(
            """INSERT INTO book_events VALUES (:i, :d, :t, :l, :m, :u, :q, :snap,
                   CAST(:bp AS numeric[]), CAST(:bs AS numeric[]),
                   CAST(:ap AS numeric[]), CAST(:az AS numeric[]))"""
        ),
        [
            {
                "i": iid,
                "d": depth,
                "t": m.ts_us,
                "l": m.local_us,
                "m": m.match_us,
                "u": m.u,
                "q": m.seq,
                "snap": m.is_snapshot,
                "bp": [p for p, _ in m.bids],
                "bs": [s for _, s in m.bids],
                "ap": [p for p, _ in m.asks],
                "az": [s for _, s in m.asks],
            }
            for m in messages
        ],
    )
    quotes = [m for m in messages if m.top is not None]
    conn.execute(
        sa.text(
            """INSERT INTO quotes VALUES (:i, :d, :t, :l, :u, CAST(:bp AS numeric),
                   CAST(:bs AS numeric), CAST(:ap AS numeric), CAST(:az AS numeric))
               ON CONFLICT DO NOTHING"""
        ),
        [
            {
                "i": iid,
                "d": depth,
                "t": m.ts_us,
                "l": m.local_us,
                "u": m.u,
                "bp": m.top[0],
                "bs": m.top[1],
                "ap": m.top[2],
                "az": m.top[3],
            }
            for m in quotes
            if m.top is not None
        ],
    )


# ---- what codec.py reads from the stored rows -------------------------------


def stored_chunks(conn: sa.Connection, stream_id: int) -> list[tuple]:
    return [
        tuple(r)
        for r in conn.execute(
            sa.text(
                """SELECT ts_us, u, n, snapshot, payload FROM book_chunks WHERE stream_id = :s
                   ORDER BY ts_us, u, n, snapshot"""
            ),
            {"s": stream_id},
        )
    ]


def top_texts(chunk: codec.DecodedChunk, row: int) -> Top:
    """A decoded top as text; an empty side (price 0) is NULL."""
    if row < 0:
        return NO_TOP
    bid, bid_size, ask, ask_size = (int(x) for x in chunk.tops[row])
    pe, se = chunk.price_exp, chunk.size_exp
    return (
        None if bid == 0 else codec.unit_text(bid, pe),
        None if bid == 0 else codec.unit_text(bid_size, se),
        None if ask == 0 else codec.unit_text(ask, pe),
        None if ask == 0 else codec.unit_text(ask_size, se),
    )


def expected_updates(conn: sa.Connection, stream_id: int, from_us: int, to_us: int) -> list[tuple]:
    """(ts_us, local_us, u, seq, is_snapshot, side, price, amount) rows of
    depthwatch_book_updates: each message once (the legacy row, else the copy
    of the first chunk by key, as book_events keeps it), in (ts_us,
    seq, u, is_snapshot) order."""
    text = codec.TextCache()
    copies: dict[tuple[int, int, int, bool], tuple[tuple, int, list[tuple[str, str, str]]]] = {}
    for c_ts, c_u, c_n, c_snap, payload in stored_chunks(conn, stream_id):
        chunk = codec.decode_chunk(payload, c_ts, c_u)
        for i in range(len(chunk)):
            ts = int(chunk.ts_us[i])
            if not from_us <= ts < to_us:
                continue
            key = (ts, int(chunk.seq[i]), int(chunk.u[i]), bool(chunk.flags[i] & codec.SNAPSHOT))
            rank = (1, c_ts, c_u, c_n, c_snap)
            if key not in copies or rank < copies[key][0]:
                bids, asks = codec.chunk_levels(chunk, i, text)
                levels = [("bid", p, s) for p, s in bids] + [("ask", p, s) for p, s in asks]
                copies[key] = (rank, int(chunk.local_us[i]), levels)
    legacy = conn.execute(
        sa.text(
            """SELECT e.ts_us, e.local_us, e.u, e.seq, e.is_snapshot, e.bid_prices::text[],
                      e.bid_sizes::text[], e.ask_prices::text[], e.ask_sizes::text[]
               FROM book_events e JOIN streams s
                 ON s.instrument_id = e.instrument_id AND s.depth = e.depth
               WHERE s.id = :s AND e.ts_us >= :f AND e.ts_us < :t"""
        ),
        {"s": stream_id, "f": from_us, "t": to_us},
    )
    for ts, local, u, seq, snap, bp, bs, ap, az in legacy:
        levels = [("bid", p, s) for p, s in zip(bp, bs, strict=True)]
        levels += [("ask", p, s) for p, s in zip(ap, az, strict=True)]
        copies[(ts, seq, u, snap)] = ((0,), local, levels)
    rows = []
    for key in sorted(copies):
        ts, seq, u, snap = key
        _, local, levels = copies[key]
        rows += [(ts, local, u, seq, snap, side, p, s) for side, p, s in levels]
    return rows


def expected_tops(conn: sa.Connection, stream_id: int, from_us: int, to_us: int) -> list[tuple]:
    """(ts_us, local_us, u, bid, bid size, ask, ask size) rows of depthwatch_tops:
    the flagged messages of the chunks and the legacy quotes, once per (ts_us,
    u: the legacy quote, else the first chunk's), in (ts_us, seq (a chunk
    copy's; legacy first without), u) order, without repeats of the row before."""
    copies: dict[tuple[int, int], tuple[tuple, int | None, int, Top]] = {}
    for c_ts, c_u, c_n, c_snap, payload in stored_chunks(conn, stream_id):
        chunk = codec.decode_chunk(payload, c_ts, c_u)
        for i in range(len(chunk)):
            ts, u = int(chunk.ts_us[i]), int(chunk.u[i])
            if not (chunk.flags[i] & codec.TOP_CHANGED and from_us <= ts < to_us):
                continue
            rank = (1, c_ts, c_u, c_n, c_snap)
            if (ts, u) not in copies or rank < copies[(ts, u)][0]:
                top = top_texts(chunk, int(chunk.top_of[i]))
                copies[(ts, u)] = (rank, int(chunk.seq[i]), int(chunk.local_us[i]), top)
    legacy = conn.execute(
        sa.text(
            """SELECT q.ts_us, q.local_us, q.u, q.bid_price::text, q.bid_size::text,
                      q.ask_price::text, q.ask_size::text
               FROM quotes q JOIN streams s
                 ON s.instrument_id = q.instrument_id AND s.depth = q.depth
               WHERE s.id = :s AND q.ts_us >= :f AND q.ts_us < :t"""
        ),
        {"s": stream_id, "f": from_us, "t": to_us},
    )
    for ts, local, u, *top in legacy:  # its local time, the seq of a chunk's copy
        seq = copies[(ts, u)][1] if (ts, u) in copies else None
        copies[(ts, u)] = ((0,), seq, local, tuple(top))  # type: ignore[assignment]

    def order(key: tuple[int, int]) -> tuple[int, bool, int, int]:
        seq = copies[key][1]
        return (key[0], seq is not None, seq or 0, key[1])

    rows: list[tuple] = []
    for key in sorted(copies, key=order):
        _, _, local, top = copies[key]
        if rows and rows[-1][3:] == top:
            continue
        rows.append((key[0], local, key[1], *top))
    return rows


def decimals(values: Iterable[str | None]) -> list[Decimal | None]:
    return [None if v is None else Decimal(v) for v in values]


def book_updates(conn: sa.Connection, from_us: int, to_us: int, **names: object) -> list[tuple]:
    rows = conn.execute(
        sa.text(
            """SELECT exchange_ts, local_ts, timestamp_us, local_timestamp_us, u, seq,
                      is_snapshot, side, price::text, amount::text
               FROM depthwatch_book_updates(:symbol, :f, :t, depth => :depth,
                                            category => :category)"""
        ),
        {"f": at(from_us), "t": at(to_us), "depth": None, "category": None, **names},
    ).all()
    for row in rows:  # exact times: UTC, to the microsecond
        assert (row[0], row[1]) == (at(row[2]), at(row[3]))
    return [tuple(r[2:]) for r in rows]


def tops(conn: sa.Connection, from_us: int, to_us: int, **names: object) -> list[tuple]:
    rows = conn.execute(
        sa.text(
            """SELECT exchange_ts, local_ts, timestamp_us, local_timestamp_us, u,
                      bid_price::text, bid_size::text, ask_price::text, ask_size::text
               FROM depthwatch_tops(:symbol, :f, :t, depth => :depth, category => :category)"""
        ),
        {"f": at(from_us), "t": at(to_us), "depth": None, "category": None, **names},
    ).all()
    for row in rows:
        assert (row[0], row[1]) == (at(row[2]), at(row[3]))
    return [tuple(r[2:]) for r in rows]


# ---- tests ----------------------------------------------------------------


def test_varints_match_the_codec(db):
    rng = np.random.default_rng(7)
    values = np.concatenate(
        (
            np.array([0, 1, 127, 128, 255, 16_383, 16_384, 2**31, 2**53 + 1, 2**63 - 1]),
            rng.integers(0, 2**63 - 1, 200, dtype=np.int64) >> rng.integers(0, 63, 200),
        )
    ).astype(np.uint64)
    payload = codec.encode_varints(values)
    with db.connect() as conn:

        def varints(p: bytes) -> list[int]:
            return conn.execute(sa.text("SELECT depthwatch_varints(:p)"), {"p": p}).scalar_one()

        assert varints(payload) == [int(v) for v in values]
        assert varints(b"") == []
        with pytest.raises(sa.exc.DBAPIError, match="ends inside a varint"):
            varints(payload + b"\x80")


def test_chunk_functions_match_the_codec(db):
    """Every chunk of several symbols' feeds (various decimals, depths, spot
    without cts, emptied sides, chunks whose top is unknown at first) decodes
    in SQL to exactly what codec.decode_chunk and chunk_levels give, and to
    the feed's own decimal strings."""
    rng = random.Random(11)
    feeds = {
        ("BTCUSDT", 50): simulate(rng, 700, START_US, 2, 3, 50),
        ("SHIBUSDT", 1): simulate(rng, 400, START_US, 8, 0, 1, cts=False),
        ("ETHUSDT", 200): simulate(rng, 300, START_US, 1, 6, 200, snapshot_rate=0.03),
        ("XRPUSDT", 500): simulate(rng, 60, START_US, 4, 1, 500, snapshot_rate=0.1),
        ("DOGEUSDT", 25): simulate(rng, 300, START_US, 5, 0, 25, microseconds=True),
    }
    originals: dict[tuple[int, int, bool], codec.ChunkMessage] = {}
    with db.begin() as conn:
        for (symbol, depth), feed in feeds.items():
            sid = add_stream(conn, symbol, depth)
            store_chunks(conn, sid, cut(feed, feed.messages, rng, force_top=0.7), rng)
            originals.update(((m.ts_us, m.u, m.is_snapshot), m) for m in feed.messages)
    with db.connect() as conn:
        chunks = conn.execute(
            sa.text(
                """SELECT stream_id, ts_us, u, payload, pg_column_size(payload) < length(payload)
                   FROM book_chunks ORDER BY stream_id, ts_us, u, n, snapshot"""
            )
        ).all()
        # Both time units: whole milliseconds (Bybit's) and microseconds (DOGEUSDT).
        assert {bytes(c[3])[0] for c in chunks} == {codec.FORMAT_US, codec.FORMAT_MS}
        # A depth-500 snapshot is over 2 kB: stored compressed (TOAST), decoded all the same.
        assert any(compressed for *_, compressed in chunks)

        def grouped(sql: str) -> dict[tuple[int, int, int], list[tuple]]:
            out: dict[tuple[int, int, int], list[tuple]] = {}
            for row in conn.execute(sa.text(sql)):
                out.setdefault(tuple(row[:3]), []).append(tuple(row[3:]))
            return out

        messages = grouped(
            """SELECT c.stream_id, c.ts_us, c.u, m.msg, m.ts_us, m.local_us, m.match_us, m.u,
                      m.seq, m.is_snapshot, m.bid_price::text, m.bid_size::text,
                      m.ask_price::text, m.ask_size::text
               FROM book_chunks c,
                    depthwatch_chunk_messages(c.stream_id, c.ts_us, c.u, c.payload) m"""
        )
        levels = grouped(
            """SELECT c.stream_id, c.ts_us, c.u, l.msg, l.ts_us, l.local_us, l.u, l.seq,
                      l.is_snapshot, l.side, l.price::text, l.amount::text
               FROM book_chunks c, depthwatch_chunk_levels(c.ts_us, c.u, c.payload) l"""
        )
        flagged = grouped(
            """SELECT c.stream_id, c.ts_us, c.u, t.msg, t.ts_us, t.local_us, t.u, t.seq,
                      t.is_snapshot, t.bid_price::text, t.bid_size::text, t.ask_price::text,
                      t.ask_size::text
               FROM book_chunks c, depthwatch_chunk_tops(c.ts_us, c.u, c.payload) t"""
        )
        text = codec.TextCache()
        n_levels = 0
        for sid, ts, u, payload, _ in chunks:
            key = (sid, ts, u)
            varints = conn.execute(sa.text("SELECT depthwatch_varints(:p)"), {"p": payload})
            assert varints.scalar_one() == codec.decode_varints(payload).tolist()
            chunk = codec.decode_chunk(payload, ts, u)
            want_messages, want_levels, want_flagged = [], [], []
            for i in range(len(chunk)):
                common = (
                    int(chunk.ts_us[i]),
                    int(chunk.local_us[i]),
                    int(chunk.u[i]),
                    int(chunk.seq[i]),
                    bool(chunk.flags[i] & codec.SNAPSHOT),
                )
                match = int(chunk.match_us[i])
                top = top_texts(chunk, int(chunk.top_of[i]))
                want_messages.append(
                    (i, *common[:2], None if match < 0 else match, *common[2:], *top)
                )
                if chunk.flags[i] & codec.TOP_CHANGED:
                    want_flagged.append((i, *common, *top))
                bids, asks = codec.chunk_levels(chunk, i, text)
                want_levels += [(i, *common, "bid", p, s) for p, s in bids]
                want_levels += [(i, *common, "ask", p, s) for p, s in asks]
                # And the feed's own strings: equal as decimals, and as text
                # where the chunk's exponents are the symbol's decimals.
                original = originals[(common[0], common[2], common[4])]
                got = [(Decimal(p), Decimal(s)) for p, s in bids + asks]
                assert got == [(Decimal(p), Decimal(s)) for p, s in original.bids + original.asks]
                if chunk.price_exp == codec.decimals(
                    [original.bids[0][0]] if original.bids else []
                ):
                    assert [p for p, _ in bids] == [p for p, _ in original.bids]
            assert messages[key] == want_messages
            assert levels.get(key, []) == want_levels
            assert flagged.get(key, []) == want_flagged
            n_levels += len(want_levels)
        assert n_levels == sum(
            len(m.bids) + len(m.asks) for f in feeds.values() for m in f.messages
        )


def test_corrupt_payloads_raise(db):
    rng = random.Random(3)
    feed = simulate(rng, 30, START_US, 2, 3, 5)
    payload, _, _ = codec.encode_chunk(feed.messages[:10])
    unknown = b"\x03" + payload[1:]
    with db.connect() as conn:
        for sql in (
            "SELECT count(*) FROM depthwatch_chunk_messages(1, :t, :u, :p)",
            "SELECT count(*) FROM depthwatch_chunk_levels(:t, :u, :p)",
            "SELECT count(*) FROM depthwatch_chunk_tops(:t, :u, :p)",
        ):
            params = {"t": feed.messages[0].ts_us, "u": feed.messages[0].u}
            with pytest.raises(sa.exc.DBAPIError, match="unknown format 3"):
                conn.execute(sa.text(sql), {**params, "p": unknown})
            conn.rollback()
            with pytest.raises(sa.exc.DBAPIError, match="depthwatch: "):
                conn.execute(sa.text(sql), {**params, "p": payload[:5]})
            conn.rollback()
        # The full decoder checks the count of values against the header.
        with pytest.raises(sa.exc.DBAPIError, match="its header says"):
            conn.execute(
                sa.text("SELECT count(*) FROM depthwatch_chunk_levels(:t, :u, :p)"),
                {"t": 1, "u": 1, "p": payload + b"\x00"},
            )


@dataclasses.dataclass
class Recorded:
    stream_id: int
    feed: Feed
    legacy: list[codec.ChunkMessage]
    subscribed: codec.ChunkMessage
    names: dict[str, object]


def record_upgrade(db: sa.Engine, rng: random.Random, n: int = 2_500) -> Recorded:
    """One stream's history across the upgrade: the old collector's legacy
    rows, then two new collectors whose chunks overlap (collector B starts
    with a subscription snapshot holding the state of one of A's deltas, same
    seq), and the old collector still writing a while after A started. Each
    collector has its own receive times, so which copy is kept shows."""
    feed = simulate(rng, n, START_US + 123_000, 2, 3, 50, snapshot_rate=0.005)
    m = feed.messages
    legacy_end, a_start, a_end, b_start = n // 3, n // 3 - 150, 3 * n // 4, n // 2
    while m[b_start].is_snapshot:
        b_start += 1
    # B's subscription snapshot: the book after A's delta at b_start, same seq.
    delta = m[b_start]
    bids, asks = book_at(m, b_start)
    subscribed = dataclasses.replace(delta, is_snapshot=True, bids=bids, asks=asks)
    feed.top_after[(delta.ts_us, delta.u, True)] = feed.top_after[(delta.ts_us, delta.u, False)]
    with db.begin() as conn:
        sid = add_stream(conn, "BTCUSDT", 50)
        add_stream(conn, "BTCUSDT", 1)
        add_stream(conn, "BTCUSDT", 50, "spot")
        store_legacy(conn, sid, m[:legacy_end])
        store_chunks(conn, sid, cut(feed, received_by(m[a_start:a_end], rng), rng), rng)
        b = received_by([subscribed, *m[b_start + 1 :]], rng)
        store_chunks(conn, sid, cut(feed, b, rng), rng)
    names = {"symbol": "BTCUSDT", "depth": 50, "category": "linear"}
    return Recorded(sid, feed, m[:legacy_end], subscribed, names)


def windows(rng: random.Random, messages: list[codec.ChunkMessage]) -> list[tuple[int, int]]:
    """Everything, and [from, to) windows starting and ending mid-second, on a
    message's exact time, a microsecond either side, across the legacy/chunk
    boundary, inside one second."""
    times = [m.ts_us for m in messages]
    out = [(0, END_US)]
    for _ in range(6):
        a, b = sorted(rng.sample(times, 2))
        out.append((a + rng.choice((0, -1, 1)), b + rng.choice((0, -1, 1))))
    t = times[len(times) // 2]
    out.append((t - t % SECOND_US + 400_000, t - t % SECOND_US + 700_000))
    out.append((times[len(times) // 3 - 10], times[len(times) // 3 + 10]))
    out.append((t, t))
    return out


def test_book_updates_merge_chunks_and_legacy_once_each(db):
    rng = random.Random(5)
    rec = record_upgrade(db, rng)
    with db.connect() as conn:
        conn.execute(sa.text("SET TRANSACTION READ ONLY"))  # as the dashboard's reader
        everything = book_updates(conn, 0, END_US, **rec.names)
        # Each message once: as many rows as the feed's levels, plus B's snapshot.
        feed_levels = sum(len(m.bids) + len(m.asks) for m in rec.feed.messages)
        extra = len(rec.subscribed.bids) + len(rec.subscribed.asks)
        assert len(everything) == feed_levels + extra
        assert feed_levels > 10_000 and extra > 50
        assert everything == expected_updates(conn, rec.stream_id, 0, END_US)
        # A delta before the snapshot with the same seq.
        seqs = [(r[0], r[3], r[4]) for r in everything]
        assert any(a[:2] == b[:2] and not a[2] and b[2] for a, b in itertools.pairwise(seqs))
        # And the feed's own levels, message by message.
        by_key = {(m.ts_us, m.u, m.is_snapshot): m for m in rec.feed.messages}
        by_key[(rec.subscribed.ts_us, rec.subscribed.u, True)] = rec.subscribed
        got: dict[tuple, list] = {}
        for ts, _, u, _, snap, side, price, amount in everything:
            got.setdefault((ts, u, snap), []).append((side, Decimal(price), Decimal(amount)))
        assert got.keys() == {k for k, m in by_key.items() if m.bids or m.asks}
        for key, levels in got.items():
            m = by_key[key]
            want = [("bid", *decimals(level)) for level in m.bids]
            assert levels == want + [("ask", *decimals(level)) for level in m.asks]
        for from_us, to_us in windows(rng, rec.feed.messages):
            got = book_updates(conn, from_us, to_us, **rec.names)
            assert got == expected_updates(conn, rec.stream_id, from_us, to_us)
            assert all(from_us <= row[0] < to_us for row in got)
        # Decimals as numeric, Decimal-equal to the text.
        price, amount = conn.execute(
            sa.text(
                """SELECT price, amount FROM depthwatch_book_updates('BTCUSDT', '-infinity',
                       'infinity', 50, 'linear') WHERE amount = 0 LIMIT 1"""
            )
        ).one()
        assert isinstance(price, Decimal) and amount == Decimal(0) and str(amount) == "0"


def test_tops_are_ticks_once_each(db):
    rng = random.Random(8)
    rec = record_upgrade(db, rng)
    with db.connect() as conn:
        everything = tops(conn, 0, END_US, **rec.names)
        assert everything == expected_tops(conn, rec.stream_id, 0, END_US)
        # Every chunk's first message is flagged (as the writer does) but only
        # real changes are ticks: after the first row, exactly the feed's changes.
        changes = [
            (m.ts_us, m.u, *decimals(m.top))
            for m in rec.feed.messages
            if m.top is not None and (m.ts_us, m.u) > (everything[0][0], everything[0][2])
        ]
        assert [(r[0], r[2], *decimals(r[3:])) for r in everything[1:]] == changes
        assert any(None in r[3:] for r in everything)  # an emptied side
        # The package's reader (the export's quotes) gives the same ticks.
        stream = next(s for s in list_streams(conn) if s.id == rec.stream_id)
        python = [
            (r[0], *decimals((r[4], r[5], r[3], r[2]))) for r in quotes(conn, stream, 0, END_US)
        ]
        assert python == [(r[0], *decimals(r[3:])) for r in everything]
        for from_us, to_us in windows(rng, rec.feed.messages):
            got = tops(conn, from_us, to_us, **rec.names)
            assert got == expected_tops(conn, rec.stream_id, from_us, to_us)
            assert all(from_us <= row[0] < to_us for row in got)


def test_the_readme_queries_run(db):
    rec = record_upgrade(db, random.Random(2), n=600)
    with db.connect() as conn:
        conn.execute(sa.text("SET TIME ZONE 'UTC'"))
        tops_rows, update_rows = (conn.execute(sa.text(q)).all() for q in README_QUERIES)
        hour = START_US, START_US + 3600 * SECOND_US
        assert (
            [tuple(r[2:]) for r in tops_rows]
            == [(r[0], r[1], r[2], *decimals(r[3:])) for r in tops(conn, *hour, **rec.names)]
            != []
        )
        minutes = START_US, START_US + 300 * SECOND_US
        assert len(update_rows) == len(book_updates(conn, *minutes, **rec.names)) > 0
        assert update_rows[0].exchange_ts.isoformat().endswith("+00:00")


def test_analysts_get_clear_errors(db):
    with db.begin() as conn:
        add_stream(conn, "BTCUSDT", 1)
        add_stream(conn, "BTCUSDT", 50)
        add_stream(conn, "ETHUSDT", 50, "linear")
        add_stream(conn, "ETHUSDT", 50, "spot")
        only = add_stream(conn, "SOLUSDT", 50, "spot")
        by_spot = add_stream(conn, "ETHUSDT", 200, "spot")

    def stream_id(*args: object) -> int:
        with db.connect() as conn:
            placeholders = ", ".join(f":a{i}" for i in range(len(args)))
            return conn.execute(
                sa.text(f"SELECT depthwatch_stream_id({placeholders})"),
                {f"a{i}": a for i, a in enumerate(args)},
            ).scalar_one()

    def error(*args: object) -> tuple[str, str]:
        with pytest.raises(sa.exc.DBAPIError) as info:
            stream_id(*args)
        diag = info.value.orig.diag  # type: ignore[union-attr]
        return diag.message_primary, diag.message_hint or ""

    assert stream_id("SOLUSDT") == stream_id("solusdt", None, "SPOT") == only
    assert stream_id("ETHUSDT", 200) == by_spot
    message, hint = error("DOGEUSDT")
    assert "'DOGEUSDT'" in message and hint == "recorded symbols: BTCUSDT, ETHUSDT, SOLUSDT"
    message, hint = error("BTCUSDT")
    assert "several depths (1, 50)" in message and "depth => 1" in hint
    message, hint = error("ETHUSDT", 50)
    assert "several categories (linear, spot)" in message and "category => 'linear'" in hint
    message, hint = error("BTCUSDT", 200)
    assert "depth 200" in message and "linear depth 1, linear depth 50" in hint
    # The analyst-facing functions raise the same, and want both bounds.
    with db.connect() as conn:
        for function in ("depthwatch_book_updates", "depthwatch_tops"):
            with pytest.raises(sa.exc.DBAPIError, match=r"several depths \(1, 50\)"):
                conn.execute(
                    sa.text(f"SELECT * FROM {function}('BTCUSDT', now() - interval '1h', now())")
                )
            conn.rollback()
            with pytest.raises(sa.exc.DBAPIError, match="no order book of symbol 'NOPE'"):
                conn.execute(sa.text(f"SELECT * FROM {function}('NOPE', now(), now())"))
            conn.rollback()
            with pytest.raises(sa.exc.DBAPIError, match="from_ts and to_ts are required"):
                conn.execute(sa.text(f"SELECT * FROM {function}('SOLUSDT', NULL, now())"))
            conn.rollback()
            empty = conn.execute(
                sa.text(f"SELECT count(*) FROM {function}('SOLUSDT', '-infinity', 'infinity')")
            )
            assert empty.scalar_one() == 0


def test_decode_speed(db, capsys):
    """Not an assertion: how fast the database decodes, for BENCHMARKS.md."""
    rng = random.Random(1)
    feed = simulate(rng, 20_000, START_US, 2, 3, 50, snapshot_rate=0.002)
    with db.begin() as conn:
        sid = add_stream(conn, "BTCUSDT", 50)
        store_chunks(conn, sid, cut(feed, feed.messages, rng), rng)
    n_messages = len(feed.messages)
    n_levels = sum(len(m.bids) + len(m.asks) for m in feed.messages)
    timings = {}
    with db.connect() as conn:
        for name, sql in (
            (
                "chunk_levels",
                "SELECT count(*) FROM book_chunks c, "
                "depthwatch_chunk_levels(c.ts_us, c.u, c.payload)",
            ),
            (
                "chunk_messages",
                "SELECT count(*) FROM book_chunks c, "
                "depthwatch_chunk_messages(c.stream_id, c.ts_us, c.u, c.payload)",
            ),
            (
                "book_updates",
                "SELECT count(*) FROM depthwatch_book_updates('BTCUSDT', '-infinity', 'infinity')",
            ),
            ("tops", "SELECT count(*) FROM depthwatch_tops('BTCUSDT', '-infinity', 'infinity')"),
        ):
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                conn.execute(sa.text(sql)).scalar_one()
                best = min(best, time.perf_counter() - started)
            timings[name] = best
    with capsys.disabled():
        print(f"\nSQL decode of {n_messages} messages holding {n_levels} levels (best of 3):")
        for name, seconds in timings.items():
            print(
                f"  {name:15s} {seconds * 1000:7.0f} ms  {n_messages / seconds:9,.0f} messages/s"
                f"  {n_levels / seconds:10,.0f} levels/s"
            )
