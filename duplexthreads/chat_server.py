"""``serve()``: an embedded chat server, one room on a :class:`~duplexthreads.Hub`.

It runs on Werkzeug's threaded WSGI server (a dependency of the package, so it works after a
plain ``pip install duplexthreads``): one thread per HTTP request, and the request of each
WebSocket client stays in its thread, relaying what the client sends, until the client leaves.

What a client sees (all text messages but the relayed binary ones):

* on joining, ``* welcome, you are guest-3 (2 here)``; the others get ``* guest-3 joined (2 here)``;
* every message another client sends, as it was sent (text as text, binary as binary), with no
  name added, so that programs can use the room as a plain broadcast channel;
* when a client leaves, ``* guest-3 left (1 here)``;
* when the server stops, close code 1001 ("going away").

Notices start with ``"* "``; a client may send text that looks like one, so a program that
needs to tell them apart for sure should give its own messages a prefix of its own. "Here"
counts the clients of this server; with a backplane the room spans several servers, and names
are unique only within one server. ``notices=False`` turns the notices off.

An HTTP request that is not a WebSocket upgrade gets a short plain-text 4xx answer (426 at
``/``, 404 elsewhere). The server listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import atexit
import http
import itertools
import logging
import math
import socket
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler, select_address_family

from ._rfc6455 import GOING_AWAY
from .exceptions import ConnectError, ConnectionClosed, HandshakeRejected, UsageError
from .hub import Backplane, Hub
from .report import ExitReport
from .server import accept
from .session import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_QUEUE,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    Duplex,
    SessionOptions,
)
from .transports._opening import check_max_message_size

__all__ = ["ChatServer", "serve"]

logger = logging.getLogger("duplexthreads.serve")

#: Seconds a client may stay silent while it sends its HTTP request (each read waits that long
#: at most: a client trickling bytes holds its thread longer, which MAX_HTTP_REQUESTS bounds).
#: The WebSocket itself has no such limit.
REQUEST_TIMEOUT = 10.0
#: Most requests at once still sending their HTTP request; beyond it the oldest is cut.
MAX_HTTP_REQUESTS = 128
#: Connections the kernel queues before the server accepts them (many clients join at once).
_BACKLOG = 1024
#: How often the accepting loop looks at whether it should stop (Werkzeug's loop polls).
_SHUTDOWN_POLL = 0.1
#: The close reason clients get with 1001 when the server stops.
_SHUTDOWN_REASON = "server shutting down"

_WSGIResponse = Iterable[bytes]
_StartResponse = Callable[..., Any]


class _QuietHandler(WSGIRequestHandler):
    """Werkzeug's handler, logging to our logger instead of printing each request."""

    timeout = REQUEST_TIMEOUT  # for the HTTP request only: accept() lifts it once upgraded

    def log(self, type: str, message: str, *args: Any) -> None:
        # A client's mistake (a malformed request, a connection cut) is no trouble of the server's.
        level = logging.INFO if type == "error" else logging.DEBUG
        logger.log(level, "%s %s", self.address_string(), message % args if args else message)

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        # Werkzeug's own colours the request line with terminal escapes: not for a log file.
        line = self.requestline.translate(_CONTROL_CHARACTERS)
        self.log("info", '"%s" %s %s', line, code, size)


#: Control characters escaped in logged request lines (they come from the client).
_CONTROL_CHARACTERS = {code: f"\\x{code:02x}" for code in [*range(32), 127]}


class _WSGIServer(ThreadedWSGIServer):
    """Werkzeug's threaded server, whose request threads the chat server starts and joins."""

    def __init__(self, listener: socket.socket, chat: ChatServer) -> None:
        self.chat = chat
        host, port = listener.getsockname()[:2]
        # Werkzeug takes the socket already bound: binding itself, it would print to stderr and
        # call sys.exit() when the port is in use, which no embedding application wants.
        super().__init__(host, port, chat._app, handler=_QuietHandler, fd=listener.fileno())

    def process_request(self, request: Any, client_address: Any) -> None:
        self.chat._start_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver would print the traceback on stderr; the application's log is the place.
        logger.exception("error serving %s", client_address)


