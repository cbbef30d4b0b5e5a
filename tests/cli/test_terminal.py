"""``duplexthreads chat`` at a terminal (a pseudo-terminal driven by pexpect), as a person uses it."""

from __future__ import annotations

import shlex
import shutil
import threading
import time
from typing import List, Optional

import pytest
from websockets.sync.server import ServerConnection

from ..timing import UNIT
from .command import COMMAND, Terminal, child_env
from .servers import Silent, echo_server, websocket_server

pytestmark = pytest.mark.timeout(60 * UNIT)


class CloseCodes:
    """Records the close code each client sent the server."""

    def __init__(self) -> None:
        self.codes: List[Optional[int]] = []
        self.done = threading.Event()

    def echo(self, ws: ServerConnection) -> None:
        for message in ws:
            ws.send(message)
        received = ws.protocol.close_rcvd
        self.codes.append(None if received is None else received.code)
        self.done.set()


def test_the_server_closing_while_the_user_idles_at_the_prompt_ends_the_command_at_once() -> None:
    close_now = threading.Event()
    closed: List[float] = []

    def close_when_told(ws: ServerConnection) -> None:
        close_now.wait(20 * UNIT)
        closed.append(time.monotonic())
        ws.close(4001, "idle too long")

    with websocket_server(close_when_told) as url, Terminal(["chat", url]) as terminal:
        terminal.expect("connected")
        terminal.prompt()
        time.sleep(0.3 * UNIT)  # idle at the prompt
        close_now.set()
        status = terminal.end(timeout=10 * UNIT)
        ended = terminal.ended_at
        output = terminal.output
    assert ended - closed[0] < 0.5 * UNIT
    assert status == 1
    assert "closed by the server: 4001 'idle too long'" in output


def test_typing_sending_receiving_and_slash_commands() -> None:
    with echo_server() as url, Terminal(["chat", url, "--no-color"]) as terminal:
        terminal.expect("connected - /help for commands")
        terminal.prompt()
        terminal.type("hello there\r")
        terminal.expect("< hello there")
        terminal.type("/ping abc\r")
        terminal.expect(r"pong: round trip [0-9.]+ ms")
        terminal.type("/help\r")
        terminal.expect("a second Ctrl-C aborts")
        terminal.type("//slash\r")
        terminal.expect("< /slash")
        terminal.type("/nonsense\r")
        terminal.expect("unknown command /nonsense")
        terminal.type("/close 1006\r")
        terminal.expect("close code 1006 may not be sent")
        terminal.type("/close soon\r")
        terminal.expect("/close takes a close code")
        terminal.type("/close 4000 done for today\r")
        status = terminal.end()
        output = terminal.output
    assert "closed: 4000 'done for today'" in output
    assert status == 0  # a close we asked for


def test_incoming_text_is_escaped_and_marked() -> None:
    def send_escape(ws: ServerConnection) -> None:
        ws.send("bell\x07 and \x1b[2J clear")
        ws.send(b"\x01\x02")
        for _ in ws:
            pass

    with websocket_server(send_escape) as url, Terminal(["chat", url, "--no-color"]) as terminal:
        terminal.expect(r"< bell\\x07 and \\x1b\[2J clear")
        terminal.expect(r"< \[binary, 2 bytes\] 0102")
        terminal.type("/quit\r")
        assert terminal.end() == 0


def test_colour_on_a_terminal_unless_no_color() -> None:
    with echo_server() as url, Terminal(["chat", url]) as terminal:
        terminal.expect("\x1b\\[36mconnected")
        terminal.prompt()
        terminal.type("/quit\r")
        assert terminal.end() == 0


def test_ctrl_d_closes_with_1000() -> None:
    server = CloseCodes()
    with websocket_server(server.echo) as url, Terminal(["chat", url]) as terminal:
        terminal.expect("connected")
        terminal.prompt()
        terminal.type("\x04")
        status = terminal.end()
        output = terminal.output
        assert server.done.wait(10 * UNIT)
    assert status == 0
    assert "closed: 1000" in output
    assert server.codes == [1000]


def test_ctrl_c_closes_gracefully() -> None:
    server = CloseCodes()
    with websocket_server(server.echo) as url, Terminal(["chat", url]) as terminal:
        terminal.expect("connected")
        terminal.prompt()
        terminal.type("\x03")
        terminal.expect("closing \\(Ctrl-C again to abort\\)")
        status = terminal.end()
        output = terminal.output
        assert server.done.wait(10 * UNIT)
    assert status == 0
    assert "Traceback" not in output
    assert server.codes == [1000]


