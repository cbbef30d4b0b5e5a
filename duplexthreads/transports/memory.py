"""An in-memory transport pair with injectable faults, for deterministic tests.

``memory_pair()`` returns two connected ends. Either end can be driven by a ``Duplex`` or used
directly as a scripted peer. The faults mirror what a TCP connection can do to a WebSocket:

on the end that misbehaves (acting on the connection, as a peer would):
    ``reset()``          both directions fail at once, like a TCP RST
    ``fin()``            end of stream without a close frame, like a half-close
    ``stop_reading()``   the other end's writes block, like a peer whose buffers are full
on the end under test (faults of its own I/O):
    ``fail_next_read(exc)``, ``fail_writes(exc, after=0)``, ``delay_writes(seconds)``,
    ``drop_writes()`` (writes succeed but vanish: a silent peer)

Pings are answered by the end that reads them, inside ``recv()``, as a peer's reading thread
answers them; ``ignore_pings()`` makes an end leave them unanswered (a peer gone silent). A
pong is handed to the receiving end's ``on_pong`` and never returned by ``recv()``.

Everything waits on one condition variable, so ``shutdown()`` wakes every blocked call at once,
exactly as ``shutdown(SHUT_RDWR)`` does on a socket. Nothing polls.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Deque, Optional, Sequence, Tuple, Union

from ..exceptions import TransportError
from ..report import Message
from .base import CloseFrame, TimeoutWriteError, Transport, WriteError, WriteTimeoutError

__all__ = ["MemoryTransport", "memory_pair"]


@dataclass(frozen=True)
class _Ping:
    payload: bytes


@dataclass(frozen=True)
class _Pong:
    payload: bytes


Item = Union[Message, CloseFrame]
_Frame = Union[Message, CloseFrame, _Ping, _Pong]


class MemoryTransport(Transport):
    """One end of an in-memory WebSocket connection."""

    backend = "memory"

    def __init__(self, condition: threading.Condition) -> None:
        super().__init__()
        # One condition for the whole pair: every state change below happens under it and
        # notifies all waiters on both ends.
        self._cond = condition
        self._peer: Optional[MemoryTransport] = None
        self._inbox: Deque[_Frame] = deque()
        self._eof = False  # the peer will send nothing more
        self._reset: Optional[BaseException] = None  # the connection was reset: all I/O fails
        self._shut = False  # shutdown() was called on this end
        self._closed = False
        self._read_fault: Optional[BaseException] = None
        self._write_fault: Optional[BaseException] = None
        self._write_fault_after = 0
        self._writes_hang = False
        self._writes_dropped = False
        self._write_delay = 0.0
        self._answers_pings = True
        #: How many times close() was called (promise P2 says exactly once).
        self.close_calls = 0

    @property
    def peer(self) -> MemoryTransport:
        assert self._peer is not None, "a MemoryTransport is made by memory_pair()"
        return self._peer

    # -- Transport -----------------------------------------------------------------------------

    def recv(self) -> Item:
        with self._cond:
            while True:
                self._raise_if_broken()
                if self._read_fault is not None:
                    fault, self._read_fault = self._read_fault, None
                    raise TransportError(f"read failed: {fault!r}") from fault
                if self._inbox:
                    item = self._inbox.popleft()
                    self.heard_at = time.monotonic()
                    if isinstance(item, _Ping):
                        if self._answers_pings and not self.peer._closed:
                            self.peer._inbox.append(_Pong(item.payload))
                            self._cond.notify_all()
                        continue
                    if isinstance(item, _Pong):
                        on_pong = self.on_pong
                        if on_pong is not None:
                            on_pong(item.payload)
                        continue
                    return item
                if self._eof:
                    raise TransportError("connection lost: end of stream without a close frame")
                self._cond.wait()

    def send_batch(self, messages: Sequence[Message]) -> None:
        self._deliver(list(messages))

    #: Direct writes are on, so the unit tests exercise them with every fault.
    direct_writes = True

    def send_now(self, message: Message) -> Optional[object]:
        with self._cond:
            if self._writes_hang or self._write_delay or self._write_fault is not None:
                return message  # it would block or fail: leave it whole to the writer
            try:
                self._deliver([message])
            except TransportError:
                return message  # the writer meets the failure and reports it
        return None

    def send_rest(self, rest: object) -> None:
        self._deliver([rest])

    def send_close(self, code: int, reason: str, timeout: Optional[float] = None) -> None:
        self._deliver([CloseFrame(code, reason)], timeout)

    def send_ping(self, payload: bytes, timeout: Optional[float]) -> None:
        self._deliver([_Ping(bytes(payload))], timeout, control=True)

    def shutdown(self) -> None:
        with self._cond:
            self._shut = True
            # Like a socket's SHUT_RDWR, the peer sees end of stream after what it has.
            self.peer._eof = True
            self._cond.notify_all()

    def close(self, timeout: Optional[float] = None, *, clean: bool = False) -> None:
        with self._cond:
            self.close_calls += 1
            self._closed = True
        self.shutdown()

    # -- faults, acting on the connection as a misbehaving peer would ---------------------------

    def reset(self) -> None:
        """Reset the connection: both ends' reads and writes fail from now on."""
        with self._cond:
            error = ConnectionResetError("connection reset by peer")
            self._reset = error
            self.peer._reset = error
            self._cond.notify_all()

    def fin(self) -> None:
        """Send end of stream without a close frame: the other end reads EOF after its inbox."""
        with self._cond:
            self.peer._eof = True
            self._cond.notify_all()

    def stop_reading(self) -> None:
        """Stop reading: the other end's next writes block until it is shut down."""
        with self._cond:
            self.peer._writes_hang = True

    # -- faults of this end's own I/O ------------------------------------------------------------

    def fail_next_read(self, error: BaseException) -> None:
        with self._cond:
            self._read_fault = error
            self._cond.notify_all()

    def fail_writes(self, error: BaseException, after: int = 0) -> None:
        """Make writing fail once ``after`` more messages have gone through."""
        with self._cond:
            self._write_fault = error
            self._write_fault_after = after

    def delay_writes(self, seconds: float) -> None:
        with self._cond:
            self._write_delay = seconds

    def ignore_pings(self) -> None:
        """Leave the other end's pings unanswered from now on (a peer, or a path, gone silent)."""
        with self._cond:
            self._answers_pings = False

    def drop_writes(self) -> None:
        """Writes succeed but never arrive (a silent peer, or a black hole in the network)."""
        with self._cond:
            self._writes_dropped = True

    # -- inspection -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    # -- internals --------------------------------------------------------------------------------

    def _raise_if_broken(self, written: Optional[int] = None) -> None:
        # Caller holds self._cond.
        if self._shut or self._closed:
            error: TransportError = TransportError("transport shut down")
            if written is not None:
                error = WriteError("transport shut down", written)
            raise error
        if self._reset is not None:
            if written is not None:
                raise WriteError("connection reset by peer", written) from self._reset
            raise TransportError("connection reset by peer") from self._reset

    def _deliver(self, items: list, timeout: Optional[float] = None, control: bool = False) -> None:  # type: ignore[type-arg]
        """Hand ``items`` to the peer, or fail as the injected faults say.

        ``timeout`` bounds a write the owner makes (a close frame); ``write_timeout`` bounds the
        others. ``control`` frames (pings) go around the injected write faults and delays.
        """
        with self._cond:
            if self._write_delay and not control:
                # The delay is a fault injected into the transport; shutdown still cuts it short.
                self._cond.wait_for(lambda: self._shut or self._reset is not None, self._write_delay)
            self._raise_if_broken(written=0)
            if self._writes_hang:
                # Like a write into a full TCP window: only shutdown or reset ends it.
                broken = lambda: self._shut or self._closed or self._reset is not None  # noqa: E731
                limit = timeout if timeout is not None else self.write_timeout
                if not self._cond.wait_for(broken, limit):
                    if timeout is None:
                        raise WriteTimeoutError(
                            f"write timed out: no progress for {limit} s (the peer is not reading)", 0
                        )
                    raise TimeoutWriteError("write timed out: the peer is not reading", 0)
                self._raise_if_broken(written=0)
            if self._write_fault is not None and not control:
                if len(items) <= self._write_fault_after:
                    self._write_fault_after -= len(items)
                else:
                    written = self._write_fault_after
                    self._accept(items[:written])
                    fault, self._write_fault = self._write_fault, None
                    raise WriteError(f"write failed: {fault!r}", written) from fault
            if self.peer._closed or self.peer._shut:
                raise WriteError("broken pipe: the peer has closed", 0) from BrokenPipeError()
            self._accept(items)

    def _accept(self, items: list) -> None:  # type: ignore[type-arg]
        if not self._writes_dropped:
            self.peer._inbox.extend(items)
        self._cond.notify_all()


def memory_pair() -> Tuple[MemoryTransport, MemoryTransport]:
    """Two connected in-memory transports: what one sends, the other receives."""
    condition = threading.Condition()
    first = MemoryTransport(condition)
    second = MemoryTransport(condition)
    first._peer = second
    second._peer = first
    return first, second
