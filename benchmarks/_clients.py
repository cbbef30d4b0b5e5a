"""The clients the benchmarks compare, each opened with its library's defaults.

``open_conn(client, url)`` returns a :class:`Conn`, the few calls the send and echo loops need,
for each of:

- ``duplexthreads (websocket-client)`` and ``duplexthreads (simple-websocket)``: ``connect``;
- ``websocket-client loop``: ``websocket.create_connection``, ``send_binary``, ``recv``;
- ``websocket-client WebSocketApp``: ``run_forever`` in a thread of its own, ``send`` from the
  caller's thread, messages handed over by ``on_message`` through a ``queue.Queue``;
- ``simple-websocket Client``: ``send`` and ``receive`` (its reading thread asked to be a daemon,
  so that a stuck one cannot keep the interpreter alive);
- ``websockets sync client``: ``send`` and ``recv``.

WebSocketApp's thread sometimes outlives ``close()`` by its 10 s select timeout
(../shared/FACTS.md). Closing one here waits a moment for it, then hands it to
:data:`LINGERING`, which the section joins (bounded) at the end of a phase and reports, so
that a lingering thread neither stalls a timed round nor goes unnoticed.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import simple_websocket
import websocket
from websockets.sync.client import connect as websockets_connect

import duplexthreads

from ._harness import IO_TIMEOUT, BenchError, shutdown_socket

Message = Union[str, bytes]

DT_WSC = "duplexthreads (websocket-client)"
DT_SWS = "duplexthreads (simple-websocket)"
WSC = "websocket-client loop"
WSA = "websocket-client WebSocketApp"
SWS = "simple-websocket Client"
WSS = "websockets sync client"
#: duplexthreads' clients, with the backend each uses.
BACKENDS = {DT_WSC: "websocket-client", DT_SWS: "simple-websocket"}
PEER_CLIENTS = (WSC, WSA, SWS, WSS)
CLIENTS = (DT_WSC, DT_SWS, *PEER_CLIENTS)

#: How long closing a WebSocketApp waits for its thread before handing it to LINGERING.
APP_JOIN_TIMEOUT = 1.0


@dataclass
class Conn:
    """One open client connection, reduced to what the benchmark loops need."""

    send: Callable[[Any], object]
    #: Next message; ``None`` (simple-websocket) or an exception after IO_TIMEOUT.
    recv: Callable[[], Optional[Message]]
    #: Wake every call blocked on the connection at once; safe from another thread, never blocks.
    kill: Callable[[], None]
    #: Close gracefully, bounded in time; raises BenchError if that did not go cleanly.
    close: Callable[[], None]


class Lingering:
    """Threads that outlived their connection's close(); joined, with a bound, later."""

    def __init__(self) -> None:
        # Appended to by whichever thread closes a connection; drained by the section's thread.
        self._lock = threading.Lock()
        self._threads: List[threading.Thread] = []

    def add(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads.append(thread)

    def reap(self, timeout: float) -> Tuple[int, int]:
        """Join them all within ``timeout`` s; return (how many lingered past close(), still alive)."""
        with self._lock:
            threads, self._threads = self._threads, []
        if not threads:
            return 0, 0
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t for t in threads if t.is_alive()]
        if alive:
            with self._lock:
                self._threads.extend(alive)
        return len(threads), len(alive)


#: WebSocketApp threads still running after their connection was closed.
LINGERING = Lingering()


class AppClient:
    """A ``websocket.WebSocketApp`` run the way its documentation shows: run_forever in a thread."""

    def __init__(self, url: str, thread_name: str = "bench-websocketapp") -> None:
        # Messages from on_message (run_forever's thread) to whoever calls recv().
        self.inbox: queue.Queue[Message] = queue.Queue()
        # Set by on_open, or by on_error/on_close if the connection fails first.
        self._opened = threading.Event()
        self._error: Optional[BaseException] = None
        self.app: Any = websocket.WebSocketApp(
            url,
            on_open=lambda app: self._opened.set(),
            on_message=lambda app, message: self.inbox.put(message),
            on_error=self._on_error,
            on_close=lambda app, code, reason: self._opened.set(),
        )
        self.thread = threading.Thread(target=self.app.run_forever, name=thread_name, daemon=True)
        self.thread.start()
        if not self._opened.wait(IO_TIMEOUT) or self._error is not None or self.app.sock is None:
            self.kill()
            self.thread.join(IO_TIMEOUT)
            raise BenchError(f"WebSocketApp did not open: {self._error!r}")

    def _on_error(self, app: Any, error: BaseException) -> None:
        self._error = error
        self._opened.set()

    def send(self, data: bytes) -> None:
        self.app.send(data, websocket.ABNF.OPCODE_BINARY)

    def recv(self) -> Message:
        return self.inbox.get(timeout=IO_TIMEOUT)

    def kill(self) -> None:
        ws = self.app.sock
        shutdown_socket(None if ws is None else ws.sock)

    def close(self, join_timeout: float = APP_JOIN_TIMEOUT) -> None:
        """close() as its users call it; a thread still alive after ``join_timeout`` goes to LINGERING."""
        self.app.close()
        self.thread.join(join_timeout)
        if self.thread.is_alive():
            LINGERING.add(self.thread)


