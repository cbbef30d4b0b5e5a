"""A stdout or stderr that is closed (``>&-``) or whose reader left (``| head -1``): what is
sent and the exit status stay the same; no traceback."""

from __future__ import annotations

import subprocess
import time
from typing import Iterator, List, Tuple

import pytest
from websockets.sync.server import ServerConnection

from ..timing import UNIT
from .command import COMMAND, child_env
from .servers import websocket_server

pytestmark = pytest.mark.timeout(60 * UNIT)


@pytest.fixture
def recording_echo() -> Iterator[Tuple[str, List[str]]]:
    """An echo server that answers 0.5 s late and keeps what it received."""
    received: List[str] = []

    def echo(ws: ServerConnection) -> None:
        for message in ws:
            received.append(str(message))
            time.sleep(0.5)
            ws.send(message)

    with websocket_server(echo) as url:
        yield url, received


def _run_closed(redirection: str, args: List[str]) -> subprocess.CompletedProcess[bytes]:
    """The command with one of its streams closed by the shell (``redirection``: >&- or 2>&-)."""
    return subprocess.run(
        ["sh", "-c", f'exec "$@" {redirection}', "sh", *COMMAND, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=20 * UNIT,
        env=child_env(),
    )


def test_a_closed_stdout_still_sends_and_exits_0(recording_echo: Tuple[str, List[str]]) -> None:
    url, received = recording_echo
    done = _run_closed(">&-", ["chat", url, "-x", "hi", "-w", "0.3"])
    stderr = done.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    assert received == ["hi"]
    assert done.returncode == 0, stderr


def test_a_closed_stderr_still_sends_prints_and_exits_0(recording_echo: Tuple[str, List[str]]) -> None:
    url, received = recording_echo
    done = _run_closed("2>&-", ["chat", url, "-x", "hi"])
    assert received == ["hi"]
    assert done.stdout == b"hi\n"
    assert done.returncode == 0


def test_a_broken_stderr_changes_nothing(recording_echo: Tuple[str, List[str]]) -> None:
    # ``2>&1 | head -1``: the reader leaves after "connected"; the reply then meets a broken
    # pipe on stdout (the command closes: 1000) and the notes after it one on stderr.
    url, received = recording_echo
    process = subprocess.Popen(
        [*COMMAND, "chat", url, "-x", "hi", "-x", "ho"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=child_env(),
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        process.stdout.close()
        code = process.wait(20 * UNIT)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10 * UNIT)
    assert first.startswith(b"connected")
    assert received[:1] == ["hi"]
    assert code == 0
