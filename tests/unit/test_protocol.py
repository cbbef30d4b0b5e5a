"""The exit protocol as a state machine, and the races its structure rules out."""

from __future__ import annotations

import threading
import time
from typing import List, Optional, Sequence

import pytest

from duplexthreads import ConnectionClosedOK, Duplex, DuplexError, Reason, UsageError, _registry
from duplexthreads._protocol import TRANSITIONS, ExitProtocol, IllegalTransition, Phase
from duplexthreads.report import ExitReport, Message
from duplexthreads.transports import memory_pair

from ..timing import UNIT
from .support import WAIT, MakePair, memory_transport

pytestmark = pytest.mark.timeout(30)


def fresh_protocol() -> ExitProtocol:
    ours, _ = memory_pair()
    return ExitProtocol(ours, on_message=None, max_queue=None, close_timeout=None)


ALL_MOVES = [(source, target) for source in Phase for target in Phase]


@pytest.mark.parametrize(("source", "target"), ALL_MOVES, ids=[f"{s.value}->{t.value}" for s, t in ALL_MOVES])
def test_the_transition_table_is_enforced(source: Phase, target: Phase) -> None:
    protocol = fresh_protocol()
    protocol._phase = source
    with protocol._lock:
        if target in TRANSITIONS[source]:
            protocol._enter(target)
            assert protocol.phase is target
        else:
            with pytest.raises(IllegalTransition, match=f"{source.value} -> {target.value}"):
                protocol._enter(target)
            assert protocol.phase is source
    # Forced phases never publish a report: take it out of the registry by hand, or the exit
    # hook would try to close it.
    _registry.unregister(protocol)
    protocol.transport.close()


def test_every_phase_is_reachable_and_closed_is_final() -> None:
    reachable = {Phase.NEW}
    frontier = [Phase.NEW]
    while frontier:
        for target in TRANSITIONS[frontier.pop()]:
            if target not in reachable:
                reachable.add(target)
                frontier.append(target)
    assert reachable == set(Phase)
    assert TRANSITIONS[Phase.CLOSED] == frozenset()
    assert all(Phase.ENDING in TRANSITIONS[p] for p in Phase if p not in (Phase.OPEN, Phase.ENDING, Phase.CLOSED))


def test_a_connection_walks_the_phases_of_a_graceful_close(make_pair: MakePair) -> None:
    conn, _peer = make_pair()
    protocol = conn._protocol
    assert protocol.phase is Phase.NEW
    conn.start()
    assert protocol.phase is Phase.OPEN
    report = conn.close()
    assert report is not None and report.ok
    assert protocol.phase is Phase.CLOSED


