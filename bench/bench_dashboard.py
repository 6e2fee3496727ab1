"""Dashboard benchmark: window queries with 1 h and 24 h of history, what a
browser costs per refresh, and the dashboard's memory over a long run.

    .venv/bin/python bench/bench_dashboard.py                      # every phase (~50 min)
    .venv/bin/python bench/bench_dashboard.py --phase queries      # ~5 min (1-2 of them generating)
    .venv/bin/python bench/bench_dashboard.py --phase queries --layout legacy   # ~7 min
    .venv/bin/python bench/bench_dashboard.py --phase browser      # ~10 min
    .venv/bin/python bench/bench_dashboard.py --phase rss --minutes 30    # ~37 min
    .venv/bin/python bench/bench_dashboard.py --phase queries --keep --explain --what-if

Phases (one stream, depth 50 at 50 messages/s):
  queries  Two layouts of the book's history (--layout):
           packed (default): what a schema 4 collector writes (book_chunks,
             top_seconds, top_snapshots). bench/record_paced.py records one
             hour of P00USDT, a paced synthetic stream, through the real
             parser, book and writer, faster than real time (~30 s at ~7,000
             messages/s), ending "now". 24 h = that 1 h recorded, then
             replicated 23 times back in time in SQL (rows moved by whole
             hours, u moved so it keeps increasing; a chunk decodes relative
             to its row's ts_us and u, so moved rows decode correctly): every
             hour of the 24 h history holds the same book and prices, and
             each starts with the recording's snapshot, like a resync.
           legacy: the schema 1-3 tables, generated in SQL (INSERT ... SELECT
             generate_series, an hour per transaction): BTCUSDT book events
             with 2-20 changed levels as numeric[] arrays, quotes for half
             the messages, a 50+50-level depth snapshot every second. What the
             figures before schema 4 measured.
           Both add, in SQL, ~2 trades/s (priced from the history's mids),
           collector heartbeats every 2 s and a few feed events. Then,
           interleaved on the 1 h and the 24 h database: every query the live
           page's read (`data.live_view`) makes, timed one by one (p50/p95,
           and the part spent in cursor.execute), the whole read (one
           transaction, no Streamlit cache), and the page's figure building
           and Plotly JSON serialisation as Streamlit does it. 24 h / 1 h
           ratios compare the same run. "Now" is pinned to the end of each
           history, so every window is full.
           --explain prints EXPLAIN ANALYZE of each statement (24 h, 60 min);
           --what-if also times the read with rows handed to pandas as tuples.
  browser  A live setup: `depthwatch sim`, `depthwatch collect` and `depthwatch
           dashboard` on 127.0.0.1 over a database seeded with 1 h of history,
           and headless Chromium (Playwright) on the Live page. Stages: no page,
           1 page, 10 pages (10 contexts), 10 pages whose charts are not drawn
           (see Browser), no page again. Per stage: the dashboard's database
           transactions (counted in its process, and pg_stat_database minus the
           collector's baseline), WebSocket bytes per refresh, refreshes/s, the
           "Data age" shown on the page, CPU of the Streamlit server and of
           Chromium, the server's RSS.
  rss      The same live setup with one page open for --minutes (default 30),
           then --viewers pages for --viewer-minutes: the Streamlit server's
           VmRSS every 10 s, summarised after a 2 minute warm-up.

Every process it starts is stopped on exit, SIGTERM and Ctrl-C included; all
traffic stays on 127.0.0.1 (PostgreSQL on a Unix socket).

The parts: dash_history.py (the stream and the legacy history generated in
SQL), dash_packed.py (the packed history: one recorded hour, replicated),
dash_queries.py (phase 1), dash_live.py (the live setup), dash_browser.py
(phases 2 and 3); what every benchmark shares is in common.py, databases.py
and children.py.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from common import SRC, current_commit, exit_on_sigterm, machine_line
from dash_browser import run_browser, run_rss
from dash_packed import history_names
from dash_queries import run_queries
from databases import database_server, drop_database

DEFAULT_DATA_DIR = Path("/tmp/depthwatch-bench-dashboard")
LAYOUTS = ("packed", "legacy")
# Options of the phases, in --help's order: flag, then argparse's keywords.
OPTIONS: tuple[tuple[str, dict[str, object]], ...] = (
    ("--rate", {"type": float, "default": 50.0, "help": "messages/s of the stream"}),
    ("--levels", {"type": int, "default": 25, "help": "levels per side (page default)"}),
    ("--iterations", {"type": int, "default": 50, "help": "reads per history and window"}),
    ("--warmup", {"type": int, "default": 3, "help": "reads discarded first"}),
    ("--explain", {"action": "store_true", "help": "EXPLAIN ANALYZE the queries"}),
    (
        "--what-if",
        {
            "action": "store_true",
            "help": "also time the read with rows passed to pandas as plain tuples "
            "(one-line change)",
        },
    ),
    ("--seconds", {"type": float, "default": 60.0, "help": "browser stage length"}),
    ("--settle", {"type": float, "default": 15.0, "help": "pause before each stage"}),
    ("--viewers", {"type": int, "default": 10, "help": "pages in the many-viewer stage"}),
    ("--minutes", {"type": float, "default": 30.0, "help": "rss: minutes with 1 page"}),
    (
        "--viewer-minutes",
        {"type": float, "default": 5.0, "help": "rss: minutes with --viewers pages"},
    ),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--phase", default="queries,browser,rss", help="comma-separated: queries, browser, rss"
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="embedded PG data")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the generated history databases and reuse them next time (legacy: topped "
        "up to now; packed: as they are, 'now' pinned at their end)",
    )
    parser.add_argument("--hours", default="1,24", help="histories to compare (default 1,24)")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="packed",
        help="queries: book history recorded packed (schema 4, default) or legacy tables",
    )
    for flag, keywords in OPTIONS:
        parser.add_argument(flag, **keywords)  # type: ignore[arg-type]
    args = parser.parse_args()
    exit_on_sigterm()
    phases = [p.strip() for p in args.phase.split(",") if p.strip()]
    unknown = set(phases) - {"queries", "browser", "rss"}
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")

    print(machine_line(detail=True))
    print(f"commit: {current_commit()}, code from {SRC}")
    logging.getLogger("depthwatch").setLevel(logging.WARNING)
    created: list[str] = []
    with database_server(args.data_dir) as server_url:
        try:
            if "queries" in phases:
                created += history_names(args.layout, [float(h) for h in args.hours.split(",")])
                run_queries(args, server_url)
            if "browser" in phases:
                run_browser(args, server_url, args.data_dir)
            if "rss" in phases:
                run_rss(args, server_url, args.data_dir)
        finally:
            if not args.keep:
                for name in created:
                    with contextlib.suppress(Exception):
                        drop_database(server_url, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
