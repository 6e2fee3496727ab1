"""`depthwatch`: the command line. One subcommand per job; each explains itself."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from depthwatch.clock import TIME_FORMS, TimeFormatError, parse_time_us
from depthwatch.config import (
    ConfigError,
    add_collector_arguments,
    add_database_arguments,
    book_depth,
    collector_config_from_args,
)
from depthwatch.feed.registry import CATEGORIES
from depthwatch.logs import LogFormatError, setup_logging

log = logging.getLogger("depthwatch")
ROLE_PASSWORD_ENV = "DEPTHWATCH_ROLE_PASSWORD"


def time_argument(text: str) -> int:
    """argparse's type for --start/--end: clock.parse_time_us, its error as a usage error."""
    try:
        return parse_time_us(text)
    except TimeFormatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


TIME_OPTIONS = ("--start", "--end")


def _join_time_values(argv: list[str]) -> list[str]:
    """`--start -1h` as `--start=-1h`: argparse would take `-1h` for an option."""
    joined: list[str] = []
    values = iter(argv)
    for arg in values:
        if arg in TIME_OPTIONS:
            value = next(values, None)
            joined.append(arg if value is None else f"{arg}={value}")
        else:
            joined.append(arg)
    return joined


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
        help="export recorded history as Tardis-compatible CSV, CSV gzip or Parquet",
        description="Stream recorded rows in Tardis.dev's CSV layouts (or the same columns "
        "in Parquet), microsecond timestamps; [start, end) applies to the exchange timestamp. "
        "Files appear whole or not at all. Several symbols (or --split daily) with --out DIR "
        "write one file per symbol (per UTC day), named as Tardis names its downloads: "
        "EXCHANGE_KIND_YYYY-MM-DD_SYMBOL.FORMAT.",
    )
    export.add_argument(
        "--kind",
        required=True,
        metavar="KIND",
        help="incremental_book_L2, quotes, trades, book_snapshot_N[_INTERVAL] (the top N "
        "levels computed from the log: book_snapshot_25 at every change, "
        "book_snapshot_25_100ms, book_snapshot_5_1s, book_snapshot_10_1m at interval ends), "
        "or gaps (where the record is incomplete)",
    )
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--symbol", help="one symbol, e.g. BTCUSDT")
    which.add_argument("--symbols", help="several, comma-separated: BTCUSDT,ETHUSDT")
    which.add_argument(
        "--all", action="store_true", help="every symbol of --category with a recorded book"
    )
    export.add_argument("--category", default="linear", choices=CATEGORIES)
    export.add_argument(
        "--depth", type=book_depth, help="book depth to export (needed when several were recorded)"
    )
    export.add_argument(
        "--start",
        required=True,
        type=time_argument,
        help=f"inclusive, UTC: {TIME_FORMS}",
    )
    export.add_argument(
        "--end",
        default="now",
        type=time_argument,
        help="exclusive, the same forms as --start; default now",
    )
    export.add_argument(
        "--format",
        default="csv",
        choices=["csv", "csv.gz", "parquet"],
        help="csv: Tardis CSV exactly; csv.gz: the same, gzipped (as Tardis serves it); "
        "parquet: the same columns (prices float64), then exchange_time and local_time "
        "as timestamp[us, UTC]",
    )
    export.add_argument(
        "--split",
        choices=["daily"],
        help="daily: one file per symbol per UTC day, in the --out directory",
    )
    export.add_argument(
        "--out",
        default="-",
        help="output file, or - for standard output (several symbols follow one another "
        "under one header); a directory (existing, or ending in /) gets one file per symbol",
    )
    export.add_argument(
        "--quiet", action="store_true", help="no progress bar (never shown unless on a terminal)"
    )
    add_database_arguments(export)

    from depthwatch.config import add_archive_arguments

    archive = sub.add_parser(
        "archive",
        help="write every finished UTC day to the archive as Parquet files (or csv.gz)",
        description="For every recorded stream and every finished UTC day not yet archived "
        "(or changed since: late rows), write the day's incremental_book_L2, quotes, trades "
        "and gaps as Parquet files in a hive layout "
        "(EXCHANGE/KIND/symbol=S/depth=D/date=YYYY-MM-DD/), read each back, then write the "
        "day's manifest: no manifest means not archived, and a rerun finishes the work. "
        "One run at a time per database (a second one exits 0 at once).",
    )
    add_archive_arguments(archive)

    from depthwatch.export.gaps_arguments import add_gaps_arguments

    gaps = sub.add_parser(
        "gaps",
        help="list the intervals where the record is incomplete",
        description="Per stream: where no collector was recording, u gaps, lost connections, "
        "refused messages and rows the writer dropped. Receive times (UTC); [start, end).",
    )
    add_gaps_arguments(gaps)

    sim = sub.add_parser(
        "sim",
        help="run a local Bybit v5 WebSocket simulator",
        description="Serve Bybit's v5 public WebSocket protocol on localhost from a seeded "
        "synthetic market or recorded files, with optional fault injection.",
    )
    from depthwatch.sim.config import add_sim_arguments

    add_sim_arguments(sim)

    from depthwatch.up_arguments import add_dashboard_arguments, add_up_arguments

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
    args = parser.parse_args(_join_time_values(sys.argv[1:] if argv is None else argv))
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
        if args.streams:
            from depthwatch.supervisor import run_streams

            return run_streams(args)
        from depthwatch.collector_process import run_collector

        return run_collector(collector_config_from_args(args))
    if args.command == "db":
        if args.db_command == "create-readonly-role":
            return _db_create_readonly_role(args)
        return _db_upgrade(args)
    if args.command == "export":
        return _export(args)
    if args.command == "archive":
        return _archive(args)
    if args.command == "gaps":
        from depthwatch.export.gaps import run_gaps

        return run_gaps(args)
    if args.command == "sim":
        from depthwatch.sim.run import run_sim

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
    if role.temp_roles:
        log.info(
            "no temporary tables or functions: TEMPORARY on database %s taken from PUBLIC, "
            "granted to %s",
            role.database,
            ", ".join(role.temp_roles),
        )
    if role.template1_closed:
        log.info("no connection to template1: CONNECT and TEMPORARY there taken from PUBLIC")
    for note in role.notes:
        log.warning("note: %s", note)
    print(f"DASHBOARD_DATABASE_URL={roles.role_url(url, role.name, password)}", flush=True)
    return 0