def test_a_second_ctrl_c_aborts() -> None:
    with Silent() as server, Terminal(["chat", server.url]) as terminal:
        terminal.expect("connected")
        terminal.prompt()
        terminal.type("\x03")
        terminal.expect("Ctrl-C again to abort")
        time.sleep(0.2 * UNIT)  # the prompt has ended: the terminal is back in cooked mode
        started = time.monotonic()
        terminal.type("\x03")
        status = terminal.end()
        elapsed = time.monotonic() - started
        output = terminal.output
    assert status == 1
    assert elapsed < 1.0 * UNIT  # not the 5 s close timeout
    assert "aborted" in output
    assert "Traceback" not in output


def test_the_terminal_is_back_in_line_mode_after_the_server_closes_at_the_prompt() -> None:
    # The prompt had the terminal in raw mode when the close came: the shell that runs the
    # command next must get it back as it was.
    def close_soon(ws: ServerConnection) -> None:
        time.sleep(0.5 * UNIT)
        ws.close(4001, "bye")

    with websocket_server(close_soon) as url:
        script = f"{shlex.join(COMMAND)} chat {url}; echo status=$?; stty -a"
        with Terminal(["-c", script], program="/bin/sh") as terminal:
            terminal.expect("closed by the server: 4001")
            terminal.expect("status=1")
            terminal.expect(r"\bicanon\b")
            settings = terminal.output
            assert terminal.end() == 0
    assert " -icanon" not in settings and " -echo " not in settings, settings


def test_a_message_arriving_while_typing_leaves_the_line_being_typed_intact() -> None:
    interrupt = threading.Event()

    def echo_and_interrupt(ws: ServerConnection) -> None:
        interrupt.wait(20 * UNIT)
        ws.send("a message from elsewhere")
        for message in ws:
            ws.send(f"echo: {message}")

    with websocket_server(echo_and_interrupt) as url, Terminal(["chat", url, "--no-color"]) as terminal:
        terminal.expect("connected")
        terminal.prompt()
        terminal.type("half of a ")
        terminal.expect("half of a")  # drawn: the trailing space is a cursor move
        interrupt.set()
        terminal.expect("< a message from elsewhere")
        terminal.type("line\r")  # the rest of it: what was typed before is still there
        terminal.expect("< echo: half of a line")
        terminal.type("/quit\r")
        assert terminal.end() == 0


def test_a_long_text_message_is_cut_on_a_terminal() -> None:
    def send_long(ws: ServerConnection) -> None:
        ws.send("a" * 5000 + "THE-END")
        ws.send("short after")
        for _ in ws:
            pass

    with websocket_server(send_long) as url, Terminal(["chat", url, "--no-color"]) as terminal:
        terminal.expect(r"\.\.\. \(911 more characters\)")
        assert "THE-END" not in terminal.output
        terminal.expect("< short after")
        terminal.type("/quit\r")
        assert terminal.end() == 0


@pytest.mark.skipif(shutil.which("bash") is None, reason="job control through bash")
def test_ctrl_z_at_the_prompt_suspends() -> None:
    # Through a shell with job control: a process group with no parent in its session (the
    # command spawned directly on the pseudo-terminal) is orphaned, and the kernel discards its
    # SIGTSTP.
    received: List[str] = []

    def record(ws: ServerConnection) -> None:
        for message in ws:
            received.append(str(message))
            ws.send(message)

    with websocket_server(record) as url:
        script = f"set -m; {shlex.join(COMMAND)} chat {url} --no-color; echo stopped=$?; fg; echo status=$?"
        with Terminal(["--norc", "--noprofile", "-c", script], program=shutil.which("bash")) as terminal:
            terminal.prompt()
            terminal.type("\x1a")
            terminal.expect("stopped=148")  # 128 + SIGTSTP: suspended, not a \x1a typed
            terminal.prompt()
            terminal.type("after\r")
            terminal.expect("< after")
            terminal.type("/quit\r")
            terminal.expect("status=0")
            assert terminal.end() == 0
    assert received == ["after"]


def test_exit_is_prompt_on_a_terminal_that_does_not_answer_cursor_position_requests() -> None:
    # Without PROMPT_TOOLKIT_NO_CPR (which the other tests set), prompt-toolkit asks the
    # terminal where the cursor is; pexpect, like some terminals, never answers, and
    # prompt-toolkit waited a second for the answers at exit. The one-line prompt asks nothing.
    env = {name: value for name, value in child_env().items() if name != "PROMPT_TOOLKIT_NO_CPR"}
    with echo_server() as url, Terminal(["chat", url, "--no-color"], env=env) as terminal:
        terminal.prompt()
        terminal.type("hello\r")
        terminal.expect("< hello")
        typed = time.monotonic()
        terminal.type("/quit\r")
        assert terminal.end() == 0
        assert terminal.ended_at is not None
        assert terminal.ended_at - typed < 0.8 * UNIT
        assert "\x1b[6n" not in terminal.output
