"""Liveness at its edges: what must not be taken for a dead peer, and what must.

A slow reader of a long upload is alive even when our pings wait behind megabytes; a hung
process whose kernel still acknowledges our small frames is not. A peer that floods pings
without reading is cut off by the write deadline on both backends, and a heartbeat timeout
never waits behind a pong stuck on the dead peer. Found by a hostile review; each test failed
before its fix.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Dict, Iterable

import pytest

import duplexthreads
from duplexthreads import Reason
from duplexthreads.testing import ScriptedPeer

from ..timing import UNIT
from .raw_server import ClientFrames, RawServer, server_frame

pytestmark = pytest.mark.timeout(60 * UNIT)

WAIT = 10 * UNIT
DAYS_30 = 30 * 24 * 3600.0


@pytest.fixture(scope="module")
def peer() -> Iterable[ScriptedPeer]:
    with ScriptedPeer(echo=True, timeout=WAIT) as scripted:
        yield scripted


def test_a_slow_reader_of_a_long_upload_is_alive(backend: str) -> None:
    """The peer reads about 4 MB/s and answers each ping when it reaches it, behind our data.

    With a 0.3 s timeout, a ping queued behind megabytes of upload is answered late; the
    acknowledgements of the upload are what show the peer is there meanwhile.
    """
    total = 60 * 100_000
    seen: Dict[str, int] = {"bytes": 0, "pongs": 0}
    done = threading.Event()
    finished = threading.Event()
    with RawServer(receive_buffer=65536) as server:

        def serve() -> None:
            sock, rest = server.accept()
            frames = ClientFrames()
            frames.feed(rest)
            with sock:
                try:
                    while seen["bytes"] < total:
                        data = sock.recv(65536)
                        if not data:
                            return
                        for opcode, size, payload in frames.feed(data):
                            if opcode == 0x9:
                                assert payload is not None
                                sock.sendall(server_frame(0xA, payload))
                                seen["pongs"] += 1
                            elif opcode in (0x1, 0x2):
                                seen["bytes"] += size
                        # Pacing: a reader that takes its time is what this test is about.
                        threading.Event().wait(0.015)
                finally:
                    done.set()
                    finished.wait(WAIT)  # keep the connection open until the client is checked

        serving = threading.Thread(target=serve, name="test-slow-reader")
        serving.start()
        conn = duplexthreads.connect(server.url, backend=backend, ping_interval=0.1, ping_timeout=0.3, max_queue=None)
        for _ in range(total // 100_000):
            conn.send(b"u" * 100_000)
        assert done.wait(WAIT * 3)
        alive = not conn.closed
        report = conn.abort()
        finished.set()
        serving.join(WAIT)
    assert alive, report.describe() if report else "closed"
    assert seen["bytes"] == total
    assert report is not None and report.reason is Reason.ABORTED


def test_a_hung_peer_whose_kernel_still_acknowledges_is_detected(peer: ScriptedPeer, backend: str) -> None:
    """The peer process neither reads nor answers; its kernel acknowledges our small messages.

    Acknowledgements of a few small frames are no sign of the application, so the pings'
    timeout runs out even while we keep sending.
    """
    conn = duplexthreads.connect(peer.url, backend=backend, ping_interval=0.1, ping_timeout=0.2)
    remote = peer.next_connection()
    remote.stop_reading()
    remote.go_silent()
    hung_from = time.monotonic()
    for index in range(1000):
        try:
            conn.send(f"tick {index}")
        except duplexthreads.ConnectionClosed:
            break
        if conn.closed:
            break
        threading.Event().wait(0.02)  # pacing: a chatty application, bounded by the count
    report = conn.wait(WAIT)
    assert report.reason is Reason.HEARTBEAT_TIMEOUT, report.describe()
    assert time.monotonic() - hung_from < 0.1 + 0.2 + WAIT / 4


def _flood_pings(server: RawServer, box: Dict[str, object], silent: threading.Event) -> None:
    """Accept, then send pings without reading until our sends stall; then stay silent."""
    sock, _ = server.accept()
    box["sock"] = sock
    ping = server_frame(0x9, b"p" * 125) * 100
    sock.settimeout(1.0 * UNIT)
    try:
        while True:
            sock.sendall(ping)
    except OSError:  # socket.timeout: our pongs filled its buffers and then ours
        pass
    silent.set()


@pytest.mark.parametrize("write_timeout", [0.3, None])
def test_a_peer_that_floods_pings_without_reading(backend: str, write_timeout: float) -> None:
    """With a write deadline the stuck pong ends the connection as WRITE_TIMEOUT, on both
    backends; without one, the heartbeat ends it, at once and without a 1011 that could only
    wait behind the stuck pong."""
    box: Dict[str, object] = {}
    silent = threading.Event()
    with RawServer(receive_buffer=4096) as server:
        flooding = threading.Thread(target=_flood_pings, args=(server, box, silent), name="test-ping-flood")
        flooding.start()
        conn = duplexthreads.connect(
            server.url, backend=backend, ping_interval=0.1, ping_timeout=0.5, write_timeout=write_timeout
        )
        report = conn.wait(WAIT)
        flooding.join(WAIT)
        sock = box.get("sock")
        assert isinstance(sock, socket.socket)
        sock.close()
    if write_timeout is not None:
        assert report.reason is Reason.WRITE_TIMEOUT, report.describe()
        assert isinstance(report.error, duplexthreads.WriteTimeout)
    else:
        assert report.reason is Reason.HEARTBEAT_TIMEOUT, report.describe()
        assert report.teardown_seconds < 0.5
        assert report.close_sent is None
    assert report.lingering == ()


def test_timeouts_of_a_month_are_accepted_and_work(peer: ScriptedPeer, backend: str) -> None:
    """poll() takes at most 24.8 days; longer waits must not overflow."""
    conn = duplexthreads.connect(
        peer.url, backend=backend, ping_interval=0.05, ping_timeout=DAYS_30, write_timeout=DAYS_30
    )
    remote = peer.next_connection()
    assert conn.ping(timeout=DAYS_30) >= 0
    remote.stop_reading()
    for _ in range(200):  # more than the buffers hold: the writer then waits, up to a month
        conn.send(b"\x00" * 65536)
    with pytest.raises(TimeoutError):
        conn.wait(0.3 * UNIT)  # the heartbeat pinged meanwhile, nothing overflowed
    report = conn.abort()
    assert report is not None and report.reason is Reason.ABORTED, report.describe()
    assert report.lingering == ()
