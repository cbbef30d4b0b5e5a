"""Waking a thread that waits on file descriptors: a socket pair that other threads, and
signals, write one byte to.

The chat's stdin worker and the serve command's main thread wait on it (with ``select()``, or as
a reader of an asyncio loop). ``wake()`` writes ``q`` when the connection has ended and ``i``
for an interrupt; :meth:`Wakeup.on_signals` has SIGINT and SIGTERM write their numbers to it.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import select
import signal
import socket
import threading
from types import FrameType
from typing import Deque, Iterator, Optional

__all__ = ["Signal", "Wakeup", "interrupting"]


class Signal(enum.Enum):
    """What a wait on the wake-up (and on stdin) reports, besides lines of input."""

    #: End of input: stdin closed, or Ctrl-D at the prompt.
    EOF = "eof"
    #: Ctrl-C (the key at the prompt, or SIGINT) or SIGTERM.
    INTERRUPT = "interrupt"
    #: The connection has ended: leave now.
    QUIT = "quit"


_BYTES = {Signal.QUIT: b"q", Signal.INTERRUPT: b"i"}
#: What Ctrl-C, SIGTERM and SIGHUP (the terminal closed) do to a chat, and the bytes that say so
#: on the wake-up socket: ours, and the signal numbers ``signal.set_wakeup_fd`` writes.
_HANGUP = getattr(signal, "SIGHUP", None)  # POSIX only
_SIGNALS = (signal.SIGINT, signal.SIGTERM, *((_HANGUP,) if _HANGUP is not None else ()))
#: The ones that stop a program, which raise KeyboardInterrupt while :func:`interrupting` holds.
_STOPPING = tuple(number for number in _SIGNALS if number != signal.SIGINT)
_INTERRUPTING = frozenset({_BYTES[Signal.INTERRUPT][0], *(int(number) for number in _SIGNALS)})


class Wakeup:
    """A self-pipe: ``wake()`` from any thread or a signal handler; the worker waits on ``fileno()``.

    A socket pair rather than os.pipe(): select() takes sockets everywhere, Windows included.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        # Neither end may ever block: a signal handler must not wait for the worker, and the
        # worker drains what is there and goes back to its wait.
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._pending: Deque[Signal] = collections.deque()

    def fileno(self) -> int:
        return self._reader.fileno()

    def wake(self, what: Signal) -> None:
        """Make the waiting thread's wait return ``what`` (QUIT or INTERRUPT); from any thread."""
        try:
            self._writer.send(_BYTES[what])
        except OSError:
            pass  # a full buffer already holds wake-ups; a closed one has no reader left

    def take(self) -> Optional[Signal]:
        """The next signal written, if any; QUIT goes ahead of everything, as nothing else matters then."""
        try:
            data = self._reader.recv(4096)
        except OSError:  # BlockingIOError: nothing written; or closed
            data = b""
        for byte in data:
            if byte == _BYTES[Signal.QUIT][0]:
                self._pending.append(Signal.QUIT)
            elif byte in _INTERRUPTING:
                self._pending.append(Signal.INTERRUPT)
        if Signal.QUIT in self._pending:
            self._pending.clear()
            return Signal.QUIT
        return self._pending.popleft() if self._pending else None

    def wait(self, timeout: Optional[float]) -> Optional[Signal]:
        """Wait for a wake-up only (stdin is not read): a signal, or None after ``timeout``."""
        pending = self.take()
        if pending is not None:
            return pending
        select.select([self._reader], [], [], timeout)
        return self.take()

    @contextlib.contextmanager
    def on_signals(self) -> Iterator[None]:
        """For the ``with`` block, SIGINT, SIGTERM and SIGHUP write to this wake-up instead of raising.

        Through ``signal.set_wakeup_fd``: the C-level handler writes the signal's number here
        in whichever thread the kernel delivered the signal to. A Python handler alone would
        run only when the main thread next runs Python code, and a main thread blocked in a
        lock (waiting for the connection to end) is interrupted only if the signal happens to
        be delivered to it, not to one of the connection's threads. Only the main thread may
        set handlers; elsewhere (the command run from a thread) the defaults stay.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {number: signal.signal(number, _ignore) for number in _SIGNALS}
        previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(previous_fd)
            for number, handler in previous.items():
                signal.signal(number, handler)

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


@contextlib.contextmanager
def interrupting() -> Iterator[None]:
    """For the ``with`` block, SIGTERM and SIGHUP raise KeyboardInterrupt as Ctrl-C does: while
    connecting, before the wake-up is in place, they give up the same way. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, _raise_interrupt) for number in _STOPPING}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _raise_interrupt(number: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt


def _ignore(number: int, frame: Optional[FrameType]) -> None:
    """The Python half of a signal that on_signals() routes to the wake-up: nothing left to do."""
