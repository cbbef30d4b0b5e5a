"""Edges of the lifecycle that the exit-path matrix does not reach."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from duplexthreads import Duplex, Reason
from duplexthreads import _protocol as protocol_module
from duplexthreads.testing import MemoryPeer
from duplexthreads.transports import memory_pair

from .timing import UNIT

pytestmark = pytest.mark.timeout(30 * UNIT)


def test_a_thread_that_cannot_start_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    class WriterWontStart(threading.Thread):
        def start(self) -> None:
            if self.name.endswith("-writer"):
                raise RuntimeError("can't start new thread")
            super().start()

    monkeypatch.setattr(protocol_module.threading, "Thread", WriterWontStart)
    ours, theirs = memory_pair()
    conn = Duplex(ours)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        conn.start()
    report = conn.report
    assert report is not None and report.reason is Reason.ABORTED
    assert [t.name for t in conn.threads() if t.is_alive()] == []
    assert ours.closed and ours.close_calls == 1
    theirs.close()


def test_a_second_interrupt_while_a_failed_start_tears_down_still_publishes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ctrl-C while the threads start, and again while that teardown closes the transport.
    class WriterInterrupted(threading.Thread):
        def start(self) -> None:
            if self.name.endswith("-writer"):
                raise KeyboardInterrupt
            super().start()

    monkeypatch.setattr(protocol_module.threading, "Thread", WriterInterrupted)
    ours, theirs = memory_pair()
    closes = ours.close

    def close_interrupted(timeout: Any = None, *, clean: bool = False) -> None:
        closes(timeout, clean=clean)
        raise KeyboardInterrupt

    monkeypatch.setattr(ours, "close", close_interrupted)
    conn = Duplex(ours)
    with pytest.raises(KeyboardInterrupt):
        conn.run()
    report = conn.report
    assert report is not None and report.reason is Reason.ABORTED
    assert conn.wait(5 * UNIT) is report  # nobody waits for an owner that is gone
    assert [t.name for t in conn.threads() if t.is_alive()] == []
    theirs.close()


def test_run_makes_the_calling_thread_the_owner() -> None:
    ours, theirs = memory_pair()
    conn = Duplex(ours)
    peer = MemoryPeer(theirs)

    def close_once_delivered() -> None:
        peer.wait_messages(1)
        peer.close(1000, "done")

    closer = threading.Thread(target=close_once_delivered)
    try:
        conn.send("queued before run")
        closer.start()
        report = conn.run()
        assert report.reason is Reason.PEER_CLOSED and report.ok
        names: Any = [t.name for t in conn.threads()]
        assert not any(name.endswith("-owner") for name in names)
        assert peer.received == ["queued before run"] and report.written == 1
    finally:
        closer.join(10 * UNIT)
        peer.stop()


def test_server_side_answer_to_a_close_is_not_cut_off_by_teardown(monkeypatch: pytest.MonkeyPatch) -> None:
    """simple-websocket's server thread answers a close frame by itself, after marking the
    connection closed; teardown must let that answer out. The answer is delayed here, as a
    preempted thread would be, to make the race certain."""
    from duplexthreads.transports import simple_websocket as backend

    from .harness import open_endpoints

    never = threading.Event()
    original_send = backend._GuardedSocket.send

    def delayed_send(self: Any, data: bytes) -> int:
        if threading.current_thread().name.endswith("-backend"):
            never.wait(0.2 * UNIT)  # a bounded stall of the backend thread, not of the test
        return original_send(self, data)

    monkeypatch.setattr(backend._GuardedSocket, "send", delayed_send)
    pair = open_endpoints("simple-websocket-server")
    try:
        pair.peer.close(1000, "bye")
        report = pair.conn.wait(10 * UNIT)
        assert report.reason is Reason.PEER_CLOSED
        assert pair.peer.wait_close_frame() == (1000, "bye")
    finally:
        pair.close_all()
