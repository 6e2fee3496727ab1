"""`depthwatch archive`: every finished UTC day of every recorded stream,
written to the archive once, checked, and proved by a manifest.

A run, under the database's archive lock (a second run at once finds it taken
and does nothing):
1. checks the store can be written (one line saying why not);
2. with --verify, reads back every file every manifest names; a file missing or
   changed takes its manifest away, so the day is archived again below while
   the database still holds it, or is reported lost;
3. finds the stream-days to write: finished days with recorded book messages
   and no manifest, or whose counts in the database changed since (late rows);
4. writes each: its files (export.tardis's rows, so the archive and
   `depthwatch export --split daily` agree) made in a scratch directory,
   uploaded, read back and compared, then the manifest, then the database's row.
A run killed anywhere leaves no manifest for the day it was on; the next run
writes that day again. The same recording gives the same bytes, file by file.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa

from depthwatch import __version__
from depthwatch.archive.layout import ARCHIVED_KINDS, MANIFESTS, PARQUET, StreamDay
from depthwatch.archive.log import LOG, LOG_TABLES, log_path, write_log_file
from depthwatch.archive.manifest import ArchivedFile, Manifest
from depthwatch.archive.store import ArchiveStore, StoreError
from depthwatch.clock import DAY_US, now_us, utc_day
from depthwatch.export import kinds
from depthwatch.export.files import write_file
from depthwatch.export.tardis import ExportRequest, check_requests
from depthwatch.feed.registry import TARDIS_EXCHANGE
from depthwatch.logs import first_line
from depthwatch.storage import archived, schema
from depthwatch.storage.archived import SourceCounts, finished_before
from depthwatch.storage.read.streams import Stream, list_streams

log = logging.getLogger("depthwatch.archive")

DEADLOCK_DETECTED = "40P01"  # PostgreSQL's SQLSTATE

# The column holding each kind's exchange time (for a file's time range).
TIME_COLUMN = {kinds.GAPS: "start_timestamp"}


@dataclass(frozen=True)
class ArchiveOptions:
    formats: tuple[str, ...] = (PARQUET,)  # Parquet always; csv.gz as well if asked
    verify: bool = False
    # Keep today and this many days before it in PostgreSQL: older days whose
    # every stream is archived (and its manifest found) are dropped. None: drop
    # nothing (the collector's retention decides).
    hot_days: int | None = None


@dataclass(frozen=True)
class Pending:
    stream: Stream
    day: int  # days since the epoch
    counts: SourceCounts

    @property
    def stream_day(self) -> StreamDay:
        return StreamDay.of(self.stream.stream_key, self.day)

    @property
    def start_us(self) -> int:
        return self.day * DAY_US


@dataclass
class RunResult:
    archived: int = 0
    lost: list[str] | None = None
    failure: str | None = None
    dropped: int = 0  # days whose partitions went
    kept: dict[str, str] = field(default_factory=dict)  # day past --hot-days -> why it stays

    @property
    def problem(self) -> str | None:
        """What the Health page shows as the run's failure."""
        if self.failure:
            return self.failure
        return f"lost: {', '.join(self.lost)}" if self.lost else None


def run_archive(engine: sa.Engine, store: ArchiveStore, options: ArchiveOptions) -> int:
    """The whole run; exit status 0 when every finished day is archived, 1
    when something failed or was found lost (logged, one line each). The
    run, and its failure, are recorded in archive_runs for the Health page."""
    try:
        schema.upgrade(engine)
        with engine.connect() as lock:
            if not archived.try_archive_lock(lock):
                log.info("another `depthwatch archive` is running on this database; nothing to do")
                return 0
            with engine.begin() as conn:
                run_id = archived.start_run(conn, store.shown, now_us())
            result = _run(engine, store, options)
            with engine.begin() as conn:
                kept = "; ".join(f"{day}: {why}" for day, why in result.kept.items()) or None
                archived.finish_run(
                    conn, run_id, result.archived, result.dropped, kept, result.problem, now_us()
                )
    except (sa.exc.ProgrammingError, sa.exc.InternalError) as exc:
        # A role that may not write (the dashboard's read-only one, say).
        log.error("the database refused the archive's writes: %s", first_line(exc))
        return 1
    except sa.exc.OperationalError as exc:
        log.error("the database failed: %s; days not archived stay in it", first_line(exc))
        return 1
    if result.failure:
        log.error("%s; days not archived stay in the database", result.failure)
        return 1
    if result.lost:
        lost = len(result.lost)
        log.error("lost: %d archived days are damaged and no longer in the database", lost)
        return 1
    return 0


