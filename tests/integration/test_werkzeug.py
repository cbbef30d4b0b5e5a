"""accept() inside a real WSGI server: Werkzeug's, the one Flask runs on."""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, List

import pytest
import websocket
from werkzeug.serving import make_server

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
