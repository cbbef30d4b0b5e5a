"""Socket helpers shared by the socket-backed transports."""

from __future__ import annotations

import select
import socket
import ssl
from typing import Any, List, Optional, Sequence

from .._deadline import remaining
from .base import WriteError

#: Bytes read at a time when discarding what the peer sent after the end.
_DRAIN_CHUNK = 16384
#: At most this much is discarded before a close; see close_without_reset.
DRAIN_LIMIT = 16384

# Sends that must never block: a plain socket takes the flag; an SSL socket refuses flags, so it
# relies on the poll for writability alone (a close frame is one small record, which fits once
# the socket reports room).
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


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


def write_frames(sock: Any, frames: Sequence[bytes], deadline: Optional[float] = None) -> None:
    """Write ``frames`` back to back, raising :class:`WriteError` with the count fully written.

    ``sendall`` cannot say how far it got before an error; sending in a loop can, and that is
    what lets the exit report account for every message (promise P4). With a ``deadline`` no
    call blocks past it: when it passes, :class:`WriteError` says the write timed out. A small
    frame (a close frame: at most 131 bytes) is then written whole or not at all: nothing is
    sent before the socket reports room, and room on a TCP socket is far more than that.
    """
    data = frames[0] if len(frames) == 1 else b"".join(frames)
    view = memoryview(data)
    sent = 0
    total = len(data)
    try:
        while sent < total:
            if deadline is None:
                sent += sock.send(view[sent:])
            elif not wait_for(sock, write=True, timeout=remaining(deadline)):
                raise TimeoutError("the peer is not reading: the write did not finish in time")
            elif isinstance(sock, ssl.SSLSocket):
                sent += sock.send(view[sent:])
            else:
                try:
                    sent += sock.send(view[sent:], _DONTWAIT)
                except BlockingIOError:
                    continue  # the room the poll saw was taken; poll again
    except (OSError, ValueError) as exc:
        raise WriteError(f"write failed: {exc!r}", _count_complete(frames, sent)) from exc


def wait_for(sock: Any, *, write: bool, timeout: Optional[float]) -> bool:
    """Whether ``sock`` becomes readable (or writable) within ``timeout`` (None: no limit).

    ``poll`` rather than ``select``: a process with thousands of connections has descriptors
    past select's FD_SETSIZE.
    """
    if sock.fileno() < 0:
        return True  # closed: any call on it fails at once, which is what the caller must see
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLOUT if write else select.POLLIN)
        return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999))))
    if write:  # pragma: no cover - platforms without poll (Windows)
        return bool(select.select([], [sock], [], timeout)[1])
    return bool(select.select([sock], [], [], timeout)[0])  # pragma: no cover


def drain(sock: socket.socket, limit: int = DRAIN_LIMIT) -> Optional[bool]:
    """Discard what the peer sent that is readable now, without blocking.

    True at end of stream; False once nothing more is readable; None when ``limit`` bytes were
    discarded and more may be waiting. Closing a socket whose receive queue holds unread bytes
    makes the kernel answer with RST instead of FIN, and a peer that sees a reset cannot tell a
    clean end from a crash. This reads the raw descriptor, beneath any TLS layer: the bytes are
    discarded anyway, and an SSL socket would refuse the non-blocking flag.
    """
    discarded = 0
    while discarded < limit:
        try:
            if not wait_for(sock, write=False, timeout=0):
                return False
            data = socket.socket.recv(sock, min(_DRAIN_CHUNK, limit - discarded), _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except (OSError, ValueError):
            return True  # reset, or closed already: nothing is left to read
        if not data:
            return True
        discarded += len(data)
    return None


def await_end_of_stream(sock: socket.socket, deadline: Optional[float]) -> bool:
    """Wait until the peer closes its side (FIN), discarding what it sends; False at the deadline."""
    while True:
        drained = drain(sock)
        if drained:
            return True
        left = remaining(deadline)
        if left == 0:
            return False
        if drained is False:
            try:
                if not wait_for(sock, write=False, timeout=left):
                    return False
            except (OSError, ValueError):
                return True


def close_without_reset(sock: socket.socket) -> None:
    """Close ``sock`` so that a peer that has stopped sending sees FIN rather than RST.

    What is readable is read first, up to :data:`DRAIN_LIMIT`. Past that the peer is still
    pushing data nobody will read, and the RST that closing with it unread sends is the right
    answer: it fails the peer's write at once, where a FIN would leave a peer blocked on our
    full receive window waiting for minutes.
    """
    try:
        drain(sock)
    finally:
        sock.close()


def _count_complete(frames: Sequence[bytes], sent: int) -> int:
    complete = 0
    end = 0
    for frame in frames:
        end += len(frame)
        if end > sent:
            break
        complete += 1
    return complete


__all__: List[str] = [
    "BorrowedSocket",
    "await_end_of_stream",
    "close_without_reset",
    "drain",
    "shutdown_quietly",
    "wait_for",
    "write_frames",
]
