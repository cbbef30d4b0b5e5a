"""The command line itself: --help, --version, usage errors (status 2), and the pieces of the
command that need no process: escaping, the one line for a failed connection, exit statuses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from duplexthreads import ConnectError, ExitReport, HandshakeRejected, Reason, __version__
from duplexthreads.cli import main
from duplexthreads.cli._chat import describe_connect_error, exit_status
from duplexthreads.cli._render import escape, show_binary

from ..timing import UNIT
from .command import run

pytestmark = pytest.mark.timeout(60 * UNIT)


def test_help_lists_the_exit_codes() -> None:
    result = run(["--help"])
    assert result.code == 0
    for line in ("0  the connection closed normally", "1  it closed abnormally", "2  usage error", "3  could not"):
        assert line in result.stdout
    chat = run(["chat", "--help"])
    assert chat.code == 0
    assert "/close [code [reason]]" in chat.stdout and "3  could not connect" in chat.stdout


def test_version_from_the_module_too() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "duplexthreads", "--version"], capture_output=True, timeout=30 * UNIT, check=False
    )
    assert done.returncode == 0
    assert done.stdout.decode().strip() == f"duplexthreads {__version__}"


@pytest.mark.parametrize(
    "argv, says",
    [
        ([], "choose a command"),
        (["chat", "--header", "no colon"], "--header takes 'Name: value'"),
        (["chat", "ws://x/", "--auth", "nocolon"], "--auth takes USER:PASSWORD"),
        (["chat", "ws://x/", "--wait", "0"], "must be a positive number of seconds"),
        (["chat", "ws://x/", "--backend", "curl"], "invalid choice"),
        (["chat", "-k"], "need a URL"),
        (["serve", "--port", "70000"], "a port is 0 to 65535"),
        (["chat", "ws://x/", "-k", "--cafile", "ca.pem"], "contradict"),
    ],
)
def test_usage_errors_exit_2(argv: list, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert says in capsys.readouterr().err


def test_a_url_that_is_not_websocket_is_a_usage_error() -> None:
    result = run(["chat", "http://127.0.0.1:1/"])
    assert result.code == 2
    assert result.stderr.strip() == "error: url must start with ws:// or wss://, not 'http://127.0.0.1:1/'"


def test_escape_and_binary() -> None:
    assert escape("plain · text") == "plain · text"
    assert escape("a\nb\r\tc\x00\x7f\x9b") == "a\\nb\\r\\tc\\x00\\x7f\\x9b"
    assert show_binary(b"\x00\xff") == "[binary, 2 bytes] 00ff"
    assert show_binary(b"\x01") == "[binary, 1 byte] 01"
    assert show_binary(b"abcdef", limit=2) == "[binary, 6 bytes] 6162..."


def test_the_reason_a_connection_failed() -> None:
    def chained(cause: BaseException) -> ConnectError:
        try:
            raise ConnectError("ws://h/: cannot connect") from cause
        except ConnectError as exc:
            return exc

    assert "(DNS lookup failed)" in describe_connect_error("ws://h/", chained(socket.gaierror(-2, "unknown")))
    assert "(connection refused)" in describe_connect_error("ws://h/", chained(ConnectionRefusedError(111, "no")))
    assert "(handshake rejected with HTTP 403)" in describe_connect_error("ws://h/", HandshakeRejected(403, "no"))
    assert "\n" not in describe_connect_error("ws://h/", HandshakeRejected(400, "two\nlines"))


@pytest.mark.parametrize(
    "reason, code, error, status",
    [
        (Reason.PEER_CLOSED, 1000, None, 0),
        (Reason.PEER_CLOSED, 1001, None, 0),
        (Reason.PEER_CLOSED, 1005, None, 0),
        (Reason.PEER_CLOSED, 4001, None, 1),
        (Reason.PEER_CLOSED, 1011, None, 1),
        (Reason.LOCAL_CLOSE, 4000, None, 0),
        (Reason.LOCAL_CLOSE, 1000, TimeoutError("no answer"), 1),
        (Reason.READ_ERROR, 1006, None, 1),
        (Reason.HEARTBEAT_TIMEOUT, 1011, TimeoutError(), 1),
        (Reason.ABORTED, 1006, None, 1),
    ],
)
def test_exit_status(reason: Reason, code: int, error: object, status: int) -> None:
    report = ExitReport(1, "reader", reason, error=error, close_code=code)  # type: ignore[arg-type]
    assert exit_status(report) == status


def test_run_as_a_module_it_gives_the_module_command_to_join() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "duplexthreads", "chat", "-x", "hello", "-w", "0.2"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30 * UNIT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert b"to join from another terminal: python -m duplexthreads chat ws://127.0.0.1:" in done.stderr
    assert done.stdout.startswith(b"* welcome, you are guest-1 (1 here)\n")


def test_escape_invisible_format_characters_and_separators() -> None:
    # A right-to-left override would show "evil" reversed; U+2028/2029 split lines in some
    # terminals; zero-width characters hide text. The zero width joiner of emoji stays.
    assert escape("\u202eevil\u202c reversed") == "\\u202eevil\\u202c reversed"
    assert escape("line\u2028sep\u2029par") == "line\\u2028sep\\u2029par"
    assert escape("zero\u200bwidth\u2066iso\ufeff\xad") == "zero\\u200bwidth\\u2066iso\\ufeff\\xad"
    assert escape("\U000e0041tag") == "\\U000e0041tag"
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert escape(family) == family


def test_a_close_reason_is_shown_like_a_message() -> None:
    from duplexthreads.cli._render import describe_end

    report = ExitReport(1, "reader", Reason.PEER_CLOSED, close_code=4001, close_reason="\x1b[31mred\\n\u202e")
    assert describe_end(report) == "closed by the server: 4001 '\\x1b[31mred\\n\\u202e'"


def test_durations_over_a_day_are_usage_errors() -> None:
    # -w 1e10 used to end the connection with 1011 'timestamp out of range'.
    for option in ("-w", "--connect-timeout", "--ping-interval", "--ping-timeout"):
        result = run(["chat", "ws://127.0.0.1:1/", option, "1e10"])
        assert result.code == 2, (option, result.stderr)
        assert "at most 86400 seconds" in result.stderr
    assert run(["chat", "--help", "-w", "86400"]).code == 0


def test_auth_that_is_not_utf8_is_a_usage_error() -> None:
    result = run(["chat", "ws://127.0.0.1:1/", "--auth", os.fsdecode(b"user:p\xffss")])
    assert result.code == 2, result.stderr
    assert "--auth must be UTF-8" in result.stderr
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr


def test_a_long_piped_line_is_read_in_linear_time() -> None:
    # 64 MiB without a newline, read 64 KiB at a time: joining everything read so far at each
    # read copied some 32 GB. Lines that span reads, CR LF and a last line without newline too.
    from duplexthreads.cli._stdin import Line, PipeInput
    from duplexthreads.cli._wakeup import Signal, Wakeup

    big = b"y" * (64 * 1024 * 1024)
    data = big + b"\nab\r\nc" + b"d" * 100_000 + b"\n\nlast"
    reader, writer = os.pipe()

    def feed() -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(writer, view[:65536]) :]
        finally:
            os.close(writer)

    feeder = threading.Thread(target=feed, name="test-cli-feed", daemon=True)
    wakeup = Wakeup()
    try:
        feeder.start()
        pipe = PipeInput(wakeup, reader)
        started = time.monotonic()
        first = pipe.next_event(10 * UNIT)
        elapsed = time.monotonic() - started
        assert isinstance(first, Line) and first.raw == big
        assert elapsed < 3 * UNIT
        rest = [pipe.next_event(10 * UNIT) for _ in range(5)]
        assert [event.raw if isinstance(event, Line) else event for event in rest] == [
            b"ab",
            b"c" + b"d" * 100_000,
            b"",
            b"last",
            Signal.EOF,
        ]
    finally:
        feeder.join(10 * UNIT)
        os.close(reader)
        wakeup.close()


def test_ctrl_c_while_starting_up_exits_130_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import duplexthreads.cli as cli

    def interrupted(argv: object, version: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "parse", interrupted)
    try:
        code = cli.main(["chat"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main()")
    assert code == 130
    assert capsys.readouterr() == ("", "")
