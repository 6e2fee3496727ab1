"""What the event loop calls: records in, queued for the writer thread.

The `add_*` methods run on the socket readers' thread and only append to a
deque (checkpoints and trades formatted as COPY lines first): no I/O, no lock.
While the journal is full they refuse rows, each stream's first refused row
recorded as its gap, until a fresh snapshot restarts its record (`_refuse`).
The readers ask `has_room` and, when the queues are full, await
`wait_for_room` (back-pressure). Instruments and streams are registered here,
synchronously, once each.
"""

from __future__ import annotations

import asyncio
import logging

import sqlalchemy as sa

from depthwatch.records import (
    BookBounds,
    BookCheckpoint,
    BookProfile,
    BookUpdate,
    CollectorHeartbeat,
    DepthSnapshot,
    FeedEvent,
    FeedEventKind,
    Quote,
    StreamKey,
    Trade,
)
from depthwatch.storage import schema
from depthwatch.storage.write.batch import COPY_ESCAPES, float_array, levels_columns, nullable
from depthwatch.storage.write.state import WRITER_LOGGER, WriterState, percentiles_ms

log = logging.getLogger(WRITER_LOGGER)

EXCHANGE = "bybit"


class Intake(WriterState):
    """The readers' side of a BatchWriter."""

    # ---- called from the socket readers' thread: format and append, nothing else

    def _row_start(self, stream: StreamKey, exchange_us: int, local_us: int) -> str:
        """The columns every per-stream table starts with; notes the row's day."""
        self._note_day(exchange_us)
        return f"{self._instrument_id(stream)}\t{stream.depth}\t{exchange_us}\t{local_us}\t"

    def add_book_update(self, update: BookUpdate) -> None:
        quotes = self._pending_quotes
        quote = quotes.pop(update.stream, None) if quotes else None
        if (self._dropping or self._blocked) and self._refuse(
            update.stream, update.local_us, update.is_snapshot
        ):
            return
        if update.stream not in self._stream_ids:
            self._stream_id(update.stream)
        self._note_day(update.exchange_us)
        self._book_rows.append((update, quote))
        self._maybe_wake()

    def add_quote(self, quote: Quote) -> None:
        """The top of book the next update of its stream makes (StreamBook
        sends a quote just before its update); stored with that update."""
        self._pending_quotes[quote.stream] = quote

    def add_depth_snapshot(self, snapshot: DepthSnapshot) -> None:
        if (self._dropping or self._blocked) and self._refuse(snapshot.stream, snapshot.local_us):
            return
        if snapshot.stream not in self._stream_ids:
            self._stream_id(snapshot.stream)
        self._note_day(snapshot.exchange_us)
        self._snapshots.append(snapshot)

    def add_checkpoint(self, checkpoint: BookCheckpoint) -> None:
        if (self._dropping or self._blocked) and self._refuse(
            checkpoint.stream, checkpoint.local_us
        ):
            return
        self._rows["book_checkpoints"].append(
            f"{self._row_start(checkpoint.stream, checkpoint.exchange_us, checkpoint.local_us)}"
            f"{checkpoint.update_id}\t{checkpoint.sequence}\t"
            f"{levels_columns(checkpoint.bids, checkpoint.asks)}\n"
        )

    def add_book_bounds(self, bounds: BookBounds) -> None:
        self._add_stream_row(
            "book_bounds",
            bounds.stream,
            bounds.exchange_us,
            bounds.local_us,
            f"{bounds.update_id}\t{bounds.local_us}\t{nullable(bounds.bid_floor)}\t"
            f"{nullable(bounds.ask_ceiling)}",
        )

    def add_book_profile(self, profile: BookProfile) -> None:
        self._add_stream_row(
            "book_profiles",
            profile.stream,
            profile.exchange_us,
            profile.local_us,
            f"{profile.local_us}\t{profile.update_id}\t{profile.step!r}\t{profile.bid_first}\t"
            f"{float_array(profile.bid_sizes)}\t{profile.ask_first}\t"
            f"{float_array(profile.ask_sizes)}",
        )

    def _add_stream_row(
        self, table: str, stream: StreamKey, exchange_us: int, local_us: int, rest: str
    ) -> None:
        """A row of a table keyed (stream_id, ts_us, ...), queued as a COPY line."""
        if (self._dropping or self._blocked) and self._refuse(stream, local_us):
            return
        self._note_day(exchange_us)
        self._rows[table].append(f"{self._stream_id(stream)}\t{exchange_us}\t{rest}\n")

    def add_trade(self, trade: Trade) -> None:
        if self._dropping:  # no book to restart: the book streams' gaps cover the time
            self.stats.rows_dropped += 1
            return
        iid = self.instrument_id(trade.category, trade.symbol)
        self._note_day(trade.exchange_us)
        self._rows["trades"].append(
            f"{iid}\t{trade.exchange_us}\t{trade.local_us}\t"
            f"{trade.trade_id.translate(COPY_ESCAPES)}\t{trade.side}\t{trade.price}\t"
            f"{trade.size}\t{nullable(trade.sequence)}\n"
        )
        self._maybe_wake()

    def add_feed_event(self, event: FeedEvent) -> None:
        self._events.append(event)

    def add_heartbeat(self, heartbeat: CollectorHeartbeat) -> None:
        self._events.append(heartbeat)

    def _refuse(self, stream: StreamKey, local_us: int, snapshot: bool = False) -> bool:
        """Whether to drop a row: every row while the journal is full, then
        every row of a stream that lost one until a snapshot (which the
        collector's resync brings) restarts its record. A stream's first lost
        row records its gap."""
        if self._dropping:
            if stream not in self._blocked:
                self._blocked.add(stream)
                self._events.append(
                    FeedEvent.of_stream(
                        FeedEventKind.GAP,
                        local_us,
                        stream,
                        "rows dropped: the database was unreachable and the journal full; "
                        "not recorded until a fresh snapshot",
                    )
                )
        elif stream not in self._blocked:
            return False
        elif snapshot:
            self._blocked.discard(stream)
            log.info("%s: recording again from a fresh snapshot", stream)
            # Closes the gap (the book itself stayed exact, so it records none).
            self._events.append(
                FeedEvent.of_stream(
                    FeedEventKind.RECOVERED,
                    local_us,
                    stream,
                    "recording again from a fresh snapshot after rows were dropped",
                )
            )
            return False
        self.stats.rows_dropped += 1
        return True

    @property
    def streams_to_resync(self) -> frozenset[StreamKey]:
        """Streams whose record lost rows and that need a fresh snapshot, once
        the journal has room again (empty while it is still full)."""
        return frozenset() if self._dropping else frozenset(self._blocked)  # an atomic copy

    def take_recent_latency_ms(self) -> tuple[float | None, float | None]:
        """p50 and p99 receive-to-commit of the book events committed since the
        last call (None when nothing was committed): the heartbeat's figures."""
        recent = self._recent_latencies_us
        taken = [recent.popleft() for _ in range(len(recent))]
        if not taken:
            return None, None
        p50, p99 = percentiles_ms(taken, (0.5, 0.99))
        return p50, p99

    def has_room(self) -> bool:
        if self.failed:
            return False
        # Not held-back rows: many slow streams could otherwise fill the bound
        # with rows that wait for time, and stall the readers.
        return self._spilling or self._due_rows < self.config.max_pending_rows

    async def wait_for_room(self) -> None:
        """Back-pressure: pause the calling reader (not the event loop) until the
        writer has caught up below the limit."""
        self.stats.backpressure_waits += 1
        if self.stats.backpressure_waits % 100 == 1:
            log.warning(
                "writer back-pressure: %d rows pending (limit %d); readers wait (%d waits so far)",
                self.pending_rows,
                self.config.max_pending_rows,
                self.stats.backpressure_waits,
            )
        while not self.has_room() and not self.failed:
            self._wake.set()
            await asyncio.sleep(0.01)

    def _maybe_wake(self) -> None:
        # is_set() first: set() takes a lock, and once a batch is due every
        # message would take it again until the writer wakes.
        if (
            len(self._book_rows) - self._held_back >= self.config.batch_rows
            and not self._wake.is_set()
        ):
            self._wake.set()

    def _note_day(self, ts_us: int) -> None:
        day = ts_us // schema.DAY_US
        if day not in self._known_days:
            self._seen_days.add(day)

    def _instrument_id(self, stream: StreamKey) -> int:
        iid = self._instrument_ids.get((stream.category, stream.symbol))
        return iid if iid is not None else self.instrument_id(stream.category, stream.symbol)

    # ---- instruments: registered once per symbol, synchronously

    def instrument_id(self, category: str, symbol: str, tick_size: str | None = None) -> int:
        key = (category, symbol)
        if key in self._instrument_ids and tick_size is None:
            return self._instrument_ids[key]
        with self.engine.begin() as conn:
            iid = conn.execute(
                sa.text(
                    """INSERT INTO instruments (exchange, category, symbol, tick_size)
                       VALUES (:e, :c, :s, :t)
                       ON CONFLICT (exchange, category, symbol) DO UPDATE
                       SET tick_size = coalesce(excluded.tick_size, instruments.tick_size)
                       RETURNING id"""
                ),
                {"e": EXCHANGE, "c": category, "s": symbol, "t": tick_size},
            ).scalar_one()
        self._instrument_ids[key] = int(iid)
        self._instrument_keys[int(iid)] = key
        return int(iid)

    def register_stream(self, stream: StreamKey) -> int:
        """Note that a stream is recorded (so the dashboard lists it without
        scanning the log); returns its id, which keys the packed tables."""
        iid = self._instrument_id(stream)
        with self.engine.begin() as conn:
            sid = conn.execute(
                sa.text(
                    """WITH added AS (
                           INSERT INTO streams (instrument_id, depth) VALUES (:i, :d)
                           ON CONFLICT DO NOTHING RETURNING id)
                       SELECT id FROM added
                       UNION ALL SELECT id FROM streams WHERE instrument_id = :i AND depth = :d"""
                ),
                {"i": iid, "d": stream.depth},
            ).scalar_one()
        self._stream_ids[stream] = int(sid)
        return int(sid)

    def _stream_id(self, stream: StreamKey) -> int:
        sid = self._stream_ids.get(stream)
        return sid if sid is not None else self.register_stream(stream)
