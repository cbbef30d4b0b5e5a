"""A ``queue.Queue`` that can be sealed: the wake-up for threads blocked on either end.

Sealing replaces a stop sentinel. A sentinel needs room in a bounded queue and can be taken by
the wrong consumer; a seal cannot. Once sealed, ``put`` refuses new items (waking producers
blocked on a full queue), and ``get`` still hands out what is left, then reports the seal
(waking consumers blocked on an empty queue). Nothing that was accepted is ever dropped.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Generic, List, Optional, TypeVar

T = TypeVar("T")


class Sealed(Exception):
    """The queue is sealed: no more puts; or, for gets, sealed and empty."""


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
        # Guarded by self.mutex, like all of queue.Queue's state.
        self._sealed = False

    @property
    def sealed(self) -> bool:
        return self._sealed

    def seal(self) -> None:
        """Refuse further puts and wake every thread blocked in ``put`` or ``get``."""
        with self.mutex:
            self._sealed = True
            self.not_empty.notify_all()

    def lift_bound(self) -> None:
        """Make the queue unbounded from now on, waking producers blocked on it being full."""
        with self.mutex:
            self.maxsize = 0
            self.not_full.notify_all()

    def put(self, item: T, block: bool = True, timeout: Optional[float] = None) -> None:
        """Append ``item``; raise :class:`Sealed` once sealed, ``queue.Full`` on timeout."""
        with self.not_full:
            deadline = None if timeout is None else time.monotonic() + timeout
            # maxsize is re-read on each pass: lift_bound() may set it to 0 while we wait.
            while not self._sealed and 0 < self.maxsize <= self._qsize():
                if not block:
                    raise queue.Full
                if deadline is None:
                    self.not_full.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise queue.Full
                    self.not_full.wait(remaining)
            if self._sealed:
                raise Sealed
            self._put(item)
            self.unfinished_tasks += 1
            self.not_empty.notify_all()

    def get(self, block: bool = True, timeout: Optional[float] = None) -> T:
        """Take the oldest item; raise :class:`Sealed` once sealed and empty."""
        with self.not_empty:
            self._wait_for_item(block, timeout)
            item: T = self._get()
            self.not_full.notify_all()
            return item

    def get_batch(self, max_items: int) -> List[T]:
        """Block until at least one item is there, then take up to ``max_items`` at once.

        Returns an empty list when the queue is sealed and empty. Taking a batch under one lock
        acquisition is what lets the writer coalesce many small messages into one write.
        """
        with self.not_empty:
            try:
                self._wait_for_item(True, None)
            except Sealed:
                return []
            count = min(max_items, self._qsize())
            batch = [self._get() for _ in range(count)]
            self.not_full.notify_all()
            return batch

    def drain(self) -> List[T]:
        """Take everything left, without blocking."""
        with self.mutex:
            items = [self._get() for _ in range(self._qsize())]
            self.not_full.notify_all()
            return items

    def _wait_for_item(self, block: bool, timeout: Optional[float]) -> None:
        # Caller holds self.mutex (through self.not_empty).
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._qsize():
            if self._sealed:
                raise Sealed
            if not block:
                raise queue.Empty
            if deadline is None:
                self.not_empty.wait()
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise queue.Empty
                self.not_empty.wait(remaining)
