"""One conformance suite, run over every transport and every exit path.

After each path it checks the promises of docs/design.rst: P1 (no thread of the connection or its
backend alive), P2 (transport closed once, socket released), P3 (the report), P4 (every
numbered message either reached the peer's side of the wire or came back in ``unsent``, in
order) and P5 (teardown bounded: every wait here has a deadline).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator, List

import pytest

from duplexthreads import (
    ConnectionClosedError,
    ConnectionClosedOK,
    Duplex,
    ExitReport,
    ProtocolError,
    Reason,
    TransportError,
)
from duplexthreads.testing import VIOLATIONS, ScriptedPeer
from duplexthreads.transports import MemoryTransport

from .harness import KINDS, Endpoints, open_endpoints
from .timing import UNIT

pytestmark = pytest.mark.timeout(30 * UNIT)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Opened(List[Endpoints]):
    """What a test opened, and the shared scripted peer its client kinds connect to."""

    def __init__(self, server: ScriptedPeer) -> None:
        super().__init__()
        self.server = server


@pytest.fixture
def opened(kind: str, scripted_server: ScriptedPeer) -> Iterator[Opened]:
    """Collects what a test opens, and cleans it up even when the test fails."""
    opened = Opened(scripted_server)
    yield opened
    for endpoints in opened:
        endpoints.close_all()


def open_pair(opened: Opened, kind: str, **options: Any) -> Endpoints:
    endpoints = open_endpoints(kind, opened.server, **options)
    opened.append(endpoints)
    return endpoints


def numbered(count: int) -> List[str]:
    return [f"message {i}" for i in range(count)]


def assert_torn_down(conn: Duplex) -> ExitReport:
    """P1 and P2, then hand back the report for P3/P4 checks."""
    report = conn.report
    assert report is not None and conn.closed
    assert report.lingering == ()
    alive = [t.name for t in conn.threads() if t.is_alive()]
    assert alive == [], f"threads outlived the connection: {alive}"
    prefix = f"duplexthreads-{conn.id}-"
    assert not [t.name for t in threading.enumerate() if t.name.startswith(prefix)]
    assert conn.transport.closed
    if isinstance(conn.transport, MemoryTransport):
        assert conn.transport.close_calls == 1
    return report


def assert_accounted(sent: List[str], report: ExitReport, peer_got: List[Any], complete: bool) -> None:
    """P4: sent = written prefix + unsent, and the peer got a prefix of the written part."""
    assert list(sent[: report.written]) + list(report.unsent) == sent
    assert peer_got == sent[: len(peer_got)]
    assert len(peer_got) <= report.written
    if complete:
        assert peer_got == sent[: report.written]


def test_messages_flow_both_ways(opened: Opened, kind: str) -> None:
    pair = open_pair(opened, kind)
    pair.conn.send("text é")
    pair.conn.send(b"\x00\xff" * 5000)
    pair.conn.send(bytearray(b"ba"))
    pair.conn.send(memoryview(b"mv"))
    assert pair.peer.wait_messages(4) == ["text é", b"\x00\xff" * 5000, b"ba", b"mv"]
    pair.peer.send("from peer")
    pair.peer.send(b"\x01" * 70000)
    assert pair.conn.recv(timeout=10 * UNIT) == "from peer"
    assert pair.conn.recv(timeout=10 * UNIT) == b"\x01" * 70000
    report = pair.conn.close()
    assert report is not None and report.ok


def test_peer_close_frame(opened: Opened, kind: str) -> None:
    pair = open_pair(opened, kind)
    sent = numbered(20)
    for message in sent:
        pair.conn.send(message)
    got = pair.peer.wait_messages(len(sent))
    pair.peer.close(1001, "going away")
    report = pair.conn.wait(10 * UNIT)
    assert (report.first, report.reason, report.error) == ("reader", Reason.PEER_CLOSED, None)
    assert (report.close_code, report.close_reason) == (1001, "going away")
    assert report.ok
    assert pair.peer.wait_close_frame()[0] == 1001  # we answered the close
    assert_torn_down(pair.conn)
    assert_accounted(sent, report, got, complete=True)
    assert report.unsent == ()


def test_peer_reset(opened: Opened, kind: str) -> None:
    pair = open_pair(opened, kind)
    sent = numbered(10)
    for message in sent:
        pair.conn.send(message)
    got = pair.peer.wait_messages(len(sent))
    pair.peer.reset()
    report = pair.conn.wait(10 * UNIT)
    assert report.reason in (Reason.READ_ERROR, Reason.WRITE_ERROR)
    assert isinstance(report.error, TransportError)
    assert report.close_code == 1006 and not report.ok
    assert_torn_down(pair.conn)
    assert_accounted(sent, report, got, complete=False)


def test_peer_fin_without_close_frame(opened: Opened, kind: str) -> None:
    pair = open_pair(opened, kind)
    pair.conn.send("before")
    got = pair.peer.wait_messages(1)
    pair.peer.drop()
    report = pair.conn.wait(10 * UNIT)
    assert (report.first, report.reason) == ("reader", Reason.READ_ERROR)
    assert isinstance(report.error, TransportError)
    assert report.close_code == 1006
    assert_torn_down(pair.conn)
    assert_accounted(["before"], report, got, complete=True)


def test_local_close(opened: Opened, kind: str) -> None:
    pair = open_pair(opened, kind)
    sent = numbered(200)
    for message in sent:
        pair.conn.send(message)
    report = pair.conn.close(1000, "done")  # flushes everything queued before the close frame
    assert report is not None
    assert (report.first, report.reason, report.error) == ("owner", Reason.LOCAL_CLOSE, None)
    assert (report.close_code, report.close_reason) == (1000, "done")
    assert report.ok and report.written == len(sent) and report.unsent == ()
    got = pair.peer.wait_messages(len(sent))
    assert pair.peer.wait_close_frame() == (1000, "done")
    assert_torn_down(pair.conn)
    assert_accounted(sent, report, got, complete=True)
    assert pair.conn.close() is report  # idempotent
    pair.peer.wait_ended()
    assert pair.peer.close_frames == [(1000, "done")]  # one close frame, and nothing after it
    assert pair.peer.received == sent


def test_abort(opened: Opened, kind: str) -> None:
    pair = open_pair(opened, kind)
    sent = numbered(500)
    for message in sent:
        pair.conn.send(message)
    report = pair.conn.abort()
    assert report is not None
    assert (report.first, report.reason, report.error) == ("owner", Reason.ABORTED, None)
    assert report.close_code == 1006 and not report.ok
    assert_torn_down(pair.conn)
    pair.peer.wait_ended()
    assert_accounted(sent, report, list(pair.peer.received), complete=False)


def test_read_error(opened: Opened, kind: str) -> None:
    pair = open_pair(opened, kind)
    if kind == "memory":
        transport = pair.conn.transport
        assert isinstance(transport, MemoryTransport)
        transport.fail_next_read(OSError("injected read failure"))
    else:
        pair.peer.violate("reserved-opcode")  # type: ignore[union-attr]
    report = pair.conn.wait(10 * UNIT)
    assert (report.first, report.reason) == ("reader", Reason.READ_ERROR)
    assert isinstance(report.error, TransportError)
    if kind == "memory":
        assert report.error.__cause__ is not None  # the backend's exception, chained
        assert report.close_code == 1006
    else:
        # The peer broke the protocol: it is told so with the code RFC 6455 names.
        assert isinstance(report.error, ProtocolError) and report.error.close_code == 1002
        assert report.close_code == 1002 and report.close_sent == (1002, "")
        assert pair.peer.wait_close_frame()[0] == 1002
    assert_torn_down(pair.conn)


#: A sample of each kind of violation; tests/integration/test_hostile_peers.py tries them all.
VIOLATION_SAMPLE = ["invalid-utf8", "invalid-utf8-fragment", "orphan-continuation", "long-ping", "short-close"]


@pytest.mark.parametrize("violation", VIOLATION_SAMPLE)
def test_a_protocol_violation_fails_the_connection_with_the_rfc_code(opened: Opened, kind: str, violation: str) -> None:
    if kind == "memory":
        pytest.skip("the memory transport carries messages, not frames")
    pair = open_pair(opened, kind)
    pair.peer.send("fine")
    pair.peer.violate(violation)  # type: ignore[union-attr]
    code = VIOLATIONS[violation]
    report = pair.conn.wait(10 * UNIT)
    assert isinstance(report.error, ProtocolError) and report.error.close_code == code
    assert (report.close_code, report.close_sent) == (code, (code, ""))
    assert pair.peer.wait_close_frame()[0] == code
    assert pair.conn.recv(timeout=1 * UNIT) == "fine"  # what came before is delivered...
    with pytest.raises(ConnectionClosedError):
        pair.conn.recv(timeout=1 * UNIT)  # ...and nothing of the bad frame
    assert_torn_down(pair.conn)


def test_write_error(opened: Opened, kind: str) -> None:
    pair = open_pair(opened, kind)
    sent = numbered(5)
    if kind == "memory":
        transport = pair.conn.transport
        assert isinstance(transport, MemoryTransport)
        transport.fail_writes(BrokenPipeError("injected write failure"), after=2)
    else:
        import socket

        # Our writes now fail with EPIPE. The peer may see our FIN and end TCP in turn, so the
        # reader can fail first: either way the accounting must be exact.
        pair.conn.transport.raw_socket.shutdown(socket.SHUT_WR)  # type: ignore[attr-defined]
    accepted = []
    for message in sent:
        try:
            pair.conn.send(message)
        except ConnectionClosedError:
            break
        accepted.append(message)
    report = pair.conn.wait(10 * UNIT)
    if kind == "memory":
        assert (report.first, report.reason) == ("writer", Reason.WRITE_ERROR)
    else:
        assert report.reason in (Reason.WRITE_ERROR, Reason.READ_ERROR)
    assert isinstance(report.error, TransportError)
    assert_torn_down(pair.conn)
    pair.peer.wait_ended()
    assert_accounted(accepted, report, list(pair.peer.received), complete=False)
    if kind == "memory":
        assert report.written == 2 and report.unsent == tuple(sent[2:])


def test_callback_error(opened: Opened, kind: str) -> None:
    seen: List[Any] = []

    def on_message(message: Any) -> None:
        seen.append(message)
        if message == "boom":
            raise ValueError("callback failed")

    pair = open_pair(opened, kind, on_message=on_message)
    with pytest.raises(RuntimeError):
        pair.conn.recv(timeout=0)
    pair.peer.send("fine")
    pair.peer.send("boom")
    report = pair.conn.wait(10 * UNIT)
    assert (report.first, report.reason) == ("reader", Reason.READ_ERROR)
    assert isinstance(report.error, ValueError)
    assert report.close_code == 1011
    assert seen == ["fine", "boom"]
    assert pair.peer.wait_close_frame()[0] == 1011  # the peer is told why
    assert_torn_down(pair.conn)


def test_close_while_writer_blocked_on_a_peer_that_stopped_reading(opened: Opened, kind: str) -> None:
    close_timeout = 0.5 * UNIT
    pair = open_pair(opened, kind, close_timeout=close_timeout, max_queue=2)
    pair.peer.stop_reading()
    chunk = b"x" * (1 << 20)
    sent: List[Any] = []
    for index in range(256):  # bounded: loopback buffers hold a few MiB at most
        message = index.to_bytes(4, "big") + chunk
        try:
            pair.conn.send(message, timeout=0.3 * UNIT)
        except TimeoutError:
            break  # the writer is stuck in a write and the queue is full
        sent.append(message)
    else:
        pytest.fail("the writer never blocked")
    started = time.monotonic()
    report = pair.conn.close()
    elapsed = time.monotonic() - started
    assert report is not None
    assert elapsed < close_timeout + 2 * UNIT
    assert report.reason is Reason.LOCAL_CLOSE and not report.ok
    assert isinstance(report.error, (TimeoutError, TransportError))
    assert report.unsent, "messages stuck behind the blocked write come back"
    # Our close frame never left (it was queued behind the stuck write): the code says so.
    assert report.close_sent is None and report.close_code == 1006
    assert_torn_down(pair.conn)
    assert list(sent[: report.written]) + list(report.unsent) == sent


def test_a_close_keeps_reading_but_keeps_no_more_than_max_queue(opened: Opened, kind: str) -> None:
    # Nobody calls recv(): the reader fills the inbound queue and waits. Our close must still
    # see the peer's answer behind ten messages, without holding more than max_queue of them.
    pair = open_pair(opened, kind, max_queue=4)
    sent = [f"m{index}" for index in range(10)]
    for message in sent:
        pair.peer.send(message)
    report = pair.conn.close()
    assert report is not None and report.ok, report.describe()
    assert report.discarded == 6
    assert "6 received during the close and discarded" in report.describe()
    kept = [pair.conn.recv(timeout=0) for _ in range(4)]
    assert kept == sent[:4]
    with pytest.raises(ConnectionClosedOK):
        pair.conn.recv(timeout=0)
    assert_torn_down(pair.conn)


def test_close_against_a_silent_peer_is_bounded(opened: Opened, kind: str) -> None:
    pair = open_pair(opened, kind, close_timeout=0.3 * UNIT)
    pair.peer.go_silent()
    started = time.monotonic()
    report = pair.conn.close()
    assert report is not None
    assert time.monotonic() - started < 0.3 * UNIT + 2 * UNIT
    assert report.reason is Reason.LOCAL_CLOSE
    assert isinstance(report.error, TimeoutError)
    assert pair.peer.wait_close_frame()[0] == 1000
    assert_torn_down(pair.conn)


def test_close_timeout_bounds_the_close_itself(opened: Opened, kind: str) -> None:
    """close(timeout=t) ends the connection within t, whatever close_timeout says, and
    returns the report instead of raising: its error says the handshake did not finish."""
    pair = open_pair(opened, kind, close_timeout=30 * UNIT)
    pair.peer.go_silent()
    started = time.monotonic()
    report = pair.conn.close(timeout=0.2 * UNIT)
    assert time.monotonic() - started < 0.2 * UNIT + 2 * UNIT
    assert report is not None and report.reason is Reason.LOCAL_CLOSE and not report.ok
    assert isinstance(report.error, TimeoutError) and "did not finish" in str(report.error)
    assert report.close_sent == (1000, "") and report.close_received is None
    assert pair.peer.wait_close_frame() == (1000, "")
    assert_torn_down(pair.conn)


def test_a_shorter_second_close_shortens_the_close_under_way(opened: Opened, kind: str) -> None:
    pair = open_pair(opened, kind, close_timeout=30 * UNIT)
    pair.peer.go_silent()
    first: List[Any] = []
    patient = threading.Thread(target=lambda: first.append(pair.conn.close(4000, "first")))
    patient.start()
    try:
        assert pair.peer.wait_close_frame() == (4000, "first")
        started = time.monotonic()
        report = pair.conn.close(timeout=0.1 * UNIT)
        assert time.monotonic() - started < 0.1 * UNIT + 2 * UNIT
    finally:
        patient.join(10 * UNIT)
    assert first == [report] and report is not None
    assert isinstance(report.error, TimeoutError) and report.close_sent == (4000, "first")
    assert_torn_down(pair.conn)


def test_a_close_frame_without_a_code_is_a_normal_close(opened: Opened, kind: str) -> None:
    """What browsers and Node send from a plain close(): no status code, reported as 1005."""
    pair = open_pair(opened, kind)
    pair.peer.send("last words")
    pair.peer.close(None)
    assert list(pair.conn) == ["last words"]  # ends quietly, not with ConnectionClosedError
    report = pair.conn.wait(10 * UNIT)
    assert report.ok and report.reason is Reason.PEER_CLOSED
    assert (report.close_code, report.close_received) == (1005, (1005, ""))
    assert_torn_down(pair.conn)


def test_text_utf8_cannot_encode_is_refused_at_the_call(opened: Opened, kind: str) -> None:
    pair = open_pair(opened, kind)
    sent = numbered(50)
    for message in sent:
        pair.conn.send(message)
    for bad in ("bad\ud800", "\udfff", "ok é then \udc80"):
        with pytest.raises(ValueError, match="UTF-8"):
            pair.conn.send(bad)
    pair.conn.send("after")
    sent.append("after")
    report = pair.conn.close()
    assert report is not None and report.ok and report.error is None
    assert report.written == len(sent) and report.unsent == ()
    assert pair.peer.wait_messages(len(sent)) == sent
    assert_torn_down(pair.conn)


def test_misuse_leaves_the_connection_working(opened: Opened, kind: str) -> None:
    pair = open_pair(opened, kind)
    for bad in (123, None, ["list"], {"a": 1}):
        with pytest.raises(TypeError):
            pair.conn.send(bad)  # type: ignore[arg-type]
    pair.conn.send("still fine")
    assert pair.peer.wait_messages(1) == ["still fine"]
    report = pair.conn.close()
    assert report is not None and report.ok
    with pytest.raises(ConnectionClosedOK) as closed:
        pair.conn.send("too late")
    assert closed.value.report is report
    with pytest.raises(ConnectionClosedOK):
        pair.conn.recv(timeout=1 * UNIT)


def test_iteration_yields_until_the_peer_closes(opened: Opened, kind: str) -> None:
    pair = open_pair(opened, kind)
    for message in ("a", b"b", "c"):
        pair.peer.send(message)
    pair.peer.close(1000)
    assert list(pair.conn) == ["a", b"b", "c"]
    assert_torn_down(pair.conn)


def test_iteration_raises_on_an_abnormal_end(opened: Opened, kind: str) -> None:
    pair = open_pair(opened, kind)
    pair.peer.send("a")
    pair.peer.drop()
    received = []
    with pytest.raises(ConnectionClosedError) as ended:
        for message in pair.conn:
            received.append(message)
    assert received == ["a"]
    assert ended.value.report is not None and ended.value.report.reason is Reason.READ_ERROR


def test_close_from_the_callback(opened: Opened, kind: str) -> None:
    holder: List[Duplex] = []
    returned: List[Any] = []

    def on_message(message: Any) -> None:
        returned.append(holder[0].close(1000, "bye"))

    pair = open_pair(opened, kind, on_message=on_message)
    holder.append(pair.conn)
    pair.peer.send("please close")
    report = pair.conn.wait(10 * UNIT)
    assert returned == [None]  # from its own thread close() cannot wait for itself
    assert report.reason is Reason.LOCAL_CLOSE and report.ok
    assert pair.peer.wait_close_frame() == (1000, "bye")
    assert_torn_down(pair.conn)


def test_close_from_another_thread_while_recv_blocks(opened: Opened, kind: str) -> None:
    pair = open_pair(opened, kind)
    outcome: List[BaseException] = []

    def receive() -> None:
        try:
            pair.conn.recv(timeout=10 * UNIT)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
            outcome.append(exc)

    receiver = threading.Thread(target=receive)
    receiver.start()
    report = pair.conn.close()
    receiver.join(10 * UNIT)
    assert not receiver.is_alive()
    assert report is not None and report.ok
    assert len(outcome) == 1 and isinstance(outcome[0], ConnectionClosedOK)


def test_max_queue_bounds_what_an_unread_connection_buffers(opened: Opened, kind: str) -> None:
    """When the application stops reading, the peer is slowed down by TCP, not buffered in RAM."""
    if kind == "memory":
        pytest.skip("the memory transport has no flow control to push back with")
    pair = open_pair(opened, kind, max_queue=4)
    chunk = b"y" * (64 << 10)
    total = 2000  # 125 MiB: far more than loopback socket buffers hold
    sent_count: List[int] = [0]

    def flood() -> None:
        try:
            for _ in range(total):
                pair.peer.send(chunk)
                sent_count[0] += 1
        except OSError:
            pass  # the connection was aborted under a blocked send: the point of the test

    sender = threading.Thread(target=flood, name="test-flooder")
    sender.start()
    sender.join(2 * UNIT)
    stalled = sender.is_alive()
    pair.conn.abort()
    sender.join(10 * UNIT)
    assert not sender.is_alive()
    assert stalled, f"the peer sent all {sent_count[0]} messages: nothing pushed back"
    assert sent_count[0] < total
