"""Transport over simple-websocket (client, and server inside a WSGI app).

simple-websocket runs one thread per connection that reads the socket, parses it with wsproto
and buffers messages; our reader takes them with ``receive()``. Its habits that need care
(measured and explained in docs/design.rst):

- its ``send()`` uses ``sock.send``, which may write part of a frame, and its thread answers
  pings on the same socket without a lock; so it gets a :class:`_GuardedSocket` whose ``send``
  writes everything under the lock our writer holds too;
- its ``close()`` does not stop its thread, which then waits in ``recv()`` until the peer acts;
  we shut the socket down, which ends the thread, and join it;
- its thread closes the socket when it ends; the guard ignores that, so the transport closes the
  real socket exactly once, after the thread is gone;
- it takes a frame that wsproto cannot parse for the peer's close frame (its server side even
  answers it by itself, racing our writer), so a :class:`_Watch` sees every event first and
  turns a protocol violation into :class:`~duplexthreads.ProtocolError`, for our owner to send
  the close frame with wsproto's code once the writer has stopped;
- its client gives up when the server's first frames (or its close frame) arrive in the same
  read as the ``101`` answer; our :class:`_Client` handles them in the thread instead;
- it keeps the message it was assembling, and wsproto its buffers, for as long as the object
  lives; ``close()`` drops them.

Under Werkzeug the server side takes two more precautions, so that no byte of the connection
ever reaches Werkzeug's HTTP parser again (which would run the WSGI app for a request the
client hid in the WebSocket stream, past any proxy in front): what the client sent along with
the upgrade request, which Werkzeug read ahead into its request file, is handed to the
WebSocket (it is the client's first frames, or a protocol error); and once the WebSocket has
ended the socket is marked ended (:func:`_mark_ended`), so that Werkzeug reads end of stream
from it and writes nothing more to it, however the view ends.

Under Gunicorn the socket is marked ended too, and the transport shuts it down instead of
closing it: Gunicorn closes its own socket object once the view returns, and a socket object
closed under it made it log every WebSocket's end as an error and (gthread) count the
connection closed twice.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import ssl
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import simple_websocket
from simple_websocket.ws import Base as _SimpleBase
from wsproto import ConnectionType
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.events import (
    Message as WsprotoMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError
from wsproto.utilities import ProtocolError as WsprotoError

from .._deadline import deadline_after, remaining
from .._rfc6455 import MESSAGE_TOO_BIG
from ..exceptions import ConnectError, HandshakeRejected, ProtocolError, TransportError
from ..report import Message
from . import _framing, _opening
from ._sockets import (
    BorrowedSocket,
    SocketWriter,
    await_end_of_stream,
    close_without_reset,
    drain,
    shutdown_quietly,
    wait_for,
    write_frames,
)
from .base import CloseFrame, PeerClosingError, Transport, WriteError, new_connection_id, thread_name

__all__ = ["SimpleWebSocketTransport"]

ThreadFactory = Callable[..., threading.Thread]


#: How long recv() waits, after a close frame, for the backend thread to finish answering it.
_BACKEND_EXIT_TIMEOUT = 2.0

#: Once the socket is shut down the backend thread ends within microseconds; close() gives it
#: this much even when its own time is spent, rather than report it lingering for nothing.
_WAKE_GRACE = 0.1

#: Messages simple-websocket may hold in its own buffer before its thread stops reading the
#: socket. Without this gate its buffer grows without bound and max_queue limits nothing.
BACKEND_BUFFER_LIMIT = 16


class _GuardedSocket(BorrowedSocket):
    """The socket as simple-websocket sees it: whole writes under a lock, gated reads, no close."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        # Every write on the connection: our writer's batches, send()'s direct writes (client
        # side), our close frame, and the backend thread's pong and close replies. Its lock is
        # held only while writing, never while reading.
        self.writer = SocketWriter(sock)
        self.write_lock = self.writer.lock
        # Set by the backend thread when its recv() fails or reaches end of stream, so that a
        # lost connection is not mistaken for a close frame.
        self.read_failure: Optional[BaseException] = None
        # Backpressure: the backend thread waits here before reading while its buffer is full;
        # the transport notifies as our reader takes messages, and release() opens it for good.
        self.read_gate = threading.Condition()
        self.buffered: Callable[[], int] = lambda: 0
        self.released = False
        # Bytes that came before the backend thread's first read (server side: what the client
        # sent along with its upgrade request); its first reads return them.
        self.pending = b""
        # Set by the backend thread when one of its replies (a pong, a close) failed to go.
        self.write_failure: Optional[WriteError] = None
        # When the last read brought bytes: the heartbeat's proof of life (backend thread only).
        self.heard_at = time.monotonic()

    def release(self) -> None:
        with self.read_gate:
            self.released = True
            self.read_gate.notify_all()

    def message_taken(self) -> None:
        with self.read_gate:
            self.read_gate.notify_all()

    def send(self, data: bytes) -> int:
        # The backend thread's replies: whole, and never inside a frame half written.
        try:
            self.writer.write_control(data)
        except WriteError as exc:
            # simple-websocket swallows the error and just stops: keep it for the report
            # (a pong stuck on a peer that stopped reading is a write timeout).
            self.write_failure = exc
            raise
        return len(data)

    sendall = send

    def recv(self, size: int) -> bytes:
        with self.read_gate:
            while not self.released and self.buffered() >= BACKEND_BUFFER_LIMIT:
                self.read_gate.wait()
            if self.released:
                # Shut down: read nothing more. close() drains what is left before closing.
                return b""
        if self.pending:
            data, self.pending = self.pending[:size], self.pending[size:]
            return data
        try:
            data = self.raw.recv(size)
        except OSError as exc:
            self.read_failure = exc
            raise
        self.heard_at = time.monotonic()
        if not data:
            self.read_failure = EOFError("end of stream without a close frame")
        return data


