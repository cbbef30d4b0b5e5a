"""The far end of an in-memory connection, for tests that need no socket at all."""

from __future__ import annotations

import threading
from typing import List, Optional, Tuple, Union, cast

from ..exceptions import TransportError
from ..transports import CloseFrame, MemoryTransport
from ._behaviour import check_close, check_message
from ._checks import check_seconds, check_wait, check_whole
from ._record import Record

Message = Union[str, bytes]

#: The default bound, in seconds, on the waits and on stop().
DEFAULT_TIMEOUT = 10.0


class MemoryPeer:
    """Reads one end of :func:`duplexthreads.transports.memory_pair` in a thread of its own.

    It records what arrives and answers the first close frame, unless it sent one itself or was
    told to go silent. Its controls and waits are those of :class:`PeerConnection`, so a test can
    drive a memory connection and a socket one the same way.
    """

    def __init__(self, end: MemoryTransport, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not isinstance(end, MemoryTransport):
            raise TypeError(f"end must be a MemoryTransport, not {type(end).__name__}")
        self.end = end
        self.timeout = check_seconds("timeout", timeout)
        # What it saw, and the waits on it: the scripted peer's record of a connection.
        self._record = Record(self.timeout)
        # Guarded by the record's lock, like what it saw.
        self._silent = False
        self._close_sent = False
        self.thread = threading.Thread(target=self._read, name="memory-peer", daemon=True)
        self.thread.start()

    # -- what it saw --------------------------------------------------------------------------

    @property
    def received(self) -> List[Message]:
        """The messages received so far, in order."""
        return cast(List[Message], self._record.observe("received"))

    @property
    def close_frames(self) -> List[Tuple[int, str]]:
        """The close frames received so far, as (code, reason); an empty payload reads as 1005."""
        return cast(List[Tuple[int, str]], self._record.observe("close_frames"))

    @property
    def ended(self) -> bool:
        """True once the stream has ended and the peer has stopped reading."""
        return bool(self._record.observe("ended"))

    def wait_messages(self, count: int, timeout: Optional[float] = None) -> List[Message]:
        """Wait until ``count`` messages have arrived and return all of them."""
        check_whole("count", count, minimum=0)
        return self._record.wait_messages(count, check_wait("timeout", timeout))

    def wait_close_frame(self, timeout: Optional[float] = None) -> Tuple[int, str]:
        """Wait for the first close frame and return its (code, reason)."""
        return cast(Tuple[int, str], self._record.wait_close_frame(check_wait("timeout", timeout)))

    def wait_ended(self, timeout: Optional[float] = None) -> bool:
        """Wait until the stream has ended; return True (``TimeoutError`` if it did not)."""
        seconds = check_wait("timeout", timeout)
        if not self._record.wait_ended(seconds):
            waited = self.timeout if seconds is None else seconds
            raise TimeoutError(f"the memory peer's stream did not end in {waited:g} s")
        return True

    # -- controls ------------------------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Send one message: str as text, bytes as binary."""
        check_message(message)
        self.end.send_batch([bytes(message) if isinstance(message, (bytearray, memoryview)) else message])

    def close(self, code: Optional[int] = 1000, reason: str = "") -> None:
        """Send a close frame; ``None`` stands for an empty payload, which the receiver reads as 1005."""
        check_close(code, reason)
        with self._record.cond:
            self._close_sent = True
        self.end.send_close(1005 if code is None else code, reason)

    def reset(self) -> None:
        """End the stream abruptly, like a TCP reset."""
        self.end.reset()

    def drop(self) -> None:
        """End the stream without a close frame, like TCP's FIN."""
        self.end.fin()

    def stop_reading(self) -> None:
        """Take nothing more from the stream: the other side's writes block once it is full."""
        self.end.stop_reading()

    def go_silent(self) -> None:
        """Never answer a close frame or a ping from now on; keep reading."""
        with self._record.cond:
            self._silent = True
        self.end.ignore_pings()

    def stop(self) -> None:
        """End the stream and wait, bounded by the peer's timeout, for the reading thread to end."""
        self.end.shutdown()
        self.thread.join(self.timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"the memory peer's thread did not end within {self.timeout} s")

    # -- the reading thread --------------------------------------------------------------------

    def _read(self) -> None:
        record = self._record
        try:
            while True:
                try:
                    item = self.end.recv()
                except TransportError:
                    return
                answer = False
                if isinstance(item, CloseFrame):
                    with record.cond:  # one decision with the frames it saw and the flags
                        answer = not (record.observe("close_frames") or self._close_sent or self._silent)
                        record.append("close_frames", (item.code, item.reason))
                    if answer:
                        try:
                            self.end.send_close(item.code, item.reason)
                        except TransportError:
                            pass
                else:
                    record.append("received", item)
                # After a close frame read on to the end, so that anything sent after it is seen.
        finally:
            record.set(ended=True, ended_by="eof")
