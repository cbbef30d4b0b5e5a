"""``connect()``: open a client connection with either backend and start its team of threads."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union, overload

if TYPE_CHECKING:
    from typing import Literal

    from .reconnect import Backoff, ReconnectingClient

from ._deadline import timeout_arg
from .report import ExitReport, Message
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
from .transports._opening import HeadersArg, check_max_message_size, client_request
from .transports.base import Transport

__all__ = ["BACKENDS", "connect"]

#: The client backends ``connect(backend=...)`` accepts.
BACKENDS = ("websocket-client", "simple-websocket")

#: ``headers=``: a mapping, ``(name, value)`` pairs, or ``"Name: value"`` lines.
Headers = HeadersArg


@overload
def connect(url: str, *, reconnect: Literal[False] = False, **options: Any) -> Duplex: ...


@overload
def connect(url: str, *, reconnect: Union[Literal[True], Backoff], **options: Any) -> ReconnectingClient: ...


def connect(  # type: ignore[misc]  # the overloads above only split the return type by reconnect
    url: str,
    *,
    backend: str = "websocket-client",
    headers: Headers = None,
    subprotocols: Optional[Sequence[str]] = None,
    ssl_context: Optional[ssl.SSLContext] = None,
    open_timeout: Optional[float] = 10.0,
    close_timeout: Optional[float] = DEFAULT_CLOSE_TIMEOUT,
    max_queue: Optional[int] = DEFAULT_MAX_QUEUE,
    on_message: Optional[Callable[[Message], None]] = None,
    close_at_exit: bool = True,
    ping_interval: Optional[float] = DEFAULT_PING_INTERVAL,
    ping_timeout: Optional[float] = DEFAULT_PING_TIMEOUT,
    write_timeout: Optional[float] = None,
    max_message_size: Optional[int] = DEFAULT_MAX_MESSAGE_SIZE,
    reconnect: Union[bool, Backoff] = False,
    reconnect_on_normal_close: bool = False,
    on_open: Optional[Callable[[Duplex], Any]] = None,
    on_close: Optional[Callable[[ExitReport], Any]] = None,
    start: bool = True,
) -> Union[Duplex, ReconnectingClient]:
    """Open a WebSocket connection to ``url`` and return it, already started.

    ``start=False`` returns it open but not started, so that :meth:`Duplex.add_worker` can
    add workers to its team first; call ``start()`` or ``run()`` next (or ``close()``).

    Every argument is checked before any I/O: a wrong type raises ``TypeError`` and a wrong
    value ``ValueError``, each naming the argument (a CR or LF in a header, a subprotocol that
    is not a token, a port out of range...). ``open_timeout`` bounds the whole opening:
    resolving the host, connecting, TLS and the HTTP upgrade together.

    Raises :class:`~duplexthreads.ConnectError` (an ``OSError``) when the endpoint refuses,
    is unreachable, fails TLS or breaks the handshake; :class:`~duplexthreads.exceptions.ConnectTimeout`
    (also a ``TimeoutError``) when ``open_timeout`` runs out; and
    :class:`~duplexthreads.HandshakeRejected`, with the HTTP status, when it answers without a
    WebSocket upgrade (redirects are not followed). No thread and no socket are left behind then.

    At interpreter exit a connection still open is closed gracefully (what was queued is sent,
    then close code 1001) within ``close_timeout``; ``close_at_exit=False`` opts out.

    Liveness (see :class:`~duplexthreads.Duplex`): the heartbeat pings every ``ping_interval``
    seconds and ends a connection whose peer stays silent ``ping_timeout`` seconds after a
    ping; ``write_timeout`` ends one whose writes make no progress. An incoming message over
    ``max_message_size`` bytes (1 MiB by default; ``None``: no limit) fails the connection
    with close code 1009 as soon as its size is known, without reading the rest.

    ``reconnect=True`` (or a :class:`~duplexthreads.Backoff`) returns a
    :class:`~duplexthreads.ReconnectingClient` instead, which opens a new connection with these
    options whenever one ends abnormally; ``reconnect_on_normal_close``, ``on_open(conn)`` and
    ``on_close(report)`` apply to it only (see :mod:`duplexthreads.reconnect`).
    """
    # The options of the connection itself come first: a mistake there must not cost a handshake.
    options = SessionOptions(
        on_message=on_message,
        max_queue=max_queue,
        close_timeout=close_timeout,
        close_at_exit=close_at_exit,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        write_timeout=write_timeout,
    ).check()
    check_max_message_size(max_message_size)
    if not isinstance(start, bool):
        raise TypeError(f"start must be True or False, not {type(start).__name__}")
    if reconnect is not False:
        if not start:
            raise ValueError("start=False needs reconnect=False: a reconnecting client starts each connection itself")
        from .reconnect import connect_reconnecting

        if timeout_arg(open_timeout, "open_timeout") is None:  # None, inf, or past what threads can wait
            # Nothing can interrupt an opening in flight: close() and abort() wait for it.
            raise ValueError("a reconnecting client needs a finite open_timeout: close() waits for an opening")
        return connect_reconnecting(
            url,
            reconnect=reconnect,
            reconnect_on_normal_close=reconnect_on_normal_close,
            on_open=on_open,
            on_close=on_close,
            backend=backend,
            headers=headers,
            subprotocols=subprotocols,
            ssl_context=ssl_context,
            open_timeout=open_timeout,
            max_message_size=max_message_size,
            **options.as_kwargs(),
        )
    if reconnect_on_normal_close is not False or on_open is not None or on_close is not None:
        raise ValueError("reconnect_on_normal_close, on_open and on_close apply only with reconnect=True or a Backoff")
    transport = open_transport(
        url,
        backend=backend,
        headers=headers,
        subprotocols=subprotocols,
        ssl_context=ssl_context,
        open_timeout=open_timeout,
        max_message_size=max_message_size,
    )
    return start_session(transport, options, start=start)


def open_transport(
    url: str,
    *,
    backend: str = "websocket-client",
    headers: Headers = None,
    subprotocols: Optional[Sequence[str]] = None,
    ssl_context: Optional[ssl.SSLContext] = None,
    open_timeout: Optional[float] = 10.0,
    max_message_size: Optional[int] = DEFAULT_MAX_MESSAGE_SIZE,
) -> Transport:
    """Open just the transport (no threads of ours yet); used by ``connect``."""
    transport_class = _client_transport_class(backend)
    check_max_message_size(max_message_size)
    # The transports check these again; checking here first means that no argument error can
    # come after a socket was opened, whichever backend is chosen.
    request = client_request(url, headers, subprotocols)
    timeout = timeout_arg(open_timeout, "open_timeout")
    if timeout == 0:
        raise ValueError("open_timeout must be > 0 or None, not 0")
    if ssl_context is not None:
        if not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(f"ssl_context must be an ssl.SSLContext, not {type(ssl_context).__name__}")
        if not request.secure:
            raise ValueError(f"ssl_context given for a ws:// url (use wss:// for TLS): {url!r}")
    transport: Transport = transport_class.connect(
        url,
        headers=headers,
        subprotocols=subprotocols,
        ssl_context=ssl_context,
        open_timeout=timeout,
        max_message_size=max_message_size,
    )
    return transport


def _client_transport_class(backend: object) -> Any:
    """The transport class for ``backend``, imported only when chosen."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be str, one of {BACKENDS}, not {type(backend).__name__}")
    if backend == "websocket-client":
        from .transports.websocket_client import WebSocketClientTransport

        return WebSocketClientTransport
    if backend == "simple-websocket":
        from .transports.simple_websocket import SimpleWebSocketTransport

        return SimpleWebSocketTransport
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
