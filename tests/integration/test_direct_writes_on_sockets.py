"""send() writing directly on a real socket: half-written frames, other senders, teardown.

A direct write never blocks. When the socket takes only part of a frame (the peer stopped
reading and the send buffer filled), the writer thread finishes that frame before anything
else, and a pong arriving meanwhile waits until it is whole. These tests make that happen
against the scripted peer in a child process and check that nothing arrives corrupted, every
sending thread's order holds, and ``written`` + ``unsent`` stays exact through close and abort.
"""

from __future__ import annotations

import threading
from typing import Dict, Iterator, List, Tuple

import pytest

import duplexthreads
from duplexthreads import ConnectionClosed, Duplex
from duplexthreads.testing import PeerConnection, ScriptedPeer

from ..timing import UNIT

pytestmark = pytest.mark.timeout(60 * UNIT)

#: Big enough that a few fill loopback's send and receive buffers, so writes stop mid-frame.
BIG = 200_000


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedPeer]:
    with ScriptedPeer(timeout=20 * UNIT) as peer:
        yield peer


def open_direct(server: ScriptedPeer, backend: str, **options: object) -> Tuple[Duplex, PeerConnection]:
    conn = duplexthreads.connect(server.url, backend=backend, **options)  # type: ignore[arg-type]
    assert conn.transport.direct_writes, "plain sockets write directly"
    return conn, server.next_connection()


def payload(sender: int, index: int, size: int) -> bytes:
    head = f"{sender}:{index}:".encode()
    return head + bytes([index % 251]) * (size - len(head))


def origin(message: bytes) -> Tuple[int, int]:
    sender, index, _ = message.split(b":", 2)
    return int(sender), int(index)


def send_from_threads(conn: Duplex, senders: int, each: int, size: int) -> Dict[int, List[bytes]]:
    """Each thread sends ``each`` messages; returns what send() accepted, per thread."""
    accepted: Dict[int, List[bytes]] = {sender: [] for sender in range(senders)}

    def run(sender: int) -> None:
        for index in range(each):
            message = payload(sender, index, size)
            try:
                conn.send(message, timeout=20 * UNIT)
            except (ConnectionClosed, TimeoutError):
                return
            accepted[sender].append(message)

    threads = [threading.Thread(target=run, args=(s,), name=f"test-sender-{s}") for s in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30 * UNIT)
        assert not thread.is_alive()
    return accepted


def assert_intact_and_in_order(got: List[bytes], accepted: Dict[int, List[bytes]]) -> None:
    for message in got:
        sender, index = origin(message)
        assert message == payload(sender, index, len(message)), "a frame arrived corrupted"
    for sender, messages in accepted.items():
        mine = [m for m in got if origin(m)[0] == sender]
        assert mine == messages[: len(mine)], f"sender {sender}: out of order or missing"


def fill_until_stuck(conn: Duplex, sender: int) -> List[bytes]:
    """Send big messages until the socket and the queue are full; return those accepted."""
    sent: List[bytes] = []
    for index in range(64):  # bounded: loopback buffers hold a few MiB at most
        message = payload(sender, index, BIG)
        try:
            conn.send(message, timeout=0.3 * UNIT)
        except TimeoutError:
            return sent  # a frame is (most likely) half written and the writer stuck finishing it
        sent.append(message)
    pytest.fail("the socket never filled")


def test_half_written_frames_are_finished_intact_after_the_peer_resumes(server: ScriptedPeer, backend: str) -> None:
    conn, remote = open_direct(server, backend, max_queue=4)
    remote.stop_reading()
    accepted = {3: fill_until_stuck(conn, 3)}
    remote.ping(b"while a frame may be half written")  # its pong must wait for a whole frame
    remote.resume_reading()
    accepted.update(send_from_threads(conn, 3, 4, BIG))
    report = conn.close()
    assert report is not None and report.ok, report
    total = sum(len(m) for m in accepted.values())
    assert report.written == total and report.unsent == ()
    got = [m for m in remote.wait_messages(total) if isinstance(m, bytes)]
    assert len(got) == total
    assert_intact_and_in_order(got, accepted)
    assert remote.wait_pongs(1) == [b"while a frame may be half written"]


@pytest.mark.parametrize("ending", ["close", "abort"])
def test_teardown_with_a_half_written_frame_keeps_accounting_exact(
    server: ScriptedPeer, backend: str, ending: str
) -> None:
    conn, remote = open_direct(server, backend, max_queue=2, close_timeout=0.3 * UNIT)
    remote.stop_reading()
    sent = fill_until_stuck(conn, 0)
    report = conn.close() if ending == "close" else conn.abort()
    assert report is not None and not report.ok
    assert list(sent[: report.written]) + list(report.unsent) == sent
    assert report.unsent, "the half-written frame and those behind it come back"
    assert report.close_sent is None  # no close frame inside a half-written one
    remote.resume_reading()
    remote.wait_ended()
    got = [m for m in remote.received if isinstance(m, bytes)]
    assert got == sent[: len(got)] and len(got) <= report.written
    assert [t for t in conn.threads() if t.is_alive()] == []


@pytest.mark.parametrize("ending", ["close", "abort"])
def test_concurrent_senders_then_teardown(server: ScriptedPeer, backend: str, ending: str) -> None:
    conn, remote = open_direct(server, backend, max_queue=8)
    holder: List[Dict[int, List[bytes]]] = []
    senders = threading.Thread(target=lambda: holder.append(send_from_threads(conn, 4, 300, 2000)))
    senders.start()
    remote.wait_messages(200)
    report = conn.close() if ending == "close" else conn.abort()
    senders.join(40 * UNIT)
    assert report is not None
    accepted = holder[0]
    remote.wait_ended()
    got = [m for m in remote.received if isinstance(m, bytes)]
    assert_intact_and_in_order(got, accepted)
    everything = got + [m for m in report.unsent if isinstance(m, bytes)]
    assert sorted(everything) == sorted(m for ms in accepted.values() for m in ms)
    assert len(got) == report.written if ending == "close" else len(got) <= report.written


def test_no_direct_write_starts_once_the_state_says_closing() -> None:
    """simple-websocket's thread answers a peer's close frame by itself, under the write lock:
    the state was asked before taking the lock, so a broadcast's frame could follow the close
    reply. write_now() now asks under the lock, and send_now() then hands the message, not a
    frame, to the writer, whose send_batch() asks again."""
    import socket

    from duplexthreads.transports._sockets import SocketWriter

    ours, theirs = socket.socketpair()
    try:
        writer = SocketWriter(ours)
        assert writer.write_now(b"frame", lambda: False) == b"frame"  # whole: nothing went out
        assert writer.write_now(b"frame", lambda: True) is None
        theirs.settimeout(5 * UNIT)
        assert theirs.recv(16) == b"frame"
    finally:
        ours.close()
        theirs.close()
    with duplexthreads.serve(ping_interval=None) as server:
        client = duplexthreads.connect(server.url, ping_interval=None)
        with client:
            assert str(client.recv(timeout=5 * UNIT)).startswith("* welcome")  # it is in the hub now
            (member,) = list(server.hub)
            transport = member.transport
            transport._is_open = lambda: False  # type: ignore[attr-defined]  # as if the close reply just went
            assert transport.send_now("late") == "late"  # the message itself, for send_batch() to refuse
