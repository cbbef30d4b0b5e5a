"""connect(start=False): an open connection whose team the caller completes before start().

The command needs it for its stdin worker; any application adding a worker to a client does.
"""

from __future__ import annotations

import threading

import pytest
from websockets.sync.server import ServerConnection

import duplexthreads
from duplexthreads import Reason

from ..integration.websockets_server import running_server
from ..timing import UNIT

pytestmark = pytest.mark.timeout(30 * UNIT)


def echo(ws: ServerConnection) -> None:
    for message in ws:
        ws.send(message)


def test_a_worker_joins_the_team_before_start() -> None:
    with running_server(echo) as server:
        url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"
        conn = duplexthreads.connect(url, start=False)
        seen = []
        answered = threading.Event()

        def worker(quit: threading.Event) -> None:
            conn.send("from the worker")
            seen.append(conn.recv(timeout=10 * UNIT))
            answered.set()
            quit.wait()

        conn.add_worker("helper", worker)
        conn.start()
        assert answered.wait(10 * UNIT)
        report = conn.close()
    assert seen == ["from the worker"]
    assert report is not None and report.ok and report.reason is Reason.LOCAL_CLOSE


def test_an_unstarted_connection_closes_without_threads() -> None:
    with running_server(echo) as server:
        url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"
        conn = duplexthreads.connect(url, start=False)
        assert conn.threads() == ()
        report = conn.close()
    assert report is not None and report.reason is Reason.ABORTED


def test_start_false_is_checked() -> None:
    with pytest.raises(TypeError, match="start"):
        duplexthreads.connect("ws://127.0.0.1:9/", start="no")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="start=False"):
        duplexthreads.connect("ws://127.0.0.1:9/", start=False, reconnect=True)
