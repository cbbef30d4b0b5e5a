"""``connect()``: open a client connection with either backend and start its team of threads."""

from __future__ import annotations

import ssl
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

from .report import Message
from .session import DEFAULT_CLOSE_TIMEOUT, DEFAULT_MAX_QUEUE, Duplex, start_session
from .transports.base import Transport

__all__ = ["BACKENDS", "connect"]

#: The client backends ``connect(backend=...)`` accepts.
BACKENDS = ("websocket-client", "simple-websocket")

Headers = Union[Mapping[str, str], Sequence[str], Sequence["tuple[str, str]"], None]


def connect(
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
) -> Duplex:
    """Open a WebSocket connection to ``url`` and return it, already started.

    Raises :class:`~duplexthreads.ConnectError` (an ``OSError``) when the endpoint refuses,
    is unreachable, times out after ``open_timeout`` seconds, fails TLS, or answers without a
    WebSocket upgrade (:class:`~duplexthreads.HandshakeRejected`, with the HTTP status); no
    thread and no socket are left behind then. Bad arguments raise ``ValueError``/``TypeError``.
    """
    transport = open_transport(
        url,
        backend=backend,
        headers=headers,
        subprotocols=subprotocols,
        ssl_context=ssl_context,
        open_timeout=open_timeout,
    )
    return start_session(transport, on_message=on_message, max_queue=max_queue, close_timeout=close_timeout)


def open_transport(
    url: str,
    *,
    backend: str = "websocket-client",
    headers: Headers = None,
    subprotocols: Optional[Sequence[str]] = None,
    ssl_context: Optional[ssl.SSLContext] = None,
    open_timeout: Optional[float] = 10.0,
) -> Transport:
    """Open just the transport (no threads of ours yet); used by ``connect``."""
    if not isinstance(url, str):
        raise TypeError(f"url must be str, not {type(url).__name__}")
    scheme = urlsplit(url).scheme
    if scheme not in ("ws", "wss"):
        raise ValueError(f"url must start with ws:// or wss://, not {url!r}")
    if not urlsplit(url).hostname:
        raise ValueError(f"url has no host: {url!r}")
    if open_timeout is not None and not open_timeout > 0:
        raise ValueError(f"open_timeout must be > 0 or None, not {open_timeout!r}")
    if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
        raise TypeError("ssl_context must be an ssl.SSLContext")
    if isinstance(subprotocols, str):
        raise TypeError("subprotocols must be a sequence of names, not one str")
    transport: Transport = _client_transport_class(backend).connect(
        url,
        headers=_header_pairs(headers),
        subprotocols=subprotocols,
        ssl_context=ssl_context,
        open_timeout=open_timeout,
    )
    return transport


def _client_transport_class(backend: str) -> Any:
    """The transport class for ``backend``, imported only when chosen."""
    if backend == "websocket-client":
        from .transports.websocket_client import WebSocketClientTransport

        return WebSocketClientTransport
    if backend == "simple-websocket":
        from .transports.simple_websocket import SimpleWebSocketTransport

        return SimpleWebSocketTransport
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def _header_pairs(headers: Headers) -> Optional[Sequence[tuple[str, str]]]:
    """Headers as (name, value) pairs, whether given as a mapping, pairs or 'Name: value' lines."""
    if headers is None:
        return None
    pairs: List[Tuple[str, str]] = []
    for header in headers.items() if isinstance(headers, Mapping) else headers:
        if isinstance(header, str):
            name, sep, value = header.partition(":")
            if not sep:
                raise ValueError(f"header line {header!r} has no ':'")
            pairs.append((name.strip(), value.strip()))
        else:
            name, value = header
            pairs.append((name, value))
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"header names and values must be str: {name!r}: {value!r}")
        if not name or any(char in name + value for char in "\r\n\0"):
            raise ValueError(f"invalid header {name!r}: {value!r}")
    return pairs
