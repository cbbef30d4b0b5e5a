"""The scripted peer of duplexthreads.testing, checked from the outside.

Each behaviour is seen through a client that is not the peer's own code: a plain socket that
parses frames by hand (``plain_websocket``), websocket-client, or websockets. Every test runs
against both modes, the child process (``isolated``) and the threads of this process.
"""

from __future__ import annotations

import base64
import contextlib
import os
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Tuple, Type

import pytest
import websocket
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as websockets_connect
from werkzeug.serving import make_server
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection

import duplexthreads
from duplexthreads.testing import (
    VIOLATIONS,
    HandshakeRefused,
    PeerConnection,
    ScriptedClient,
    ScriptedPeer,
    encode_frame,
    open_fds,
)
from duplexthreads.testing._handshake import host_header
from duplexthreads.testing._wire import violation_bytes

from ..timing import UNIT
from .plain_websocket import Frame, Wire, WireServer, accept_value, open_wire, request_bytes, upgrade_headers
from .websockets_server import running_server

pytestmark = pytest.mark.timeout(30 * UNIT)

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
MODES = [pytest.param(True, id="isolated"), pytest.param(False, id="in-process")]
TIMEOUT = 10 * UNIT  # every peer's bound, so that the waits without a timeout of their own scale too
SHORT = 0.15 * UNIT  # long enough for loopback to deliver what was sent; used only where nothing must come


@pytest.fixture(scope="module", params=MODES)
def shared_peer(request: pytest.FixtureRequest) -> Iterator[ScriptedPeer]:
    """One peer per mode with default options, shared by the tests that need no other: each
    child process costs a Python start."""
    with ScriptedPeer(isolated=request.param, timeout=TIMEOUT) as peer:
        yield peer


