"""Interoperability with peers nobody here wrote: the websockets threading server for the
client backends, and websocket-client against our server side. Loopback only."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any, Callable, Iterator, List

import pytest
import websocket
from websockets.sync.server import ServerConnection

import duplexthreads
from duplexthreads import ConnectError, HandshakeRejected, Reason

from ..harness import Listener, read_environ
from ..timing import UNIT
from .websockets_server import running_server

pytestmark = pytest.mark.timeout(30 * UNIT)

BACKENDS = list(duplexthreads.BACKENDS)


@pytest.fixture
def websockets_server() -> Iterator[Callable[[Callable[[ServerConnection], None]], str]]:
    """Start a websockets threading server with the given handler; yields its URL."""
    with contextlib.ExitStack() as stack:

        def start(handler: Callable[[ServerConnection], None]) -> str:
            server = stack.enter_context(running_server(handler))
            return f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"

        yield start


def echo(ws: ServerConnection) -> None:
    for message in ws:
        ws.send(message)


@pytest.mark.parametrize("backend", BACKENDS)
def test_echo_against_websockets(websockets_server: Any, backend: str) -> None:
    url = websockets_server(echo)
    with duplexthreads.connect(url, backend=backend) as conn:
        sent = [f"text {i}" if i % 2 else bytes([i % 256]) * (i * 97) for i in range(300)]
        for message in sent:
            conn.send(message)
        assert [conn.recv(timeout=10 * UNIT) for _ in sent] == sent
    assert conn.report is not None and conn.report.ok
    assert conn.report.reason is Reason.LOCAL_CLOSE and conn.report.written == len(sent)


@pytest.mark.parametrize("backend", BACKENDS)
def test_websockets_server_closes(websockets_server: Any, backend: str) -> None:
    def close_on_bye(ws: ServerConnection) -> None:
        for message in ws:
            if message == "bye":
                ws.close(4000, "as requested")

    conn = duplexthreads.connect(websockets_server(close_on_bye), backend=backend)
    conn.send("hello")
    conn.send("bye")
    report = conn.wait(10 * UNIT)
    assert (report.reason, report.close_code, report.close_reason) == (Reason.PEER_CLOSED, 4000, "as requested")
    assert report.error is None and report.unsent == ()


@pytest.mark.parametrize("backend", BACKENDS)
def test_pings_from_the_server_are_answered(websockets_server: Any, backend: str) -> None:
    def ping_then_report(ws: ServerConnection) -> None:
        for message in ws:
            if message == "ping me":
                answered = ws.ping(b"probe").wait(5 * UNIT)
                ws.send("pong received" if answered else "no pong")

    with duplexthreads.connect(websockets_server(ping_then_report), backend=backend) as conn:
        conn.send("ping me")
        assert conn.recv(timeout=10 * UNIT) == "pong received"


@pytest.mark.parametrize("backend", BACKENDS)
def test_subprotocol_and_headers_reach_the_server(websockets_server: Any, backend: str) -> None:
    def tell(ws: ServerConnection) -> None:
        assert ws.request is not None
        ws.send(f"{ws.subprotocol}|{ws.request.headers.get('X-Probe')}")
        for _ in ws:
            pass

    url = websockets_server(tell)
    # websockets picks a subprotocol only when told which it supports; without that it picks none.
    with duplexthreads.connect(url, backend=backend, headers={"X-Probe": "yes"}) as conn:
        assert conn.recv(timeout=10 * UNIT) == "None|yes"


# -- our server side, with websocket-client as the client ----------------------------------------


def serve_with_duplexthreads(**options: Any) -> Listener:
    return Listener(lambda sock: duplexthreads.accept(read_environ(sock), **options))


def test_server_side_echo_with_websocket_client() -> None:
    listener = serve_with_duplexthreads()
    client = websocket.create_connection(f"ws://127.0.0.1:{listener.port}/", timeout=10 * UNIT)
    try:
        conn = listener.result()
        client.send("hello")
        client.send_binary(b"\x00" * 3000)
        assert conn.recv(timeout=10 * UNIT) == "hello"
        assert conn.recv(timeout=10 * UNIT) == b"\x00" * 3000
        conn.send("from server")
        assert client.recv() == "from server"
        client.close(status=1000, reason=b"client done")
        report = conn.wait(10 * UNIT)
        assert (report.reason, report.close_code, report.close_reason) == (Reason.PEER_CLOSED, 1000, "client done")
    finally:
        client.shutdown()
        listener.close()


def test_server_side_local_close_reaches_websocket_client() -> None:
    listener = serve_with_duplexthreads(close_timeout=2 * UNIT)
    client = websocket.create_connection(f"ws://127.0.0.1:{listener.port}/", timeout=10 * UNIT)
    try:
        conn = listener.result()
        outcome: List[Any] = []
        reader = threading.Thread(target=lambda: outcome.append(client.recv_data_frame(control_frame=True)))
        reader.start()
        report = conn.close(1001, "server going down")
        reader.join(10 * UNIT)
        assert not reader.is_alive()
        opcode, frame = outcome[0]
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert frame.data[2:] == b"server going down"
        assert report is not None and report.ok and report.error is None
    finally:
        client.shutdown()
        listener.close()


def test_accept_refuses_a_request_that_is_not_an_upgrade() -> None:
    a, b = socket.socketpair()
    try:
        with pytest.raises(HandshakeRejected) as refused:
            duplexthreads.accept({"werkzeug.socket": a, "HTTP_HOST": "x"})
        assert refused.value.status == 400
        with pytest.raises(ConnectError):
            duplexthreads.accept({"HTTP_UPGRADE": "websocket"})
    finally:
        a.close()
        b.close()


# -- failed connects leave nothing behind (the autouse leak check proves it) ----------------------


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@pytest.mark.parametrize("backend", BACKENDS)
def test_refused(backend: str) -> None:
    with pytest.raises(ConnectError) as failed:
        duplexthreads.connect(f"ws://127.0.0.1:{closed_port()}/", backend=backend)
    assert isinstance(failed.value, OSError)
    assert isinstance(failed.value.__cause__, ConnectionRefusedError)


def http_responder(answer: bytes, read_request: bool = True) -> Listener:
    def respond(sock: socket.socket) -> None:
        with sock:
            if read_request:
                read_environ(sock)
            sock.sendall(answer)

    return Listener(respond)


@pytest.mark.parametrize("backend", BACKENDS)
def test_http_endpoint_that_is_not_a_websocket(backend: str) -> None:
    listener = http_responder(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    try:
        with pytest.raises(HandshakeRejected) as rejected:
            duplexthreads.connect(f"ws://127.0.0.1:{listener.port}/", backend=backend)
        assert rejected.value.status == 404
        assert "404" in str(rejected.value)
    finally:
        listener.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_open_timeout_against_a_server_that_never_answers(backend: str) -> None:
    release = threading.Event()

    def hold(sock: socket.socket) -> None:
        with sock:
            release.wait(10 * UNIT)

    listener = Listener(hold)
    try:
        with pytest.raises(ConnectError):
            duplexthreads.connect(f"ws://127.0.0.1:{listener.port}/", backend=backend, open_timeout=0.3 * UNIT)
    finally:
        release.set()
        listener.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_tls_handshake_failure(backend: str) -> None:
    # Plain HTTP where TLS is expected: the ClientHello is answered with bytes that are not TLS.
    listener = http_responder(b"HTTP/1.1 400 Bad Request\r\n\r\n", read_request=False)
    try:
        with pytest.raises(ConnectError):
            duplexthreads.connect(f"wss://127.0.0.1:{listener.port}/", backend=backend, open_timeout=5 * UNIT)
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("url", "options", "error"),
    [
        ("http://127.0.0.1/", {}, ValueError),
        ("ws:///nohost", {}, ValueError),
        ("ws://127.0.0.1/", {"backend": "nope"}, ValueError),
        ("ws://127.0.0.1/", {"open_timeout": 0}, ValueError),
        ("ws://127.0.0.1/", {"subprotocols": "chat"}, TypeError),
        (b"ws://127.0.0.1/", {}, TypeError),
    ],
)
def test_bad_arguments_fail_at_the_call_site(url: Any, options: Any, error: type) -> None:
    with pytest.raises(error):
        duplexthreads.connect(url, **options)
