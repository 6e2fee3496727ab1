"""The archive's target: a local directory or an S3 bucket, one interface.

Both go through pyarrow's filesystems (`pyarrow.fs`), which depthwatch already
depends on for Parquet: the client was chosen by measuring it against boto3 on
a real S3 server (bench/bench_archive_store.py, BENCHMARKS.md).

- A local directory (`./archive`, `/srv/archive`, `file:///srv/archive`):
  files are written under a temporary name and renamed, so each appears whole.
- `s3://bucket/prefix`: AWS S3, Cloudflare R2, Backblaze B2, SeaweedFS or
  MinIO. The endpoint is AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (unset: AWS),
  the keys AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS's usual chain),
  the region AWS_REGION / AWS_DEFAULT_REGION. An object appears whole when its
  upload completes; a killed upload leaves none.

Streams are opened with compression=None: pyarrow would otherwise gzip a
`.csv.gz` again on the way in (and unzip it on the way out).

Every call is retried with backoff for `retry_for_s`; a store still failing
after that raises StoreError with one line saying what failed, never a key.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

log = logging.getLogger(__name__)

T = TypeVar("T")
COPY_BUFFER = 8 << 20  # per read: each read of an S3 stream is a request of its own
DEFAULT_RETRY_FOR_S = 120.0
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")


class StoreError(RuntimeError):
    """The archive's store refused or stayed unreachable; the message says which."""


@dataclass(frozen=True)
class Stored:
    """An object as read back: its size and sha256."""

    bytes: int
    sha256: str


def _env(names: tuple[str, ...]) -> str | None:
    for name in names:
        if value := os.environ.get(name, "").strip():
            return value
    return None


class ArchiveStore:
    """Files under one root of one filesystem, by path relative to the root."""

    def __init__(
        self, fs: pafs.FileSystem, root: str, shown: str, retry_for_s: float, local: bool
    ) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.shown = shown  # the URL as given: no key is ever part of it
        # Where readers find it again, from any directory: s3://... as given,
        # a local directory as its absolute path.
        self.url = root if local else shown
        self.retry_for_s = retry_for_s
        self.local = local

    def __str__(self) -> str:
        return self.shown

    def _full(self, path: str) -> str:
        return f"{self.root}/{path}" if self.root else path

    def _retried(self, what: str, call: Callable[[], T]) -> T:
        """`call`, again after 0.5, 1, 2, ... s (at most 15 s apart) while it
        fails with an I/O error, for retry_for_s; then StoreError."""
        deadline = time.monotonic() + self.retry_for_s
        wait = 0.5
        while True:
            try:
                return call()
            except FileNotFoundError:
                raise
            except (OSError, ValueError) as exc:
                reason = describe(exc)
                if _permanent(reason) or time.monotonic() + wait > deadline:
                    raise StoreError(f"{what} {self.shown}: {reason}") from None
                log.warning("%s %s failed (%s); retrying in %.1f s", what, self.shown, reason, wait)
                time.sleep(wait)
                wait = min(wait * 2, 15.0)

    def check(self) -> None:
        """Fail now, with one line, if the store cannot be written: a missing
        bucket, wrong keys, an unwritable directory."""
        import pyarrow.fs as pafs

        # A dot name: engines and the archive's own listings skip it.
        probe = f".probe-{uuid.uuid4().hex}"

        def write_and_remove() -> None:
            if self.local:
                self.fs.create_dir(self.root, recursive=True)
            else:
                # Checked first: some servers create a bucket on the first write.
                bucket = self.root.split("/", 1)[0]
                if self.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                    raise OSError(f"NO_SUCH_BUCKET: no bucket {bucket!r}")
            with self.fs.open_output_stream(self._full(probe), compression=None) as out:
                out.write(b"depthwatch")
            self.fs.delete_file(self._full(probe))

        self._retried("cannot write to the archive", write_and_remove)

    def put(self, path: str, source: Path) -> None:
        """Copy the local file `source` to `path`, whole or not at all."""

        def upload() -> None:
            target = self._full(path)
            if self.local:
                self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
                directory, name = target.rsplit("/", 1)
                partial = f"{directory}/.{name}.{os.getpid()}.partial"
                try:
                    self._copy_to(source, partial)
                    self.fs.move(partial, target)
                finally:
                    if self.fs.get_file_info(partial).type.name != "NotFound":
                        self.fs.delete_file(partial)
            else:
                self._copy_to(source, target)

        self._retried(f"cannot write {path} to", upload)

    def _copy_to(self, source: Path, target: str) -> None:
        with source.open("rb") as src, self.fs.open_output_stream(target, compression=None) as out:
            while block := src.read(COPY_BUFFER):
                out.write(block)

    def put_bytes(self, path: str, data: bytes, scratch: Path) -> None:
        """`data` to `path` (through a scratch file, so it is written whole)."""
        scratch.write_bytes(data)
        try:
            self.put(path, scratch)
        finally:
            scratch.unlink(missing_ok=True)

    def read(self, path: str) -> bytes:
        """The object's bytes; FileNotFoundError if there is none."""

        def download() -> bytes:
            with self.fs.open_input_stream(self._full(path), compression=None) as src:
                return bytes(src.read())

        return self._retried(f"cannot read {path} from", download)

    def open_input(self, path: str) -> pa.NativeFile:
        """The object opened for random access (Parquet reads its footer
        first); FileNotFoundError if there is none."""
        return self._retried(
            f"cannot read {path} from", lambda: self.fs.open_input_file(self._full(path))
        )

    def stored(self, path: str) -> Stored | None:
        """The object's size and sha256, streamed; None if there is none."""

        def digest() -> Stored:
            sha = hashlib.sha256()
            size = 0
            with self.fs.open_input_stream(self._full(path), compression=None) as src:
                while block := src.read(COPY_BUFFER):
                    sha.update(block)
                    size += len(block)
            return Stored(size, sha.hexdigest())

        try:
            return self._retried(f"cannot read {path} from", digest)
        except FileNotFoundError:
            return None

    def delete(self, path: str) -> None:
        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(self._full(path))

        self._retried(f"cannot delete {path} from", remove)

    def list(self, prefix: str) -> Iterator[str]:
        """Paths of the files under `prefix` (relative to the root), sorted;
        dot names (a partial file, a probe) left out."""
        import pyarrow.fs as pafs

        def listing() -> list[str]:
            selector = pafs.FileSelector(self._full(prefix), allow_not_found=True, recursive=True)
            infos = self.fs.get_file_info(selector)
            start = len(self.root) + 1 if self.root else 0
            return sorted(
                i.path[start:]
                for i in infos
                if i.type == pafs.FileType.File and not i.base_name.startswith(".")
            )

        yield from self._retried(f"cannot list {prefix} in", listing)


