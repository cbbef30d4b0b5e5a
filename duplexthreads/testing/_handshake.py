"""The opening handshake of the scripted peer, written out by hand.

wsproto could do the HTTP part too, but it lower-cases header names and builds its own response.
A test wants the request's headers exactly as the client sent them, and the response as bytes
it controls: sent one byte at a time, refused with any status, or sent in one segment with the
first frames.
"""

from __future__ import annotations

import base64
import hashlib
import http
import os
import socket
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

Headers = List[Tuple[str, str]]

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: A request or response head longer than this is refused: no real handshake comes close.
MAX_HEAD = 64 * 1024
_DEFAULT_PORTS = {"ws": 80, "wss": 443}


class HandshakeRefused(ConnectionError):
    """The server answered the opening handshake with ``status`` instead of 101.

    ``body`` holds what the response carried after its head (up to 64 KiB).
    """

    def __init__(self, status: int, message: str, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value that answers ``Sec-WebSocket-Key: key``."""
    return base64.b64encode(hashlib.sha1((key + _GUID).encode("ascii")).digest()).decode("ascii")


def host_header(host: str, port: int, scheme: str = "ws") -> str:
    """What the Host header of a request for ``scheme://host:port/`` must say (RFC 7230, 5.4).

    The host as in the URL, with IPv6 literals in brackets, and ``:port`` unless the port is the
    scheme's default.
    """
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if _DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"


def host_matches(value: str, host: str, port: int) -> bool:
    """Whether a received Host header is the one a ``ws://host:port/`` URL asks for.

    Host names compare without regard to case. For the default port, ``host:80`` is accepted
    too, since RFC 7230 lets the authority carry the port the URL spelled out.
    """
    expected = {host_header(host, port).lower(), host_header(host, port).lower() + f":{port}"}
    return value.strip().lower() in expected


@dataclass
class Head:
    """The start line and the header fields of an HTTP message, as they arrived."""

    start_line: str
    headers: Headers = field(default_factory=list)

    def values(self, name: str) -> List[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def has_token(self, name: str, token: str) -> bool:
        """Whether the comma-separated header ``name`` lists ``token`` (case-insensitive)."""
        return any(item.strip().lower() == token for value in self.values(name) for item in value.split(","))


def read_head(sock: socket.socket, deadline: float) -> Tuple[Head, bytes]:
    """Read an HTTP head from ``sock`` before ``deadline``; return it and the bytes after it.

    Raises ``TimeoutError`` at the deadline, ``ConnectionError`` if the other side leaves first
    and ``ValueError`` for a head that is too long or not HTTP.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            raise ValueError(f"no end of the HTTP head in {MAX_HEAD} bytes")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the HTTP head did not arrive in time ({len(data)} bytes came)")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise TimeoutError(f"the HTTP head did not arrive in time ({len(data)} bytes came)") from None
        if not chunk:
            raise ConnectionError(f"the other side closed during the HTTP head ({len(data)} bytes came)")
        data += chunk
    raw, rest = data.split(b"\r\n\r\n", 1)
    lines = raw.decode("latin-1").split("\r\n")
    head = Head(lines[0])
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"not an HTTP header line: {line!r}")
        head.headers.append((name, value.strip(" \t")))
    return head, rest


