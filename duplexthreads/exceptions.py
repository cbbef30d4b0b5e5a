"""The exceptions duplexthreads raises.

Everything the library raises on purpose derives from one root::

    DuplexError
    ├── ConnectionClosed            the connection is over; ``.report`` says why
    │   ├── ConnectionClosedOK      it ended with a normal close handshake (1000, 1001, 1005)
    │   └── ConnectionClosedError   it ended any other way (error, abort, abnormal code)
    ├── ConnectError (OSError)      opening the connection failed; nothing is left behind
    │   ├── HandshakeRejected       the endpoint answered HTTP, but not with a WebSocket upgrade
    │   └── ConnectTimeout          open_timeout ran out (also a TimeoutError)
    ├── TransportError (OSError)    a backend failed while the connection was open
    │   ├── ProtocolError           the peer broke RFC 6455; ``.close_code`` is what we sent it
    │   ├── HeartbeatTimeout        the peer sent nothing for ``ping_timeout`` after a ping
    │   └── WriteTimeout            a write made no progress for ``write_timeout``
    └── UsageError (RuntimeError)   the API was used in a way that cannot work (start twice,
                                    wait() inside the connection's own thread, recv() with an
                                    on_message callback, a connection inherited through fork)

Wrong argument types and values raise the builtin ``TypeError``/``ValueError`` before any I/O,
and waits that run out raise the builtin ``TimeoutError``, so callers can use the exceptions
they already know.
Exceptions of the backends (websocket-client, simple-websocket, wsproto) are translated at the
transport boundary and chained with ``from``, so the original is always in ``__cause__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .report import ExitReport

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "DuplexError",
    "HandshakeRejected",
    "HeartbeatTimeout",
    "ProtocolError",
    "TransportError",
    "UsageError",
    "WriteTimeout",
]


class DuplexError(Exception):
    """Root of every exception duplexthreads raises on purpose."""


class ConnectionClosed(DuplexError):
    """The connection is closed (or closing) and cannot send or receive any more.

    ``report`` is the connection's :class:`~duplexthreads.ExitReport`. It is ``None`` only when
    the exception is raised inside one of the connection's own threads (an ``on_message``
    callback) while teardown is under way, since the report is finished after those threads end.
    """

    def __init__(
        self, report: Optional[ExitReport], message: Optional[str] = None, *, connection_id: Optional[int] = None
    ) -> None:
        self.report = report
        #: The id of the connection that is closed (the report's, when there is one).
        self.connection_id = report.connection_id if report is not None else connection_id
        if message is None:
            message = "connection closed" + (f": {report.describe()}" if report is not None else "")
        super().__init__(message)


class ConnectionClosedOK(ConnectionClosed):
    """The connection ended with a normal close handshake."""


class ConnectionClosedError(ConnectionClosed):
    """The connection ended abnormally: an error, an abort, or an error close code."""


class ConnectError(DuplexError, OSError):
    """Opening a connection failed: refused, unreachable, timed out, TLS, or not a WebSocket.

    When this is raised no thread was left running and no socket was left open.
    """


class HandshakeRejected(ConnectError):
    """The endpoint answered, but not with ``101 Switching Protocols``.

    ``status`` is the HTTP status code it answered with (0 when it was not HTTP at all).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ConnectTimeout(ConnectError, TimeoutError):
    """``open_timeout`` ran out before the connection was open.

    It bounds the whole opening: resolving the host, connecting, TLS and the HTTP upgrade
    together. Also a ``TimeoutError``, so callers can catch the builtin they already know.
    """


class TransportError(DuplexError, OSError):
    """The backend failed while the connection was open (reset, EOF, protocol error).

    Workers catch it and turn it into the connection's exit report; applications meet it
    as ``report.error``.
    """


class ProtocolError(TransportError):
    """The peer broke the WebSocket protocol; the connection was failed as RFC 6455 says.

    ``close_code`` is the code of the close frame sent to the peer for it: 1002 (protocol
    error), 1007 (a text message or close reason that is not UTF-8) or 1009 (a message over
    the size limit). Nothing of the offending frame is delivered.
    """

    def __init__(self, message: str, close_code: int = 1002) -> None:
        super().__init__(message)
        self.close_code = close_code


class HeartbeatTimeout(TransportError):
    """The peer sent nothing, not even the pong, for ``ping_timeout`` seconds after a ping.

    The heartbeat ends the connection with this error, reason ``HEARTBEAT_TIMEOUT`` and close
    code 1011: the peer or the path to it is gone without a word (a dropped NAT mapping, a
    sleeping laptop, a hung process), and the kernel would take minutes or hours to notice.
    """


class WriteTimeout(TransportError):
    """A write made no progress for ``write_timeout`` seconds: the peer stopped reading.

    The connection ends with reason ``WRITE_TIMEOUT``; the report still says exactly which
    messages were written and which come back in ``unsent``.
    """


class UsageError(DuplexError, RuntimeError):
    """The API was used in a way that cannot work; the connection itself is unharmed.

    For example: ``start()`` twice, ``wait()`` from one of the connection's own threads (it
    would wait for itself), ``recv()`` on a connection that delivers to ``on_message``,
    ``add_worker()`` after start, or any use but ``close()`` of a connection inherited by a
    child process through ``fork()``.
    """
