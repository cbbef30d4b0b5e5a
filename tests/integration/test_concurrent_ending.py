"""A second caller's abort() or shorter close() counts while another thread owns the ending."""

from __future__ import annotations

import threading
import time
from typing import Iterator, List, Optional

import pytest

import duplexthreads
from duplexthreads import ExitReport
from duplexthreads.testing import ScriptedPeer

from ..timing import UNIT

pytestmark = pytest.mark.timeout(60 * UNIT)


@pytest.fixture(scope="module")
def lingering_peer() -> Iterator[ScriptedPeer]:
    """After the close handshake it leaves TCP to the client for up to 8 s."""
    with ScriptedPeer(linger_after_close=8.0, timeout=20 * UNIT) as peer:
        yield peer


@pytest.mark.parametrize("second", ["abort", "short close"])
def test_a_second_caller_cuts_short_the_wait_for_the_server_to_end_tcp(
    lingering_peer: ScriptedPeer, backend: str, second: str
) -> None:
    conn = duplexthreads.connect(lingering_peer.url, backend=backend, close_timeout=5.0)
    remote = lingering_peer.next_connection(timeout=10 * UNIT)
    first: List[Optional[ExitReport]] = []
    closer = threading.Thread(target=lambda: first.append(conn.close()))
    closer.start()
    try:
        assert remote.wait_close_frame(timeout=10 * UNIT) == (1000, "")
        # The handshake is complete; the first close() now waits for the server to end TCP.
        deadline = time.monotonic() + 10 * UNIT
        while conn._protocol._deaf_until is None:
            assert time.monotonic() < deadline, "the first close() never waited for the server's FIN"
            time.sleep(0.005)
        started = time.monotonic()
        report = conn.abort() if second == "abort" else conn.close(timeout=0.2)
        assert time.monotonic() - started < 0.2 + 0.5 * UNIT
        assert report is not None and report.ok  # the handshake did complete
    finally:
        closer.join(10 * UNIT)
    assert not closer.is_alive() and first == [report]


def test_a_second_close_with_enough_time_lets_the_server_end_tcp_first(backend: str) -> None:
    # Less time than the first close, but more than the server needs: nothing is cut short.
    with ScriptedPeer(linger_after_close=0.3, timeout=20 * UNIT) as peer:
        conn = duplexthreads.connect(peer.url, backend=backend, close_timeout=5.0)
        remote = peer.next_connection(timeout=10 * UNIT)
        closer = threading.Thread(target=conn.close)
        closer.start()
        try:
            assert remote.wait_close_frame(timeout=10 * UNIT) == (1000, "")
            report = conn.close(timeout=3.0)
            assert report is not None and report.ok
            assert remote.wait_ended(timeout=10 * UNIT) and remote.first_to_end_tcp == "server"
        finally:
            closer.join(10 * UNIT)
        assert not closer.is_alive()


def test_ctrl_c_while_waiting_for_the_server_to_end_tcp_still_closes_the_socket(
    lingering_peer: ScriptedPeer, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from duplexthreads.transports import _sockets, simple_websocket, websocket_client

    def interrupted(sock: object, deadline: object) -> None:
        raise KeyboardInterrupt  # as if Ctrl-C landed in the wait

    for module in (_sockets, simple_websocket, websocket_client):
        if hasattr(module, "await_end_of_stream"):
            monkeypatch.setattr(module, "await_end_of_stream", interrupted)
    conn = duplexthreads.connect(lingering_peer.url, backend=backend)
    lingering_peer.next_connection(timeout=10 * UNIT)
    with pytest.raises(KeyboardInterrupt):
        conn.close()
    report = conn.report
    assert report is not None and conn.closed
    raw = getattr(conn.transport, "_sock", None) or conn.transport._guard.raw  # type: ignore[attr-defined]
    assert raw.fileno() == -1  # closed once, although the wait before it was interrupted
