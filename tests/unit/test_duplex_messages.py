"""Duplex over the memory transport: send/recv timeouts, copies, and message accounting (P4)."""

from __future__ import annotations

import time
from typing import Any, List

import pytest

from duplexthreads import ConnectionClosedOK, Duplex, Message, Reason, TransportError
from duplexthreads.testing import MemoryPeer

from ..timing import UNIT
from .support import SHORT, WAIT, MakePair, memory_transport

pytestmark = pytest.mark.timeout(30 * UNIT)


def numbered(count: int) -> List[str]:
    return [f"message {i}" for i in range(count)]


def block_the_writer(conn: Duplex, peer: MemoryPeer) -> List[str]:
    """With max_queue=1: the writer hangs in a write of "a" and "b" fills the queue."""
    peer.stop_reading()
    conn.send("a", timeout=WAIT)  # the writer takes it and blocks writing it
    conn.send("b", timeout=WAIT)  # waits until the writer took "a", then fills the queue
    return ["a", "b"]


def test_send_times_out_while_the_queue_is_full_and_the_connection_stays_usable(make_pair: MakePair) -> None:
    conn, peer = make_pair(max_queue=1)
    conn.start()
    accepted = block_the_writer(conn, peer)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        conn.send("c", timeout=SHORT)
    assert time.monotonic() - started >= SHORT
    # Still open and working: it receives, and a send still times out rather than failing.
    assert not conn.closed
    peer.send("from peer")
    assert conn.recv(timeout=WAIT) == "from peer"
    with pytest.raises(TimeoutError):
        conn.send("d", timeout=SHORT)
    report = conn.abort()
    assert report is not None
    # P4: what send() accepted comes back in order; what timed out was never accepted.
    assert report.written == 0 and list(report.unsent) == accepted


def test_recv_times_out_when_nothing_arrives(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    conn.start()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        conn.recv(timeout=SHORT)
    assert time.monotonic() - started >= SHORT
    peer.send("late")
    assert conn.recv(timeout=WAIT) == "late"


def test_send_copies_mutable_buffers(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    buffer = bytearray(b"original")
    backing = bytearray(b"view")
    view = memoryview(backing)
    # send() accepts bytes-like objects, though its annotation says Message (str | bytes).
    conn.send(buffer)  # queued before start: the writer has not touched it
    conn.send(view)
    buffer[:] = b"mutated!"
    backing[:] = b"XXXX"
    view.release()
    conn.start()
    got = peer.wait_messages(2)
    assert got == [b"original", b"view"]
    assert [type(message) for message in got] == [bytes, bytes]


@pytest.mark.parametrize("after", [0, 1, 700, 1023, 1024, 1500])
def test_mid_batch_write_failure_accounts_for_every_message(make_pair: MakePair, after: int) -> None:
    conn, peer = make_pair(max_queue=None)
    sent = numbered(2000)
    for message in sent:  # all queued before start, so the writer takes them in big batches
        conn.send(message)
    memory_transport(conn).fail_writes(BrokenPipeError("injected"), after=after)
    conn.start()
    report = conn.wait(WAIT)
    assert (report.first, report.reason) == ("writer", Reason.WRITE_ERROR)
    assert isinstance(report.error, TransportError)
    assert report.written == after
    assert list(sent[: report.written]) + list(report.unsent) == sent
    peer.wait_ended()
    assert peer.received == sent[: report.written]


@pytest.mark.parametrize("max_queue", [4, None])
def test_messages_before_the_peer_close_frame_are_all_received_first(make_pair: MakePair, max_queue: Any) -> None:
    conn, peer = make_pair(max_queue=max_queue)
    conn.start()
    expected: List[Message] = [f"text {i}" if i % 2 else bytes([i]) * i for i in range(100)]
    for message in expected:
        peer.send(message)
    peer.close(1001, "going away")
    received = []
    with pytest.raises(ConnectionClosedOK) as closed:
        for _ in range(len(expected) + 1):
            received.append(conn.recv(timeout=WAIT))
    assert received == expected
    report = closed.value.report
    assert report is not None and report is conn.wait(WAIT)
    assert (report.reason, report.close_code, report.close_reason) == (Reason.PEER_CLOSED, 1001, "going away")


def test_peer_close_while_the_writer_is_blocked_tears_down_within_close_timeout(make_pair: MakePair) -> None:
    conn, peer = make_pair(max_queue=1, close_timeout=0.3 * UNIT)
    conn.start()
    accepted = block_the_writer(conn, peer)
    with pytest.raises(TimeoutError):
        conn.send("c", timeout=SHORT)  # the writer is stuck in its write
    peer.close(1000, "bye")  # the peer closes, and still does not read
    try:
        # P5: the owner waits for the writer to finish its batch (to reply, as RFC 6455 asks)
        # no longer than close_timeout, then shuts the stuck write down.
        report = conn.wait(0.3 * UNIT + 0.5 * UNIT)
    finally:
        peer.reset()  # unblocks the writer, so a failing run still ends quickly
        conn.wait(WAIT)
    assert (report.first, report.reason) == ("reader", Reason.PEER_CLOSED)
    assert list(accepted[: report.written]) + list(report.unsent) == accepted
