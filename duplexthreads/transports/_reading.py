"""Reading a server's frames as a client (RFC 6455, section 5), checked as section 5 and 7 say.

:class:`FrameReader` turns what arrives on a socket into whole messages, pings and the close
frame. It exists because the frame reading of websocket-client costs quadratic time on a message
in many fragments (each fragment is appended to one ``bytes``), keeps what it buffered alive
after the connection is gone, and lets protocol violations through (a masked frame from the
server, a ping of 126 bytes, a fragmented close, a close reason that is not UTF-8).

Here a message is collected as a list of parts joined once at the end, text is decoded as it
arrives (so invalid UTF-8 fails the connection at the bad bytes, not at the end of the message),
every frame header is checked before its payload is read, and nothing of a frame that breaks
the protocol is delivered: the reader raises :class:`~duplexthreads.ProtocolError` with the
close code to fail the connection with.
"""

from __future__ import annotations

import codecs
import socket
import struct
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Union

from .._rfc6455 import (
    INVALID_DATA,
    MAX_CONTROL_PAYLOAD,
    MESSAGE_TOO_BIG,
    NO_STATUS_CODE,
    PROTOCOL_ERROR,
    is_sendable_close_code,
)
from ..exceptions import ProtocolError, TransportError
from ..report import Message
from .base import CloseFrame

__all__ = ["FrameReader", "Ping", "Pong"]

OPCODE_CONTINUATION = 0x0
OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9
OPCODE_PONG = 0xA

_KNOWN_OPCODES = frozenset({OPCODE_CONTINUATION, OPCODE_TEXT, OPCODE_BINARY, OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG})

#: Bytes asked of the socket per read. Many small frames are parsed out of one read.
READ_SIZE = 65536
#: Payload read straight from the socket, past our buffer, at most this much per read: large
#: enough to be cheap per byte, small enough not to make the allocator hand out huge blocks.
PAYLOAD_CHUNK = 262144


@dataclass(frozen=True)
class Ping:
    """A ping from the peer: the transport answers it with a pong carrying ``payload``."""

    payload: bytes


@dataclass(frozen=True)
class Pong:
    """A pong from the peer, the answer to one of our pings (or unsolicited: RFC 6455 allows it)."""

    payload: bytes


Event = Union[Message, Ping, Pong, CloseFrame]


