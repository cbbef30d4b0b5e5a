"""Builders that open one connection of each kind against a scripted peer.

``KINDS`` names the four sides the conformance suite runs on: the memory transport, the two
client backends against a wsproto peer acting as server, and simple-websocket's server side
(inside a WSGI-style environ) against a wsproto peer acting as client.
"""

from __future__ import annotations

import queue
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Union

from wsproto import ConnectionType

import duplexthreads
from duplexthreads import Duplex
from duplexthreads.transports import memory_pair

from .peers import MemoryPeer, RawPeer
from .timing import UNIT

KINDS = ["memory", "websocket-client", "simple-websocket", "simple-websocket-server"]

Peer = Union[MemoryPeer, RawPeer]


class Listener:
    """A loopback listening socket whose accept thread runs ``serve(sock)`` once per client."""

    def __init__(self, serve: Callable[[socket.socket], Any]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.results: queue.Queue[Any] = queue.Queue()
        self._serve = serve
        self.thread = threading.Thread(target=self._accept_one, name="test-listener", daemon=True)
        self.thread.start()

    def _accept_one(self) -> None:
        try:
            client, _ = self.sock.accept()
        except OSError as exc:  # listener closed before anyone connected
            self.results.put(exc)
            return
        try:
            self.results.put(self._serve(client))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread, which raises it
            client.close()
            self.results.put(exc)

    def result(self) -> Any:
        item = self.results.get(timeout=10 * UNIT)
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.sock.close()
        self.thread.join(10 * UNIT)
        assert not self.thread.is_alive()


def read_environ(sock: socket.socket) -> Dict[str, Any]:
    """Read an HTTP upgrade request and build the WSGI environ a Werkzeug server would."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("client left during the request")
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    method, path, _ = head[0].split(" ", 2)
    environ: Dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, "werkzeug.socket": sock}
    for line in head[1:]:
        name, _, value = line.partition(":")
        environ["HTTP_" + name.strip().upper().replace("-", "_")] = value.strip()
    return environ


@dataclass
class Endpoints:
    """One open connection, its scripted peer, and what must be cleaned up."""

    kind: str
    conn: Duplex
    peer: Peer
    _cleanup: List[Callable[[], None]] = field(default_factory=list)

    def close_all(self) -> None:
        self.conn.abort()
        self.peer.stop()
        for step in self._cleanup:
            step()


def open_endpoints(kind: str, **duplex_options: Any) -> Endpoints:
    """Open a started connection of ``kind`` and its peer."""
    if kind == "memory":
        ours, theirs = memory_pair()
        conn = Duplex(ours, **duplex_options).start()
        return Endpoints(kind, conn, MemoryPeer(theirs))
    if kind in ("websocket-client", "simple-websocket"):

        def serve(sock: socket.socket) -> RawPeer:
            peer = RawPeer(sock, ConnectionType.SERVER)
            peer.serve_handshake()
            return peer

        listener = Listener(serve)
        try:
            conn = duplexthreads.connect(f"ws://127.0.0.1:{listener.port}/", backend=kind, **duplex_options)
            peer = listener.result()
        finally:
            listener.close()
        return Endpoints(kind, conn, peer)
    if kind == "simple-websocket-server":
        listener = Listener(lambda sock: duplexthreads.accept(read_environ(sock), **duplex_options))
        client = socket.create_connection(("127.0.0.1", listener.port), timeout=10 * UNIT)
        client.settimeout(None)
        try:
            peer = RawPeer(client, ConnectionType.CLIENT)
            peer.client_handshake()
            conn = listener.result()
        except BaseException:
            client.close()
            raise
        finally:
            listener.close()
        return Endpoints(kind, conn, peer)
    raise ValueError(kind)
