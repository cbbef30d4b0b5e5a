"""Peers that misbehave on purpose, each in a child process (the scripted peer of
duplexthreads.testing): a trickled handshake, a server that speaks and closes with its 101,
every protocol violation RFC 6455 names, a message in a quarter of a million fragments, close
handshakes that must end TCP cleanly, and a server slow to end TCP after one. The client
backends are checked against ScriptedPeer; the server side, accept() in Werkzeug, against
ScriptedClient and requests written by hand.
"""

from __future__ import annotations

import queue
import select
import socket
import struct
import threading
import time
import tracemalloc
from typing import Any, Callable, Dict, Iterable, Iterator, Union

import pytest
from werkzeug.serving import make_server

import duplexthreads
from duplexthreads import (
    ConnectError,
    ConnectionClosedError,
    Duplex,
    HandshakeRejected,
    ProtocolError,
    Reason,
    TransportError,
)
from duplexthreads.exceptions import ConnectTimeout
from duplexthreads.testing import VIOLATIONS, ScriptedClient, ScriptedPeer, encode_frame
from duplexthreads.transports.simple_websocket import SimpleWebSocketTransport
from duplexthreads.transports.websocket_client import WebSocketClientTransport

from ..timing import UNIT

pytestmark = pytest.mark.timeout(60 * UNIT)

OP_TEXT, OP_BINARY, OP_CONTINUATION, OP_PING = 0x1, 0x2, 0x0, 0x9


