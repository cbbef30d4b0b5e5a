"""Builders that open one connection of each kind against a scripted peer.

``KINDS`` names the four sides the conformance suite runs on: the memory transport (against a
:class:`MemoryPeer`), the two client backends against the public scripted peer acting as
server, and simple-websocket's server side (inside a WSGI-style environ) against the scripted
peer acting as client. The scripted peers run in child processes, so a leak check of the test
process counts only what the code under test holds.
"""

from __future__ import annotations

import itertools
import queue
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union

import duplexthreads
from duplexthreads import Duplex
from duplexthreads.testing import MemoryPeer, PeerConnection, ScriptedClient, ScriptedPeer
from duplexthreads.transports import memory_pair

from .timing import UNIT

KINDS = ["memory", "websocket-client", "simple-websocket", "simple-websocket-server"]

Peer = Union[MemoryPeer, PeerConnection]

_paths = itertools.count(1)


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
        if isinstance(self.peer, MemoryPeer):
            self.peer.stop()
        for step in self._cleanup:
            step()


def open_endpoints(kind: str, server: Optional[ScriptedPeer] = None, **duplex_options: Any) -> Endpoints:
    """Open a started connection of ``kind`` and its peer.

    The client kinds connect to ``server``, a scripted peer shared by the tests (each test
    gets its own connection of it, in the order connections are opened).
    """
    if kind == "memory":
        ours, theirs = memory_pair()
        conn = Duplex(ours, **duplex_options).start()
        return Endpoints(kind, conn, MemoryPeer(theirs))
    if kind in ("websocket-client", "simple-websocket"):
        assert server is not None, "the client kinds need a scripted peer to connect to"
        # A path of its own, so that a connection an earlier failed test left unclaimed on the
        # shared peer is never mistaken for this one.
        target = f"/conn-{next(_paths)}"
        conn = duplexthreads.connect(server.url.rstrip("/") + target, backend=kind, **duplex_options)
        try:
            remote = server.next_connection(timeout=10 * UNIT)
            while remote.request_target != target:
                remote = server.next_connection(timeout=10 * UNIT)
        except BaseException:
            conn.abort()
            raise
        return Endpoints(kind, conn, remote)
    if kind == "simple-websocket-server":
        listener = Listener(lambda sock: duplexthreads.accept(read_environ(sock), **duplex_options))
        client = ScriptedClient(f"ws://127.0.0.1:{listener.port}/", timeout=10 * UNIT)
        try:
            remote = client.open()
            conn = listener.result()
        except BaseException:
            client.close()
            raise
        finally:
            listener.close()
        return Endpoints(kind, conn, remote, [client.close])
    raise ValueError(kind)