def open_conn(client: str, url: str) -> Conn:
    """Open one connection of ``client`` to ``url``."""
    if client in BACKENDS:
        dconn = duplexthreads.connect(url, backend=BACKENDS[client], open_timeout=IO_TIMEOUT)
        return Conn(
            dconn.send, partial(dconn.recv, timeout=IO_TIMEOUT), dconn.transport.shutdown, partial(close_duplex, dconn)
        )
    if client == WSC:
        wsc = websocket.create_connection(url, timeout=IO_TIMEOUT)
        return Conn(wsc.send_binary, wsc.recv, partial(shutdown_socket, wsc.sock), wsc.close)
    if client == WSA:
        app = AppClient(url)
        return Conn(app.send, app.recv, app.kill, app.close)
    if client == SWS:
        sws = simple_websocket.Client.connect(
            url, thread_class=partial(threading.Thread, daemon=True, name="bench-simple-websocket")
        )
        return Conn(
            sws.send,
            partial(sws.receive, timeout=IO_TIMEOUT),
            partial(shutdown_socket, sws.sock),
            partial(close_simple_websocket, sws),
        )
    if client == WSS:
        wss = websockets_connect(url, open_timeout=IO_TIMEOUT, close_timeout=IO_TIMEOUT, legacy=True)
        return Conn(wss.send, partial(wss.recv, timeout=IO_TIMEOUT), partial(shutdown_socket, wss.socket), wss.close)
    raise ValueError(f"unknown client {client!r}")


def close_duplex(conn: duplexthreads.Duplex) -> None:
    report = conn.close(timeout=IO_TIMEOUT)
    if report is None or not report.ok or report.lingering:
        raise BenchError(f"duplexthreads close: {report.describe() if report else 'no report'}")


def close_simple_websocket(ws: Any) -> None:
    ws.close()  # sends the close frame; its thread ends when the server's answer arrives
    ws.thread.join(IO_TIMEOUT)
    if ws.thread.is_alive():
        raise BenchError("simple-websocket's thread outlived close() by 30 s")


def close_after_failure(conn: Conn) -> None:
    """Tear a connection down after an error, whatever state it is in."""
    conn.kill()
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - the round's own error is the one to report
        pass


# -- connections held open (idle, scale) -----------------------------------------------------------

WSC_READER = "websocket-client + reader thread"
#: The clients the idle and scale sections hold open: duplexthreads with both backends and
#: every peer. The plain websocket-client loop gets a reader thread blocked in recv(), the
#: usual way to receive while the main thread does something else.
HELD_CLIENTS = (DT_WSC, DT_SWS, SWS, WSS, WSC_READER, WSA)


@dataclass
class Held:
    """One connection held open, with the calls a section needs to end it."""

    #: End it the way its library's users do: graceful close() (duplexthreads: Duplex.close()).
    #: It does not wait for the library's threads beyond what the library itself does.
    close: Callable[[], object]
    #: shutdown(SHUT_RDWR) on its socket: wakes everything blocked on it; never blocks.
    kill: Callable[[], None]
    #: The threads started for it (for duplexthreads: Duplex.threads()).
    threads: Callable[[], List[threading.Thread]]
    #: duplexthreads only: abort().
    abort: Optional[Callable[[], object]] = None
    #: duplexthreads only: the connection itself, for duplexthreads.close_all().
    duplex: Optional[duplexthreads.Duplex] = None


def open_held(client: str, url: str, keepalive: bool = True) -> Held:
    """Open one connection of ``client`` and leave it idle; ``keepalive=False`` turns client pings off.

    Only websockets' sync client pings by default (every 20 s, in a thread of its own); the
    others have no keepalive unless asked.
    """
    if client in BACKENDS:
        dconn = duplexthreads.connect(url, backend=BACKENDS[client], open_timeout=IO_TIMEOUT)
        return Held(dconn.close, dconn.transport.shutdown, lambda: list(dconn.threads()), dconn.abort, dconn)
    if client == WSA:
        app = AppClient(url, thread_name="bench-websocketapp")
        return Held(app.app.close, app.kill, lambda: [app.thread])
    if client == SWS:
        sws = simple_websocket.Client.connect(
            url, thread_class=partial(threading.Thread, daemon=True, name="bench-simple-websocket")
        )
        return Held(sws.close, partial(shutdown_socket, sws.sock), lambda: [sws.thread])
    if client == WSS:
        options: Dict[str, Any] = {} if keepalive else {"ping_interval": None}
        wss = websockets_connect(url, open_timeout=IO_TIMEOUT, legacy=True, **options)
        threads = [t for t in (wss.recv_events_thread, getattr(wss, "keepalive_thread", None)) if t is not None]
        return Held(wss.close, partial(shutdown_socket, wss.socket), lambda: threads)
    if client == WSC_READER:
        return ReaderClient(url).held()
    raise ValueError(f"unknown client {client!r}")


class ReaderClient:
    """A plain ``websocket.WebSocket`` whose reader thread is blocked in ``recv()``."""

    def __init__(self, url: str) -> None:
        self.ws: Any = websocket.create_connection(url, timeout=IO_TIMEOUT)
        sock: Any = self.ws.sock
        sock.settimeout(None)  # as with create_connection(url): block, no timeout polling
        self.thread = threading.Thread(target=self._read, name="bench-wsc-reader", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while self.ws.recv():
                pass
        except (websocket.WebSocketException, OSError):
            pass  # closed or shut down: the reader's job is over

    def close(self) -> None:
        """websocket-client's close() would wait on the lock the reader holds: shut down, join, close."""
        shutdown_socket(self.ws.sock)
        self.thread.join(IO_TIMEOUT)
        self.ws.shutdown()

    def held(self) -> Held:
        return Held(self.close, partial(shutdown_socket, self.ws.sock), lambda: [self.thread])