def _run(engine: sa.Engine, store: ArchiveStore, options: ArchiveOptions) -> RunResult:
    result = RunResult(lost=[])
    try:
        store.check()
        _archive(engine, store, options, result)
        if options.hot_days is not None:
            _drop_archived_days(engine, store, options.hot_days, result)
    except StoreError as exc:
        result.failure = str(exc)
    return result


def _drop_archived_days(
    engine: sa.Engine, store: ArchiveStore, hot_days: int, result: RunResult
) -> None:
    """Drop the partitions of each day older than `hot_days` whose every
    stream is archived as the database holds it, its manifest in the store
    the one recorded; keep the others, saying why (logged, and in the run's
    `kept` for the Health page)."""
    now = now_us()
    with engine.begin() as conn:
        # Taken before the counts read the tables: a collector creating a
        # day's partitions (under this lock) would otherwise wait on our reads
        # while we wait on its lock to drop.
        schema.lock_partitions(conn)
        days = schema.expired_days(conn, hot_days, now)
        drop = []
        for day in days:
            why = _why_kept(conn, store, day)
            if why is None:
                drop.append(day)
            else:
                result.kept[utc_day(day * DAY_US)] = why
                log.warning("keeping %s in the database: %s", utc_day(day * DAY_US), why)
        trim_before = min([now // DAY_US - hot_days, *(d for d in days if d not in drop)])
        schema.drop_days(conn, drop, trim_before)
    result.dropped = len(drop)
    if drop:
        first, last = utc_day(drop[0] * DAY_US), utc_day(drop[-1] * DAY_US)
        log.info("dropped %d archived days from the database (%s to %s)", len(drop), first, last)


def _why_kept(conn: sa.Connection, store: ArchiveStore, day: int) -> str | None:
    """Why `day` must stay in the database, or None if every stream of it is archived."""
    missing = archived.unarchived_streams(conn, day)
    if missing:
        return f"not archived yet: {', '.join(missing)}"
    counts = archived.day_counts(conn, (day + 1) * DAY_US, day * DAY_US)
    if any(c.legacy_events for c in counts.values()):
        return "it holds schema 1-3 book rows, which the archive's log does not carry"
    for stream, sha in archived.manifests_of_day(conn, day):
        exchange = TARDIS_EXCHANGE[stream.category]
        path = StreamDay(
            exchange, stream.symbol, stream.depth, utc_day(day * DAY_US)
        ).manifest_path()
        try:
            data = store.read(path)
        except FileNotFoundError:
            return f"{path} is missing from {store}"
        if hashlib.sha256(data).hexdigest() != sha:
            return f"{path} in {store} is not the manifest recorded"
        logged = {f.kind for f in Manifest.from_json(data).files}
        if not {f"{LOG}/{t.name}" for t in LOG_TABLES} <= logged:
            # Readers need the log once the day is gone (storage/read/cold.py).
            return f"{path} names no log of the day (archived by an older depthwatch)"
    return None


def _archive(
    engine: sa.Engine, store: ArchiveStore, options: ArchiveOptions, result: RunResult
) -> None:
    # One transaction per statement: these reads span many partitioned
    # tables, and a transaction holding each table's lock until its end would
    # deadlock with a collector creating partitions of them in another order.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        streams = {s.id: s for s in list_streams(conn)}
        counts = archived.day_counts(conn, finished_before(now_us()))
        done = archived.archived(conn)
    if options.verify:
        _verify(engine, store, streams, counts, done, result)
    manifests = _manifest_paths(store, streams.values())
    todo = [
        Pending(streams[sid], day, c)
        for (sid, day), c in sorted(counts.items(), key=lambda item: (item[0][1], item[0][0]))
        if c.has_book and not _is_archived(store, streams[sid], day, c, done, manifests)
    ]
    if not todo:
        log.info("archive %s: every finished day is archived", store)
        return
    log.info("archive %s: %d stream-days to write", store, len(todo))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="depthwatch-archive-") as scratch:
        for index, pending in enumerate(todo, 1):
            began = time.monotonic()
            write = functools.partial(archive_day, engine, store, pending, options, Path(scratch))
            manifest = _deadlock_retried(write)
            result.archived += 1
            elapsed = time.monotonic() - started
            eta = elapsed / index * (len(todo) - index)
            l2 = sum(f.rows for f in manifest.files if f.kind == kinds.L2 and f.format == PARQUET)
            log.info(
                "archived %s (%d/%d): %d files, %.1f MB, %d L2 rows in %.1f s; ETA %.0f s",
                pending.stream_day,
                index,
                len(todo),
                len(manifest.files),
                manifest.bytes / 1e6,
                l2,
                time.monotonic() - began,
                eta,
            )


DEADLOCK_ATTEMPTS = 3
T = TypeVar("T")


def _deadlock_retried(call: Callable[[], T]) -> T:
    """`call`, again if PostgreSQL broke a deadlock by ending our transaction
    (a collector creating partitions while the export's reads hold the
    tables): a stream-day is written whole or not, so trying again is safe."""
    for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
        try:
            return call()
        except sa.exc.OperationalError as exc:
            if (
                getattr(exc.orig, "pgcode", None) != DEADLOCK_DETECTED
                or attempt == DEADLOCK_ATTEMPTS
            ):
                raise
            log.warning("deadlock with another writer (attempt %d); trying again", attempt)
            time.sleep(attempt)
    raise AssertionError("unreachable")


def _manifest_paths(store: ArchiveStore, streams: Iterable[Stream]) -> set[str]:
    """Every manifest in the archive for these streams' exchanges (one listing each)."""
    exchanges = sorted({TARDIS_EXCHANGE[s.category] for s in streams})
    return {path for e in exchanges for path in store.list(f"{e}/{MANIFESTS}")}


def _is_archived(
    store: ArchiveStore,
    stream: Stream,
    day: int,
    counts: SourceCounts,
    done: dict[tuple[int, int], tuple[SourceCounts, str]],
    manifests: set[str],
) -> bool:
    """A manifest exists and was made from what the database holds now."""
    pending = Pending(stream, day, counts)
    path = pending.stream_day.manifest_path()
    if path not in manifests:
        return False
    known = done.get((stream.id, day))
    if known is not None:
        return known[0] == counts
    # A manifest the database has no row for (the database was restored, say):
    # its own counts decide.
    try:
        return Manifest.from_json(store.read(path)).source == counts
    except (ValueError, FileNotFoundError):
        return False


def archive_day(
    engine: sa.Engine,
    store: ArchiveStore,
    pending: Pending,
    options: ArchiveOptions,
    scratch: Path,
) -> Manifest:
    """Write one stream-day: its files, each read back and compared, then its
    manifest, then the database's row. StoreError if the store fails."""
    stream, day = pending.stream, pending.stream_day
    start, end = pending.start_us, pending.start_us + DAY_US
    files: list[ArchivedFile] = []
    for kind in ARCHIVED_KINDS:
        depth = None if kind == kinds.TRADES else stream.depth
        request = ExportRequest(kind, stream.category, stream.symbol, start, end, depth)
        (planned,) = check_requests(engine, [request])
        for fmt in (PARQUET, *[f for f in options.formats if f != PARQUET]):
            local = scratch / f"{kind}.{fmt}"
            rows = write_file(engine, [planned], fmt, local, progress_to=None)
            time_column = TIME_COLUMN.get(kind, "timestamp")
            first, last = _time_range(local, time_column) if fmt == PARQUET else (None, None)
            if fmt != PARQUET:  # the same rows as the Parquet file just made
                parquet = next(f for f in files if f.kind == kind and f.format == PARQUET)
                first, last = parquet.first_timestamp, parquet.last_timestamp
            sha, size = _digest(local)
            path = day.file_path(kind, fmt)
            store.put(path, local)
            _check_stored(store, path, size, sha)
            files.append(ArchivedFile(kind, fmt, path, rows, size, sha, first, last))
            local.unlink()
    files += _archive_log(engine, store, pending, scratch)
    manifest = Manifest(
        day.exchange,
        stream.category,
        stream.symbol,
        stream.depth,
        day.date,
        __version__,
        schema.MIGRATIONS[-1].version,
        pending.counts,
        tuple(files),
    )
    data = manifest.to_json()
    store.put_bytes(day.manifest_path(), data, scratch / "manifest.json")
    _check_stored(store, day.manifest_path(), len(data), hashlib.sha256(data).hexdigest())
    with engine.begin() as conn:
        archived.record_archived(
            conn,
            stream.id,
            pending.day,
            pending.counts,
            len(files),
            manifest.bytes,
            hashlib.sha256(data).hexdigest(),
            store.url,
            now_us(),
        )
    return manifest


def _archive_log(
    engine: sa.Engine, store: ArchiveStore, pending: Pending, scratch: Path
) -> list[ArchivedFile]:
    """The stream-day's log (archive/log.py), each table's file uploaded and
    read back; what readers use once the day has left the database."""
    stream = pending.stream
    files = []
    for table in LOG_TABLES:
        local = scratch / f"{LOG}-{table.name}.parquet"
        # One statement per transaction (see _archive), streamed (a named
        # cursor, which needs a transaction of its own).
        with engine.connect() as conn, conn.begin():
            rows = archived.log_rows(
                conn, table.name, stream.id, stream.stream_key, stream.instrument_id, pending.day
            )
            count = write_log_file(table, rows, local)
        first, last = _time_range(local, table.time_column)
        sha, size = _digest(local)
        path = log_path(pending.stream_day, table)
        store.put(path, local)
        _check_stored(store, path, size, sha)
        files.append(
            ArchivedFile(f"{LOG}/{table.name}", PARQUET, path, count, size, sha, first, last)
        )
        local.unlink()
    return files


def _check_stored(store: ArchiveStore, path: str, size: int, sha: str) -> None:
    """The object as read back is the file written, or StoreError."""
    stored = store.stored(path)
    if stored is None or stored.bytes != size or stored.sha256 != sha:
        raise StoreError(f"{path} in {store} does not read back as written ({stored})")


def _digest(path: Path) -> tuple[str, int]:
    sha = hashlib.sha256()
    with path.open("rb") as src:
        while block := src.read(1 << 20):
            sha.update(block)
    return sha.hexdigest(), path.stat().st_size


def _time_range(path: Path, column: str) -> tuple[int | None, int | None]:
    """The least and greatest value of an integer column of a Parquet file,
    from its row groups' statistics (no data read: an L2 day has millions)."""
    import pyarrow.parquet as pq

    metadata = pq.read_metadata(path)
    index = metadata.schema.to_arrow_schema().get_field_index(column)
    lows, highs = [], []
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(index).statistics
        if metadata.row_group(group).num_rows == 0:
            continue
        if stats is None or not stats.has_min_max:
            raise ValueError(f"{path.name}: no statistics for {column}")
        lows.append(int(stats.min))
        highs.append(int(stats.max))
    return (min(lows), max(highs)) if lows else (None, None)


def _verify(
    engine: sa.Engine,
    store: ArchiveStore,
    streams: dict[int, Stream],
    counts: dict[tuple[int, int], SourceCounts],
    done: dict[tuple[int, int], tuple[SourceCounts, str]],
    result: RunResult,
) -> None:
    """Read back every file of every manifest. A damaged day the database
    still holds loses its manifest (and row), so it is archived again below;
    one it no longer holds keeps them and is reported lost."""
    held = {}
    for sid, day in counts:
        held[Pending(streams[sid], day, counts[(sid, day)]).stream_day.manifest_path()] = (sid, day)
    paths = sorted(_manifest_paths(store, streams.values()))
    for path in paths:
        problem = _manifest_problem(store, path)
        if problem is None:
            continue
        if path not in held:
            log.error("verify: %s: %s; the day is no longer in the database: lost", path, problem)
            assert result.lost is not None
            result.lost.append(path)
            continue
        log.warning("verify: %s: %s; archiving the day again from the database", path, problem)
        store.delete(path)
        with engine.begin() as conn:
            archived.forget_archived(conn, *held[path])
        done.pop(held[path], None)
    log.info("verify: %d manifests read back", len(paths))


def _manifest_problem(store: ArchiveStore, path: str) -> str | None:
    """What is wrong with the manifest at `path` or a file it names, or None."""
    try:
        manifest = Manifest.from_json(store.read(path))
    except FileNotFoundError:
        return "the manifest vanished"
    except ValueError as exc:
        return str(exc)
    for file in manifest.files:
        stored = store.stored(file.path)
        if stored is None:
            return f"{file.path} is missing"
        if stored.bytes != file.bytes or stored.sha256 != file.sha256:
            return f"{file.path} does not match its sha256"
    return None
