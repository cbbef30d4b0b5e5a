"""The relay of duplexthreads.testing: what passes, what it holds back, how it ends.

WebSocket clients (``duplexthreads.connect``) talk through the relay to an echoing scripted
peer (in a child process, so that only the relay's threads and sockets are in this process).
The byte-level tests put plain sockets at both ends, so that the test sees exactly what
crosses and when the sender's writes stop.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from typing import Any, Dict, Iterator, List, Tuple, Type

import pytest

import duplexthreads
from duplexthreads import ConnectionClosedError, ConnectTimeout, Duplex, Reason
from duplexthreads.testing import Relay, ScriptedPeer

from ..timing import UNIT

pytestmark = pytest.mark.timeout(30 * UNIT)

TIMEOUT = 10 * UNIT  # every bound that waits for something that must come
SHORT = 0.2 * UNIT  # long enough for loopback to deliver what was sent; used only where nothing must come
MAX_BUFFERED = 64 * 1024 * 1024  # far more than the kernel buffers between a sender and the silent relay
RELAY_PREFIX = "duplexthreads-relay"


def relay_threads() -> List[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith(RELAY_PREFIX)]


@pytest.fixture
def peer() -> Iterator[ScriptedPeer]:
    with ScriptedPeer(echo=True, timeout=TIMEOUT) as peer:
        yield peer


@pytest.fixture
def relay(peer: ScriptedPeer) -> Iterator[Relay]:
    with Relay(peer.port, timeout=TIMEOUT) as relay:
        yield relay


@contextlib.contextmanager
def client(relay: Relay, **options: Any) -> Iterator[Duplex]:
    """A client through the relay, aborted on the way out if the test left it open. No
    heartbeat: these tests are about what the relay lets through, not about the pings."""
    duplex = duplexthreads.connect(relay.url(), ping_interval=None, open_timeout=TIMEOUT, **options)
    try:
        yield duplex
    finally:
        duplex.abort()


@pytest.fixture
def tcp_pair() -> Iterator[Tuple[Relay, socket.socket, socket.socket]]:
    """A relay between two plain sockets: (relay, client end, server end)."""
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        target.settimeout(TIMEOUT)
        relay = stack.enter_context(Relay(target.getsockname()[1], timeout=TIMEOUT))
        near = stack.enter_context(socket.create_connection(("127.0.0.1", relay.port), timeout=TIMEOUT))
        far = stack.enter_context(target.accept()[0])  # the relay connects for each client it accepts
        far.settimeout(TIMEOUT)
        yield relay, near, far


def nothing_to_read(sock: socket.socket) -> bool:
    """True if neither data nor the end of the stream reaches ``sock`` within SHORT."""
    return not select.select([sock], [], [], SHORT)[0]


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        assert chunk, f"the stream ended with {size} bytes still to come"
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def fill(sock: socket.socket) -> bytes:
    """Write to ``sock`` without blocking until the kernel takes no more; what it took."""
    pattern = bytes(range(256)) * 256  # 64 KiB, so that a lost or reordered chunk shows
    sent = bytearray()
    timeout = sock.gettimeout()
    sock.settimeout(None)  # a socket with a timeout would wait for room instead of raising
    try:
        while len(sent) < MAX_BUFFERED:
            try:
                count = sock.send(pattern, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return bytes(sent)
            sent += pattern[:count]
    finally:
        sock.settimeout(timeout)
    raise AssertionError(f"{len(sent)} bytes written and the writes still do not block")


# -- forwarding --------------------------------------------------------------------------------------


def test_echo_goes_through_the_relay_both_ways(peer: ScriptedPeer, relay: Relay) -> None:
    assert relay.port != peer.port
    assert relay.url() == f"ws://127.0.0.1:{relay.port}/" and relay.url("/chat?room=1").endswith("/chat?room=1")
    large = bytes(range(256)) * 4096  # 1 MiB in one message: many reads, partial writes
    with client(relay, max_message_size=None) as duplex:
        remote = peer.next_connection(TIMEOUT)
        duplex.send("hello")
        duplex.send(large)
        assert duplex.recv(timeout=TIMEOUT) == "hello"
        assert duplex.recv(timeout=TIMEOUT) == large
        assert remote.wait_messages(2) == ["hello", large]
        report = duplex.close(timeout=TIMEOUT)
    assert report is not None and report.close_code == 1000 and report.reason is Reason.LOCAL_CLOSE
    assert remote.wait_ended(TIMEOUT) and remote.ended_by == "eof"  # the client's FIN passed too
    assert relay.connections == 1


def test_each_client_gets_a_connection_of_its_own(peer: ScriptedPeer, relay: Relay) -> None:
    with contextlib.ExitStack() as stack:
        duplexes = [stack.enter_context(client(relay)) for _ in range(3)]
        for number, duplex in enumerate(duplexes):
            duplex.send(f"client {number}")
        assert [duplex.recv(timeout=TIMEOUT) for duplex in duplexes] == ["client 0", "client 1", "client 2"]
        assert relay.connections == 3
        # The listener and two pumps per connection, daemons all, named for the relay.
        names = sorted(thread.name for thread in relay_threads())
        assert len(names) == 7 and all(thread.daemon for thread in relay_threads())
        assert f"{RELAY_PREFIX}-{relay.port}-listener" in names
        assert f"{RELAY_PREFIX}-{relay.port}-2-to-client" in names
        for duplex in duplexes:
            duplex.close(timeout=TIMEOUT)
    for _ in duplexes:
        assert peer.next_connection(TIMEOUT).wait_ended(TIMEOUT)


def test_a_half_close_passes_and_the_other_direction_goes_on(
    tcp_pair: Tuple[Relay, socket.socket, socket.socket],
) -> None:
    _, near, far = tcp_pair
    near.sendall(b"last words")
    near.shutdown(socket.SHUT_WR)
    assert receive_exactly(far, 10) == b"last words"
    assert far.recv(1) == b""  # the client's FIN
    far.sendall(b"answer")
    assert receive_exactly(near, 6) == b"answer"
    far.shutdown(socket.SHUT_WR)
    assert near.recv(1) == b""  # and the server's


# -- silence -----------------------------------------------------------------------------------------


def test_silence_forwards_nothing_and_ends_nothing(peer: ScriptedPeer, relay: Relay) -> None:
    with client(relay) as duplex:
        remote = peer.next_connection(TIMEOUT)
        duplex.send("before")
        assert duplex.recv(timeout=TIMEOUT) == "before"
        relay.go_silent()
        duplex.send("from the client")
        remote.send("from the server")
        with pytest.raises(TimeoutError):
            duplex.recv(timeout=SHORT)
        with pytest.raises(TimeoutError):
            remote.wait_messages(2, timeout=SHORT)
        assert remote.received == ["before"]
        # Half-open, both ends: no EOF, no reset, no close frame anywhere.
        assert duplex.report is None and not duplex.closed
        assert remote.ended_by is None and remote.close_frames == []
        relay.resume()
        # What the server sent first, then the echo of what was held back on the way in.
        assert duplex.recv(timeout=TIMEOUT) == "from the server"
        assert duplex.recv(timeout=TIMEOUT) == "from the client"
        assert remote.wait_messages(2) == ["before", "from the client"]


def test_resume_delivers_what_was_held_back_in_order(peer: ScriptedPeer, relay: Relay) -> None:
    with client(relay) as duplex:
        remote = peer.next_connection(TIMEOUT)
        relay.go_silent()
        messages = [f"message {number}" for number in range(50)]
        for message in messages:
            duplex.send(message)
        with pytest.raises(TimeoutError):
            remote.wait_messages(1, timeout=SHORT)
        relay.resume()
        assert remote.wait_messages(len(messages)) == messages
        assert [duplex.recv(timeout=TIMEOUT) for _ in messages] == messages


def test_one_direction_at_a_time(peer: ScriptedPeer, relay: Relay) -> None:
    with client(relay) as duplex:
        remote = peer.next_connection(TIMEOUT)
        relay.stop_forwarding_to_client()
        duplex.send("up")
        assert remote.wait_messages(1) == ["up"]  # the way in is open
        with pytest.raises(TimeoutError):
            duplex.recv(timeout=SHORT)  # the echo is held back
        relay.resume()
        assert duplex.recv(timeout=TIMEOUT) == "up"

        relay.stop_forwarding_to_server()
        duplex.send("held")
        with pytest.raises(TimeoutError):
            remote.wait_messages(2, timeout=SHORT)
        remote.send("down")
        assert duplex.recv(timeout=TIMEOUT) == "down"  # the way out is open
        relay.resume()
        assert remote.wait_messages(2) == ["up", "held"]
        assert duplex.recv(timeout=TIMEOUT) == "held"


def test_silence_holds_new_connections_too(relay: Relay) -> None:
    relay.go_silent()
    with pytest.raises(ConnectTimeout):
        duplexthreads.connect(relay.url(), ping_interval=None, open_timeout=SHORT)
    relay.resume()
    with client(relay) as duplex:
        duplex.send("now")
        assert duplex.recv(timeout=TIMEOUT) == "now"
    assert relay.connections == 2  # the first was accepted too: its upgrade request went nowhere


def test_silence_reads_nothing_so_the_senders_writes_block(
    tcp_pair: Tuple[Relay, socket.socket, socket.socket],
) -> None:
    relay, near, far = tcp_pair
    near.sendall(b"ping")
    assert receive_exactly(far, 4) == b"ping"
    relay.go_silent()
    held_in = fill(near)  # bounded: the client's send buffer and the relay's receive buffer
    held_out = fill(far)
    assert held_in and held_out
    near.shutdown(socket.SHUT_WR)  # not even a FIN passes
    assert nothing_to_read(far) and nothing_to_read(near)
    relay.resume()
    # Everything arrives, in order, then the client's FIN; the server's direction drains too.
    assert receive_exactly(far, len(held_in)) == held_in
    assert far.recv(1) == b""
    assert receive_exactly(near, len(held_out)) == held_out
    far.sendall(b"pong")
    assert receive_exactly(near, 4) == b"pong"


# -- endings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("silent", [False, True], ids=["forwarding", "silent"])
def test_reset_ends_both_ends_with_an_error(peer: ScriptedPeer, relay: Relay, silent: bool) -> None:
    with client(relay) as duplex:
        remote = peer.next_connection(TIMEOUT)
        duplex.send("hi")
        assert duplex.recv(timeout=TIMEOUT) == "hi"
        if silent:
            relay.go_silent()
        relay.reset()
        with pytest.raises(ConnectionClosedError):
            duplex.recv(timeout=TIMEOUT)
        report = duplex.wait(TIMEOUT)
        assert report.reason is Reason.READ_ERROR and report.close_code == 1006
        assert remote.wait_ended(TIMEOUT) and remote.ended_by == "reset"
    if silent:
        relay.resume()
    with client(relay) as duplex:  # the relay serves on
        duplex.send("again")
        assert duplex.recv(timeout=TIMEOUT) == "again"


def test_reset_sends_rst_on_plain_sockets(tcp_pair: Tuple[Relay, socket.socket, socket.socket]) -> None:
    relay, near, far = tcp_pair
    relay.reset()
    for sock in (near, far):
        with pytest.raises(ConnectionResetError):
            sock.recv(1)


def test_an_end_that_vanishes_is_reset_on_the_other_side(peer: ScriptedPeer, relay: Relay) -> None:
    with client(relay) as duplex:
        remote = peer.next_connection(TIMEOUT)
        remote.reset()  # the server's RST reaches the relay, which resets the client
        with pytest.raises(ConnectionClosedError):
            duplex.recv(timeout=TIMEOUT)
        assert duplex.wait(TIMEOUT).reason is Reason.READ_ERROR
    with client(relay) as duplex:
        remote = peer.next_connection(TIMEOUT)
        duplex.abort()  # and the client's end, whichever way it goes, reaches the server
        assert remote.wait_ended(TIMEOUT) and remote.ended_by in ("eof", "reset")
    # The pumps of both connections end, quietly (an exception in a thread fails the test).
    for thread in relay_threads():
        if not thread.name.endswith("-listener"):
            thread.join(TIMEOUT)
    assert [thread.name for thread in relay_threads()] == [f"{RELAY_PREFIX}-{relay.port}-listener"]


def test_a_target_that_refuses_resets_the_client() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    with Relay(port, timeout=TIMEOUT) as relay:  # nothing listens there any more
        with pytest.raises(ConnectionResetError):  # on loopback the RST may even beat connect()'s return
            with socket.create_connection(("127.0.0.1", relay.port), timeout=TIMEOUT) as sock:
                sock.recv(1)
        assert relay.connections == 1


def test_close_ends_every_connection_and_leaves_no_thread(peer: ScriptedPeer) -> None:
    relay = Relay(peer.port, timeout=TIMEOUT)
    try:
        with client(relay) as talking, client(relay) as silenced:
            talking.send("hi")
            assert talking.recv(timeout=TIMEOUT) == "hi"
            relay.stop_forwarding_to_client()  # a pump waiting on the condition must end too
            silenced.send("unheard")
            assert len(relay_threads()) == 5
            relay.close()
            assert relay_threads() == []
            for duplex in (talking, silenced):
                with pytest.raises(ConnectionClosedError):
                    duplex.recv(timeout=TIMEOUT)
    finally:
        relay.close()  # a second close is harmless
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", relay.port), timeout=TIMEOUT).close()
    with pytest.raises(RuntimeError, match="closed"):
        relay.go_silent()
    with pytest.raises(RuntimeError, match="closed"):
        relay.reset()


def test_close_with_no_client_and_while_silent(peer: ScriptedPeer) -> None:
    with Relay(peer.port, timeout=TIMEOUT) as relay:
        relay.go_silent()
    assert relay_threads() == []


# -- arguments ---------------------------------------------------------------------------------------

BAD_ARGUMENTS: List[Tuple[Dict[str, Any], Type[Exception], str]] = [
    ({"target_port": "8080"}, TypeError, "target_port"),
    ({"target_port": True}, TypeError, "target_port"),
    ({"target_port": 80.0}, TypeError, "target_port"),
    ({"target_port": 0}, ValueError, "target_port"),
    ({"target_port": 65536}, ValueError, "target_port"),
    ({"target_host": None}, TypeError, "target_host"),
    ({"target_host": ""}, ValueError, "target_host"),
    ({"target_host": "no such host.invalid"}, ValueError, "target_host"),
    ({"host": b"127.0.0.1"}, TypeError, "host"),
    ({"host": ""}, ValueError, "host"),
    ({"port": None}, TypeError, "port"),
    ({"port": -1}, ValueError, "port"),
    ({"port": 65536}, ValueError, "port"),
    ({"timeout": None}, TypeError, "timeout"),
    ({"timeout": 0}, ValueError, "timeout"),
    ({"timeout": float("nan")}, ValueError, "timeout"),
    ({"timeout": float("inf")}, ValueError, "timeout"),
]


@pytest.mark.parametrize(("options", "error", "named"), BAD_ARGUMENTS, ids=lambda value: repr(value)[:40])
def test_arguments_are_checked_before_anything_starts(
    options: Dict[str, Any], error: Type[Exception], named: str
) -> None:
    arguments: Dict[str, Any] = {"target_port": 9, **options}
    with pytest.raises(error, match=named):
        Relay(**arguments)
    assert relay_threads() == []


def test_url_checks_its_path(relay: Relay) -> None:
    with pytest.raises(TypeError, match="path"):
        relay.url(b"/")  # type: ignore[arg-type]
    for path in ("chat", "/a b", "/a\r\n"):
        with pytest.raises(ValueError, match="path"):
            relay.url(path)
