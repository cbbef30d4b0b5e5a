"""Socket helpers shared by the socket-backed transports."""

from __future__ import annotations

import socket
from typing import Any, List, Sequence

from .base import WriteError


class BorrowedSocket:
    """The socket as a backend library sees it: everything but ``close()`` goes through.

    Backends close the socket from their reading thread when the stream ends, while our writer
    may still be using it; the fd number could then be reused by another connection under the
    writer's feet. Through this view their ``close()`` does nothing, and the transport closes
    the real socket exactly once, after its threads are gone.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.raw = sock

    def close(self) -> None:
        """Ignored: the transport owns the socket and closes it."""

    def fileno(self) -> int:
        return self.raw.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def shutdown_quietly(sock: Any) -> None:
    """``shutdown(SHUT_RDWR)``, tolerating a socket already shut down or closed (ENOTCONN, EBADF)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass


def write_frames(sock: Any, frames: Sequence[bytes]) -> None:
    """Write ``frames`` back to back, raising :class:`WriteError` with the count fully written.

    ``sendall`` cannot say how far it got before an error; sending in a loop can, and that is
    what lets the exit report account for every message (promise P4).
    """
    data = frames[0] if len(frames) == 1 else b"".join(frames)
    view = memoryview(data)
    sent = 0
    total = len(data)
    try:
        while sent < total:
            sent += sock.send(view[sent:])
    except (OSError, ValueError) as exc:
        raise WriteError(f"write failed: {exc!r}", _count_complete(frames, sent)) from exc


def _count_complete(frames: Sequence[bytes], sent: int) -> int:
    complete = 0
    end = 0
    for frame in frames:
        end += len(frame)
        if end > sent:
            break
        complete += 1
    return complete


__all__: List[str] = ["BorrowedSocket", "shutdown_quietly", "write_frames"]
