"""One connection of the scripted peer: its socket, its wsproto state and its reading thread.

The same code runs in the test's process (``isolated=False``) and in the child process; the
child only forwards calls to it. One thread per connection reads (in the server role it first
answers the opening handshake: ``ServerEndpoint``). Everything it sees goes to the connection's :class:`Record`;
pings and close frames are answered from that thread unless the connection is silent. Controls
write from the caller's thread. One lock serialises every write and every use of wsproto's
state, so a frame is never cut into by another.

Every wait has a deadline, or is woken by a control: a blocked ``recv()`` by ``shutdown()``,
the wait of a stopped reader or of a trickled handshake by the control condition. A blocked
``sendall()`` gives up after ``timeout`` (``SO_SNDTIMEO``), so a client that stops reading
cannot hang a control or the teardown.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from typing import Any, Callable, List, Optional, Sequence, Union

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.utilities import LocalProtocolError

from . import _handshake as hs
from ._behaviour import Behaviour, check_close, check_message, close_event, message_event
from ._record import Record
from ._wire import OP_BINARY, OP_TEXT, fragments, violation_bytes

try:
    import fcntl
    import termios
except ImportError:  # not POSIX: unread_at_close stays None
    fcntl = termios = None  # type: ignore[assignment]

# What the reading thread does after a batch of events.
_KEEP_READING, _DRAIN, _DRAIN_SILENTLY, _LINGER = "keep reading", "drain", "drain silently", "linger"


def readable(sock: Union[socket.socket, int], timeout: Optional[float]) -> bool:
    """Whether ``sock`` (a socket or a pipe's descriptor) has something to read (data, end of
    stream, an error) within ``timeout`` seconds (None: no limit)."""
    if hasattr(select, "poll"):  # no FD_SETSIZE limit, and no descriptor of its own as epoll has
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000) + 1)))
    return bool(select.select([sock], [], [], timeout)[0])


def unread_bytes(sock: socket.socket) -> Optional[int]:
    """Bytes received on ``sock`` and not read yet (None where FIONREAD is not available)."""
    if fcntl is None:
        return None
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0])
    except OSError:
        return None


class Endpoint:
    """One scripted WebSocket connection, server or client role, and its reading thread."""

    #: The controls a test may call; the process mode forwards these names and no others.
    CONTROLS = frozenset(
        {
            "send",
            "send_fragmented",
            "send_raw",
            "ping",
            "close",
            "reset",
            "drop",
            "stop_reading",
            "resume_reading",
            "go_silent",
            "violate",
        }
    )
    #: The calls answered by the connection's record.
    RECORD_CALLS = frozenset({"observe", "wait_messages", "wait_close_frame", "wait_pongs", "wait_ended"})

    def __init__(self, sock: socket.socket, *, client: bool, behaviour: Behaviour, name: str, index: int) -> None:
        self.index = index
        self.client = client
        # Who ends TCP first is recorded by role, the other side's end of it included.
        self._role, self._other_role = ("client", "server") if client else ("server", "client")
        self.record = Record(behaviour.timeout)
        self._sock = sock
        self._behaviour = behaviour
        self._ws: Optional[Connection] = None  # set once the opening handshake succeeded
        self._trailing = b""  # bytes that came after the handshake's head
        self._write_lock = threading.Lock()  # every write, every use of self._ws, the final close
        self._socket_closed = False
        self._control = threading.Condition()  # wakes the reader: reading resumed, or stop
        self._may_read = not behaviour.stop_reading
        self._silent = behaviour.silent
        self._stopping = False
        self._reset_on_close = False
        self._fragments: List[Any] = []  # the open message's data, frame by frame
        self._messages_seen = 0  # whole messages, kept or dropped
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        seconds = int(behaviour.timeout)
        try:
            timeval = struct.pack("ll", seconds, int((behaviour.timeout - seconds) * 1e6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        except (OSError, struct.error):
            pass  # the platform's timeval differs: sends are unbounded there
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @classmethod
    def opened(cls, sock: socket.socket, handshake: hs.ClientHandshake, behaviour: Behaviour, *, name: str) -> Endpoint:
        """A client-role connection whose opening handshake ``handshake`` already completed."""
        endpoint = cls(sock, client=True, behaviour=behaviour, name=name, index=0)
        endpoint._ws = Connection(ConnectionType.CLIENT)
        endpoint._trailing = handshake.trailing
        endpoint.record.set(
            request_target=handshake.target,
            request_headers=handshake.request_headers,
            response_status=101,
            response_headers=handshake.response.headers,
            subprotocol=handshake.subprotocol,
            handshake_done=True,
        )
        endpoint.start()
        return endpoint

    def call(self, operation: str, args: Sequence[Any]) -> Any:
        """Run a control or a record call by name (what both modes' proxies come through)."""
        if operation in self.CONTROLS:
            return getattr(self, operation)(*args)
        if operation in self.RECORD_CALLS:
            return getattr(self.record, operation)(*args)
        raise ValueError(f"no such operation on a scripted connection: {operation!r}")

    # -- the reading thread ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def _open(self) -> bool:
        """Bring the WebSocket connection up, in the reading thread; True if it is open.

        A client's opening handshake is done before its reading thread starts; a server's is
        answered here (see ``ServerEndpoint``).
        """
        return self._ws is not None

    def _run(self) -> None:
        try:
            if self._open():
                self._read()
        finally:
            self._close_socket()

    def _read(self) -> None:
        """Read and handle frames until the stream ends, the close handshake is over, or stop."""
        data: Optional[bytes] = self._trailing
        while True:
            with self._control:
                self._control.wait_for(lambda: self._may_read or self._stopping)
            if self._stopping:
                self._note_stream_end(None)
                return
            if not data:
                data = self._recv()
                if data is None:
                    return
            with self._write_lock:
                assert self._ws is not None
                self._ws.receive_data(data)
                after = self._handle_events(self._ws)
            data = None
            if after == _DRAIN:
                self._drain(time.monotonic() + self._behaviour.timeout)
                return
            if after == _DRAIN_SILENTLY:
                self._drain(None)
                return
            if after == _LINGER:
                self._linger(self._behaviour.linger_after_close or 0.0)
                return

    def _handle_events(self, ws: Connection) -> str:
        """Record and answer what arrived (write lock held); say what the reader does next."""
        state = ws.state
        for event in ws.events():
            if isinstance(event, CloseConnection):
                if ws.state is state:  # wsproto reports a frame it could not parse as a close event
                    return self._fail(ws, int(event.code), event.reason or "")
                self.record.append(
                    "close_frames", (None if event.code == 1005 else int(event.code), event.reason or "")
                )
                if self._silent:
                    return _DRAIN_SILENTLY
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    self._send_quietly(ws.send(event.response()))
                if self.client:
                    return _DRAIN  # and wait for the server to end TCP first
                if self._behaviour.linger_after_close is not None:
                    return _LINGER
                self._shut_wr()  # the close handshake is over: the server ends TCP first (RFC 6455, 7.1.1)
                return _DRAIN
            if isinstance(event, (TextMessage, BytesMessage)):
                self._collect(ws, event)
            elif isinstance(event, Ping) and not self._silent and ws.state is ConnectionState.OPEN:
                self._send_quietly(ws.send(event.response()))
            elif isinstance(event, Pong):
                self.record.append("pongs", bytes(event.payload))
            state = ws.state
        return _KEEP_READING

    def _fail(self, ws: Connection, code: int, reason: str) -> str:
        """The other side broke the protocol: say so in a close frame and end the connection."""
        self.record.append("protocol_errors", (code, reason))
        if ws.state is ConnectionState.OPEN:
            self._send_quietly(ws.send(CloseConnection(code=code, reason=reason[:100])))
        self._shut_wr()
        return _DRAIN

    def _collect(self, ws: Connection, event: Any) -> None:
        self._fragments.append(bytes(event.data) if isinstance(event, BytesMessage) else event.data)
        if not event.message_finished:
            return
        whole = ("" if isinstance(event, TextMessage) else b"").join(self._fragments)
        self._fragments = []
        self._messages_seen += 1
        every = self._behaviour.drop_every
        dropped = every is not None and self._messages_seen % every == 0
        self.record.append("dropped" if dropped else "received", whole)
        if self._behaviour.echo and not dropped and ws.state is ConnectionState.OPEN:
            self._send_quietly(ws.send(message_event(whole)))

    def _recv(self) -> Optional[bytes]:
        """The next bytes, or None once the stream is over (and ``ended_by`` says how)."""
        try:
            data = self._sock.recv(65536)
        except OSError as exc:
            self._note_stream_end(exc)
            return None
        if self._stopping or not data:
            self._note_stream_end(None)
            return None
        return data

    def _note_stream_end(self, error: Optional[BaseException]) -> None:
        if self._stopping:
            how = "peer"
        elif isinstance(error, ConnectionResetError):
            how = "reset"
        elif error is None or (isinstance(error, ConnectionError) and not isinstance(error, ConnectionAbortedError)):
            how = "eof"  # recv() returned b"" (read_head turns that into a ConnectionError)
        else:
            how = "peer"  # our own deadline ran out, or the socket failed on this side
        self.record.set_if_unset("ended_by", how)
        # Kept only if this side had not ended TCP already: then the other side's end came second.
        self.record.set_if_unset("first_to_end_tcp", {"eof": self._other_role, "reset": "reset"}.get(how, self._role))

    def _drain(self, deadline: Optional[float]) -> None:
        """Read and discard until the client ends TCP, ``deadline`` passes (None: no limit) or stop."""
        while True:
            if deadline is not None and not readable(self._sock, deadline - time.monotonic()):
                self.record.set_if_unset("ended_by", "peer")  # the client never ended TCP
                return
            if self._recv() is None:
                return

    def _linger(self, seconds: float) -> None:
        """After the close handshake, leave TCP to the client for ``seconds``: read (and discard)
        until it ends TCP, or end it once they have passed and drain as after any close."""
        deadline = time.monotonic() + seconds
        while readable(self._sock, max(0.0, deadline - time.monotonic())):  # stop()'s shutdown wakes it
            if self._recv() is None:
                return  # the client ended TCP first (or stop): first_to_end_tcp says which
            if time.monotonic() >= deadline:
                break  # the client is still sending when the time is up
        self._shut_wr()
        self._drain(time.monotonic() + self._behaviour.timeout)

    def _close_socket(self) -> None:
        with self._write_lock:  # after any write in progress: a control's sendall is bounded
            unread = unread_bytes(self._sock)
            if self._reset_on_close:  # SO_LINGER 0: close() sends RST, not FIN
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.record.set_if_unset("first_to_end_tcp", self._role)
            self._socket_closed = True
            self._sock.close()
        self.record.set_if_unset("ended_by", "peer")
        self.record.set(unread_at_close=unread, ended=True)

    def _send_quietly(self, data: bytes) -> None:
        """A write of the reading thread: if the client is gone, the reading side will tell."""
        if data:
            try:
                self._sock.sendall(data)
            except OSError:
                pass

    def _shutdown_quietly(self, how: int) -> None:
        try:
            self._sock.shutdown(how)
        except OSError:
            pass

    def _shut_wr(self) -> None:
        """End this side of TCP with FIN, and read on. Recorded first, so that the other side's
        answering FIN, which the reading thread may see at once, cannot be taken for the first."""
        self.record.set_if_unset("first_to_end_tcp", self._role)
        self._shutdown_quietly(socket.SHUT_WR)

    # -- controls (the caller's thread) ------------------------------------------------------------

    def _write(self, build: Callable[[Connection], bytes], *, needs_websocket: bool = True) -> None:
        with self._write_lock:
            if self._ws is None and needs_websocket:
                status = self.record.observe("response_status")
                scripted = self._behaviour.handshake_answer is not None
                raise RuntimeError(
                    "no WebSocket connection: the opening handshake ended with "
                    + (str(status) if status is not None else "the handshake_answer" if scripted else "no answer")
                )
            if self._socket_closed:
                raise ConnectionError(f"the connection has ended ({self.record.observe('ended_by')})")
            was_closed = self._ws is not None and self._ws.state is ConnectionState.CLOSED
            try:
                data = build(self._ws)  # type: ignore[arg-type]
            except LocalProtocolError as exc:
                raise RuntimeError(f"wsproto refuses: {exc}") from None
            try:
                self._sock.sendall(data)
            except BlockingIOError:  # SO_SNDTIMEO ran out
                raise TimeoutError(
                    f"the other side read none of the last bytes for {self._behaviour.timeout:g} s"
                ) from None
            closed_now = self._ws is not None and self._ws.state is ConnectionState.CLOSED and not was_closed
            if closed_now and not self.client:
                # A late answer to a close frame (the connection went silent) ends the handshake.
                # TCP ends now even with linger_after_close: the reading thread, in a drain without
                # a deadline, could not end it later.
                self._shut_wr()

    def _check_open(self, ws: Connection) -> None:
        if ws.state is not ConnectionState.OPEN:
            raise RuntimeError(f"cannot start a message in state {ws.state.name}; send_raw() sends anything")

    def send(self, message: Any) -> None:
        check_message(message)
        self._write(lambda ws: ws.send(message_event(message)))

    def send_fragmented(self, message: Any, fragment_size: int) -> None:
        check_message(message)
        text = isinstance(message, str)
        payload = message.encode("utf-8") if text else bytes(message)

        def build(ws: Connection) -> bytes:
            self._check_open(ws)
            return fragments(OP_TEXT if text else OP_BINARY, payload, fragment_size, mask=self.client)

        self._write(build)

    def send_raw(self, data: bytes) -> None:
        self._write(lambda ws: bytes(data), needs_websocket=False)

    def ping(self, payload: bytes = b"") -> None:
        self._write(lambda ws: ws.send(Ping(payload=bytes(payload))))

    def close(self, code: Optional[int] = 1000, reason: str = "") -> None:
        check_close(code, reason)
        event = close_event(code, reason)
        self._write(lambda ws: ws.send(event))

    def violate(self, name: str) -> None:
        data = violation_bytes(name, client=self.client)
        self._write(lambda ws: data)

    def reset(self) -> None:
        """End TCP with RST: stop the reader, then close with ``SO_LINGER`` 0."""
        self._stop(reset=True)
        if not self.join(time.monotonic() + self._behaviour.timeout):
            raise TimeoutError(f"the reading thread did not stop within {self._behaviour.timeout:g} s")

    def drop(self) -> None:
        """End TCP with FIN and no close frame; keep reading until the client ends its side."""
        with self._write_lock:
            if self._socket_closed:
                raise ConnectionError(f"the connection has ended ({self.record.observe('ended_by')})")
            self.record.set_if_unset("ended_by", "peer")
            self.record.set_if_unset("first_to_end_tcp", self._role)
            self._sock.shutdown(socket.SHUT_WR)

    def stop_reading(self) -> None:
        with self._control:
            self._may_read = False

    def resume_reading(self) -> None:
        with self._control:
            self._may_read = True
            self._control.notify_all()

    def go_silent(self) -> None:
        with self._write_lock:  # not between the reader's look at the flag and its answer
            self._silent = True

    # -- teardown (the peer's close) --------------------------------------------------------------

    def _stop(self, *, reset: bool) -> None:
        if self.record.observe("ended"):
            if reset:
                raise ConnectionError(f"the connection has ended ({self.record.observe('ended_by')})")
            return
        with self._control:  # first, so a trickled handshake holding the write lock lets go
            self._stopping = True
            self._reset_on_close = self._reset_on_close or reset
            self._control.notify_all()
        self.record.set_if_unset("ended_by", "peer")
        self.record.set_if_unset("first_to_end_tcp", self._role)  # FIN now, or RST at the close
        # SHUT_RD wakes a blocked recv() and sends nothing; SHUT_RDWR also wakes a blocked send,
        # but sends FIN, which must not precede a reset's RST.
        self._shutdown_quietly(socket.SHUT_RD if reset else socket.SHUT_RDWR)

    def stop(self) -> None:
        """Begin the end of this connection: no close frame; FIN, then RST if unread data remains."""
        self._stop(reset=False)

    def release_copy(self) -> None:
        """In a process forked off this one's owner: close this process's copy of the socket only
        (no shutdown, no option set on it, no lock: the owner's connection must go on as it was)."""
        self._sock.close()

    def join(self, deadline: float) -> bool:
        """Wait for the reading thread until ``deadline`` (``time.monotonic``); True if it ended."""
        if self._thread.ident is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()
