"""The book_snapshot exports' NumPy path (export.topbook, snapshots.snapshot_blocks)
against the message-by-message one (IntBook, snapshots.snapshot_rows), which
test_history holds to the simulator's ground truth: the same tops at the same
exponents after every message, and the same rows, on logs made to hold what
the fast path must get right (gaps, snapshots after a gap, repeats, decimals
that change, a book emptied, a price twice in one message)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from depthwatch.export import topbook
from depthwatch.export.intbook import IntBook
from depthwatch.export.kinds import SnapshotSpec
from depthwatch.export.replay import IntBookReplay
from depthwatch.export.snapshots import SnapshotBlock, snapshot_blocks, snapshot_rows
from depthwatch.export.topbook import Run, TopBook
from depthwatch.storage.read.rows import IntBookEvent
from depthwatch.storage.read.streams import find_stream

from .test_export import T, event, record


def random_messages(
    seed: int, count: int, exponents_change: bool = True, snapshots: float = 0.03
) -> list[IntBookEvent]:
    """Messages of a book around 1000 ticks: mostly deltas (some deleting,
    some for prices absent), a snapshot now and then (one empty), exponents
    that change, the book emptied by deletes, a price twice in a message."""
    rng = random.Random(seed)
    messages: list[IntBookEvent] = []
    asks: set[int] = set()
    bids: set[int] = set()
    price_exp = size_exp = 2
    for i in range(count):
        if exponents_change and rng.random() < 0.05:
            price_exp, size_exp = rng.choice([1, 2, 3]), rng.choice([0, 1, 2])
        up_s = 10**size_exp
        snapshot = i == 0 or rng.random() < snapshots
        if snapshot:
            size = 0 if rng.random() < 0.1 else rng.randint(5, 60)
            asks = set(rng.sample(range(1001, 1100), size))
            bids = set(rng.sample(range(900, 1000), size))
            levels = (
                [(t, rng.randint(1, 9)) for t in sorted(bids)],
                [(t, rng.randint(1, 9)) for t in sorted(asks)],
            )
        elif rng.random() < 0.02:  # delete every level: the book is empty
            levels = ([(t, 0) for t in bids], [(t, 0) for t in asks])
            asks, bids = set(), set()
        else:
            sides: tuple[list[tuple[int, int]], list[tuple[int, int]]] = ([], [])
            for _ in range(rng.randint(0, 8)):
                is_bid = rng.random() < 0.5
                held = bids if is_bid else asks
                tick = rng.randint(900, 999) if is_bid else rng.randint(1001, 1100)
                lots = 0 if rng.random() < 0.3 else rng.randint(1, 9)
                if held and rng.random() < 0.5:
                    tick = rng.choice(sorted(held))
                sides[is_bid].append((tick, lots))
                if rng.random() < 0.05:  # the same price again: the last holds
                    sides[is_bid].append((tick, rng.randint(0, 9)))
                (held.discard if lots == 0 else held.add)(tick)
            levels = (sides[1], sides[0])
            for side, held in ((levels[0], bids), (levels[1], asks)):
                for tick, lots in side:  # what the last of a repeated price says
                    (held.discard if lots == 0 else held.add)(tick)
        (bid_levels, ask_levels) = levels
        # Tick t is the price t/10, whatever the message's decimals.
        tick_up = 10 ** (price_exp - 1)
        messages.append(
            IntBookEvent(
                i, i, i + 1, i, snapshot, price_exp, size_exp,
                [t * tick_up for t, _ in bid_levels], [q * up_s for _, q in bid_levels],
                [t * tick_up for t, _ in ask_levels], [q * up_s for _, q in ask_levels],
            )
        )  # fmt: skip
    return messages


def as_run(messages: list[IntBookEvent]) -> Run:
    msg, is_bid, ticks, lots = [], [], [], []
    for i, m in enumerate(messages):
        for side_is_bid, side_ticks, side_lots in (
            (True, m.bid_ticks, m.bid_lots),
            (False, m.ask_ticks, m.ask_lots),
        ):
            msg += [i] * len(side_ticks)
            is_bid += [side_is_bid] * len(side_ticks)
            ticks += side_ticks
            lots += side_lots
    return Run(
        np.array([m.is_snapshot for m in messages], dtype=bool),
        np.array([m.price_exp for m in messages], dtype=np.int64),
        np.array([m.size_exp for m in messages], dtype=np.int64),
        np.array(msg, dtype=np.int64),
        np.array(is_bid, dtype=bool),
        np.array(ticks, dtype=np.int64),
        np.array(lots, dtype=np.int64),
    )


@pytest.mark.parametrize("levels", [1, 5, 25])
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("cells", [topbook.MATRIX_CELLS, 64])  # 64: the smallest matrices
def test_topbook_gives_intbooks_top_and_exponents_after_every_message(
    levels, seed, cells, monkeypatch
):
    monkeypatch.setattr(topbook, "MATRIX_CELLS", cells)
    messages = random_messages(seed, 600)
    expected = []
    book = IntBook(levels)
    for m in messages:
        if m.is_snapshot:
            book.clear()  # as the replay does
        book.apply(m)
        expected.append((book.price_exp, book.size_exp, book.take_top()))
    fast = TopBook(levels)
    # In runs of odd lengths, each asking for some messages' tops.
    got: list[tuple[int, int, tuple[int, ...]]] = []
    first = 0
    for length in [1, 7, 100, 33, 250, 209]:
        run = as_run(messages[first : first + length])
        tops = fast.advance(run, np.arange(-1, len(run), dtype=np.int64))
        rows = [
            (p, s, tuple(v))
            for p, s, v in zip(
                tops.price_exp.tolist(), tops.size_exp.tolist(), tops.values.tolist(), strict=True
            )
        ]
        before = rows.pop(0)  # the -1: the book before the run, as the last one left it
        if got:
            assert before[2] == got[-1][2]
        got += rows
        first += length
    assert first == len(messages)
    for i, (want, have) in enumerate(zip(expected, got, strict=True)):
        if want[2] == tuple([0] * 4 * levels):
            want, have = want[2:], have[2:]  # an empty book's exponents show nowhere
        assert have == want, f"message {i}"


@pytest.mark.parametrize("seed", [4, 5, 6])
@pytest.mark.parametrize("cells", [topbook.MATRIX_CELLS, 64])
def test_tops_of_a_few_messages_are_intbooks_though_the_matrix_skips_the_rest(
    seed, cells, monkeypatch
):
    """With the exponents steady, the matrix keeps only the rows asked for
    (and the last): each stands for the messages since the one before, so a
    snapshot among them empties the book under the levels before it, and a
    price set by several of them holds the last."""
    monkeypatch.setattr(topbook, "MATRIX_CELLS", cells)
    levels = 5
    messages = random_messages(seed, 800, exponents_change=False, snapshots=0.08)
    assert sum(m.is_snapshot for m in messages) > 30
    expected = []
    book = IntBook(levels)
    for m in messages:
        if m.is_snapshot:
            book.clear()
        book.apply(m)
        expected.append(book.take_top())
    rng = random.Random(seed)
    fast = TopBook(levels)
    first, asked = 0, 0
    for length in [3, 150, 1, 400, 246]:
        run = as_run(messages[first : first + length])
        # A few messages each, some twice, sometimes none, and the book before.
        want = sorted(rng.choices(range(-1, length), k=rng.randint(0, max(1, length // 6))))
        tops = fast.advance(run, np.array(want, dtype=np.int64))
        assert len(tops.values) == len(want)
        for k, row in zip(want, tops.values.tolist(), strict=True):
            at = first + k
            assert tuple(row) == (expected[at] if at >= 0 else tuple([0] * 4 * levels)), at
        asked += len(want)
        first += length
    assert first == len(messages) and asked > 50
    # The book after each run was carried on whole: the next run started from it.
    assert tuple(fast.advance(as_run([]), np.array([-1])).values[0].tolist()) == expected[-1]


def test_a_book_started_from_intbooks_state_carries_on_from_it():
    messages = random_messages(7, 300)
    book = IntBook(10)
    for m in messages[:150]:
        if m.is_snapshot:
            book.clear()
        book.apply(m)
    fast = TopBook(10, book)
    tops = fast.advance(as_run(messages[150:]), np.arange(-1, 150, dtype=np.int64))
    assert tuple(tops.values[0].tolist()) == book.take_top()
    for i, m in enumerate(messages[150:]):
        if m.is_snapshot:
            book.clear()
        book.apply(m)
        assert tuple(tops.values[i + 1].tolist()) == book.take_top(), i


def hand_log(seed: int) -> list:
    """A recorded log with a gap before a delta, a gap before a snapshot, a
    repeat, changing decimals and a book emptied, over ~60 s."""
    rng = random.Random(seed)
    events = []
    u, ts = 100, T
    asks = {f"{100 + i}.5": "1" for i in range(30)}
    bids = {f"{99 - i}.5": "1" for i in range(30)}
    events.append(event(u, u, ts, list(bids.items()), list(asks.items()), snapshot=True))
    for i in range(1500):
        ts += rng.choice([0, 1, 7, 40, 130])
        u += 1
        if i in (300, 900):
            u += rng.choice([1, 3])  # a lost message: a gap
        if i in (400, 1000, 1200):
            if i == 1200:
                u += 2  # a gap, then the snapshot straight after it
            book_bids = [(f"{99 - k}.{rng.randint(0, 9)}", "2") for k in range(rng.randint(0, 25))]
            book_asks = [(f"{100 + k}.{rng.randint(0, 9)}", "3") for k in range(rng.randint(0, 25))]
            asks, bids = dict(book_asks), dict(book_bids)
            events.append(event(u, u, ts, book_bids, book_asks, snapshot=True))
            continue
        if i == 600:  # repeat the message before (two collectors store it)
            events.append(events[-1])
            u -= 1
            continue
        side = asks if rng.random() < 0.5 else bids
        base = 100 if side is asks else 99
        decimals = rng.choice(["5", "25", "125"]) if i > 700 else "5"
        price = f"{base + (1 if side is asks else -1) * rng.randint(0, 40)}.{decimals}"
        size = "0" if rng.random() < 0.35 else f"{rng.randint(1, 9)}.{rng.randint(0, 99)}"
        if size == "0":
            side.pop(price, None)
        else:
            side[price] = size
        levels = [(price, size)]
        if side is asks:
            events.append(event(u, u, ts, asks=levels))
        else:
            events.append(event(u, u, ts, bids=levels))
    return events


SPECS = [
    SnapshotSpec(1, 0),
    SnapshotSpec(5, 0),
    SnapshotSpec(25, 0),
    SnapshotSpec(3, 100_000),
    SnapshotSpec(10, 1_000_000),
    SnapshotSpec(25, 20_000),
]


def test_blocks_hold_the_rows_of_the_message_by_message_replay(engine):
    record(engine, hand_log(5))
    with engine.connect() as conn:
        stream = find_stream(conn, "linear", "BTCUSDT", 50)
        last_ms = T + 70_000
        windows = [(T - 1_000, last_ms)]  # everything
        windows += [(T + a, T + b) for a, b in [(5_000, 20_000), (12_345, 61_001), (30, 31)]]
        windows += [(T + 50_000, last_ms + 60_000)]  # past the last message
        for spec in SPECS:
            for start_ms, end_ms in windows:
                span = (start_ms * 1000, end_ms * 1000)
                replay = IntBookReplay(conn, stream, *span, spec.levels)
                want = SnapshotBlock.of_rows(list(snapshot_rows(replay, spec)))
                for ahead in (False, True):  # batches read on this thread, or ahead
                    blocks = snapshot_blocks(conn, stream, *span, spec, ahead)
                    assert blocks is not None
                    got = [b for b in blocks if len(b)]
                    where = f"{spec} over {start_ms - T}..{end_ms - T} ms, ahead {ahead}"
                    assert sum(len(b) for b in got) == len(want), where
                    if not len(want):
                        continue
                    for name in ("timestamp", "local_timestamp", "price_exp", "size_exp", "values"):
                        joined = np.concatenate([getattr(b, name) for b in got])
                        assert np.array_equal(joined, getattr(want, name)), f"{name}: {where}"
        # The log does make rows, gaps and exponent changes: the test can fail.
        everything = (windows[0][0] * 1000, windows[0][1] * 1000)
        rows = SnapshotBlock.of_rows(
            list(snapshot_rows(IntBookReplay(conn, stream, *everything, 5), SNAPSHOT_5))
        )
        assert len(rows) > 100
        assert len(set(rows.price_exp.tolist())) > 1


SNAPSHOT_5 = SnapshotSpec(5, 0)


def test_a_book_past_64_bit_integers_is_refused_not_wrapped():
    huge = IntBookEvent(0, 0, 1, 0, True, 1, 0, [10**16], [1], [], [])  # 10**15, 1 decimal
    tiny = IntBookEvent(1, 1, 2, 1, False, 12, 0, [1], [1], [], [])  # 1e-12: 12 decimals
    with pytest.raises(OverflowError, match="64-bit"):
        TopBook(1).advance(as_run([huge, tiny]), np.array([0, 1]))
