"""WebSocket over plain sockets, for checking byte by byte what the scripted peer sends.

Nothing here comes from ``duplexthreads.testing``: frames are parsed and built from RFC 6455
(section 5.2) on their own, so that a test of the peer does not grade itself.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple
from urllib.parse import urlsplit

from ..timing import UNIT

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass
class Frame:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    payload: bytes  # unmasked
    length_field: int  # the 7-bit length: 126 and 127 announce an extended length

    @property
    def close_code(self) -> Optional[int]:
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


def mask(payload: bytes, key: bytes) -> bytes:
    keystream = (key * (len(payload) // 4 + 1))[: len(payload)]
    return bytes(a ^ b for a, b in zip(payload, keystream)) if len(payload) < 64 else _xor(payload, keystream)


def _xor(data: bytes, keystream: bytes) -> bytes:
    return (int.from_bytes(data, "little") ^ int.from_bytes(keystream, "little")).to_bytes(len(data), "little")


def frame_bytes(opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if masked else 0
    if len(payload) < 126:
        head += bytes([bit | len(payload)])
    elif len(payload) < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", len(payload))
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", len(payload))
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + mask(payload, key)


class Wire:
    """One end of a WebSocket connection, read and written by hand."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self, deadline: float) -> None:
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"end of stream ({len(self.buffer)} bytes unparsed)")
        self.buffer += chunk

    def take(self, count: int, timeout: float = 5 * UNIT) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.buffer) < count:
            self._fill(deadline)
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def read_head(self, timeout: float = 5 * UNIT) -> Tuple[str, List[Tuple[str, str]]]:
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buffer:
            self._fill(deadline)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        start, *lines = head.decode("latin-1").split("\r\n")
        return start, [(name, value.strip()) for name, _, value in (line.partition(":") for line in lines)]

    def read_frame(self, timeout: float = 5 * UNIT) -> Frame:
        first, second = self.take(2, timeout)
        length = second & 0x7F
        size = length
        if length == 126:
            size = struct.unpack("!H", self.take(2, timeout))[0]
        elif length == 127:
            size = struct.unpack("!Q", self.take(8, timeout))[0]
        key = self.take(4, timeout) if second & 0x80 else None
        payload = self.take(size, timeout)
        return Frame(
            bool(first & 0x80),
            (first >> 4) & 7,
            first & 0x0F,
            key is not None,
            mask(payload, key) if key else payload,
            length,
        )

    def send_frame(self, opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True) -> None:
        self.sock.sendall(frame_bytes(opcode, payload, fin=fin, masked=masked))

    def end_of_stream(self, timeout: float = 5 * UNIT) -> str:
        """Read to the end: ``"eof"`` (FIN) or ``"reset"`` (RST). Unread frames are dropped."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.buffer = b""
                self._fill(deadline)
        except EOFError:
            return "eof"
        except ConnectionResetError:
            return "reset"

    def reset(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def accept_value(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def request_bytes(target: str, headers: List[Tuple[str, str]]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def upgrade_headers(host: str, key: str, *extra: Tuple[str, str]) -> List[Tuple[str, str]]:
    return [
        ("Host", host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
        *extra,
    ]


def open_wire(
    url: str, target: str = "/", *extra: Tuple[str, str], host: Optional[str] = None, expect: int = 101
) -> Tuple[Wire, List[Tuple[str, str]]]:
    """Connect to ``url`` and upgrade; return the wire and the response's headers."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5 * UNIT)
    wire = Wire(sock)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(request_bytes(target, upgrade_headers(host or parts.netloc, key, *extra)))
        start, headers = wire.read_head()
        assert start.split(" ")[1] == str(expect), start
        if expect == 101:
            assert ("Sec-WebSocket-Accept", accept_value(key)) in headers
    except BaseException:
        sock.close()
        raise
    return wire, headers


class WireServer:
    """A listening socket whose one thread accepts a client and answers its upgrade with
    ``answer(request_headers) -> status``; the test then drives the connection as a Wire."""

    def __init__(self, answer: Callable[[List[Tuple[str, str]]], int] = lambda headers: 101) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}"
        self.request: Optional[Tuple[str, List[Tuple[str, str]]]] = None
        self.wire: Optional[Wire] = None
        self.error: Optional[BaseException] = None
        self._answer = answer
        self._thread = threading.Thread(target=self._serve, name="test-wire-server")
        self._thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(5 * UNIT)
        try:
            sock, _ = self.listener.accept()
        except OSError as exc:
            self.error = exc
            return
        self.wire = Wire(sock)
        try:
            self.request = self.wire.read_head()
            status = self._answer(self.request[1])
            keys = [value for name, value in self.request[1] if name.lower() == "sec-websocket-key"]
            if status == 101:
                lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade"]
                lines.append(f"Sec-WebSocket-Accept: {accept_value(keys[0])}")
                sock.sendall("\r\n".join([*lines, "", ""]).encode())
            else:
                body = b"go away"
                head = f"HTTP/1.1 {status} Nope\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                sock.sendall(head.encode() + body)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread, which raises it
            self.error = exc

    def accepted(self) -> Wire:
        self._thread.join(5 * UNIT)
        assert not self._thread.is_alive()
        if self.error is not None:
            raise self.error
        assert self.wire is not None
        return self.wire

    def close(self) -> None:
        self._thread.join(5 * UNIT)
        self.listener.close()
        if self.wire is not None:
            self.wire.close()