def response_bytes(status: int, headers: Sequence[Tuple[str, str]], body: bytes = b"") -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Scripted"
    lines = [f"HTTP/1.1 {status} {phrase}", *(f"{name}: {value}" for name, value in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def refusal(status: int, why: str) -> Tuple[Headers, bytes]:
    """Headers and body of a plain-text refusal that ends the TCP connection afterwards."""
    body = f"{status} {why}\n".encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    return [*headers, ("Connection", "close")], body


def check_upgrade_request(head: Head) -> Optional[str]:
    """What makes ``head`` not a WebSocket upgrade request (RFC 6455, 4.2.1), or None."""
    method, _, rest = head.start_line.partition(" ")
    if method != "GET" or not rest.endswith(" HTTP/1.1"):
        return f"not a GET over HTTP/1.1: {head.start_line!r}"
    if not head.has_token("Upgrade", "websocket") or not head.has_token("Connection", "upgrade"):
        return "no Upgrade: websocket / Connection: Upgrade"
    if head.values("Sec-WebSocket-Version") != ["13"]:
        return f"Sec-WebSocket-Version is {head.values('Sec-WebSocket-Version')}, not 13"
    keys = head.values("Sec-WebSocket-Key")
    try:
        valid_key = len(keys) == 1 and len(base64.b64decode(keys[0], validate=True)) == 16
    except ValueError:
        valid_key = False
    return None if valid_key else f"Sec-WebSocket-Key is not 16 bytes in base64: {keys}"


def offered_subprotocols(head: Head) -> List[str]:
    return [
        item.strip() for value in head.values("Sec-WebSocket-Protocol") for item in value.split(",") if item.strip()
    ]


@dataclass
class Answer:
    """How a server answers an upgrade request: 101, or a refusal that says why."""

    status: int
    headers: Headers
    body: bytes = b""
    subprotocol: Optional[str] = None
    problem: Optional[str] = None


def answer_request(
    head: Head,
    problem: Optional[str],
    *,
    address: Tuple[str, int],
    strict_host: bool,
    reject: Optional[int],
    subprotocols: Sequence[str],
) -> Answer:
    """The answer to ``head``: 400 for a bad request (``problem`` says why) or, with
    ``strict_host``, a wrong Host; ``reject`` if set; else 101 with the first subprotocol the
    client offered that is also in ``subprotocols``."""
    host, port = address
    hosts = head.values("Host")
    if problem is None and strict_host and not (len(hosts) == 1 and host_matches(hosts[0], host, port)):
        problem = f"Host header is {hosts}, expected {host_header(host, port)!r}"
    if problem is not None or reject is not None:
        status = 400 if problem is not None else reject
        assert status is not None
        headers, body = refusal(status, problem or "refused by the scripted peer")
        return Answer(status, headers, body, problem=problem)
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade")]
    headers.append(("Sec-WebSocket-Accept", accept_key(head.values("Sec-WebSocket-Key")[0])))
    chosen = next((offer for offer in offered_subprotocols(head) if offer in subprotocols), None)
    if chosen is not None:
        headers.append(("Sec-WebSocket-Protocol", chosen))
    return Answer(101, headers, subprotocol=chosen)


@dataclass
class ClientHandshake:
    """What a client sent and what the server answered, once the server accepted."""

    target: str
    request_headers: Headers
    response: Head
    trailing: bytes
    subprotocol: Optional[str]


def open_client(
    sock: socket.socket,
    url: str,
    *,
    host_header_value: Optional[str],
    headers: Sequence[Tuple[str, str]],
    subprotocols: Sequence[str],
    deadline: float,
) -> ClientHandshake:
    """Send an upgrade request for ``url`` on the connected ``sock`` and read the answer.

    Raises :class:`HandshakeRefused` for any status but 101 and ``ConnectionError`` for a 101
    that is not a valid WebSocket answer.
    """
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    sent: Headers = [
        (
            "Host",
            host_header_value if host_header_value is not None else host_header(parts.hostname or "", parts.port or 80),
        ),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
    ]
    if subprotocols:
        sent.append(("Sec-WebSocket-Protocol", ", ".join(subprotocols)))
    sent.extend(headers)
    lines = [f"GET {target} HTTP/1.1", *(f"{name}: {value}" for name, value in sent), "", ""]
    sock.settimeout(max(0.0, deadline - time.monotonic()))
    sock.sendall("\r\n".join(lines).encode("latin-1"))
    response, rest = read_head(sock, deadline)
    version, _, status_text = response.start_line.partition(" ")
    status = int(status_text[:3]) if version.startswith("HTTP/") and status_text[:3].isdigit() else 0
    if status != 101:
        body = _read_body(sock, rest, response.values("Content-Length"), deadline)
        raise HandshakeRefused(status, f"the server answered {response.start_line!r}", body)
    if response.values("Sec-WebSocket-Accept") != [accept_key(key)]:
        raise ConnectionError(f"wrong Sec-WebSocket-Accept: {response.values('Sec-WebSocket-Accept')}")
    chosen = response.values("Sec-WebSocket-Protocol")
    if chosen and chosen[0] not in subprotocols:
        raise ConnectionError(f"the server chose subprotocol {chosen[0]!r}, which was not offered")
    return ClientHandshake(target, sent, response, rest, chosen[0] if chosen else None)


def _read_body(sock: socket.socket, body: bytes, content_length: List[str], deadline: float) -> bytes:
    """The rest of a refusal's body: its Content-Length, else up to the end of the stream; at
    most 64 KiB, and only until the deadline."""
    wanted = int(content_length[0]) if content_length and content_length[0].isdigit() else MAX_HEAD
    while len(body) < min(wanted, MAX_HEAD):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        body += chunk
    return body[:MAX_HEAD]
