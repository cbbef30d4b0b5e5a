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
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence, Tuple, Union

from ..exceptions import TransportError
from ..report import Message

__all__ = ["CloseFrame", "PeerClosingError", "Transport", "WriteError", "check_close_code", "new_connection_id"]

# Connection ids are process-wide so that thread names never collide (itertools.count's
# __next__ is atomic under the GIL).
_connection_ids = itertools.count(1)


def new_connection_id() -> int:
    """A process-wide unique id, used in thread names."""
    return next(_connection_ids)


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


class PeerClosingError(WriteError):
    """Nothing more can be written because the peer's close frame has arrived.

    Not a failure: the reader is about to report the close. The writer stops and leaves the
    ending to it, so the connection ends as "peer closed", not as a write error.
    """


def check_close_code(code: int) -> None:
    """Raise ``ValueError`` unless ``code`` may be sent in a close frame (RFC 6455, 7.4)."""
    if not isinstance(code, int) or isinstance(code, bool):
        raise TypeError(f"close code must be an int, not {type(code).__name__}")
    if code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014):
        return
    if 3000 <= code <= 4999:
        return
    raise ValueError(f"close code {code} may not be sent; use 1000-1014 (not 1004-1006) or 3000-4999")


class Transport(ABC):
    """One open WebSocket connection, driven by blocking calls from the session's threads."""

    #: Short name of the backend, as accepted by ``connect(backend=...)``.
    backend: ClassVar[str]

    def __init__(self, connection_id: Optional[int] = None) -> None:
        self.connection_id: int = new_connection_id() if connection_id is None else connection_id

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
        stream without a close frame, on a protocol violation, and once ``shutdown`` was called.
        """

    @abstractmethod
    def send_batch(self, messages: Sequence[Message]) -> None:
        """Write every message, in order, as one or few writes.

        Called only from the writer thread (or the owner once the writer has exited). Raises
        :class:`WriteError` saying how many messages were written completely.
        """

    @abstractmethod
    def send_close(self, code: int, reason: str) -> None:
        """Send our close frame (or the reply to the peer's). Raises :class:`TransportError`."""

    @abstractmethod
    def shutdown(self) -> None:
        """Wake every thread blocked in ``recv`` or a write; they then raise.

        Safe from any thread, idempotent, never raises. On a socket this is
        ``shutdown(SHUT_RDWR)``: ``close()`` would not wake a blocked ``recv`` on Linux.
        """

    @abstractmethod
    def close(self, timeout: Optional[float] = None) -> None:
        """Release the socket and any backend thread, waiting for them up to ``timeout``.

        Called exactly once by the owner after ``shutdown`` and after the workers have exited.
        """

    def backend_threads(self) -> Tuple[threading.Thread, ...]:
        """Threads the backend itself runs for this connection (they must be gone after close)."""
        return ()
