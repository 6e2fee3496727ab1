"""The packer (storage/write/packing.py) as pure logic: chunks decode to the very
messages and tops handed in, and each second's aggregates equal a plain fold
of the quotes, over random streams cut into random flushes."""

from __future__ import annotations

import math
import random

import numpy as np

from depthwatch.records import BookUpdate, DepthSnapshot, Quote, StreamKey
from depthwatch.storage import codec
from depthwatch.storage.write.packing import QUIET_SECOND_US, SECOND_US, BookPacker, split_due

STREAMS = [StreamKey("linear", "AAAUSDT", 50), StreamKey("linear", "BBBUSDT", 1)]
IDS = {stream: n + 1 for n, stream in enumerate(STREAMS)}


def _price(ticks: int) -> str:
    return f"{ticks / 100:.2f}"


def _size(lots: int) -> str:
    return "0" if lots == 0 else f"{lots / 1000:.3f}"


def random_feed(rng: random.Random, n: int) -> list[tuple[BookUpdate, Quote | None]]:
    """Interleaved messages of two streams, each with the quote it made:
    snapshots now and then, seconds skipped, an empty side at times."""
    feed = []
    ts = {s: 1_700_000_000_000_000 for s in STREAMS}
    u = {s: 100 for s in STREAMS}
    for _ in range(n):
        stream = rng.choice(STREAMS)
        ts[stream] += rng.choice((1_000, 20_000, 300_000, 1_500_000))
        u[stream] += 1
        snapshot = rng.random() < 0.05
        bid_ticks = sorted(rng.sample(range(10_000, 10_101), rng.randint(0, 3)), reverse=True)
        ask_ticks = sorted(rng.sample(range(10_101, 10_201), rng.randint(1, 3)))
        bids = [[_price(t), _size(rng.randint(0, 5_000))] for t in bid_ticks]
        asks = [[_price(t), _size(rng.randint(1, 5_000))] for t in ask_ticks]
        update = BookUpdate(
            stream,
            snapshot,
            bids,
            asks,
            u[stream],
            u[stream] * 3,
            ts[stream],
            None,
            ts[stream] + 700,
        )
        quote = None
        if rng.random() < 0.6:
            empty_bid = rng.random() < 0.05
            quote = Quote(
                stream,
                ts[stream],
                ts[stream] + 700,
                u[stream],
                None if empty_bid else _price(rng.randint(10_000, 10_100)),
                None if empty_bid else _size(rng.randint(1, 5_000)),
                _price(rng.randint(10_101, 10_200)),
                _size(rng.randint(1, 5_000)),
            )
        feed.append((update, quote))
    return feed


def reference_seconds(feed: list[tuple[BookUpdate, Quote | None]]) -> dict[tuple[int, int], dict]:
    """Per (stream id, second): the last top, lowest bid, highest ask, widest
    spread over the tops that stood in it (the one carried in included), the
    message count and the last (ts, u): a plain fold over float(text)."""
    out: dict[tuple[int, int], dict] = {}
    top: dict[StreamKey, tuple] = {}
    for update, quote in feed:
        key = (IDS[update.stream], update.exchange_us - update.exchange_us % SECOND_US)
        carried = top.get(update.stream, (None,) * 4)
        second = out.get(key)
        if second is None:
            second = out[key] = {"tops": [carried], "messages": 0}
        if quote is not None:
            top[update.stream] = tuple(
                None if v is None else float(v)
                for v in (quote.bid_price, quote.bid_size, quote.ask_price, quote.ask_size)
            )
            second["tops"].append(top[update.stream])
        second["messages"] += 1
        second["last"] = (update.exchange_us, update.update_id)
    for second in out.values():
        tops = second["tops"]
        bids = [t[0] for t in tops if t[0] is not None]
        asks = [t[2] for t in tops if t[2] is not None]
        spreads = [
            (t[2] - t[0]) / (t[2] + t[0]) * 20_000
            for t in tops
            if t[0] is not None and t[2] is not None
        ]
        second.update(
            top=tops[-1],
            bid_min=min(bids, default=None),
            ask_max=max(asks, default=None),
            spread=max(spreads, default=None),
        )
    return out


