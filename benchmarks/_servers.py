"""The servers the benchmarks run: the load server in a child process, and the scripted fault peer.

The load server (:class:`LoadServer`, the program ``python -m benchmarks._servers``) carries
traffic: throughput, echo, idle and scale. It runs in a child process so that the client under
test and the server do not share a GIL: on a 2-core machine each gets a core, and the client's
numbers are not the server's. It prints its port on one line of stdout and serves until its
stdin reaches end of file (the parent closes the pipe, or dies) or ``--max-seconds`` pass.
Two kinds, one per process:

- websockets' threading server (the default), compression and pings off. Paths:
  ``/count?n=N&size=S`` counts incoming messages and, once N have arrived, sends ``"done"`` (or
  ``"bad: ..."`` if any was not S bytes of binary); ``/echo`` sends every message back.
- ``--lean``: :class:`LeanServer`, one thread and one ``selectors`` loop with wsproto, no
  thread hand-off anywhere. websockets' server starts two threads per connection: closing
  2,000 connections woke 4,000 threads in one interpreter (load average past 150), so the scale
  section measured the server, not the clients; and each of its echoes crosses a hand-off
  between its two threads, which the echo figures would count as the client's. Paths:
  ``/echo`` echoes; ``/drive?n=N&size=S&warmup=W`` drives an echo from the server (below).
  Every connection answers pings and answers a close frame, then closes TCP first.

The fault peer is ``duplexthreads.testing.ScriptedPeer``, used in this process
(``isolated=False``) where a trigger must be timed exactly; :func:`fault_peer`,
:func:`end_connection` and :func:`discard_pending` are the little the sections add to it.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Callable, Dict, List, Optional, Type
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Ping, Request, TextMessage
from wsproto.utilities import RemoteProtocolError

from duplexthreads.testing import PeerConnection, ScriptedPeer

from ._resources import process_cpu_seconds, process_fd_count, raise_fd_limit

__all__ = [
    "HOST",
    "LoadServer",
    "discard_pending",
    "end_connection",
    "fault_peer",
    "main",
    "park_reader",
]

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
#: Bound on every wait of the scripted peer (its handshakes, controls and observations).
PEER_TIMEOUT = 10.0

# -- the parent's side ---------------------------------------------------------------------------------


class LoadServer:
    """The child process serving load; always stopped and reaped on exit."""

    def __init__(self, max_seconds: float = 1800.0, lean: bool = False) -> None:
        """``lean``: the one-thread selectors server instead of websockets'."""
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._servers", "--max-seconds", str(max_seconds)] + ["--lean"] * lean,
            cwd=REPO,  # where ``benchmarks`` is importable, whatever the caller's directory
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            self.port = int(self._read_line(30.0))
        except BaseException:
            self.stop()
            raise
        #: Descriptors the server holds with no connection open.
        self.idle_fds = process_fd_count(self.pid)

    def _read_line(self, timeout: float) -> str:
        assert self._proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise RuntimeError(f"the load server did not print its port within {timeout:.0f} s")
        return self._proc.stdout.readline()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def url(self, path: str) -> str:
        return f"ws://{HOST}:{self.port}{path}"

    def cpu_seconds(self) -> Optional[float]:
        return process_cpu_seconds(self.pid)

    def wait_idle(self, timeout: float) -> bool:
        """Wait (bounded) until the server holds no connection: its descriptors are back to idle."""
        deadline = time.monotonic() + timeout
        while True:
            count = process_fd_count(self.pid)
            if count is None or self.idle_fds is None or count <= self.idle_fds:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)  # no event to wait on in another process: a short, bounded poll

    def stop(self) -> None:
        """Close its stdin (it shuts down on end of file) and reap it; kill it if it lingers."""
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> LoadServer:
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.stop()


# -- the scripted fault peer ---------------------------------------------------------------------------


def fault_peer(isolated: bool) -> ScriptedPeer:
    """``ScriptedPeer`` on loopback; ``isolated=False`` where a trigger must be timed exactly."""
    return ScriptedPeer(isolated=isolated, timeout=PEER_TIMEOUT)


def end_connection(conn: PeerConnection) -> None:
    """End the peer's side of a connection for good (RST if it is still open); waits for it."""
    try:
        conn.reset()
    except ConnectionError:
        pass  # it had ended already


def discard_pending(peer: ScriptedPeer) -> None:
    """After a client failed to open, end the connection the peer may have accepted for it, so
    that it is not handed to the next client (connections are handed out in order)."""
    try:
        conn = peer.next_connection(0.2)
    except (TimeoutError, ConnectionError):
        return
    end_connection(conn)


def park_reader(conn: PeerConnection, received: int, send: Callable[[bytes], object]) -> None:
    """Make the peer read nothing more, not even end of stream, so that it stays connected.

    ``stop_reading()`` takes effect after the read in progress, and the peer's reader is blocked
    in one: one message from the client (``send``) ends that read. ``received`` is how many
    messages the peer should have had before it; a wait that times out means the reader had
    parked already.
    """
    conn.wait_messages(received)
    conn.stop_reading()
    send(b"park")
    try:
        conn.wait_messages(received + 1, timeout=0.5)
    except TimeoutError:
        pass


# -- the child: websockets' threading server -----------------------------------------------------------


def handle(ws: ServerConnection) -> None:
    """Dispatch one connection on its path; a connection ending abruptly is not an error here."""
    assert ws.request is not None  # set once the opening handshake is done
    parts = urlsplit(ws.request.path)
    try:
        if parts.path == "/count":
            query = parse_qs(parts.query)
            count_messages(ws, int(query["n"][0]), int(query["size"][0]))
        elif parts.path == "/echo":
            for message in ws:
                ws.send(message)
        else:
            ws.close(1008, f"unknown path {parts.path}")
    except ConnectionClosed:
        pass  # aborts and kills are part of the benchmark


