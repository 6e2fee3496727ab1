"""Where exports go: the formats, Tardis-style file names, one file per
symbol per UTC day (`--split daily`), and files that appear whole or not at all."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, TextIO

import sqlalchemy as sa

from depthwatch.clock import DAY_US, utc_day
from depthwatch.export.sinks import CsvSink, ParquetSink, RowSink
from depthwatch.export.tardis import ExportRequest, export

FORMATS = ("csv", "csv.gz", "parquet")
MEDIA_TYPES = {
    "csv": "text/csv",
    "csv.gz": "application/gzip",
    "parquet": "application/vnd.apache.parquet",
}


@dataclass(frozen=True)
class OutputFile:
    name: str  # the file name (Tardis's download naming)
    requests: list[ExportRequest]  # whose rows it holds, in order


def file_name(request: ExportRequest, fmt: str) -> str:
    """`{exchange}_{kind}_{day}_{symbol}.{format}` as Tardis names its
    downloads; a range over several UTC days names its first and last."""
    first, last = utc_day(request.start_us), utc_day(request.end_us - 1)
    days = first if first == last else f"{first}_{last}"
    return f"{request.exchange}_{request.kind}_{days}_{request.symbol}.{fmt}"


def split_daily(request: ExportRequest) -> list[ExportRequest]:
    """The request cut at UTC midnights: [start, end) as whole days (the first
    and last maybe partial)."""
    parts = []
    day = request.start_us - request.start_us % DAY_US
    while day < request.end_us:
        start, end = max(request.start_us, day), min(request.end_us, day + DAY_US)
        parts.append(replace(request, start_us=start, end_us=end))
        day += DAY_US
    return parts


def plan_files(requests: Sequence[ExportRequest], fmt: str, daily: bool) -> list[OutputFile]:
    """One file per request (per symbol), or per symbol per day."""
    parts = [p for r in requests for p in split_daily(r)] if daily else list(requests)
    return [OutputFile(file_name(p, fmt), [p]) for p in parts]


def make_sink(kind: str, fmt: str, stack: contextlib.ExitStack, binary: BinaryIO) -> RowSink:
    """A sink writing `fmt` to `binary`; what it opens, `stack` closes (never `binary`)."""
    if fmt == "parquet":
        return ParquetSink(kind, binary)
    if fmt == "csv.gz":
        # mtime=0: the same rows make the same bytes.
        zipped = stack.enter_context(gzip.GzipFile(fileobj=binary, mode="wb", mtime=0))
        return CsvSink(kind, stack.enter_context(_text(zipped)))
    if fmt == "csv":
        return CsvSink(kind, stack.enter_context(_text(binary)))
    raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")


@contextlib.contextmanager
def _text(binary: BinaryIO | gzip.GzipFile) -> Iterator[TextIO]:
    """ASCII text over `binary`, flushed and detached at the end, so that
    closing it leaves `binary` (standard output, a caller's buffer) open."""
    text = io.TextIOWrapper(binary, encoding="ascii", newline="")
    try:
        yield text
    finally:
        text.flush()
        text.detach()


def write_export(
    engine: sa.Engine,
    requests: Sequence[ExportRequest],
    fmt: str,
    binary: BinaryIO,
    progress_to: TextIO | None = sys.stderr,
) -> int:
    """The requests' rows, one after the other under one header, as `fmt` to
    `binary` (left open); returns the number of data rows."""
    with contextlib.ExitStack() as stack:
        sink = make_sink(requests[0].kind, fmt, stack, binary)
        rows = export(engine, requests, sink, progress_to)
    binary.flush()
    return rows


def write_file(
    engine: sa.Engine,
    requests: Sequence[ExportRequest],
    fmt: str,
    path: Path,
    progress_to: TextIO | None = sys.stderr,
) -> int:
    """write_export to `path`, atomically."""
    with atomic_path(path) as partial, partial.open("wb") as binary:
        return write_export(engine, requests, fmt, binary, progress_to)


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
