"""accept() inside a real WSGI server: Werkzeug's, the one Flask runs on."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
from typing import Any, Callable, Iterable, List, Tuple

import pytest
import websocket
from werkzeug.serving import WSGIRequestHandler, make_server

import duplexthreads
from duplexthreads import Reason

from ..timing import UNIT

pytestmark = pytest.mark.timeout(30 * UNIT)


def test_echo_view_under_werkzeug() -> None:
    reports: List[duplexthreads.ExitReport] = []
    view_done = threading.Event()

    def app(environ: Any, start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            conn = duplexthreads.accept(environ)
            for message in conn:
                conn.send(message)
            assert conn.report is not None
            reports.append(conn.report)
        finally:
            view_done.set()
        start_response("200 OK", [])
        return [b""]

    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, name="test-werkzeug")
    serving.start()
    client = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws", timeout=10 * UNIT)
    try:
        client.send("hello")
        client.send_binary(b"\x00" * 70_000)
        assert client.recv() == "hello"
        assert client.recv() == b"\x00" * 70_000
        client.close(status=1000, reason=b"bye")
        assert view_done.wait(10 * UNIT)
    finally:
        client.shutdown()
        server.shutdown()
        serving.join(10 * UNIT)
        server.server_close()
    assert not serving.is_alive()
    assert len(reports) == 1
    assert (reports[0].reason, reports[0].close_code, reports[0].close_reason) == (Reason.PEER_CLOSED, 1000, "bye")
    assert reports[0].written == 2 and reports[0].lingering == ()


# -- nothing of the WebSocket reaches Werkzeug's HTTP parser -------------------------------------------

# A hostile client in a child process: it upgrades (in "pipelined" mode with a second request
# sent along with the upgrade request), sends a close frame, reads until the server ends TCP,
# and in "after-close" mode then sends the second request. It prints the close codes it got.
HOSTILE_CLIENT = r"""
import base64, json, os, socket, struct, sys, time
port, mode, unit = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
key = base64.b64encode(os.urandom(16)).decode()
upgrade = (
    f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
).encode()
smuggled = b"POST /smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
mask = os.urandom(4)
close = bytes([0x88, 0x82]) + mask + bytes(b ^ mask[i] for i, b in enumerate(struct.pack("!H", 1000)))
sock = socket.create_connection(("127.0.0.1", port), timeout=10 * unit)
sock.sendall(upgrade + smuggled if mode == "pipelined" else upgrade)
data = b""
while b"\r\n\r\n" not in data:
    chunk = sock.recv(4096)
    if not chunk:
        break
    data += chunk
head, _, frames = data.partition(b"\r\n\r\n")
try:
    sock.sendall(close)
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        frames += chunk
except OSError:
    pass  # the server may have failed the connection already
if mode == "after-close":
    time.sleep(0.5 * unit)  # past the server's close, which discards what is readable then
    try:
        sock.sendall(smuggled)
    except OSError:
        pass
sock.close()
codes = []
while len(frames) >= 2:
    length = frames[1] & 0x7F
    if frames[0] & 0x0F == 0x8:
        codes.append(struct.unpack("!H", frames[2:4])[0] if length >= 2 else None)
    frames = frames[2 + length:]
print(json.dumps({"status": head.split(b" ")[1].decode(), "close_codes": codes}))
"""


@pytest.mark.parametrize("view_ends", ["raising", "returning"])
@pytest.mark.parametrize("mode", ["pipelined", "after-close"])
def test_no_request_is_smuggled_through_the_websocket(mode: str, view_ends: str) -> None:
    """A view that ends by raising ConnectionAbortedError (as flask-sock does for Werkzeug)
    left the connection to Werkzeug's keep-alive loop, which parsed what the client sent along
    with the upgrade request, or after its close frame, as a new request and ran the app again:
    behind a proxy, a request the proxy never saw. Returning a response made Werkzeug close."""
    calls: queue.Queue[Tuple[str, str]] = queue.Queue()
    handled: queue.Queue[None] = queue.Queue()

    def app(environ: Any, start_response: Callable[..., Any]) -> Iterable[bytes]:
        calls.put((environ["REQUEST_METHOD"], environ["PATH_INFO"]))
        if environ["PATH_INFO"] != "/ws":
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        conn = duplexthreads.accept(environ)
        conn.wait(10 * UNIT)
        if view_ends == "raising":
            raise ConnectionAbortedError("the WebSocket has ended")
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    class Handler(WSGIRequestHandler):
        def handle(self) -> None:
            try:
                super().handle()
            finally:
                handled.put(None)

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Handler)
    serving = threading.Thread(target=server.serve_forever, args=(0.05,), name="test-werkzeug")
    serving.start()
    try:
        client = subprocess.run(
            [sys.executable, "-c", HOSTILE_CLIENT, str(server.port), mode, str(UNIT)],
            capture_output=True,
            timeout=20 * UNIT,
            check=True,
        )
        handled.get(timeout=10 * UNIT)  # Werkzeug is done with the connection
    finally:
        server.shutdown()
        serving.join(10 * UNIT)
        server.server_close()
    assert not serving.is_alive()
    seen = json.loads(client.stdout)
    assert seen["status"] == "101"
    # Pipelined bytes are the WebSocket's: here no frame at all, a protocol error (1002).
    assert seen["close_codes"] == ([1002] if mode == "pipelined" else [1000])
    assert list(calls.queue) == [("GET", "/ws")]


@pytest.mark.parametrize("client_library", ["websocket-client", "websockets"])
def test_the_server_frames_its_own_data_unless_an_extension_was_negotiated(client_library: str) -> None:
    """Without an extension the server side writes its data frames itself, and directly from
    send() while the writer is idle; with permessage-deflate (websockets offers it) wsproto must."""
    from websockets.sync.client import connect as websockets_connect

    messages: List[object] = ["tiny", "é" * 70_000, b"\x00" * 200, b"\x01" * 1_000_000]
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(duplexthreads.serve(ping_interval=None))
        if client_library == "websocket-client":
            plain = websocket.create_connection(server.url, timeout=10 * UNIT)
            stack.callback(plain.close)
            receive: Callable[[], object] = plain.recv
        else:
            deflating = stack.enter_context(websockets_connect(server.url, open_timeout=10 * UNIT, max_size=None))
            receive = lambda: deflating.recv(timeout=10 * UNIT)  # noqa: E731
        sender = stack.enter_context(duplexthreads.connect(server.url, ping_interval=None))  # offers no extension
        assert str(sender.recv(timeout=10 * UNIT)).startswith("* welcome")  # it is in the hub now
        direct = sorted(member.transport.direct_writes for member in server.hub)
        assert direct == ([True, True] if client_library == "websocket-client" else [False, True])
        for message in messages:
            sender.send(message)  # type: ignore[arg-type]
        received: List[object] = []
        while len(received) < len(messages):
            message = receive()
            if not (isinstance(message, str) and message.startswith("* ")):  # a notice
                received.append(message)
        assert received == messages