def count_messages(ws: ServerConnection, expected: int, size: int) -> None:
    received = wrong = 0
    for message in ws:
        received += 1
        if not isinstance(message, bytes) or len(message) != size:
            wrong += 1
        if received == expected:
            ws.send("done" if not wrong else f"bad: {wrong} of {received} messages were not {size} B binary")


def wait_for_eof(stdin: int, max_seconds: float) -> None:
    """Block until ``stdin`` reaches end of file, or ``max_seconds`` pass; nothing polls."""
    deadline = time.monotonic() + max_seconds
    with selectors.DefaultSelector() as selector:
        selector.register(stdin, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (selector.select(remaining) and not os.read(stdin, 4096)):
                return


# -- the child: the lean server ----------------------------------------------------------------------


class Driven:
    """A ``/drive`` connection: the server sends, the client echoes, the server times it.

    It starts once the client's first message arrives (so the client is ready, and no message
    shares a segment with the 101, which simple-websocket would leave unparsed), then sends
    ``warmup + n`` binary messages of ``size`` bytes one at a time, each when the previous echo
    is back, and finally the round trips in microseconds as one text message (JSON), or
    ``"bad: ..."`` if an echo differed. A round trip runs from just before ``send()`` to just
    after the ``recv()`` that brought the echo: the server's parsing is not counted.
    """

    def __init__(self, n: int, size: int, warmup: int) -> None:
        self.remaining = warmup + n
        self.warmup = warmup
        self.payload = os.urandom(size)
        self.samples_us: List[float] = []
        self.sent_at: Optional[float] = None
        self.started = False
        self.bad = 0


class LeanServer:
    """One thread, one selector, many connections: accept, upgrade, echo or drive, answer closes."""

    def __init__(self) -> None:
        self.listener = socket.create_server((HOST, 0), backlog=4096)
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        # Per connection: its protocol state, the bytes not yet written, and /drive's state.
        self.protocols: Dict[socket.socket, WSConnection] = {}
        self.pending: Dict[socket.socket, bytes] = {}
        self.driven: Dict[socket.socket, Driven] = {}

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
        arrived = time.perf_counter()
        try:
            protocol.receive_data(data or None)
            out = b""
            for event in protocol.events():
                if isinstance(event, Request):
                    out += protocol.send(AcceptConnection())
                    self._start_drive(sock, event.target)
                elif isinstance(event, (TextMessage, BytesMessage)):
                    driven = self.driven.get(sock)
                    out += self._drive(protocol, driven, event, arrived) if driven else protocol.send(event)
                elif isinstance(event, Ping):
                    out += protocol.send(event.response())
                elif isinstance(event, CloseConnection) and protocol.state is ConnectionState.REMOTE_CLOSING:
                    out += protocol.send(event.response())
        except RemoteProtocolError:
            self._drop(sock)
            return
        driven = self.driven.get(sock)
        if driven is not None and out and driven.remaining and driven.started:
            driven.sent_at = time.perf_counter()  # after every byte of parsing: only the wire is timed
        self._write(sock, out)
        if not data or protocol.state is ConnectionState.CLOSED:
            self._drop(sock)  # after the close reply: the server closes TCP first

    def _start_drive(self, sock: socket.socket, target: str) -> None:
        parts = urlsplit(target)
        if parts.path == "/drive":
            query = {key: int(values[0]) for key, values in parse_qs(parts.query).items()}
            self.driven[sock] = Driven(query["n"], query["size"], query.get("warmup", 0))

    def _drive(self, protocol: WSConnection, driven: Driven, event: object, arrived: float) -> bytes:
        """The next message of a /drive connection, or its result once the last echo is back."""
        assert isinstance(event, (TextMessage, BytesMessage))
        if not event.message_finished:
            return b""  # the sizes driven fit one frame; a fragmented echo is timed at its end
        if driven.started:
            assert driven.sent_at is not None
            if event.data != driven.payload:
                driven.bad += 1
            if driven.warmup:
                driven.warmup -= 1
            else:
                driven.samples_us.append((arrived - driven.sent_at) * 1e6)
            driven.remaining -= 1
        driven.started = True
        if driven.remaining:
            return protocol.send(BytesMessage(data=driven.payload))
        result = json.dumps(driven.samples_us) if not driven.bad else f"bad: {driven.bad} echoes differed"
        return protocol.send(TextMessage(data=result))

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
        self.driven.pop(sock, None)
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


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="stop after this long in any case")
    parser.add_argument("--lean", action="store_true", help="one-thread selectors server (echo and drive)")
    args = parser.parse_args(argv)
    raise_fd_limit()
    if args.lean:
        lean = LeanServer()
        print(lean.port, flush=True)
        lean.serve(sys.stdin.fileno(), args.max_seconds)
        return 0
    # Pings off: the plain send loops never read, so a pinging server would close them.
    # Compression off: clients that negotiate it (websockets) would not be comparable.
    server = serve(handle, HOST, 0, compression=None, ping_interval=None, max_size=None, close_timeout=5)
    thread = threading.Thread(target=server.serve_forever, name="load-server")
    thread.start()
    try:
        print(server.socket.getsockname()[1], flush=True)
        wait_for_eof(sys.stdin.fileno(), args.max_seconds)
    finally:
        server.shutdown()  # closes open connections and joins their handler threads
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
