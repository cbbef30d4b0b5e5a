"""Socket helpers shared by the socket-backed transports."""

from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
import time
from typing import Any, Callable, List, Optional, Sequence

from .._deadline import remaining
from .base import TimeoutWriteError, WriteError, WriteTimeoutError

#: Bytes read at a time when discarding what the peer sent after the end.
_DRAIN_CHUNK = 16384
#: At most this much is discarded before a close; see close_without_reset.
DRAIN_LIMIT = 16384

# Sends that must never block: a plain socket takes the flag; an SSL socket refuses flags, so it
# relies on the poll for writability alone (a close frame is one small record, which fits once
# the socket reports room).
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)

#: Most bytes handed to an SSL socket at once (it takes no non-blocking flag): one TLS record,
#: sent only after a poll reported room, so that a send blocks little if at all.
_TLS_RECORD = 16384

#: A send queue holding more than this many bytes is a backlog: see SocketWriter.last_progress.
BACKLOG = 65536

#: Where struct tcp_info (linux/tcp.h) keeps tcpi_bytes_acked, and how much of it to read.
_BYTES_ACKED_OFFSET = 120
_TCP_INFO_SIZE = 192

#: The longest wait poll() takes, in milliseconds.
_POLL_MAX_MS = 2**31 - 1


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


def write_frames(
    sock: Any,
    frames: Sequence[bytes],
    deadline: Optional[float] = None,
    stall_timeout: Optional[float] = None,
    waits: Optional[SocketWriter] = None,
) -> None:
    """Write ``frames`` back to back, raising :class:`WriteError` with the count fully written.

    ``sendall`` cannot say how far it got before an error; sending in a loop can, and that is
    what lets the exit report account for every message (promise P4). With a ``deadline`` no
    call blocks past it: when it passes, :class:`TimeoutWriteError` says so. A small
    frame (a close frame: at most 131 bytes) is then written whole or not at all: nothing is
    sent before the socket reports room, and room on a TCP socket is far more than that.

    Otherwise each send takes what the socket has room for without blocking, and when it has
    none the write waits for room in ``poll``, which shutdown() ends. ``stall_timeout`` (the
    connection's ``write_timeout``) bounds each such wait: a write that makes no progress for
    that long fails with :class:`WriteTimeoutError`. ``waits`` is told when such a wait begins
    and ends (see :meth:`SocketWriter.last_progress`).
    """
    data = frames[0] if len(frames) == 1 else b"".join(frames)
    view = memoryview(data)
    sent = 0
    total = len(data)
    try:
        while sent < total:
            if deadline is not None:
                if not wait_for(sock, write=True, timeout=remaining(deadline)):
                    raise _OutOfTime()
                sent += _send_without_blocking(sock, view[sent:])
                continue
            taken = _send_if_room(sock, view[sent:])
            if taken:
                sent += taken
                continue
            if waits is not None:
                waits.waiting_for_room = waits.waited_for_room = True
            try:
                if not wait_for(sock, write=True, timeout=stall_timeout):
                    raise _Stalled()
            finally:
                if waits is not None:
                    waits.waiting_for_room = False
            if waits is not None:
                waits.room_came()
    except _OutOfTime:
        raise TimeoutWriteError(
            "the peer is not reading: the write did not finish in time", _count_complete(frames, sent)
        ) from None
    except _Stalled:
        raise WriteTimeoutError(
            f"write timed out: no progress for {stall_timeout} s (the peer is not reading)",
            _count_complete(frames, sent),
        ) from None
    except (OSError, ValueError) as exc:
        raise WriteError(f"write failed: {exc!r}", _count_complete(frames, sent)) from exc


class _OutOfTime(Exception):
    """A write with a deadline found no room before it (turned into TimeoutWriteError)."""


class _Stalled(Exception):
    """A write under a stall timeout found no room in time (turned into WriteTimeoutError)."""


def _send_without_blocking(sock: Any, data: memoryview) -> int:
    """Send what the socket takes now; call only once a poll reported room."""
    if isinstance(sock, ssl.SSLSocket):
        return int(sock.send(data[:_TLS_RECORD]))
    try:
        return int(sock.send(data, _DONTWAIT))
    except BlockingIOError:
        return 0  # the room the poll saw was taken; poll again


