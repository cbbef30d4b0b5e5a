"""A connection at the edges of its process: interpreter exit without close(), and fork().

Each case runs a short script in a child Python process against a scripted peer in another,
so that the peer sees exactly what a real application's peer would.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Iterator, List

import pytest

import duplexthreads
from duplexthreads.testing import ScriptedPeer

from ..timing import UNIT

pytestmark = pytest.mark.timeout(60 * UNIT)

BACKENDS = list(duplexthreads.BACKENDS)


@pytest.fixture(scope="module")
def echo_peer() -> Iterator[ScriptedPeer]:
    with ScriptedPeer(echo=True, timeout=20 * UNIT) as peer:
        yield peer


def run_script(source: str, *args: str) -> List[str]:
    """Run ``source`` in a fresh interpreter; return its stdout lines, failing on a bad exit."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source), *args],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
    )
    assert done.returncode == 0, f"script failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout.splitlines()


EXIT_WITHOUT_CLOSE = """
    import sys
    import duplexthreads

    url, backend, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    conn = duplexthreads.connect(url, backend=backend)
    for index in range(count):
        conn.send(f"m{index}")
    print("sent", count)
    # no close(): the interpreter exits with the messages still queued
"""


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("count", [1, 2000])
def test_messages_queued_at_interpreter_exit_are_sent_then_closed_with_1001(
    echo_peer: ScriptedPeer, backend: str, count: int
) -> None:
    assert run_script(EXIT_WITHOUT_CLOSE, echo_peer.url, backend, str(count)) == [f"sent {count}"]
    remote = echo_peer.next_connection()
    assert remote.wait_messages(count) == [f"m{index}" for index in range(count)]
    assert remote.wait_close_frame() == (1001, "")
    assert remote.wait_ended()
    assert remote.ended_by in ("eof", "peer")


EXIT_OPTED_OUT = """
    import sys
    import duplexthreads

    conn = duplexthreads.connect(sys.argv[1], backend=sys.argv[2], close_at_exit=False)
    conn.send("sent and confirmed")
    assert conn.recv(timeout=10) == "sent and confirmed"
    print("exiting")
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_at_exit_false_leaves_the_connection_to_be_cut_off(echo_peer: ScriptedPeer, backend: str) -> None:
    assert run_script(EXIT_OPTED_OUT, echo_peer.url, backend) == ["exiting"]
    remote = echo_peer.next_connection()
    assert remote.wait_ended()
    assert remote.received == ["sent and confirmed"]
    assert remote.close_frames == []  # no close handshake: the process just ended


FORK = """
    import os, sys, time
    import duplexthreads
    from duplexthreads import UsageError

    url, backend = sys.argv[1], sys.argv[2]
    conn = duplexthreads.connect(url, backend=backend)
    conn.send("before fork")
    assert conn.recv(timeout=10) == "before fork"

    def child_closes() -> int:
        for attempt in (lambda: conn.send("from the child"), lambda: conn.recv(timeout=1), conn.wait):
            try:
                attempt()
                return 10
            except UsageError as exc:
                if "fork" not in str(exc):
                    return 11
        started = time.monotonic()
        if conn.close() is not None or conn.abort() is not None:
            return 12
        return 0 if time.monotonic() - started < 0.5 else 13

    for how in ("close", "exit"):
        pid = os.fork()
        if pid == 0:
            if how == "close":
                os._exit(child_closes())
            sys.exit(0)  # a normal exit: the exit hook must leave the parent's connection alone
        _, status = os.waitpid(pid, 0)
        print(how, os.waitstatus_to_exitcode(status))

    conn.send("after fork")
    print(conn.recv(timeout=10))
    report = conn.close()
    print(report.ok, report.close_code)
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_child_process_cannot_use_or_harm_an_inherited_connection(echo_peer: ScriptedPeer, backend: str) -> None:
    lines = run_script(FORK, echo_peer.url, backend)
    assert lines == ["close 0", "exit 0", "after fork", "True 1000"]
    remote = echo_peer.next_connection()
    assert remote.wait_ended()
    assert remote.received == ["before fork", "after fork"]
    assert remote.close_frames == [(1000, "")]
