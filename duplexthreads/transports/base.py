"""The transport interface: the only thing the owner protocol knows about a backend.

A transport is one open WebSocket connection with blocking calls. The reader thread calls
``recv``, the writer thread calls ``send_batch`` and ``send_close``, and the owner calls
``shutdown`` (from any thread, to wake both) and finally ``close``. A transport translates its
backend's exceptions into :class:`~duplexthreads.TransportError` (chained with ``from``), so the
session never imports a backend.
"""

from __future__ import annotations

import itertools
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional, Sequence, Tuple, Union

from ..exceptions import TransportError, WriteTimeout
from ..report import Message

__all__ = [
    "CloseFrame",
    "PeerClosingError",
    "Transport",
    "TimeoutWriteError",
    "WriteError",
    "WriteTimeoutError",
    "new_connection_id",
    "thread_name",
]

# Connection ids are process-wide so that thread names never collide (itertools.count's
# __next__ is atomic under the GIL).
_connection_ids = itertools.count(1)


def new_connection_id() -> int:
    """A process-wide unique id, used in thread names."""
    return next(_connection_ids)


def thread_name(connection_id: int, role: str) -> str:
    """The name of every thread started for a connection, ours and the backend's.

    A leak report then says whose thread it is: ``duplexthreads-<connection id>-<role>``.
    """
    return f"duplexthreads-{connection_id}-{role}"


@dataclass(frozen=True)
class CloseFrame:
    """A close frame received from the peer."""

    code: int
    reason: str = ""


class WriteError(TransportError):
    """Writing failed; ``written`` messages of the batch had been written completely."""

    def __init__(self, message: str, written: int) -> None:
        super().__init__(message)
        self.written = written


class TimeoutWriteError(WriteError):
    """A write bounded by its own deadline (a close frame, a ping) could not go in time.

    Nothing of it was written: such writes go whole or not at all.
    """


class WriteTimeoutError(WriteError, WriteTimeout):
    """A write made no progress for the transport's ``write_timeout``; ``written`` as for WriteError."""


class PeerClosingError(WriteError):
    """Nothing more can be written because the peer's close frame has arrived.

    Not a failure: the reader is about to report the close. The writer stops and leaves the
    ending to it, so the connection ends as "peer closed", not as a write error.
    """