def _send_if_room(sock: Any, data: memoryview) -> int:
    """Send what the socket takes now without blocking; 0 when it has no room."""
    if isinstance(sock, ssl.SSLSocket) or not _DONTWAIT:
        # No non-blocking flag there: look for room first; one record then never blocks long.
        if not wait_for(sock, write=True, timeout=0):
            return 0
    return _send_without_blocking(sock, data)


#: How long a control frame with a deadline (a ping) may wait for another write to finish,
#: even with a deadline of 0 (a heartbeat ping): long enough for a pong the reader is writing
#: at that instant, short enough that a write stuck on a dead peer costs nothing. Two peers
#: with the same ping interval ping each other at the same moments; a heartbeat ping that
#: gave up whenever it met our reader writing the pong to the peer's left an idle connection
#: with no sign of life until the peer's next ping, which raced the verdict, and a live
#: connection ended with a heartbeat timeout.
CONTROL_LOCK_WAIT = 0.1


class SocketWriter:
    """Every write on one socket, whole frames only, whichever thread writes.

    Four kinds of writer share a socket: the writer thread's batches, ``send()`` writing
    directly (:meth:`write_now`, which never blocks), the owner's close frame, and the reader's
    pongs. One lock keeps their frames from interleaving, and it is held only for a write, never
    across threads. The one write that can stop mid-frame is a direct write the socket took only
    part of; then the frame is *half written* until the writer thread completes it
    (:meth:`finish`), and a pong arriving meanwhile waits in a list instead of landing inside it.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # Serialises writes; held for one write at a time, never while waiting for anything else.
        self.lock = threading.Lock()
        # A frame write_now() began and finish() has not completed (guarded by the lock).
        self._half_written = False
        # Pongs that came while a frame was half written, sent right after it (guarded by the lock).
        self._deferred: List[bytes] = []
        #: Whether write_now() can work: a plain socket takes MSG_DONTWAIT; an SSL socket refuses
        #: flags and may need to write when asked to read, so it always goes through the writer.
        self.can_write_now = bool(_DONTWAIT) and not isinstance(sock, ssl.SSLSocket)
        #: The connection's write_timeout: how long a blocking write may go without progress.
        self.stall_timeout: Optional[float] = None
        #: When the peer last took data we were waiting to send; see last_progress().
        self.progress_at = 0.0
        # Set by the writing thread around its waits for room; read by the heartbeat.
        self.waiting_for_room = False
        self.waited_for_room = False  # since the heartbeat last looked
        self._bytes_acked: Optional[int] = None  # what the heartbeat saw last time
        self._backlogged = False  # whether the send queue held a backlog last time

    @property
    def half_written(self) -> bool:
        """Whether a frame write_now() began is waiting for finish(); read with the lock held."""
        assert self.lock.locked()
        return self._half_written

    def write(self, frames: Sequence[bytes], deadline: Optional[float] = None) -> None:
        """Write whole frames, blocking (until ``deadline``, if given); see :func:`write_frames`."""
        # A pong stuck on a peer that stopped reading holds the lock; a bounded write must not
        # wait for it past its own deadline.
        wait = -1.0 if deadline is None else (remaining(deadline) or 0.0)
        if not self.lock.acquire(timeout=wait):
            raise TimeoutWriteError("the write did not start in time: another write is stuck", 0)
        try:
            if self._half_written:
                raise WriteError("a frame is half written: it must be finished first", 0)
            write_frames(self.sock, frames, deadline, self.stall_timeout, self)
        finally:
            self.lock.release()

    def room_came(self) -> None:
        """A write found room after waiting for it: the peer acknowledged data."""
        self.progress_at = time.monotonic()

    def last_progress(self) -> float:
        """When the peer last took data that a write was waiting to send (heartbeat thread only).

        Room in a full send buffer comes back only as the peer acknowledges data, so a write
        that waited and went on proves the peer is there. But poll() reports room only once a
        third of the buffer is free, and a ping waits behind everything the kernel still holds:
        on a slow path with megabytes of buffer either can take longer than a ping timeout. So
        on Linux the TCP counter of acknowledged bytes is read too, and any growth counts while
        a backlog of ours is waiting: a write waited for room, or the send queue holds more
        than :data:`BACKLOG` bytes. Acknowledgements of a few small frames prove nothing about
        the peer's application (a hung process's kernel acknowledges our pings), so they do
        not count; a hung peer stops acknowledging once its receive buffer is full.
        """
        acked = bytes_acked(self.sock)
        queued = bytes_queued(self.sock)
        backlogged = self.waited_for_room or (queued is not None and queued > BACKLOG)
        if acked is not None:
            grew = self._bytes_acked is not None and acked > self._bytes_acked
            if grew and (backlogged or self._backlogged):
                self.progress_at = time.monotonic()
            self._bytes_acked = acked
        self._backlogged = backlogged
        self.waited_for_room = self.waiting_for_room
        return self.progress_at

    def write_control(self, frame: bytes, deadline: Optional[float] = None) -> None:
        """Write a control frame (a pong, a ping) now, or right after a half-written frame.

        With a ``deadline`` (a ping) it gives up, writing nothing, when the socket has no room
        for it by then, or another write holds the socket past it and past
        ``CONTROL_LOCK_WAIT``: :class:`TimeoutWriteError`.
        """
        wait = -1.0 if deadline is None else max(remaining(deadline) or 0.0, CONTROL_LOCK_WAIT)
        if not self.lock.acquire(timeout=wait):
            raise TimeoutWriteError("the control frame could not go in time: another write is stuck", 0)
        try:
            if self._half_written:
                self._deferred.append(frame)
                return
            write_frames(self.sock, [frame], deadline, self.stall_timeout)
        finally:
            self.lock.release()

    def write_now(self, frame: bytes, may_start: Optional[Callable[[], bool]] = None) -> Optional[bytes]:
        """Write what the socket takes at once, without blocking; return the rest, or None.

        The whole frame comes back when nothing could be written: another write holds the lock,
        the socket has no room, it failed (the writer thread meets the failure itself), or
        ``may_start()``, asked with the lock held, says no frame may go out any more.
        """
        if not self.lock.acquire(blocking=False):
            return frame
        try:
            if self._half_written or (may_start is not None and not may_start()):
                return frame
            try:
                sent = self.sock.send(frame, _DONTWAIT)
            except (OSError, ValueError):  # BlockingIOError: no room; anything else: failing
                return frame
            if sent >= len(frame):
                return None
            self._half_written = sent > 0
            return frame[sent:]
        finally:
            self.lock.release()

    def finish(self, rest: bytes) -> None:
        """The writer thread completes what :meth:`write_now` began; :class:`WriteError` if it cannot."""
        with self.lock:
            try:
                write_frames(self.sock, [rest], stall_timeout=self.stall_timeout, waits=self)
            finally:
                self._half_written = False
            deferred, self._deferred = self._deferred, []
            if deferred:
                try:
                    write_frames(self.sock, deferred, stall_timeout=self.stall_timeout)
                except WriteError:
                    pass  # the message is out; the reader meets the failure and reports it


def bytes_acked(sock: Any) -> Optional[int]:
    """How many bytes the peer has acknowledged on this TCP socket, or None where unknown.

    Read from Linux's ``TCP_INFO`` (``tcpi_bytes_acked``, Linux 4.1 and later).
    """
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, _TCP_INFO_SIZE)
    except (OSError, ValueError):
        return None
    if len(info) < _BYTES_ACKED_OFFSET + 8:
        return None
    return int(struct.unpack_from("Q", info, _BYTES_ACKED_OFFSET)[0])


def bytes_queued(sock: Any) -> Optional[int]:
    """Bytes in the socket's send queue, not yet acknowledged by the peer (Linux), or None."""
    try:
        import fcntl
        import termios
    except ImportError:  # pragma: no cover - not POSIX
        return None
    try:
        answer = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return None
    return int(struct.unpack("i", answer)[0])


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
        if timeout is None:
            return bool(poller.poll(None))
        # poll() takes at most INT_MAX milliseconds (24.8 days): wait longer in several goes.
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            if poller.poll(min(_POLL_MAX_MS, int(left * 1000 + 0.999))):
                return True
            if left * 1000 <= _POLL_MAX_MS:
                return False
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
    "SocketWriter",
    "await_end_of_stream",
    "close_without_reset",
    "drain",
    "shutdown_quietly",
    "wait_for",
    "write_frames",
]