@pytest.fixture(params=MODES)
def isolated(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def accepted(peer: ScriptedPeer, target: str, *extra: Any, **options: Any) -> Tuple[Wire, PeerConnection]:
    """Open a plain client to ``target`` and take its connection on the peer's side."""
    wire, _ = open_wire(peer.url, target, *extra, **options)
    remote = peer.next_connection(5 * UNIT)
    assert remote.request_target == target, "a connection of an earlier test was left behind"
    return wire, remote


def finish(wire: Wire, remote: PeerConnection, expected: str = "eof") -> None:
    """The client closes TCP (FIN); the peer's connection must end, as ``expected`` says."""
    wire.close()
    assert remote.wait_ended(5 * UNIT)
    assert remote.ended_by == expected


# -- the server and its connections ---------------------------------------------------------------


def test_serves_before_enter_and_records_the_request(isolated: bool) -> None:
    with ScriptedPeer(timeout=TIMEOUT, isolated=isolated) as peer:
        assert peer.url == f"ws://127.0.0.1:{peer.port}/"
        wire, remote = accepted(peer, "/chat?room=1", ("X-Mixed-CASE", "Value 1"))
        assert remote.role == "server" and remote.index == 0
        assert remote.response_status == 101 and remote.handshake_error is None
        assert ("X-Mixed-CASE", "Value 1") in remote.request_headers  # as sent, not normalised
        assert remote.request_headers[0] == ("Host", f"127.0.0.1:{peer.port}")
        finish(wire, remote)


def test_connections_come_in_the_order_they_were_accepted(isolated: bool) -> None:
    with ScriptedPeer(timeout=TIMEOUT, isolated=isolated) as peer:
        socks = [socket.create_connection(("127.0.0.1", peer.port), timeout=5 * UNIT) for _ in range(3)]
        try:
            for number, sock in reversed(list(enumerate(socks))):  # requests in the reverse order
                key = "dGhlIHNhbXBsZSBub25jZQ=="
                sock.sendall(
                    f"GET /{number} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
                )
            targets = [peer.next_connection(5 * UNIT).request_target for _ in socks]
            assert targets == ["/0", "/1", "/2"]
            with pytest.raises(TimeoutError, match="no new client"):
                peer.next_connection(0.05 * UNIT)
        finally:
            for sock in socks:
                sock.close()


def test_the_isolated_peer_keeps_its_sockets_and_threads_out_of_this_process() -> None:
    def new_fds() -> Dict[int, str]:
        return {fd: target for fd, target in open_fds().items() if fds_before.get(fd) != target}

    fds_before = open_fds()
    threads_before = threading.active_count()
    peer = ScriptedPeer(echo=True, timeout=TIMEOUT)
    process = peer._process._process  # type: ignore[union-attr]
    try:
        wire, remote = accepted(peer, "/isolation")
        wire.send_frame(TEXT, b"hi")
        assert remote.wait_messages(1) == ["hi"] and wire.read_frame().payload == b"hi"
        assert threading.active_count() == threads_before
        # The two pipes to the child, and the test's own client socket: the peer's is not here.
        assert sorted(target.split(":")[0] for target in new_fds().values()) == ["pipe", "pipe", "socket"]
        finish(wire, remote)
    finally:
        peer.close()
    assert process.returncode == 0  # reaped, and it exited on its own
    assert new_fds() == {}
    peer.close()  # idempotent


def test_the_child_exits_when_the_test_process_dies() -> None:
    script = (
        "import sys\n"
        "from duplexthreads.testing import ScriptedPeer\n"
        "peer = ScriptedPeer()\n"
        "print(peer._process.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert parent.stdout is not None and parent.stdin is not None
    try:
        child = int(parent.stdout.readline())
        pidfd = os.pidfd_open(child)
    finally:
        parent.kill()
        parent.wait()
        parent.stdin.close()
        parent.stdout.close()
    try:
        readable, _, _ = select.select([pidfd], [], [], 10 * UNIT)  # the pidfd turns readable at exit
        assert readable, "the orphaned peer process did not exit"
    finally:
        os.close(pidfd)


def test_in_process_threads_are_named_and_joined() -> None:
    before = set(threading.enumerate())
    with ScriptedPeer(timeout=TIMEOUT, isolated=False) as peer:
        wire, remote = accepted(peer, "/names")
        names = sorted(thread.name for thread in set(threading.enumerate()) - before)
        assert names == ["scripted-peer-0", "scripted-peer-listener"]
        wire.close()
    assert set(threading.enumerate()) == before
    assert remote.ended and remote.ended_by in ("eof", "peer")


def test_calls_from_several_threads_do_not_wait_for_each_other(shared_peer: ScriptedPeer) -> None:
    wire, remote = accepted(shared_peer, "/threads")
    waited: List[Any] = []
    waiter = threading.Thread(target=lambda: waited.append(remote.wait_messages(1, 10 * UNIT)))
    waiter.start()
    try:
        started = time.monotonic()
        remote.send("while another thread waits")  # not queued behind the wait
        assert wire.read_frame().payload == b"while another thread waits"
        assert time.monotonic() - started < 5 * UNIT
        readers = [threading.Thread(target=lambda: [remote.received for _ in range(20)]) for _ in range(8)]
        for thread in readers:
            thread.start()
        for thread in readers:
            thread.join(10 * UNIT)
        wire.send_frame(TEXT, b"now")
    finally:
        waiter.join(10 * UNIT)
    assert waited == [["now"]]
    finish(wire, remote)


def test_observations_outlive_the_peer(isolated: bool) -> None:
    with ScriptedPeer(timeout=TIMEOUT, isolated=isolated) as peer:
        wire, remote = accepted(peer, "/after")
        wire.send_frame(TEXT, b"kept")
        assert remote.wait_messages(1) == ["kept"]
    try:
        assert wire.end_of_stream() == "eof"  # closed without a close frame
    finally:
        wire.close()
    assert remote.ended and remote.ended_by == "peer" and remote.received == ["kept"]
    assert remote.wait_ended(0) and remote.wait_messages(1, 0) == ["kept"]
    with pytest.raises(ConnectionError):
        remote.send("too late")


def test_bad_options_fail_at_once(isolated: bool) -> None:
    cases: List[Tuple[Dict[str, Any], Type[Exception]]] = [
        ({"drop_every": 0}, ValueError),
        ({"reject": 101}, ValueError),
        ({"trickle_handshake": 0}, ValueError),
        ({"timeout": 0}, ValueError),
        ({"greeting": [3]}, TypeError),
        ({"close_after_greeting": (1006, "")}, ValueError),
        ({"close_after_greeting": (None, "a reason needs a code")}, ValueError),
        ({"handshake_answer": 101}, TypeError),
        ({"handshake_answer": ["HTTP/1.1 101"]}, TypeError),
        ({"handshake_answer": "HTTP/1.1 101 \u20ac"}, ValueError),  # past U+00FF: not one byte
        ({"handshake_answer": "", "reject": 404}, ValueError),  # options it would silently override
        ({"handshake_answer": "", "echo": True}, ValueError),
        ({"handshake_answer": "", "linger_after_close": 1}, ValueError),
        ({"linger_after_close": -0.1}, ValueError),
        ({"linger_after_close": float("nan")}, ValueError),
        ({"linger_after_close": float("inf")}, ValueError),
        ({"linger_after_close": "1"}, TypeError),
        ({"linger_after_close": True}, TypeError),
        ({"linger_after_close": 1, "silent": True}, ValueError),  # silent never completes a close
    ]
    for options, error in cases:
        with pytest.raises(error) as raised:
            ScriptedPeer(isolated=isolated, **options)
        named = {"handshake_answer", "linger_after_close"} & set(options)
        assert all(name in str(raised.value) for name in named), raised.value
    with pytest.raises(ValueError, match="ws://"):
        ScriptedClient("http://127.0.0.1:1/", isolated=False).open()


def test_scripted_client_is_opened_once(isolated: bool) -> None:
    client = ScriptedClient("ws://127.0.0.1:1/", isolated=isolated, timeout=TIMEOUT)
    with pytest.raises(RuntimeError, match="not open"):
        client.connection  # noqa: B018 - the property raises
    with ScriptedPeer(timeout=TIMEOUT, isolated=False) as peer:
        client.url = peer.url
        with client:
            with pytest.raises(RuntimeError, match="already open"):
                client.open()
            remote = peer.next_connection(TIMEOUT)
        assert remote.wait_ended()
    client.close()  # idempotent


# -- options ---------------------------------------------------------------------------------------


def test_echo_returns_each_message_with_its_type(isolated: bool) -> None:
    with ScriptedPeer(timeout=TIMEOUT, isolated=isolated, echo=True) as peer:
        echo(peer)


def echo(peer: ScriptedPeer) -> None:
    wire, remote = accepted(peer, "/echo")
    big = os.urandom(300_000)
    wire.send_frame(TEXT, "héllo".encode())
    wire.send_frame(BINARY, big)
    wire.send_frame(TEXT, b"")
    wire.send_frame(TEXT, b"fragm", fin=False)  # a fragmented message is echoed whole
    wire.send_frame(CONTINUATION, "ented é".encode())
    echoed = [wire.read_frame() for _ in range(4)]
    assert [(f.opcode, f.fin, f.masked) for f in echoed] == [(TEXT, True, False), (BINARY, True, False)] + [
        (TEXT, True, False)
    ] * 2
    assert [f.payload for f in echoed] == ["héllo".encode(), big, b"", "fragmented é".encode()]
    assert remote.wait_messages(4) == ["héllo", big, "", "fragmented é"]
    finish(wire, remote)


def test_drop_every_discards_every_nth_message(isolated: bool) -> None:
    with ScriptedPeer(timeout=TIMEOUT, isolated=isolated, echo=True, drop_every=3) as peer:
        wire, remote = accepted(peer, "/lossy")
        for number in range(1, 8):
            wire.send_frame(TEXT, str(number).encode())
        assert [wire.read_frame().payload for _ in range(5)] == [b"1", b"2", b"4", b"5", b"7"]
        assert remote.received == ["1", "2", "4", "5", "7"] and remote.dropped == ["3", "6"]
        finish(wire, remote)


def test_silent_peer_answers_neither_close_nor_ping_and_keeps_reading(isolated: bool) -> None:
    with ScriptedPeer(timeout=TIMEOUT, isolated=isolated, silent=True) as peer:
        wire, remote = accepted(peer, "/silent")
        wire.send_frame(PING, b"anyone?")
        wire.send_frame(CLOSE, b"\x03\xe8bye")
        assert remote.wait_close_frame() == (1000, "bye")
        wire.sock.settimeout(5 * UNIT)
        wire.sock.sendall(bytes(16_000_000))  # still read: more than any socket buffers can hold
        with pytest.raises(socket.timeout):
            wire.read_frame(SHORT)
        finish(wire, remote)
        assert remote.pongs == [] and remote.received == []


def test_go_silent_at_run_time(shared_peer: ScriptedPeer) -> None:
    wire, remote = accepted(shared_peer, "/go-silent")
    remote.go_silent()
    wire.send_frame(CLOSE, b"\x03\xe8")
    assert remote.wait_close_frame() == (1000, "")
    with pytest.raises(socket.timeout):
        wire.read_frame(SHORT)
    finish(wire, remote)


def fill_until_blocked(wire: Wire) -> int:
    """Write frames without blocking until the peer's and our buffers are full; bytes written."""
    wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    wire.sock.setblocking(False)
    frame = encode_frame(BINARY, b"z" * 16384, mask=True)
    written = 0
    with contextlib.suppress(BlockingIOError):
        while written < 64_000_000:
            written += wire.sock.send(frame)
    wire.sock.setblocking(True)
    return written


def test_stop_reading_blocks_the_client_and_counts_what_it_never_read(isolated: bool) -> None:
    with ScriptedPeer(timeout=TIMEOUT, isolated=isolated, stop_reading=True) as peer:
        wire, remote = accepted(peer, "/deaf")
        written = fill_until_blocked(wire)
        assert 0 < written < 64_000_000
        assert remote.received == []
    try:
        assert remote.unread_at_close is not None and remote.unread_at_close > 0
        assert wire.end_of_stream() in ("eof", "reset")  # FIN, then RST for the unread data
    finally:
        wire.close()


def test_resume_reading_takes_up_what_waited(shared_peer: ScriptedPeer) -> None:
    wire, remote = accepted(shared_peer, "/pause")
    remote.stop_reading()
    wire.send_frame(TEXT, b"one")  # may be taken by the read already under way
    wire.send_frame(TEXT, b"two")
    with pytest.raises(TimeoutError):
        remote.wait_messages(2, SHORT)
    remote.resume_reading()
    assert remote.wait_messages(2) == ["one", "two"]
    finish(wire, remote)


def test_greeting_and_close_share_the_101s_segment(isolated: bool) -> None:
    with ScriptedPeer(
        timeout=TIMEOUT, isolated=isolated, greeting=["hi", b"\x01"], close_after_greeting=(4000, "bye")
    ) as peer:
        sock = socket.create_connection(("127.0.0.1", peer.port), timeout=5 * UNIT)
        wire = Wire(sock)
        sock.sendall(
            b"GET /greet HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        wire.buffer = sock.recv(65536)  # one read: one segment on loopback
        start, _ = wire.read_head(0)
        frames = [wire.read_frame(0) for _ in range(3)]
        assert start.startswith("HTTP/1.1 101")
        assert [(f.opcode, f.payload) for f in frames] == [(TEXT, b"hi"), (BINARY, b"\x01"), (CLOSE, b"\x0f\xa0bye")]
        remote = peer.next_connection(5 * UNIT)
        wire.send_frame(CLOSE, b"\x0f\xa0")
        assert wire.end_of_stream() == "eof"  # the server ends TCP first once the handshake is over
        finish(wire, remote)
        assert remote.close_frames == [(4000, "")]


@pytest.mark.parametrize("with_handshake", [True, False])
def test_close_after_greeting_with_an_empty_close_frame(isolated: bool, with_handshake: bool) -> None:
    options = {"close_after_greeting": (None, ""), "greeting_with_handshake": with_handshake}
    with ScriptedPeer(timeout=TIMEOUT, isolated=isolated, **options) as peer:  # type: ignore[arg-type]
        wire, remote = accepted(peer, "/closing")
        frame = wire.read_frame()
        assert (frame.opcode, frame.payload) == (CLOSE, b"")
        wire.send_frame(CLOSE)
        assert remote.wait_close_frame() == (None, "")
        finish(wire, remote)


def test_reject_answers_with_the_status_and_ends_tcp(isolated: bool) -> None:
    with ScriptedPeer(timeout=TIMEOUT, isolated=isolated, reject=404) as peer:
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(peer.url + "nowhere", timeout=5 * UNIT)
        assert refused.value.status_code == 404
        wire, _ = open_wire(peer.url, "/again", expect=404)
        try:
            assert wire.take(len(b"404 refused by the scripted peer\n")) == b"404 refused by the scripted peer\n"
            assert wire.end_of_stream() == "eof"
        finally:
            wire.close()
        first, second = peer.next_connection(5 * UNIT), peer.next_connection(5 * UNIT)
        assert first.response_status == second.response_status == 404 and second.request_target == "/again"
        assert second.wait_ended()
        with pytest.raises(RuntimeError, match="handshake"):
            second.ping()


def test_trickled_handshake_comes_one_byte_at_a_time(isolated: bool) -> None:
    delay = 0.003
    with ScriptedPeer(timeout=TIMEOUT, isolated=isolated, trickle_handshake=delay) as peer:
        sock = socket.create_connection(("127.0.0.1", peer.port), timeout=5 * UNIT)
        try:
            sock.sendall(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            started, reads, data = time.monotonic(), 0, b""
            while not data.endswith(b"\r\n\r\n"):
                data += sock.recv(65536)
                reads += 1
            assert time.monotonic() - started >= (len(data) - 1) * delay * 0.9
            assert reads > len(data) // 3  # mostly one byte per read
        finally:
            sock.close()


def test_close_interrupts_a_trickled_handshake(isolated: bool) -> None:
    peer = ScriptedPeer(timeout=TIMEOUT, isolated=isolated, trickle_handshake=60.0)
    sock = socket.create_connection(("127.0.0.1", peer.port), timeout=5 * UNIT)
    try:
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert sock.recv(10) == b"H"
        started = time.monotonic()
        peer.close()
        assert time.monotonic() - started < 2 * UNIT
    finally:
        peer.close()
        sock.close()


def test_strict_host_wants_what_rfc_7230_asks_for(isolated: bool) -> None:
    with ScriptedPeer(timeout=TIMEOUT, isolated=isolated, strict_host=True) as peer:
        for host, status in [
            (f"127.0.0.1:{peer.port}", 101),
            (f"127.0.0.1:{peer.port + 1}", 400),
            ("127.0.0.1", 400),
        ]:
            wire, _ = open_wire(peer.url, "/", host=host, expect=status)
            remote = peer.next_connection(5 * UNIT)
            assert remote.response_status == status
            if status == 400:
                assert "Host header" in (remote.handshake_error or "")
            finish(wire, remote)
    assert host_header("::1", 8080) == "[::1]:8080"
    assert host_header("example.com", 80) == "example.com"
    assert host_header("example.com", 443, "wss") == "example.com"


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_strict_host_with_an_ipv6_literal() -> None:
    try:
        peer = ScriptedPeer(timeout=TIMEOUT, isolated=False, host="::1", strict_host=True)
    except OSError:
        pytest.skip("cannot bind ::1")
    with peer:
        assert peer.url == f"ws://[::1]:{peer.port}/"
        wire, remote = accepted(peer, "/v6")
        assert ("Host", f"[::1]:{peer.port}") in remote.request_headers
        finish(wire, remote)


def test_subprotocol_is_the_first_offer_the_peer_accepts(isolated: bool) -> None:
    with ScriptedPeer(timeout=TIMEOUT, isolated=isolated, subprotocols=("chat", "superchat")) as peer:
        wire, headers = open_wire(peer.url, "/p", ("Sec-WebSocket-Protocol", "other, superchat, chat"))
        remote = peer.next_connection(5 * UNIT)
        assert ("Sec-WebSocket-Protocol", "superchat") in headers and remote.subprotocol == "superchat"
        finish(wire, remote)


# -- handshake_answer ------------------------------------------------------------------------------


def raw_upgrade(peer: ScriptedPeer, request: bytes) -> Wire:
    """A plain socket that has sent ``request`` to ``peer``; the test reads the answer."""
    sock = socket.create_connection(("127.0.0.1", peer.port), timeout=5 * UNIT)
    sock.sendall(request)
    return Wire(sock)


def test_handshake_answer_is_sent_as_given_then_tcp_ends(isolated: bool) -> None:
    answer = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Accept: {accept}\r\nX-Why: caf\xe9\r\n\r\n"  # no Connection header; é as one byte
    )
    with ScriptedPeer(timeout=TIMEOUT, isolated=isolated, handshake_answer=answer) as peer:
        key = base64.b64encode(os.urandom(16)).decode()
        wire = raw_upgrade(peer, request_bytes("/canned?x=1", upgrade_headers(f"127.0.0.1:{peer.port}", key)))
        try:
            expected = answer.replace("{accept}", accept_value(key)).encode("latin-1")
            assert wire.take(len(expected)) == expected
            with pytest.raises(EOFError):  # nothing more: the server's FIN
                wire.take(1)
        finally:
            wire.close()
        remote = peer.next_connection(5 * UNIT)
        assert remote.request_target == "/canned?x=1" and ("Sec-WebSocket-Key", key) in remote.request_headers
        assert (remote.handshake_error, remote.response_status, remote.subprotocol) == (None, None, None)
        assert remote.wait_ended()
        assert (remote.first_to_end_tcp, remote.ended_by) == ("server", "eof")
        with pytest.raises(RuntimeError, match="handshake_answer"):
            remote.send("there is no WebSocket connection")


KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example key; its accept value is in the RFC too
NO_UPGRADE = b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n"
VERSION_8 = request_bytes("/v8", upgrade_headers("x", KEY)).replace(b"Version: 13", b"Version: 8")


@pytest.mark.parametrize(
    ("request_head", "answer", "sent", "problem"),
    [
        (NO_UPGRADE, b"", b"", "Upgrade"),
        (NO_UPGRADE, b"\x00\xff garbage {accept}.", b"\x00\xff garbage .", "Upgrade"),
        (VERSION_8, b"{accept}", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "Version"),
    ],
    ids=["nothing", "no-key", "wrong-version"],
)
def test_handshake_answer_whatever_the_request(
    isolated: bool, request_head: bytes, answer: bytes, sent: bytes, problem: str
) -> None:
    """Bytes go out as they are, even to a request that is no proper upgrade: ``{accept}``
    answers its key if it has one, and the record says what was wrong with it."""
    with ScriptedPeer(timeout=TIMEOUT, isolated=isolated, handshake_answer=answer) as peer:
        wire = raw_upgrade(peer, request_head)
        try:
            assert wire.take(len(sent)) == sent
            with pytest.raises(EOFError):
                wire.take(1)
        finally:
            wire.close()
        remote = peer.next_connection(5 * UNIT)
        assert remote.request_target == request_head.split(b" ")[1].decode()
        assert problem in (remote.handshake_error or "")
        assert remote.wait_ended() and remote.first_to_end_tcp == "server"


# -- linger_after_close ----------------------------------------------------------------------------

LINGER = 0.3 * UNIT


@pytest.mark.parametrize("initiator", ["client", "server"])
def test_linger_after_close_leaves_tcp_to_the_client_then_ends_it(isolated: bool, initiator: str) -> None:
    with ScriptedPeer(timeout=TIMEOUT, isolated=isolated, linger_after_close=LINGER) as peer:
        wire, remote = accepted(peer, "/linger")
        if initiator == "server":
            remote.close(1001)
            assert wire.read_frame().payload == b"\x03\xe9"
        started = time.monotonic()  # before the frame that ends the close handshake starts the linger
        wire.send_frame(CLOSE, b"\x03\xe9" if initiator == "server" else b"\x03\xe8")
        if initiator == "client":
            assert wire.read_frame().payload == b"\x03\xe8"
        assert wire.end_of_stream(LINGER + 5 * UNIT) == "eof"
        assert time.monotonic() - started >= LINGER  # the server's FIN, once the linger was up
        assert remote.first_to_end_tcp == "server"
        finish(wire, remote)


@pytest.mark.parametrize("client_end", ["eof", "reset"])
def test_linger_after_close_records_a_client_that_ends_tcp_first(isolated: bool, client_end: str) -> None:
    with ScriptedPeer(timeout=TIMEOUT, isolated=isolated, linger_after_close=TIMEOUT) as peer:
        wire, remote = accepted(peer, "/impatient")
        wire.send_frame(CLOSE, b"\x03\xe8")
        assert wire.read_frame().opcode == CLOSE
        if client_end == "reset":
            wire.reset()
        else:
            wire.sock.shutdown(socket.SHUT_WR)
        try:
            assert remote.wait_ended(5 * UNIT)  # within half the linger: the client's end cut it short
            assert remote.first_to_end_tcp == ("client" if client_end == "eof" else "reset")
            assert remote.ended_by == client_end
            if client_end == "eof":
                assert wire.end_of_stream() == "eof"  # and then the server ended its side
        finally:
            wire.close()


def test_a_late_close_answer_ends_tcp_at_once_even_with_linger(isolated: bool) -> None:
    """As documented: the reading thread, draining a silent connection, could not end TCP later."""
    with ScriptedPeer(timeout=TIMEOUT, isolated=isolated, linger_after_close=TIMEOUT) as peer:
        wire, remote = accepted(peer, "/late")
        remote.go_silent()
        wire.send_frame(CLOSE, b"\x03\xe8")
        assert remote.wait_close_frame() == (1000, "")
        remote.close(1000)
        assert wire.read_frame().payload == b"\x03\xe8"
        assert wire.end_of_stream(5 * UNIT) == "eof"  # within half the linger
        assert remote.first_to_end_tcp == "server"
        finish(wire, remote)


def test_close_interrupts_a_linger(isolated: bool) -> None:
    peer = ScriptedPeer(timeout=TIMEOUT, isolated=isolated, linger_after_close=60.0)
    try:
        wire, remote = accepted(peer, "/lingering")
        try:
            wire.send_frame(CLOSE, b"\x03\xe8")
            assert wire.read_frame().opcode == CLOSE
            started = time.monotonic()
            peer.close()
            assert time.monotonic() - started < 2 * UNIT
            assert wire.end_of_stream() == "eof"
        finally:
            wire.close()
        assert (remote.first_to_end_tcp, remote.ended_by) == ("server", "peer")
    finally:
        peer.close()


# -- controls --------------------------------------------------------------------------------------


def test_send_sends_unmasked_text_and_binary(shared_peer: ScriptedPeer) -> None:
    wire, remote = accepted(shared_peer, "/send")
    remote.send("héllo")
    remote.send(b"\x00\xff")
    frames = [wire.read_frame() for _ in range(2)]
    assert [(f.fin, f.rsv, f.opcode, f.masked, f.payload) for f in frames] == [
        (True, 0, TEXT, False, "héllo".encode()),
        (True, 0, BINARY, False, b"\x00\xff"),
    ]
    finish(wire, remote)


def test_send_takes_any_bytes_like_message_in_both_modes(shared_peer: ScriptedPeer) -> None:
    wire, remote = accepted(shared_peer, "/send-views")
    remote.send(memoryview(b"abcdef")[::2])  # not contiguous: the isolated mode refused it
    remote.send(bytearray(b"xy"))
    frames = [wire.read_frame() for _ in range(2)]
    assert [(f.opcode, f.payload) for f in frames] == [(BINARY, b"ace"), (BINARY, b"xy")]
    finish(wire, remote)


def test_send_fragmented_cuts_anywhere_even_inside_a_character(shared_peer: ScriptedPeer) -> None:
    wire, remote = accepted(shared_peer, "/fragments")
    text = "añb€c"  # 1 + 2 + 1 + 3 + 1 bytes
    remote.send_fragmented(text, 2)
    remote.send_fragmented(b"abc", 5)  # one frame is enough
    frames = [wire.read_frame() for _ in range(5)]
    assert [(f.opcode, f.fin) for f in frames] == [(TEXT, False)] + [(CONTINUATION, False)] * 2 + [
        (CONTINUATION, True),
        (BINARY, True),
    ]
    assert frames[1].payload == b"\xb1b"  # the second half of ñ, then b
    assert b"".join(f.payload for f in frames[:4]).decode() == text
    with pytest.raises(ValueError, match="fragment_size"):
        remote.send_fragmented("x", 0)
    finish(wire, remote)


def test_send_raw_sends_exactly_the_bytes(shared_peer: ScriptedPeer) -> None:
    wire, remote = accepted(shared_peer, "/raw")
    remote.send_raw(b"\x81\x02ok" + encode_frame(PONG, b"p"))
    assert wire.take(7) == b"\x81\x02ok\x8a\x01p"
    finish(wire, remote)


def test_pings_both_ways(shared_peer: ScriptedPeer) -> None:
    wire, remote = accepted(shared_peer, "/ping")
    remote.ping(b"probe")
    frame = wire.read_frame()
    assert (frame.opcode, frame.payload) == (PING, b"probe")
    wire.send_frame(PONG, b"probe")
    assert remote.wait_pongs(1) == [b"probe"]
    wire.send_frame(PING, b"yours")
    frame = wire.read_frame()
    assert (frame.opcode, frame.payload) == (PONG, b"yours")
    finish(wire, remote)


@pytest.mark.parametrize(("code", "reason", "payload"), [(4001, "why", b"\x0f\xa1why"), (None, "", b"")])
def test_close_sends_a_close_frame_and_then_ends_tcp(
    shared_peer: ScriptedPeer, code: Any, reason: str, payload: bytes
) -> None:
    wire, remote = accepted(shared_peer, "/close")
    remote.close(code, reason)
    frame = wire.read_frame()
    assert (frame.opcode, frame.fin, frame.payload) == (CLOSE, True, payload)
    wire.send_frame(CLOSE, payload)
    assert wire.end_of_stream() == "eof"
    finish(wire, remote)
    assert remote.close_frames == [(code, reason)]


def test_close_refuses_what_it_would_have_to_change(shared_peer: ScriptedPeer) -> None:
    wire, remote = accepted(shared_peer, "/bad-close")
    for code, reason in [(1006, ""), (999, ""), (None, "reason without code"), (1000, "é" * 62)]:
        with pytest.raises(ValueError):
            remote.close(code, reason)
    finish(wire, remote)


@pytest.mark.parametrize("client_end", ["eof", "reset"])
def test_after_a_close_handshake_the_server_ends_tcp_first(shared_peer: ScriptedPeer, client_end: str) -> None:
    wire, remote = accepted(shared_peer, "/handshake")
    wire.send_frame(CLOSE, b"\x03\xe8")
    frame = wire.read_frame()
    assert (frame.opcode, frame.payload) == (CLOSE, b"\x03\xe8")
    assert wire.end_of_stream() == "eof"  # the server's FIN came first
    assert remote.first_to_end_tcp == "server"
    assert not remote.ended  # it waits for the client's end of TCP
    if client_end == "reset":
        wire.reset()
        assert remote.wait_ended()
        assert remote.ended_by == "reset"
    else:
        finish(wire, remote)


@pytest.mark.parametrize("client_end", ["eof", "reset"])
def test_ended_by_tells_how_the_client_ended_tcp(shared_peer: ScriptedPeer, client_end: str) -> None:
    wire, remote = accepted(shared_peer, "/tcp-end")
    assert remote.ended_by is None and not remote.ended
    if client_end == "reset":
        wire.reset()
    else:
        wire.sock.shutdown(socket.SHUT_WR)
    assert remote.wait_ended()
    assert remote.ended_by == client_end and remote.close_frames == []
    assert remote.first_to_end_tcp == ("client" if client_end == "eof" else "reset")
    wire.close()


def test_reset_sends_rst(shared_peer: ScriptedPeer) -> None:
    wire, remote = accepted(shared_peer, "/reset")
    remote.reset()
    try:
        assert wire.end_of_stream() == "reset"
    finally:
        wire.close()
    assert remote.ended and remote.ended_by == "peer" and remote.first_to_end_tcp == "server"
    with pytest.raises(ConnectionError):
        remote.reset()


def test_drop_sends_fin_without_a_close_frame(shared_peer: ScriptedPeer) -> None:
    wire, remote = accepted(shared_peer, "/drop")
    remote.drop()
    with pytest.raises(EOFError):
        wire.read_frame()
    wire.send_frame(CLOSE, b"\x03\xe9")  # what the client says after is still recorded
    assert remote.wait_close_frame() == (1001, "")
    finish(wire, remote, "peer")


def test_a_client_that_breaks_the_protocol_is_failed(shared_peer: ScriptedPeer) -> None:
    wire, remote = accepted(shared_peer, "/unmasked")
    wire.send_frame(TEXT, b"not masked", masked=False)
    frame = wire.read_frame()
    assert (frame.opcode, frame.close_code) == (CLOSE, 1002)
    assert wire.end_of_stream() == "eof"
    finish(wire, remote)
    assert [code for code, _ in remote.protocol_errors] == [1002] and remote.close_frames == []


def test_waits_say_what_came(shared_peer: ScriptedPeer) -> None:
    wire, remote = accepted(shared_peer, "/waits")
    wire.send_frame(TEXT, b"one")
    with pytest.raises(TimeoutError, match="1 of 2 messages"):
        remote.wait_messages(2, SHORT)
    with pytest.raises(TimeoutError, match="no close frame"):
        remote.wait_close_frame(0.01)
    finish(wire, remote)
    with pytest.raises(ConnectionError, match=r"ended \(eof\) first: 1 of 2"):
        remote.wait_messages(2)


# -- violations ------------------------------------------------------------------------------------

# What each violation must look like on the wire: (fin, rsv, opcode, a check of the payload) per frame.
ExpectedFrame = Tuple[bool, int, int, Callable[[bytes], bool]]
EXPECTED_FRAMES: Dict[str, List[ExpectedFrame]] = {
    "invalid-utf8": [(True, 0, TEXT, lambda p: not is_utf8(p))],
    "invalid-utf8-fragment": [(False, 0, TEXT, lambda p: p[:1] == b"\xff")],
    "reserved-opcode": [(True, 0, 0x3, bool)],
    "reserved-control-opcode": [(True, 0, 0xB, bool)],
    "rsv-bits": [(True, 4, TEXT, lambda p: bool(p) and is_utf8(p))],
    "orphan-continuation": [(True, 0, CONTINUATION, bool)],
    "unfinished-message-then-new": [(False, 0, TEXT, bool), (True, 0, TEXT, bool)],
    "long-ping": [(True, 0, PING, lambda p: len(p) == 126)],
    "fragmented-ping": [(False, 0, PING, bool)],
    "fragmented-close": [(False, 0, CLOSE, lambda p: p == b"\x03\xe8")],
    "masked-frame": [(True, 0, TEXT, bool)],
    "unmasked-frame": [(True, 0, TEXT, bool)],
    "bad-close-code": [(True, 0, CLOSE, lambda p: p == b"\x03\xed")],
    "bad-close-code-999": [(True, 0, CLOSE, lambda p: p == b"\x03\xe7")],
    "bad-close-code-1004": [(True, 0, CLOSE, lambda p: p == b"\x03\xec")],
    "bad-close-code-1006": [(True, 0, CLOSE, lambda p: p == b"\x03\xee")],
    "bad-close-code-1015": [(True, 0, CLOSE, lambda p: p == b"\x03\xf7")],
    "bad-close-code-5000": [(True, 0, CLOSE, lambda p: p == b"\x13\x88")],
    "short-close": [(True, 0, CLOSE, lambda p: len(p) == 1)],
    "close-reason-not-utf8": [(True, 0, CLOSE, lambda p: p[:2] == b"\x03\xe8" and not is_utf8(p[2:]))],
}
SERVER_VIOLATIONS = sorted(set(VIOLATIONS) - {"unmasked-frame"})


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_every_violation_is_listed_with_its_close_code() -> None:
    assert set(EXPECTED_FRAMES) == set(VIOLATIONS)
    assert {code for code in VIOLATIONS.values()} == {1002, 1007}
    assert [name for name, code in VIOLATIONS.items() if code == 1007] == [
        "invalid-utf8",
        "invalid-utf8-fragment",
        "close-reason-not-utf8",
    ]


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
@pytest.mark.parametrize("client", [False, True], ids=["as-server", "as-client"])
def test_wsproto_fails_each_violation_with_the_listed_code(name: str, client: bool) -> None:
    """An independent receiver agrees with the table (wsproto checks every fragment's UTF-8)."""
    if (name, client) in {("masked-frame", True), ("unmasked-frame", False)}:
        with pytest.raises(ValueError, match="breaks the protocol only when"):
            violation_bytes(name, client=client)
        return
    receiver = Connection(ConnectionType.SERVER if client else ConnectionType.CLIENT)
    receiver.receive_data(violation_bytes(name, client=client))
    closes = [event for event in receiver.events() if isinstance(event, CloseConnection)]
    assert [event.code for event in closes] == [VIOLATIONS[name]]


@pytest.mark.parametrize("name", SERVER_VIOLATIONS)
def test_violation_bytes_on_the_wire(shared_peer: ScriptedPeer, name: str) -> None:
    wire, remote = accepted(shared_peer, f"/violate/{name}")
    remote.violate(name)
    frames: List[Frame] = [wire.read_frame() for _ in EXPECTED_FRAMES[name]]
    for frame, (fin, rsv, opcode, check) in zip(frames, EXPECTED_FRAMES[name]):
        assert (frame.fin, frame.rsv, frame.opcode) == (fin, rsv, opcode)
        assert frame.masked == (name == "masked-frame")
        assert check(frame.payload), frame.payload
    if name == "long-ping":
        assert frames[0].length_field == 126  # the 16-bit extended length
    wire.reset()
    assert remote.wait_ended()


@pytest.mark.parametrize("name", sorted(set(SERVER_VIOLATIONS) - {"invalid-utf8-fragment"}))
def test_websockets_fails_the_connection_with_the_listed_code(shared_peer: ScriptedPeer, name: str) -> None:
    """End to end: websockets' client meets the violation and tells the peer why it gives up.

    websockets checks UTF-8 only once a message is complete, so the unfinished invalid fragment
    goes unnoticed by it; wsproto's check above covers that one."""
    with websockets_connect(shared_peer.url + f"violate/{name}", open_timeout=5 * UNIT, close_timeout=UNIT) as client:
        remote = shared_peer.next_connection(5 * UNIT)
        remote.violate(name)
        with pytest.raises(ConnectionClosed) as closed:
            client.recv(5 * UNIT)
        assert closed.value.sent is not None and closed.value.sent.code == VIOLATIONS[name]
    assert remote.wait_close_frame()[0] == VIOLATIONS[name]
    assert remote.wait_ended()


def test_unknown_and_wrong_role_violations_are_refused(shared_peer: ScriptedPeer) -> None:
    wire, remote = accepted(shared_peer, "/refused")
    with pytest.raises(ValueError, match="unknown violation"):
        remote.violate("no-such-thing")
    with pytest.raises(ValueError, match="only when a client"):
        remote.violate("unmasked-frame")
    finish(wire, remote)


# -- the client role -------------------------------------------------------------------------------


def test_scripted_client_sends_masked_frames_and_violations(isolated: bool) -> None:
    server = WireServer()
    try:
        client = ScriptedClient(
            server.url + "/path?q=1",
            isolated=isolated,
            timeout=TIMEOUT,
            host_header="example.test",
            headers={"X-Token": "t"},
            subprotocols=["chat"],
        )
        with client:
            wire = server.accepted()
            assert server.request is not None
            start, headers = server.request
            assert start == "GET /path?q=1 HTTP/1.1"
            assert ("Host", "example.test") in headers and ("X-Token", "t") in headers
            assert ("Sec-WebSocket-Protocol", "chat") in headers
            conn = client.connection
            assert conn.role == "client" and conn.response_status == 101 and conn.request_target == "/path?q=1"
            conn.send("hi")
            conn.violate("unmasked-frame")
            conn.violate("reserved-opcode")
            frames = [wire.read_frame() for _ in range(3)]
            assert [(f.opcode, f.masked, f.payload[:2]) for f in frames] == [
                (TEXT, True, b"hi"),
                (TEXT, False, b"un"),
                (0x3, True, b"op"),
            ]
            with pytest.raises(ValueError, match="only when a server"):
                conn.violate("masked-frame")
            wire.send_frame(TEXT, b"to the client", masked=False)
            assert conn.wait_messages(1) == ["to the client"]
            wire.send_frame(CLOSE, b"\x03\xe8", masked=False)
            frame = wire.read_frame()
            assert (frame.opcode, frame.masked, frame.payload) == (CLOSE, True, b"\x03\xe8")
            wire.close()  # the server ends TCP first; the client follows
            assert conn.wait_ended()
            assert conn.ended_by == "eof" and conn.first_to_end_tcp == "server"
    finally:
        server.close()


def test_scripted_client_refused_raises_with_the_status(isolated: bool) -> None:
    server = WireServer(lambda headers: 403)
    try:
        with pytest.raises(HandshakeRefused) as refused:
            ScriptedClient(server.url + "/", isolated=isolated, timeout=TIMEOUT).open(5 * UNIT)
        assert isinstance(refused.value, ConnectionError)
        assert refused.value.status == 403 and refused.value.body == b"go away"
    finally:
        server.close()


def test_scripted_client_against_websockets(isolated: bool) -> None:
    def echo(ws: Any) -> None:
        for message in ws:
            ws.send(message)

    with running_server(echo) as server:
        url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"
        with ScriptedClient(url, isolated=isolated, timeout=TIMEOUT) as client:
            conn = client.connection
            conn.send_fragmented("fragmented €", 3)
            assert conn.wait_messages(1) == ["fragmented €"]
            conn.violate("unmasked-frame")
            assert conn.wait_close_frame()[0] == 1002
            assert conn.wait_ended()
            assert conn.ended_by == "eof"


# -- smoke tests with duplexthreads itself ---------------------------------------------------------


@pytest.mark.parametrize("backend", list(duplexthreads.BACKENDS))
def test_smoke_duplexthreads_connect(isolated: bool, backend: str) -> None:
    with ScriptedPeer(timeout=TIMEOUT, isolated=isolated, echo=True, greeting=["welcome"]) as peer:
        with duplexthreads.connect(peer.url, backend=backend) as conn:
            remote = peer.next_connection(5 * UNIT)
            assert conn.recv(timeout=5 * UNIT) == "welcome"
            conn.send("hello")
            assert conn.recv(timeout=5 * UNIT) == "hello"
        assert conn.report is not None and conn.report.ok
        assert remote.wait_ended()
        assert remote.close_frames == [(1000, "")] and remote.ended_by == "eof"


def test_smoke_scripted_client_against_accept_under_werkzeug(isolated: bool) -> None:
    reports: List[duplexthreads.ExitReport] = []

    def app(environ: Any, start_response: Callable[..., Any]) -> Iterable[bytes]:
        conn = duplexthreads.accept(environ)
        for message in conn:
            conn.send(message)
        assert conn.report is not None
        reports.append(conn.report)
        start_response("200 OK", [])
        return [b""]

    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, name="test-werkzeug")
    serving.start()
    try:
        with ScriptedClient(f"ws://127.0.0.1:{server.port}/ws", isolated=isolated, timeout=TIMEOUT) as client:
            conn = client.connection
            conn.send("hello")
            conn.send_fragmented(b"\x00" * 10, 3)
            assert conn.wait_messages(2) == ["hello", b"\x00" * 10]
            conn.close(1000, "done")
            assert conn.wait_close_frame() == (1000, "done")
            assert conn.wait_ended()
            assert conn.ended_by == "eof"  # the server ended TCP first, as it should
    finally:
        server.shutdown()
        serving.join(10 * UNIT)
        server.server_close()
    assert [(report.close_code, report.close_reason) for report in reports] == [(1000, "done")]
