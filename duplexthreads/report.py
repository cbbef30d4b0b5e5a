"""What a connection leaves behind when it ends: the exit reports.

Each worker thread posts one :class:`WorkerExit` on the connection's *done* queue, whatever way
it ends. The owner folds those into one immutable :class:`ExitReport` for the application.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

from ._rfc6455 import ABNORMAL_CLOSURE, NORMAL_CLOSE_CODES

__all__ = ["ExitReport", "Message", "Reason"]

#: A message as the application sees it: text is ``str``, binary is ``bytes``.
Message = Union[str, bytes]

#: A close frame's content: (code, reason).
Close = Tuple[int, str]


class Reason(enum.Enum):
    """Why a connection ended: the cause the owner saw first."""

    #: The peer sent a close frame.
    PEER_CLOSED = "peer closed"
    #: The application called ``close()``.
    LOCAL_CLOSE = "local close"
    #: The application called ``abort()``.
    ABORTED = "aborted"
    #: Receiving failed: reset, end of stream without a close frame, protocol error,
    #: or an exception raised by the ``on_message`` callback.
    READ_ERROR = "read error"
    #: Sending failed.
    WRITE_ERROR = "write error"
    #: An extra worker added with ``add_worker()`` returned or raised first.
    WORKER_EXIT = "worker exit"
    #: The heartbeat heard nothing from the peer for ``ping_timeout`` after a ping; we sent
    #: close code 1011 (the peer is most likely gone and never sees it).
    HEARTBEAT_TIMEOUT = "heartbeat timeout"
    #: A write made no progress for ``write_timeout``: the peer stopped reading.
    WRITE_TIMEOUT = "write timeout"


@dataclass(frozen=True)
class WorkerExit:
    """One worker's account of how it ended; posted exactly once, from ``finally``."""

    role: str
    error: Optional[BaseException] = None
    #: Close frame received from the peer (reader only): ``(code, reason)``.
    peer_close: Optional[Close] = None
    #: The close frame the writer sent before it ended, if it sent one.
    close_sent: Optional[Close] = None
    #: Messages the writer took off the queue but did not write, in order.
    unwritten: Tuple[Message, ...] = ()
    #: How many messages the writer wrote completely to the transport.
    written: int = 0


@dataclass(frozen=True)
class ExitReport:
    """The one immutable account of how a connection ended.

    Message accounting (promise P4): the first ``written`` messages accepted by ``send()`` were
    written to the transport before the close frame; the rest are in ``unsent``, in send order.
    """

    connection_id: int
    #: Role of whoever ended the connection first: ``"reader"``, ``"writer"``, an extra worker's
    #: role, or ``"owner"`` when the application asked for ``close()`` or ``abort()``.
    first: str
    reason: Reason
    error: Optional[BaseException] = None
    #: Code of the close frame that ended the connection: the peer's if one arrived (1005 when
    #: it carried no code), else ours if one left (a close the peer never answered, or a
    #: protocol error we failed the connection for), else 1006: no close frame was exchanged.
    close_code: int = ABNORMAL_CLOSURE
    close_reason: str = ""
    unsent: Tuple[Message, ...] = ()
    written: int = 0
    #: Seconds from the first exit cause to the transport being closed.
    teardown_seconds: float = 0.0
    #: Names of threads that were still alive when teardown gave up waiting (empty if P1 held).
    lingering: Tuple[str, ...] = field(default=())
    #: The close frame we sent, completely written to the socket, as (code, reason), or None.
    close_sent: Optional[Close] = None
    #: The close frame the peer sent, as (code, reason), or None if none arrived.
    close_received: Optional[Close] = None
    #: Messages that arrived during our close handshake and were dropped because the inbound
    #: queue was full (``max_queue``). The reader keeps reading to find the peer's answer; it
    #: keeps what fits and counts the rest here, so a flood cannot grow memory without bound.
    discarded: int = 0

    @property
    def ok(self) -> bool:
        """True when the connection ended with a normal close handshake and no error.

        Normal codes are 1000, 1001 and 1005 (a close frame without a code, which is what
        browsers and Node send from a plain ``close()``).
        """
        return (
            self.error is None
            and self.reason in (Reason.PEER_CLOSED, Reason.LOCAL_CLOSE)
            and self.close_code in NORMAL_CLOSE_CODES
        )

    def describe(self) -> str:
        """One line for logs and exception messages."""
        text = f"{self.reason.value} (first: {self.first}), code {self.close_code}"
        if self.close_reason:
            text += f" {self.close_reason!r}"
        if self.error is not None:
            text += f", error: {self.error!r}"
        if self.unsent:
            text += f", {len(self.unsent)} unsent"
        if self.discarded:
            text += f", {self.discarded} received during the close and discarded"
        return text