class ChatServer:
    """A running chat room; made by :func:`serve`. Use it as a context manager, or call
    :meth:`close`. ``url`` is where clients connect, ``hub`` the room's connections."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        backplane: Optional[Backplane],
        on_full: str,
        notices: bool,
        grace: float,
        options: SessionOptions,
        max_message_size: Optional[int],
    ) -> None:
        if not isinstance(host, str):
            raise TypeError(f"host must be a str, not {type(host).__name__}")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"port must be an int, not {type(port).__name__}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0 (any free port) to 65535, not {port}")
        if not isinstance(notices, bool):
            raise TypeError(f"notices must be a bool, not {type(notices).__name__}")
        if not host:
            raise ValueError("host must name an address: '0.0.0.0' or '::' for every interface")
        check_max_message_size(max_message_size)
        self._options = options.check()
        if self._options.close_timeout is None or not math.isfinite(self._options.close_timeout):
            # close() must end: a client that never answers the close frame is cut after this.
            raise ValueError(f"serve() needs a finite close_timeout, not {options.close_timeout}")
        self._close_timeout: float = self._options.close_timeout
        self._max_message_size = max_message_size
        self._notices = notices
        self.hub = Hub(on_full=on_full, grace=grace, backplane=backplane)
        self._names = itertools.count(1)
        # Guards the request threads and the closing flag: a request upgrades under it, so that
        # close() either sees its connection in the hub or stops it before it gets there.
        self._lock = threading.Lock()
        self._closing = False
        self._closer: Optional[threading.Thread] = None
        self._requests: Dict[threading.Thread, socket.socket] = {}
        # Request threads past the HTTP request: close() must not shut their sockets.
        self._upgrading: Set[threading.Thread] = set()
        # Request threads whose silent client was cut to make room (ending now).
        self._evicted: Set[threading.Thread] = set()
        self._request_count = itertools.count(1)
        self._closed = threading.Event()
        self._close_reports: List[ExitReport] = []
        try:
            self._server = _listen(host, port, self)
        except BaseException:
            self.hub.close()
            raise
        self.host = host
        self.port: int = self._server.port
        self.url = f"ws://{_connectable(host)}:{self.port}/"
        self._loop = threading.Thread(
            target=self._server.serve_forever, args=(_SHUTDOWN_POLL,), name="duplexthreads-serve", daemon=True
        )
        self._loop.start()
        atexit.register(self.close)
        logger.info("chat server listening on %s", self.url)

    # -- the room --------------------------------------------------------------------------------

    def _app(self, environ: Dict[str, Any], start_response: _StartResponse) -> _WSGIResponse:
        if environ.get("PATH_INFO", "/") not in ("", "/"):
            return _answer(start_response, "404 Not Found", "Not found: the chat room is at /\n")
        with self._lock:
            if self._closing:
                return _answer(start_response, "503 Service Unavailable", "The chat server is shutting down.\n")
            # From here on close() leaves this request's socket alone: accept() may send the 101
            # at any moment, and the client is then closed with 1001 like the others.
            self._upgrading.add(threading.current_thread())
        try:
            conn = accept(environ, max_message_size=self._max_message_size, **self._options.as_kwargs())
        except HandshakeRejected as exc:
            if str(environ.get("HTTP_UPGRADE", "")).lower() != "websocket":
                return _answer(
                    start_response,
                    "426 Upgrade Required",
                    "This is a WebSocket chat server: connect with a WebSocket client.\n",
                    [("Upgrade", "websocket")],
                )
            return _answer(start_response, _status_line(exc.status), f"{exc}\n")
        except ConnectError as exc:  # the client went away during the handshake
            logger.debug("handshake with %s failed: %s", environ.get("REMOTE_ADDR"), exc)
            return _answer(start_response, "400 Bad Request", "")
        self._take_part(conn)
        return _answer(start_response, "200 OK", "")

    def _take_part(self, conn: Duplex) -> None:
        """Keep ``conn`` in the room until it ends: relay what it sends, announce it."""
        name = f"guest-{next(self._names)}"
        try:
            with self._lock:
                if self._closing:
                    raise UsageError("the server is closing")
                self.hub.add(conn)  # raises UsageError too if someone closed the hub
        except UsageError:  # close() began while this client was opening
            conn.close(GOING_AWAY, _SHUTDOWN_REASON)
            return
        try:
            self._relay(conn, name)
        finally:
            # Whatever went wrong in the relay, the client does not outlive its request thread.
            if not conn.closed:
                conn.close(GOING_AWAY, _SHUTDOWN_REASON)

    def _relay(self, conn: Duplex, name: str) -> None:
        here = len(self.hub)
        if self._notices:
            self._say_to(conn, f"* welcome, you are {name} ({here} here)")
            self.hub.broadcast(f"* {name} joined ({here} here)", exclude=conn)
        try:
            for message in conn:
                self.hub.broadcast(message, exclude=conn)
        except ConnectionClosed:
            pass  # an abnormal end; its report says how
        report = conn.report
        logger.debug("%s left: %s", name, report)
        if self._notices and not self.hub.closed:
            self.hub.broadcast(f"* {name} left ({len(self.hub)} here)")

    @staticmethod
    def _say_to(conn: Duplex, notice: str) -> None:
        try:
            conn.send(notice, timeout=0)
        except (TimeoutError, ConnectionClosed):
            pass  # gone or already behind: the room goes on without it

    # -- threads ---------------------------------------------------------------------------------

    def _start_request(self, request: socket.socket, client_address: Any) -> None:
        """Serve one HTTP request in a thread of its own (called by the accepting loop)."""
        with self._lock:
            if self._closing:
                self._server.shutdown_request(request)
                return
            for ended in [t for t in self._requests if not t.is_alive()]:
                del self._requests[ended]
                self._upgrading.discard(ended)
                self._evicted.discard(ended)
            waiting = [t for t in self._requests if t not in self._upgrading and t not in self._evicted]
            if len(waiting) >= MAX_HTTP_REQUESTS:
                # Connections that send nothing must not cost a thread each, nor lock the room:
                # the one that has waited longest (the dict keeps start order) is cut.
                oldest = waiting[0]
                self._evicted.add(oldest)
                _shut(self._requests[oldest])
            thread = threading.Thread(
                target=self._server.process_request_thread,
                args=(request, client_address),
                name=f"duplexthreads-serve-request-{next(self._request_count)}",
                daemon=True,
            )
            # Started under the lock: close() must never miss a thread it has to join.
            thread.start()
            self._requests[thread] = request

    # -- the end ---------------------------------------------------------------------------------

    def close(self) -> List[ExitReport]:
        """Stop: refuse new clients, close every client with 1001, join every thread and close
        the listening socket. Returns the clients' reports. Safe to call again (it then waits
        for the first call and returns the same reports)."""
        with self._lock:
            if self._closer is threading.current_thread() and not self._closed.is_set():
                raise UsageError("close() is already running in this thread (a signal handler?)")
            first = not self._closing
            self._closing = True
            if first:
                self._closer = threading.current_thread()
                # Requests still in HTTP (slow or idle clients) are cut; the others' clients get
                # a proper close, from the hub or from their own request thread.
                for thread, request in self._requests.items():
                    if thread not in self._upgrading:
                        _shut(request)
        if not first:
            self._closed.wait()
            return list(self._close_reports)
        atexit.unregister(self.close)
        try:
            self._server.shutdown()  # the accepting loop ends within _SHUTDOWN_POLL
            self._loop.join()
            self._server.server_close()
            self._close_reports = self.hub.close(GOING_AWAY, _SHUTDOWN_REASON)
            with self._lock:
                requests = list(self._requests)
            # Each ends promptly now: its connection is closed, or its socket shut down.
            bound = self._close_timeout + 2.0
            for thread in requests:
                thread.join(bound)
            stuck = [t.name for t in requests if t.is_alive()]
            if stuck:
                logger.warning("chat server closed with request threads still running: %s", stuck)
        finally:
            self._closed.set()
        logger.info("chat server on %s closed", self.url)
        return list(self._close_reports)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until the server is closed (by :meth:`close` from another thread); True if it is."""
        return self._closed.wait(timeout)

    def __enter__(self) -> ChatServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.hub)} clients"
        return f"<ChatServer {self.url} {state}>"


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    backplane: Optional[Backplane] = None,
    notices: bool = True,
    on_full: str = "close",
    grace: float = 0.5,
    max_queue: Optional[int] = DEFAULT_MAX_QUEUE,
    max_message_size: Optional[int] = DEFAULT_MAX_MESSAGE_SIZE,
    ping_interval: Optional[float] = DEFAULT_PING_INTERVAL,
    ping_timeout: Optional[float] = DEFAULT_PING_TIMEOUT,
    write_timeout: Optional[float] = 10.0,
    close_timeout: Optional[float] = DEFAULT_CLOSE_TIMEOUT,
) -> ChatServer:
    """Start an embedded chat server and return it, already listening and serving.

    ``with serve() as server:`` gives ``server.url`` (``ws://127.0.0.1:PORT/``; ``port=0``
    picks a free port) and closes everything when the block ends. Every message a client
    sends reaches every other client; see the module documentation for the notices. It listens
    on loopback unless ``host`` says otherwise (``"0.0.0.0"`` or ``"::"`` for every interface).
    ``backplane`` joins the room with other servers' rooms (:class:`~duplexthreads.RedisBackplane`).
    ``on_full`` and ``grace`` are the hub's policy for a client too slow for the room: it gets
    ``grace`` seconds to make room in its queue (a broadcast waits that long for it), then it is
    cut off. The rest are each client connection's options, as for
    :func:`~duplexthreads.accept`; ``close_timeout`` must be finite.
    """
    options = SessionOptions(
        max_queue=max_queue,
        close_timeout=close_timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        write_timeout=write_timeout,
    )
    return ChatServer(
        host,
        port,
        backplane=backplane,
        on_full=on_full,
        notices=notices,
        grace=grace,
        options=options,
        max_message_size=max_message_size,
    )


def _answer(
    start_response: _StartResponse, status: str, body: str, headers: Iterable[Tuple[str, str]] = ()
) -> List[bytes]:
    data = body.encode("utf-8")
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))), *headers]
    )
    return [data]


def _listen(host: str, port: int, chat: ChatServer) -> _WSGIServer:
    """Werkzeug's server on a socket bound here: a port in use raises ``OSError`` as usual."""
    family = select_address_family(host, port)
    with socket.create_server((host, port), family=family, backlog=_BACKLOG) as listener:
        return _WSGIServer(listener, chat)  # Werkzeug keeps a duplicate of the descriptor


def _status_line(status: int) -> str:
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return "400 Bad Request"


def _connectable(host: str) -> str:
    """The host part of a URL that reaches a server bound to ``host`` from this machine."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already gone
