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
        while conn._protocol._fin_wait_ends is None:
            assert time.monotonic() < deadline, "the first close() never waited for the server's FIN"
            time.sleep(0.005)
        started = time.monotonic()
        report = conn.abort() if second == "abort" else conn.close(timeout=0.2)
        assert time.monotonic() - started < 0.2 + 0.5 * UNIT
        assert report is not None and report.ok  # the handshake did complete
    finally:
        closer.join(10 * UNIT)
    assert not closer.is_alive() and first == [report]
