"""Liveness on real loopback sockets: the heartbeat, ping(), the write deadline, the size limit.

The peer is the scripted peer (a child process): it can go silent (no pong, no FIN, no RST:
what a dropped NAT mapping looks like from here), stop reading, and send messages of any size,
whole or in fragments. After each test the suite's leak check proves no thread and no
descriptor was left behind.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
import time
import tracemalloc
from typing import Any, Callable, Iterable, List

import pytest
import websocket
from werkzeug.serving import make_server

import duplexthreads
from duplexthreads import HeartbeatTimeout, ProtocolError, Reason, WriteTimeout
from duplexthreads.testing import Relay, ScriptedClient, ScriptedPeer

from ..timing import UNIT

pytestmark = pytest.mark.timeout(60 * UNIT)

WAIT = 10 * UNIT
INTERVAL = 0.1
TIMEOUT = 0.2
LIMIT = 1 << 20


@pytest.fixture(scope="module")
def peer() -> Iterable[ScriptedPeer]:
    with ScriptedPeer(echo=True, timeout=WAIT) as scripted:
        yield scripted


def test_a_peer_gone_silent_is_detected_within_interval_plus_timeout(peer: ScriptedPeer, backend: str) -> None:
    conn = duplexthreads.connect(peer.url, backend=backend, ping_interval=INTERVAL, ping_timeout=TIMEOUT)
    remote = peer.next_connection()
    conn.send("hello")
    assert conn.recv(timeout=WAIT) == "hello"
    assert conn.ping(timeout=WAIT) >= 0  # alive, answering pings
    remote.go_silent()
    silent_from = time.monotonic()
    report = conn.wait(WAIT)
    detected = time.monotonic() - silent_from
    assert report.reason is Reason.HEARTBEAT_TIMEOUT and report.first == "heartbeat"
    assert isinstance(report.error, HeartbeatTimeout)
    assert report.close_code == 1011
    # At most one interval to the next ping, then the timeout; generous only on failure.
    assert detected < INTERVAL + TIMEOUT + WAIT / 4
    assert detected >= TIMEOUT * 0.9
    assert report.lingering == ()
    assert conn.transport.closed


def test_a_path_gone_silent_is_detected_by_the_heartbeat(peer: ScriptedPeer, backend: str) -> None:
    """Through a relay that turns into a black hole: no pong, no FIN, no RST, sockets open."""
    with Relay(peer.port, timeout=WAIT) as relay:
        conn = duplexthreads.connect(relay.url(), backend=backend, ping_interval=INTERVAL, ping_timeout=TIMEOUT)
        peer.next_connection()
        conn.send("through the relay")
        assert conn.recv(timeout=WAIT) == "through the relay"
        relay.go_silent()
        silent_from = time.monotonic()
        report = conn.wait(WAIT)
        detected = time.monotonic() - silent_from
    assert report.reason is Reason.HEARTBEAT_TIMEOUT and report.close_code == 1011
    assert TIMEOUT * 0.9 <= detected < INTERVAL + TIMEOUT + WAIT / 4
    assert report.lingering == () and conn.transport.closed


def test_a_path_gone_silent_is_detected_by_the_write_timeout(peer: ScriptedPeer, backend: str) -> None:
    """Sending into a black hole: once the kernel buffers are full, no write progresses."""
    with Relay(peer.port, timeout=WAIT) as relay:
        conn = duplexthreads.connect(
            relay.url(), backend=backend, ping_interval=None, write_timeout=TIMEOUT, max_queue=16
        )
        peer.next_connection()
        relay.go_silent()
        accepted = 0
        for index in range(5000):
            try:
                conn.send(index.to_bytes(4, "big") + b"\x00" * 65532, timeout=WAIT)
            except duplexthreads.ConnectionClosed:
                break
            accepted += 1
        report = conn.wait(WAIT)
    assert report.reason is Reason.WRITE_TIMEOUT, report.describe()
    assert report.written + len(report.unsent) == accepted
    assert [int.from_bytes(m[:4], "big") for m in report.unsent] == list(range(report.written, accepted))
    assert report.lingering == () and conn.transport.closed


def test_the_heartbeat_measures_latency_and_the_peer_sees_its_pings(peer: ScriptedPeer, backend: str) -> None:
    with duplexthreads.connect(peer.url, backend=backend, ping_interval=INTERVAL, ping_timeout=WAIT) as conn:
        remote = peer.next_connection()
        rtt = conn.ping(timeout=WAIT, payload=b"measure")
        assert 0 <= rtt < WAIT and conn.latency is not None
        # The heartbeat goes on pinging; a connection that is pinged stays open.
        for index in range(3):
            conn.send(f"m{index}")
        assert remote.wait_messages(3) == ["m0", "m1", "m2"]
        # And we answer the peer's pings, whatever the heartbeat does.
        remote.ping(b"theirs")
        assert remote.wait_pongs(1) == [b"theirs"]
    assert conn.report is not None and conn.report.ok


def test_a_peer_that_stops_reading_is_cut_off_by_the_write_timeout(peer: ScriptedPeer, backend: str) -> None:
    conn = duplexthreads.connect(peer.url, backend=backend, ping_interval=None, write_timeout=TIMEOUT, max_queue=16)
    remote = peer.next_connection()
    remote.stop_reading()
    messages = [index.to_bytes(4, "big") + b"\x07" * 65532 for index in range(2000)]
    accepted = 0
    # Enough to fill both kernel buffers many times over; stops as soon as the connection ends.
    for message in messages:
        try:
            conn.send(message, timeout=WAIT)
        except duplexthreads.ConnectionClosed:
            break
        accepted += 1
    report = conn.wait(WAIT)
    assert report.reason is Reason.WRITE_TIMEOUT, report.describe()
    assert isinstance(report.error, WriteTimeout)
    assert report.written + len(report.unsent) == accepted
    assert list(report.unsent) == messages[report.written : accepted]
    assert report.written > 0 and len(report.unsent) > 0
    assert report.lingering == ()
    # What "written" promises, and what not: handed to the kernel, in order. The peer, reading
    # again, finds a prefix of them and nothing beyond; what sat in our send buffer when the
    # socket closed can be lost with it (the peer was not reading, so the kernel gives up).
    remote.resume_reading()
    remote.wait_ended(WAIT)
    received = remote.received
    assert received == messages[: len(received)]
    assert len(received) <= report.written


@pytest.mark.parametrize("shape", ["one frame", "fragments"])
def test_a_message_over_max_message_size_closes_with_1009(peer: ScriptedPeer, backend: str, shape: str) -> None:
    conn = duplexthreads.connect(peer.url, backend=backend, ping_interval=None)
    remote = peer.next_connection()
    remote.send(b"\x01" * LIMIT)  # exactly the limit: fine
    assert conn.recv(timeout=WAIT) == b"\x01" * LIMIT
    if shape == "one frame":
        remote.send(b"\x02" * (LIMIT + 1))
    else:
        remote.send_fragmented(b"\x02" * (LIMIT + 1), 16384)
    report = conn.wait(WAIT)
    assert report.reason is Reason.READ_ERROR
    assert isinstance(report.error, ProtocolError) and report.error.close_code == 1009
    assert report.close_code == 1009 and report.close_sent == (1009, "")
    assert remote.wait_close_frame()[0] == 1009


@pytest.mark.parametrize("shape", ["one frame", "fragments"])
def test_the_size_limit_holds_memory_to_the_limit(backend: str, shape: str) -> None:
    """64 MiB pushed at a client with the 1 MiB limit: it holds at most about the limit.

    The sender is a thread of this process that streams one 16 KiB buffer over and over, so
    that the memory traced is the client's: with ``shape`` "one frame" a single frame claims
    64 MiB, with "fragments" 4,096 fragments of 16 KiB make one message.
    """
    tracemalloc.start()
    try:
        with StreamingServer(shape, total=64 * LIMIT) as server:
            conn = duplexthreads.connect(server.url, backend=backend, ping_interval=None)
            tracemalloc.reset_peak()
            baseline = tracemalloc.get_traced_memory()[0]
            report = conn.wait(WAIT)
            peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert report.close_code == 1009 and isinstance(report.error, ProtocolError)
    assert server.sent < 64 * LIMIT  # refused long before the end
    assert peak < LIMIT + 3 * (1 << 20), f"peak {peak / (1 << 20):.1f} MiB"


class StreamingServer:
    """A bare WebSocket server thread that streams one long message at the first client."""

    CHUNK = b"\x05" * 16384

    def __init__(self, shape: str, total: int) -> None:
        self.shape = shape
        self.total = total
        self.sent = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self._listener.getsockname()[1]}/"
        self._thread = threading.Thread(target=self._serve, name="test-streaming-server")

    def __enter__(self) -> StreamingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        self._thread.join(WAIT)
        assert not self._thread.is_alive()

    def _serve(self) -> None:
        self._listener.settimeout(WAIT)
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        with sock:
            sock.settimeout(WAIT)
            try:
                self._handshake(sock)
                self._stream(sock)
            except OSError:
                pass  # the client refused the message and closed: what the test wants

    def _handshake(self, sock: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            data = sock.recv(4096)
            if not data:
                raise ConnectionError("no request")
            request += data
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )

    def _stream(self, sock: socket.socket) -> None:
        chunk = self.CHUNK
        if self.shape == "one frame":
            sock.sendall(bytes([0x82, 127]) + self.total.to_bytes(8, "big"))
            frames = [chunk]
        else:
            frames = [bytes([0x02, 126]) + len(chunk).to_bytes(2, "big") + chunk]
            continuation = bytes([0x00, 126]) + len(chunk).to_bytes(2, "big") + chunk
        while self.sent < self.total:
            for frame in frames:
                sock.sendall(frame)
            self.sent += len(chunk)
            if self.shape == "fragments":
                frames = [continuation]


def test_no_limit_takes_a_message_over_1_mib(peer: ScriptedPeer, backend: str) -> None:
    with duplexthreads.connect(peer.url, backend=backend, ping_interval=None, max_message_size=None) as conn:
        remote = peer.next_connection()
        remote.send(b"\x03" * (3 * LIMIT))
        assert len(conn.recv(timeout=WAIT)) == 3 * LIMIT


def test_a_frame_claiming_a_huge_length_is_refused_at_its_header(peer: ScriptedPeer, backend: str) -> None:
    conn = duplexthreads.connect(peer.url, backend=backend, ping_interval=None, max_message_size=1000)
    remote = peer.next_connection()
    # A binary frame header claiming 2**40 bytes, then only a little of it.
    remote.send_raw(bytes([0x82, 127]) + (1 << 40).to_bytes(8, "big") + b"\x00" * 100)
    report = conn.wait(WAIT)
    assert report.close_code == 1009
    assert isinstance(report.error, ProtocolError)


# -- the server side ------------------------------------------------------------------------------


def test_accept_drops_a_client_gone_silent() -> None:
    reports: List[duplexthreads.ExitReport] = []
    view_done = threading.Event()

    def app(environ: Any, start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            conn = duplexthreads.accept(environ, ping_interval=INTERVAL, ping_timeout=TIMEOUT)
            reports.append(conn.wait(WAIT))
        finally:
            view_done.set()
        start_response("200 OK", [])
        return [b""]

    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, name="test-werkzeug")
    serving.start()
    try:
        with ScriptedClient(f"ws://127.0.0.1:{server.port}/ws", timeout=WAIT) as client:
            client.connection.go_silent()
            assert view_done.wait(WAIT)
    finally:
        server.shutdown()
        serving.join(WAIT)
        server.server_close()
    assert len(reports) == 1
    assert reports[0].reason is Reason.HEARTBEAT_TIMEOUT and reports[0].close_code == 1011
    assert reports[0].lingering == ()


def test_a_plain_websocket_client_keeps_a_heartbeat_connection_open() -> None:
    """websocket-client answers our server's pings from its recv(): the connection stays up."""
    received: List[str] = []
    view_done = threading.Event()

    def app(environ: Any, start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            conn = duplexthreads.accept(environ, ping_interval=INTERVAL / 2, ping_timeout=TIMEOUT)
            for message in conn:
                received.append(str(message))
                conn.send(message)
        finally:
            view_done.set()
        start_response("200 OK", [])
        return [b""]

    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, name="test-werkzeug")
    serving.start()
    client = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws", timeout=WAIT)
    try:
        until = time.monotonic() + 6 * TIMEOUT  # several heartbeat timeouts
        count = 0
        while time.monotonic() < until:
            client.send(f"n{count}")
            assert client.recv() == f"n{count}"  # answers pings on the way
            count += 1
            threading.Event().wait(INTERVAL / 2)  # pacing: time passing is the point
        client.close()
        assert view_done.wait(WAIT)
    finally:
        client.shutdown()
        server.shutdown()
        serving.join(WAIT)
        server.server_close()
    assert received == [f"n{i}" for i in range(count)]
