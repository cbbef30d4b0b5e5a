"""Scripted peers for the conformance suite.

Every peer offers the same controls, whatever is underneath: ``send``, ``close`` (send a close
frame), ``reset`` (TCP RST), ``fin`` (half-close without a close frame), ``stop_reading``,
``send_garbage`` (bytes that are not a valid frame), ``silent`` (do not answer close frames),
and it records what it received. ``MemoryPeer`` drives the other end of a memory pair;
``RawPeer`` speaks WebSocket with wsproto over a real loopback socket, as server or as client,
so that it can also misbehave in ways a well-behaved library would refuse to.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import List, Optional, Tuple, Union

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason

from duplexthreads.exceptions import TransportError
from duplexthreads.transports import CloseFrame, MemoryTransport

from .timing import UNIT

Msg = Union[str, bytes]


class PeerBase:
    """Bookkeeping shared by the peers: what arrived, under one condition variable."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.messages: List[Msg] = []
        self.close_frames: List[Tuple[int, str]] = []
        self.ended = False  # the peer's reading has stopped for good
        #: When True the peer does not answer our close frames (a silent peer).
        self.silent = False

    def _record(self, message: Msg) -> None:
        with self.cond:
            self.messages.append(message)
            self.cond.notify_all()

    def _record_close(self, code: int, reason: str) -> None:
        with self.cond:
            self.close_frames.append((code, reason))
            self.cond.notify_all()

    def _record_end(self) -> None:
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def wait_messages(self, count: int, timeout: float = 10 * UNIT) -> List[Msg]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.messages) >= count or self.ended, timeout):
                raise TimeoutError(f"peer got {len(self.messages)} of {count} messages")
            return list(self.messages)

    def wait_close_frame(self, timeout: float = 10 * UNIT) -> Tuple[int, str]:
        with self.cond:
            if not self.cond.wait_for(lambda: bool(self.close_frames) or self.ended, timeout):
                raise TimeoutError("peer got no close frame")
            if not self.close_frames:
                raise AssertionError("peer's connection ended without a close frame")
            return self.close_frames[0]

    def wait_ended(self, timeout: float = 10 * UNIT) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.ended, timeout):
                raise TimeoutError("peer's connection did not end")


class MemoryPeer(PeerBase):
    """The far end of a memory pair, read by a thread of its own."""

    def __init__(self, end: MemoryTransport) -> None:
        super().__init__()
        self.end = end
        self.thread = threading.Thread(target=self._read, name="peer-memory", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while True:
                try:
                    item = self.end.recv()
                except TransportError:
                    return
                if isinstance(item, CloseFrame):
                    self._record_close(item.code, item.reason)
                    if not self.silent:
                        try:
                            self.end.send_close(item.code, item.reason)
                        except TransportError:
                            pass
                    return
                self._record(item)
        finally:
            self._record_end()

    def send(self, message: Msg) -> None:
        self.end.send_batch([message])

    def close(self, code: Optional[int] = 1000, reason: str = "") -> None:
        """Send a close frame; ``None`` sends one without a status code (reported as 1005)."""
        self.end.send_close(1005 if code is None else code, reason)

    def reset(self) -> None:
        self.end.reset()

    def fin(self) -> None:
        self.end.fin()

    def stop_reading(self) -> None:
        self.end.stop_reading()

    def stop(self) -> None:
        self.end.shutdown()
        self.thread.join(10 * UNIT)
        assert not self.thread.is_alive()


class RawPeer(PeerBase):
    """A WebSocket endpoint on a loopback socket, built on wsproto, with a reading thread."""

    def __init__(self, sock: socket.socket, role: ConnectionType) -> None:
        super().__init__()
        self.sock = sock
        self.ws = WSConnection(role)
        self.role = role
        # Serialises writes from the test thread and the reading thread (pongs, close replies).
        self.write_lock = threading.Lock()
        # Cleared by stop_reading(): the reading thread then waits here instead of in recv().
        self.may_read = threading.Event()
        self.may_read.set()
        self._stopping = False
        self._pending: Optional[bytearray] = None
        self._pending_text = False
        self.thread: Optional[threading.Thread] = None

    # -- handshakes ---------------------------------------------------------------------------

    def serve_handshake(self) -> None:
        """Server role: read the upgrade request and accept it."""
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("client went away during the handshake")
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, Request):
                    self._write(self.ws.send(AcceptConnection()))
                    self._start()
                    return

    def client_handshake(self, host: str = "127.0.0.1", target: str = "/") -> None:
        """Client role: send the upgrade request and wait for the 101."""
        self._write(self.ws.send(Request(host=host, target=target)))
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server went away during the handshake")
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    self._start()
                    self._handle_events()
                    return
                raise ConnectionError(f"handshake refused: {event!r}")

    def _start(self) -> None:
        self.thread = threading.Thread(target=self._read, name="peer-raw", daemon=True)
        self.thread.start()

    # -- reading ------------------------------------------------------------------------------

    def _read(self) -> None:
        try:
            while True:
                self.may_read.wait()
                if self._stopping:
                    return
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                self.ws.receive_data(data)
                if not self._handle_events():
                    return
        finally:
            self._record_end()

    def _handle_events(self) -> bool:
        for event in self.ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self._collect(event)
            elif isinstance(event, CloseConnection):
                self._record_close(event.code, event.reason or "")
                if not self.silent and self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self._write(self.ws.send(event.response()))
                return False
            elif isinstance(event, Ping):
                self._write(self.ws.send(event.response()))
        return True

    def _collect(self, event: Message) -> None:  # type: ignore[type-arg]
        if self._pending is None:
            self._pending = bytearray()
            self._pending_text = isinstance(event, TextMessage)
        data = event.data
        self._pending += data.encode("utf-8") if isinstance(data, str) else data
        if event.message_finished:
            whole = bytes(self._pending)
            self._pending = None
            self._record(whole.decode("utf-8") if self._pending_text else whole)

    # -- controls -----------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        with self.write_lock:
            self.sock.sendall(data)

    def send(self, message: Msg) -> None:
        event = TextMessage(data=message) if isinstance(message, str) else Message(data=message)
        with self.write_lock:
            self.sock.sendall(self.ws.send(event))

    def close(self, code: Optional[int] = 1000, reason: str = "") -> None:
        """Send a close frame; ``None`` sends one without a status code (reported as 1005)."""
        event = CloseConnection(code=CloseReason.NO_STATUS_RCVD) if code is None else CloseConnection(code, reason)
        with self.write_lock:
            self.sock.sendall(self.ws.send(event))

    def send_garbage(self) -> None:
        """A frame with the reserved opcode 0x3: every conforming endpoint must fail on it."""
        masked = self.role is ConnectionType.CLIENT
        frame = b"\x83" + (b"\x80" + b"\x00\x00\x00\x00" if masked else b"\x00")
        with self.write_lock:
            self.sock.sendall(frame)

    def fin(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def stop_reading(self) -> None:
        self.may_read.clear()
        # The thread may be inside recv() right now; that one read is harmless.

    def reset(self) -> None:
        """Close with SO_LINGER 0, so the kernel sends RST instead of FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._stop_thread()
        self.sock.close()

    def stop(self) -> None:
        self._stop_thread()
        self.sock.close()

    def _stop_thread(self) -> None:
        self._stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RD)  # wakes recv() on Linux, sends nothing
        except OSError:
            pass
        self.may_read.set()
        if self.thread is not None:
            self.thread.join(10 * UNIT)
            assert not self.thread.is_alive(), "peer thread did not stop"