class Transport(ABC):
    """One open WebSocket connection, driven by blocking calls from the session's threads."""

    #: Short name of the backend, as accepted by ``connect(backend=...)``.
    backend: ClassVar[str]

    def __init__(self, connection_id: Optional[int] = None) -> None:
        self.connection_id: int = new_connection_id() if connection_id is None else connection_id
        #: ``time.monotonic()`` when bytes last arrived from the peer (any frame, or part of
        #: one): the heartbeat takes it as proof of life. Written by the reading thread only;
        #: read it through :meth:`last_sign_of_life`.
        self.heard_at: float = time.monotonic()
        #: Called in the reading thread with the payload of each pong the peer sends.
        self.on_pong: Optional[Callable[[bytes], None]] = None
        #: Seconds a write may go without progress before it fails with
        #: :class:`WriteTimeoutError` (None: no limit); see :meth:`set_write_timeout`.
        self.write_timeout: Optional[float] = None

    @property
    def subprotocol(self) -> Optional[str]:
        """The subprotocol agreed in the handshake, if any."""
        return None

    @property
    @abstractmethod
    def closed(self) -> bool:
        """True once ``close()`` has released the connection's resources."""

    @abstractmethod
    def recv(self) -> Union[Message, CloseFrame]:
        """Block until a whole message or the peer's close frame arrives.

        Called only from the reader thread. Raises :class:`TransportError` on a reset, on end of
        stream without a close frame, and once ``shutdown`` was called; on a protocol violation
        it raises :class:`~duplexthreads.ProtocolError` with the close code to fail the
        connection with, having delivered nothing of the offending frame.
        """

    @abstractmethod
    def send_batch(self, messages: Sequence[Message]) -> None:
        """Write every message, in order, as one or few writes.

        Called only from the writer thread (or the owner once the writer has exited). Raises
        :class:`WriteError` saying how many messages were written completely once any byte
        may have been written; any other exception means nothing of the batch was written.
        """

    #: Whether :meth:`send_now` may be used: ``send()`` then writes in the caller's thread when
    #: the writer is idle, sparing a thread hand-off. Transports that cannot write without
    #: blocking (or do not want to) leave it False and everything goes through the writer.
    direct_writes: bool = False

    def send_now(self, message: Message) -> Optional[object]:
        """Write ``message`` as one frame without blocking, from a thread holding the writer's role.

        Returns None once the whole frame is written; otherwise what is left of it (the whole
        frame if nothing could be written), for :meth:`send_rest` to finish. Never raises for
        a failed socket: it returns what is left, and the writer meets the failure itself.
        """
        raise NotImplementedError(f"{type(self).__name__} does not write directly")

    def send_rest(self, rest: object) -> None:
        """Finish a frame :meth:`send_now` began, blocking like :meth:`send_batch`.

        Called only from the writer thread; raises :class:`WriteError` (``written`` 0) if the
        frame could not be completed.
        """
        raise NotImplementedError(f"{type(self).__name__} does not write directly")

    @abstractmethod
    def send_close(self, code: int, reason: str, timeout: Optional[float] = None) -> None:
        """Send our close frame (or the reply to the peer's). Raises :class:`TransportError`.

        ``timeout`` bounds the write: the owner sends with one, since nothing could wake it
        from a write to a peer that stopped reading (``0``: only if the socket can take the
        frame now). With a timeout the frame is written whole or not at all: check that the
        socket can take it before writing the first byte (a close frame is at most 131 bytes);
        when it cannot in time, raise :class:`TransportError` having written nothing. Only a
        failing socket may leave part of a frame written.
        """

    def last_sign_of_life(self) -> float:
        """``time.monotonic()`` when the peer last showed it is there.

        Any bytes read from it count, and so does room freed in a full send buffer: a write
        that had to wait and then went on means the peer acknowledged what it had been sent.
        A write into a buffer with room proves nothing (a dead peer's kernel buffer takes
        writes too), so it does not count.
        """
        return self.heard_at

    def set_write_timeout(self, timeout: Optional[float]) -> None:
        """Bound every blocking write from now on: ``timeout`` seconds without progress fail it.

        Called before the threads start. A transport whose writes wait somewhere (a socket's
        send buffer, the memory transport's stalled peer) gives up there, with
        :class:`WriteTimeoutError`, having counted what it wrote completely.
        """
        self.write_timeout = timeout

    def send_ping(self, payload: bytes, timeout: Optional[float]) -> None:
        """Send a ping carrying ``payload`` (at most 125 bytes), from any thread.

        ``timeout`` bounds the write like :meth:`send_close`'s: the frame goes whole or not at
        all, and :class:`TransportError` says it could not go in time. A ping waits for a frame
        half written by a direct write rather than land inside it.
        """
        raise TransportError(f"{type(self).__name__} cannot send pings")

    @abstractmethod
    def shutdown(self) -> None:
        """Wake every thread blocked in ``recv`` or a write; they then raise.

        Safe from any thread, idempotent, never raises. On a socket this is
        ``shutdown(SHUT_RDWR)``: ``close()`` would not wake a blocked ``recv`` on Linux.
        """

    @abstractmethod
    def close(self, timeout: Optional[float] = None, *, clean: bool = False) -> None:
        """Release the socket and any backend thread, waiting for them up to ``timeout``.

        Called exactly once by the owner after the workers have exited. ``clean`` means the
        close handshake completed and ``shutdown`` was not called: a client then lets the
        server close TCP first (RFC 6455, 7.1.1), within ``timeout``, and no transport may
        reset the connection (closing a socket with unread bytes sends RST: read them first).
        """

    def forget(self) -> None:
        """Release this process's descriptor without touching the connection.

        Called in a child process on a transport inherited through ``fork()``: the
        connection belongs to the parent, so nothing may be sent or shut down. Transports
        without a descriptor (the memory transport) have nothing to release.
        """
        return None

    def backend_threads(self) -> Tuple[threading.Thread, ...]:
        """Threads the backend itself runs for this connection (they must be gone after close)."""
        return ()
