"""``duplexthreads chat`` driven by a script: stdin and stdout are pipes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from typing import List, Tuple

import pytest
from websockets.sync.server import ServerConnection

from ..timing import UNIT
from .command import Piped, child_env, run
from .servers import Silent, echo_server, websocket_server

pytestmark = pytest.mark.timeout(60 * UNIT)


def test_piped_lines_get_the_replies_a_slow_server_sends() -> None:
    # The server answers 0.5 s after each message: at end of input the command keeps listening
    # (--wait of quiet, 1 s by default) before it closes, so no reply is lost.
    with echo_server(delay=0.5) as url:
        result = run(["chat", url], stdin=b"first\nsecond\n")
    assert result.stdout.splitlines() == ["first", "second"]
    assert result.code == 0, result.stderr
    assert "closed: 1000" in result.stderr
    assert "Traceback" not in result.stderr


def test_execute_with_stdin_at_eof_sends_and_waits() -> None:
    with echo_server(delay=0.5) as url:
        result = run(["chat", url, "-x", "one", "-x", "two"], stdin=None)
    assert result.stdout.splitlines() == ["one", "two"]
    assert result.code == 0, result.stderr


def test_wait_sets_the_quiet_time_before_closing() -> None:
    with echo_server() as url:
        result = run(["chat", url, "-x", "hi", "-w", "0.2"], stdin=None)
    assert result.stdout == "hi\n"
    assert result.code == 0
    assert result.seconds < 2.0 * UNIT


def test_the_server_closing_with_an_error_code_ends_the_command_at_once_with_1() -> None:
    closed: List[float] = []

    def close_soon(ws: ServerConnection) -> None:
        ws.recv()
        closed.append(time.monotonic())
        ws.close(4001, "go away")

    with websocket_server(close_soon) as url, Piped(["chat", url]) as chat:
        chat.send("hello\n")  # stdin stays open: the command is waiting on it
        code = chat.wait(10 * UNIT)
        ended = time.monotonic()
        errors = chat.rest("stderr")
    assert code == 1
    assert ended - closed[0] < 0.5 * UNIT
    assert any("4001" in line and "go away" in line for line in errors), errors


def test_messages_are_one_per_line_with_control_characters_escaped() -> None:
    def send_odd_things(ws: ServerConnection) -> None:
        ws.send("two\nlines and \x1b[31mred\x1b[0m\tend")
        ws.send(b"\x00\xffhi")
        ws.send("* a notice")
        ws.close()

    with websocket_server(send_odd_things) as url:
        result = run(["chat", url])
    assert result.stdout.splitlines() == [
        "two\\nlines and \\x1b[31mred\\x1b[0m\\tend",
        "[binary, 4 bytes] 00ff6869",
        "* a notice",
    ]
    assert result.code == 0  # 1000 from the server
    assert "\x1b" not in result.stderr  # no colour without a terminal


def test_binary_sends_lines_as_binary_messages() -> None:
    with echo_server() as url:
        result = run(["chat", url, "--binary", "-w", "0.3"], stdin="héllo\n".encode())
    assert result.stdout == "[binary, 6 bytes] 68c3a96c6c6f\n"


def test_one_message_exits_after_the_first_reply() -> None:
    def chatty(ws: ServerConnection) -> None:
        for n in range(3):
            ws.send(f"message {n}")
        for _ in ws:
            pass

    with websocket_server(chatty) as url:
        result = run(["chat", url, "-1"], stdin=None)
    assert result.stdout == "message 0\n"
    assert result.code == 0


def test_headers_origin_auth_and_subprotocols_reach_the_server() -> None:
    seen: List[Tuple[str, str]] = []

    def record(ws: ServerConnection) -> None:
        headers = ws.request.headers  # type: ignore[union-attr]
        seen.extend((name, headers.get(name, "")) for name in ("X-Token", "X-Other", "Origin", "Authorization"))
        ws.send(f"subprotocol {ws.subprotocol}")
        for _ in ws:
            pass

    with websocket_server(record, subprotocols=["chat.v2"]) as url:
        result = run(
            ["chat", url, "-H", "X-Token: abc", "--header", "X-Other: 1", "--origin", "http://example.test",
             "--auth", "user:secret", "-s", "chat.v1", "-s", "chat.v2", "-w", "0.3"],
            stdin=None,
        )  # fmt: skip
    assert result.code == 0, result.stderr
    assert result.stdout == "subprotocol chat.v2\n"
    assert dict(seen) == {
        "X-Token": "abc",
        "X-Other": "1",
        "Origin": "http://example.test",
        "Authorization": "Basic dXNlcjpzZWNyZXQ=",
    }


@pytest.mark.parametrize("backend", ["websocket-client", "simple-websocket"])
def test_each_backend(backend: str) -> None:
    with echo_server() as url:
        result = run(["chat", url, "--backend", backend, "-w", "0.3"], stdin=b"via " + backend.encode() + b"\n")
    assert result.stdout == f"via {backend}\n"
    assert result.code == 0


def test_show_ping_pong_prints_the_heartbeat_pongs() -> None:
    with echo_server() as url:
        result = run(["chat", url, "--ping-interval", "0.1", "--show-ping-pong", "-x", "x", "-w", "0.5"], stdin=None)
    assert result.code == 0
    assert "pong " in result.stderr and "round trip" in result.stderr


def test_a_silent_server_is_found_out_by_the_heartbeat() -> None:
    with Silent() as server:
        result = run(["chat", server.url, "--ping-interval", "0.2", "--ping-timeout", "0.3"])
    assert result.code == 1
    assert "heartbeat timeout" in result.stderr
    assert result.seconds < 5 * UNIT


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_closes_gracefully(signum: signal.Signals) -> None:
    """Ctrl-C, SIGTERM and SIGHUP (the terminal closed) all close with 1000."""
    with echo_server() as url, Piped(["chat", url]) as chat:
        chat.send("up?\n")
        chat.expect("^up\\?$")
        chat.signal(signum)
        assert chat.wait() == 0
        errors = chat.rest("stderr")
    assert "closed: 1000" in errors
    assert not any("Traceback" in line for line in errors)


def test_a_second_sigint_aborts_a_close_the_server_does_not_answer() -> None:
    with Silent() as server, Piped(["chat", server.url]) as chat:
        chat.expect("^connected$", "stderr")  # said once its signal handlers are in place
        chat.signal(signal.SIGINT)
        chat.expect("Ctrl-C again to abort", stream="stderr")
        started = time.monotonic()
        chat.signal(signal.SIGINT)
        assert chat.wait() == 1
        assert time.monotonic() - started < 1.0 * UNIT  # not the 5 s close timeout
        errors = chat.rest("stderr")
    assert any("aborted" in line for line in errors), chat.seen
    assert not any("Traceback" in line for line in chat.seen["stderr"])


def test_reconnect_carries_on_after_an_abnormal_close() -> None:
    connections: List[int] = []

    def drop_the_first(ws: ServerConnection) -> None:
        connections.append(len(connections) + 1)
        if len(connections) == 1:
            ws.close(1011, "first one drops")
            return
        ws.send(f"connection {len(connections)}")
        for message in ws:
            ws.send(message)

    with websocket_server(drop_the_first) as url, Piped(["chat", url, "--reconnect", "-w", "0.3"]) as chat:
        chat.expect("^connection 2$")
        # Sent once reconnected: a message written to the first connection just before it
        # dropped would be lost, as the reconnecting client documents (at most once).
        chat.send("a\nb\n")
        chat.end_input()
        chat.expect("^a$")
        chat.expect("^b$")
        assert chat.wait() == 0
        errors = chat.rest("stderr")
    assert "connection ended (closed by the server: 1011 'first one drops')" in errors, chat.seen


def test_ctrl_c_is_heard_while_a_server_that_does_not_read_holds_sending_up() -> None:
    # The server never reads: the socket's buffers fill, then the outbound queue, and the
    # command waits for room to send the next line. Ctrl-C still closes, and a second aborts.
    def feed(chat: Piped) -> None:
        line = b"x" * 8191 + b"\n"
        try:
            for _ in range(5000):  # 40 MB, more than buffers and queue hold
                chat.send_bytes(line)
        except (BrokenPipeError, OSError):
            pass  # the command has ended

    with Silent(receive_buffer=4096) as server, Piped(["chat", server.url]) as chat:
        chat.expect("^connected$", "stderr")
        feeder = threading.Thread(target=feed, args=(chat,), name="test-cli-feeder")
        feeder.start()
        try:
            time.sleep(1.0 * UNIT)  # time to fill up
            chat.signal(signal.SIGINT)
            chat.expect("Ctrl-C again to abort", "stderr")
            chat.signal(signal.SIGINT)
            assert chat.wait() == 1
        finally:
            chat.close()
            feeder.join(10 * UNIT)
    assert any("aborted" in line for line in chat.rest("stderr")), chat.seen


def test_prompt_toolkit_is_not_even_imported_without_a_terminal() -> None:
    with echo_server() as url:
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "duplexthreads", "chat", url, "-w", "0.2"],
            input=b"hi\n",
            capture_output=True,
            timeout=30 * UNIT,
            env=child_env(),
            check=False,
        )
    assert done.returncode == 0
    assert done.stdout == b"hi\n"
    assert b"prompt_toolkit" not in done.stderr


def test_a_long_text_message_is_whole_in_a_pipe() -> None:
    def send_long(ws: ServerConnection) -> None:
        ws.send("a" * 5000 + "THE-END")
        for _ in ws:
            pass

    with websocket_server(send_long) as url:
        result = run(["chat", url, "-1"], stdin=None)
    assert result.stdout == "a" * 5000 + "THE-END\n"
    assert result.code == 0, result.stderr


def test_max_size_bounds_the_messages_accepted() -> None:
    def send_2000(ws: ServerConnection) -> None:
        ws.send("b" * 2000)
        for _ in ws:
            pass

    with websocket_server(send_2000) as url:
        small = run(["chat", url, "-1", "--max-size", "1000"], stdin=None)
        unbounded = run(["chat", url, "-1", "--max-size", "none"], stdin=None)
    assert small.code == 1, small.stderr
    assert "1009" in small.stderr and small.stdout == ""
    assert unbounded.code == 0 and unbounded.stdout == "b" * 2000 + "\n"
    assert run(["chat", "ws://127.0.0.1:1/", "--max-size", "-1"]).code == 2


def test_messages_left_unsent_are_counted() -> None:
    # The server never reads: lines pile up in the outbound queue; two Ctrl-C abort.
    with Silent(receive_buffer=4096) as server, Piped(["chat", server.url, "--ping-interval", "0"]) as chat:
        chat.expect("^connected$", "stderr")

        def feed() -> None:
            try:
                for _ in range(200):
                    chat.send_bytes(b"x" * 65536 + b"\n")
            except (BrokenPipeError, OSError, ValueError):
                pass  # the command has gone

        feeder = threading.Thread(target=feed, name="test-cli-feed", daemon=True)
        feeder.start()
        time.sleep(1.0 * UNIT)
        chat.signal(signal.SIGINT)
        chat.expect("Ctrl-C again to abort", stream="stderr")
        chat.signal(signal.SIGINT)
        assert chat.wait() == 1
        errors = chat.rest("stderr")
        chat.close()
        feeder.join(10 * UNIT)
    assert any(re.fullmatch(r"[1-9]\d* messages? not sent", line) for line in errors), chat.seen
