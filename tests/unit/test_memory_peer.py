"""duplexthreads.testing.MemoryPeer: the far end of a memory pair, as users drive it."""

from __future__ import annotations

import pytest

from duplexthreads import Duplex, Reason
from duplexthreads.exceptions import TransportError
from duplexthreads.testing import MemoryPeer
from duplexthreads.transports import CloseFrame, memory_pair

from ..timing import UNIT

pytestmark = pytest.mark.timeout(30 * UNIT)


def test_it_records_messages_and_answers_a_close_once() -> None:
    ours, theirs = memory_pair()
    peer = MemoryPeer(theirs, timeout=5 * UNIT)
    with Duplex(ours) as conn:
        conn.send("a")
        conn.send(b"b")
        assert peer.wait_messages(2) == ["a", b"b"]
        peer.send("from the peer")
        assert conn.recv(timeout=5 * UNIT) == "from the peer"
        report = conn.close(1000, "bye")
    assert report is not None and report.ok and report.close_code == 1000
    assert peer.wait_close_frame() == (1000, "bye")
    assert peer.close_frames == [(1000, "bye")]
    peer.stop()
    assert peer.ended and not peer.thread.is_alive()


def test_a_close_it_starts_is_not_answered_twice() -> None:
    ours, theirs = memory_pair()
    peer = MemoryPeer(theirs, timeout=5 * UNIT)
    peer.close(None)  # an empty close payload, read as 1005
    assert ours.recv() == CloseFrame(1005, "")
    ours.send_close(1000, "")  # the answer
    assert peer.wait_close_frame() == (1000, "")
    ours.fin()
    peer.wait_ended()
    peer.stop()  # ends its side of the stream too
    with pytest.raises(TransportError, match="end of stream"):
        ours.recv()  # nothing came after the answer: the peer did not answer it
    ours.close()


def test_it_ends_a_connection_with_an_empty_close() -> None:
    ours, theirs = memory_pair()
    peer = MemoryPeer(theirs, timeout=5 * UNIT)
    conn = Duplex(ours).start()
    peer.close(None)
    report = conn.wait(5 * UNIT)
    assert report.reason is Reason.PEER_CLOSED and report.ok and report.close_code == 1005
    assert peer.wait_close_frame() == (1000, "")  # the answer: 1005 may not be sent
    peer.stop()


def test_a_silent_peer_leaves_the_close_to_the_timeout() -> None:
    ours, theirs = memory_pair()
    peer = MemoryPeer(theirs, timeout=5 * UNIT)
    conn = Duplex(ours, close_timeout=0.2).start()
    peer.go_silent()
    report = conn.close()
    assert report is not None and not report.ok and report.close_sent and not report.close_received
    peer.stop()


def test_waits_say_what_came() -> None:
    ours, theirs = memory_pair()
    peer = MemoryPeer(theirs, timeout=5 * UNIT)
    conn = Duplex(ours).start()
    conn.send("only one")
    with pytest.raises(TimeoutError, match="1 of 2"):
        peer.wait_messages(2, timeout=0.05)
    peer.drop()
    conn.wait(5 * UNIT)
    peer.stop()
    with pytest.raises(ConnectionError, match=r"ended \(eof\) first: 1 of 2 messages"):
        peer.wait_messages(2)
    with pytest.raises(ConnectionError, match=r"ended \(eof\) first: no close frame"):
        peer.wait_close_frame()


@pytest.mark.parametrize(
    "end, options, error",
    [
        (None, {}, TypeError),
        ("socket", {}, TypeError),
        ("memory", {"timeout": 0}, ValueError),
        ("memory", {"timeout": -1}, ValueError),
        ("memory", {"timeout": float("nan")}, ValueError),
        ("memory", {"timeout": float("inf")}, ValueError),
        ("memory", {"timeout": True}, TypeError),
        ("memory", {"timeout": "1"}, TypeError),
        ("memory", {"timeout": None}, TypeError),
    ],
)
def test_bad_arguments_are_refused_at_the_call(end: object, options: dict, error: type) -> None:
    ours, theirs = memory_pair()
    with pytest.raises(error):
        MemoryPeer(theirs if end == "memory" else end, **options)  # type: ignore[arg-type]
    ours.close()
    theirs.close()


def test_bad_calls_are_refused_before_anything_is_sent() -> None:
    ours, theirs = memory_pair()
    peer = MemoryPeer(theirs, timeout=5 * UNIT)
    with pytest.raises(ValueError, match="violate"):
        peer.close(1006)  # may not be sent
    with pytest.raises(TypeError):
        peer.close(1000.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        peer.send(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        peer.send("\ud800")
    with pytest.raises(ValueError, match="timeout"):
        peer.wait_messages(1, timeout=float("nan"))
    with pytest.raises(ValueError, match="timeout"):
        peer.wait_ended(timeout=-1)
    peer.send(bytearray(b"ok"))
    assert ours.recv() == b"ok"  # the first thing that arrived
    peer.stop()
    ours.close()
