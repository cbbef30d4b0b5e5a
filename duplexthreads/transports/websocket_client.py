"""Transport over websocket-client's ``WebSocket`` (client side).

websocket-client supplies the opening handshake, TLS, proxies and frame parsing. Two things
we do ourselves, for reasons measured in ../shared/FACTS.md:

- Waking: a thread blocked in ``WebSocket.recv()`` holds the frame-buffer lock, so its
  ``close()`` from another thread deadlocks; we shut the raw socket down instead.
- Writing: the writer frames a whole batch and writes it at once, under the same lock that
  websocket-client's own pong replies take, so frames never interleave.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import websocket

from ..exceptions import ConnectError, HandshakeRejected, TransportError
from ..report import Message
from . import _framing
from ._sockets import BorrowedSocket, shutdown_quietly, write_frames
from .base import CloseFrame, Transport

__all__ = ["WebSocketClientTransport"]

Headers = Union[Mapping[str, str], Sequence[Tuple[str, str]], None]

_DATA_OPCODES = (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_CONT)


class WebSocketClientTransport(Transport):
    """A connected ``websocket.WebSocket`` driven by the session's reader and writer."""

    backend = "websocket-client"

    def __init__(self, ws: Any) -> None:
        if not ws.connected or ws.sock is None:
            raise ValueError("WebSocketClientTransport needs a connected websocket.WebSocket")
        super().__init__()
        self._ws: Any = ws  # a connected websocket.WebSocket
        # The raw socket, kept apart from ws.sock, which websocket-client may set to None.
        self._sock: socket.socket = ws.sock
        # websocket-client closes ws.sock from the reader when the stream ends, under our
        # writer's feet; through this view it cannot, and close() below closes it once.
        ws.sock = BorrowedSocket(self._sock)
        # Block without a timeout: the owner wakes the reader with shutdown(), so no polling.
        self._sock.settimeout(None)
        # Reassembles fragmented messages; UTF-8 is checked by bytes.decode, in C.
        self._fragments = websocket.continuous_frame(False, True)

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        headers: Headers = None,
        subprotocols: Optional[Sequence[str]] = None,
        ssl_context: Any = None,
        open_timeout: Optional[float] = 10.0,
    ) -> WebSocketClientTransport:
        """Open a connection; raise :class:`ConnectError` leaving no socket open."""
        sslopt: Dict[str, Any] = {} if ssl_context is None else {"context": ssl_context}
        # skip_utf8_validation: we validate with bytes.decode, far faster than the pure-Python
        # validator; enable_multithread: gives ws.lock, which our writer shares with pongs.
        # Typed as Any: websocket-client's methods carry no annotations, which mypy --strict rejects.
        ws: Any = websocket.WebSocket(sslopt=sslopt, skip_utf8_validation=True, enable_multithread=True)
        options: Dict[str, Any] = {"timeout": open_timeout}
        if headers:
            pairs = headers.items() if isinstance(headers, Mapping) else headers
            options["header"] = [f"{name}: {value}" for name, value in pairs]
        if subprotocols:
            options["subprotocols"] = list(subprotocols)
        try:
            ws.connect(url, **options)
        except websocket.WebSocketBadStatusException as exc:
            ws.shutdown()
            raise HandshakeRejected(
                exc.status_code, f"{url}: answered HTTP {exc.status_code}, not a WebSocket upgrade"
            ) from exc
        except (websocket.WebSocketException, OSError, ValueError) as exc:
            ws.shutdown()
            raise ConnectError(f"{url}: cannot connect: {exc}") from exc
        return cls(ws)

    @property
    def raw_socket(self) -> socket.socket:
        """The underlying socket, for diagnostics and tests; reading or writing it breaks framing."""
        return self._sock

    @property
    def closed(self) -> bool:
        """True once close() released the socket."""
        return self.raw_socket.fileno() == -1

    @property
    def subprotocol(self) -> Optional[str]:
        chosen = self._ws.getsubprotocol()
        return None if chosen is None else str(chosen)

    def recv(self) -> Union[Message, CloseFrame]:
        try:
            while True:
                frame = self._ws.recv_frame()
                opcode = frame.opcode
                if opcode in _DATA_OPCODES:
                    self._fragments.validate(frame)
                    self._fragments.add(frame)
                    if frame.fin:
                        opcode, whole = self._fragments.extract(frame)
                        if opcode == websocket.ABNF.OPCODE_TEXT:
                            return bytes(whole.data).decode("utf-8")
                        return bytes(whole.data)
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    code, reason = _framing.parse_close_payload(frame.data)
                    return CloseFrame(code, reason)
                elif opcode == websocket.ABNF.OPCODE_PING:
                    # ws.pong takes ws.lock, the lock our writer holds while it writes.
                    self._ws.pong(frame.data)
                # Pongs need no answer.
        except TransportError:
            raise
        except websocket.WebSocketConnectionClosedException as exc:
            raise TransportError("connection lost: end of stream without a close frame") from exc
        except (websocket.WebSocketException, OSError, ValueError) as exc:
            raise TransportError(f"read failed: {exc!r}") from exc

    def send_batch(self, messages: Sequence[Message]) -> None:
        frames: List[bytes] = _framing.encode_messages(messages)
        with self._ws.lock:
            write_frames(self._sock, frames)

    def send_close(self, code: int, reason: str, timeout: Optional[float] = None) -> None:
        key = os.urandom(4)
        frame = _framing.encode_frame(_framing.OPCODE_CLOSE, _framing.close_payload(code, reason), key)
        with self._ws.lock:
            write_frames(self._sock, [frame])

    def shutdown(self) -> None:
        shutdown_quietly(self._sock)

    def close(self, timeout: Optional[float] = None, *, clean: bool = False) -> None:
        # websocket-client's shutdown() closes ws.sock and marks it disconnected, without I/O.
        self._ws.shutdown()
        self._sock.close()

    def forget(self) -> None:
        # Closing our descriptor only drops this process's reference: no FIN, no shutdown.
        self._sock.close()