def _value(text: str) -> float | None:
    return None if text == "\\N" else float(text)


def test_chunks_and_seconds_equal_a_plain_fold() -> None:
    rng = random.Random(7)
    feed = random_feed(rng, 3_000)
    packer = BookPacker(IDS.__getitem__)
    chunks: list[list[str]] = []
    seconds: dict[tuple[int, int], list[str]] = {}
    at = 0
    while at < len(feed):
        flush = feed[at : at + rng.randint(1, 60)]
        at += len(flush)
        packed = packer.pack(flush, [])
        assert packed.book_local_us == [u.local_us for u, _ in flush]
        chunks += [line.rstrip("\n").split("\t") for line in packed.lines["book_chunks"]]
        for line in packed.lines["top_seconds"]:
            fields = line.rstrip("\n").split("\t")
            seconds[(int(fields[0]), int(fields[1]))] = fields  # later writes replace
    while packer.unwritten_seconds:
        for line in packer.pack([], []).lines["top_seconds"]:
            fields = line.rstrip("\n").split("\t")
            seconds[(int(fields[0]), int(fields[1]))] = fields

    # Every message comes back from the chunks, in order, with its levels and
    # (where it changed, or opens a chunk) its top.
    decoded: dict[int, list] = {sid: [] for sid in IDS.values()}
    for sid, ts, u, n, snapshot, payload in chunks:
        chunk = codec.decode_chunk(bytes.fromhex(payload[3:]), int(ts), int(u))
        assert len(chunk) == int(n)
        assert (snapshot == "t") == bool(chunk.flags[0] & codec.SNAPSHOT)
        assert chunk.flags[0] & codec.TOP_CHANGED, "a chunk's first message carries its top"
        seconds_in = {int(t) - int(t) % SECOND_US for t in chunk.ts_us}
        assert len(seconds_in) == 1, "a chunk never crosses a second"
        text = codec.TextCache()
        for i in range(len(chunk)):
            bids, asks = codec.chunk_levels(chunk, i, text)
            decoded[int(sid)].append(
                (int(chunk.ts_us[i]), int(chunk.u[i]), bool(chunk.flags[i] & 1), bids, asks)
            )
    for stream, sid in IDS.items():
        sent = [
            (u.exchange_us, u.update_id, u.is_snapshot, u.bids, u.asks)
            for u, _ in feed
            if u.stream == stream
        ]
        assert decoded[sid] == sent

    expected = reference_seconds(feed)
    assert seconds.keys() == expected.keys()
    for key, want in expected.items():
        fields = seconds[key]
        assert (int(fields[2]), int(fields[3])) == want["last"]
        assert int(fields[11]) == want["messages"]
        got = [_value(f) for f in fields[4:11]]
        assert got[:4] == list(want["top"]), key
        assert got[4] == want["bid_min"] and got[5] == want["ask_max"]
        if want["spread"] is None:
            assert got[6] is None
        else:
            assert got[6] is not None and math.isclose(got[6], want["spread"], rel_tol=1e-12)


def test_snapshots_pack_alone_and_bad_values_are_left_out() -> None:
    stream = STREAMS[0]
    packer = BookPacker(IDS.__getitem__)
    good = BookUpdate(
        stream,
        True,
        [["100.50", "1.5"]],
        [["100.60", "2"]],
        5,
        9,
        1_700_000_000_000_000,
        None,
        1_700_000_000_000_100,
    )
    bad = BookUpdate(
        stream,
        False,
        [["100.5000000000001", "1"]],
        [],
        6,
        10,
        1_700_000_000_010_000,
        None,
        1_700_000_000_010_100,
    )
    snapshot = DepthSnapshot(
        stream,
        1_700_000_001_000_000,
        1,
        6,
        [["100.50", "1.5"]],
        [["100.60", "2.0"], ["100.70", "3.0"]],
    )
    packed = packer.pack([(good, None), (bad, None)], [snapshot])
    assert len(packed.rejected) == 1 and "u=6" in packed.rejected[0]
    (chunk_line,) = packed.lines["book_chunks"]
    assert chunk_line.split("\t")[3] == "1"  # the good message only
    (snapshot_line,) = packed.lines["top_snapshots"]
    payload = bytes.fromhex(snapshot_line.rstrip("\n").split("\t")[2][3:])
    chunk = codec.decode_chunk(payload, snapshot.exchange_us, snapshot.update_id)
    assert codec.chunk_levels(chunk, 0, codec.TextCache()) == (snapshot.bids, snapshot.asks)


