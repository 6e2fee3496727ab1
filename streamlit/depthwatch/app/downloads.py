"""Files the dashboard makes for download: written to disk, never held in the
Python heap, at most MAX_BUILDS being made at once per process, handed out
once by the server's own route (`/api/download/{token}`, added by
streamlit/app.py) and deleted once sent or TTL_S after they were made.

Why not Streamlit's `st.download_button`: in Streamlit 1.67 its data, even a
deferred callable's, ends as one `bytes` object kept in the server's memory
until the session's next run; twenty viewers downloading a large window took a
512 MB web service past its memory (issue 20). Here a file costs disk while it
waits and the export's own working set while it is made, whatever its size.

The link is a capability: an unguessable token (192 bits), given only to the
session that made the file, good for one download within TTL_S.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import html
import io
import logging
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import sqlalchemy as sa
import streamlit as st
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response

from depthwatch.logs import first_line
from depthwatch.storage.db import DatabaseUnavailable
from depthwatch.storage.read.cold import ArchiveUnreadable

log = logging.getLogger("depthwatch.app.downloads")

MAX_BUILDS = 2  # files made at once in one dashboard process
TTL_S = 600.0  # a made file waits this long for its download
ROUTE_PREFIX = "/api/download/"
ROUTE = ROUTE_PREFIX + "{token}"
DIR_PREFIX = "depthwatch-downloads-"
GONE = (
    "This download link has expired or was used already: make the file again on the "
    "dashboard's page."
)


class Busy(RuntimeError):
    """MAX_BUILDS files are being made already."""


class FileTooLarge(RuntimeError):
    """The file being made outgrew its cap (an estimate was far off)."""


@dataclass(frozen=True)
class ReadyFile:
    token: str
    path: Path
    name: str
    media_type: str
    size: int
    rows: int
    expires_at: float  # time.monotonic()

    @property
    def url(self) -> str:
        return ROUTE_PREFIX + self.token


class CappedFile(io.RawIOBase):
    """A binary file that refuses to grow past `cap` bytes (FileTooLarge)."""

    def __init__(self, raw: BinaryIO, cap: int) -> None:
        super().__init__()
        self.raw = raw
        self.cap = cap
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        size = len(data)
        if self.written + size > self.cap:
            raise FileTooLarge(f"the file passed {self.cap:,} bytes")
        self.raw.write(data)
        self.written += size
        return size

    def tell(self) -> int:
        return self.written

    def flush(self) -> None:
        if not self.closed:
            self.raw.flush()


class FileStore:
    """Made files waiting for their download, in a private temporary folder."""

    def __init__(
        self,
        directory: Path | None = None,
        max_builds: int = MAX_BUILDS,
        ttl_s: float = TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._directory = directory
        self.ttl_s = ttl_s
        self.clock = clock
        self._slots = threading.BoundedSemaphore(max_builds)
        self._files: dict[str, ReadyFile] = {}
        self._lock = threading.Lock()

    @property
    def directory(self) -> Path:
        with self._lock:
            if self._directory is None:
                self._directory = _private_directory()
            return self._directory

    def build(
        self, name: str, media_type: str, write: Callable[[BinaryIO], int], cap: int
    ) -> ReadyFile:
        """Make a file with `write` (which returns its row count), at most
        `cap` bytes; Busy when MAX_BUILDS are being made. A failed build
        leaves nothing behind."""
        if not self._slots.acquire(blocking=False):
            raise Busy(f"{MAX_BUILDS} files are being made right now")
        try:
            self.sweep()
            token = secrets.token_urlsafe(24)
            path = self.directory / token
            try:
                with path.open("wb") as raw:
                    capped = CappedFile(raw, cap)
                    rows = write(capped)  # type: ignore[arg-type]
                    size = capped.written
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            ready = ReadyFile(token, path, name, media_type, size, rows, self.clock() + self.ttl_s)
            with self._lock:
                self._files[token] = ready
            return ready
        finally:
            self._slots.release()
            give_memory_back()

    def take(self, token: str) -> ReadyFile | None:
        """The file for `token`, once: the link is spent by its download."""
        self.sweep()
        with self._lock:
            return self._files.pop(token, None)

    def sweep(self) -> None:
        """Delete files whose time ran out."""
        now = self.clock()
        with self._lock:
            expired = [t for t, f in self._files.items() if f.expires_at <= now]
            gone = [self._files.pop(t) for t in expired]
        for ready in gone:
            ready.path.unlink(missing_ok=True)

    def waiting(self) -> int:
        with self._lock:
            return len(self._files)

    def close(self) -> None:
        """Delete every file and the folder (the server stops)."""
        with self._lock:
            self._files.clear()
            directory, self._directory = self._directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def _private_directory() -> Path:
    """A folder of this process's own (mode 0700), after removing those left
    by dashboards that died without cleaning up (SIGKILL)."""
    root = Path(tempfile.gettempdir())
    for old in root.glob(DIR_PREFIX + "*"):
        pid = old.name.removeprefix(DIR_PREFIX).split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def give_memory_back() -> None:
    """Return freed memory to the system after a file was made: Arrow's pool
    (when the export loaded pyarrow) keeps freed buffers, and glibc keeps freed
    heap pages below its trim threshold."""
    arrow = sys.modules.get("pyarrow")
    if arrow is not None:
        with contextlib.suppress(Exception):
            arrow.default_memory_pool().release_unused()
    if _malloc_trim is not None:
        _malloc_trim(0)


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


_malloc_trim = _load_malloc_trim()
STORE = FileStore()


async def serve(request: Request) -> Response:
    """GET /api/download/{token}: the file once, as an attachment."""
    ready = STORE.take(request.path_params.get("token", ""))
    if ready is None:
        return PlainTextResponse(GONE, status_code=404, headers={"Cache-Control": "no-store"})
    return FileResponse(
        ready.path,
        filename=ready.name,
        media_type=ready.media_type,
        headers={"Cache-Control": "no-store"},
        background=BackgroundTask(ready.path.unlink, missing_ok=True),
    )


def link_html(ready: ReadyFile) -> str:
    """An anchor that downloads in place (no new tab, no navigation)."""
    name = html.escape(ready.name)
    return (
        f'<a href="{html.escape(ready.url)}" download="{name}" '
        f'data-testid="depthwatch-download">Download {name}</a>'
    )


# ---- on a page


def offer(
    key: str,
    name: str,
    media_type: str,
    write: Callable[[BinaryIO], int],
    cap: int,
    label: str | None = None,
) -> None:
    """A button that makes the file; in the run it was clicked, a link that
    downloads it (the button's own run only: a rerun shows the button again)."""
    clicked = st.button(
        label or f"Make {name}", key=key, icon=":material/download:", type="primary"
    )
    if not clicked:
        return
    try:
        with st.spinner(f"Making {name} ..."):
            ready = STORE.build(name, media_type, write, cap)
    except Busy:
        st.warning(
            f"Busy: {MAX_BUILDS} files are being made on this server right now. "
            "Try again in a moment.",
            icon=":material/hourglass_top:",
        )
        return
    except FileTooLarge:
        st.error(
            f"The file grew past {cap / 2**20:,.0f} MB, far beyond the estimate: "
            "export it from the command line below.",
            icon=":material/error:",
        )
        return
    except (sa.exc.OperationalError, sa.exc.InterfaceError, DatabaseUnavailable) as exc:
        st.error(f"**Database unreachable**: {first_line(exc)}", icon=":material/cloud_off:")
        return
    except ArchiveUnreadable as exc:
        st.error(f"**Archive unreadable**: {exc}", icon=":material/cloud_off:")
        return
    st.markdown(link_html(ready), unsafe_allow_html=True)
    st.caption(
        f"{ready.rows:,} rows, {ready.size / 2**20:,.1f} MB. The link works once, "
        f"for {TTL_S / 60:.0f} minutes."
    )
