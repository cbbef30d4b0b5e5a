"""The clients the benchmarks measure, one :class:`Client` each, used as their documentation shows.

``open_client(name, url)`` opens one connection of:

- ``duplexthreads (websocket-client)`` and ``duplexthreads (simple-websocket)``: ``connect``;
- ``websocket-client``: ``websocket.create_connection``; ``send_binary`` and ``recv``;
- ``WebSocketApp``: websocket-client's ``run_forever`` in a thread of its own, ``send`` from the
  caller's thread, messages handed over by ``on_message``;
- ``simple-websocket``: ``simple_websocket.Client``; ``send`` and ``receive``;
- ``websockets sync``: websockets' sync client; ``send`` and ``recv``.

Each library is used with its defaults, pings included (``keepalive``, below). ``reader=True``
adds the reader thread an application runs to receive while its main thread does something
else (each class shows its loop); what it receives goes to ``recv()``. Without it, ``recv()`` is
the library's own receive call, made from the caller's thread: the send and echo loops measure
the library, not a queue of ours.

Pings (``keepalive``). Two of the clients ping by default: duplexthreads (its heartbeat
thread, every 20 s, ending a connection silent 20 s after a ping) and websockets' sync client
(its keepalive thread, 20 s and 20 s too). WebSocketApp pings only when ``run_forever`` is
given ``ping_interval``; websocket-client's ``WebSocket`` and simple-websocket have no
keepalive. ``keepalive=True`` keeps each library's default; ``keepalive=False`` turns the
pings off where a library has them (duplexthreads and websockets: ``ping_interval=None``);
``keepalive=(interval, timeout)`` sets both for duplexthreads, websockets and WebSocketApp
(``run_forever(ping_interval=..., ping_timeout=...)``). ``Client.pings`` says what a connection
got: ``(interval, timeout)``, or None for no pings at all.

Every Client lists the threads started for it (``threads``: the library's, read from its
source, and our reader), can be killed from any thread without blocking (``kill``:
``shutdown(SHUT_RDWR)`` on its socket, which wakes every blocked call) and can be waited for
(``finish``). WebSocketApp's thread sometimes outlives ``close()`` by its 10 s select timeout
(see docs/design.rst): :func:`settle` hands such threads to :data:`LINGERING`, which a section
joins (bounded) before it ends, so that they neither stall a timed round nor go unnoticed.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import simple_websocket
import websocket
from websockets.exceptions import ConnectionClosed as WebsocketsClosed
from websockets.sync.client import connect as websockets_connect

import duplexthreads
from duplexthreads import ExitReport, Message

DT_WSC = "duplexthreads (websocket-client)"
DT_SWS = "duplexthreads (simple-websocket)"
WSC = "websocket-client"
WSA = "WebSocketApp"
SWS = "simple-websocket"
WSS = "websockets sync"
#: duplexthreads' clients, with the backend each uses.
BACKENDS = {DT_WSC: "websocket-client", DT_SWS: "simple-websocket"}
PEERS = (WSC, WSA, SWS, WSS)
CLIENTS = (DT_WSC, DT_SWS, *PEERS)
#: Short names for metric ids.
SLUGS = {
    DT_WSC: "duplexthreads-wsc",
    DT_SWS: "duplexthreads-sws",
    WSC: "websocket-client",
    WSA: "websocketapp",
    SWS: "simple-websocket",
    WSS: "websockets",
}

#: Longest any single blocking call of a client may take (opening, a receive, a close).
IO_TIMEOUT = 10.0
#: ``open_client(keepalive=...)``: True (each library's default pings), False (none), or
#: (ping_interval, ping_timeout) in seconds.
Keepalive = Union[bool, Tuple[float, float]]
#: Pings as a connection got them: (interval, timeout; None: pings without a verdict), or None.
Pings = Optional[Tuple[float, Optional[float]]]
#: duplexthreads' default pings, (interval, timeout): its heartbeat is on unless turned off.
DUPLEX_DEFAULT_PINGS = (duplexthreads.DEFAULT_PING_INTERVAL, duplexthreads.DEFAULT_PING_TIMEOUT)
#: How long settle() waits for a client's threads before handing them to LINGERING.
SETTLE_TIMEOUT = 1.0


class BenchError(Exception):
    """A connection could not be opened or driven as the benchmark needs."""


def describe_pings(pings: Pings) -> str:
    """``"20/20 s"``, ``"1/0.5 s"`` or ``"off"``: a table cell for ``Client.pings``."""
    if pings is None:
        return "off"
    interval, timeout = pings
    return f"{interval:g}/{'-' if timeout is None else format(timeout, 'g')} s"


def pings_for(keepalive: Keepalive, default: Pings) -> Pings:
    """What ``keepalive`` asks for, given the library's ``default`` (see the module docstring)."""
    if keepalive is True:
        return default
    if keepalive is False:
        return None
    interval, timeout = keepalive
    return (float(interval), float(timeout))