class _StopBackend(LocalProtocolError):
    """Raised into simple-websocket's thread to end it: its loop ends on LocalProtocolError."""


class _Watch:
    """Sees each wsproto event before simple-websocket does, and keeps what it loses.

    wsproto reports a frame it cannot parse (or a close frame it must refuse) as a
    ``CloseConnection`` event, but leaves its state alone; a real close frame moves the state to
    REMOTE_CLOSING or CLOSED first. simple-websocket cannot tell them apart. The watch can: it
    keeps the peer's real close frame, and on a violation (or a message over
    ``max_message_size``) it records what went wrong and the close code, and ends the backend thread
    before simple-websocket sees the event, so nothing answers it but our owner.
    """

    def __init__(self, max_message_size: Optional[int]) -> None:
        self.max_message_size = max_message_size
        self.peer_close: Optional[Tuple[int, str]] = None
        #: What the peer did wrong, and the close code to fail the connection with.
        self.violation: Optional[Tuple[str, int]] = None
        #: Called with each pong's payload (the transport hands it to its ``on_pong``).
        self.on_pong: Callable[[bytes], None] = lambda payload: None
        self._message_size = 0

    def install(self, protocol: Any) -> None:
        """Put the watch in front of ``protocol.events`` (before the backend thread starts)."""
        parse = protocol.events

        def events() -> Iterator[Any]:
            for event in parse():
                self._see(protocol, event)
                yield event

        protocol.events = events

    @staticmethod
    def uninstall(protocol: Any) -> None:
        # The wrapper refers to the protocol and the protocol to the wrapper: without this the
        # pair (and wsproto's buffers) would wait for the garbage collector.
        vars(protocol).pop("events", None)

    def _see(self, protocol: Any, event: Any) -> None:
        if isinstance(event, Pong):
            self.on_pong(bytes(event.payload))
            return
        if isinstance(event, CloseConnection):
            if protocol.state in (ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED):
                self.peer_close = (int(event.code), event.reason or "")
                return
            self._fail(f"protocol error: {event.reason}", int(event.code))
        if isinstance(event, (TextMessage, BytesMessage)) and self.max_message_size is not None:
            self._message_size += _size_in_bytes(event.data)
            # wsproto hands a frame over piece by piece; what its header announced for the
            # rest counts already, so a frame claiming too much fails at its first piece.
            if self._message_size + _frame_bytes_to_come(protocol) > self.max_message_size:
                self._fail(f"a message is over max_message_size ({self.max_message_size} bytes)", MESSAGE_TOO_BIG)
            if event.message_finished:
                self._message_size = 0

    def _fail(self, message: str, code: int) -> None:
        self.violation = (message, code)
        raise _StopBackend(message)


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

    def __init__(
        self,
        sock: _GuardedSocket,
        request: Request,
        channel: _opening.HandshakeSocket,
        watch: _Watch,
        thread_class: ThreadFactory,
    ) -> None:
        self._request = request
        self._channel = channel
        self._watch = watch
        super().__init__(sock, connection_type=ConnectionType.CLIENT, thread_class=thread_class)

    def handshake(self) -> None:
        self._watch.install(self.ws)
        try:
            self._handshake()
        except BaseException:
            # Nothing will ever release this wsproto connection: break the watch's cycle now.
            self._watch.uninstall(self.ws)
            raise

    def _handshake(self) -> None:
        channel = self._channel
        channel.send(self.ws.send(self._request))
        while True:
            # The channel fails at once on an answer that is not HTTP, or whose head is too long.
            data = channel.recv(self.receive_bytes)
            if not data:
                raise EOFError("the server closed the connection")
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    # What wsproto lets through: a repeated header (it reads the last one) or
                    # an empty Sec-WebSocket-Extensions.
                    channel.check_accepted()
                    self.subprotocol = event.subprotocol
                    self.connected = True
                    channel.raw.settimeout(None)
                    # Frames that came with the 101 wait in wsproto's buffer: _thread takes them.
                    return
                if isinstance(event, RejectConnection):
                    raise RemoteProtocolError(f"refused with HTTP {event.status_code}")

    def _thread(self) -> None:
        # Frames that arrived in the same read as the 101 must be handled before the first read,
        # which might never return: a server may speak first and then wait for us. Handled
        # during the handshake instead, a close frame among them made simple-websocket give up
        # on the whole connection ("Connection error: None"), losing the message and the code.
        try:
            self.connected = self._handle_events()
        except (OSError, LocalProtocolError):
            self.connected = False
        if not self.connected:
            self.event.set()
            return
        super()._thread()


