"""A ``queue.Queue`` that can be sealed: the wake-up for threads blocked on either end.

Sealing replaces a stop sentinel. A sentinel needs room in a bounded queue and can be taken by
the wrong consumer; a seal cannot. Once sealed, ``put`` refuses new items (waking producers
blocked on a full queue), and ``get`` still hands out what is left, then reports the seal
(waking consumers blocked on an empty queue). Nothing that was accepted is ever dropped.

The outbound queue also keeps the writer's hand-over honest: :meth:`SealableQueue.get_batch`
marks the consumer busy under the queue's own lock, and :meth:`SealableQueue.stop` seals and
reads that mark under the same lock. So whoever stops the queue knows for certain whether the
writer may be inside a write, with no window in between (see ``_protocol.py``, step 2).

The same lock lets a producer write past the queue (``send()`` writing in the caller's thread):
:meth:`SealableQueue.claim_direct` succeeds only while the queue is empty and nobody is writing,
so every message accepted earlier is already out and order holds; until
:meth:`SealableQueue.release_direct`, the consumer takes nothing. What the direct write could
not finish goes back to the head of the queue as :class:`Resume`, for the writer to complete.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Generic, List, Optional, Tuple, TypeVar

T = TypeVar("T")


class Sealed(Exception):
    """The queue is sealed: no more puts; or, for gets, sealed and empty."""


class Resume:
    """A message whose frame a direct write began: ``rest`` is what remains to be written.

    ``rest`` is the transport's own (the unwritten bytes of the frame, say), or None when
    nothing is known to have been written and the message is to be sent whole.
    """

    __slots__ = ("message", "rest")

    def __init__(self, message: Any, rest: object) -> None:
        self.message = message
        self.rest = rest


def message_of(item: Any) -> Any:
    """The application's message behind an outbound item."""
    return item.message if isinstance(item, Resume) else item