def test_misuse_raises_usage_error_and_leaves_the_connection_working(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    conn.start()
    with pytest.raises(UsageError, match="already started"):
        conn.start()
    with pytest.raises(UsageError, match="before start"):
        conn.add_worker("late", lambda quit: None)
    conn.send("still fine")
    assert peer.wait_messages(1) == ["still fine"]
    assert issubclass(UsageError, DuplexError) and issubclass(UsageError, RuntimeError)
    report = conn.close()
    assert report is not None and report.ok


def test_recv_on_a_callback_connection_is_a_usage_error(make_pair: MakePair) -> None:
    got: List[Message] = []
    conn, _peer = make_pair(on_message=got.append)
    conn.start()
    with pytest.raises(UsageError, match="on_message"):
        conn.recv(timeout=WAIT)
    conn.close()


def test_wait_inside_the_connections_own_thread_is_a_usage_error(make_pair: MakePair) -> None:
    errors: List[BaseException] = []
    holder: List[Duplex] = []

    def on_message(message: Message) -> None:
        try:
            holder[0].wait(timeout=WAIT)
        except UsageError as exc:
            errors.append(exc)

    conn, peer = make_pair(on_message=on_message)
    holder.append(conn)
    conn.start()
    peer.send("wake the callback")
    peer.close(1000)
    report = conn.wait(WAIT)
    assert report.ok and len(errors) == 1 and "wait for itself" in str(errors[0])


def peer_closes_while_the_writer_holds(conn: Duplex, monkeypatch: pytest.MonkeyPatch, message: str) -> threading.Event:
    """Start ``conn``, make its writer take ``message`` and wait there, busy, then let the peer
    send a close frame straight onto the wire. Returns the event that releases the writer."""
    ours = memory_transport(conn)
    took_batch, release = threading.Event(), threading.Event()
    original_send_batch = ours.send_batch

    def send_batch_when_released(messages: Sequence[Message]) -> None:
        took_batch.set()
        assert release.wait(WAIT), "the test never released the writer"
        original_send_batch(messages)

    monkeypatch.setattr(ours, "send_batch", send_batch_when_released)
    monkeypatch.setattr(conn, "_direct_writes", False)  # every message through the writer
    conn.start()
    conn.send(message)
    assert took_batch.wait(WAIT)
    ours.peer.send_close(1000, "bye")
    return release


def test_a_peer_close_is_answered_once_a_busy_writer_finishes_its_batch(
    make_pair: MakePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 6455 asks for the reply; a writer mid-batch to a peer that reads finishes first."""
    conn, peer = make_pair(close_timeout=5 * UNIT)
    release = peer_closes_while_the_writer_holds(conn, monkeypatch, "in the batch")
    assert not conn._protocol.finished.wait(0.1)  # the owner waits for the writer...
    release.set()  # ...which finishes its batch
    report = conn.wait(WAIT)
    assert report.reason is Reason.PEER_CLOSED and report.ok
    assert report.close_sent == (1000, "bye")  # the reply left
    assert report.written == 1 and peer.wait_messages(1) == ["in the batch"]
    assert peer.wait_close_frame() == (1000, "bye")


def test_the_wait_for_a_stuck_writer_before_answering_a_peer_close_is_bounded(
    make_pair: MakePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer has taken a batch (and so is marked busy, under the queue's lock) when the
    peer's close arrives, and its write meets a peer that stopped reading. The owner waits
    for it at most close_timeout, then shuts the transport down: no reply behind it."""
    conn, peer = make_pair(close_timeout=0.3 * UNIT)
    peer.stop_reading()
    release = peer_closes_while_the_writer_holds(conn, monkeypatch, "taken, not yet written")
    release.set()  # the write now blocks: the peer stopped reading; only shutdown ends it
    started = time.monotonic()
    report = conn.wait(timeout=0.3 * UNIT + WAIT)
    assert time.monotonic() - started < 0.3 * UNIT + 1.0 * UNIT
    assert report.reason is Reason.PEER_CLOSED and report.close_code == 1000
    assert report.written == 0 and report.unsent == ("taken, not yet written",)
    assert report.close_sent is None  # no reply behind a write that is stuck


def test_an_abort_cuts_short_the_wait_to_answer_a_peer_close(
    make_pair: MakePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, peer = make_pair(close_timeout=30 * UNIT)
    peer.stop_reading()
    release = peer_closes_while_the_writer_holds(conn, monkeypatch, "stuck")
    release.set()
    assert not conn._protocol.finished.wait(0.1)  # waiting for the stuck writer, up to 30 s
    started = time.monotonic()
    report = conn.abort()
    assert time.monotonic() - started < 1.0 * UNIT
    assert report is not None and report.close_sent is None
    assert report.written + len(report.unsent) == 1


def test_any_exception_out_of_a_write_keeps_the_count_exact(
    make_pair: MakePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, peer = make_pair()
    ours = memory_transport(conn)
    original_send_batch = ours.send_batch
    batches: List[int] = []

    def fails_on_the_third_batch(messages: Sequence[Message]) -> None:
        batches.append(len(messages))
        if len(batches) == 3:
            raise RuntimeError("a bug below the writer, before any byte went out")
        original_send_batch(messages)

    monkeypatch.setattr(ours, "send_batch", fails_on_the_third_batch)
    monkeypatch.setattr(conn, "_direct_writes", False)  # every message through the writer
    conn.start()
    sent = ["m0", "m1", "m2"]
    for count, message in enumerate(sent[:2], start=1):
        conn.send(message)
        peer.wait_messages(count)  # one batch each
    conn.send(sent[2])
    report = conn.wait(WAIT)
    assert report.reason is Reason.WRITE_ERROR and isinstance(report.error, RuntimeError)
    assert (report.written, report.unsent) == (2, ("m2",))
    assert peer.received == sent[:2]


def test_messages_queued_before_start_come_back_when_closed_before_start(make_pair: MakePair) -> None:
    conn, _peer = make_pair()
    conn.send("queued")
    report = conn.close()
    assert report is not None and report.reason is Reason.ABORTED
    assert report.unsent == ("queued",) and report.written == 0
    with pytest.raises(UsageError):
        conn.start()


def test_a_peer_close_without_status_reads_as_normal(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    conn.start()
    memory_transport(conn).peer.send_close(1005, "")
    with pytest.raises(ConnectionClosedOK):
        conn.recv(timeout=WAIT)
    assert conn.report is not None and conn.report.close_received == (1005, "")
    assert peer.wait_close_frame()[0] == 1000  # our answer carries a code


def test_close_frame_fields_record_what_was_exchanged(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    conn.start()
    report = conn.close(4001, "done")
    assert report is not None
    assert report.close_sent == (4001, "done") and report.close_received == (4001, "done")
    assert peer.close_frames == [(4001, "done")]


@pytest.mark.parametrize("second", [None, "abort", "short close"])
def test_the_reply_to_a_peer_close_is_bounded_by_close_timeout_and_cut_by_a_second_caller(
    make_pair: MakePair, second: Optional[str]
) -> None:
    # The peer closes and stops reading: our reply (the writer is idle) blocks on it. It used
    # to get a fixed 2 s that neither close_timeout nor another caller could shorten.
    conn, peer = make_pair(close_timeout=0.4 * UNIT)
    conn.start()
    peer.stop_reading()
    started = time.monotonic()
    peer.close(1000, "bye")
    if second is not None:
        assert not conn._protocol.finished.wait(0.1 * UNIT)  # the owner is in the reply
        called = time.monotonic()
        report = conn.abort() if second == "abort" else conn.close(timeout=0.05)
        assert report is not None and time.monotonic() - called < 0.05 + 0.2 * UNIT
    report = conn.wait(WAIT)
    assert time.monotonic() - started < 0.4 * UNIT + 0.3 * UNIT
    assert report.reason is Reason.PEER_CLOSED and report.close_sent is None


def test_an_abort_never_cuts_short_the_wait_for_the_workers_last_reports(
    make_pair: MakePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer holds a batch when the peer closes; an abort() ends the wait to reply, but the
    # report must still wait (within the backstop) for the writer to hand that batch back.
    conn, _peer = make_pair(close_timeout=30 * UNIT)
    release = peer_closes_while_the_writer_holds(conn, monkeypatch, "held by the writer")
    assert not conn._protocol.finished.wait(0.1)  # waiting for the writer, to reply
    releaser = threading.Timer(0.3 * UNIT, release.set)
    releaser.start()
    aborted: List[Optional[ExitReport]] = []
    aborter = threading.Thread(target=lambda: aborted.append(conn.abort()))
    aborter.start()
    try:
        deadline = time.monotonic() + WAIT
        while conn._protocol.phase is not Phase.ENDING:  # the owner is collecting the reports
            assert time.monotonic() < deadline
            time.sleep(0.001)
        # A request that comes now must not end that collection early.
        report = conn.close(timeout=0.01)
    finally:
        releaser.join(WAIT)
        aborter.join(WAIT)
    assert report is not None and aborted == [report]
    assert report.written + len(report.unsent) == 1, report  # the writer's batch is accounted for
