"""The far end of a memory pair, driven like the public scripted peer's connections.

``MemoryPeer`` reads one end of ``memory_pair()`` in a thread of its own and offers the controls
and observations of :class:`duplexthreads.testing.PeerConnection` (``send``, ``close``,
``reset``, ``drop``, ``stop_reading``, ``go_silent``, ``received``, the waits), so that the
conformance suite drives every transport the same way. Sockets are tested against the scripted
peer itself.
"""

from __future__ import annotations

import threading
from typing import List, Optional, Tuple, Union

from duplexthreads.exceptions import TransportError
from duplexthreads.transports import CloseFrame, MemoryTransport

from .timing import UNIT

Msg = Union[str, bytes]


class _Recorder:
    """Bookkeeping shared by the peers: what arrived, under one condition variable."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.messages: List[Msg] = []
        self.close_frames: List[Tuple[int, str]] = []
        self.ended = False  # the peer's reading has stopped for good
        #: When True the peer does not answer our close frames (a silent peer).
        self.silent = False

    def _record(self, message: Msg) -> None:
        with self.cond:
            self.messages.append(message)
            self.cond.notify_all()

    def _record_close(self, code: int, reason: str) -> None:
        with self.cond:
            self.close_frames.append((code, reason))
            self.cond.notify_all()

    def _record_end(self) -> None:
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def wait_messages(self, count: int, timeout: float = 10 * UNIT) -> List[Msg]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.messages) >= count or self.ended, timeout):
                raise TimeoutError(f"peer got {len(self.messages)} of {count} messages")
            return list(self.messages)

    def wait_close_frame(self, timeout: float = 10 * UNIT) -> Tuple[int, str]:
        with self.cond:
            if not self.cond.wait_for(lambda: bool(self.close_frames) or self.ended, timeout):
                raise TimeoutError("peer got no close frame")
            if not self.close_frames:
                raise AssertionError("peer's connection ended without a close frame")
            return self.close_frames[0]

    def wait_ended(self, timeout: float = 10 * UNIT) -> bool:
        with self.cond:
            if not self.cond.wait_for(lambda: self.ended, timeout):
                raise TimeoutError("peer's connection did not end")
            return True


class MemoryPeer(_Recorder):
    """The far end of a memory pair, read by a thread of its own."""

    def __init__(self, end: MemoryTransport) -> None:
        super().__init__()
        self.end = end
        self.thread = threading.Thread(target=self._read, name="peer-memory", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while True:
                try:
                    item = self.end.recv()
                except TransportError:
                    return
                if isinstance(item, CloseFrame):
                    answer = not self.close_frames and not self.silent
                    self._record_close(item.code, item.reason)
                    if answer:
                        try:
                            self.end.send_close(item.code, item.reason)
                        except TransportError:
                            pass
                    continue  # read on to the end, so that anything sent after it is seen
                self._record(item)
        finally:
            self._record_end()

    def send(self, message: Msg) -> None:
        self.end.send_batch([message])

    def close(self, code: Optional[int] = 1000, reason: str = "") -> None:
        """Send a close frame; ``None`` sends one without a status code (reported as 1005)."""
        self.end.send_close(1005 if code is None else code, reason)

    def reset(self) -> None:
        self.end.reset()

    def drop(self) -> None:
        """End the stream without a close frame (TCP's FIN)."""
        self.end.fin()

    def go_silent(self) -> None:
        """Never answer a close frame from now on; keep reading."""
        self.silent = True

    @property
    def received(self) -> List[Msg]:
        with self.cond:
            return list(self.messages)

    def stop_reading(self) -> None:
        self.end.stop_reading()

    def stop(self) -> None:
        self.end.shutdown()
        self.thread.join(10 * UNIT)
        assert not self.thread.is_alive()