def describe(exc: BaseException) -> str:
    """One line for a store error, saying which setting to look at when it is
    one (pyarrow's AWS errors run long; no key is ever part of them)."""
    text = " ".join(str(exc).split())
    for markers, meaning in _PERMANENT.items():
        if any(marker in text for marker in markers):
            return f"{meaning} ({text[:200]})"
    return text[:300] or type(exc).__name__


# Errors retrying cannot cure (the user must change a setting), by what they mean.
_PERMANENT = {
    (
        "ACCESS_DENIED",
        "AccessDenied",
        "INVALID_ACCESS_KEY_ID",
        "InvalidAccessKeyId",
        "SIGNATURE_DOES_NOT_MATCH",
        "SignatureDoesNotMatch",
    ): "the keys were refused: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    ("NO_SUCH_BUCKET", "NoSuchBucket"): "the bucket does not exist",
    ("Permission denied", "Read-only file system"): "the directory cannot be written",
    ("Not a directory", "File exists"): "a file stands where a directory should be",
}


def _permanent(reason: str) -> bool:
    return any(reason.startswith(meaning) for meaning in _PERMANENT.values())


def open_store(url: str, retry_for_s: float = DEFAULT_RETRY_FOR_S) -> ArchiveStore:
    """The store `url` names: a local directory, file://, or s3://bucket/prefix."""
    import pyarrow.fs as pafs

    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise StoreError(f"{url}: no bucket (use s3://bucket/prefix)")
        options: dict[str, object] = {
            "connect_timeout": 5.0,
            "request_timeout": 30.0,
            # Our own retries (with backoff, and a clear line when they end).
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=1),
        }
        if endpoint := _env(ENDPOINT_ENV):
            endpoint_parts = urlsplit(endpoint)
            options["endpoint_override"] = endpoint_parts.netloc or endpoint
            options["scheme"] = endpoint_parts.scheme or "https"
        if region := _env(REGION_ENV):
            options["region"] = region
        fs = pafs.S3FileSystem(**options)  # type: ignore[arg-type]
        root = f"{parts.netloc}/{parts.path.strip('/')}".rstrip("/")
        return ArchiveStore(fs, root, url, retry_for_s, local=False)
    if parts.scheme not in ("", "file"):
        raise StoreError(f"{url}: use a directory, file:///path or s3://bucket/prefix")
    path = Path(parts.path if parts.scheme == "file" else url).expanduser().absolute()
    return ArchiveStore(pafs.LocalFileSystem(), str(path), url, retry_for_s, local=True)
