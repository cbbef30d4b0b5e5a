"""The clients whose teardown ``teardown_paths`` times: duplexthreads on both backends, and peers.

Each subject opens one connection to the scripted peer (``_faults.PeerServer``) and returns a
:class:`Handle`: the connection, its peer, the threads the subject runs for it, and the calls
that end it. A connection counts as open once its reader has received the peer's greeting, so
the reader is blocked in its receive when the trigger comes.

The peers are used the way their documentation shows, with their defaults, plus the reader
thread an application needs to receive (the idiomatic loop, noted on each class). The
subject's threads are every thread that appeared while the connection was opened (the
library's and that reader), leaving out the peer's and the benchmark's own.
"""

from __future__ import annotations

import socket
import threading
import time
import weakref
from functools import partial
from typing import Any, Callable, Dict, List, Optional

import simple_websocket
import websocket
from websockets.exceptions import ConnectionClosed as WebsocketsClosed
from websockets.sync.client import connect as websockets_connect

import duplexthreads
from duplexthreads import ExitReport, Reason

from ._faults import IO_TIMEOUT, PeerConn, PeerServer, join_all, new_threads, shutdown_socket

PEER_CLOSE = "peer_close"
PEER_RESET = "peer_reset"
PEER_FIN = "peer_fin"
LOCAL_CLOSE = "local_close"
ABORT = "abort"
WRITE_ERROR = "write_error"
SILENT_CLOSE = "silent_peer_close"
HEARTBEAT = "heartbeat_timeout"

GREETING = "hello"


class BenchError(Exception):
    """A connection could not be opened or driven as the trial needs."""


class Handle:
    """One open connection of a subject, with its scripted peer."""

    def __init__(self) -> None:
        self.peer: Optional[PeerConn] = None
        #: Every thread the subject runs for this connection.
        self.threads: List[threading.Thread] = []
        #: The client's socket, to count it open or closed later without keeping it alive.
        self.sock_ref: Optional[weakref.ref[socket.socket]] = None

    def prepare(self, path: str) -> None:
        """What must happen before the trigger, untimed."""
        assert self.peer is not None
        if path == PEER_RESET:
            self.peer.stop_reader()  # a socket closed under a blocked recv() sends no RST
        elif path == SILENT_CLOSE:
            self.peer.silent = True

    def trigger(self, path: str) -> None:
        assert self.peer is not None
        if path == PEER_CLOSE:
            self.peer.close(1000, "bye")
        elif path == PEER_RESET:
            self.peer.reset()
        elif path == PEER_FIN:
            self.peer.fin()
        elif path in (LOCAL_CLOSE, SILENT_CLOSE):
            self.close()
        elif path == ABORT:
            self.abort()
        elif path == WRITE_ERROR:
            self.write_error()
        else:
            raise ValueError(f"unknown path {path!r}")

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise BenchError("this subject has no abort()")

    def write_error(self) -> None:
        raise BenchError("this subject is not measured on write errors")

    def finish(self, timeout: float) -> None:
        """Return once every thread of the connection has exited, or ``timeout`` passed."""
        join_all(self.threads, time.monotonic() + timeout)

    def kill(self) -> None:
        """Wake everything blocked on the connection (from the supervising thread).

        Shuts the client's socket down, then closes the peer's side too: a client may have
        closed its socket under its own reading thread (``simple_websocket.Client.close()``
        does), and then only the peer can end that thread's ``recv()``.
        """
        self.kill_client()
        if self.peer is not None:
            self.peer.stop()

    def kill_client(self) -> None:
        raise NotImplementedError

    def unexpected(self, path: str) -> Optional[str]:
        """Why the outcome is not what the path should give, if it is not."""
        return None

    def _track(self, sock: Optional[socket.socket]) -> None:
        if sock is not None:
            self.sock_ref = weakref.ref(sock)


# -- duplexthreads -----------------------------------------------------------------------------------

