"""Servers on 127.0.0.1 for the command to talk to, each stopped (threads joined, sockets
closed) when its block ends."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional

from websockets.sync.server import ServerConnection

from ..integration.raw_server import RawServer
from ..integration.websockets_server import running_server
from ..timing import UNIT


def url_of(server: object) -> str:
    return f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"  # type: ignore[attr-defined]


@contextmanager
def websocket_server(handler: Callable[[ServerConnection], None], **options: object) -> Iterator[str]:
    """A websockets server running ``handler`` per client; yields its URL."""
    with running_server(handler, **options) as server:
        yield url_of(server)


@contextmanager
def echo_server(delay: float = 0.0) -> Iterator[str]:
    """Answers each message with itself, ``delay`` seconds later."""

    def echo(ws: ServerConnection) -> None:
        for message in ws:
            time.sleep(delay)
            ws.send(message)

    with websocket_server(echo) as url:
        yield url


class Silent:
    """A server that completes the handshake and then says nothing, answers nothing: no pong,
    no close frame. A client's close to it can only end by timing out or aborting."""

    def __init__(self, *, receive_buffer: Optional[int] = None) -> None:
        self._raw = RawServer(receive_buffer=receive_buffer)
        self.url = self._raw.url
        self._sockets: List[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="test-silent-server")
        self.error: Optional[BaseException] = None

    def _accept(self) -> None:
        try:
            sock, _ = self._raw.accept(timeout=10 * UNIT)
            self._sockets.append(sock)
        except OSError as exc:  # the test ended before a client came
            self.error = exc

    def __enter__(self) -> Silent:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._raw.listener.shutdown(socket.SHUT_RDWR)  # wakes an accept() still waiting
        except OSError:
            pass
        self._raw.close()
        self._thread.join(20 * UNIT)
        for sock in self._sockets:
            sock.close()
