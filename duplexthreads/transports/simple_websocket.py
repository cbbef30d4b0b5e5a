"""Transport over simple-websocket (client, and server inside a WSGI app).

simple-websocket runs one thread per connection that reads the socket and buffers messages;
our reader takes them with ``receive()``. Three of its habits need care (../shared/FACTS.md):

- its ``send()`` uses ``sock.send``, which may write part of a frame, and its thread answers
  pings on the same socket without a lock; so it gets a :class:`_GuardedSocket` whose ``send``
  writes everything under the lock our writer holds too;
- its ``close()`` does not stop its thread, which then waits in ``recv()`` until the peer acts;
  we shut the socket down, which ends the thread, and join it;
- its thread closes the socket when it ends; the guard ignores that, so the transport closes the
  real socket exactly once, after the thread is gone.
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

import simple_websocket
from simple_websocket.ws import Base as _SimpleBase
from wsproto import ConnectionType
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.events import (
    Message as WsprotoMessage,
)

from ..exceptions import ConnectError, HandshakeRejected, TransportError
from ..report import Message
from . import _framing
from ._sockets import BorrowedSocket, shutdown_quietly, write_frames
from .base import CloseFrame, PeerClosingError, Transport, WriteError, new_connection_id, thread_name

__all__ = ["SimpleWebSocketTransport"]

Headers = Union[Mapping[str, str], Sequence[Tuple[str, str]], None]
ThreadFactory = Callable[..., threading.Thread]


#: How long recv() waits, after a close frame, for the backend thread to finish answering it.
_BACKEND_EXIT_TIMEOUT = 2.0

#: Messages simple-websocket may hold in its own buffer before its thread stops reading the
#: socket. Without this gate its buffer grows without bound and max_queue limits nothing.
BACKEND_BUFFER_LIMIT = 16


class _GuardedSocket(BorrowedSocket):
    """The socket as simple-websocket sees it: whole writes under a lock, gated reads, no close."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        # Serialises every write on the connection: our writer's batches and the backend
        # thread's pong and close replies. Held only while writing, never while reading.
        self.write_lock = threading.Lock()
        # Set by the backend thread when its recv() fails or reaches end of stream, so that a
        # lost connection is not mistaken for a close frame.
        self.read_failure: Optional[BaseException] = None
        # Backpressure: the backend thread waits here before reading while its buffer is full;
        # the transport notifies as our reader takes messages, and release() opens it for good.
        self.read_gate = threading.Condition()
        self.buffered: Callable[[], int] = lambda: 0
        self.released = False

    def release(self) -> None:
        with self.read_gate:
            self.released = True
            self.read_gate.notify_all()

    def message_taken(self) -> None:
        with self.read_gate:
            self.read_gate.notify_all()

    def send(self, data: bytes) -> int:
        with self.write_lock:
            self.raw.sendall(data)
        return len(data)

    sendall = send

    def recv(self, size: int) -> bytes:
        with self.read_gate:
            while not self.released and self.buffered() >= BACKEND_BUFFER_LIMIT:
                self.read_gate.wait()
            if self.released:
                # Shut down: read nothing more. Data left unread makes close() send RST,
                # which is what unblocks a peer still writing into a full window.
                return b""
        try:
            data = self.raw.recv(size)
        except OSError as exc:
            self.read_failure = exc
            raise
        if not data:
            self.read_failure = EOFError("end of stream without a close frame")
        return data


def _thread_factory(connection_id: int) -> ThreadFactory:
    def make(*args: Any, **kwargs: Any) -> threading.Thread:
        kwargs.setdefault("name", thread_name(connection_id, "backend"))
        kwargs.setdefault("daemon", True)
        return threading.Thread(*args, **kwargs)

    return make


class _Client(_SimpleBase):  # type: ignore[misc]
    """simple-websocket's client on a socket we connected, with a handshake that can fail cleanly.

    ``simple_websocket.Client`` connects with no timeout and leaves its socket open when the
    handshake fails; here the caller owns the socket, so it can always close it.
    """

    def __init__(self, sock: _GuardedSocket, request: Request, thread_class: ThreadFactory, **options: Any) -> None:
        self._request = request
        super().__init__(sock, connection_type=ConnectionType.CLIENT, thread_class=thread_class, **options)

    def handshake(self) -> None:
        self.sock.send(self.ws.send(self._request))
        while True:
            data = self.sock.recv(self.receive_bytes)
            if not data:
                raise HandshakeRejected(0, "connection closed during the opening handshake")
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    self.subprotocol = event.subprotocol
                    self.connected = True
                    # Messages that came in the same segment as the 101 would otherwise wait
                    # in wsproto's buffer until the next read.
                    self.sock.raw.settimeout(None)
                    self.connected = self._handle_events()
                    return
                if isinstance(event, RejectConnection):
                    raise HandshakeRejected(
                        event.status_code, f"answered HTTP {event.status_code}, not a WebSocket upgrade"
                    )


