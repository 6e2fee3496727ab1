"""The flags of `depthwatch up` and `depthwatch dashboard` (supervisor.py
runs them): where the dashboard listens, what `up` records and from where,
and which of them pass through to the children's own commands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from depthwatch.app.clients import (
    TRUSTED_PROXIES_ENV,
    parse_trusted_proxies,
)
from depthwatch.config import (
    add_collector_arguments,
    archive_url_from_env,
    database_url_from_env,
    default_data_dir,
)

SOURCES = ("bybit", "sim")
DEFAULT_DASHBOARD_PORT = 8501
DEFAULT_DASHBOARD_ADDRESS = "localhost"
DEFAULT_SIM_RATE = 50.0


def _port(text: str, allow_zero: bool = False) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range")
    return port


def _trusted_proxies(text: str) -> str:
    try:
        return parse_trusted_proxies(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port_or_zero(text: str) -> int:
    return _port(text, allow_zero=True)


def _add_dashboard_listen_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
) -> None:
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_DASHBOARD_PORT,
        help=f"dashboard HTTP port (default {DEFAULT_DASHBOARD_PORT})",
    )
    parser.add_argument(
        "--address",
        default=DEFAULT_DASHBOARD_ADDRESS,
        help="interface the dashboard listens on; 0.0.0.0 serves other machines too "
        f"(default {DEFAULT_DASHBOARD_ADDRESS})",
    )
    parser.add_argument(
        "--trusted-proxies",
        type=_trusted_proxies,
        default=os.environ.get(TRUSTED_PROXIES_ENV, ""),
        help="comma-separated addresses or networks of reverse proxies whose "
        "X-Forwarded-For names the dashboard's clients, for the login's rate limit "
        f"(env {TRUSTED_PROXIES_ENV}; default none: the header is ignored)",
    )


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    """Every collector flag (passed through to the collector) plus up's own,
    grouped apart in --help."""
    add_collector_arguments(parser)
    own = parser.add_argument_group(
        "up's own options", "every option above is the collector's and passes through to it"
    )
    own.add_argument(
        "--source",
        choices=SOURCES,
        default="bybit",
        help="bybit: record Bybit's live streams; sim: start a local simulator and record "
        "it instead, marked as simulated (default bybit)",
    )
    _add_dashboard_listen_arguments(own)
    own.add_argument(
        "--sim-port",
        type=_port_or_zero,
        default=0,
        help="simulator TCP port with --source sim; 0 picks a free one (default 0)",
    )
    own.add_argument(
        "--archive-url",
        default=archive_url_from_env(),
        help="where finished days are archived, as `depthwatch archive` does, at start and "
        "after each UTC midnight (env DEPTHWATCH_ARCHIVE_URL; default: <data dir>/archive "
        "with the embedded database, none with DATABASE_URL)",
    )
    own.add_argument(
        "--no-archive", action="store_true", help="archive nothing (retention by age alone)"
    )
    own.add_argument(
        "--sim-rate",
        type=float,
        default=DEFAULT_SIM_RATE,
        help=f"simulator book steps per second per symbol (default {DEFAULT_SIM_RATE:g})",
    )


def add_dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    _add_dashboard_listen_arguments(parser)
    parser.add_argument(
        "--database-url",
        default=database_url_from_env(reader=True),
        help="PostgreSQL URL to read (env DASHBOARD_DATABASE_URL, else DATABASE_URL); "
        "unset: the embedded PostgreSQL with its data in --data-dir",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help="directory of the embedded PostgreSQL's data, as given to the collector "
        "(env DEPTHWATCH_DATA_DIR, default .depthwatch)",
    )


def passthrough_flags(args: argparse.Namespace, skip: frozenset[str]) -> list[str]:
    """Rebuild command-line flags from every collector argument in `args`, so a
    flag added to the collector later reaches the child without editing `up`.
    Values are joined with `=` so one starting with '-' stays a value."""
    probe = argparse.ArgumentParser(add_help=False)
    add_collector_arguments(probe)
    flags: list[str] = []
    for action in probe._actions:  # argparse has no public list of its actions
        if not action.option_strings or action.dest in skip:
            continue
        flag = action.option_strings[-1]
        value = getattr(args, action.dest)
        if action.nargs == 0:  # store_true, store_false, store_const
            if value == action.const:
                flags.append(flag)
        elif isinstance(value, list):
            flags += [f"{flag}={item}" for item in value]
        elif value is not None:
            flags.append(f"{flag}={value}")
    return flags
