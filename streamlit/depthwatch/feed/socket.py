"""One socket's frames: picows' callbacks, each whole message handed on the
moment its frame is parsed, stamped with the time it was read.

Apart from feed/connection.py because it is the part that knows picows'
frames (fragments, close frames), not the exchange's protocol.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSProtocolError, WSTransport

# websockets' defaults as the collector used them: the whole opening (TCP, TLS,
# HTTP upgrade) within 10 s, and 2 s for the server to answer our close.
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
# A message may be up to 16 MiB (a deep snapshot; the fuzz test sends an 11 MB
# one, which the parser must refuse cheaply rather than the socket).
MAX_MESSAGE_BYTES = 2**24

# The most one read of the socket hands picows, plain (ws://) or TLS. picows
# grows its read buffer whenever a read fills it and never shrinks it, so a
# reader that falls behind ends up taking the kernel's whole buffer
# (megabytes, thousands of frames) in one read, each frame stamped as read
# then, and then held while back-pressure pauses it: seconds of latency
# inside the process. asyncio's own transports read 256 KiB at a time; see
# `cap_reads`.
MAX_READ_BYTES = 256 * 1024

# Compared by identity in the frame path: cheaper than attribute lookups.
TEXT = WSMsgType.TEXT
BINARY = WSMsgType.BINARY
CONTINUATION = WSMsgType.CONTINUATION
CLOSE = WSMsgType.CLOSE

# Where whole messages go: (raw bytes, local receive time in us).
MessageSink = Callable[[bytes, int], None]


def discard(raw: bytes, local_us: int) -> None:
    """The sink of a socket we cut: what it still had buffered is not read."""


class CappedReads(asyncio.BufferedProtocol):
    """picows' protocol behind a transport, each read limited to `MAX_READ_BYTES`
    (a slice of the buffer picows offers; everything else passes through)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._inner.get_buffer(sizehint))[:MAX_READ_BYTES]

    def buffer_updated(self, nbytes: int) -> None:
        self._inner.buffer_updated(nbytes)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def cap_reads(transport: WSTransport) -> None:
    """Bound what one read of the socket takes (see MAX_READ_BYTES), through
    asyncio's public `set_protocol`."""
    underlying = transport.underlying_transport
    underlying.set_protocol(CappedReads(underlying.get_protocol()))


class FrameListener(WSListener):
    """picows' callbacks for one socket. Hands every whole message to `sink`
    the moment picows has parsed its frame, stamped with the time it was read.

    `sink` is swapped rather than tested per frame: it starts as `hold`, since
    frames may come with the handshake before the connection has bound its
    handler, holds again while back-pressure pauses reading (frames already in
    the buffer being parsed still arrive), and becomes `discard` once we cut
    the socket."""

    def __init__(self) -> None:
        super().__init__()
        self.held: deque[tuple[bytes, int]] = deque()
        self.sink: MessageSink = self.hold
        self._fragments: bytearray | None = None  # a fragmented message so far

    def hold(self, raw: bytes, local_us: int) -> None:
        self.held.append((raw, local_us))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        local_us = time.time_ns() // 1000  # before anything else
        msg_type = frame.msg_type
        if (msg_type is TEXT or msg_type is BINARY) and frame.fin and self._fragments is None:
            # Text is not decoded to str: orjson reads UTF-8 bytes directly
            # (and refuses invalid UTF-8 as not JSON, i.e. a malformed message).
            self.sink(frame.get_payload_as_bytes(), local_us)
        elif msg_type is CLOSE:
            self._on_close(transport, frame)
        elif msg_type is TEXT or msg_type is BINARY or msg_type is CONTINUATION:
            self._on_fragment(frame, local_us)
        # PONG: ours are application-level; a PING picows answers itself.

    def _on_fragment(self, frame: WSFrame, local_us: int) -> None:
        """RFC 6455 fragmentation, which Bybit does not use but a proxy may:
        picows hands frames, not messages, so assemble them here."""
        starts = frame.msg_type is not CONTINUATION
        if starts == (self._fragments is not None):
            raise WSProtocolError(WSCloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
        if self._fragments is None:
            self._fragments = bytearray()
        self._fragments += frame.get_payload_as_memoryview()
        if len(self._fragments) > MAX_MESSAGE_BYTES:
            raise WSProtocolError(WSCloseCode.MESSAGE_TOO_BIG, "fragmented message too big")
        if frame.fin:
            # Stamped when its last frame was read, when it became a message
            # (as websockets stamped it).
            raw, self._fragments = bytes(self._fragments), None
            self.sink(raw, local_us)

    def _on_close(self, transport: WSTransport, frame: WSFrame) -> None:
        """The server's close (picows records its code and reason in
        `transport.close_handshake`): answer it unless it answers ours, then
        close the socket. Frames held by back-pressure are still delivered."""
        if not transport.is_close_frame_sent:
            transport.send_close(WSCloseCode.OK)  # picows cannot send a close without a code
        transport.disconnect()
