"""RTMP chunk stream: reassembles messages from chunks (decoder) and splits messages into chunks.

Also builds and parses the protocol control messages (chunk size, acknowledgements, user control).

Timestamp rules of the decoder (RTMP spec 5.3.1.2, as FFmpeg's rtmppkt.c and SRS read them):

* fmt 0 carries the absolute timestamp; fmt 1 and fmt 2 carry a delta added to the chunk stream's
  previous message timestamp. All arithmetic is modulo 2**32.
* A fmt 3 chunk that starts a new message reuses the timestamp field of the most recent fmt 0/1/2
  header of its chunk stream as a delta. After fmt 0 that field is the absolute timestamp, so
  fmt 0 at T followed by a fmt 3 message gives T + T (this is what FFmpeg's own encoder expects
  when it picks fmt 3; nginx-rtmp instead repeats T).
* When the most recent fmt 0/1/2 header used an extended timestamp, a fmt 3 chunk may or may not
  repeat those 4 bytes (FFmpeg and OBS do, some encoders don't): the 4 bytes after the fmt 3
  header are taken as the extended timestamp only when they equal the stored value. To decide,
  the decoder waits until 4 bytes follow the header.

Limits of the decoder (what a peer can make it hold or do): chunk sizes below 128 bytes are
refused (a 1-byte chunk costs a header per payload byte; SRS issue 541 refuses them too); the
bytes held between feeds (partial messages on every chunk stream plus an incomplete chunk) are
counted as they arrive, never from a declared length, against a per-decoder cap and optionally a
:class:`BufferBudget` shared by many decoders; one feed may be told how many messages it may
produce at most.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ABORT",
    "ACKNOWLEDGEMENT",
    "AGGREGATE",
    "AUDIO",
    "COMMAND_AMF0",
    "COMMAND_AMF3",
    "DATA_AMF0",
    "DATA_AMF3",
    "MIN_CHUNK_SIZE",
    "PING_REQUEST",
    "PING_RESPONSE",
    "SET_BUFFER_LENGTH",
    "SET_CHUNK_SIZE",
    "SET_PEER_BANDWIDTH",
    "SHARED_OBJECT_AMF0",
    "SHARED_OBJECT_AMF3",
    "STREAM_BEGIN",
    "STREAM_DRY",
    "STREAM_EOF",
    "STREAM_IS_RECORDED",
    "USER_CONTROL",
    "VIDEO",
    "WINDOW_ACK_SIZE",
    "BufferBudget",
    "ChunkDecoder",
    "ChunkEncoder",
    "ChunkError",
    "Message",
    "TooManyMessages",
    "acknowledgement_message",
    "parse_uint32",
    "parse_user_control",
    "set_chunk_size_message",
    "set_peer_bandwidth_message",
    "user_control_message",
    "window_ack_size_message",
]

# Message type ids.
SET_CHUNK_SIZE: Final = 1
ABORT: Final = 2
ACKNOWLEDGEMENT: Final = 3
USER_CONTROL: Final = 4
WINDOW_ACK_SIZE: Final = 5
SET_PEER_BANDWIDTH: Final = 6
AUDIO: Final = 8
VIDEO: Final = 9
DATA_AMF3: Final = 15
SHARED_OBJECT_AMF3: Final = 16
COMMAND_AMF3: Final = 17
DATA_AMF0: Final = 18
SHARED_OBJECT_AMF0: Final = 19
COMMAND_AMF0: Final = 20
AGGREGATE: Final = 22

# User control event types.
STREAM_BEGIN: Final = 0
STREAM_EOF: Final = 1
STREAM_DRY: Final = 2
SET_BUFFER_LENGTH: Final = 3
STREAM_IS_RECORDED: Final = 4
PING_REQUEST: Final = 6
PING_RESPONSE: Final = 7

PROTOCOL_CSID: Final = 2
DEFAULT_CHUNK_SIZE: Final = 128
MIN_CHUNK_SIZE: Final = 128
MAX_CSID: Final = 65599
_EXTENDED: Final = 0xFFFFFF
_MASK32: Final = 0xFFFFFFFF
_MAX_CHUNK_SIZE_FIELD: Final = 0x7FFFFFFF
_HEADER_SIZES: Final = (11, 7, 3, 0)
_U32 = struct.Struct(">I")


class ChunkError(ValueError):
    """The peer broke the chunk stream protocol or a limit; the connection should be closed."""


class TooManyMessages(ChunkError):
    """A feed produced more messages than its ``max_messages`` allowed."""


class BufferBudget:
    """Bytes that many decoders (all connections of a server) may hold together.

    Decoders claim bytes as they buffer them and release them when a message completes, is
    aborted, or the decoder is closed; a claim that does not fit fails and changes nothing.
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"buffer budget must not be negative, got {limit}")
        self.limit = limit
        self.used = 0

    def claim(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def release(self, n: int) -> None:
        self.used -= n


@dataclass(frozen=True)
class Message:
    """One reassembled RTMP message; ``timestamp`` is absolute, modulo 2**32."""

    csid: int
    type_id: int
    stream_id: int
    timestamp: int
    payload: bytes


class _ChunkStream:
    """What the decoder remembers per chunk stream id for header compression."""

    __slots__ = (
        "delta",
        "ext_value",
        "extended",
        "length",
        "partial",
        "stream_id",
        "timestamp",
        "type_id",
    )

    def __init__(self) -> None:
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.timestamp = 0
        # Timestamp field of the latest fmt 0/1/2 header (extended value if used): the delta
        # a fmt 3 chunk starting a new message adds.
        self.delta = 0
        self.extended = False
        self.ext_value = 0
        self.partial: bytearray | None = None


def parse_uint32(payload: bytes) -> int:
    """Read the big-endian 32-bit value of Set Chunk Size, Window Ack Size, Acknowledgement."""
    if len(payload) < 4:
        raise ChunkError(f"expected a 4-byte value, got {len(payload)} bytes")
    return int(_U32.unpack_from(payload)[0])


def parse_user_control(payload: bytes) -> tuple[int, tuple[int, ...]]:
    """Return (event type, 32-bit arguments); a trailing partial word is ignored."""
    if len(payload) < 2:
        raise ChunkError(f"truncated user control message of {len(payload)} bytes")
    event = int.from_bytes(payload[:2], "big")
    args = tuple(int.from_bytes(payload[i : i + 4], "big") for i in range(2, len(payload) - 3, 4))
    return event, args


class ChunkDecoder:
    """Feed it bytes from the peer (after the handshake); it returns complete messages.

    Set Chunk Size and Abort take effect inside the decoder (whatever their chunk stream) and are
    returned too. After a :class:`ChunkError` the decoder's state is undefined: close the
    connection, and :meth:`close` the decoder to give its bytes back to the shared budget.
    Memory held between feeds is ``buffered`` bytes (partial messages on all chunk streams and
    an incomplete chunk), at most ``max_buffered``; no single message exceeds
    ``max_message_size``.
    """

    def __init__(
        self,
        *,
        max_message_size: int = 16 * 1024 * 1024,
        max_chunk_streams: int = 64,
        max_chunk_size: int = 16 * 1024 * 1024,
        min_chunk_size: int = MIN_CHUNK_SIZE,
        max_buffered: int | None = None,
        budget: BufferBudget | None = None,
    ) -> None:
        if max_message_size < 0 or max_chunk_streams < 1 or max_chunk_size < 1:
            raise ValueError("decoder limits must be positive")
        if not 1 <= min_chunk_size <= max_chunk_size:
            raise ValueError(f"minimum chunk size {min_chunk_size} out of range")
        self.max_message_size = max_message_size
        self.max_chunk_streams = max_chunk_streams
        self.max_chunk_size = max_chunk_size
        self.min_chunk_size = min_chunk_size
        # Without a cap of its own, a decoder may hold one partial message per chunk stream.
        self.max_buffered = (
            max_buffered if max_buffered is not None else max_message_size * max_chunk_streams
        )
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.bytes_received = 0
        # Bytes held between feeds, as claimed from the budget: partials + unparsed input.
        self.buffered = 0
        self._partial_bytes = 0
        self._budget = budget
        self._buf = bytearray()
        self._streams: dict[int, _ChunkStream] = {}

    def feed(self, data: bytes, *, max_messages: int | None = None) -> list[Message]:
        """Parse ``data``; raise :class:`TooManyMessages` once it completes more than
        ``max_messages`` messages (each costs the caller work, however few bytes it has)."""
        self.bytes_received += len(data)
        self._buf += data
        messages: list[Message] = []
        pos = 0
        try:
            while True:
                end = self._chunk(pos, messages)
                if end < 0:
                    break
                pos = end
                if max_messages is not None and len(messages) > max_messages:
                    raise TooManyMessages(f"more than {max_messages} messages in one read")
        finally:
            del self._buf[:pos]
        # What stays until the next feed: partial messages and the start of the next chunk.
        self._hold(self._partial_bytes + len(self._buf))
        return messages

    def close(self) -> None:
        """Forget all buffered data and give its bytes back to the shared budget."""
        self._buf = bytearray()
        self._streams.clear()
        self._partial_bytes = 0
        if self._budget is not None:
            self._budget.release(self.buffered)
        self.buffered = 0

    def _hold(self, total: int) -> None:
        """Account for ``total`` bytes held from now on, within this decoder's cap and the
        shared budget; on failure nothing is claimed (the caller closes the connection)."""
        delta = total - self.buffered
        if delta > 0:
            if total > self.max_buffered:
                raise ChunkError(
                    f"{total} bytes of partial messages exceed the limit of {self.max_buffered} "
                    "per connection"
                )
            if self._budget is not None and not self._budget.claim(delta):
                raise ChunkError(
                    f"server-wide buffer for partial messages ({self._budget.limit} bytes) is "
                    "used up"
                )
        elif delta < 0 and self._budget is not None:
            self._budget.release(-delta)
        self.buffered = total

    def _chunk(self, pos: int, messages: list[Message]) -> int:
        """Consume one whole chunk at ``pos``; return the offset after it, or -1 if incomplete.

        Nothing is changed until the whole chunk is in the buffer, so a retry after more data
        arrives starts from scratch.
        """
        buf = self._buf
        size = len(buf)
        if pos >= size:
            return -1
        fmt = buf[pos] >> 6
        csid = buf[pos] & 0x3F
        p = pos + 1
        if csid == 0:
            if size < p + 1:
                return -1
            csid = 64 + buf[p]
            p += 1
        elif csid == 1:
            if size < p + 2:
                return -1
            csid = 64 + buf[p] + (buf[p + 1] << 8)
            p += 2
        header_size = _HEADER_SIZES[fmt]
        if size < p + header_size:
            return -1

        cs = self._streams.get(csid)
        if cs is None:
            if fmt != 0:
                raise ChunkError(f"fmt {fmt} chunk on chunk stream {csid} before any fmt 0 chunk")
            if len(self._streams) >= self.max_chunk_streams:
                raise ChunkError(f"too many chunk streams (limit {self.max_chunk_streams})")

        ts_field = length = type_id = stream_id = 0
        if fmt <= 2:
            ts_field = int.from_bytes(buf[p : p + 3], "big")
        if fmt <= 1:
            length = int.from_bytes(buf[p + 3 : p + 6], "big")
            type_id = buf[p + 6]
        if fmt == 0:
            stream_id = int.from_bytes(buf[p + 7 : p + 11], "little")
        p += header_size

        extended = False
        if fmt <= 2:
            if ts_field == _EXTENDED:
                if size < p + 4:
                    return -1
                ts_field = int.from_bytes(buf[p : p + 4], "big")
                extended = True
                p += 4
        elif cs is not None and cs.extended:
            # See the module docstring: the repetition is optional, so compare before consuming.
            if size < p + 4:
                return -1
            if int.from_bytes(buf[p : p + 4], "big") == cs.ext_value:
                p += 4

        continuing = cs is not None and cs.partial is not None
        if continuing:
            assert cs is not None
            # FFmpeg tolerates a full header in the middle of a message if it agrees with it.
            if fmt <= 1 and (length != cs.length or type_id != cs.type_id):
                raise ChunkError(f"chunk stream {csid} changed message header mid-message")
            remaining = cs.length - len(cs.partial or b"")
        else:
            if fmt >= 2:
                assert cs is not None
                length = cs.length
            if length > self.max_message_size:
                raise ChunkError(
                    f"message of {length} bytes exceeds limit of {self.max_message_size}"
                )
            remaining = length
        take = min(remaining, self.chunk_size)
        end = p + take
        if size < end:
            return -1

        # The whole chunk is here: account for it (real bytes, not the declared length), commit.
        before = len(cs.partial) if cs is not None and cs.partial is not None else 0
        if take == remaining:  # the message completes and its partial is released
            partial_bytes = self._partial_bytes - before
        else:
            partial_bytes = self._partial_bytes + take
        if partial_bytes > self.buffered:
            self._hold(partial_bytes)
        if cs is None:
            cs = self._streams[csid] = _ChunkStream()
        if not continuing:
            if fmt == 0:
                cs.timestamp = ts_field
                cs.stream_id = stream_id
            else:
                delta = cs.delta if fmt == 3 else ts_field
                cs.timestamp = (cs.timestamp + delta) & _MASK32
            if fmt <= 2:
                cs.delta = ts_field
                cs.extended = extended
                cs.ext_value = ts_field
            if fmt <= 1:
                cs.length = length
                cs.type_id = type_id
            cs.partial = bytearray()
        partial = cs.partial
        assert partial is not None
        partial += buf[p:end]
        self._partial_bytes = partial_bytes
        if len(partial) == cs.length:
            cs.partial = None
            message = Message(csid, cs.type_id, cs.stream_id, cs.timestamp, bytes(partial))
            self._control(message)
            messages.append(message)
        return end

    def _control(self, message: Message) -> None:
        if message.type_id == SET_CHUNK_SIZE:
            value = parse_uint32(message.payload)
            # The top bit is reserved and must be zero; a "negative" size is an attack or a bug.
            if value & 0x80000000 or not 1 <= value <= self.max_chunk_size:
                raise ChunkError(f"invalid chunk size {value}")
            if value < self.min_chunk_size:
                raise ChunkError(
                    f"invalid chunk size {value}: below the minimum of {self.min_chunk_size}"
                )
            self.chunk_size = value
        elif message.type_id == ABORT:
            cs = self._streams.get(parse_uint32(message.payload))
            if cs is not None and cs.partial is not None:
                self._partial_bytes -= len(cs.partial)
                cs.partial = None


def _basic_header(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes(((fmt << 6) | csid,))
    if csid < 320:
        return bytes((fmt << 6, csid - 64))
    return bytes(((fmt << 6) | 1, (csid - 64) & 0xFF, (csid - 64) >> 8))


class ChunkEncoder:
    """Splits messages into chunks: a fmt 0 chunk, then fmt 3 continuation chunks."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.set_chunk_size(chunk_size)

    def set_chunk_size(self, n: int) -> None:
        """Use ``n`` for messages encoded from now on (send Set Chunk Size to the peer first)."""
        if not 1 <= n <= _MAX_CHUNK_SIZE_FIELD:
            raise ValueError(f"invalid chunk size {n}")
        self.chunk_size = n

    def encode(self, msg: Message) -> bytes:
        if not 2 <= msg.csid <= MAX_CSID:
            raise ValueError(f"chunk stream id {msg.csid} out of range 2..{MAX_CSID}")
        if not 0 <= msg.type_id <= 0xFF:
            raise ValueError(f"message type {msg.type_id} out of range")
        if not 0 <= msg.stream_id <= _MASK32:
            raise ValueError(f"message stream id {msg.stream_id} out of range")
        if not 0 <= msg.timestamp <= _MASK32:
            raise ValueError(f"timestamp {msg.timestamp} out of range")
        if len(msg.payload) > 0xFFFFFF:
            raise ValueError(f"message of {len(msg.payload)} bytes is too long for RTMP")
        extended = msg.timestamp >= _EXTENDED
        ext = _U32.pack(msg.timestamp) if extended else b""
        out = bytearray(_basic_header(0, msg.csid))
        out += (_EXTENDED if extended else msg.timestamp).to_bytes(3, "big")
        out += len(msg.payload).to_bytes(3, "big")
        out.append(msg.type_id)
        out += msg.stream_id.to_bytes(4, "little")
        out += ext
        # FFmpeg and OBS repeat the extended timestamp on continuation chunks, and FFmpeg's
        # reader requires it, so we do too.
        continuation = _basic_header(3, msg.csid) + ext
        payload = msg.payload
        step = self.chunk_size
        out += payload[:step]
        for start in range(step, len(payload), step):
            out += continuation
            out += payload[start : start + step]
        return bytes(out)


def _uint32(name: str, value: int) -> bytes:
    if not 0 <= value <= _MASK32:
        raise ValueError(f"{name} {value} out of range")
    return _U32.pack(value)


def _control_message(type_id: int, payload: bytes) -> Message:
    return Message(PROTOCOL_CSID, type_id, 0, 0, payload)


def set_chunk_size_message(n: int) -> Message:
    if not 1 <= n <= _MAX_CHUNK_SIZE_FIELD:
        raise ValueError(f"invalid chunk size {n}")
    return _control_message(SET_CHUNK_SIZE, _U32.pack(n))


def window_ack_size_message(n: int) -> Message:
    return _control_message(WINDOW_ACK_SIZE, _uint32("window size", n))


def set_peer_bandwidth_message(n: int, limit_type: int = 2) -> Message:
    """``limit_type``: 0 hard, 1 soft, 2 dynamic."""
    if limit_type not in (0, 1, 2):
        raise ValueError(f"invalid peer bandwidth limit type {limit_type}")
    return _control_message(SET_PEER_BANDWIDTH, _uint32("bandwidth", n) + bytes((limit_type,)))


def acknowledgement_message(sequence: int) -> Message:
    """``sequence`` is the byte count received so far; it wraps modulo 2**32 as on the wire."""
    return _control_message(ACKNOWLEDGEMENT, _U32.pack(sequence & _MASK32))


def user_control_message(event: int, *args: int) -> Message:
    if not 0 <= event <= 0xFFFF:
        raise ValueError(f"user control event {event} out of range")
    payload = event.to_bytes(2, "big") + b"".join(_uint32("argument", a) for a in args)
    return _control_message(USER_CONTROL, payload)
