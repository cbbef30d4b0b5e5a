"""send() writing in the caller's thread when the writer is idle: order and accounting hold.

A direct write happens only while the outbound queue is empty and nobody is writing; while it
runs, the writer takes nothing. These tests race it against the writer, against other senders,
against close() and abort(), and against a peer that stops reading, and check that every
sending thread's messages arrive in order and that ``written`` + ``unsent`` stays exact.
"""

from __future__ import annotations

import threading
from typing import Callable, Dict, List, Sequence

import pytest

from duplexthreads import ConnectionClosed, Reason
from duplexthreads.report import ExitReport, Message

from .support import WAIT, MakePair, memory_transport

pytestmark = pytest.mark.timeout(60)

SENDERS = 4
EACH = 400


class Senders:
    """SENDERS threads, each sending EACH numbered messages; ``accepted`` is what send() took."""

    def __init__(self, send: Callable[[str], None]) -> None:
        self.accepted: Dict[int, List[str]] = {sender: [] for sender in range(SENDERS)}
        self._send = send
        start = threading.Barrier(SENDERS + 1)
        self._threads = [
            threading.Thread(target=self._run, args=(sender, start), name=f"test-sender-{sender}")
            for sender in range(SENDERS)
        ]
        for thread in self._threads:
            thread.start()
        start.wait(WAIT)

    def _run(self, sender: int, start: threading.Barrier) -> None:
        start.wait(WAIT)
        for index in range(EACH):
            message = f"{sender}:{index}"
            try:
                self._send(message)
            except ConnectionClosed:
                return  # the connection ended under us: what came before was accepted
            self.accepted[sender].append(message)

    def join(self) -> Dict[int, List[str]]:
        for thread in self._threads:
            thread.join(WAIT)
            assert not thread.is_alive()
        return self.accepted


def assert_each_sender_in_order(got: Sequence[Message], accepted: Dict[int, List[str]]) -> None:
    for sender, messages in accepted.items():
        mine = [m for m in got if isinstance(m, str) and m.startswith(f"{sender}:")]
        assert mine == messages[: len(mine)], f"sender {sender} out of order"


def assert_exact(report: ExitReport, got: Sequence[Message], accepted: Dict[int, List[str]]) -> None:
    """Everything accepted was written (and arrived, on memory) or is in unsent; never both."""
    assert report.written == len(got)
    everything = list(got) + list(report.unsent)
    assert sorted(everything) == sorted(m for messages in accepted.values() for m in messages)
    assert_each_sender_in_order(everything, accepted)


def test_concurrent_senders_keep_their_order_through_direct_and_queued_writes(make_pair: MakePair) -> None:
    conn, peer = make_pair(max_queue=8)
    conn.start()
    accepted = Senders(conn.send).join()
    report = conn.close()
    assert report is not None and report.ok
    got = peer.wait_messages(SENDERS * EACH)
    assert_exact(report, got, accepted)
    assert report.unsent == ()
    assert conn._protocol.outbound.direct_written > 0, "the direct path was never taken"


def test_a_direct_write_never_overtakes_what_the_writer_holds(make_pair: MakePair) -> None:
    """Messages queued before start go through the writer in big batches; a send() racing
    them must wait its turn (the queue is not empty, or the writer is busy)."""
    conn, peer = make_pair(max_queue=None)
    queued = [f"queued {i}" for i in range(3000)]
    for message in queued:
        conn.send(message)
    conn.start()
    conn.send("last")
    report = conn.close()
    assert report is not None and report.ok
    assert peer.wait_messages(len(queued) + 1) == [*queued, "last"]


@pytest.mark.parametrize("ending", ["close", "abort"])
def test_ending_during_concurrent_direct_writes_keeps_accounting_exact(make_pair: MakePair, ending: str) -> None:
    conn, peer = make_pair(max_queue=16)
    conn.start()
    senders = Senders(conn.send)
    peer.wait_messages(SENDERS * EACH // 4)
    report = conn.close() if ending == "close" else conn.abort()
    accepted = senders.join()
    assert report is not None
    peer.wait_ended()
    got = list(peer.received)
    assert_exact(report, got, accepted)
    if ending == "close":
        assert report.ok and report.unsent == ()


def test_a_peer_that_stops_reading_sends_direct_writes_to_the_writer(make_pair: MakePair) -> None:
    conn, peer = make_pair(max_queue=4, close_timeout=0.2)
    conn.start()
    conn.send("before")
    peer.wait_messages(1)
    peer.stop_reading()
    accepted = ["before"]
    for index in range(3):
        conn.send(f"stuck {index}")  # cannot be written now: handed to the writer, which blocks
        accepted.append(f"stuck {index}")
    report = conn.close()
    assert report is not None and report.reason is Reason.LOCAL_CLOSE and not report.ok
    assert report.written == 1 and list(report.unsent) == accepted[1:]


def test_a_direct_write_from_the_callback_echoes_without_the_writer(make_pair: MakePair) -> None:
    holder: list = []  # type: ignore[type-arg]

    def echo(message: Message) -> None:
        holder[0].send(message)

    conn, peer = make_pair(on_message=echo)
    holder.append(conn)
    conn.start()
    for index in range(200):
        peer.send(f"ping {index}")
    assert peer.wait_messages(200) == [f"ping {index}" for index in range(200)]
    report = conn.close()
    assert report is not None and report.ok and report.written == 200
    assert conn._protocol.outbound.direct_written == 200
    assert memory_transport(conn).closed