class _Server(simple_websocket.Server):  # type: ignore[misc]
    """simple-websocket's server with the watch installed before its thread starts."""

    def __init__(self, environ: Dict[str, Any], watch: _Watch, **options: Any) -> None:
        self._watch = watch
        super().__init__(environ, **options)

    def handshake(self) -> None:
        self._watch.install(self.ws)
        super().handshake()


class SimpleWebSocketTransport(Transport):
    """A simple-websocket connection (client or server) driven by the session."""

    backend = "simple-websocket"

    def __init__(
        self,
        ws: Any,
        guard: _GuardedSocket,
        connection_id: int,
        watch: Optional[_Watch] = None,
        *,
        wsgi_server: Optional[str] = None,
    ) -> None:
        super().__init__(connection_id)
        self._ws = ws
        self._guard = guard
        self._watch = watch if watch is not None else _Watch(None)
        self._is_client = isinstance(ws, _Client)
        # "werkzeug" or "gunicorn" on the server side (set by accept()): the WSGI server that
        # holds the socket too, which is marked ended once the WebSocket is closed.
        self._wsgi_server = wsgi_server
        # Set by close() under a WSGI server, which closes the descriptor itself later.
        self._handed_back = False
        # Data frames are built here, not by wsproto, unless an extension was negotiated (our
        # server accepts permessage-deflate when a client offers it; our client never offers
        # it): then only wsproto can build them. Our own framing is faster (C masking on the
        # client side), and lets send() write in the caller's thread while the writer is idle:
        # a broadcast to hundreds of clients then wakes no writer thread.
        self._plain_frames = self._is_client or not _negotiated_extensions(ws)
        self._encode = _framing.encode_messages if self._is_client else _framing.encode_server_messages
        self.direct_writes = self._plain_frames and guard.writer.can_write_now
        self._thread: threading.Thread = ws.thread
        self._subprotocol: Optional[str] = None if ws.subprotocol is None else str(ws.subprotocol)
        guard.buffered = lambda: len(ws.input_buffer)
        self._watch.on_pong = self._pong
        self._shut = False

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        headers: _opening.HeadersArg = None,
        subprotocols: Optional[Sequence[str]] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        open_timeout: Optional[float] = 10.0,
        max_message_size: Optional[int] = None,
    ) -> SimpleWebSocketTransport:
        """Open a client connection within ``open_timeout``; raise :class:`ConnectError` leaving nothing behind."""
        request = _opening.client_request(url, headers, subprotocols)
        _opening.check_max_message_size(max_message_size)
        upgrade = Request(
            host=request.host_header,
            target=request.resource,
            subprotocols=list(request.subprotocols),
            extra_headers=[(name.encode("ascii"), value.encode("latin-1")) for name, value in request.headers],
        )
        deadline = deadline_after(open_timeout)
        sock = _opening.open_socket(request, ssl_context, deadline)
        connection_id = new_connection_id()
        channel = _opening.HandshakeSocket(sock, deadline, url)
        watch = _Watch(max_message_size)
        guard = _GuardedSocket(sock)
        try:
            ws = _Client(guard, upgrade, channel, watch, _thread_factory(connection_id))
        except BaseException as exc:  # noqa: BLE001 - translated, then raised by reraise()
            close_without_reset(sock)
            _opening.reraise(_translate(request, exc, bytes(channel.answer), deadline), exc)
        return cls(ws, guard, connection_id, watch)

    @classmethod
    def accept(
        cls,
        environ: Dict[str, Any],
        *,
        subprotocols: Optional[Sequence[str]] = None,
        max_message_size: Optional[int] = None,
    ) -> SimpleWebSocketTransport:
        """Upgrade the WSGI request in ``environ`` (Werkzeug or Gunicorn) to a WebSocket."""
        if not isinstance(environ, Mapping):
            raise TypeError(f"environ must be the WSGI environ dict, not {type(environ).__name__}")
        offered = _opening.check_subprotocols(subprotocols)
        _opening.check_max_message_size(max_message_size)
        for key in ("werkzeug.socket", "gunicorn.socket"):
            if environ.get(key) is not None:
                raw = environ[key]
                server = key.split(".")[0]
                break
        else:
            raise ConnectError(
                "cannot find the client socket in the WSGI environ: accept() works under "
                "Werkzeug (Flask's server) and Gunicorn, which put it in 'werkzeug.socket' or "
                "'gunicorn.socket'"
            )
        if str(environ.get("HTTP_UPGRADE", "")).lower() != "websocket":
            raise HandshakeRejected(400, "the request is not a WebSocket upgrade (no 'Upgrade: websocket')")
        method = environ.get("REQUEST_METHOD", "GET")
        if method != "GET":
            # simple-websocket rebuilds the request as a GET whatever it was (RFC 6455 4.2.1).
            raise HandshakeRejected(400, f"a WebSocket upgrade must be a GET request, not {method}")
        if environ.get("HTTP_TRANSFER_ENCODING"):
            # Werkzeug would read it through a decoder: what follows could not be taken below.
            raise HandshakeRejected(400, "a WebSocket upgrade request has no body (it has a Transfer-Encoding)")
        if str(environ.get("CONTENT_LENGTH") or "0").strip() != "0":
            # A proxy would pass those bytes on as the request's body; here they would be read
            # as the client's first frames. Refused, so that both read the connection alike.
            raise HandshakeRejected(400, "a WebSocket upgrade request has no body (it has a Content-Length)")
        ahead = _read_ahead(environ.get("wsgi.input"), raw) if server == "werkzeug" else b""
        raw.settimeout(None)
        _without_nagle(raw)
        guard = _GuardedSocket(raw)
        guard.pending = ahead
        # simple-websocket finds the socket through the environ; give it the guarded one.
        guarded_environ = {k: v for k, v in environ.items() if k not in ("werkzeug.socket", "gunicorn.socket")}
        guarded_environ["werkzeug.socket"] = guard
        connection_id = new_connection_id()
        watch = _Watch(max_message_size)
        try:
            ws = _Server(
                guarded_environ,
                watch,
                subprotocols=list(offered),
                thread_class=_thread_factory(connection_id),
            )
        except RemoteProtocolError as exc:
            hint = exc.event_hint
            status = hint.status_code if isinstance(hint, RejectConnection) else 400
            raise HandshakeRejected(status, f"not a valid WebSocket upgrade request: {exc}") from exc
        except (WsprotoError, ValueError) as exc:
            raise HandshakeRejected(400, f"not a valid WebSocket upgrade request: {exc!r}") from exc
        except Exception as exc:  # the client gone (OSError), or the backends' own errors
            raise ConnectError(f"WebSocket handshake failed: {exc!r}") from exc
        return cls(ws, guard, connection_id, watch, wsgi_server=server)

    @property
    def raw_socket(self) -> socket.socket:
        """The underlying socket, for diagnostics and tests; reading or writing it breaks framing."""
        return self._guard.raw

    @property
    def closed(self) -> bool:
        """True once close() released the socket (under a WSGI server: handed it back to it)."""
        return self._handed_back or self.raw_socket.fileno() == -1

    @property
    def subprotocol(self) -> Optional[str]:
        return self._subprotocol

    def recv(self) -> Union[Message, CloseFrame]:
        try:
            data = self._ws.receive()
        except simple_websocket.ConnectionClosed as exc:
            return self._ended(exc)
        self._guard.message_taken()
        if data is None:  # receive() only returns None when it times out; ours has no timeout
            raise TransportError("simple-websocket returned no message")
        if isinstance(data, (bytearray, memoryview)):
            return bytes(data)
        return data  # type: ignore[no-any-return]

    def _ended(self, closed: BaseException) -> CloseFrame:
        """Why simple-websocket says the connection is closed: a close frame, or raise why not."""
        watch = self._watch
        failure = self._guard.read_failure
        if self._shut:
            raise TransportError("transport shut down") from failure
        if watch.violation is not None:
            message, code = watch.violation
            raise ProtocolError(message, code)
        if self._guard.write_failure is not None:
            raise self._guard.write_failure
        if watch.peer_close is None:
            if failure is not None:
                raise TransportError(f"connection lost: {failure!r}") from failure
            raise TransportError(f"the backend stopped without a close frame: {closed}") from closed
        # The backend thread marks the connection closed before it writes its own answer to the
        # close frame (the server side answers by itself); it ends right after. Wait for it, or
        # shutdown() could cut that answer off.
        self._thread.join(_BACKEND_EXIT_TIMEOUT)
        return CloseFrame(*watch.peer_close)

    def _pong(self, payload: bytes) -> None:
        on_pong = self.on_pong
        if on_pong is not None:
            on_pong(payload)

    def last_sign_of_life(self) -> float:
        return max(self._guard.heard_at, self._guard.writer.last_progress())

    def set_write_timeout(self, timeout: Optional[float]) -> None:
        super().set_write_timeout(timeout)
        self._guard.writer.stall_timeout = timeout

    def send_ping(self, payload: bytes, timeout: Optional[float]) -> None:
        protocol = self._ws.ws
        if protocol is None or protocol.state is not ConnectionState.OPEN:
            raise TransportError("cannot send a ping: the connection is closing")
        # Built here, not by wsproto, which is not made to be called from two threads at once;
        # neither side ever negotiates an extension, so a ping is this simple frame.
        if self._is_client:
            frame = _framing.encode_frame(_framing.OPCODE_PING, payload, os.urandom(4))
        else:
            frame = _framing.encode_server_frame(_framing.OPCODE_PING, payload)
        self._guard.writer.write_control(frame, deadline_after(timeout))

    def send_batch(self, messages: Sequence[Message]) -> None:
        protocol = self._ws.ws
        with self._guard.write_lock:
            if self._guard.writer.half_written:
                raise WriteError("a frame is half written: it must be finished first", 0)
            if self._plain_frames and protocol.state is ConnectionState.OPEN:
                write_frames(self._guard.raw, self._encode(messages), None, self.write_timeout, self._guard.writer)
                return
            frames: List[bytes] = []
            try:
                for message in messages:
                    event = TextMessage(data=message) if isinstance(message, str) else WsprotoMessage(data=message)
                    frames.append(protocol.send(event))
            except Exception as exc:  # wsproto refuses data once a close frame went either way
                if frames:
                    write_frames(self._guard.raw, frames, None, self.write_timeout, self._guard.writer)
                if protocol.state in (ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED):
                    # The backend thread took in the peer's close frame before our reader saw it.
                    raise PeerClosingError("the peer has closed", len(frames)) from exc
                raise WriteError(f"cannot send: {exc!r}", len(frames)) from exc
            write_frames(self._guard.raw, frames, None, self.write_timeout, self._guard.writer)

    def send_now(self, message: Message) -> Optional[object]:
        frame = self._encode([message])[0]
        # The state is asked with the write lock held: simple-websocket's thread answers a
        # peer's close frame by itself, under that lock, and no data frame may follow it.
        rest = self._guard.writer.write_now(frame, self._is_open)
        # Nothing written: the message goes to the writer whole, whose send_batch() asks the
        # state again under the lock, rather than as a frame it would have to finish.
        return message if rest is frame else rest

    def _is_open(self) -> bool:
        return bool(self._ws.ws.state is ConnectionState.OPEN)

    def send_rest(self, rest: object) -> None:
        assert isinstance(rest, bytes)
        self._guard.writer.finish(rest)

    def send_close(self, code: int, reason: str, timeout: Optional[float] = None) -> None:
        deadline = deadline_after(timeout)
        protocol = self._ws.ws
        # The lock may be held by a backend reply stuck on a peer that stopped reading.
        wait = -1.0 if deadline is None else (remaining(deadline) or 0.0)
        if not self._guard.write_lock.acquire(timeout=wait):
            raise TransportError("cannot send the close frame in time: another write is stuck")
        try:
            if self._guard.writer.half_written:
                raise TransportError("a frame is half written; the close frame cannot go now")
            # The server side of simple-websocket answers a peer's close frame by itself.
            if protocol.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                return
            # Whole or not at all: wsproto counts the frame as sent once it builds it, so the
            # socket must be able to take it first (a close frame is at most 131 bytes).
            if deadline is not None and not wait_for(self._guard.raw, write=True, timeout=remaining(deadline)):
                raise TransportError("the socket cannot take the close frame in time; nothing was written")
            try:
                data = protocol.send(CloseConnection(code=code, reason=reason))
            except Exception as exc:
                raise TransportError(f"cannot send close frame: {exc!r}") from exc
            write_frames(self._guard.raw, [data], deadline)
        finally:
            self._guard.write_lock.release()

    def shutdown(self) -> None:
        self._shut = True
        self._guard.release()
        shutdown_quietly(self._guard.raw)
        # Also wake our reader directly, in case the backend thread had already ended.
        self._ws.connected = False
        self._ws.event.set()

    def close(self, timeout: Optional[float] = None, *, clean: bool = False) -> None:
        deadline = deadline_after(timeout)
        raw = self._guard.raw
        thread = self._thread
        own_thread = thread is threading.current_thread()
        try:
            self._wait_before_closing(raw, thread, own_thread, deadline, clean)
        except BaseException:
            # Interrupted in a wait (Ctrl-C): close() is called once, and must still close;
            # the backend thread, if still reading, is woken to end.
            self.shutdown()
            raise
        finally:
            if self._wsgi_server == "gunicorn":
                # Gunicorn closes this very socket object once the view returns, and fails on one
                # closed under it (gthread then counts the connection closed twice, and logs an
                # error): end the connection here and leave the descriptor to Gunicorn.
                drain(raw)
                shutdown_quietly(raw)
            else:
                close_without_reset(raw)
            if self._wsgi_server is not None:
                # The server still holds the descriptor (Werkzeug's request file, Gunicorn's
                # socket object): it must not read from it nor write to it.
                _mark_ended(raw)
                self._handed_back = True
        if not thread.is_alive():
            self._release()

    def _wait_before_closing(
        self, raw: socket.socket, thread: threading.Thread, own_thread: bool, deadline: Optional[float], clean: bool
    ) -> None:
        if clean and self._is_client and not own_thread:
            # RFC 6455 7.1.1: the server closes TCP first. The backend thread has normally ended
            # with the close frame; if it is still reading, the server's FIN ends it.
            thread.join(remaining(deadline))
            if not thread.is_alive():
                await_end_of_stream(raw, deadline)
        if thread.is_alive() and not own_thread:
            if clean:
                # Still there after a complete handshake: stop it. A shutdown sends FIN, never RST.
                self.shutdown()
            left = remaining(deadline)
            thread.join(None if left is None else max(left, _WAKE_GRACE))
        if clean and not self._is_client:
            # The server ends TCP first. Under a WSGI server closing our socket object does not
            # release the descriptor (the server's request file holds it), so send FIN
            # explicitly; otherwise the client would wait for it and the WSGI server, reading
            # for a next request, would wait for the client.
            _end_sending(raw)

    def forget(self) -> None:
        # Closing our descriptor only drops this process's reference: no FIN, no shutdown, and
        # for TLS no close_notify. simple-websocket's thread does not exist in the child.
        self._guard.raw.close()
        self._release()

    def backend_threads(self) -> Tuple[threading.Thread, ...]:
        return (self._thread,)

    def _release(self) -> None:
        """Drop what simple-websocket and wsproto hold (a half-received message may be huge)."""
        ws = self._ws
        ws.input_buffer = []
        ws.incoming_message = None
        protocol = ws.ws
        if protocol is not None:
            self._watch.uninstall(protocol)
            ws.ws = None


