"""``duplexthreads chat`` with no URL (it starts a chat server), and ``duplexthreads serve``."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from ..timing import UNIT
from .command import Piped, free_port, run

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


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own on a free loopback port."""
    executable = shutil.which("redis-server")
    if executable is None:
        if os.environ.get("DUPLEXTHREADS_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is required (DUPLEXTHREADS_REQUIRE_REDIS=1) but not on PATH")
        pytest.skip("needs redis-server")
    port = free_port()
    server = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10 * UNIT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "redis-server did not start"
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.kill()
        server.wait(10 * UNIT)


def test_two_servers_share_a_room_through_redis(redis_url: str) -> None:
    room = ["--redis", redis_url, "--channel", "cli-test-room"]
    with Piped(["serve", *room]) as east, Piped(["serve", *room]) as west:
        east_url = east.expect(f"chat server on ({URL}), room shared through", "stderr").group(1)
        west_url = west.expect(f"chat server on ({URL}), room shared through", "stderr").group(1)
        with Piped(["chat", west_url]) as listener:
            listener.expect(r"^\* welcome")
            deadline = time.monotonic() + 10 * UNIT
            # Each server subscribes in the background: say it again until the other side hears.
            while True:
                result = run(["chat", east_url, "-x", "across the backplane", "-w", "0.1"], stdin=None)
                assert result.code == 0, result.stderr
                try:
                    listener.expect("^across the backplane$", timeout=0.5 * UNIT)
                    break
                except AssertionError:
                    assert time.monotonic() < deadline, listener.seen
            listener.end_input()
            assert listener.wait() == 0
        for server in (east, west):
            server.signal(signal.SIGINT)
            assert server.wait() == 0


def test_serve_on_an_empty_host_is_a_usage_error() -> None:
    result = run(["serve", "--host", ""])
    assert result.code == 2, result.stderr
    assert "cannot listen on ''" in result.stderr
    assert "unexpected" not in result.stderr and "Traceback" not in result.stderr


def test_serve_says_when_redis_cannot_be_reached() -> None:
    # The library logs it (logger "duplexthreads"): the command shows it as one line on stderr.
    pytest.importorskip("redis")
    with Piped(["serve", "--redis", f"redis://127.0.0.1:{free_port()}/"]) as server:
        server.expect(r"^warning: .*cannot reach Redis", stream="stderr", timeout=10 * UNIT)
        server.signal(signal.SIGINT)
        assert server.wait(10 * UNIT) == 0
        assert not any("Traceback" in line for line in server.rest("stderr"))


def test_serve_warns_when_the_room_is_reachable_from_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    # In-process, so that nothing listens beyond loopback: the server is asked for 0.0.0.0 and
    # given 127.0.0.1, and the wait for Ctrl-C returns at once.
    import argparse
    import io

    from duplexthreads import chat_server
    from duplexthreads.cli import _serve
    from duplexthreads.cli._render import Renderer
    from duplexthreads.cli._wakeup import Signal, Wakeup

    asked = []

    def serve_on_loopback(host: str, port: int, **options: object) -> chat_server.ChatServer:
        asked.append(host)
        return chat_server.serve("127.0.0.1", 0, **options)  # type: ignore[arg-type]

    class Interrupted(Wakeup):
        def wait(self, timeout: object) -> Signal:
            return Signal.INTERRUPT

    monkeypatch.setattr(_serve, "serve", serve_on_loopback)
    monkeypatch.setattr(_serve, "Wakeup", Interrupted)
    for host, warned in (("0.0.0.0", True), ("::", True), ("example.org", True), ("127.0.0.1", False), ("::1", False)):
        out, err = io.StringIO(), io.StringIO()
        renderer = Renderer(interactive=False, color=False, out=out, err=err)
        args = argparse.Namespace(host=host, port=0, redis=None, channel="c")
        assert _serve.run_serve(args, renderer) == 0
        lines = err.getvalue().splitlines()
        warnings = [line for line in lines if line.startswith("warning:")]
        assert bool(warnings) is warned, (host, lines)
        if warned:
            assert len(warnings) == 1 and "reachable from the network" in warnings[0]
            assert "no authentication" in warnings[0]
    assert asked[0] == "0.0.0.0"


def test_serve_closes_its_clients_with_1001_on_sighup() -> None:
    # The terminal it ran in was closed: a graceful stop, as for Ctrl-C.
    with Piped(["serve", "--port", "0"]) as server:
        url = server.expect(f"chat server on ({URL})", "stderr").group(1)
        with Piped(["chat", url]) as client:
            client.expect("^connected$", "stderr")
            server.signal(signal.SIGHUP)
            assert server.wait() == 0
            assert client.wait() == 0
            client_errors = client.rest("stderr")
        errors = server.rest("stderr")
    assert any("closed by the server: 1001" in line for line in client_errors), client.seen
    assert any("stopped" in line for line in errors)