EXPECTED_REASONS: Dict[str, Reason] = {
    PEER_CLOSE: Reason.PEER_CLOSED,
    PEER_RESET: Reason.READ_ERROR,
    PEER_FIN: Reason.READ_ERROR,
    LOCAL_CLOSE: Reason.LOCAL_CLOSE,
    ABORT: Reason.ABORTED,
    WRITE_ERROR: Reason.WRITE_ERROR,
    SILENT_CLOSE: Reason.LOCAL_CLOSE,
}


class DuplexHandle(Handle):
    """``duplexthreads.connect``; done when ``wait()`` returns (it joins every thread)."""

    def __init__(self, server: PeerServer, backend: str, close_timeout: float) -> None:
        super().__init__()
        try:
            self.conn = duplexthreads.connect(
                server.url(), backend=backend, open_timeout=IO_TIMEOUT, close_timeout=close_timeout
            )
        except BaseException:
            server.discard_pending()
            raise
        try:
            self.peer = server.next_peer()
            self.peer.send(GREETING)
            greeting = self.conn.recv(timeout=IO_TIMEOUT)
            if greeting != GREETING:
                raise BenchError(f"expected the greeting, got {greeting!r}")
        except BaseException:
            self.conn.abort()
            if self.peer is not None:
                self.peer.stop()
            raise
        self.threads = list(self.conn.threads())
        self._track(getattr(self.conn.transport, "raw_socket", None))
        self.report: Optional[ExitReport] = None

    def close(self) -> None:
        self.conn.close()

    def abort(self) -> None:
        self.conn.abort()

    def write_error(self) -> None:
        # Our own side shut for writing: the writer's next write fails with EPIPE, while the
        # peer stays connected (it sees end of stream and stops reading, without closing).
        self.conn.transport.raw_socket.shutdown(socket.SHUT_WR)  # type: ignore[attr-defined]
        self.conn.send(b"x")

    def finish(self, timeout: float) -> None:
        self.report = self.conn.wait(timeout)

    def kill_client(self) -> None:
        self.conn.transport.shutdown()

    def unexpected(self, path: str) -> Optional[str]:
        report = self.report
        if report is None:
            return "no report"
        problems = []
        if report.reason is not EXPECTED_REASONS[path]:
            problems.append(f"reason {report.reason.value}")
        if path == PEER_CLOSE and report.close_code != 1000:
            problems.append(f"close code {report.close_code}")
        if path == LOCAL_CLOSE and not report.ok:
            problems.append("not ok")
        if path == SILENT_CLOSE and not isinstance(report.error, TimeoutError):
            problems.append(f"error {report.error!r}, expected a TimeoutError")
        if report.lingering:
            problems.append(f"lingering {list(report.lingering)}")
        alive = [thread.name for thread in self.conn.threads() if thread.is_alive()]
        if alive:
            problems.append(f"alive after wait(): {alive}")
        return f"{'; '.join(problems)} ({report.describe()})" if problems else None


# -- the peers ---------------------------------------------------------------------------------------


class PeerHandle(Handle):
    """A peer library's connection plus the reader an application runs; done when all exit."""

    def __init__(self, server: PeerServer) -> None:
        super().__init__()
        # Set by the reader on the first message: the greeting.
        self.greeted = threading.Event()
        self.raw: Optional[socket.socket] = None
        before = threading.enumerate()
        try:
            self.open(server.url())
        except BaseException:
            join_all(new_threads(before), time.monotonic() + IO_TIMEOUT)
            server.discard_pending()
            raise
        try:
            self.peer = server.next_peer()
            self.peer.send(GREETING)
            if not self.greeted.wait(IO_TIMEOUT):
                raise BenchError("the greeting did not arrive")
        except BaseException:
            self.kill()
            join_all(new_threads(before), time.monotonic() + IO_TIMEOUT)
            if self.peer is not None:
                self.peer.stop()
            raise
        self.find_socket()
        self._track(self.raw)
        self.threads = new_threads(before)

    def open(self, url: str) -> None:
        raise NotImplementedError

    def find_socket(self) -> None:
        """Set ``self.raw`` once connected, if ``open`` could not."""

    def kill_client(self) -> None:
        shutdown_socket(self.raw)


