"""A scripted peer belongs to the process that made it: a forked child must not end it.

A worker forked off a test process (multiprocessing's fork start method, a server that forks per
request...) holds copies of the peer's pipes or sockets, and leaves the peer's ``with`` block as
the test does. Its ``close()`` must only let go of its own copies: the peer serves on for the
test, and the connection the test holds goes on working.
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from typing import Callable

import pytest

from duplexthreads.testing import PeerConnection, ScriptedClient, ScriptedPeer

from ..timing import UNIT
from .plain_websocket import Wire, open_wire

pytestmark = [
    pytest.mark.timeout(30 * UNIT),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
]

MODES = [pytest.param(True, id="isolated"), pytest.param(False, id="in-process")]
TIMEOUT = 10 * UNIT
TEXT = 0x1
# Exit statuses of the forked child.
CHILD_OK, CHILD_FAILED, CHILD_NOT_REFUSED = 0, 1, 2


def in_forked_child(body: Callable[[], bool]) -> int:
    """Run ``body`` in a forked child, which leaves with ``os._exit`` whatever happens (never
    through pytest); return its exit status. The child is killed if it takes longer than TIMEOUT."""
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a process with threads may deadlock the child; the
        # child here runs a few lines that take no lock, and is killed at the deadline if stuck.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        status = CHILD_FAILED
        try:
            status = CHILD_OK if body() else CHILD_NOT_REFUSED
        finally:
            os._exit(status)
    deadline = time.monotonic() + TIMEOUT
    while True:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(wait_status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child did not finish within {TIMEOUT:g} s")
        time.sleep(0.01)


def refuses_use(remote: PeerConnection) -> bool:
    """Whether the connection refuses to be used from this (forked) process."""
    try:
        remote.send("from the fork")
    except RuntimeError:
        return True
    return False


def echoes(wire: Wire, text: bytes) -> bool:
    wire.send_frame(TEXT, text)
    frame = wire.read_frame()
    return (frame.opcode, frame.payload) == (TEXT, text)


@pytest.mark.parametrize("isolated", MODES)
def test_a_forked_child_leaving_the_with_block_leaves_the_peer_serving(isolated: bool) -> None:
    with ScriptedPeer(isolated=isolated, echo=True, timeout=TIMEOUT) as peer:
        wire, _ = open_wire(peer.url, "/before-fork")
        try:
            remote = peer.next_connection(TIMEOUT)
            assert echoes(wire, b"before")

            def leave_the_block() -> bool:
                with peer:  # what a forked worker does when it runs on past the fork
                    pass
                peer.close()  # idempotent there too
                return refuses_use(remote)

            status = in_forked_child(leave_the_block)
            # The connection the test holds goes on, both ways, and nothing ended it.
            assert echoes(wire, b"after")
            assert remote.wait_messages(2) == ["before", "after"]
            assert not remote.ended and remote.ended_by is None
            # And the peer still accepts clients.
            second, _ = open_wire(peer.url, "/after-fork")
            try:
                assert peer.next_connection(TIMEOUT).request_target == "/after-fork"
                assert echoes(second, b"second")
            finally:
                second.close()
            assert status == CHILD_OK, "the fork's close() failed, or the fork could still use the connection"
        finally:
            wire.close()
        assert remote.wait_ended()


@pytest.mark.parametrize("isolated", MODES)
def test_a_forked_child_closing_a_scripted_client_leaves_its_connection_open(isolated: bool) -> None:
    with ScriptedPeer(isolated=False, echo=True, timeout=TIMEOUT) as server:
        with ScriptedClient(server.url, isolated=isolated, timeout=TIMEOUT) as client:
            remote = server.next_connection(TIMEOUT)
            client.connection.send("before")
            assert remote.wait_messages(1) == ["before"]

            def leave_the_block() -> bool:
                client.__exit__(None, None, None)  # (entering it again would open it again)
                return refuses_use(client.connection)

            status = in_forked_child(leave_the_block)
            client.connection.send("after")
            assert remote.wait_messages(2) == ["before", "after"]
            assert client.connection.wait_messages(2) == ["before", "after"]  # the echoes
            assert not remote.ended and not client.connection.ended
            assert status == CHILD_OK, "the fork's close() failed, or the fork could still use the connection"
        assert remote.wait_ended()


def test_a_forked_child_cannot_use_the_peer() -> None:
    """Calls from a fork would write into the owner's pipe and could take its replies."""
    with ScriptedPeer(timeout=TIMEOUT) as peer:

        def next_connection_refused() -> bool:
            try:
                peer.next_connection(0)
            except RuntimeError as exc:
                return "forked" in str(exc)
            return False

        assert in_forked_child(next_connection_refused) == CHILD_OK
        with pytest.raises(TimeoutError):  # the owner's calls work as before
            peer.next_connection(0)
