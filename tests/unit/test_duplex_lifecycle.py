"""Duplex over the memory transport: argument checks, start/run/close/abort, threads and wait.

The exit paths themselves (peer close, reset, errors, abort...) are proven over every transport
by tests/test_conformance.py; these tests cover the API around them.
"""

from __future__ import annotations

import threading
from typing import Any, List, Optional

import pytest

from duplexthreads import ConnectionClosed, ConnectionClosedOK, Duplex, ExitReport, Message, Reason
from duplexthreads.testing import MemoryPeer
from duplexthreads.transports import memory_pair

from ..timing import UNIT
from .support import SHORT, WAIT, MakePair, memory_transport

pytestmark = pytest.mark.timeout(30 * UNIT)


def thread_names(conn: Duplex, *roles: str) -> List[str]:
    return sorted(f"duplexthreads-{conn.id}-{role}" for role in roles)


def assert_still_works(conn: Duplex, peer: MemoryPeer) -> None:
    """Messages still flow both ways and the connection closes normally."""
    assert not conn.closed and conn.report is None
    conn.send("still works")
    assert peer.wait_messages(1)[-1] == "still works"
    peer.send("so do I")
    assert conn.recv(timeout=WAIT) == "so do I"


# -- construction ---------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", [None, object(), "ws://example.invalid/", memory_pair])
def test_constructor_rejects_what_is_not_a_transport(transport: Any) -> None:
    with pytest.raises(TypeError, match="transport"):
        Duplex(transport)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"max_queue": 0}, ValueError),
        ({"max_queue": -1}, ValueError),
        ({"max_queue": 2.5}, TypeError),
        ({"max_queue": "10"}, TypeError),
        ({"close_timeout": "1"}, TypeError),
        ({"close_timeout": -0.1}, ValueError),
        ({"close_timeout": float("nan")}, ValueError),
        ({"on_message": "print"}, TypeError),
        ({"on_message": 42}, TypeError),
    ],
)
def test_constructor_rejects_bad_options(options: Any, error: type) -> None:
    ours, _ = memory_pair()
    with pytest.raises(error):
        Duplex(ours, **options)
    assert not ours.closed  # a refused transport is still the caller's, untouched


@pytest.mark.parametrize("options", [{"max_queue": True}, {"close_timeout": True}])
def test_constructor_rejects_bools_for_numbers(options: Any) -> None:
    ours, _ = memory_pair()
    with pytest.raises(TypeError):
        Duplex(ours, **options)


def test_valid_options_start_nothing() -> None:
    ours, _ = memory_pair()
    conn = Duplex(ours, max_queue=None, close_timeout=0, on_message=lambda message: None)
    assert conn.threads() == ()
    assert not conn.closed and conn.report is None
    assert conn.id == ours.connection_id
    assert conn.close_timeout == 0
    conn.abort()  # a connection lives until it is closed, started or not


# -- close() arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason", "error"),
    [
        (1005, "", ValueError),
        (1006, "", ValueError),
        (1004, "", ValueError),
        (999, "", ValueError),
        (2999, "", ValueError),
        (5000, "", ValueError),
        (True, "", TypeError),
        (1000.0, "", TypeError),
        ("1000", "", TypeError),
        (1000, b"bytes", TypeError),
        (1000, None, TypeError),
        (1000, "x" * 124, ValueError),
        (1000, "é" * 62, ValueError),  # 62 characters, 124 bytes of UTF-8
    ],
)
def test_bad_close_arguments_raise_and_leave_the_connection_open(
    make_pair: MakePair, code: Any, reason: Any, error: type
) -> None:
    conn, peer = make_pair()
    conn.start()
    with pytest.raises(error):
        conn.close(code, reason)
    assert_still_works(conn, peer)
    assert peer.close_frames == []


