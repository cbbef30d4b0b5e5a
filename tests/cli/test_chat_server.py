"""``duplexthreads chat`` with no URL (it starts a chat server), and ``duplexthreads serve``."""

from __future__ import annotations

import re
import signal

import pytest

from ..timing import UNIT
from .command import Piped, run

pytestmark = pytest.mark.timeout(60 * UNIT)

URL = r"ws://127\.0\.0\.1:\d+/"


def test_chat_without_url_starts_a_server_that_a_second_client_joins() -> None:
    with Piped(["chat", "-w", "0.2"]) as first:
        said = f"chat server on ({URL}) - to join from another terminal: duplexthreads chat ({URL})$"
        line = first.expect(said, "stderr")
        assert line.group(1) == line.group(2)
        url = line.group(1)
        first.expect(r"^\* welcome, you are guest-1 \(1 here\)$")
        with Piped(["chat", url]) as second:
            second.expect(r"^\* welcome, you are guest-2 \(2 here\)$")
            first.expect(r"^\* guest-2 joined \(2 here\)$")
            second.send("hello from the second terminal\n")
            first.expect("^hello from the second terminal$")
            first.send("hello back\n")
            second.expect("^hello back$")
            # The first one leaves; its server goes with it, and tells the second one so (1001).
            first.end_input()
            assert first.wait() == 0
            assert second.wait() == 0
            assert any("closed by the server: 1001" in line for line in second.rest("stderr")), second.seen
        assert any(re.search("closed: 1000", line) for line in first.rest("stderr")), first.seen


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serve_runs_until_a_signal(stop: int) -> None:
    with Piped(["serve", "--port", "0"]) as server:
        url = server.expect(f"chat server on ({URL})", "stderr").group(1)
        result = run(["chat", url, "-x", "anyone?", "-w", "0.2"], stdin=None)
        assert result.code == 0
        assert result.stdout.startswith("* welcome, you are guest-1")
        server.signal(stop)
        assert server.wait() == 0
        errors = server.rest("stderr")
    assert not any("Traceback" in line for line in errors)
    assert any("stopped" in line for line in errors)


def test_serve_on_a_port_in_use_is_a_usage_error() -> None:
    with Piped(["serve"]) as server:
        port = server.expect(r"chat server on ws://127\.0\.0\.1:(\d+)/", "stderr").group(1)
        result = run(["serve", "--port", port])
        server.signal(signal.SIGINT)
        assert server.wait() == 0
    assert result.code == 2
    assert "cannot listen on 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr
