"""SealableQueue: FIFO order, bounded puts, and sealing as the wake-up for both ends."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Iterator, List, Optional

import pytest

from duplexthreads._queues import SealableQueue, Sealed

from ..timing import UNIT

pytestmark = pytest.mark.timeout(30 * UNIT)

#: Bound for something that must happen; generous, it is only spent when a test fails.
WAIT = 5 * UNIT
#: A wait that is expected to run out.
SHORT = 0.05 * UNIT


class BlockingCall:
    """Runs one blocking queue call in a thread of its own and records how it ended."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(call,), name="unit-blocking-call")
        self.thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as exc:  # noqa: BLE001 - recorded for the test to assert on
            self.error = exc
        finally:
            self.finished.set()

    def assert_blocked(self) -> None:
        assert not self.finished.wait(SHORT), "the call returned instead of blocking"

    def join(self) -> None:
        assert self.finished.wait(WAIT), "the call is still blocked"
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


@pytest.fixture
def calls() -> Iterator[List[BlockingCall]]:
    """Blocking calls started by a test; joined at teardown even if the test failed."""
    started: List[BlockingCall] = []
    yield started
    for call in started:
        call.join()


def start_call(calls: List[BlockingCall], call: Callable[[], Any]) -> BlockingCall:
    blocking = BlockingCall(call)
    calls.append(blocking)
    return blocking


def test_items_come_out_in_the_order_they_went_in() -> None:
    q: SealableQueue[int] = SealableQueue()
    for item in range(10):
        q.put(item)
    assert [q.get(timeout=WAIT) for _ in range(10)] == list(range(10))


def test_get_times_out_with_queue_empty() -> None:
    q: SealableQueue[int] = SealableQueue()
    with pytest.raises(queue.Empty):
        q.get(timeout=SHORT)
    with pytest.raises(queue.Empty):
        q.get(block=False)


def test_bounded_put_blocks_then_times_out_with_queue_full() -> None:
    q: SealableQueue[str] = SealableQueue(2)
    q.put("a")
    q.put("b")
    started = time.monotonic()
    with pytest.raises(queue.Full):
        q.put("c", timeout=SHORT)
    assert time.monotonic() - started >= SHORT  # it waited for room before giving up
    with pytest.raises(queue.Full):
        q.put("c", block=False)
    assert q.drain() == ["a", "b"]  # the refused item was not added


def test_bounded_put_proceeds_once_a_get_makes_room(calls: List[BlockingCall]) -> None:
    q: SealableQueue[str] = SealableQueue(1)
    q.put("a")
    put = start_call(calls, lambda: q.put("b", timeout=WAIT))
    put.assert_blocked()
    assert q.get(timeout=WAIT) == "a"
    put.join()
    assert put.error is None
    assert q.get(timeout=WAIT) == "b"


def test_seal_wakes_a_blocked_put_with_sealed(calls: List[BlockingCall]) -> None:
    q: SealableQueue[str] = SealableQueue(1)
    q.put("a")
    put = start_call(calls, lambda: q.put("b", timeout=WAIT))
    put.assert_blocked()
    q.seal()
    put.join()
    assert isinstance(put.error, Sealed)
    assert q.drain() == ["a"]  # what was accepted stays; the refused item is not there


def test_seal_wakes_a_blocked_get_with_sealed(calls: List[BlockingCall]) -> None:
    q: SealableQueue[str] = SealableQueue()
    get = start_call(calls, lambda: q.get(timeout=WAIT))
    get.assert_blocked()
    q.seal()
    get.join()
    assert isinstance(get.error, Sealed)


def test_put_after_seal_raises_sealed_even_when_there_is_room() -> None:
    for maxsize in (0, 5):
        q: SealableQueue[str] = SealableQueue(maxsize)
        q.seal()
        assert q.sealed
        with pytest.raises(Sealed):
            q.put("late")
        assert q.drain() == []


def test_get_after_seal_drains_what_is_left_then_raises_sealed() -> None:
    q: SealableQueue[str] = SealableQueue(3)
    for item in ("a", "b", "c"):
        q.put(item)
    q.seal()
    assert q.get(timeout=WAIT) == "a"
    assert q.get(block=False) == "b"
    assert q.get() == "c"
    with pytest.raises(Sealed):
        q.get(timeout=WAIT)
    with pytest.raises(Sealed):  # sealed and empty is Sealed, never queue.Empty
        q.get(block=False)


