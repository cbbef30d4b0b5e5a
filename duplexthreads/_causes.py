"""What ends a connection: the requests the application posts, and what a worker's report means.

The exit protocol (``_protocol.py``) asks one question of the first report it gets when nobody
asked to close: what ended the connection, and which close frame, if any, do we still owe the
peer? :func:`cause_of` answers it, as a table small enough to read in one go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ._deadline import deadline_after
from ._rfc6455 import INTERNAL_ERROR, NORMAL_CLOSURE, is_sendable_close_code
from .exceptions import HeartbeatTimeout, ProtocolError, TransportError, WriteTimeout
from .report import Close, Reason, WorkerExit

__all__ = ["ABORTED", "AbortRequest", "Cause", "CloseRequest", "cause_of", "close_request"]


@dataclass(frozen=True)
class CloseRequest:
    """``close()``: end with this close frame, the handshake over by ``deadline``."""

    code: int
    reason: str
    #: Seconds the close may take (for messages), and when they run out; None: no limit.
    timeout: Optional[float]
    deadline: Optional[float]


@dataclass(frozen=True)
class AbortRequest:
    """``abort()``: end now, without a close handshake."""


@dataclass(frozen=True)
class Cause:
    """What ended the connection, as the owner decided it."""

    first: str
    reason: Reason
    error: Optional[BaseException] = None
    #: The close frame we still owe the peer, sent once the writer has stopped.
    reply: Optional[Close] = None
    #: Whether the reply waits for a writer busy in a write (within close_timeout). Not when
    #: the peer is presumed gone: the write may be stuck on it, and the reply would be lost.
    patient: bool = True


#: What ends a connection when the application calls abort() (or the protocol must stop).
ABORTED = Cause("owner", Reason.ABORTED)


def close_request(code: int, reason: str, timeout: Optional[float]) -> CloseRequest:
    """A close request whose handshake must be over ``timeout`` seconds from now."""
    return CloseRequest(code, reason, timeout, deadline_after(timeout))


def cause_of(first: WorkerExit) -> Cause:
    """What the first worker report means when nobody asked to close."""
    if isinstance(first.error, WriteTimeout):
        # The peer stopped reading (a reader can meet it too, writing a pong): no close frame
        # could reach it.
        return Cause(first.role, Reason.WRITE_TIMEOUT, first.error)
    if first.role == "heartbeat" and isinstance(first.error, HeartbeatTimeout):
        # The peer is most likely gone; the close frame is sent for the case it is not.
        return Cause("heartbeat", Reason.HEARTBEAT_TIMEOUT, first.error, (INTERNAL_ERROR, ""), patient=False)
    if first.role == "reader":
        if first.peer_close is not None:
            code, reason = first.peer_close
            reply = (code, reason) if is_sendable_close_code(code) else (NORMAL_CLOSURE, "")
            return Cause("reader", Reason.PEER_CLOSED, None, reply)
        error = first.error
        if isinstance(error, ProtocolError):
            # The peer broke the protocol: fail the connection with the code RFC 6455 names.
            return Cause("reader", Reason.READ_ERROR, error, (error.close_code, ""))
        if error is None or isinstance(error, TransportError):
            return Cause("reader", Reason.READ_ERROR, error)
        # The on_message callback raised: the connection is fine, so tell the peer politely.
        return Cause("reader", Reason.READ_ERROR, error, (INTERNAL_ERROR, ""))
    if first.role == "writer":
        return Cause("writer", Reason.WRITE_ERROR, first.error)
    code = NORMAL_CLOSURE if first.error is None else INTERNAL_ERROR
    return Cause(first.role, Reason.WORKER_EXIT, first.error, (code, ""))
