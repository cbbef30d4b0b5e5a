"""A bare WebSocket server for tests that must drive the wire by hand.

It does the opening handshake and then leaves the socket to the test: no reading thread, no
automatic answers, nothing buffered in this process but what the test asks for.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
from typing import List, Optional, Tuple

from ..timing import UNIT

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class RawServer:
    """Listens on 127.0.0.1; :meth:`accept` completes one opening handshake and returns the socket."""

    def __init__(self, *, receive_buffer: Optional[int] = None) -> None:
        self.listener = socket.socket()
        if receive_buffer is not None:
            # Set before listen(): accepted sockets inherit it, and a small one fills up fast.
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}/"

    def accept(self, timeout: float = 10 * UNIT) -> Tuple[socket.socket, bytes]:
        """The next client's socket after the handshake, and what it sent after its request."""
        self.listener.settimeout(timeout)
        sock, _ = self.listener.accept()
        sock.settimeout(timeout)
        request = b""
        while b"\r\n\r\n" not in request:
            data = sock.recv(4096)
            if not data:
                sock.close()
                raise ConnectionError("the client left before its request was complete")
            request += data
        head, rest = request.split(b"\r\n\r\n", 1)
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        return sock, rest

    def close(self) -> None:
        self.listener.close()

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One unmasked frame, as a server sends it."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", first, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload


class ClientFrames:
    """Parses the masked frames a client sends, fed in pieces; keeps control payloads only."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        #: (opcode, payload length, payload of a control frame or None), in order.
        self.frames: List[Tuple[int, int, Optional[bytes]]] = []

    def feed(self, data: bytes) -> List[Tuple[int, int, Optional[bytes]]]:
        """Take ``data``; return the frames it completed."""
        self._buffer += data
        done: List[Tuple[int, int, Optional[bytes]]] = []
        while True:
            frame = self._next()
            if frame is None:
                self.frames.extend(done)
                return done
            done.append(frame)

    def _next(self) -> Optional[Tuple[int, int, Optional[bytes]]]:
        buf = self._buffer
        if len(buf) < 2:
            return None
        opcode, size, pos = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if size == 126:
            if len(buf) < 4:
                return None
            (size,) = struct.unpack_from("!H", buf, 2)
            pos = 4
        elif size == 127:
            if len(buf) < 10:
                return None
            (size,) = struct.unpack_from("!Q", buf, 2)
            pos = 10
        if len(buf) < pos + 4 + size:
            return None
        key = bytes(buf[pos : pos + 4])
        payload = None
        if opcode >= 0x8:
            raw = buf[pos + 4 : pos + 4 + size]
            payload = bytes(byte ^ key[index % 4] for index, byte in enumerate(raw))
        del buf[: pos + 4 + size]
        return opcode, size, payload
