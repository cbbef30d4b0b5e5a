"""The exit protocol always finishes and never waits past its bounds, whatever goes wrong
inside it: a worker that ignores quit, Ctrl-C or an exception in the middle of teardown, a
thread that cannot start, a peer answering with another code, a callback sending while we close."""

from __future__ import annotations

import threading
import time
from typing import Any, List, Optional

import pytest

from duplexthreads import ConnectionClosed, Duplex, Reason
from duplexthreads import _protocol as protocol_module
from duplexthreads.testing import MemoryPeer
from duplexthreads.transports import CloseFrame, MemoryTransport, memory_pair

from .timing import UNIT

pytestmark = pytest.mark.timeout(30 * UNIT)


class FailingClose(MemoryTransport):
    """A memory transport whose close() raises, once."""

    def __init__(self, condition: threading.Condition, error: BaseException) -> None:
        super().__init__(condition)
        self.error: Optional[BaseException] = error

    def close(self, timeout: Optional[float] = None, *, clean: bool = False) -> None:
        super().close(timeout, clean=clean)
        error, self.error = self.error, None
        if error is not None:
            raise error


def failing_pair(error: BaseException) -> tuple[FailingClose, MemoryTransport]:
    condition = threading.Condition()
    ours, theirs = FailingClose(condition, error), MemoryTransport(condition)
    ours._peer, theirs._peer = theirs, ours
    return ours, theirs


def test_a_worker_that_ignores_quit_cannot_hold_close_or_wait_past_their_bounds() -> None:
    ours, theirs = memory_pair()
    release = threading.Event()
    conn = Duplex(ours, close_timeout=0.2 * UNIT)
    conn.add_worker("stubborn", lambda quit: release.wait(20 * UNIT) and None)  # ignores quit
    conn.start()
    peer = MemoryPeer(theirs)
    try:
        started = time.monotonic()
        report = conn.close(timeout=10 * UNIT)
        # Bounded by close_timeout plus the owner's wake-up backstop, not by the worker.
        assert time.monotonic() - started < 5 * UNIT
        assert report is not None
        assert report.lingering == (f"duplexthreads-{conn.id}-stubborn",)  # named, not waited for
        started = time.monotonic()
        assert conn.wait(timeout=1 * UNIT) is report
        assert time.monotonic() - started < 1 * UNIT
    finally:
        release.set()
        for thread in conn.threads():
            thread.join(10 * UNIT)
        peer.stop()


def test_ctrl_c_in_the_middle_of_teardown_still_publishes_a_report() -> None:
    ours, theirs = failing_pair(KeyboardInterrupt())
    conn = Duplex(ours)
    peer = MemoryPeer(theirs)
    try:
        peer.close(1000, "bye")
        with pytest.raises(KeyboardInterrupt):
            conn.run()  # the owner is this thread; "Ctrl-C" lands inside transport.close()
        report = conn.report
        assert report is not None and conn.closed
        assert report.reason is Reason.ABORTED and isinstance(report.error, KeyboardInterrupt)
        assert ours.close_calls == 1
        assert conn.close() is report  # later calls do not wait for an owner that is gone
        assert conn.wait(timeout=1 * UNIT) is report
    finally:
        peer.stop()


def test_an_exception_inside_the_protocol_still_publishes_a_report() -> None:
    ours, theirs = failing_pair(OSError("close failed"))
    conn = Duplex(ours)
    peer = MemoryPeer(theirs)
    try:
        peer.close(1000, "bye")
        with pytest.raises(OSError, match="close failed"):
            conn.run()
        report = conn.report
        assert report is not None and report.reason is Reason.ABORTED
        assert isinstance(report.error, OSError) and ours.close_calls == 1
        assert conn.abort() is report
    finally:
        peer.stop()


def test_a_thread_that_cannot_start_after_another_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader may end (the peer's close was already waiting) before a later thread fails
    to start; then exactly one owner must run, and nothing may escape a thread."""

    class ExtraWontStart(threading.Thread):
        def start(self) -> None:
            if self.name.endswith("-extra"):
                raise RuntimeError("can't start new thread")
            super().start()
            if self.name.endswith("-writer"):
                reader_done.wait(5 * UNIT)  # let the reader see the close and report first

    reader_done = threading.Event()
    monkeypatch.setattr(protocol_module.threading, "Thread", ExtraWontStart)
    ours, theirs = memory_pair()
    theirs.send_close(1000, "already closing")
    conn = Duplex(ours, on_message=None)
    conn.add_worker("extra", lambda quit: quit.wait(10 * UNIT) and None)
    original = protocol_module.ExitProtocol._claim_or_post

    def claim_or_post(self: Any, item: Any) -> bool:
        reader_done.set()
        return original(self, item)

    monkeypatch.setattr(protocol_module.ExitProtocol, "_claim_or_post", claim_or_post)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        conn.start()
    report = conn.wait(timeout=10 * UNIT)
    assert ours.close_calls == 1
    assert report.lingering == ()
    assert not [t.name for t in conn.threads() if t.is_alive()]
    theirs.close()


def test_a_local_close_reports_the_code_the_peer_answered() -> None:
    ours, theirs = memory_pair()
    conn = Duplex(ours).start()
    answered: List[Any] = []

    def answer_with_another_code() -> None:
        answered.append(theirs.recv())
        theirs.send_close(1011, "server error while closing")

    peer = threading.Thread(target=answer_with_another_code)
    peer.start()
    try:
        report = conn.close(1000, "bye")
        assert report is not None
        assert answered == [CloseFrame(1000, "bye")]
        assert (report.reason, report.close_code, report.close_reason) == (
            Reason.LOCAL_CLOSE,
            1011,
            "server error while closing",
        )
        assert not report.ok and report.error is None
    finally:
        peer.join(10 * UNIT)
        theirs.close()


def test_an_echo_callback_does_not_spoil_a_graceful_close() -> None:
    ours, theirs = memory_pair()
    holder: List[Duplex] = []
    refused: List[BaseException] = []

    def echo(message: Any) -> None:
        try:
            holder[0].send(message)
        except ConnectionClosed as exc:
            refused.append(exc)
            raise

    conn = Duplex(ours, on_message=echo)
    holder.append(conn)
    conn.start()

    def message_then_answer() -> None:
        while not isinstance(theirs.recv(), CloseFrame):
            pass
        theirs.send_batch(["arrives after our close frame"])
        theirs.send_close(1000, "")

    peer = threading.Thread(target=message_then_answer)
    peer.start()
    try:
        report = conn.close()
        assert report is not None and report.ok and report.error is None
        assert len(refused) == 1  # the echo met the closing connection, and that was harmless
    finally:
        peer.join(10 * UNIT)
        theirs.close()


def test_timeouts_beyond_what_threading_can_wait_mean_no_limit() -> None:
    ours, theirs = memory_pair()
    conn = Duplex(ours, close_timeout=float("inf")).start()
    peer = MemoryPeer(theirs)
    try:
        assert conn.close_timeout is None
        conn.send("x", timeout=1e12)
        assert peer.wait_messages(1) == ["x"]
        with pytest.raises(ValueError):
            conn.send("x", timeout=-1)
        with pytest.raises(ValueError):
            conn.recv(timeout=float("nan"))
        report = conn.close(timeout=float("inf"))
        assert report is not None and report.ok
    finally:
        peer.stop()