def _archive(args: argparse.Namespace) -> int:
    from depthwatch.archive.run import ArchiveOptions, run_archive
    from depthwatch.archive.store import StoreError, open_store
    from depthwatch.config import archive_url
    from depthwatch.storage.db import make_engine, resolve_database_url, wait_for_database

    if args.hot_days is not None and args.hot_days < 0:
        log.error("--hot-days: a number of days, 0 or more")
        return 2
    url = archive_url(args)
    if url is None:
        log.info("no archive configured (--archive-url, DEPTHWATCH_ARCHIVE_URL): nothing to do")
        return 0
    try:
        store = open_store(url, args.retry_for)
    except StoreError as exc:
        log.error("--archive-url: %s", exc)
        return 2
    formats = tuple(dict.fromkeys(["parquet", *(args.format or [])]))
    engine = make_engine(resolve_database_url(args.database_url, args.data_dir), pool_size=2)
    try:
        wait_for_database(engine, args.database_wait)
        options = ArchiveOptions(formats, args.verify, args.hot_days)
        return run_archive(engine, store, options)
    finally:
        engine.dispose()


def _export(args: argparse.Namespace) -> int:

    from depthwatch.export.command import (
        READ_FAILURES,
        range_or_depth_refused,
        read_failed,
        warn_partial_books,
    )
    from depthwatch.export.files import plan_files, write_export, write_file
    from depthwatch.export.kinds import ExportKind
    from depthwatch.export.tardis import ExportRequest, check_requests
    from depthwatch.storage.db import make_engine, resolve_database_url, wait_for_database
    from depthwatch.storage.read.streams import NotRecorded, recorded_symbols

    if range_or_depth_refused(log, args.start, args.end, args.category, args.depth):
        return 2
    try:
        ExportKind.parse(args.kind)
    except ValueError as exc:
        log.error("--kind: %s", exc)
        return 2
    out = Path(args.out)
    to_directory = args.out != "-" and (args.out.endswith(("/", os.sep)) or out.is_dir())
    if args.split and not to_directory:
        log.error("--split daily writes one file per symbol per day: give --out a directory")
        return 2
    engine = make_engine(resolve_database_url(args.database_url, args.data_dir))
    wait_for_database(engine, args.database_wait)
    progress = None if args.quiet else sys.stderr
    symbols: list[str]
    try:
        if args.all:
            with engine.connect() as conn:
                symbols = recorded_symbols(conn, args.category)
            if not symbols:
                raise NotRecorded(f"no {args.category} book has been recorded")
        else:
            named: list[str] = args.symbols.split(",") if args.symbols else [args.symbol]
            symbols = list(dict.fromkeys(s.strip().upper() for s in named if s.strip()))
        requests = [
            ExportRequest(args.kind, args.category, s, args.start, args.end, args.depth)
            for s in symbols
        ]
        # Every symbol, before a byte is written; the plans say what each reads.
        checked = check_requests(engine, requests)
        warn_partial_books(log, engine, checked)
        requests = list(checked)
        if to_directory:
            out.mkdir(parents=True, exist_ok=True)
            for planned in plan_files(requests, args.format, args.split == "daily"):
                path = out / planned.name
                rows = write_file(engine, planned.requests, args.format, path, progress)
                log.info("wrote %s (%d rows)", path, rows)
        elif args.out == "-":
            write_export(engine, requests, args.format, sys.stdout.buffer, progress)
        else:
            rows = write_file(engine, requests, args.format, out, progress)
            log.info("wrote %s (%d rows)", out, rows)
    except READ_FAILURES as exc:
        return read_failed(
            log, exc, "the database went away during the export (%s); no file written"
        )
    except KeyboardInterrupt:
        log.error("interrupted; no file written")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
