"""Faults the collector survives: one run against the real simulator with every
kind of exchange-side fault mixed, over a hundred of them (dropped deltas,
`u = 1` restarts, malformed frames, disconnects, stalls, mute sockets that
answer pings but send no data, unsubscribes never acked). Real collector (in
this process), real PostgreSQL.

Afterwards: (a) the collector never died; (b) the book rebuilt from the stored
log equals the simulator's truth after every recorded message, so after every
recovery, and at the end; (c) every lost interval is recorded: wherever states
are missing from the log, a gap/book_lost/resync event opened an interval that
the recovering snapshot's `recovered` event closed, and nothing was recorded
inside it; (d) every book message is accounted for, per connection and in
total. The figures per fault kind go to tests/artifacts/faults.md.

Timeouts are short (1 s silence, 1 s acks, 0.25 s pings, reconnects after
0.05-0.2 s) so a hundred faults fit in well under a minute; production uses
30 s / 10 s / 20 s and backs off up to 30 s.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from depthwatch.collector import Collector
from depthwatch.config import CollectorConfig
from depthwatch.feed.connection import ConnectionConfig, FeedConnection, ReconnectPolicy
from depthwatch.records import BookUpdate, FeedEventKind, StreamKey
from depthwatch.sim import BybitSimulator, FaultKind, SimConfig, SimulatorThread, TruthState
from depthwatch.storage.read.rows import BookEventRow

from .e2e import (
    Run,
    StoredEvent,
    assert_export_matches_truth,
    collect_until_caught_up,
    stored_book_events,
    stored_feed_events,
)
from .test_connection import Recorder

SYMBOLS = ("BTCUSDT", "ETHUSDT")
DEPTH = 50
RATE = 500  # market steps per second per symbol
STEPS = 14_000  # per symbol: 28 s of market
SILENCE_S = 1.0
ACK_S = 1.0
FAULTS = dict(
    drop_every=400,  # every 400th delta of a topic is withheld
    restart_every=700,  # every 700th update of a topic is a u=1 snapshot
    malformed_every=600,  # a bad frame after every 600th data message of a connection
    # Each connection is given one of these in turn, after this many messages.
    disconnect_every=800,
    stall_after=800,
    stall_seconds=3 * SILENCE_S,  # longer than the watchdog waits
    mute_after=800,
    ignore_unsubscribe_every=4,  # every 4th resync's unsubscribe is never acked
)
OPENERS = {FeedEventKind.GAP, FeedEventKind.BOOK_LOST, FeedEventKind.RESYNC}
FIGURES = Path(__file__).parent / "artifacts" / "faults.md"  # for the README's table

# What each fault does and how the collector is expected to notice.
WHAT_HAPPENS = {
    FaultKind.DROP: "a delta withheld: `u` gap, book invalid, resync (unsubscribe, then "
    "subscribe on its ack) brings a snapshot",
    FaultKind.RESTART: "`u = 1` snapshot: book reset in place, `restart` event, nothing lost",
    FaultKind.MALFORMED: "a non-JSON frame: counted, `malformed` event (rate-limited), "
    "skipped; the book is untouched",
    FaultKind.DISCONNECT: "server closes the socket: `book_lost` per valid book, reconnect "
    "with backoff, resubscribe, snapshot",
    FaultKind.STALL: "server sends nothing, pongs included: after the silence timeout the "
    "watchdog asks for a snapshot (a quiet market would answer); none comes within another "
    "timeout: reconnect",
    FaultKind.MUTE: "server answers pings and acks but sends no data: the watchdog counts "
    "only data; the snapshot it asks for never comes: reconnect",
    FaultKind.IGNORED_UNSUBSCRIBE: "a resync's unsubscribe is never acked (data keeps "
    "coming): ack timeout reconnects",
}


# The test that checks each fault alone; all of them together: the mixed run.
SINGLE_FAULT_TEST = {
    FaultKind.DROP: "test_e2e::test_dropped_deltas_cause_gaps_resyncs_and_a_fresh_snapshot",
    FaultKind.RESTART: "test_e2e::test_exchange_restarts_reset_the_book",
    FaultKind.DISCONNECT: "test_e2e::test_disconnects_reconnect_and_resubscribe",
    FaultKind.MALFORMED: "test_e2e::test_malformed_frames_are_counted_and_lose_nothing",
    FaultKind.STALL: "test_e2e::test_a_stalled_connection_is_reconnected_by_the_watchdog",
    FaultKind.MUTE: "test_faults::test_a_socket_that_pongs_but_sends_no_data_is_reconnected",
    FaultKind.IGNORED_UNSUBSCRIBE: (
        "test_faults::test_an_unsubscribe_never_acked_reconnects_instead_of_waiting_forever"
    ),
}


def topic_of(stream: StreamKey) -> str:
    return f"orderbook.{stream.depth}.{stream.symbol}"


def fast_connections(collector: Collector) -> None:
    """Short timeouts and backoff, so a hundred faults fit in the run."""
    for connection in collector.connections:
        connection.config = replace(
            connection.config,
            ack_timeout_s=ACK_S,
            ping_interval_s=0.25,  # a mute socket pongs several times per silence timeout
            reconnect=ReconnectPolicy(initial_s=0.05, max_s=0.2, healthy_after_s=1.0),
        )


@dataclass
class Interval:
    """A lost interval as recorded: an opener, then the `recovered` closing it."""

    stream: StreamKey
    opener: StoredEvent
    closer: StoredEvent
    cause: str = ""
    states_missed: int = 0
    fault_us: int = 0  # when the fault behind it was injected

    @property
    def outage_ms(self) -> float:
        """From the fault to the recovering snapshot: detection included."""
        return (self.closer.local_us - self.fault_us) / 1000

    @property
    def duration_ms(self) -> float:
        return (self.closer.local_us - self.opener.local_us) / 1000


def intervals_of(stream: StreamKey, events: list[StoredEvent]) -> list[Interval]:
    """Pair openers with the `recovered` closing them, as the dashboard's
    coverage spans do; every `recovered` must close something, and nothing may
    still be open at the end (every book was valid when the run stopped)."""
    mine = sorted(
        (e for e in events if e.symbol == stream.symbol and e.depth == stream.depth),
        key=lambda e: (e.local_us, e.id),
    )
    out: list[Interval] = []
    opener: StoredEvent | None = None
    for event in mine:
        if event.kind in OPENERS and opener is None:
            opener = event
        elif event.kind == FeedEventKind.RECOVERED:
            assert opener is not None, f"{stream}: recovered with nothing open: {event}"
            out.append(Interval(stream, opener, event))
            opener = None
    assert opener is None, f"{stream}: interval never closed: {opener}"
    return out


def check_lost_intervals(
    stream: StreamKey,
    truth: list[TruthState],
    rows: list[BookEventRow],
    intervals: list[Interval],
    events: list[StoredEvent],
) -> int:
    """Wherever the log skips truth states, an interval covers the skip and the
    next row is its recovering snapshot; no row lies inside an interval. Returns
    the number of skips no client could notice (a dropped delta straight before
    a `u = 1` restart snapshot)."""
    position = {state.seq: i for i, state in enumerate(truth)}
    closing = {i.closer.local_us: i for i in intervals}
    restarts = {
        e.local_us
        for e in events
        if e.kind == FeedEventKind.RESTART and e.symbol == stream.symbol and e.depth == stream.depth
    }
    unnoticeable = 0
    for before, after in itertools.pairwise(rows):
        skipped = truth[position[before.seq] + 1 : position[after.seq]]
        if not skipped:
            continue
        if after.is_snapshot and all(s.dropped for s in skipped) and after.local_us in restarts:
            unnoticeable += 1
            continue
        where = f"{stream}: {len(skipped)} states skipped before u={after.u} (seq {after.seq})"
        assert after.is_snapshot, where + ": continued with a delta"
        interval = closing.get(after.local_us)
        assert interval is not None, where + ": no recovered event at that snapshot"
        assert before.local_us <= interval.opener.local_us, where + ": opened before the skip"
        interval.states_missed += len(skipped)
    for interval in intervals:
        inside = [
            r for r in rows if interval.opener.local_us < r.local_us < interval.closer.local_us
        ]
        assert not inside, f"{stream}: {len(inside)} rows recorded inside {interval}"
    return unnoticeable


REASONS = {
    FaultKind.DISCONNECT: "simulated disconnect",
    FaultKind.STALL: "no data for",
    FaultKind.MUTE: "though the server still answers",
    FaultKind.IGNORED_UNSUBSCRIBE: "no ack for unsubscribe",
}
RECEIVED = re.compile(r"\((\d+) book messages in ")


@dataclass
class SocketAccount:
    index: int
    faults: set[FaultKind]
    sent: int
    received: int
    reason: str


def check_sockets(sim: SimulatorThread, events: list[StoredEvent]) -> list[SocketAccount]:
    """The simulator's connections and the collector's disconnect events, in
    order: each one ended as its fault says, and a socket the server ended
    (or silenced) delivered every book message it sent."""
    disconnects = [e for e in events if e.kind == FeedEventKind.DISCONNECT]
    records = list(sim.sim.connection_log)
    assert len(records) == len(disconnects), (len(records), len(disconnects))
    faults_of: dict[str, set[FaultKind]] = defaultdict(set)
    for fault in sim.sim.fault_log:
        if fault.conn_id and fault.kind in REASONS:
            faults_of[fault.conn_id].add(fault.kind)
    accounts = []
    for index, (record, event) in enumerate(zip(records, disconnects, strict=True)):
        match = RECEIVED.search(event.detail)
        assert match, event.detail
        faults = faults_of[record.conn_id]
        account = SocketAccount(index, faults, record.book_sent, int(match[1]), event.detail)
        accounts.append(account)
        last = index == len(records) - 1
        if not faults:
            assert last and event.detail.startswith("stopping"), f"unprovoked: {account}"
            continue
        reason = event.detail
        if FaultKind.STALL in faults and FaultKind.MUTE not in faults:
            assert "still answers" not in reason, account  # a stall pongs no more
        assert any(REASONS[kind] in reason for kind in faults), account
        if (
            FaultKind.IGNORED_UNSUBSCRIBE in faults
            and REASONS[FaultKind.IGNORED_UNSUBSCRIBE] in reason
        ):
            assert account.sent >= account.received, account  # cut while data flowed
        else:
            assert account.sent == account.received, account  # nothing lost in flight
    return accounts


def attribute(interval: Interval, events: list[StoredEvent], sim: SimulatorThread) -> None:
    """Charge an interval to the fault that opened it, and note when that fault
    was injected. A gap is a dropped delta, unless its resync's unsubscribe was
    then swallowed (which is what kept it open); a lost book is the fault of
    its connection."""
    opener, faults = interval.opener, list(sim.sim.fault_log)
    if opener.kind == FeedEventKind.GAP and opener.detail.startswith("snapshot u="):
        # Noticed at a snapshot the book had not asked for (a silence probe's,
        # answered while the market moved): no fault of the server's.
        interval.cause, interval.fault_us = "missed before a snapshot", opener.local_us
    elif opener.kind == FeedEventKind.GAP:
        topic = topic_of(interval.stream)
        drops = [
            f.at_us
            for f in faults
            if f.kind is FaultKind.DROP and f.topic == topic and f.at_us <= opener.local_us
        ]
        swallowed = any(
            f.kind is FaultKind.IGNORED_UNSUBSCRIBE
            and f.topic == topic
            and opener.local_us <= f.at_us <= interval.closer.local_us
            for f in faults
        )
        interval.cause = FaultKind.IGNORED_UNSUBSCRIBE if swallowed else FaultKind.DROP
        interval.fault_us = max(drops)  # the latest drop before the gap was seen
    elif opener.kind == FeedEventKind.BOOK_LOST:
        socket = sum(1 for e in events if e.kind == FeedEventKind.DISCONNECT and e.id < opener.id)
        conn_id = list(sim.sim.connection_log)[socket].conn_id
        mine = [f for f in faults if f.conn_id == conn_id and f.kind in REASONS]
        interval.cause = str(mine[0].kind) if mine else "client"
        interval.fault_us = mine[0].at_us if mine else opener.local_us
    else:
        interval.cause, interval.fault_us = str(opener.kind), opener.local_us


def test_a_hundred_mixed_faults_in_one_run(database_url):
    sim = SimulatorThread(
        SimConfig(symbols=SYMBOLS, rate=RATE, deltas=STEPS, seed=17, trades_rate=0, **FAULTS)
    ).start()
    try:
        config = CollectorConfig(
            category="linear",
            symbols=SYMBOLS,
            depths=(DEPTH,),
            ws_url=sim.url("linear"),
            database_url=database_url,
            retention_days=0,
            silence_timeout_s=SILENCE_S,
            status_interval_s=3600,
        )
        # (a) collect_until_caught_up fails if the collector's task ends early.
        run = collect_until_caught_up(sim, config, timeout_s=120, prepare=fast_connections)
    finally:
        sim.stop()

    injected = sim.sim.faults
    assert sum(injected.values()) >= 100, injected
    for kind in FaultKind:
        assert injected[kind] >= 3, (kind, injected)
    collector = run.collector
    assert collector.stats.handler_errors == 0

    events = stored_feed_events(run.engine)
    streams = [StreamKey("linear", symbol, DEPTH) for symbol in SYMBOLS]
    intervals: list[Interval] = []
    unnoticeable = 0
    stored = 0
    for stream in streams:
        truth = sim.truth(topic_of(stream))
        # (b) exact after every recorded message, so after every recovery ...
        assert_export_matches_truth(run.engine, stream, truth)
        # ... and at the end.
        bids, asks = collector.books[stream].book.top(DEPTH)
        assert (bids, asks) == (truth[-1].bids, truth[-1].asks)
        # (c) every lost interval recorded, nothing recorded inside one.
        rows = stored_book_events(run.engine, stream)
        stored += len(rows)
        mine = intervals_of(stream, events)
        unnoticeable += check_lost_intervals(stream, truth, rows, mine, events)
        intervals += mine
        # A dropped delta is never bridged: the next recorded message after it
        # is a snapshot.
        position = {state.seq: i for i, state in enumerate(truth)}
        row_positions = [(position[r.seq], r.is_snapshot) for r in rows]
        for fault in sim.sim.fault_log:
            if fault.kind is FaultKind.DROP and fault.topic == topic_of(stream):
                later = [snap for p, snap in row_positions if p > position[fault.seq]]
                assert not later or later[0], f"{stream}: delta applied across drop {fault}"
    assert unnoticeable <= injected[FaultKind.RESTART]

    # Each connection ended as its fault says; server-ended ones lost nothing.
    accounts = check_sockets(sim, events)

    # (d) every book message accounted for.
    sent = sum(r.book_sent for r in sim.sim.connection_log)
    received = sum(c.stats.book_updates for c in collector.connections)
    in_flight = sent - received  # cut by the collector mid-stream (ack timeouts)
    assert in_flight == sum(a.sent - a.received for a in accounts)
    # What reached the writer, written or met already stored; the log keeps
    # each message once whatever chunks repeat it.
    w = run.writer.stats
    handed = w.book_messages_written + w.book_messages_duplicate
    delta_gaps = collector.stats.gaps - collector.stats.snapshot_gaps  # not written
    assert received == handed + collector.stats.dropped + delta_gaps
    duplicates = handed - stored
    assert duplicates >= 0

    for interval in intervals:
        attribute(interval, events, sim)
        assert interval.fault_us <= interval.opener.local_us, interval
    kinds = Counter(e.kind for e in events)
    assert kinds[FeedEventKind.GAP] == collector.stats.gaps
    assert kinds[FeedEventKind.RESTART] == collector.stats.restarts >= 3
    assert sum(c.stats.malformed for c in collector.connections) >= 3

    totals = {
        "sent": sent,
        "received": received,
        "in_flight": in_flight,
        "stored": stored,
        "dropped": collector.stats.dropped,
        "gaps": delta_gaps,
        "snapshot_gaps": collector.stats.snapshot_gaps,
        "duplicates": duplicates,
        "unnoticeable": unnoticeable,
        "connections": len(accounts),
        "malformed_received": sum(c.stats.malformed for c in collector.connections),
    }
    report = figures_table(injected, intervals, totals, run, accounts)
    print("\n" + report)
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(report)


def figures_table(
    injected: Counter[FaultKind],
    intervals: list[Interval],
    totals: dict[str, int],
    run: Run,
    accounts: list[SocketAccount],
) -> str:
    by_cause: dict[str, list[Interval]] = defaultdict(list)
    for interval in intervals:
        by_cause[interval.cause].append(interval)
    lines = [
        "## Reliability: faults the collector survives",
        "",
        f"One run of `tests/test_faults.py::test_a_hundred_mixed_faults_in_one_run`: "
        f"{sum(injected.values())} faults of {len(injected)} kinds injected by the simulator "
        f"into one collector ({RATE} steps/s on each of {len(SYMBOLS)} symbols, depth {DEPTH}, "
        f"{STEPS} steps each; silence timeout {SILENCE_S:g} s, ack timeout {ACK_S:g} s). "
        "The process never died; the book rebuilt from the stored log equals the simulator's "
        "truth after every recorded message; every interval with states missing from the log "
        "is recorded (opener, then `recovered` at the snapshot that ends it) and holds no "
        "recorded row.",
        "",
        "| fault | what happens | test alone | injected | book messages sent / received "
        "on the connections it hit | lost intervals (per stream) "
        "| states not recorded | recorded interval p50 / max (ms) "
        "| fault to recovery p50 / max (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ended: dict[FaultKind, list[SocketAccount]] = defaultdict(list)
    for account in accounts:
        for kind in account.faults:
            ended[kind].append(account)

    def p50_max(values: list[float]) -> str:
        return f"{statistics.median(values):.0f} / {max(values):.0f}" if values else "-"

    harmless = "0 (nothing lost)"
    for kind in FaultKind:
        spans = by_cause.get(str(kind), [])
        missed = sum(s.states_missed for s in spans)
        recorded = p50_max([s.duration_ms for s in spans])
        outage = p50_max([s.outage_ms for s in spans])
        if not spans and kind in (FaultKind.RESTART, FaultKind.MALFORMED):
            recorded = outage = harmless
        sockets = ended.get(kind, [])
        flow = (
            f"{sum(a.sent for a in sockets)} / {sum(a.received for a in sockets)}"
            if sockets
            else "-"
        )
        lines.append(
            f"| {kind} | {WHAT_HAPPENS[kind]} | `{SINGLE_FAULT_TEST[kind]}` | {injected[kind]} "
            f"| {flow} | {len(spans)} | {missed} | {recorded} | {outage} |"
        )
    other = {c: v for c, v in by_cause.items() if c not in {str(k) for k in FaultKind}}
    for cause, spans in sorted(other.items()):
        lines.append(
            f"| ({cause}) | interval with another cause | - | - | - | {len(spans)} "
            f"| {sum(s.states_missed for s in spans)} "
            f"| {p50_max([s.duration_ms for s in spans])} "
            f"| {p50_max([s.outage_ms for s in spans])} |"
        )
    t = totals
    lines += [
        "",
        "Recorded interval: from the opener (`gap`, `book_lost`) to the `recovered` event of "
        "the snapshot that ends it, from the stored feed events: what the dashboard shades. "
        "Fault to recovery: from the moment the simulator injected the fault to that "
        f"`recovered`, so detection is included (a stall or mute: twice the {SILENCE_S:g} s "
        f"silence timeout, a snapshot probe between; an unacked unsubscribe: the {ACK_S:g} s "
        "ack timeout). An interval is "
        "charged to the fault that opened it (a gap whose resync then meets a disconnect "
        "stays a drop); a disconnect, stall or mute opens one interval per stream whose book "
        "was valid.",
        "",
        f"Rows: the simulator sent {t['sent']} book messages over {t['connections']} "
        f"connections; the collector received {t['received']} ({t['in_flight']} were in "
        "flight on connections the collector itself cut after an unacked unsubscribe; every "
        "connection the server closed or silenced delivered all it sent); "
        f"{t['stored']} were stored = received - {t['dropped']} deltas dropped while a book "
        f"awaited its snapshot - {t['gaps']} deltas that revealed a gap - "
        f"{t['duplicates']} already stored; {t['snapshot_gaps']} gaps were noticed "
        "at a snapshot that jumped `u` (stored). "
        f"{t['malformed_received']} malformed frames were received and skipped. "
        f"{t['unnoticeable']} dropped deltas fell straight before a `u = 1` restart snapshot, "
        "which reset the book before any client could see the gap.",
        "",
        f"Writer: {run.writer.stats.book_messages_written} book messages, "
        f"{run.writer.stats.flush_failures} flush failures.",
        "",
    ]
    return "\n".join(lines)


class _Handler(Recorder):
    """test_connection's Recorder; books never break unless `gap_on` names the
    nth update (then that stream needs a resync)."""

    def __init__(self, gap_on: int | None = None) -> None:
        super().__init__()
        self.gap_on = gap_on

    def on_book_update(self, update: BookUpdate) -> bool:
        self.updates.append(update)
        return self.gap_on is not None and len(self.updates) == self.gap_on


def run_connection(
    handler: _Handler,
    until: Callable[[BybitSimulator], bool],
    silence_s: float = 0.8,
    timeout_s: float = 30.0,
    **faults: Any,
) -> BybitSimulator:
    """One connection to the simulator, run until `until(sim)` holds (what
    the test looks for has happened, however long a loaded machine took), at
    most `timeout_s`."""

    async def main() -> BybitSimulator:
        sim = BybitSimulator(
            SimConfig(
                **{"symbols": ("BTCUSDT",), "rate": 200, "seed": 4, "trades_rate": 0, **faults}
            )
        )
        await sim.start()
        connection = FeedConnection(
            "linear-0",
            ConnectionConfig(
                sim.url("linear"),
                "linear",
                ("orderbook.50.BTCUSDT",),
                ping_interval_s=0.1,
                silence_timeout_s=silence_s,
                ack_timeout_s=0.8,
                reconnect=ReconnectPolicy(initial_s=0.05, max_s=0.1),
            ),
            handler,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(connection.run(stop))
        deadline = time.monotonic() + timeout_s
        try:
            while not until(sim):
                assert time.monotonic() < deadline, f"not within {timeout_s:g} s: {handler.events}"
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await sim.stop()
        return sim

    return asyncio.run(main())


def snapshots(handler: _Handler) -> int:
    return sum(u.is_snapshot for u in handler.updates)


def test_a_socket_that_pongs_but_sends_no_data_is_reconnected():
    """Pongs every 0.1 s, no data: a watchdog that took any frame for life
    would wait forever; this one reconnects after 0.8 s without data."""
    handler = _Handler()
    sim = run_connection(
        handler,
        # the next connection muted too, many pings answered meanwhile
        lambda sim: sim.faults[FaultKind.MUTE] >= 2 and sim.pings_received >= 15,
        mute_after=50,
    )
    stalls = [e.detail for e in handler.events if e.kind is FeedEventKind.STALL]
    assert stalls and all("though the server still answers" in d for d in stalls)
    assert sim.pings_received >= 15  # pings kept being answered while muted
    assert sim.faults[FaultKind.MUTE] >= 2  # the next connection was muted too
    assert snapshots(handler) >= 2  # every new connection's subscription brought one


def test_an_unsubscribe_never_acked_reconnects_instead_of_waiting_forever():
    """The resync's subscribe waits for the unsubscribe's ack (so it never
    meets a topic the server did not drop); no ack within 0.8 s: reconnect."""
    handler = _Handler(gap_on=100)
    # A long silence timeout: on a loaded machine a pause in the stream would
    # otherwise bring a silence probe, whose unsubscribe is swallowed too.
    sim = run_connection(
        handler,
        lambda _: snapshots(handler) >= 2,  # the next connection's snapshot
        silence_s=30.0,
        ignore_unsubscribe_every=1,
    )
    assert sim.faults[FaultKind.IGNORED_UNSUBSCRIBE] == 1
    failed = [e for e in handler.events if e.kind is FeedEventKind.SUBSCRIBE_FAILED]
    assert [e.detail for e in failed] == [
        "orderbook.50.BTCUSDT: no ack for unsubscribe (resync) within 0.8 s"
    ]
    disconnects = [e.detail for e in handler.events if e.kind is FeedEventKind.DISCONNECT]
    assert disconnects[0].startswith("no ack for unsubscribe (resync) within 0.8 s (")
    assert disconnects[-1].startswith("stopping (")
    # No subscribe went out on the first connection after the swallowed
    # unsubscribe: the server never said "already subscribed".
    assert not any("already subscribed" in e.detail for e in handler.events)
    assert snapshots(handler) == 2  # one per connection


def test_a_quiet_market_is_probed_not_reconnected():
    """Bybit sends nothing for a depth-50 book that does not change: after the
    silence timeout the watchdog asks for a fresh snapshot instead of
    reconnecting; the live server answers, so the connection stays up and the
    book stays valid, where a muted socket (above) is reconnected."""
    handler = _Handler()
    sim = run_connection(
        handler,
        # the subscription's snapshot, then two probes' (a step every 100 s: silent)
        lambda sim: snapshots(handler) >= 3 and sim.pings_received >= 10,
        rate=0.01,
    )
    kinds = [e.kind for e in handler.events]
    assert kinds.count(FeedEventKind.CONNECT) == 1
    assert FeedEventKind.STALL not in kinds
    assert FeedEventKind.BOOK_LOST not in kinds
    assert snapshots(handler) >= 3  # the subscription's, then the probes'
    assert sim.pings_received >= 10


def test_a_pause_of_our_own_is_not_taken_for_the_servers_silence():
    """The process does not run for longer than the silence timeout (a busy
    machine): what the server sent meanwhile waits unread, so the watchdog,
    late itself, judges nothing that round. A probe then would cost the
    messages sent between its unsubscribe and its subscribe; a reconnect, the
    book."""
    handler = _Handler()

    async def main() -> FeedConnection:
        sim = BybitSimulator(SimConfig(symbols=("BTCUSDT",), rate=200, seed=4, trades_rate=0))
        await sim.start()
        connection = FeedConnection(
            "linear-0",
            ConnectionConfig(
                sim.url("linear"),
                "linear",
                ("orderbook.50.BTCUSDT",),
                silence_timeout_s=0.8,
                ack_timeout_s=0.8,
            ),
            handler,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(connection.run(stop))
        await asyncio.sleep(1.0)
        time.sleep(2.0)  # nothing runs: neither the server nor the client
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.wait_for(task, 10)
        await sim.stop()
        return connection

    connection = asyncio.run(main())
    assert (connection.stats.probes, connection.stats.stalls) == (0, 0)
    assert connection.stats.connects == 1
    ids = [u.update_id for u in handler.updates]
    assert handler.updates[0].is_snapshot and not any(u.is_snapshot for u in handler.updates[1:])
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # every delta, none missed
