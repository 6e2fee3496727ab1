"""The top N levels of a book after each of many messages, in NumPy: the
book_snapshot exports' replay at array speed.

IntBook (export.intbook) applies one message at a time in Python, ~10 us a
message. TopBook applies a run of messages at once. For each side it lays
the run out as a matrix, one row per message and one column per price the
run or the book before it touches; a cell holds the size a message set (a
snapshot sets every cell of its row, to 0 where it has no level). Carrying
each column's last set cell down the rows gives the whole side after every
message, and its first N non-zero columns are the top. The cost is rows x
columns, so this suits books of bounded depth (a few hundred prices a run),
not whole books of thousands of levels, which stay with IntBook.

The results are IntBook's exactly: the same integers at the same exponents.
Sizes are worked at the run's largest exponents and given back at the book's,
which follow IntBook's rule: raised by a message with more decimals, and
taken from the message when it finds the book empty (so a snapshot sets them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from depthwatch.export.intbook import MISSING, IntBook

# Cells per matrix (rows x columns), so a run's matrices stay a few MB.
MATRIX_CELLS = 1 << 18
MIN_ROWS, MAX_ROWS = 16, 1024
POW10 = 10 ** np.arange(19, dtype=np.int64)
LIMIT = 2**62  # the largest magnitude worked on (sums and negations stay in int64)


@dataclass(frozen=True)
class Run:
    """Messages in the order they apply: per message `snapshot` (it replaces
    the book), its `price_exp` and `size_exp`; per level its message (`msg`,
    an index into the messages, ascending), `is_bid`, `ticks` and `lots` (at its
    message's exponents; 0 lots deletes)."""

    snapshot: np.ndarray
    price_exp: np.ndarray
    size_exp: np.ndarray
    msg: np.ndarray
    is_bid: np.ndarray
    ticks: np.ndarray
    lots: np.ndarray

    def __len__(self) -> int:
        return len(self.snapshot)

    def cut(self, first: int, last: int) -> Run:
        """Messages [first, last), renumbered from 0."""
        lo, hi = np.searchsorted(self.msg, [first, last])
        return Run(
            self.snapshot[first:last],
            self.price_exp[first:last],
            self.size_exp[first:last],
            self.msg[lo:hi] - first,
            self.is_bid[lo:hi],
            self.ticks[lo:hi],
            self.lots[lo:hi],
        )


@dataclass(frozen=True)
class Tops:
    """Tops wanted of a run: per row `price_exp`, `size_exp` and `values`, laid
    out as IntBook.take_top() lays out its tuple (ask ticks, ask lots, bid keys
    (ticks negated), bid lots, each N long, MISSING where a side is short)."""

    price_exp: np.ndarray
    size_exp: np.ndarray
    values: np.ndarray  # rows x 4N int64


class _Side:
    """One side's levels: keys ascending best first (ask ticks; bid ticks
    negated), with their lots (> 0)."""

    __slots__ = ("keys", "lots")

    def __init__(self, keys: np.ndarray, lots: np.ndarray) -> None:
        self.keys = keys
        self.lots = lots


class TopBook:
    """A book of bounded depth, watching its top `levels`; `advance` applies a
    Run and gives the tops after the messages asked for."""

    def __init__(self, levels: int, start: IntBook | None = None) -> None:
        self.levels = levels
        empty = np.zeros(0, dtype=np.int64)
        self.asks = _Side(empty, empty)
        self.bids = _Side(empty, empty)
        self.price_exp = self.size_exp = 0
        self.rows = MAX_ROWS  # messages per matrix, lowered for wide books
        if start is not None:
            asks, bids = sorted(start.asks.items()), sorted(start.bids.items())
            self.asks = _Side(*_arrays(asks))
            self.bids = _Side(*_arrays(bids))
            self.price_exp, self.size_exp = start.price_exp, start.size_exp

    def advance(self, run: Run, want: np.ndarray) -> Tops:
        """Apply `run`; the tops after its messages `want` (ascending indices,
        -1 for the book before the run)."""
        parts: list[Tops] = []
        n = len(run)
        starts = np.searchsorted(run.msg, np.arange(n + 1))  # each message's first level
        first = 0
        wanted_before = want[want < 0]
        if len(wanted_before):
            parts.append(self._tops_now(len(wanted_before)))
        while first < n:
            last = min(n, first + self.rows)
            lo, hi = np.searchsorted(want, [first, last])
            tops = self._advance_rows(run, first, last, starts, want[lo:hi] - first)
            if tops is None:  # too wide a matrix: fewer rows
                self.rows = max(MIN_ROWS, self.rows // 2)
                continue
            parts.append(tops)
            first = last
        if not parts:
            width = 4 * self.levels
            none = np.zeros(0, dtype=np.int64)
            return Tops(none, none, np.zeros((0, width), dtype=np.int64))
        return Tops(
            np.concatenate([p.price_exp for p in parts]),
            np.concatenate([p.size_exp for p in parts]),
            np.concatenate([p.values for p in parts]),
        )

    def _tops_now(self, count: int) -> Tops:
        """The book's top as it stands, `count` times."""
        values = np.concatenate(
            [_top_of(self.asks, self.levels), _top_of(self.bids, self.levels)], axis=1
        )
        rows = np.repeat(values, count, axis=0)
        return Tops(
            np.full(count, self.price_exp, dtype=np.int64),
            np.full(count, self.size_exp, dtype=np.int64),
            rows,
        )

    def _advance_rows(
        self, run: Run, first: int, last: int, starts: np.ndarray, want: np.ndarray
    ) -> Tops | None:
        """Messages [first, last) of the run; the tops after `want` (relative).
        None, with nothing applied, when their matrix would be too large."""
        level = slice(int(starts[first]), int(starts[last]))
        msg_price_exp = run.price_exp[first:last]
        msg_size_exp = run.size_exp[first:last]
        price_exp = max(self.price_exp, int(msg_price_exp.max()))
        size_exp = max(self.size_exp, int(msg_size_exp.max()))
        row = run.msg[level] - first + 1  # row 0 is the book before the messages
        ticks = _scaled(run.ticks[level], price_exp - msg_price_exp[row - 1])
        lots = _scaled(run.lots[level], size_exp - msg_size_exp[row - 1])
        is_bid = run.is_bid[level]
        cleared = np.flatnonzero(run.snapshot[first:last]) + 1
        rows = last - first + 1
        wanted = want + 1
        # The matrix needs a row only for the books read out: the rows wanted
        # and the last (the book carried on). A row stands for the messages
        # since the previous one, so it is the book after the last of them.
        # Only while the exponents hold: their rule reads every row's book.
        constant = bool(
            np.all(msg_price_exp == self.price_exp) and np.all(msg_size_exp == self.size_exp)
        )
        # (Every row when most are wanted: book_snapshot's every-change kinds.)
        sparse = constant and 2 * len(wanted) < rows
        kept = np.unique(np.append(wanted, rows - 1)) if sparse else None
        matrix_rows = rows if kept is None else len(kept) + 1
        book_up = (POW10[price_exp - self.price_exp], POW10[size_exp - self.size_exp])
        for side in (self.asks, self.bids):
            _scaled(side.keys, np.array([price_exp - self.price_exp]))
            _scaled(side.lots, np.array([size_exp - self.size_exp]))
        ask_columns = _columns(self.asks, book_up[0], ticks[~is_bid])
        bid_columns = _columns(self.bids, book_up[0], -ticks[is_bid])
        width = max(len(ask_columns), len(bid_columns))
        if matrix_rows * width > MATRIX_CELLS and last - first > MIN_ROWS:
            return None
        if 4 * matrix_rows * width < MATRIX_CELLS:
            self.rows = min(MAX_ROWS, 2 * self.rows)
        rows_of = _RowMap(rows, kept, row, cleared)
        asks = _side_states(
            self.asks, ask_columns, book_up, rows_of, ~is_bid, ticks[~is_bid], lots[~is_bid]
        )
        bids = _side_states(
            self.bids, bid_columns, book_up, rows_of, is_bid, -ticks[is_bid], lots[is_bid]
        )
        if constant:
            exps = (
                np.full(rows, self.price_exp, dtype=np.int64),
                np.full(rows, self.size_exp, dtype=np.int64),
            )
        else:
            exps = self._book_exponents(
                msg_price_exp, msg_size_exp, run.snapshot[first:last], asks, bids
            )
        matrix_wanted = wanted if kept is None else np.searchsorted(kept, wanted) + 1
        values = np.concatenate(
            [asks.top(matrix_wanted, self.levels), bids.top(matrix_wanted, self.levels)], axis=1
        )
        row_price_exp, row_size_exp = exps[0][wanted], exps[1][wanted]
        _lower(values, self.levels, price_exp - row_price_exp, size_exp - row_size_exp)
        # The book after the last message, at its own exponents.
        end_price_exp, end_size_exp = int(exps[0][-1]), int(exps[1][-1])
        down = (POW10[price_exp - end_price_exp], POW10[size_exp - end_size_exp])
        self.asks = asks.last(down)
        self.bids = bids.last(down)
        self.price_exp, self.size_exp = end_price_exp, end_size_exp
        return Tops(row_price_exp, row_size_exp, values)

    def _book_exponents(
        self,
        price_exp: np.ndarray,
        size_exp: np.ndarray,
        snapshot: np.ndarray,
        asks: _SideStates,
        bids: _SideStates,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The book's exponents after each row (row 0: before the messages), by
        IntBook's rule; the side states have every row."""
        count = asks.counts() + bids.counts()
        # A message finding the book empty takes its exponents; else the most.
        restart = snapshot | (count[:-1] == 0)
        return (
            _running_max(self.price_exp, price_exp, restart),
            _running_max(self.size_exp, size_exp, restart),
        )


class _SideStates:
    """One side after every row of a matrix: `keys` (the columns, ascending),
    and for each cell the flat index of the cell in `value` that holds its
    lots (`source`: the last row at or above it that set the column)."""

    __slots__ = ("keys", "source", "value")

    def __init__(self, keys: np.ndarray, source: np.ndarray, value: np.ndarray) -> None:
        self.keys = keys
        self.source = source
        self.value = value

    def lots(self, rows: np.ndarray | slice) -> np.ndarray:
        """rows x columns lots, 0 where absent."""
        return self.value[self.source[rows]]

    def counts(self) -> np.ndarray:
        return np.count_nonzero(self.lots(slice(None)), axis=1)

    def top(self, rows: np.ndarray, levels: int) -> np.ndarray:
        """keys, then lots, of the best `levels` of `rows` (MISSING where short)."""
        return _top_matrix(self.keys, self.lots(rows), levels)

    def last(self, down: tuple[int, int]) -> _Side:
        lots = self.value[self.source[-1]]
        present = lots > 0
        return _Side(self.keys[present] // down[0], lots[present] // down[1])


def _columns(before: _Side, up: int, keys: np.ndarray) -> np.ndarray:
    """The prices a side's matrix needs: the book's (scaled `up`) and the messages'."""
    return np.unique(np.concatenate([before.keys * up, keys]))


class _RowMap:
    """Where a run's rows land in a matrix that keeps only the rows `kept`
    (ascending, the last of the `rows` among them; None: every row) after
    row 0, the book before the run. A level at row r lands on the first kept
    row at or after r, which thus shows the book after every message since
    the kept row before it. `cleared`: the rows of snapshots, which empty the
    book before their own levels apply; a level that an emptying in its
    matrix row follows is left out (`alive`; None: none is)."""

    def __init__(
        self, rows: int, kept: np.ndarray | None, row: np.ndarray, cleared: np.ndarray
    ) -> None:
        self.alive: np.ndarray | None = None
        if kept is None:
            self.rows = rows
            self.level_row, self.cleared = row, cleared
            return
        self.rows = len(kept) + 1
        self.level_row = np.searchsorted(kept, row) + 1
        self.cleared = np.searchsorted(kept, cleared) + 1
        if len(cleared):
            # Per matrix row, its last snapshot (ascending: where the next differs).
            last = np.r_[self.cleared[1:] != self.cleared[:-1], True]
            self.cleared = self.cleared[last]
            last_clear = np.zeros(self.rows, dtype=np.int64)
            last_clear[self.cleared] = cleared[last]
            self.alive = row >= last_clear[self.level_row]


def _side_states(
    before: _Side,
    columns: np.ndarray,
    up: tuple[int, int],
    rows_of: _RowMap,
    side: np.ndarray,
    keys: np.ndarray,
    lots: np.ndarray,
) -> _SideStates:
    """The side after each matrix row: row 0 the side `before` (scaled `up`),
    then the run's levels of this `side` (a mask of its levels), each price
    `keys` set to `lots` at its row, the rows of snapshots emptied first."""
    rows = rows_of.rows
    book_keys = before.keys * up[0]
    width = len(columns)
    if not width:
        none = np.zeros((rows, 0), dtype=np.int64)
        return _SideStates(columns, none, none.ravel())
    level_row = rows_of.level_row[side]
    if rows_of.alive is not None:
        alive = rows_of.alive[side]
        keys, lots, level_row = keys[alive], lots[alive], level_row[alive]
    cell = level_row * width + np.searchsorted(columns, keys)
    # A price set twice in one matrix row (one message, or several): the last
    # one holds, as in IntBook.
    last = len(cell) - 1 - np.unique(cell[::-1], return_index=True)[1]
    cell, lots = cell[last], lots[last]
    # Only cells a row sets are read (through `source`), so the rest stay unset.
    value = np.empty(rows * width, dtype=np.int64)
    value[:width] = 0
    value[np.searchsorted(columns, book_keys)] = before.lots * up[1]
    source = np.zeros((rows, width), dtype=np.int32)  # MATRIX_CELLS keeps it small
    flat_source = source.reshape(-1)
    flat_source[:width] = np.arange(width, dtype=np.int32)
    cleared = rows_of.cleared
    if len(cleared):
        emptied = (cleared[:, None] * width + np.arange(width)).ravel()
        value[emptied] = 0
        flat_source[emptied] = emptied
    value[cell] = lots
    flat_source[cell] = cell
    # Each cell's last set row at or above it, carried down the column.
    np.maximum.accumulate(source, axis=0, out=source)
    return _SideStates(columns, source, value)


def _top_matrix(keys: np.ndarray, state: np.ndarray, levels: int) -> np.ndarray:
    """Per row of `state` (lots by column of `keys`), the first `levels`
    present keys then their lots, MISSING where short."""
    rows, width = state.shape
    out = np.full((rows, 2 * levels), MISSING, dtype=np.int64)
    if not width or not rows:
        return out
    present = state > 0
    rank = np.cumsum(present, axis=1, dtype=np.int32)
    r, c = np.nonzero(present & (rank <= levels))
    at = r * (2 * levels) + rank[r, c] - 1
    out_flat = out.reshape(-1)
    out_flat[at] = keys[c]
    out_flat[at + levels] = state[r, c]
    return out


def _top_of(side: _Side, levels: int) -> np.ndarray:
    return _top_matrix(side.keys, side.lots[None, :], levels)


def _lower(values: np.ndarray, levels: int, price_down: np.ndarray, size_down: np.ndarray) -> None:
    """Values worked at the run's exponents back to each row's (exact: no
    level has more decimals than its row's book)."""
    if not (price_down.any() or size_down.any()):
        return
    n = levels
    prices = np.r_[0:n, 2 * n : 3 * n]
    sizes = np.r_[n : 2 * n, 3 * n : 4 * n]
    values[:, prices] //= POW10[price_down][:, None]
    values[:, sizes] //= POW10[size_down][:, None]


def _scaled(values: np.ndarray, up: np.ndarray) -> np.ndarray:
    """values * 10**up, refused where 64 bits would not hold it exactly (a
    book mixing 13-digit prices with 12-decimal ones): never a wrong number."""
    if len(values) and int(np.abs(values).max()) * 10 ** int(up.max()) >= LIMIT:
        raise OverflowError(
            "book_snapshot: this book's prices or sizes need more than 64-bit integers "
            "at their most decimals"
        )
    return values * POW10[up]


def _running_max(before: int, exps: np.ndarray, restart: np.ndarray) -> np.ndarray:
    """[before, e_1, ...] carried as a running maximum that starts again at
    each row where `restart` holds."""
    segment = np.cumsum(np.r_[False, restart])
    keyed = segment * 64 + np.r_[before, exps]  # exponents are < 64
    return np.maximum.accumulate(keyed) - segment * 64


def _arrays(items: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    if not items:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    keys, lots = zip(*items, strict=True)
    return np.array(keys, dtype=np.int64), np.array(lots, dtype=np.int64)