class FrameReader:
    """Frames from a server, read from ``sock`` by one thread (the reader), assembled."""

    def __init__(
        self, sock: socket.socket, is_shut: Callable[[], bool], max_message_size: Optional[int] = None
    ) -> None:
        self._sock = sock
        #: A message longer than this (whole or in fragments) fails the connection with 1009,
        #: checked at each frame's header, before a byte of its payload is read.
        self.max_message_size = max_message_size
        #: ``time.monotonic()`` of the last read that brought bytes: the heartbeat's proof of life.
        self.heard_at = time.monotonic()
        # True once the transport was shut down: the reader stops between any two steps, even
        # with frames still buffered, so that abort() during a long message takes effect at once.
        self._is_shut = is_shut
        self._buffer = bytearray()
        self._pos = 0  # bytes of _buffer already parsed
        # The message being assembled: its opcode, its parts so far, the UTF-8 decoder for text.
        self._opcode: Optional[int] = None
        self._parts: List[Union[bytes, str]] = []
        self._decoder: Optional[codecs.IncrementalDecoder] = None
        self._size = 0  # bytes of the message being assembled so far

    def release(self) -> None:
        """Drop every buffer (the connection is closed and must not hold memory)."""
        self._buffer = bytearray()
        self._pos = 0
        self._parts = []
        self._decoder = None
        self._opcode = None

    def read(self) -> Event:
        """The next whole message, ping, pong or close frame."""
        while True:
            event = self._read_frame()
            if event is not None:
                return event

    # -- one frame ---------------------------------------------------------------------------------

    def _read_frame(self) -> Optional[Event]:
        self._ensure(2)
        buf, pos = self._buffer, self._pos
        first, second = buf[pos], buf[pos + 1]
        self._pos = pos + 2
        fin = bool(first & 0x80)
        opcode = first & 0x0F
        length = second & 0x7F
        # Every check that needs only the header comes before a byte of payload is read.
        if first & 0x70:
            raise _violation("a frame has reserved bits (RSV1-3) set, but no extension was negotiated")
        if opcode not in _KNOWN_OPCODES:
            raise _violation(f"a frame has the reserved opcode {opcode:#x}")
        if second & 0x80:
            raise _violation("the server sent a masked frame (a server must not mask)")
        if opcode >= OPCODE_CLOSE:
            if not fin:
                raise _violation("a control frame is fragmented")
            if length > MAX_CONTROL_PAYLOAD:
                raise _violation(f"a control frame claims {_claimed(length)} bytes of payload; at most 125 are allowed")
            return self._control(opcode, self._take(length))
        length = self._extended_length(length)
        if opcode == OPCODE_CONTINUATION:
            if self._opcode is None:
                raise _violation("a continuation frame arrived with no fragmented message to continue")
        elif self._opcode is not None:
            raise _violation("a new message started before the fragmented one before it was finished")
        else:
            self._opcode = opcode
            if opcode == OPCODE_TEXT:
                self._decoder = codecs.getincrementaldecoder("utf-8")()
        limit = self.max_message_size
        if limit is not None:
            # Checked before the payload is read: a message over the limit is never buffered.
            self._size = self._size + length if opcode == OPCODE_CONTINUATION else length
            if self._size > limit:
                raise ProtocolError(f"a message is over max_message_size ({limit} bytes)", MESSAGE_TOO_BIG)
        self._payload(length, fin)
        if not fin:
            return None
        return self._message()

    def _extended_length(self, length: int) -> int:
        # RFC 6455 5.2: the minimal number of bytes MUST be used to encode the length.
        if length == 126:
            self._ensure(2)
            (length,) = struct.unpack_from("!H", self._buffer, self._pos)
            self._pos += 2
            if length < 126:
                raise _violation("a frame length was encoded in 2 bytes where 1 suffices")
        elif length == 127:
            self._ensure(8)
            (length,) = struct.unpack_from("!Q", self._buffer, self._pos)
            self._pos += 8
            if length >> 63:
                raise _violation("a frame length has its most significant bit set")
            if length < 1 << 16:
                raise _violation("a frame length was encoded in 8 bytes where 2 suffice")
        return int(length)

    def _payload(self, length: int, fin: bool) -> None:
        """Read ``length`` bytes of message payload into the message, decoding text as it comes."""
        if length == 0:
            self._add(b"", fin)
            return
        available = len(self._buffer) - self._pos
        if length <= available:
            self._add(self._take(length), fin)
            return
        # A long payload: what is buffered, then straight from the socket, chunk by chunk.
        left = length
        if available:
            self._add(self._take(available), False)
            left -= available
        while left:
            chunk = self._recv(min(left, PAYLOAD_CHUNK))
            if len(chunk) > left:  # cannot happen: recv returns at most what was asked
                raise TransportError("read more than asked")
            left -= len(chunk)
            self._add(chunk, fin and not left)

    def _add(self, data: bytes, final: bool) -> None:
        decoder = self._decoder
        if decoder is None:
            if data:
                self._parts.append(data)
            return
        try:
            text = decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"a text message is not valid UTF-8: {exc.reason}", INVALID_DATA) from exc
        if text:
            self._parts.append(text)

    def _message(self) -> Message:
        parts, text = self._parts, self._decoder is not None
        self._parts, self._opcode, self._decoder = [], None, None
        if text:
            return "".join(parts)  # type: ignore[arg-type]
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)  # type: ignore[arg-type]

    def _control(self, opcode: int, payload: bytes) -> Optional[Event]:
        if opcode == OPCODE_PING:
            return Ping(payload)
        if opcode == OPCODE_PONG:
            return Pong(payload)
        return _close_frame(payload)

    # -- the buffer --------------------------------------------------------------------------------

    def _ensure(self, size: int) -> None:
        """Make at least ``size`` unparsed bytes available in the buffer."""
        while len(self._buffer) - self._pos < size:
            data = self._recv(READ_SIZE)
            if self._pos:
                # Keep only what is unparsed: a few bytes of a header, so this costs little.
                del self._buffer[: self._pos]
                self._pos = 0
            self._buffer += data
        if self._is_shut():
            raise TransportError("transport shut down")

    def _take(self, size: int) -> bytes:
        self._ensure(size)
        start = self._pos
        self._pos = start + size
        return bytes(self._buffer[start : start + size])

    def _recv(self, size: int) -> bytes:
        if self._is_shut():
            raise TransportError("transport shut down")
        data = self._sock.recv(size)
        self.heard_at = time.monotonic()
        if not data:
            if self._is_shut():
                raise TransportError("transport shut down")
            raise TransportError("connection lost: end of stream without a close frame")
        return data


def _close_frame(payload: bytes) -> CloseFrame:
    """The peer's close frame, checked as RFC 6455 5.5.1 and 7.4 say."""
    if not payload:
        return CloseFrame(NO_STATUS_CODE, "")
    if len(payload) == 1:
        raise _violation("a close frame has a 1-byte payload (a code takes 2)")
    (code,) = struct.unpack_from("!H", payload)
    if not is_sendable_close_code(code):
        raise _violation(f"a close frame has the code {code}, which may not be sent")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("a close frame's reason is not valid UTF-8", INVALID_DATA) from exc
    return CloseFrame(code, reason)


def _violation(message: str) -> ProtocolError:
    return ProtocolError(f"protocol error: {message}", PROTOCOL_ERROR)


def _claimed(length: int) -> str:
    return f"{length}" if length < 126 else "over 125"
