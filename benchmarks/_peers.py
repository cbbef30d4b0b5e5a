"""The server side of the benchmarks, run as a child process: websockets' threading server, or a lean one.

``python benchmarks/_peers.py`` listens on 127.0.0.1 at a free port, prints the port on one
line of stdout, and serves until its stdin reaches end of file (the parent closes the pipe, or
dies) or ``--max-seconds`` pass, then shuts the server down and joins every thread it started.

It runs in its own process so that the client under test and the server do not share a GIL:
on a 2-core machine each gets a core, and the client's numbers are not the server's.

websockets' server starts two threads per connection (a handler and its reader). It can hold
2,000 connections on our 2-core machines, but closing them all wakes 4,000 threads at once in
one interpreter: the load average passed 150, closes waited seconds for the server's answer and
its threads took over 30 s to wind down, so the scale section measured the server rather than
the clients. ``--lean`` runs :class:`LeanServer` instead: one thread and one ``selectors``
loop, wsproto for the protocol, echoing every message, answering pings, and answering a close
frame with a close frame and then closing TCP (the server closes first, as RFC 6455 asks). The
open-file limit is raised to its hard limit first, so the number of connections is not capped
by a low soft limit.

The URL path selects the handler:

``/count?n=N&size=S`` (not in ``--lean``)
    Count incoming messages; once N have arrived, send ``"done"`` (or ``"bad: ..."`` if any
    message was not S bytes of binary). Then keep reading until the client closes.
``/echo``
    Send every message back.
``/close`` (not in ``--lean``)
    Echo, until the text message ``"close"`` arrives: then read ``time.monotonic_ns()`` and
    close with code 1000 and that number as the reason. On Linux (and macOS) the monotonic clock
    is shared by every process, so the client can measure from the server's close call.
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import sys
import threading
import time
from typing import Dict, List, Optional
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Ping, Request, TextMessage
from wsproto.utilities import RemoteProtocolError

__all__ = ["main"]


def handle(ws: ServerConnection) -> None:
    """Dispatch one connection on its path; a connection ending abruptly is not an error here."""
    assert ws.request is not None  # set once the opening handshake is done
    parts = urlsplit(ws.request.path)
    try:
        if parts.path == "/count":
            query = parse_qs(parts.query)
            count_messages(ws, int(query["n"][0]), int(query["size"][0]))
        elif parts.path == "/echo":
            echo(ws, close_on=None)
        elif parts.path == "/close":
            echo(ws, close_on="close")
        else:
            ws.close(1008, f"unknown path {parts.path}")
    except ConnectionClosed:
        pass  # aborts and kills are part of the benchmark


def count_messages(ws: ServerConnection, expected: int, size: int) -> None:
    received = 0
    wrong = 0
    for message in ws:
        received += 1
        if not isinstance(message, bytes) or len(message) != size:
            wrong += 1
        if received == expected:
            ws.send("done" if not wrong else f"bad: {wrong} of {received} messages were not {size} B binary")


def echo(ws: ServerConnection, close_on: Optional[str]) -> None:
    for message in ws:
        if close_on is not None and message == close_on:
            ws.close(1000, str(time.monotonic_ns()))
            return
        ws.send(message)


def wait_for_eof(max_seconds: float) -> None:
    """Block until stdin reaches end of file, or ``max_seconds`` pass; nothing polls."""
    deadline = time.monotonic() + max_seconds
    stdin = sys.stdin.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(stdin, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (selector.select(remaining) and not os.read(stdin, 4096)):
                return


class LeanServer:
    """One thread, one selector, many connections: accept, upgrade, echo, answer close frames."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        # Per connection: its protocol state and the bytes not yet written.
        self.protocols: Dict[socket.socket, WSConnection] = {}
        self.pending: Dict[socket.socket, bytes] = {}

    def serve(self, stdin: int, max_seconds: float) -> None:
        """Serve until ``stdin`` reaches end of file or ``max_seconds`` pass; then close everything."""
        deadline = time.monotonic() + max_seconds
        self.selector.register(stdin, selectors.EVENT_READ)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                for key, mask in self.selector.select(remaining):
                    if key.fileobj == stdin:
                        if not os.read(stdin, 4096):
                            return
                    elif key.fileobj is self.listener:
                        self._accept()
                    else:
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        if mask & selectors.EVENT_WRITE:
                            self._flush(sock)
                        if mask & selectors.EVENT_READ and sock in self.protocols:
                            self._read(sock)
        finally:
            for sock in list(self.protocols):
                self._drop(sock)
            self.selector.close()
            self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.protocols[sock] = WSConnection(ConnectionType.SERVER)
            self.pending[sock] = b""
            self.selector.register(sock, selectors.EVENT_READ)

    def _read(self, sock: socket.socket) -> None:
        protocol = self.protocols[sock]
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(sock)
            return
        try:
            protocol.receive_data(data or None)
            out = b""
            for event in protocol.events():
                if isinstance(event, Request):
                    out += protocol.send(AcceptConnection())
                elif isinstance(event, (TextMessage, BytesMessage)):
                    out += protocol.send(event)  # echo, frame by frame
                elif isinstance(event, Ping):
                    out += protocol.send(event.response())
                elif isinstance(event, CloseConnection) and protocol.state is ConnectionState.REMOTE_CLOSING:
                    out += protocol.send(event.response())
        except RemoteProtocolError:
            self._drop(sock)
            return
        self._write(sock, out)
        if not data or protocol.state is ConnectionState.CLOSED:
            self._drop(sock)  # after the close reply: the server closes TCP first

    def _write(self, sock: socket.socket, data: bytes) -> None:
        self.pending[sock] += data
        self._flush(sock)

    def _flush(self, sock: socket.socket) -> None:
        data = self.pending.get(sock, b"")
        if data:
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop(sock)
                return
            data = self.pending[sock] = data[sent:]
        if sock in self.protocols:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if data else 0)
            self.selector.modify(sock, events)

    def _drop(self, sock: socket.socket) -> None:
        """Close a connection, after a last attempt to write what is pending (its close reply)."""
        if sock not in self.protocols:
            return
        data = self.pending.pop(sock)
        del self.protocols[sock]
        self.selector.unregister(sock)
        try:
            if data:
                sock.setblocking(True)
                sock.settimeout(1.0)
                sock.sendall(data)
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the peer is gone already
        sock.close()


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: one fd per connection, thousands of them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # keep the soft limit; the scale section reports what it could open


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="stop after this long in any case")
    parser.add_argument("--lean", action="store_true", help="one-thread selectors server (echo only)")
    args = parser.parse_args(argv)
    raise_fd_limit()
    if args.lean:
        lean = LeanServer()
        print(lean.port, flush=True)
        lean.serve(sys.stdin.fileno(), args.max_seconds)
        return 0
    # Pings off: the plain send loops never read, so a pinging server would close them.
    # Compression off: clients that negotiate it (websockets) would not be comparable.
    server = serve(handle, "127.0.0.1", 0, compression=None, ping_interval=None, max_size=None, close_timeout=5)
    thread = threading.Thread(target=server.serve_forever, name="peer-server")
    thread.start()
    try:
        print(server.socket.getsockname()[1], flush=True)
        wait_for_eof(args.max_seconds)
    finally:
        server.shutdown()  # closes open connections and joins their handler threads
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
