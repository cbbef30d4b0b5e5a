"""Transports: one module per backend, all behind :class:`Transport`.

The backend modules import their libraries lazily through this package's attributes, so
``import duplexthreads`` works even where only one backend is installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import CloseFrame, PeerClosingError, Transport, WriteError, new_connection_id
from .memory import MemoryTransport, memory_pair

if TYPE_CHECKING:
    from .simple_websocket import SimpleWebSocketTransport
    from .websocket_client import WebSocketClientTransport

__all__ = [
    "CloseFrame",
    "MemoryTransport",
    "PeerClosingError",
    "SimpleWebSocketTransport",
    "Transport",
    "WebSocketClientTransport",
    "WriteError",
    "memory_pair",
    "new_connection_id",
]


def __getattr__(name: str) -> Any:
    if name == "WebSocketClientTransport":
        from .websocket_client import WebSocketClientTransport

        return WebSocketClientTransport
    if name == "SimpleWebSocketTransport":
        from .simple_websocket import SimpleWebSocketTransport

        return SimpleWebSocketTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