def shutdown_socket(sock: Optional[socket.socket]) -> None:
    """``shutdown(SHUT_RDWR)``: wakes every thread blocked on the socket; tolerates a closed one."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass  # already shut down or closed


class Client:
    """One open connection of one library (see the module docstring)."""

    name = ""

    def __init__(self) -> None:
        #: Send one binary message: the library's own call, bound once, so loops pay nothing extra.
        self.send: Callable[[bytes], object] = self._unsupported
        #: Next message, waiting at most IO_TIMEOUT (simple-websocket returns None then).
        self.recv: Callable[[], Optional[Message]] = self._unsupported
        self.sock: Optional[socket.socket] = None
        #: Every thread started for this connection.
        self.threads: List[threading.Thread] = []
        #: The pings this connection sends: (interval, timeout) in seconds, or None.
        self.pings: Pings = None
        # What the reader thread received, for recv() (reader=True only).
        self.inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()

    def _unsupported(self, *args: Any) -> Any:
        raise BenchError(f"{self.name} does not do this here")

    def close(self) -> None:
        """Close as the library's users do; waits no longer than the library itself does."""
        raise NotImplementedError

    def abort(self) -> None:
        raise BenchError(f"{self.name} has no abort()")

    def kill(self) -> None:
        """Wake every call blocked on the connection; safe from another thread, never blocks."""
        shutdown_socket(self.sock)

    def finish(self, timeout: float) -> List[str]:
        """Wait (bounded) until every thread of the connection has exited; the names still alive."""
        return [thread.name for thread in join_all(self.threads, time.monotonic() + timeout)]

    def provoke_write_error(self) -> None:
        """Shut our own socket for writing, then send: the next write fails with EPIPE, on this
        side alone (the peer only sees end of stream, if it reads)."""
        assert self.sock is not None
        self.sock.shutdown(socket.SHUT_WR)
        self.send(b"x")

    def close_problem(self) -> Optional[str]:
        """What was wrong with how the connection ended, once it has (duplexthreads only)."""
        return None

    def _start_reader(self, loop: Callable[[], None], label: str) -> None:
        reader = threading.Thread(target=loop, name=f"bench-{label}-reader", daemon=True)
        self.threads.append(reader)
        reader.start()

    def _inbox_recv(self) -> Message:
        return self.inbox.get(timeout=IO_TIMEOUT)


class DuplexClient(Client):
    """``duplexthreads.connect``; ``finish`` is ``wait()``, which joins every thread (the
    heartbeat's among them, unless ``keepalive=False``)."""

    def __init__(
        self,
        url: str,
        backend: str,
        close_timeout: float = duplexthreads.DEFAULT_CLOSE_TIMEOUT,
        on_message: Optional[Callable[[Message], None]] = None,
        keepalive: Keepalive = True,
    ) -> None:
        super().__init__()
        self.name = next(name for name, value in BACKENDS.items() if value == backend)
        self.pings = pings_for(keepalive, DUPLEX_DEFAULT_PINGS)
        interval, timeout = self.pings if self.pings is not None else (None, None)
        # Always passed, the default included, so that what a section measures is written here.
        self.conn = duplexthreads.connect(
            url,
            backend=backend,
            open_timeout=IO_TIMEOUT,
            close_timeout=close_timeout,
            on_message=on_message,
            ping_interval=interval,
            ping_timeout=timeout,
        )
        self.send = self.conn.send
        self.recv = partial(self.conn.recv, timeout=IO_TIMEOUT)
        self.sock = self.conn.transport.raw_socket  # type: ignore[attr-defined]
        self.threads = list(self.conn.threads())
        self.report: Optional[ExitReport] = None

    def close(self) -> None:
        self.conn.close()

    def abort(self) -> None:
        self.conn.abort()

    def kill(self) -> None:
        self.conn.transport.shutdown()

    def finish(self, timeout: float) -> List[str]:
        try:
            self.report = self.conn.wait(timeout)
        except TimeoutError:
            pass
        return [thread.name for thread in self.threads if thread.is_alive()]

    def close_problem(self) -> Optional[str]:
        report = self.conn.report
        if report is None or not report.ok or report.lingering:
            return report.describe() if report else "no exit report"
        return None


