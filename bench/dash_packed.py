"""bench_dashboard.py's packed history: what a schema 4 collector writes
(book_chunks, top_seconds, top_snapshots), recorded by the real writer and
replicated back in time.

bench/record_paced.py records one hour of a paced synthetic stream through
the real parser, book and writer, ending at a whole second E. Its chunks and
per-second tops cover the seconds E-3600 .. E (the last message falls at E
itself), its top-N snapshots the ends of seconds, (E-3600, E]. A longer
history is that hour replicated: copy k holds the rows of [E-3600, E)
(snapshots: shifted by a second) moved k hours back, so copies tile the time
axis without overlap. A chunk's payload is relative to its row's ts_us and u,
so a moved row decodes to the same messages at the moved times. u moves too,
by a whole recording's worth per hour, and the recorded hour is first moved up
by as much as all the copies take, so u keeps increasing with time (what a
resync or a replay expects) and stays positive.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from children import run_record_paced
from common import fmt_s
from dash_history import (
    DEPTH,
    HOUR_S,
    PACKED_STREAM,
    History,
    fill,
    read_meta,
    register,
    vacuum,
)
from databases import database_exists, database_url, drop_database, fresh_database
from depthwatch.storage import schema
from depthwatch.storage.db import make_engine

PACKED_RECORDING = "dw_bench_dash_packed_rec"

# Per packed table: the statement moving the recorded hour's u up, and the copy.
# :lo/:hi bound the recorded hour's rows; k counts the copies, 1 = an hour back.
PACKED_TABLES: dict[str, tuple[str | None, str]] = {
    "book_chunks": (
        "UPDATE book_chunks SET u = u + :u_up",
        """INSERT INTO book_chunks (stream_id, ts_us, u, n, snapshot, payload)
           SELECT c.stream_id, c.ts_us - k * :period_us, c.u - k * :u_step, c.n, c.snapshot,
                  c.payload
           FROM book_chunks c, generate_series(1, :copies) k
           WHERE c.ts_us >= :lo AND c.ts_us < :hi""",
    ),
    "top_seconds": (
        "UPDATE top_seconds SET last_u = last_u + :u_up",
        """INSERT INTO top_seconds (stream_id, ts_us, last_ts_us, last_u, bid, bid_size, ask,
                                   ask_size, bid_min, ask_max, spread_bps_max, messages)
           SELECT t.stream_id, t.ts_us - k * :period_us, t.last_ts_us - k * :period_us,
                  t.last_u - k * :u_step, t.bid, t.bid_size, t.ask, t.ask_size, t.bid_min,
                  t.ask_max, t.spread_bps_max, t.messages
           FROM top_seconds t, generate_series(1, :copies) k
           WHERE t.ts_us >= :lo AND t.ts_us < :hi""",
    ),
    # Stamped at the end of the second they close: the recorded hour's are (lo, hi].
    "top_snapshots": (
        None,
        """INSERT INTO top_snapshots (stream_id, ts_us, payload)
           SELECT s.stream_id, s.ts_us - k * :period_us, s.payload
           FROM top_snapshots s, generate_series(1, :copies) k
           WHERE s.ts_us > :lo AND s.ts_us <= :hi""",
    ),
    # Hourly whole books, if the writer wrote any in the recorded hour.
    "book_checkpoints": (
        "UPDATE book_checkpoints SET u = u + :u_up",
        """INSERT INTO book_checkpoints (instrument_id, depth, ts_us, local_us, u, seq,
                                        bid_prices, bid_sizes, ask_prices, ask_sizes)
           SELECT b.instrument_id, b.depth, b.ts_us - k * :period_us,
                  b.local_us - k * :period_us, b.u - k * :u_step, b.seq,
                  b.bid_prices, b.bid_sizes, b.ask_prices, b.ask_sizes
           FROM book_checkpoints b, generate_series(1, :copies) k
           WHERE b.ts_us >= :lo AND b.ts_us < :hi""",
    ),
}


def packed_name(hours: float) -> str:
    return f"dw_bench_dash_packed_{hours:g}h".replace(".", "_")


def legacy_name(hours: float) -> str:
    return f"dw_bench_dash_{hours:g}h".replace(".", "_")


def history_names(layout: str, hours_list: list[float]) -> list[str]:
    """The databases a queries phase creates (dropped at the end unless --keep)."""
    if layout == "legacy":
        return [legacy_name(h) for h in hours_list]
    return [packed_name(h) for h in hours_list] + [PACKED_RECORDING]


@dataclass
class Recording:
    """One hour recorded by bench/record_paced.py, made on first use and shared
    by every packed history of the run (each starts as a copy of it)."""

    server_url: str
    rate: float
    end_s: int = 0  # the recording ends at this whole second (its last message)

    def ensure(self) -> int:
        if not self.end_s:
            self.end_s = record_hour(self.server_url, self.rate)
        return self.end_s

    def drop(self) -> None:
        if self.end_s:
            drop_database(self.server_url, PACKED_RECORDING)
            self.end_s = 0


def record_hour(server_url: str, rate: float) -> int:
    """Record the last hour up to now's whole second into PACKED_RECORDING
    with the real writer, in a child process (record_paced.py as it is);
    returns that second."""
    url = fresh_database(server_url, PACKED_RECORDING)
    end_s = int(time.time())
    print(
        f"  recording {HOUR_S * rate:,.0f} messages of {PACKED_STREAM.symbol} (1 h at "
        f"{rate:g} msg/s) through the real writer ...",
        flush=True,
    )
    started = time.perf_counter()
    # The child prints its progress on stderr (ours) and one JSON line on stdout.
    result = run_record_paced(
        url,
        *("--streams", "1", "--depth", str(DEPTH), "--rate", f"{rate:g}"),
        *("--minutes", str(HOUR_S // 60), "--end-ms", str(end_s * 1000)),
        progress=True,
    )
    print(f"\n  recorded in {fmt_s(time.perf_counter() - started)}: {result}", flush=True)
    return end_s


def generate_packed_history(
    server_url: str, hours: float, rate: float, keep: bool, label: str, recording: Recording
) -> History:
    """A database holding `hours` of packed history ending at the recording's
    end: the recorded hour, replicated back in time `hours` - 1 times, plus
    the trades, heartbeats and feed events the legacy history also has. With
    `keep`, one generated earlier for the same `hours` is reused as it is
    ("now" stays pinned at its end)."""
    copies = round(hours) - 1
    if copies < 0 or copies + 1 != hours:
        raise SystemExit(f"--layout packed takes whole hours (1 h recorded, replicated): {hours:g}")
    name = packed_name(hours)
    url = database_url(server_url, name)
    reused = _reusable(server_url, name, hours) if keep else None
    if reused is not None:
        return History(name, url, hours, reused[1], reused[2], _packed_messages(url, reused[1]), 0)
    started = time.perf_counter()  # the recording counts for the history that makes it
    end_s = recording.ensure()
    start_s = end_s - copies * HOUR_S - HOUR_S
    # A file copy of the recording: its rows, partitions and statistics.
    fresh_database(server_url, name, template=PACKED_RECORDING)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            schema.ensure_partitions(conn, set(range(start_s // 86_400, end_s // 86_400 + 1)))
            replicated = _replicate(conn, end_s, copies)
            iid = register(conn, PACKED_STREAM)  # sets the tick, as a collector does
            conn.execute(
                sa.text("CREATE TABLE bench_meta (hours float8, start_s bigint, end_s bigint)")
            )
            conn.execute(
                sa.text("INSERT INTO bench_meta VALUES (:h, :s, :e)"),
                {"h": hours, "s": start_s, "e": end_s},
            )
            _mids_from_tops(conn, PACKED_STREAM.tick)
        print(f"  {label}: {replicated:,} packed rows replicated ({copies} copies)", flush=True)
        fill(engine, iid, start_s, end_s, start_s, rate, label, PACKED_STREAM, book_sql=())
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE bench_mid"))
    finally:
        engine.dispose()
    vacuum(url, label)
    elapsed = time.perf_counter() - started
    return History(name, url, hours, start_s, end_s, _packed_messages(url, start_s), elapsed)


def _reusable(server_url: str, name: str, hours: float) -> tuple[float, int, int] | None:
    if not database_exists(server_url, name):
        return None
    engine = make_engine(database_url(server_url, name))
    try:
        with engine.connect() as conn:
            meta = read_meta(conn)
    finally:
        engine.dispose()
    return meta if meta is not None and meta[0] == hours else None


def _replicate(conn: sa.Connection, end_s: int, copies: int) -> int:
    """Copy the recorded hour `copies` times, each an hour further back."""
    if copies == 0:
        return 0
    u_step = int(
        conn.execute(sa.text("SELECT coalesce(max(u + n), 1) FROM book_chunks")).scalar_one()
    )
    params = {
        "u_up": copies * u_step,
        "u_step": u_step,
        "period_us": HOUR_S * 1_000_000,
        "copies": copies,
        "lo": (end_s - HOUR_S) * 1_000_000,
        "hi": end_s * 1_000_000,
    }
    rows = 0
    for move_up, copy in PACKED_TABLES.values():
        if move_up is not None:
            conn.execute(sa.text(move_up), params)
        rows += conn.execute(sa.text(copy), params).rowcount
    return rows


def _mids_from_tops(conn: sa.Connection, tick: float) -> None:
    """bench_mid (what the trades are priced from) from the recorded tops, in
    ticks: the trades stay near the book the dashboard draws them on."""
    conn.execute(sa.text("DROP TABLE IF EXISTS bench_mid"))
    conn.execute(
        sa.text(
            """CREATE UNLOGGED TABLE bench_mid AS
               SELECT ts_us / 1000000 AS sec, round((bid + ask) / 2 / :tick)::bigint AS mid
               FROM top_seconds WHERE bid IS NOT NULL AND ask IS NOT NULL"""
        ),
        {"tick": tick},
    )
    conn.execute(sa.text("ALTER TABLE bench_mid ADD PRIMARY KEY (sec)"))
    conn.execute(sa.text("ANALYZE bench_mid"))


def _packed_messages(url: str, start_s: int) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT coalesce(sum(n), 0) FROM book_chunks WHERE ts_us >= :s"),
                    {"s": start_s * 1_000_000},
                ).scalar_one()
            )
    finally:
        engine.dispose()