def _negotiated_extensions(ws: Any) -> List[Any]:
    """The extensions the opening handshake enabled (wsproto keeps them on its frame protocol)."""
    connection = getattr(ws.ws, "connection", None)
    protocol = getattr(connection, "_proto", None)
    if protocol is None:  # not where wsproto kept them: assume one, and let wsproto frame
        return [None]
    return list(protocol.extensions)


def _without_nagle(sock: socket.socket) -> None:
    """Send each frame at once. WSGI servers leave Nagle's algorithm on, which holds a small
    frame back until the previous one is acknowledged: with delayed acknowledgements, 40 ms
    of latency on a chat's small messages."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # the client is gone already; the handshake finds out


def _read_ahead(stream: Any, sock: socket.socket) -> bytes:
    """What Werkzeug's request file read past the upgrade request, taken out of it.

    Werkzeug parses the request through a buffered file on the socket, which may hold bytes the
    client sent right after the request (a client must wait for the 101, but a hostile one need
    not). Left there, the WebSocket would never see them, and Werkzeug would parse them as a
    new request once the view ends. ``peek()`` returns what the buffer holds; when it holds
    nothing it makes one read, non-blocking here, which finds nothing or what the client has
    sent so far (taken as well: it is as much the WebSocket's).
    """
    if not isinstance(stream, io.BufferedReader) or not isinstance(stream.raw, socket.SocketIO):
        return b""
    try:
        if stream.raw.fileno() != sock.fileno():
            return b""
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            ahead = stream.peek()
        except OSError:  # TLS: SSLWantReadError, nothing buffered and nothing to read
            ahead = b""
        finally:
            sock.settimeout(timeout)
        return stream.read(len(ahead)) if ahead else b""
    except (OSError, ValueError):  # closed: the handshake will fail on it
        return b""


class _Ended:
    """What a socket becomes once its WebSocket has ended: end of stream to readers, no writes.

    Mixed into the socket's own class by :func:`_mark_ended`; the descriptor is untouched and
    still closed by its owner (the WSGI server), but nothing can read the client's bytes from it
    any more, nor write an HTTP response after the WebSocket. A write fails as a broken pipe,
    which the servers take for a client gone (Gunicorn logs any other socket error at ERROR).
    """

    __slots__ = ()

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return b""

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        return 0

    def send(self, data: Any, flags: int = 0) -> int:
        raise BrokenPipeError(errno.EPIPE, "the WebSocket on this connection has ended")

    def sendall(self, data: Any, flags: int = 0) -> None:
        raise BrokenPipeError(errno.EPIPE, "the WebSocket on this connection has ended")


_ENDED_CLASSES: Dict[type, type] = {}


def _mark_ended(sock: socket.socket) -> None:
    """Make ``sock`` read as ended and refuse writes, whoever reads or writes it next.

    Werkzeug reads the next request from the connection when the view raises instead of
    returning (``ConnectionError``, which its dropped-connection path swallows): bytes the
    client sent after its close frame would reach the WSGI app as a new request. A socket read
    ending there ends Werkzeug's loop for the connection.
    """
    cls = type(sock)
    if not issubclass(cls, socket.socket):
        return
    ended = _ENDED_CLASSES.get(cls)
    if ended is None:
        ended = _ENDED_CLASSES.setdefault(cls, type(f"Ended{cls.__name__}", (_Ended, cls), {"__slots__": ()}))
    try:
        sock.__class__ = ended
    except TypeError:  # pragma: no cover - a socket class whose layout a subclass cannot share
        pass


def _frame_bytes_to_come(protocol: Any) -> int:
    """Payload bytes of the frame being received that wsproto has not handed over yet.

    Read from wsproto's frame decoder (private attributes); 0 if a version lays them out
    otherwise, and the limit is then enforced piece by piece as the bytes arrive.
    """
    try:
        decoder = protocol.connection._proto._frame_decoder
        header = decoder.header
        if header is None:
            return 0
        return max(0, int(header.payload_len) - int(decoder.payload_consumed))
    except (AttributeError, TypeError, ValueError):
        return 0


def _size_in_bytes(data: Union[str, bytes, bytearray]) -> int:
    """The size on the wire of a piece of a message: wsproto hands text over decoded."""
    if isinstance(data, str) and not data.isascii():
        return len(data.encode("utf-8"))
    return len(data)


def _end_sending(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _translate(
    request: _opening.ClientRequest, exc: BaseException, answer: bytes, deadline: Optional[float]
) -> BaseException:
    """A failure of the opening handshake as one of our documented exceptions."""
    if isinstance(exc, ConnectError):
        return exc
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return _opening.timeout_error(request, deadline)
    if isinstance(exc, Exception):
        # wsproto's and h11's errors, encoding errors, simple-websocket's own: the answer was
        # not a valid upgrade, or the connection failed under it; the original stays chained.
        return _opening.refusal(request, answer, exc)
    return exc  # KeyboardInterrupt and the like: not ours to translate
