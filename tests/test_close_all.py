"""close_all(): many connections ended side by side, over every transport."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator, List

import pytest

import duplexthreads
from duplexthreads import Duplex, Reason
from duplexthreads.testing import MemoryPeer, ScriptedPeer
from duplexthreads.transports import memory_pair

from .harness import KINDS, Endpoints, open_endpoints
from .timing import UNIT

pytestmark = pytest.mark.timeout(60 * UNIT)


@pytest.fixture
def endpoints(scripted_server: ScriptedPeer) -> Iterator[List[Endpoints]]:
    opened = [open_endpoints(kind, scripted_server) for kind in KINDS for _ in range(3)]
    yield opened
    for pair in opened:
        pair.close_all()


def assert_all_gone(conns: List[Duplex]) -> None:
    for conn in conns:
        assert conn.closed and conn.report is not None and conn.report.lingering == ()
        assert not [t.name for t in conn.threads() if t.is_alive()]
        assert conn.transport.closed


def test_close_all_closes_gracefully_and_flushes_each(endpoints: List[Endpoints]) -> None:
    conns = [pair.conn for pair in endpoints]
    for index, conn in enumerate(conns):
        conn.send(f"last words {index}")
    reports = duplexthreads.close_all(conns, 1001, "shutting down")
    assert [report.connection_id for report in reports] == [conn.id for conn in conns]
    for index, (pair, report) in enumerate(zip(endpoints, reports)):
        assert report.reason is Reason.LOCAL_CLOSE and report.ok, (pair.kind, report.describe())
        assert pair.peer.wait_messages(1) == [f"last words {index}"]
        assert pair.peer.wait_close_frame() == (1001, "shutting down")
    assert_all_gone(conns)


def test_close_all_aborts(endpoints: List[Endpoints]) -> None:
    conns = [pair.conn for pair in endpoints]
    reports = duplexthreads.close_all(conns, abort=True)
    assert all(report.reason is Reason.ABORTED for report in reports)
    assert_all_gone(conns)


def test_close_all_waits_for_connections_already_ending_and_tears_down_unstarted_ones() -> None:
    started_ours, started_theirs = memory_pair()
    started = Duplex(started_ours).start()
    peer = MemoryPeer(started_theirs)
    unstarted_ours, unstarted_theirs = memory_pair()
    unstarted = Duplex(unstarted_ours)
    try:
        peer.close(1000, "peer first")
        reports = duplexthreads.close_all([started, unstarted, started])
        assert reports[0] is reports[2]
        assert reports[0].reason is Reason.PEER_CLOSED or reports[0].reason is Reason.LOCAL_CLOSE
        assert reports[1].reason is Reason.ABORTED and unstarted_ours.close_calls == 1
        assert_all_gone([started, unstarted])
    finally:
        peer.stop()
        unstarted_theirs.close()


def test_close_all_checks_its_arguments_first() -> None:
    ours, theirs = memory_pair()
    conn = Duplex(ours).start()
    peer = MemoryPeer(theirs)
    try:
        with pytest.raises(TypeError):
            duplexthreads.close_all([conn, "not a connection"])  # type: ignore[list-item]
        with pytest.raises(ValueError):
            duplexthreads.close_all([conn], code=1006)
        with pytest.raises(TypeError, match="abort"):
            duplexthreads.close_all([conn], abort="yes")  # type: ignore[arg-type]
        peer.send("still mine")
        with pytest.raises(TypeError, match=r"close_all\(\[conn\]\)"):
            duplexthreads.close_all(conn)  # brackets forgotten: must not read its messages
        assert not conn.closed  # nothing was touched
        assert conn.recv(timeout=5 * UNIT) == "still mine"
    finally:
        conn.abort()
        peer.stop()


def test_close_all_from_a_callback_is_refused() -> None:
    ours, theirs = memory_pair()
    refused: List[BaseException] = []
    holder: List[Duplex] = []
    done = threading.Event()

    def on_message(message: object) -> None:
        try:
            duplexthreads.close_all(holder)
        except RuntimeError as exc:
            refused.append(exc)
        done.set()

    # The other connection comes first in the list: the refusal must leave it untouched.
    other_ours, other_theirs = memory_pair()
    other = Duplex(other_ours).start()
    other_peer = MemoryPeer(other_theirs)
    conn = Duplex(ours, on_message=on_message)
    holder.extend([other, conn])
    conn.start()
    peer = MemoryPeer(theirs)
    try:
        peer.send("go")
        assert done.wait(10 * UNIT)
        assert len(refused) == 1
        assert not other.closed and other_peer.close_frames == []
        other.send("still open")
        assert other_peer.wait_messages(1) == ["still open"]
    finally:
        conn.abort()
        other.abort()
        peer.stop()
        other_peer.stop()


@pytest.mark.parametrize("second", ["abort", "short close"])
def test_a_connection_waiting_its_turn_in_close_all_can_be_ended_from_another_thread(second: str) -> None:
    # close_all() finishes one connection after another: while the first waits for a silent
    # peer, the second's ending must not wait for its turn.
    pairs = [memory_pair(), memory_pair()]
    conns = [Duplex(ours, close_timeout=timeout).start() for (ours, _), timeout in zip(pairs, (1.0, 20.0))]
    peers = [MemoryPeer(theirs) for _, theirs in pairs]
    for peer in peers:
        peer.go_silent()
    closer = threading.Thread(target=duplexthreads.close_all, args=(conns,))
    closer.start()
    try:
        for peer in peers:
            peer.wait_close_frame()  # close_all() has begun both
        started = time.monotonic()
        report = conns[1].abort() if second == "abort" else conns[1].close(timeout=0.2)
        assert time.monotonic() - started < 0.2 + 0.5 * UNIT
        assert report is not None and report is conns[1].report
        assert report.reason is (Reason.ABORTED if second == "abort" else Reason.LOCAL_CLOSE)
        assert not conns[0].closed  # still waiting for its silent peer, up to 1 s
    finally:
        closer.join(10 * UNIT)
        for conn, peer in zip(conns, peers):
            conn.abort()
            peer.stop()
    assert not closer.is_alive()
    assert conns[0].report is not None and conns[0].report.reason is Reason.LOCAL_CLOSE


def test_a_second_ctrl_c_while_close_all_cleans_up_still_ends_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    from duplexthreads._protocol import ExitProtocol

    pairs = [memory_pair() for _ in range(3)]
    conns = [Duplex(ours, close_timeout=20.0).start() for ours, _ in pairs]
    peers = [MemoryPeer(theirs) for _, theirs in pairs]
    for peer in peers:
        peer.go_silent()  # every close waits: Ctrl-C comes while close_all() waits on the first
    first = conns[0]._protocol
    real_finish = ExitProtocol.finish_ending

    def finish_ending(self: ExitProtocol, abort: bool = False) -> Any:
        if self is first:
            raise KeyboardInterrupt  # the first Ctrl-C, then a second in the cleanup
        return real_finish(self, abort)

    monkeypatch.setattr(ExitProtocol, "finish_ending", finish_ending)
    try:
        with pytest.raises(KeyboardInterrupt):
            duplexthreads.close_all(conns)
        for conn in conns[1:]:  # ended by the cleanup, although it was interrupted on the first
            report = conn.report
            assert report is not None and report.reason is Reason.ABORTED
    finally:
        monkeypatch.undo()
        for conn, peer in zip(conns, peers):
            conn.abort()
            peer.stop()