class PlainClient(Client):
    """websocket-client's ``WebSocket``; reader: ``while ws.connected: ws.recv()``, then ``ws.close()``."""

    name = WSC

    def __init__(self, url: str, reader: bool) -> None:
        super().__init__()
        self.ws: Any = websocket.create_connection(url, timeout=IO_TIMEOUT)
        self.sock = self.ws.sock
        self.send = self.ws.send_binary
        self.recv = self.ws.recv
        if reader:
            self.ws.settimeout(None)  # the timeout above bounds the handshake only
            self.recv = self._inbox_recv
            self._start_reader(self._read, "wsc")

    def _read(self) -> None:
        try:
            while self.ws.connected:
                self.inbox.put(self.ws.recv())
        except Exception:  # noqa: BLE001 - how an application's reader loop ends
            pass
        finally:
            self.ws.close()

    def close(self) -> None:
        self.ws.close()


class AppClient(Client):
    """websocket-client's ``WebSocketApp``: ``run_forever()`` in a thread, ``close()`` to end."""

    name = WSA

    def __init__(self, url: str, keepalive: Keepalive = True) -> None:
        super().__init__()
        # Set by on_open, or by on_error/on_close if the connection fails first.
        opened = threading.Event()
        errors: List[BaseException] = []
        inbox = self.inbox  # not self in the callbacks: a cycle would keep the socket open until gc
        #: Set when on_error or on_close is first called, after the connection opened or not.
        self.ended = ended = threading.Event()
        #: (time.monotonic(), "error" or "close", the error or (code, reason)), in call order.
        self.endings: List[Tuple[float, str, Any]] = []
        endings = self.endings

        def on_error(app: Any, error: BaseException) -> None:
            endings.append((time.monotonic(), "error", error))
            errors.append(error)
            ended.set()
            opened.set()

        def on_close(app: Any, code: Any, reason: Any) -> None:
            endings.append((time.monotonic(), "close", (code, reason)))
            ended.set()
            opened.set()

        self.app: Any = websocket.WebSocketApp(
            url,
            on_open=lambda app: opened.set(),
            on_message=lambda app, message: inbox.put(message),
            on_error=on_error,
            on_close=on_close,
        )
        self.pings = pings_for(keepalive, None)  # run_forever's default: no pings (ping_interval=0)
        options = {} if self.pings is None else {"ping_interval": self.pings[0], "ping_timeout": self.pings[1]}
        thread = threading.Thread(target=self.app.run_forever, kwargs=options, name="bench-websocketapp", daemon=True)
        self.threads = [thread]
        thread.start()
        if not opened.wait(IO_TIMEOUT) or errors or self.app.sock is None:
            shutdown_socket(getattr(self.app.sock, "sock", None))  # wakes run_forever if it got that far
            thread.join(IO_TIMEOUT)
            raise BenchError(f"WebSocketApp did not open: {errors[:1]!r}")
        # Its pinging thread, started before on_open when pings are on.
        if self.app.ping_thread is not None:
            self.threads.append(self.app.ping_thread)
        self.sock = self.app.sock.sock
        self.send = partial(self.app.send, opcode=websocket.ABNF.OPCODE_BINARY)
        self.recv = self._inbox_recv

    def close(self) -> None:
        self.app.close()


class SimpleClient(Client):
    """``simple_websocket.Client``; reader: ``ws.receive()`` until ``ConnectionClosed``."""

    name = SWS

    def __init__(self, url: str, reader: bool) -> None:
        super().__init__()
        # Its reading thread a daemon, so that a stuck one cannot keep the interpreter alive.
        self.ws = simple_websocket.Client.connect(
            url, thread_class=partial(threading.Thread, daemon=True, name="bench-simple-websocket")
        )
        self.sock = self.ws.sock
        self.threads = [self.ws.thread]
        self.send = self.ws.send
        self.recv = partial(self.ws.receive, timeout=IO_TIMEOUT)
        if reader:
            self.recv = self._inbox_recv
            self._start_reader(self._read, "sws")

    def _read(self) -> None:
        try:
            while True:
                self.inbox.put(self.ws.receive())
        except simple_websocket.ConnectionClosed:
            pass

    def close(self) -> None:
        self.ws.close()  # sends the close frame; its thread ends when the server's answer arrives


