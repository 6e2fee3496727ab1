"""A TCP proxy in front of the real PostgreSQL server (tests and
bench/bench_outage.py), to cut the database off and bring it back: a real
outage as the collector sees it (connections reset, new ones refused), with
the server and its data untouched. It can also hold a client's requests, so a
test decides when a reader gets its next batch."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

import sqlalchemy as sa


class DatabaseProxy:
    """Forwards 127.0.0.1:<port> to the server of `url` (TCP or Unix socket).
    `cut()` closes every connection and stops listening; `restore()` listens again.
    `hold(marker)` keeps each client request containing `marker` from the
    server until `step()` lets it through (or `release()` ends the holding)."""

    def __init__(self, url: str) -> None:
        parsed = sa.make_url(url)
        socket_dir = parsed.query.get("host")
        self._unix_path: str | None = None
        if socket_dir:
            self._unix_path = str(Path(str(socket_dir)) / f".s.PGSQL.{parsed.port or 5432}")
        self._target = (parsed.host or "127.0.0.1", parsed.port or 5432)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._marker: bytes | None = None
        self._go: asyncio.Event | None = None  # set: the request held may go
        self.held = threading.Event()  # a request is held now
        self.port = 0
        self._thread.start()
        self.restore()
        self.url = parsed.set(host="127.0.0.1", port=self.port, query={}).render_as_string(
            hide_password=False
        )

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def restore(self) -> None:
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._close())

    def hold(self, marker: bytes) -> None:
        """From now on hold every request (a client's message to the server)
        containing `marker`, e.g. b"FETCH " for the next batch of a server-side
        cursor: `held` is set while one waits, unsent; the client, waiting for
        its answer, can go no further, however fast it runs. For one client
        connection at a time."""
        self._marker = marker

    def wait_held(self, timeout_s: float) -> bool:
        """Whether a request is held within `timeout_s`."""
        return self.held.wait(timeout_s)

    def step(self) -> None:
        """Let the request held through; the next one is held again."""
        self.held.clear()
        self._loop.call_soon_threadsafe(self._let_go)

    def release(self) -> None:
        """Hold nothing more; a request held goes on."""
        self._marker = None
        self.step()

    def _let_go(self) -> None:
        if self._go is not None:
            self._go.set()

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        self._let_go()  # a request held goes nowhere now

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._unix_path:
                up_reader, up_writer = await asyncio.open_unix_connection(self._unix_path)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, requests: bool = False
        ) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    if requests and self._marker is not None and self._marker in data:
                        self._go = asyncio.Event()
                        self.held.set()
                        await self._go.wait()
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, requests=True), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}