def test_bad_close_arguments_before_start_leave_the_transport_open(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    with pytest.raises(ValueError):
        conn.close(1006)
    assert not memory_transport(conn).closed
    conn.start()
    assert_still_works(conn, peer)


def test_close_reason_of_exactly_123_bytes_is_sent(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    conn.start()
    reason = "é" * 61 + "a"
    assert len(reason.encode("utf-8")) == 123
    report = conn.close(4000, reason)
    assert report is not None
    assert (report.close_code, report.close_reason) == (4000, reason)
    assert peer.wait_close_frame() == (4000, reason)


# -- run() and start() ---------------------------------------------------------------------------------


def test_run_returns_the_report_when_the_peer_closes(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    conn.send("ping")  # accepted before run(); written once run() starts the writer
    seen: List[Message] = []

    def drive_peer() -> None:
        try:
            seen.extend(peer.wait_messages(1))
            peer.send("pong")
        finally:
            peer.close(1000, "bye")  # whatever happened, let run() return

    driver = threading.Thread(target=drive_peer, name="unit-peer-driver")
    driver.start()
    report = conn.run()
    driver.join(WAIT)
    assert not driver.is_alive()

    assert seen == ["ping"]
    assert (report.first, report.reason, report.error) == ("reader", Reason.PEER_CLOSED, None)
    assert (report.close_code, report.close_reason) == (1000, "bye")
    assert report.ok and report.written == 1 and report.unsent == ()
    assert conn.closed and conn.report is report and conn.wait(0) is report
    assert conn.recv(timeout=WAIT) == "pong"
    with pytest.raises(ConnectionClosedOK):
        conn.recv(timeout=WAIT)
    assert peer.wait_close_frame() == (1000, "bye")  # our answer
    # run() is the owner itself: only the workers were started, and all are gone.
    assert sorted(t.name for t in conn.threads()) == thread_names(conn, "heartbeat", "reader", "writer")
    assert not [t.name for t in conn.threads() if t.is_alive()]
    assert memory_transport(conn).closed and memory_transport(conn).close_calls == 1


def test_start_twice_and_run_after_start_raise(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    assert conn.start() is conn
    threads = conn.threads()
    with pytest.raises(RuntimeError):
        conn.start()
    with pytest.raises(RuntimeError):
        conn.run()
    assert conn.threads() == threads  # nothing more was started
    assert_still_works(conn, peer)
    report = conn.close()
    assert report is not None and report.ok
    with pytest.raises(RuntimeError):
        conn.start()


@pytest.mark.parametrize("method", ["close", "abort"])
def test_close_or_abort_before_start_tears_down_the_transport(make_pair: MakePair, method: str) -> None:
    conn, peer = make_pair()
    conn.send("queued")  # accepted while not started
    report: Optional[ExitReport] = getattr(conn, method)()
    transport = memory_transport(conn)
    assert report is not None
    assert conn.report is report and conn.closed
    assert transport.closed and transport.close_calls == 1
    assert conn.threads() == ()
    assert report.written == 0 and report.unsent == ("queued",)  # P4: given back, not lost
    peer.wait_ended()  # the peer sees the connection end...
    assert peer.received == []  # ...and never got the message that was handed back
    assert getattr(conn, method)() is report  # a second call returns the same report
    assert transport.close_calls == 1
    with pytest.raises(RuntimeError):
        conn.start()
    with pytest.raises(ConnectionClosed):
        conn.send("late")
    with pytest.raises(ConnectionClosed):
        conn.recv(timeout=WAIT)


# -- context manager -----------------------------------------------------------------------------


def test_with_block_starts_and_closes(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    with conn as entered:
        assert entered is conn
        # The workers only: no thread waits idle to own the teardown.
        alive = sorted(t.name for t in conn.threads() if t.is_alive())
        assert alive == thread_names(conn, "heartbeat", "reader", "writer")
        conn.send("inside")
        assert peer.wait_messages(1) == ["inside"]
    assert conn.closed
    report = conn.report
    assert report is not None and report.ok
    assert (report.first, report.reason, report.close_code) == ("owner", Reason.LOCAL_CLOSE, 1000)
    assert peer.wait_close_frame() == (1000, "")
    assert not [t.name for t in conn.threads() if t.is_alive()]


def test_with_block_closes_when_the_body_raises(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    with pytest.raises(KeyError), conn:
        raise KeyError("from the body")
    assert conn.closed
    assert conn.report is not None and conn.report.ok
    assert peer.wait_close_frame() == (1000, "")


# -- threads and wait() ------------------------------------------------------------------------------


def test_threads_are_named_after_the_connection_and_gone_after_wait(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    conn.start()
    threads = conn.threads()
    assert sorted(t.name for t in threads) == thread_names(conn, "heartbeat", "reader", "writer")
    assert all(t.is_alive() for t in threads)
    prefix = f"duplexthreads-{conn.id}-"
    assert sorted(t.name for t in threading.enumerate() if t.name.startswith(prefix)) == sorted(t.name for t in threads)
    peer.close(1000)
    report = conn.wait(WAIT)
    assert report.reason is Reason.PEER_CLOSED
    assert not [t.name for t in threads if t.is_alive()]
    assert not [t.name for t in threading.enumerate() if t.name.startswith(prefix)]
    assert report.lingering == ()


def test_wait_with_a_timeout_raises_while_open(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    conn.start()
    with pytest.raises(TimeoutError):
        conn.wait(SHORT)
    assert not conn.closed and conn.report is None
    assert_still_works(conn, peer)


def test_wait_from_on_message_raises_runtime_error(make_pair: MakePair) -> None:
    holder: List[Duplex] = []
    raised: List[BaseException] = []
    called = threading.Event()

    def on_message(message: Message) -> None:
        try:
            holder[0].wait(WAIT)
        except RuntimeError as exc:
            raised.append(exc)
        finally:
            called.set()

    conn, peer = make_pair(on_message=on_message)
    holder.append(conn)
    conn.start()
    peer.send("hello")
    assert called.wait(WAIT)
    assert len(raised) == 1
    # The callback caught it, so the connection is unharmed and closes normally.
    report = conn.close()
    assert report is not None and report.ok and report.error is None