def test_float_cache_parses_like_numpy() -> None:
    rng = random.Random(3)
    cache = codec.FloatCache(limit=50)
    for _ in range(20):
        texts = [_price(rng.randint(1, 300)) for _ in range(40)]
        assert cache.parse(texts).tolist() == [float(t) for t in texts]


def test_varints_round_trip_at_every_length() -> None:
    """Every byte length from 1 to 10 (2**64 - 1), mixed in random order, as
    LEB128 (checked against a plain loop) and back, with each value's end."""
    rng = random.Random(5)
    edges = [0, 1, 127, 128, 2**14 - 1, 2**14, 2**63, 2**64 - 1]
    values = edges + [rng.getrandbits(rng.randint(1, 64)) for _ in range(5_000)]
    rng.shuffle(values)
    data, ends = codec._varints_with_ends(np.array(values, dtype=np.uint64))
    plain = bytearray()
    plain_ends = []
    for value in values:
        while value >= 0x80:
            plain.append(value & 0x7F | 0x80)
            value >>= 7
        plain.append(value)
        plain_ends.append(len(plain))
    assert data == bytes(plain)
    assert ends.tolist() == plain_ends
    assert codec.decode_varints(data).tolist() == values
    assert codec._varints_with_ends(np.zeros(0, dtype=np.uint64))[0] == b""


def _update(stream: StreamKey, u: int, ts_us: int, local_us: int) -> BookUpdate:
    return BookUpdate(stream, False, [["100.50", "1.5"]], [], u, u, ts_us, None, local_us)


def test_split_due_holds_slow_streams_in_order() -> None:
    slow, busy = STREAMS
    now = 1_700_000_000_000_000
    pairs = [(_update(busy, u, now, now - 1_000), None) for u in range(40)]
    pairs[5:5] = [(_update(slow, u, now, now - 100_000), None) for u in range(3)]
    taken, held = split_due(pairs, now, hold_us=250_000, enough=32)
    assert [p[0].stream for p in taken] == [busy] * 40
    assert [p[0].update_id for p in held] == [0, 1, 2]
    # The oldest waited long enough: everything goes, in arrival order.
    taken, held = split_due(pairs, now + 150_000, hold_us=250_000, enough=32)
    assert taken == pairs and held == []


def test_a_quiet_second_is_written_once_after_it_ended() -> None:
    stream = STREAMS[0]
    second = 1_700_000_000_000_000
    packer = BookPacker(IDS.__getitem__)
    quote = Quote(stream, second + 10, second + 20, 1, "100.50", "1.5", "100.60", "2.0")
    first = packer.pack([(_update(stream, 1, second + 10, second + 20), quote)], [], second + 30)
    assert first.lines["top_seconds"] == []  # open, and its stream was in the flush
    assert packer.pack([], [], second + SECOND_US).lines["top_seconds"] == []  # not yet
    (line,) = packer.pack([], [], second + SECOND_US + QUIET_SECOND_US).lines["top_seconds"]
    assert line.split("\t")[1] == str(second) and line.rstrip("\n").endswith("\t1")
    assert packer.pack([], [], second + 5 * SECOND_US).lines["top_seconds"] == []  # once
    # A stopping writer gets every open second, its stream in the flush or not.
    packer.pack([(_update(stream, 2, second + 3 * SECOND_US, second + 3 * SECOND_US), None)], [])
    assert packer.unwritten_seconds
    final = packer.pack(
        [(_update(stream, 3, second + 3 * SECOND_US + 5, second + 3 * SECOND_US + 9), None)],
        [],
        second + 3 * SECOND_US + 10,
        final=True,
    )
    assert [ln.split("\t")[1] for ln in final.lines["top_seconds"]] == [str(second + 3 * SECOND_US)]
    assert not packer.unwritten_seconds