class SealableQueue(queue.Queue, Generic[T]):  # type: ignore[type-arg]
    """FIFO queue with ``seal()``; ``maxsize <= 0`` means unbounded, as in ``queue.Queue``."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        # One condition for every kind of waiter instead of queue.Queue's three: a connection
        # has one producer and one consumer per queue, and at thousands of connections each
        # condition's lock and waiter list shows in the memory per connection. Sharing it means
        # waking with notify_all, so a producer can never swallow a consumer's wake-up.
        shared = threading.Condition(self.mutex)
        self.not_empty = self.not_full = self.all_tasks_done = shared
        # All below are guarded by self.mutex, like queue.Queue's own state.
        self._sealed = False
        # Sealed for good: the consumer takes nothing more, what is left stays for drain().
        self._stopped = False
        # What the consumer must do once a sealed queue runs dry (the writer: our close frame).
        self._then_close: Optional[Tuple[int, str]] = None
        # True from the moment get_batch() hands over work until batch_done(): the consumer
        # may be inside a write.
        self._busy = False
        # True while a producer writes past the queue (claim_direct() to release_direct()).
        self._direct = False
        # Whether a producer may write past the queue: from allow_direct() (the consumer is
        # running) until retire() (it left for good without being stopped).
        self._direct_allowed = False
        # Messages written completely by direct writes.
        self.direct_written = 0
        # Threads in wait_direct_done(): release_direct() must wake them.
        self._direct_watchers = 0
        # From discard_when_full(): put() drops what finds the queue full instead of waiting.
        self._discarding = False
        # How many items put() dropped that way.
        self.discarded = 0

    @property
    def sealed(self) -> bool:
        return self._sealed

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def then_close(self) -> Optional[Tuple[int, str]]:
        """The close frame to send after the last item, given to :meth:`seal`."""
        return self._then_close

    def seal(self, then_close: Optional[Tuple[int, str]] = None) -> None:
        """Refuse further puts and wake every thread blocked in ``put`` or ``get``.

        ``then_close`` (code, reason) asks the consumer of ``get_batch`` to send that close frame
        once everything accepted before the seal is out: a graceful close.
        """
        with self.mutex:
            self._sealed = True
            if then_close is not None and self._then_close is None:
                self._then_close = then_close
            self.not_empty.notify_all()

    def stop(self) -> bool:
        """Seal for good: ``get_batch`` hands out nothing more. Return whether the consumer was busy.

        Read under the lock ``get_batch`` marks busy under: if this returns False, the consumer
        is not in a write and will not start one.
        """
        with self.mutex:
            self._sealed = self._stopped = True
            self.not_empty.notify_all()
            return self._busy

    @property
    def writing_directly(self) -> bool:
        return self._direct

    def claim_direct(self) -> bool:
        """Take the right to write one message past the queue: only while it is empty, open,
        and nobody is writing. The consumer then waits until :meth:`release_direct`."""
        with self.mutex:
            if self._direct or self._busy or self._sealed or not self._direct_allowed or self._qsize():
                return False
            self._direct = True
            return True

    def release_direct(self, message: T, rest: object, complete: bool) -> None:
        """End a direct write: ``complete``, or what is left of ``message`` to the writer first."""
        with self.mutex:
            self._direct = False
            if complete:
                self.direct_written += 1
            else:
                # At the head, whatever the bound: it was accepted before anything queued since.
                self.queue.appendleft(Resume(message, rest))
                self.unfinished_tasks += 1
            # Wake only a waiter with something to do now: the consumer, if items wait or the
            # queue was sealed, or wait_direct_done(). Waking an idle consumer after every
            # direct write costs a thread switch per message (a third of one-way throughput).
            if self._qsize() or self._sealed or self._direct_watchers:
                self.not_empty.notify_all()

    def end_direct_close(self, sent: bool) -> None:
        """End a direct write of our close frame (no message): ``sent``, or not even begun.

        Once the close frame is out nothing may follow it, so the queue is sealed and the
        consumer takes nothing more; it is not woken for that (the owner stops it later), which
        spares a thread wake-up per connection when thousands close at once. Messages queued
        meanwhile stay for drain(). Not sent: the consumer is woken to carry on as usual.
        """
        with self.mutex:
            self._direct = False
            if sent:
                self._sealed = self._stopped = True
            else:
                self.not_empty.notify_all()

    def wait_direct_done(self, timeout: Optional[float]) -> bool:
        """Wait until no direct write is under way; False if one still is after ``timeout``."""
        with self.mutex:
            self._direct_watchers += 1
            try:
                return self.not_empty.wait_for(lambda: not self._direct, timeout)
            finally:
                self._direct_watchers -= 1

    def partial_frame_pending(self) -> bool:
        """Whether a direct write left part of a frame on the wire that nobody finished."""
        with self.mutex:
            head = self.queue[0] if self._qsize() else None
            return isinstance(head, Resume) and head.rest is not None

    def allow_direct(self) -> None:
        """The consumer is starting: producers may write past the queue while it is idle."""
        with self.mutex:
            self._direct_allowed = True

    def retire(self) -> None:
        """The consumer leaves for good, not busy, and nobody may write past it any more."""
        with self.mutex:
            self._busy = False
            self._direct_allowed = False
            self.not_empty.notify_all()

    def discard_when_full(self) -> None:
        """From now on, put() drops (and counts) an item that finds the queue full, never waits.

        Producers already waiting for room are woken to drop theirs.
        """
        with self.mutex:
            self._discarding = True
            self.not_full.notify_all()

    def put(self, item: T, block: bool = True, timeout: Optional[float] = None) -> None:
        """Append ``item``; raise :class:`Sealed` once sealed, ``queue.Full`` on timeout.

        After :meth:`discard_when_full`, an item that finds the queue full is counted in
        ``discarded`` and dropped.
        """
        with self.not_full:
            # One check on the common path (room); the rest only when the queue is full.
            if not self._has_room():
                if not self._discarding:
                    if not block:
                        raise queue.Full
                    if not self.not_full.wait_for(self._has_room_or_discarding, timeout):
                        raise queue.Full
                if not self._has_room():  # still full (a seal makes room): dropped, counted
                    self.discarded += 1
                    return
            if self._sealed:
                raise Sealed
            self._put(item)
            self.unfinished_tasks += 1
            self.not_empty.notify_all()

    def get(self, block: bool = True, timeout: Optional[float] = None) -> T:
        """Take the oldest item; raise :class:`Sealed` once sealed and empty."""
        with self.not_empty:
            if not self._qsize():
                if not block:
                    if self._sealed:
                        raise Sealed
                    raise queue.Empty
                if not self.not_empty.wait_for(self._item_or_seal, timeout):
                    raise queue.Empty
                if not self._qsize():
                    raise Sealed
            item: T = self._get()
            self.not_full.notify_all()
            return item

    def get_batch(self, max_items: int) -> List[T]:
        """Block until there is work, then take up to ``max_items`` at once and mark us busy.

        Returns an empty list when the queue is sealed and empty, or stopped; the consumer is
        then busy only if a close frame remains to be sent (``then_close``, not stopped).
        Taking a batch under one lock acquisition is what lets the writer coalesce many small
        messages into one write.
        """
        with self.not_empty:
            self._busy = False
            self.not_empty.wait_for(self._work_or_stop)
            if self._stopped:
                return []
            count = min(max_items, self._qsize())
            batch = [self._get() for _ in range(count)]
            self._busy = bool(batch) or self._then_close is not None
            if batch:
                self.not_full.notify_all()
            return batch

    def batch_done(self) -> None:
        """The consumer finished its write: it is not busy until its next ``get_batch``."""
        with self.mutex:
            self._busy = False

    def drain(self) -> List[T]:
        """Take every message left, without blocking."""
        with self.mutex:
            items = [message_of(self._get()) for _ in range(self._qsize())]
            self.not_full.notify_all()
            return items

    # Predicates for Condition.wait_for; called with self.mutex held.

    def _has_room(self) -> bool:
        assert self.mutex.locked()
        return self._sealed or not 0 < self.maxsize <= self._qsize()

    def _has_room_or_discarding(self) -> bool:
        assert self.mutex.locked()
        return self._discarding or self._has_room()

    def _item_or_seal(self) -> bool:
        assert self.mutex.locked()
        return self._sealed or bool(self._qsize())

    def _work_or_stop(self) -> bool:
        assert self.mutex.locked()
        return self._stopped or (not self._direct and (self._sealed or bool(self._qsize())))


__all__ = ["Resume", "SealableQueue", "Sealed", "message_of"]
