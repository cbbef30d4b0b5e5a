"""Raw peers in a child process, for what the scripted peer cannot be made to do.

A peer in the test process would leave sockets and threads that the leak check counts as ours,
so these run in a child: ``python -c SCRIPT``, talking JSON lines over its pipes. The child ends
when the test closes its stdin (or dies).

:class:`RawServer` accepts clients one after another; what it does with each is chosen by the
request path:

``/answer/<name>``
    Read the upgrade request, write the canned answer ``ANSWERS[name]`` (``{accept}`` in it is
    replaced by the right ``Sec-WebSocket-Accept``), then end TCP.
``/linger/<seconds>``
    Complete the handshake, wait for the client's close frame, answer it, then keep TCP open for
    ``seconds``: a client that ends TCP then has not waited for the server to end it first
    (RFC 6455, 7.1.1). Reports ``"first"``: ``"client"`` or ``"server"``, who ended TCP first,
    or ``"reset"`` if the client reset it.

:class:`RawClient` sends a request as given to a server and reports the answer.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from typing import Any, Dict, Optional

from ..timing import UNIT

ANSWERS = {
    "garbage": "SSH-2.0-OpenSSH_9.6\r\n",
    "bad-accept": (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ),
    "no-upgrade-header": (
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    ),
    "subprotocol-not-offered": (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: never.offered\r\n\r\n"
    ),
    "subprotocol-in-other-case": (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: CHAT\r\n\r\n"
    ),
    "extension-not-offered": (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    ),
    "no-subprotocol-chosen": (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ),
    "redirect": "HTTP/1.1 301 Moved Permanently\r\nLocation: ws://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\n\r\n",
    "non-utf8-header": "HTTP/1.1 403 Forbidden\r\nX-Why: caf\xe9\r\nContent-Length: 0\r\n\r\n",
    "nothing": "",
    "cut-short": "HTTP/1.1 101 Switching",
}

_SERVER = r"""
import base64, hashlib, json, select, socket, sys, time

answers = json.loads(sys.argv[1])
listener = socket.create_server(("127.0.0.1", 0))
print(json.dumps(listener.getsockname()[1]), flush=True)

def head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        data += chunk
    return data.split(b"\r\n\r\n")[0].decode("latin-1")

def accept_key(request):
    for line in request.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-key":
            digest = hashlib.sha1((value.strip() + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
            return base64.b64encode(digest).decode()
    return ""

def read_exactly(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data

def linger(sock, request, seconds):
    sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Accept: %s\r\n\r\n" % accept_key(request)).encode())
    while True:  # the client's frames: masked, short; stop at its close frame
        first, second = read_exactly(sock, 2)
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(read_exactly(sock, 2), "big")
        elif size == 127:
            size = int.from_bytes(read_exactly(sock, 8), "big")
        read_exactly(sock, 4 + size)
        if first & 0x0F == 0x8:
            break
    sock.sendall(b"\x88\x02\x03\xe8")
    try:
        ready, _, _ = select.select([sock], [], [], seconds)
        if ready and not sock.recv(1):
            return "client"
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(30)
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return "reset"
    return "server"

while True:
    ready, _, _ = select.select([listener, sys.stdin], [], [])
    if sys.stdin in ready:
        if not sys.stdin.readline():
            break
        continue
    sock, _ = listener.accept()
    sock.settimeout(30)
    report = {}
    try:
        request = head(sock)
        report["request"] = request
        if request is not None:
            path = request.split(" ")[1]
            kind, _, name = path.strip("/").partition("/")
            if kind == "answer":
                sock.sendall(answers[name].replace("{accept}", accept_key(request)).encode("latin-1"))
            elif kind == "linger":
                report["first"] = linger(sock, request, float(name))
    except Exception as exc:
        report["error"] = repr(exc)
    finally:
        sock.close()
    print(json.dumps(report), flush=True)
"""

_CLIENT = r"""
import json, socket, sys
port, request = json.loads(sys.argv[1])
sock = socket.create_connection(("127.0.0.1", port), timeout=30)
sock.sendall(request.encode("latin-1"))
answer = b""
while b"\r\n\r\n" not in answer:
    chunk = sock.recv(4096)
    if not chunk:
        break
    answer += chunk
sock.close()
print(json.dumps(answer.decode("latin-1")), flush=True)
"""


class _Child:
    def __init__(self, script: str, argument: Any) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", script, json.dumps(argument)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._pending = b""

    def line(self, timeout: float = 10 * UNIT) -> Any:
        """The child's next line, decoded; ``TimeoutError`` if none comes within ``timeout``."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"the child peer said nothing within {timeout} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise ConnectionError("the child peer ended without answering")
            self._pending += chunk
        text, _, self._pending = self._pending.partition(b"\n")
        return json.loads(text)

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        try:
            self.process.wait(10 * UNIT)
        except subprocess.TimeoutExpired:  # pragma: no cover - only if the child hangs
            self.process.kill()
            self.process.wait(10 * UNIT)
        self.process.stdout.close()


class RawServer(_Child):
    """See the module docstring. ``report()`` returns what it saw of the last client."""

    def __init__(self) -> None:
        super().__init__(_SERVER, ANSWERS)
        self.port: int = self.line()

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def report(self, timeout: float = 10 * UNIT) -> Dict[str, Any]:
        report: Dict[str, Any] = self.line(timeout)
        return report

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def raw_request(port: int, request: str) -> str:
    """Send ``request`` to 127.0.0.1:``port`` from a child process; return the answer's head."""
    child = _Child(_CLIENT, [port, request])
    try:
        answer: Optional[str] = child.line()
    finally:
        child.close()
    assert answer is not None
    return answer