def test_get_batch_takes_at_most_max_items_in_order() -> None:
    q: SealableQueue[int] = SealableQueue()
    for item in range(5):
        q.put(item)
    assert q.get_batch(3) == [0, 1, 2]
    assert q.get_batch(10) == [3, 4]
    q.put(5)
    assert q.get_batch(1) == [5]


def test_get_batch_after_seal_returns_the_rest_then_an_empty_list() -> None:
    q: SealableQueue[int] = SealableQueue()
    for item in range(3):
        q.put(item)
    q.seal()
    assert q.get_batch(2) == [0, 1]
    assert q.get_batch(2) == [2]
    assert q.get_batch(2) == []
    assert q.get_batch(2) == []


def test_get_batch_blocks_until_an_item_arrives_and_wakes_on_seal(calls: List[BlockingCall]) -> None:
    q: SealableQueue[str] = SealableQueue()
    first = start_call(calls, lambda: q.get_batch(10))
    first.assert_blocked()
    q.put("x")
    first.join()
    assert first.result == ["x"]

    second = start_call(calls, lambda: q.get_batch(10))
    second.assert_blocked()
    q.seal()
    second.join()
    assert second.error is None and second.result == []


def test_get_batch_frees_room_for_blocked_puts(calls: List[BlockingCall]) -> None:
    q: SealableQueue[int] = SealableQueue(2)
    q.put(0)
    q.put(1)
    put = start_call(calls, lambda: q.put(2, timeout=WAIT))
    put.assert_blocked()
    assert q.get_batch(10) == [0, 1]
    put.join()
    assert put.error is None
    assert q.drain() == [2]


def test_drain_takes_everything_without_blocking() -> None:
    q: SealableQueue[str] = SealableQueue()
    assert q.drain() == []  # empty: returns at once
    for item in ("a", "b", "c"):
        q.put(item)
    assert q.drain() == ["a", "b", "c"]
    assert q.empty()
    q.put("d")
    q.seal()
    assert q.drain() == ["d"]  # also after sealing
    assert q.drain() == []


def test_drain_makes_room_for_a_blocked_put(calls: List[BlockingCall]) -> None:
    q: SealableQueue[str] = SealableQueue(1)
    q.put("a")
    put = start_call(calls, lambda: q.put("b", timeout=WAIT))
    put.assert_blocked()
    assert q.drain() == ["a"]
    put.join()
    assert put.error is None
    assert q.drain() == ["b"]


def test_discard_when_full_releases_a_blocked_put_and_counts_what_does_not_fit(calls: List[BlockingCall]) -> None:
    q: SealableQueue[str] = SealableQueue(1)
    q.put("a")
    put = start_call(calls, lambda: q.put("b", timeout=WAIT))
    put.assert_blocked()
    q.discard_when_full()
    put.join()
    assert put.error is None and q.discarded == 1
    q.put("c", block=False)  # dropped at once, never queue.Full
    assert q.drain() == ["a"] and q.discarded == 2
    q.put("d")  # room again: kept
    assert q.drain() == ["d"] and q.discarded == 2


def test_a_direct_write_wakes_the_consumer_only_when_it_has_work(monkeypatch: pytest.MonkeyPatch) -> None:
    # Waking an idle writer after every direct write cost a thread switch per message.
    q: SealableQueue[str] = SealableQueue(4)
    q.allow_direct()
    wakes: List[str] = []
    notify_all = q.not_empty.notify_all
    monkeypatch.setattr(q.not_empty, "notify_all", lambda: (wakes.append("wake"), notify_all())[1])
    assert q.claim_direct()
    q.release_direct("a", None, complete=True)
    assert wakes == [] and q.direct_written == 1  # nothing for anyone to do
    assert q.claim_direct()
    q.put("b")  # queued behind the direct write: the consumer must take it after
    wakes.clear()
    q.release_direct("c", None, complete=True)
    assert wakes == ["wake"]