def test_decode_many_equals_decode_chunk() -> None:
    """The batch decoder (dashboard windows) gives each chunk's messages and
    levels exactly as decoding them one at a time, in both time units."""
    rng = random.Random(5)
    feed = random_feed(rng, 600)
    for i, (update, _) in enumerate(feed):
        if i % 3 == 0:  # some chunks in microseconds
            update.exchange_us += 7
    packer = BookPacker(IDS.__getitem__)
    rows = []
    at = 0
    while at < len(feed):
        flush = feed[at : at + rng.randint(1, 40)]
        at += len(flush)
        for line in packer.pack(flush, []).lines["book_chunks"]:
            _, ts, u, _, _, payload = line.rstrip("\n").split("\t")
            rows.append((int(ts), int(u), bytes.fromhex(payload[3:])))
    assert {payload[0] for _, _, payload in rows} == {codec.FORMAT_US, codec.FORMAT_MS}
    batch = codec.decode_many(
        [p for _, _, p in rows], [t for t, _, _ in rows], [u for _, u, _ in rows]
    )
    ts, u, local, match, level_ts, prices, sizes, ranks, bids = ([] for _ in range(9))
    seq, tops, ticks = [], [], []
    for row_ts, row_u, payload in rows:
        chunk = codec.decode_chunk(payload, row_ts, row_u)
        ts += chunk.ts_us.tolist()
        u += chunk.u.tolist()
        seq += chunk.seq.tolist()
        tops += [chunk.tops[t].tolist() if t >= 0 else None for t in chunk.top_of.tolist()]
        ticks += chunk.prices.tolist()
        local += chunk.local_us.tolist()
        match += chunk.match_us.tolist()
        for i in range(len(chunk)):
            start, nb, na = int(chunk.level_start[i]), int(chunk.nb[i]), int(chunk.na[i])
            prices += (chunk.prices[start : start + nb + na] / 10.0**chunk.price_exp).tolist()
            sizes += (chunk.sizes[start : start + nb + na] / 10.0**chunk.size_exp).tolist()
            ranks += [*range(nb), *range(na)]
            bids += [True] * nb + [False] * na
            level_ts += [int(chunk.ts_us[i])] * (nb + na)
    assert batch.ts_us.tolist() == ts and batch.u.tolist() == u
    assert batch.local_us.tolist() == local and batch.match_us.tolist() == match
    assert batch.prices.tolist() == prices and batch.sizes.tolist() == sizes
    assert batch.level_rank.tolist() == ranks and batch.level_is_bid.tolist() == bids
    assert batch.ts_us[batch.level_msg].tolist() == level_ts
    assert batch.seq.tolist() == seq and batch.ticks.tolist() == ticks
    assert [batch.tops[t].tolist() if t >= 0 else None for t in batch.top_of.tolist()] == tops
    assert batch.msg_first_level.tolist() == [
        int(x) for x in np.searchsorted(batch.level_msg, np.arange(len(ts)))
    ]
    messages_only = codec.decode_many(
        [p for _, _, p in rows], [t for t, _, _ in rows], [u for _, u, _ in rows], levels=False
    )
    assert messages_only.ts_us.tolist() == ts and len(messages_only.prices) == 0
    assert messages_only.tops.tolist() == batch.tops.tolist()
    assert messages_only.top_of.tolist() == batch.top_of.tolist()


def test_a_chunk_line_gives_back_its_receive_times() -> None:
    """What the writer's row-by-row path counts as each chunk's latencies."""
    from depthwatch.storage.write.batch import chunk_receive_times

    feed = random_feed(random.Random(9), 200)
    lines = BookPacker(IDS.__getitem__).pack(feed, []).lines["book_chunks"]
    got = sorted(t for line in lines for t in chunk_receive_times(line))
    assert got == sorted(update.local_us for update, _ in feed)