class WebSocketHandle(PeerHandle):
    """websocket-client's ``WebSocket``; reader: ``while ws.connected: ws.recv()``, then ``ws.close()``."""

    def open(self, url: str) -> None:
        self.ws: Any = websocket.create_connection(url, timeout=IO_TIMEOUT)
        self.ws.settimeout(None)  # the timeout above bounds the handshake only
        self.raw = self.ws.sock
        threading.Thread(target=self._read, name="bench-wsc-reader", daemon=True).start()

    def _read(self) -> None:
        try:
            while self.ws.connected:
                self.ws.recv()
                self.greeted.set()
        except Exception:  # noqa: BLE001 - how an application's reader loop ends
            pass
        finally:
            self.ws.close()

    def close(self) -> None:
        self.ws.close()


class WebSocketAppHandle(PeerHandle):
    """websocket-client's ``WebSocketApp``: ``run_forever()`` in a thread, ``close()`` to end."""

    def open(self, url: str) -> None:
        greeted = self.greeted  # not self: a cycle would keep the socket open until gc runs
        self.app = websocket.WebSocketApp(url, on_message=lambda app, message: greeted.set())
        threading.Thread(target=self.app.run_forever, name="bench-app-run_forever", daemon=True).start()

    def find_socket(self) -> None:
        ws = self.app.sock
        self.raw = None if ws is None else ws.sock

    def close(self) -> None:
        self.app.close()


class SimpleWebSocketHandle(PeerHandle):
    """``simple_websocket.Client``; reader: ``ws.receive()`` until ``ConnectionClosed``."""

    def open(self, url: str) -> None:
        # Daemon threads only, so that a stuck one cannot keep the interpreter alive.
        self.ws = simple_websocket.Client.connect(
            url, thread_class=partial(threading.Thread, daemon=True, name="bench-sws-backend")
        )
        self.raw = self.ws.sock
        threading.Thread(target=self._read, name="bench-sws-reader", daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                self.ws.receive()
                self.greeted.set()
        except simple_websocket.ConnectionClosed:
            pass

    def close(self) -> None:
        self.ws.close()


class WebsocketsHandle(PeerHandle):
    """websockets' sync client, defaults; reader: ``for message in ws``."""

    def open(self, url: str) -> None:
        self.ws = websockets_connect(url, open_timeout=IO_TIMEOUT, legacy=True)
        self.raw = self.ws.socket
        threading.Thread(target=self._read, name="bench-wss-reader", daemon=True).start()

    def _read(self) -> None:
        try:
            for _ in self.ws:
                self.greeted.set()
        except WebsocketsClosed:
            pass

    def close(self) -> None:
        self.ws.close()


DT_WSC = "duplexthreads[websocket-client]"
DT_SWS = "duplexthreads[simple-websocket]"
WSC = "websocket-client WebSocket"
APP = "websocket-client WebSocketApp"
SWS = "simple-websocket Client"
WSS = "websockets sync client"

DUPLEX_BACKENDS = {DT_WSC: "websocket-client", DT_SWS: "simple-websocket"}
PEER_HANDLES: Dict[str, Callable[[PeerServer], Handle]] = {
    WSC: WebSocketHandle,
    APP: WebSocketAppHandle,
    SWS: SimpleWebSocketHandle,
    WSS: WebsocketsHandle,
}


def opener(subject: str, server: PeerServer, close_timeout: float) -> Callable[[], Handle]:
    """A function that opens one connection of ``subject``."""
    if subject in DUPLEX_BACKENDS:
        return partial(DuplexHandle, server, DUPLEX_BACKENDS[subject], close_timeout)
    return partial(PEER_HANDLES[subject], server)
