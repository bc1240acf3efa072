"""Server side of the plain RTMP handshake (C0/C1/C2 in, S0/S1/S2 out), as a pure byte parser.

The digest-based "complex" handshake is not needed by ffmpeg, OBS or GStreamer publishers.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from typing import Final

__all__ = ["HANDSHAKE_SIZE", "RTMP_VERSION", "HandshakeError", "ServerHandshake"]

RTMP_VERSION: Final = 3
HANDSHAKE_SIZE: Final = 1536
_U32 = struct.Struct(">I")


class HandshakeError(ValueError):
    """The client's handshake cannot be answered."""


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class ServerHandshake:
    """Feed it client bytes; it says what to send back and when the chunk stream begins."""

    _WAIT_C0C1: Final = 0
    _WAIT_C2: Final = 1
    _DONE: Final = 2

    def __init__(
        self,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        uptime_ms: Callable[[], int] = _monotonic_ms,
    ) -> None:
        self._random_bytes = random_bytes
        self._uptime_ms = uptime_ms
        self._state = self._WAIT_C0C1
        self._buf = bytearray()

    @property
    def done(self) -> bool:
        return self._state == self._DONE

    def feed(self, data: bytes) -> tuple[bytes, bool, bytes]:
        """Return (bytes to send now, done, bytes after C2 that belong to the chunk stream)."""
        if self._state == self._DONE:
            return b"", True, bytes(data)
        self._buf += data
        out = b""
        if self._state == self._WAIT_C0C1:
            # Reject a wrong version from its first byte rather than after 1537 bytes.
            if self._buf and self._buf[0] != RTMP_VERSION:
                # 6 is RTMPE (encrypted); it gets the same answer as any other version.
                raise HandshakeError(f"unsupported RTMP version {self._buf[0]}")
            if len(self._buf) < 1 + HANDSHAKE_SIZE:
                return b"", False, b""
            c1 = bytes(self._buf[1 : 1 + HANDSHAKE_SIZE])
            del self._buf[: 1 + HANDSHAKE_SIZE]
            out = self._reply(c1)
            self._state = self._WAIT_C2
        if len(self._buf) < HANDSHAKE_SIZE:
            return out, False, b""
        # C2's content is not checked: many clients echo S1 inexactly or send garbage.
        leftover = bytes(self._buf[HANDSHAKE_SIZE:])
        self._buf = bytearray()
        self._state = self._DONE
        return out, True, leftover

    def _reply(self, c1: bytes) -> bytes:
        now = _U32.pack(self._uptime_ms() & 0xFFFFFFFF)
        random = self._random_bytes(HANDSHAKE_SIZE - 8)
        if len(random) != HANDSHAKE_SIZE - 8:
            raise ValueError(f"random_bytes returned {len(random)} bytes, not {HANDSHAKE_SIZE - 8}")
        s0 = bytes((RTMP_VERSION,))
        s1 = now + b"\x00\x00\x00\x00" + random
        # S2 echoes C1 (its time and random data), with the time we read C1 in bytes 4-8.
        s2 = c1[:4] + now + c1[8:]
        return s0 + s1 + s2
