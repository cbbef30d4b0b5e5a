"""duplexthreads: a WebSocket connection run as a team of threads that live and die together.

Each connection has a reader thread, a writer thread and an owner. The first of them to end
decides how the connection ended; the owner then stops the others wherever they are blocked,
closes the socket exactly once, and publishes one :class:`ExitReport`.
"""

from __future__ import annotations

import logging
import typing as _typing

from .backplane import RedisBackplane
from .bulk import close_all
from .client import BACKENDS, connect
from .exceptions import (
    ConnectError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    ConnectTimeout,
    DuplexError,
    HandshakeRejected,
    HeartbeatTimeout,
    ProtocolError,
    TransportError,
    UsageError,
    WriteTimeout,
)
from .hub import Backplane, BackplaneStats, Hub, HubStats
from .reconnect import Backoff, ReconnectingClient
from .report import ExitReport, Message, Reason
from .server import accept
from .session import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_QUEUE,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    Duplex,
)

if _typing.TYPE_CHECKING:
    from .chat_server import ChatServer, serve

__version__ = "0.1.0"

# A library's log records are the application's to show: without this, Python would print our
# warnings (a client's bad request, a reconnect) on stderr when the application set up no logging.
logging.getLogger("duplexthreads").addHandler(logging.NullHandler())

__all__ = [
    "BACKENDS",
    "Backoff",
    "Backplane",
    "BackplaneStats",
    "ChatServer",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PING_TIMEOUT",
    "ConnectError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "ConnectTimeout",
    "Duplex",
    "DuplexError",
    "ExitReport",
    "HandshakeRejected",
    "HeartbeatTimeout",
    "Hub",
    "HubStats",
    "Message",
    "ProtocolError",
    "Reason",
    "ReconnectingClient",
    "RedisBackplane",
    "TransportError",
    "UsageError",
    "WriteTimeout",
    "__version__",
    "accept",
    "close_all",
    "connect",
    "serve",
]


def __getattr__(name: str) -> _typing.Any:
    # serve() runs on Werkzeug, whose import takes about 70 ms: a program that only connects
    # does not pay it. (PEP 562: called only for a name the module does not have.)
    if name in ("ChatServer", "serve"):
        from . import chat_server

        return getattr(chat_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
