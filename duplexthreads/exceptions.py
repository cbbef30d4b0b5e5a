"""The exceptions duplexthreads raises.

Everything the library raises on purpose derives from one root::

    DuplexError
    ├── ConnectionClosed            the connection is over; ``.report`` says why
    │   ├── ConnectionClosedOK      it ended with a normal close handshake (1000 or 1001)
    │   └── ConnectionClosedError   it ended any other way (error, abort, abnormal code)
    ├── ConnectError (OSError)      opening the connection failed; nothing is left behind
    │   └── HandshakeRejected       the endpoint answered HTTP, but not with a WebSocket upgrade
    └── TransportError (OSError)    a backend failed while the connection was open

Wrong argument types raise the builtin ``TypeError``/``ValueError``, and waits that run out
raise the builtin ``TimeoutError``, so callers can use the exceptions they already know.
Exceptions of the backends (websocket-client, simple-websocket, wsproto) are translated at the
transport boundary and chained with ``from``, so the original is always in ``__cause__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .report import ExitReport

__all__ = [
    "ConnectError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "DuplexError",
    "HandshakeRejected",
    "TransportError",
]


class DuplexError(Exception):
    """Root of every exception duplexthreads raises on purpose."""


class ConnectionClosed(DuplexError):
    """The connection is closed (or closing) and cannot send or receive any more.

    ``report`` is the connection's :class:`~duplexthreads.ExitReport`. It is ``None`` only when
    the exception is raised inside one of the connection's own threads (an ``on_message``
    callback) while teardown is under way, since the report is finished after those threads end.
    """

    def __init__(self, report: Optional[ExitReport], message: Optional[str] = None) -> None:
        self.report = report
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


class TransportError(DuplexError, OSError):
    """The backend failed while the connection was open (reset, EOF, protocol error).

    Workers catch it and turn it into the connection's exit report; applications meet it
    as ``report.error``.
    """
