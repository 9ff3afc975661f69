"""Many queued WebSocket text frames, one transport write.

aiohttp writes every frame with its own ``transport.write`` (one ``send`` system call each); at
tens of thousands of events a second that is the largest single cost of the fan-out. A server's
frames are unmasked (RFC 6455 §5.1), so a frame is just a 2-10 byte header and the payload, and a
socket's whole queue can go out in one write. Only for connections without permessage-deflate:
a compressed connection keeps aiohttp's own per-frame path (compression state is aiohttp's).
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Any

_TEXT_FIN = 0x81
_LEN1 = struct.Struct("!BB").pack
_LEN2 = struct.Struct("!BBH").pack
_LEN8 = struct.Struct("!BBQ").pack
MAX_BATCH_BYTES = 1 << 18  # per write (and per turn of the event loop): bounds the copy; a backlog takes several


def frame_header(n: int) -> bytes:
    """Header of an unmasked, final text frame with an ``n``-byte payload."""
    if n < 126:
        return _LEN1(_TEXT_FIN, n)
    if n < 65536:
        return _LEN2(_TEXT_FIN, 126, n)
    return _LEN8(_TEXT_FIN, 127, n)


class FrameBatcher:
    def __init__(self, writer: Any) -> None:
        self._transport = writer.transport
        self._protocol = writer.protocol

    @classmethod
    def for_response(cls, ws: Any) -> FrameBatcher | None:
        """A batcher for a prepared aiohttp WebSocketResponse, or None where aiohttp must write
        (compression negotiated, or an aiohttp whose writer does not look as expected)."""
        writer = getattr(ws, "_writer", None)
        if writer is None or getattr(writer, "compress", 1) or getattr(writer, "use_mask", True):
            return None
        if not hasattr(getattr(writer, "protocol", None), "_drain_helper") or getattr(writer, "transport", None) is None:
            return None
        return cls(writer)

    async def write(self, q: deque[bytes]) -> None:
        """Write queued payloads (up to MAX_BATCH_BYTES) as frames in one go; waits while the
        peer's socket buffer is full, as aiohttp's own writer does."""
        parts: list[bytes] = []
        size = 0
        while q and size < MAX_BATCH_BYTES:
            data = q.popleft()
            parts.append(frame_header(len(data)))
            parts.append(data)
            size += len(data)
        transport = self._transport
        if transport.is_closing():
            raise ConnectionResetError("cannot write to a closing transport")
        transport.write(b"".join(parts))
        if self._protocol._paused:
            await self._protocol._drain_helper()