@pytest.fixture(scope="module")
def peer() -> Iterator[ScriptedPeer]:
    """One plain scripted server for the tests that need nothing special of it."""
    with ScriptedPeer(timeout=10 * UNIT) as peer:
        yield peer


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """For conditions nothing signals (memory in use): check until true or the deadline."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() >= deadline:
            return False
        pause.wait(0.01)
    return True


# -- item 2: open_timeout bounds the whole opening --------------------------------------------------


def test_open_timeout_bounds_a_trickled_handshake(backend: str) -> None:
    """A 101 sent one byte every half second used to hold connect() for a timeout per byte."""
    with ScriptedPeer(trickle_handshake=0.5, timeout=10 * UNIT) as peer:
        started = time.monotonic()
        with pytest.raises(ConnectTimeout) as raised:
            duplexthreads.connect(peer.url, backend=backend, open_timeout=1.0)
        elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 1.0 + 1.5 * UNIT
    # One exception, two families: the library's and the builtin one callers already catch.
    assert isinstance(raised.value, ConnectError) and isinstance(raised.value, TimeoutError)
    assert "open_timeout" in str(raised.value)


# -- item 6: a server that speaks first and closes at once ------------------------------------------


@pytest.mark.parametrize("close", [(4001, "bye"), (None, "")])
def test_a_server_that_greets_and_closes_with_its_101(backend: str, close: Any) -> None:
    """The message and the close frame come in the same segment as the 101; 50 times, since the
    old failure (ConnectError 'Connection error: None') came on a few percent of connects."""
    code = 1005 if close[0] is None else close[0]
    with ScriptedPeer(greeting=["hello", b"\x00bin"], close_after_greeting=close, timeout=10 * UNIT) as peer:
        for _ in range(50):
            conn = duplexthreads.connect(peer.url, backend=backend)
            assert [conn.recv(timeout=10 * UNIT), conn.recv(timeout=10 * UNIT)] == ["hello", b"\x00bin"]
            report = conn.wait(10 * UNIT)
            assert (report.reason, report.close_code, report.close_reason) == (Reason.PEER_CLOSED, code, close[1])
            remote = peer.next_connection()
            # Our answer echoes the code; an empty close (1005, never sent) is answered with 1000.
            assert remote.wait_close_frame() == ((1000, "") if close[0] is None else close)
            assert remote.wait_ended() and remote.ended_by != "reset"


# -- item 7: protocol violations fail the connection as RFC 6455 says --------------------------------

SERVER_VIOLATIONS = sorted(name for name in VIOLATIONS if name != "unmasked-frame")
CLIENT_VIOLATIONS = sorted(name for name in VIOLATIONS if name != "masked-frame")


@pytest.mark.parametrize("violation", SERVER_VIOLATIONS)
def test_a_server_that_breaks_the_protocol(peer: ScriptedPeer, backend: str, violation: str) -> None:
    code = VIOLATIONS[violation]
    conn = duplexthreads.connect(peer.url, backend=backend)
    remote = peer.next_connection()
    remote.send("before")
    assert conn.recv(timeout=10 * UNIT) == "before"
    remote.violate(violation)
    report = conn.wait(10 * UNIT)
    # Failed as RFC 6455 7.1.7 says: a close frame with the code, then TCP ended.
    assert isinstance(report.error, ProtocolError) and report.error.close_code == code, repr(report.error)
    assert (report.reason, report.close_code, report.close_sent) == (Reason.READ_ERROR, code, (code, ""))
    assert remote.wait_close_frame()[0] == code
    # Nothing of the offending frame (or message) was delivered.
    with pytest.raises(ConnectionClosedError):
        conn.recv(timeout=10 * UNIT)
    assert remote.wait_ended()
    assert remote.protocol_errors == []


def test_control_frames_inside_a_fragmented_message(peer: ScriptedPeer, backend: str) -> None:
    """Allowed (RFC 6455 5.4): a ping between fragments is answered, the message still whole."""
    with duplexthreads.connect(peer.url, backend=backend) as conn:
        remote = peer.next_connection()
        remote.send_raw(
            encode_frame(OP_TEXT, "h\u00e9".encode()[:2], fin=False)
            + encode_frame(OP_PING, b"in between")
            + encode_frame(OP_CONTINUATION, "h\u00e9".encode()[2:] + b" there")
        )
        assert conn.recv(timeout=10 * UNIT) == "h\u00e9 there"
        assert remote.wait_pongs(1) == [b"in between"]


def test_utf8_cut_inside_every_character(peer: ScriptedPeer, backend: str) -> None:
    text = "h\u00e9llo w\u00f6rld \u20ac \U0001f600 " * 300
    with duplexthreads.connect(peer.url, backend=backend) as conn:
        remote = peer.next_connection()
        remote.send_fragmented(text, 1)  # every byte its own frame: sequences cut everywhere
        assert conn.recv(timeout=10 * UNIT) == text


# -- item 11: linear reassembly, released buffers -------------------------------------------------------

# websocket-client's own reassembly was quadratic: 4 MiB in 16-byte fragments took minutes. On
# simple-websocket, wsproto parses each frame in Python (linear, but about 1 s per MiB here).
FRAGMENTED_SIZE = {"websocket-client": 4 << 20, "simple-websocket": 1 << 20}


def test_a_message_in_a_quarter_million_fragments(backend: str) -> None:
    """A message in 16-byte fragments (262,144 of them for 4 MiB). The bound is generous: it
    tells linear from quadratic, not fast from slow."""
    message = bytes(range(256)) * (FRAGMENTED_SIZE[backend] // 256)
    with ScriptedPeer(timeout=60 * UNIT) as peer:
        # Larger than the default limit on purpose: this is about the cost of many fragments.
        with duplexthreads.connect(peer.url, backend=backend, max_message_size=None) as conn:
            remote = peer.next_connection()
            started = time.monotonic()
            remote.send_fragmented(message, 16)
            assert conn.recv(timeout=30 * UNIT) == message
            assert time.monotonic() - started < 30 * UNIT


def test_abort_during_reassembly_is_prompt(backend: str) -> None:
    with ScriptedPeer(timeout=60 * UNIT) as peer:
        conn = duplexthreads.connect(peer.url, backend=backend)
        remote = peer.next_connection()

        def send() -> None:
            try:
                remote.send_fragmented(b"y" * (8 << 20), 16)
            except OSError:
                pass  # cut off by the abort: the point of the test

        sender = threading.Thread(target=send, name="test-sender")
        sender.start()
        try:
            with pytest.raises(TimeoutError):
                conn.recv(timeout=0.5 * UNIT)  # well inside the message
            started = time.monotonic()
            report = conn.abort()
            assert time.monotonic() - started < 0.5 * UNIT
            assert report is not None and report.lingering == ()
        finally:
            sender.join(60 * UNIT)
        assert not sender.is_alive()


def test_a_closed_connection_holds_no_buffers(backend: str) -> None:
    """After close, the connection object (still referenced) must not keep what it was
    receiving: here 16 MiB of a frame that claims 1 GiB."""
    with ScriptedPeer(timeout=60 * UNIT) as peer:
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            conn = duplexthreads.connect(peer.url, backend=backend, max_message_size=None)
            remote = peer.next_connection()
            remote.send_raw(b"\x82\x7f" + struct.pack("!Q", 1 << 30))
            for _ in range(4):
                remote.send_raw(b"z" * (4 << 20))
            received = wait_for(lambda: tracemalloc.get_traced_memory()[0] > baseline + (15 << 20), 30 * UNIT)
            assert received, "the client never held the 16 MiB it was sent"
            report = conn.close(timeout=1 * UNIT)
            assert report is not None and report.lingering == ()
            held = tracemalloc.get_traced_memory()[0] - baseline
            assert held < 4 << 20, f"{held / (1 << 20):.1f} MiB still held by the closed connection"
            assert conn.closed
        finally:
            tracemalloc.stop()


# -- item 16: a clean close is clean on the wire ----------------------------------------------------------


def test_close_handshakes_never_reset(backend: str) -> None:
    """Client-initiated and server-initiated, with traffic both ways: the server always sees the
    client end TCP with FIN, never RST, and nothing the client sent is left unread."""
    with ScriptedPeer(echo=True, timeout=10 * UNIT) as peer:
        for round_number in range(40):
            conn = duplexthreads.connect(peer.url, backend=backend)
            remote = peer.next_connection()
            for index in range(5):
                conn.send(f"m{index}")
            remote.send("from the server")
            if round_number % 2:
                report = conn.close()
                assert report is not None
            else:
                remote.wait_messages(5)
                remote.close(1001, "server going")
                report = conn.wait(10 * UNIT)
            assert report.ok and report.error is None, report
            assert remote.wait_ended()
            assert remote.ended_by in ("eof", "peer") and remote.unread_at_close == 0


def test_the_client_lets_the_server_end_tcp_first(backend: str) -> None:
    """RFC 6455 7.1.1: after the close handshake the client waits for the server's FIN (within
    the close timeout); this server waits 0.3 s before sending it."""
    with ScriptedPeer(linger_after_close=0.3 * UNIT, timeout=10 * UNIT) as peer:
        conn = duplexthreads.connect(peer.url, backend=backend)
        remote = peer.next_connection()
        report = conn.close()
        assert report is not None and report.ok
        assert remote.wait_ended()
        assert remote.first_to_end_tcp == "server"


def test_a_server_that_never_ends_tcp_costs_only_the_close_timeout(backend: str) -> None:
    with ScriptedPeer(linger_after_close=5 * UNIT, timeout=10 * UNIT) as peer:
        conn = duplexthreads.connect(peer.url, backend=backend, close_timeout=0.3 * UNIT)
        remote = peer.next_connection()
        started = time.monotonic()
        report = conn.close()
        assert time.monotonic() - started < 0.3 * UNIT + 1 * UNIT
        assert report is not None and report.ok
        assert remote.wait_ended()
        assert remote.first_to_end_tcp == "client"  # by FIN: "reset" would say RST


# -- the contract's bounded close frame -------------------------------------------------------------


def open_transport(backend: str, url: str) -> Union[WebSocketClientTransport, SimpleWebSocketTransport]:
    if backend == "websocket-client":
        return WebSocketClientTransport.connect(url, open_timeout=10 * UNIT)
    return SimpleWebSocketTransport.connect(url, open_timeout=10 * UNIT)


@pytest.mark.parametrize("timeout", [0.3, 0.0])
def test_a_bounded_close_frame_is_written_whole_or_not_at_all(backend: str, timeout: float) -> None:
    """The owner sends close frames with a timeout (the answer to a peer's close, or one of its
    own when the writer is idle, with 0): nothing could wake it from a write stuck on a full
    TCP window. When the socket cannot take the frame in time, nothing of it may be written:
    once the peer reads again, it must find whole frames and then exactly one close frame."""
    with ScriptedPeer(stop_reading=True, timeout=20 * UNIT) as peer:
        transport = open_transport(backend, peer.url)
        remote = peer.next_connection()
        raw = transport.raw_socket
        frame = encode_frame(OP_BINARY, b"f" * 16384, mask=True)

        def fill() -> None:
            # Whole frames (4 MiB, more than the buffers of a peer not reading hold): the last waits, part
            # written, for the peer to read again.
            for _ in range(256):
                raw.sendall(frame)

        filler = threading.Thread(target=fill, name="test-filler")
        filler.start()
        try:
            assert wait_for(lambda: not writable(raw), 10 * UNIT), "the socket never filled up"
            assert filler.is_alive()
            started = time.monotonic()
            with pytest.raises(TransportError):
                transport.send_close(1000, "", timeout=timeout * UNIT)
            assert time.monotonic() - started < timeout * UNIT + 1 * UNIT
            remote.resume_reading()
            filler.join(20 * UNIT)
            assert not filler.is_alive()
            transport.send_close(1000, "")
            assert remote.wait_close_frame(20 * UNIT) == (1000, "")
            assert remote.protocol_errors == [] and len(remote.close_frames) == 1
        finally:
            transport.shutdown()
            filler.join(20 * UNIT)
            transport.close(10 * UNIT)


def writable(sock: socket.socket) -> bool:
    return bool(select.select([], [sock], [], 0)[1])


# -- the server side: accept() in Werkzeug, against ScriptedClient ---------------------------------------


class WerkzeugServer:
    """Werkzeug serving a view that accepts, hands the connection over and waits for its end."""

    def __init__(self, **accept_options: Any) -> None:
        self.connections: queue.Queue[Duplex] = queue.Queue()
        self.outcomes: queue.Queue[Any] = queue.Queue()
        self.options = accept_options
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"ws://127.0.0.1:{self.server.port}/ws"
        self.port = self.server.port
        # socketserver notices shutdown() only between polls: poll often, to stop at once.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="test-werkzeug")
        self.thread.start()

    def app(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            conn = duplexthreads.accept(environ, **self.options)
        except HandshakeRejected as exc:
            self.outcomes.put(exc)
            start_response(f"{exc.status} Refused", [("Content-Length", "0")])
            return [b""]
        except Exception as exc:
            self.outcomes.put(exc)
            raise
        self.connections.put(conn)
        self.outcomes.put(conn.wait(30 * UNIT))
        # The socket was the WebSocket's: tell Werkzeug not to write an HTTP response on it.
        # (Werkzeug then reads on for a next request; the transport marked the socket ended, so
        # it finds none: see test_werkzeug.py's test of smuggled requests.)
        raise ConnectionAbortedError("the WebSocket has ended")

    def next_connection(self) -> Duplex:
        return self.connections.get(timeout=10 * UNIT)

    def outcome(self) -> Any:
        return self.outcomes.get(timeout=10 * UNIT)

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(10 * UNIT)
        self.server.server_close()
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def werkzeug() -> Iterator[WerkzeugServer]:
    server = WerkzeugServer()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("violation", CLIENT_VIOLATIONS)
def test_a_client_that_breaks_the_protocol(werkzeug: WerkzeugServer, violation: str) -> None:
    code = VIOLATIONS[violation]
    with ScriptedClient(werkzeug.url, timeout=10 * UNIT) as client:
        conn = werkzeug.next_connection()
        client.connection.send("before")
        assert conn.recv(timeout=10 * UNIT) == "before"
        client.connection.violate(violation)
        report = werkzeug.outcome()
        assert isinstance(report.error, ProtocolError) and report.error.close_code == code, repr(report.error)
        assert (report.close_code, report.close_sent) == (code, (code, ""))
        assert client.connection.wait_close_frame()[0] == code
        with pytest.raises(ConnectionClosedError):
            conn.recv(timeout=10 * UNIT)


def test_a_message_over_max_message_size_is_1009() -> None:
    server = WerkzeugServer(max_message_size=1000)
    try:
        with ScriptedClient(server.url, timeout=10 * UNIT) as client:
            conn = server.next_connection()
            client.connection.send(b"x" * 1000)
            assert conn.recv(timeout=10 * UNIT) == b"x" * 1000
            client.connection.send_fragmented(b"y" * 1001, 100)
            report = server.outcome()
            assert isinstance(report.error, ProtocolError) and report.close_sent == (1009, "")
            assert client.connection.wait_close_frame()[0] == 1009
    finally:
        server.close()


@pytest.mark.parametrize("fragment_size", [None, 100])
def test_max_message_size_counts_the_bytes_of_text(fragment_size: Any) -> None:
    """wsproto hands text over decoded: the limit counted characters, so 900 euro signs (2,700
    bytes) went through a limit of 1,000. 333 of them are 999 bytes, 334 are 1,002."""
    server = WerkzeugServer(max_message_size=1000)
    try:
        with ScriptedClient(server.url, timeout=10 * UNIT) as client:
            conn = server.next_connection()
            client.connection.send("\u20ac" * 333)
            assert conn.recv(timeout=10 * UNIT) == "\u20ac" * 333
            if fragment_size is None:
                client.connection.send("\u20ac" * 334)
            else:  # cut inside the characters too
                client.connection.send_fragmented("\u20ac" * 334, fragment_size)
            report = server.outcome()
            assert isinstance(report.error, ProtocolError) and report.close_sent == (1009, ""), report
            assert client.connection.wait_close_frame()[0] == 1009
    finally:
        server.close()


def test_server_side_close_handshakes_never_reset(werkzeug: WerkzeugServer) -> None:
    for round_number in range(10):
        with ScriptedClient(werkzeug.url, timeout=10 * UNIT) as client:
            conn = werkzeug.next_connection()
            client.connection.send("hi")
            assert conn.recv(timeout=10 * UNIT) == "hi"
            if round_number % 2:
                conn.close(1001, "server going")
            else:
                client.connection.close(1000, "client done")
            report = werkzeug.outcome()
            assert report.ok, report
            assert client.connection.wait_ended()
            assert client.connection.ended_by in ("eof", "peer"), client.connection.ended_by


# (the request, the HTTP status the view answers with)
BAD_REQUESTS = [
    (
        "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
        400,
    ),
    (
        "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
        426,
    ),
    (
        "POST /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 0\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        400,
    ),
    (
        "GET /ws HTTP/1.1\r\nHost: h\xe9\xff\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        400,
    ),
    # A body Werkzeug would decode: whatever followed it could not be handed to the WebSocket.
    (
        "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nTransfer-Encoding: chunked\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n0\r\n\r\n",
        400,
    ),
    # A body a proxy would pass on as the request's, which would be read here as frames.
    (
        "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 6\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x80abcd",
        400,
    ),
]


def raw_request(port: int, text: str) -> str:
    """Send ``text`` as it is (latin-1) to 127.0.0.1:``port``; return the head of the answer.

    A plain socket of this process, closed before the test ends: no peer is needed to send one
    request that no WebSocket client would send.
    """
    deadline = time.monotonic() + 10 * UNIT
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10 * UNIT) as sock:
        sock.sendall(text.encode("latin-1"))
        while b"\r\n\r\n" not in answer:
            sock.settimeout(max(0.001, deadline - time.monotonic()))  # socket.timeout at the deadline
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.decode("latin-1")


@pytest.mark.parametrize(("request_text", "status"), BAD_REQUESTS)
def test_a_bad_upgrade_request_is_handshake_rejected(werkzeug: WerkzeugServer, request_text: str, status: int) -> None:
    answer = raw_request(werkzeug.port, request_text)
    outcome = werkzeug.outcome()
    assert isinstance(outcome, HandshakeRejected) and outcome.status == status, repr(outcome)
    assert answer.startswith(f"HTTP/1.1 {status} ")


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"max_queue": 0}, ValueError),
        ({"close_timeout": -1}, ValueError),
        ({"on_message": 5}, TypeError),
        ({"subprotocols": "chat"}, TypeError),
        ({"subprotocols": ["a b"]}, ValueError),
        ({"max_message_size": 0}, ValueError),
    ],
)
def test_accept_checks_its_arguments_before_the_handshake(options: Dict[str, Any], error: type) -> None:
    server = WerkzeugServer(**options)
    try:
        with pytest.raises(ConnectionError):  # the view failed before any 101 went out
            with ScriptedClient(server.url, timeout=10 * UNIT):
                pass
        outcome = server.outcome()
        assert type(outcome) is error, repr(outcome)
    finally:
        server.close()


def test_accept_refuses_what_is_not_a_wsgi_environ() -> None:
    with pytest.raises(TypeError, match="environ"):
        duplexthreads.accept(["not", "a", "dict"])  # type: ignore[arg-type]