class WebsocketsClient(Client):
    """websockets' sync client; reader: ``for message in ws``."""

    name = WSS

    def __init__(self, url: str, reader: bool, keepalive: Keepalive) -> None:
        super().__init__()
        # It pings by default (every 20 s, from a thread of its own), like duplexthreads.
        options: Dict[str, Any] = {}
        if keepalive is not True:
            pings = pings_for(keepalive, None)
            options = {"ping_interval": None} if pings is None else dict(zip(("ping_interval", "ping_timeout"), pings))
        self.ws = websockets_connect(url, open_timeout=IO_TIMEOUT, legacy=True, **options)
        interval = self.ws.ping_interval
        self.pings = None if interval is None else (interval, self.ws.ping_timeout)
        self.sock = self.ws.socket
        keepalive_thread = getattr(self.ws, "keepalive_thread", None)
        self.threads = [self.ws.recv_events_thread, *([keepalive_thread] if keepalive_thread else [])]
        self.send = self.ws.send
        self.recv = partial(self.ws.recv, timeout=IO_TIMEOUT)
        if reader:
            self.recv = self._inbox_recv
            self._start_reader(self._read, "wss")

    def _read(self) -> None:
        try:
            for message in self.ws:
                self.inbox.put(message)
        except WebsocketsClosed:
            pass

    def close(self) -> None:
        self.ws.close()


def open_client(
    name: str,
    url: str,
    *,
    reader: bool = False,
    keepalive: Keepalive = True,
    close_timeout: float = duplexthreads.DEFAULT_CLOSE_TIMEOUT,
    on_message: Optional[Callable[[Message], None]] = None,
) -> Client:
    """Open one connection of client ``name`` (one of :data:`CLIENTS`) to ``url``.

    ``reader``: the peers get an application's reader thread (duplexthreads and WebSocketApp
    always receive in threads of their own). ``keepalive``: True, each library's default pings
    (duplexthreads' heartbeat and websockets' keepalive on, 20/20 s); False, none (duplexthreads
    and websockets get ``ping_interval=None``); ``(interval, timeout)``, those for duplexthreads,
    websockets and WebSocketApp (the others have no pings to set). ``close_timeout`` and
    ``on_message`` are duplexthreads' options.
    """
    if not isinstance(keepalive, bool) and name not in (*BACKENDS, WSS, WSA):
        raise BenchError(f"{name} has no pings to set")
    if name in BACKENDS:
        return DuplexClient(url, BACKENDS[name], close_timeout, on_message, keepalive)
    if name == WSC:
        return PlainClient(url, reader)
    if name == WSA:
        return AppClient(url, keepalive)
    if name == SWS:
        return SimpleClient(url, reader)
    if name == WSS:
        return WebsocketsClient(url, reader, keepalive)
    raise ValueError(f"unknown client {name!r}")


def join_all(threads: List[threading.Thread], deadline: float) -> List[threading.Thread]:
    """Join each thread until ``deadline`` (``time.monotonic``); return those still alive."""
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [thread for thread in threads if thread.is_alive()]


def close_after_failure(client: Client) -> None:
    """Tear a connection down after an error, whatever state it is in."""
    client.kill()
    try:
        client.close()
    except Exception:  # noqa: BLE001 - the round's own error is the one to report
        pass


class Lingering:
    """Threads that outlived their connection's close(); joined, with a bound, later."""

    def __init__(self) -> None:
        # Appended to by whichever thread closes a connection; drained by the section's thread.
        self._lock = threading.Lock()
        self._threads: List[threading.Thread] = []

    def add(self, threads: List[threading.Thread]) -> None:
        with self._lock:
            self._threads.extend(threads)

    def reap(self, timeout: float) -> Tuple[int, int]:
        """Join them all within ``timeout`` s; return (how many lingered past close(), still alive)."""
        with self._lock:
            threads, self._threads = self._threads, []
        alive = join_all(threads, time.monotonic() + timeout)
        self.add(alive)
        return len(threads), len(alive)


#: Threads still running after their connection was closed and settled.
LINGERING = Lingering()


def settle(clients: List[Client], timeout: float = SETTLE_TIMEOUT) -> List[str]:
    """Close each client as its users do, give all their threads ``timeout`` s, hand the rest to
    LINGERING; return what went wrong (a duplexthreads close must end cleanly)."""
    problems: List[str] = []
    for client in clients:
        try:
            client.close()
        except Exception as exc:  # noqa: BLE001 - one bad close must not leave the others open
            problems.append(f"{client.name} close(): {exc!r}")
            client.kill()
    deadline = time.monotonic() + timeout
    for client in clients:
        LINGERING.add(join_all(client.threads, deadline))
        problem = client.close_problem()
        if problem is not None:
            problems.append(f"{client.name} close(): {problem}")
    return problems
