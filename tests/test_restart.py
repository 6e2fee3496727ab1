"""The collector process killed, restarted and overlapped, as Render does to a
worker: real processes, the real simulator, real PostgreSQL."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest
import sqlalchemy as sa

from depthwatch.records import StreamKey
from depthwatch.sim import SimConfig, SimulatorThread
from depthwatch.storage.db import make_engine
from depthwatch.storage.read.chunks import last_recorded
from depthwatch.storage.read.streams import NotRecorded, find_stream

from .conftest import start_collect
from .e2e import assert_export_matches_truth, recorded_sequence, stored_book_events

SYMBOLS = ("BTCUSDT", "ETHUSDT")
STREAMS = [StreamKey("linear", s, 50) for s in SYMBOLS]


def start_collector(sim: SimulatorThread, database_url: str, tmp_path) -> subprocess.Popen[str]:
    return start_collect(
        sim.sim.url("linear"),
        database_url,
        "--symbols",
        ",".join(SYMBOLS),
        "--journal-dir",
        str(tmp_path / "journal"),
    )


def book_rows(engine: sa.Engine) -> int:
    """Book messages in the stored chunks, repeats (overlapping chunks) included."""
    with engine.connect() as conn:
        if not conn.execute(sa.text("SELECT to_regclass('book_chunks') IS NOT NULL")).scalar():
            return 0
        return int(
            conn.execute(sa.text("SELECT coalesce(sum(n), 0) FROM book_chunks")).scalar_one()
        )


def distinct_messages(engine: sa.Engine) -> int:
    """Book messages as readers return them: each once."""
    return sum(len(recorded_sequence(engine, stream)) for stream in STREAMS)


def last_stored_local_us(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        found = []
        for stream in STREAMS:
            try:
                recorded = find_stream(conn, stream.category, stream.symbol, stream.depth)
            except NotRecorded:
                continue
            last = last_recorded(conn, recorded)
            if last is not None:
                found.append(last.local_us)
        return max(found)


def wait_for_rows(engine: sa.Engine, proc: subprocess.Popen[str], more_than: int) -> int:
    deadline = time.monotonic() + 60
    while (rows := book_rows(engine)) <= more_than:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the collector recorded nothing"
        time.sleep(0.3)
    return rows


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    return stderr


def events(engine: sa.Engine, symbol: str) -> list[tuple[int, str, str]]:
    with engine.connect() as conn:
        return [
            (int(r.local_us), r.kind, r.detail)
            for r in conn.execute(
                sa.text(
                    """SELECT local_us, kind, detail FROM feed_events
                       WHERE symbol = :s ORDER BY local_us, id"""
                ),
                {"s": symbol},
            )
        ]


@pytest.mark.parametrize("down_s", [2.0, 8.0], ids=["quick-restart", "later-restart"])
def test_sigkill_keeps_what_was_committed_and_the_restart_is_a_declared_gap(
    database_url, tmp_path, down_s
):
    """Quick: the dead collector's last heartbeat is recent, so the new one
    settles crash-or-overlap once heartbeats tell; later: it declares at once."""
    sim = SimulatorThread(SimConfig(symbols=SYMBOLS, rate=200, seed=17, trades_rate=0)).start()
    engine = make_engine(database_url)
    try:
        first = start_collector(sim, database_url, tmp_path)
        wait_for_rows(engine, first, 500)
        first.kill()  # no flush, no goodbye
        first.communicate(timeout=10)
        committed = book_rows(engine)
        last_before = last_stored_local_us(engine)
        time.sleep(down_s)  # the market moves on while nobody records
        second = start_collector(sim, database_url, tmp_path)
        wait_for_rows(engine, second, committed + 500)
        # The first collector beat just before it died, so at first the new one
        # cannot tell a crash from a deploy's overlap: it settles that once
        # heartbeats tell (2.5 heartbeat intervals).
        time.sleep(6.0)
        stderr = stop(second)
    finally:
        sim.stop()
    assert "everything flushed" in stderr
    for stream in STREAMS:
        # Everything committed before the kill is intact, and everything since
        # rebuilds to the exchange's book: the hole is not papered over.
        truth = sim.sim.truth(f"orderbook.50.{stream.symbol}")
        assert_export_matches_truth(engine, stream, truth)
        timeline = events(engine, stream.symbol)
        gaps = [e for e in timeline if e[1] == "gap" and "collector not running" in e[2]]
        assert len(gaps) == 1, timeline
        gap_at = gaps[0][0]
        assert gap_at <= last_before  # from the stream's last stored row
        after = [kind for at, kind, _ in timeline if at >= gap_at]
        assert "recovered" in after, timeline  # closed by the new collector's snapshot
        # The restart's first recorded message is a snapshot: the book resynced.
        recorded = recorded_sequence(engine, stream)
        first_after = next(
            e.is_snapshot for e in stored_book_events(engine, stream) if e.local_us > gap_at
        )
        assert first_after is True and recorded
    assert book_rows(engine) >= committed
    engine.dispose()


def test_a_deploy_overlap_stores_every_message_once(database_url, tmp_path):
    """Render starts the new worker, and SIGTERMs the old one about a minute
    later: meanwhile two collectors record the same streams. Both store the
    overlap (their chunks are cut differently); every message reads back once,
    none is missing, no gap is declared, and the books are exact. The overlap
    is 20 s here: past the heartbeats' stale limit (3 x 2 s), its length
    changes nothing but the test's time."""
    sim = SimulatorThread(SimConfig(symbols=SYMBOLS, rate=100, seed=23, trades_rate=0)).start()
    engine = make_engine(database_url)
    try:
        old = start_collector(sim, database_url, tmp_path / "old")
        wait_for_rows(engine, old, 100)
        new = start_collector(sim, database_url, tmp_path / "new")
        time.sleep(20.0)
        assert new.poll() is None and old.poll() is None
        old_log = stop(old)
        rows = book_rows(engine)
        wait_for_rows(engine, new, rows + 200)
        new_log = stop(new)
    finally:
        sim.stop()
    assert all(
        re.search(r"already stored \(skipped\): \d+ book events", log) for log in (old_log, new_log)
    )
    repeats = book_rows(engine) - distinct_messages(engine)
    assert repeats > 1_000, repeats  # they did overlap: both stored it
    for stream in STREAMS:
        recorded = recorded_sequence(engine, stream)
        seqs = [seq for _, seq, snapshot in recorded if not snapshot]
        assert len(seqs) == len(set(seqs))  # no delta stored twice
        truth = sim.sim.truth(f"orderbook.50.{stream.symbol}")
        first = next(i for i, t in enumerate(truth) if t.seq == recorded[0][1])
        last = next(i for i, t in enumerate(truth) if t.seq == recorded[-1][1])
        # Every message from the first recorded to the last is there: no hole.
        assert sorted(set(seqs) | {recorded[0][1]}) == [t.seq for t in truth[first : last + 1]]
        assert_export_matches_truth(engine, stream, truth)
        assert not [e for e in events(engine, stream.symbol) if e[1] == "gap"]
    engine.dispose()
