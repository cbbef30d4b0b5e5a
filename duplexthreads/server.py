"""``accept()``: the server side of a WebSocket inside a WSGI app (Flask, Werkzeug, Gunicorn)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

from .report import Message
from .session import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_QUEUE,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    Duplex,
    SessionOptions,
    start_session,
)

__all__ = ["accept"]


def accept(
    environ: Dict[str, Any],
    *,
    subprotocols: Optional[Sequence[str]] = None,
    close_timeout: Optional[float] = DEFAULT_CLOSE_TIMEOUT,
    max_queue: Optional[int] = DEFAULT_MAX_QUEUE,
    max_message_size: Optional[int] = DEFAULT_MAX_MESSAGE_SIZE,
    on_message: Optional[Callable[[Message], None]] = None,
    close_at_exit: bool = True,
    ping_interval: Optional[float] = DEFAULT_PING_INTERVAL,
    ping_timeout: Optional[float] = DEFAULT_PING_TIMEOUT,
    write_timeout: Optional[float] = None,
) -> Duplex:
    """Upgrade the WSGI request in ``environ`` and return the connection, already started.

    Use it in a view and keep the view running until the connection ends (``for message in
    conn``, or ``conn.wait()``): the WSGI server owns the socket and reuses it once the view
    returns. Arguments are checked before the handshake (``TypeError``/``ValueError``).
    Raises :class:`~duplexthreads.HandshakeRejected` (with the status to answer) when the
    request is not a valid WebSocket upgrade, and :class:`~duplexthreads.ConnectError` when
    the server does not expose its socket or the client is gone. A message over
    ``max_message_size`` bytes (1 MiB by default; ``None``: no limit) fails the connection with
    close code 1009. ``ping_interval``, ``ping_timeout`` and ``write_timeout`` are the liveness
    options of :func:`~duplexthreads.connect`: a client whose TCP died is dropped within
    ``ping_interval + ping_timeout``, one that stopped reading within ``write_timeout``.
    """
    options = SessionOptions(
        on_message=on_message,
        max_queue=max_queue,
        close_timeout=close_timeout,
        close_at_exit=close_at_exit,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        write_timeout=write_timeout,
    ).check()
    from .transports.simple_websocket import SimpleWebSocketTransport

    transport = SimpleWebSocketTransport.accept(environ, subprotocols=subprotocols, max_message_size=max_message_size)
    return start_session(transport, options)