class SimpleWebSocketTransport(Transport):
    """A simple-websocket connection (``Client`` or ``Server``) driven by the session."""

    backend = "simple-websocket"

    def __init__(self, ws: Any, guard: _GuardedSocket, connection_id: int) -> None:
        super().__init__(connection_id)
        self._ws = ws
        self._guard = guard
        self._frames_ourselves = isinstance(ws, _Client)
        guard.buffered = lambda: len(ws.input_buffer)
        self._shut = False
        # The peer's close frame as wsproto parsed it. simple-websocket's server side loses the
        # code of a close frame that answers ours (its own reply to it fails first), so we
        # note every close event on its way to simple-websocket.
        self._peer_close: Optional[Tuple[int, str]] = None
        protocol = ws.ws
        parse_events = protocol.events

        def noting_close_events() -> Any:
            for event in parse_events():
                if isinstance(event, CloseConnection):
                    self._peer_close = (event.code, event.reason or "")
                yield event

        protocol.events = noting_close_events

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        headers: Headers = None,
        subprotocols: Optional[Sequence[str]] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        open_timeout: Optional[float] = 10.0,
        max_message_size: Optional[int] = None,
    ) -> SimpleWebSocketTransport:
        """Open a client connection; raise :class:`ConnectError` leaving nothing behind."""
        parts = urlsplit(url)
        secure = parts.scheme == "wss"
        host = parts.hostname or ""
        try:
            port = parts.port or (443 if secure else 80)
        except ValueError as exc:
            raise ValueError(f"{url}: invalid port") from exc
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        extra_headers: List[Tuple[bytes, bytes]] = []
        if headers:
            items = headers.items() if isinstance(headers, Mapping) else headers
            extra_headers = [(str(key).encode("latin-1"), str(value).encode("latin-1")) for key, value in items]
        request = Request(host=host, target=target, subprotocols=list(subprotocols or ()), extra_headers=extra_headers)

        connection_id = new_connection_id()
        sock: Optional[socket.socket] = None
        try:
            sock = socket.create_connection((host, port), timeout=open_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if secure:
                context = ssl_context or ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=host)
            guard = _GuardedSocket(sock)
            ws = _Client(guard, request, _thread_factory(connection_id), max_message_size=max_message_size)
        except HandshakeRejected as exc:
            _close_quietly(sock)
            raise HandshakeRejected(exc.status, f"{url}: {exc}") from exc
        except (OSError, ValueError, simple_websocket.ConnectionError) as exc:
            _close_quietly(sock)
            raise ConnectError(f"{url}: cannot connect: {exc!r}") from exc
        except BaseException:
            _close_quietly(sock)
            raise
        return cls(ws, guard, connection_id)

    @classmethod
    def accept(
        cls,
        environ: Dict[str, Any],
        *,
        subprotocols: Optional[Sequence[str]] = None,
        max_message_size: Optional[int] = None,
    ) -> SimpleWebSocketTransport:
        """Upgrade the WSGI request in ``environ`` (Werkzeug or Gunicorn) to a WebSocket."""
        for key in ("werkzeug.socket", "gunicorn.socket"):
            if environ.get(key) is not None:
                raw = environ[key]
                break
        else:
            raise ConnectError(
                "cannot find the client socket in the WSGI environ: accept() works under "
                "Werkzeug (Flask's server) and Gunicorn, which put it in 'werkzeug.socket' or "
                "'gunicorn.socket'"
            )
        if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
            raise HandshakeRejected(400, "the request is not a WebSocket upgrade (no 'Upgrade: websocket')")
        raw.settimeout(None)
        guard = _GuardedSocket(raw)
        # simple-websocket finds the socket through the environ; give it the guarded one.
        guarded_environ = {k: v for k, v in environ.items() if k not in ("werkzeug.socket", "gunicorn.socket")}
        guarded_environ["werkzeug.socket"] = guard
        connection_id = new_connection_id()
        try:
            ws = simple_websocket.Server(
                guarded_environ,
                subprotocols=list(subprotocols or ()),
                max_message_size=max_message_size,
                thread_class=_thread_factory(connection_id),
            )
        except (OSError, simple_websocket.ConnectionError) as exc:
            raise ConnectError(f"WebSocket handshake failed: {exc!r}") from exc
        return cls(ws, guard, connection_id)

    @property
    def raw_socket(self) -> socket.socket:
        """The underlying socket, for diagnostics and tests; reading or writing it breaks framing."""
        return self._guard.raw

    @property
    def closed(self) -> bool:
        """True once close() released the socket."""
        return self.raw_socket.fileno() == -1

    @property
    def subprotocol(self) -> Optional[str]:
        chosen = self._ws.subprotocol
        return None if chosen is None else str(chosen)

    def recv(self) -> Union[Message, CloseFrame]:
        try:
            data = self._ws.receive()
        except simple_websocket.ConnectionClosed as exc:
            failure = self._guard.read_failure
            if self._shut:
                raise TransportError("transport shut down") from failure
            if failure is not None:
                raise TransportError(f"connection lost: {failure!r}") from failure
            if self._ws.ws.state not in (ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED):
                # wsproto reports a frame it cannot parse as a CloseConnection event without
                # any close frame having arrived; only a real one moves its state on.
                raise TransportError(f"protocol error: {exc.message or exc.reason}") from exc
            # The backend thread marks the connection closed before it writes its own answer to
            # the close frame (the server side answers by itself); it ends right after. Wait for
            # it, or shutdown() could cut that answer off.
            self._ws.thread.join(_BACKEND_EXIT_TIMEOUT)
            if self._peer_close is not None:
                return CloseFrame(*self._peer_close)
            return CloseFrame(int(exc.reason), exc.message or "")
        self._guard.message_taken()
        if data is None:  # receive() only returns None when it times out; ours has no timeout
            raise TransportError("simple-websocket returned no message")
        if isinstance(data, (bytearray, memoryview)):
            return bytes(data)
        return data  # type: ignore[no-any-return]

    def send_batch(self, messages: Sequence[Message]) -> None:
        protocol = self._ws.ws
        with self._guard.write_lock:
            if self._frames_ourselves and protocol.state is ConnectionState.OPEN:
                # Our client never negotiates an extension, so its data frames are plain masked
                # frames: build them with our framing (C masking when available), not wsproto's.
                write_frames(self._guard.raw, _framing.encode_messages(messages))
                return
            frames: List[bytes] = []
            try:
                for message in messages:
                    event = TextMessage(data=message) if isinstance(message, str) else WsprotoMessage(data=message)
                    frames.append(protocol.send(event))
            except Exception as exc:  # wsproto refuses data once a close frame went either way
                if frames:
                    write_frames(self._guard.raw, frames)
                if protocol.state in (ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED):
                    # The backend thread took in the peer's close frame before our reader saw it.
                    raise PeerClosingError("the peer has closed", len(frames)) from exc
                raise WriteError(f"cannot send: {exc!r}", len(frames)) from exc
            write_frames(self._guard.raw, frames)

    def send_close(self, code: int, reason: str, timeout: Optional[float] = None) -> None:
        protocol = self._ws.ws
        with self._guard.write_lock:
            # The server side of simple-websocket answers a peer's close frame by itself.
            if protocol.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                return
            try:
                data = protocol.send(CloseConnection(code=code, reason=reason))
            except Exception as exc:
                raise TransportError(f"cannot send close frame: {exc!r}") from exc
            write_frames(self._guard.raw, [data])

    def shutdown(self) -> None:
        self._shut = True
        self._guard.release()
        shutdown_quietly(self._guard.raw)
        # Also wake our reader directly, in case the backend thread had already ended.
        self._ws.connected = False
        self._ws.event.set()

    def close(self, timeout: Optional[float] = None, *, clean: bool = False) -> None:
        thread = self._ws.thread
        if thread is not threading.current_thread():
            thread.join(timeout)
        self._guard.raw.close()

    def forget(self) -> None:
        # Closing our descriptor only drops this process's reference: no FIN, no shutdown.
        self._guard.raw.close()

    def backend_threads(self) -> Tuple[threading.Thread, ...]:
        return (self._ws.thread,)


def _close_quietly(sock: Optional[socket.socket]) -> None:
    if sock is not None:
        shutdown_quietly(sock)
        sock.close()
