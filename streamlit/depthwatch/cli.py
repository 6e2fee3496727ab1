"""`depthwatch`: the command line. One subcommand per job; each explains itself."""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from depthwatch.config import (
    ConfigError,
    add_collector_arguments,
    add_database_arguments,
    collector_config_from_args,
)
from depthwatch.feed.topics import CATEGORIES, valid_depths
from depthwatch.logs import LogFormatError, first_line, setup_logging

log = logging.getLogger("depthwatch")
ROLE_PASSWORD_ENV = "DEPTHWATCH_ROLE_PASSWORD"


_UNIT_US = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
_UNIT_US["w"] = 7 * _UNIT_US["d"]
_RELATIVE = re.compile(r"-(\d+(?:\.\d+)?)([smhdw])")


def parse_time_us(text: str, now_us: int | None = None) -> int:
    """A time in UTC -> microseconds since the epoch: ISO 8601 (a date, or a
    date-time; naive means UTC), `now`, or a span back from now (`-90s`,
    `-30m`, `-1h`, `-2d`, `-1w`)."""
    text = text.strip()
    if text == "now" or _RELATIVE.fullmatch(text):
        now = time.time_ns() // 1000 if now_us is None else now_us
        found = _RELATIVE.fullmatch(text)
        return now if found is None else now - round(float(found[1]) * _UNIT_US[found[2]])
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {text!r} (e.g. 2026-11-24 or 2026-11-24T10:00Z), "
            "nor now or a span back from it (-30m, -1h, -2d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="depthwatch",
        description="Record Bybit v5 order books exactly into PostgreSQL, "
        "and export the history in Tardis.dev's formats.",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    collect = sub.add_parser(
        "collect",
        help="record order books (and trades) into PostgreSQL until stopped",
        description="Subscribe to Bybit order book streams, keep exact local books "
        "(snapshot + deltas, u continuity checked, resync on a gap) and write "
        "every message, top-of-book quotes and periodic top-N snapshots to PostgreSQL. "
        "Stops cleanly on SIGTERM/SIGINT after flushing everything received.",
    )
    add_collector_arguments(collect)

    db = sub.add_parser("db", help="database maintenance", description="Database maintenance.")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_sub.add_parser(
        "upgrade",
        help="create or upgrade the schema (the collector also does this at start)",
        description="Apply pending schema migrations under a lock (safe to run concurrently).",
    )
    add_database_arguments(upgrade)
    readonly = db_sub.add_parser(
        "create-readonly-role",
        help="create (or update) a login role that can only read, for the dashboard",
        description="Create a PostgreSQL login role with SELECT on the depthwatch tables, "
        "current and future (the daily partitions the writer creates), USAGE on their schema "
        "and no write of any kind; run again to reset its password. The password is "
        f"{ROLE_PASSWORD_ENV} if set, else generated; the one line on standard output is the "
        "DASHBOARD_DATABASE_URL to give the dashboard (it is printed once, never logged). "
        "Connects with --database-url (a role allowed to create roles and grant on the tables).",
    )
    readonly.add_argument(
        "name", help="role name: letters, digits and underscores, at most 63 characters"
    )
    add_database_arguments(readonly)

    export = sub.add_parser(
        "export",
        help="export recorded history as Tardis-compatible CSV (or Parquet)",
        description="Stream recorded rows in Tardis.dev's CSV layouts (or the same columns "
        "in Parquet), microsecond timestamps; [start, end) applies to the exchange timestamp.",
    )
    export.add_argument(
        "--kind", required=True, choices=["incremental_book_L2", "quotes", "trades"]
    )
    export.add_argument("--symbol", required=True, help="e.g. BTCUSDT")
    export.add_argument("--category", default="linear", choices=CATEGORIES)
    export.add_argument(
        "--depth", type=int, help="book depth to export (needed when several were recorded)"
    )
    export.add_argument(
        "--start",
        required=True,
        type=parse_time_us,
        help="inclusive, UTC: ISO 8601 (2026-11-24, 2026-11-24T10:00Z), now, or -30m, -1h, -2d",
    )
    export.add_argument(
        "--end", required=True, type=parse_time_us, help="exclusive, the same forms as --start"
    )
    export.add_argument(
        "--format",
        default="csv",
        choices=["csv", "csv.gz", "parquet"],
        help="csv: Tardis CSV exactly; csv.gz: the same, gzipped (as Tardis serves it); "
        "parquet: the same columns, prices as float64",
    )
    export.add_argument("--out", default="-", help="output file, or - for standard output")
    export.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_database_arguments(export)

    sim = sub.add_parser(
        "sim",
        help="run a local Bybit v5 WebSocket simulator",
        description="Serve Bybit's v5 public WebSocket protocol on localhost from a seeded "
        "synthetic market or recorded files, with optional fault injection.",
    )
    from depthwatch.sim.server import add_sim_arguments

    add_sim_arguments(sim)

    from depthwatch.supervisor import add_dashboard_arguments, add_up_arguments

    up = sub.add_parser(
        "up",
        help="run the collector and the live dashboard (optionally on a local simulator)",
        description="Run everything as supervised child processes: the collector (every "
        "collector flag below passes through to it), the Streamlit dashboard, and with "
        "--source sim a local Bybit simulator the collector records instead of Bybit "
        "(marked as simulated). The database is resolved first: --database-url / "
        "DATABASE_URL, else an embedded PostgreSQL in --data-dir that lives as long as "
        "this command. Ctrl-C or SIGTERM stops the dashboard and the collector (which "
        "writes every row it received), then the simulator, and exits 0; if a child dies, "
        "the others are stopped and it exits 1.",
    )
    add_up_arguments(up)

    dashboard = sub.add_parser(
        "dashboard",
        help="run only the live dashboard (Streamlit) over a recorded database",
        description="Serve the Streamlit dashboard over the database a collector writes: "
        "--database-url (env DASHBOARD_DATABASE_URL or DATABASE_URL), else the embedded "
        "PostgreSQL in --data-dir. Stops cleanly on Ctrl-C or SIGTERM and exits 0.",
    )
    add_dashboard_arguments(dashboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ConfigError as exc:  # a bad environment variable, found while setting defaults
        print(f"depthwatch: configuration error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        setup_logging(args.log_level)
    except LogFormatError as exc:
        print(f"depthwatch: configuration error: {exc}", file=sys.stderr)
        return 2
    from depthwatch.storage.db import DatabaseUnavailable

    try:
        return _dispatch(args)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    except DatabaseUnavailable as exc:
        log.error("%s", exc)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "collect":
        from depthwatch.collector import run_collector

        return run_collector(collector_config_from_args(args))
    if args.command == "db":
        if args.db_command == "create-readonly-role":
            return _db_create_readonly_role(args)
        return _db_upgrade(args)
    if args.command == "export":
        return _export(args)
    if args.command == "sim":
        from depthwatch.sim.server import run_sim

        return run_sim(args)
    if args.command == "up":
        from depthwatch.supervisor import run_up

        return run_up(args)
    if args.command == "dashboard":
        from depthwatch.supervisor import run_dashboard

        return run_dashboard(args)
    raise AssertionError(args.command)


def _db_upgrade(args: argparse.Namespace) -> int:
    from depthwatch.storage import schema
    from depthwatch.storage.db import make_engine, resolve_database_url, wait_for_database

    engine = make_engine(resolve_database_url(args.database_url, args.data_dir))
    wait_for_database(engine, args.database_wait)
    version = schema.upgrade(engine)
    print(f"schema at version {version}")
    return 0


def _db_create_readonly_role(args: argparse.Namespace) -> int:
    import os
    import secrets

    from depthwatch.storage import roles, schema
    from depthwatch.storage.db import make_engine, resolve_database_url, wait_for_database

    try:
        name = roles.validate_role_name(args.name)
    except roles.RoleError as exc:
        log.error("%s", exc)
        return 2
    password = os.environ.get(ROLE_PASSWORD_ENV) or secrets.token_urlsafe(24)
    url = resolve_database_url(args.database_url, args.data_dir)
    engine = make_engine(url, pool_size=1)
    try:
        wait_for_database(engine, args.database_wait)
        schema.upgrade(engine)  # the tables exist, so the grants reach them now
        role = roles.create_readonly_role(engine, name, password)
    except roles.RoleError as exc:
        log.error("%s", exc)
        return 1
    finally:
        engine.dispose()
    log.info(
        "read-only role %s %s: SELECT on %d tables in schema %s and on future tables of %s; "
        "no write. Its URL follows on standard output, once: keep it as DASHBOARD_DATABASE_URL",
        role.name,
        "created" if role.created else "updated (password reset)",
        role.tables,
        role.schema,
        ", ".join(role.default_owners),
    )
    print(f"DASHBOARD_DATABASE_URL={roles.role_url(url, role.name, password)}", flush=True)
    return 0


def _export(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from depthwatch.export.tardis import CsvSink, ExportRequest, ParquetSink, export
    from depthwatch.storage.db import make_engine, resolve_database_url, wait_for_database
    from depthwatch.storage.queries import NotRecorded

    if args.end <= args.start:
        log.error("--end must be after --start")
        return 2
    # Recorded depths are Bybit's, plus 500 from older archives.
    depths = valid_depths(args.category, legacy=True)
    if args.depth is not None and args.depth not in depths:
        listed = ", ".join(str(d) for d in depths)
        log.error("--depth %d: %s books have depth %s", args.depth, args.category, listed)
        return 2
    request = ExportRequest(
        args.kind, args.category, args.symbol.upper(), args.start, args.end, args.depth
    )
    engine = make_engine(resolve_database_url(args.database_url, args.data_dir))
    wait_for_database(engine, args.database_wait)
    progress = None if args.quiet else sys.stderr
    try:
        if args.format == "parquet":
            if args.out == "-":
                export(engine, request, ParquetSink(request, sys.stdout.buffer), progress)
            else:
                with atomic_path(Path(args.out)) as partial, partial.open("wb") as binary:
                    export(engine, request, ParquetSink(request, binary), progress)
        elif args.format == "csv.gz":
            target = sys.stdout.buffer if args.out == "-" else None
            with contextlib.ExitStack() as stack:
                if target is None:
                    partial = stack.enter_context(atomic_path(Path(args.out)))
                    target = stack.enter_context(partial.open("wb"))
                zipped = stack.enter_context(gzip.GzipFile(fileobj=target, mode="wb", mtime=0))
                lines = stack.enter_context(io.TextIOWrapper(zipped, encoding="ascii", newline=""))
                export(engine, request, CsvSink(request, lines), progress)
        elif args.out == "-":
            export(engine, request, CsvSink(request, sys.stdout), progress)
        else:
            with (
                atomic_path(Path(args.out)) as partial,
                partial.open("w", encoding="ascii", newline="") as text,
            ):
                export(engine, request, CsvSink(request, text), progress)
    except NotRecorded as exc:
        log.error("%s", exc)
        return 1
    except sa.exc.OperationalError as exc:
        log.error("the database went away during the export (%s); no file written", first_line(exc))
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; no file written")
        return 130
    return 0


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to: renamed over `path` when
    the block ends, removed if it raises, so the file appears whole or not at all."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
