"""Exit status 3 with one line saying why, when the command cannot connect."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from websockets.sync.server import ServerConnection

import duplexthreads

from ..timing import UNIT
from .command import Piped, free_port, run
from .servers import echo_server, websocket_server

pytestmark = pytest.mark.timeout(60 * UNIT)


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in stderr
    return lines[0]


def test_a_refused_port() -> None:
    result = run(["chat", f"ws://127.0.0.1:{free_port()}/"])
    assert result.code == 3
    assert "could not connect (connection refused)" in one_error_line(result.stderr)


def test_an_http_404() -> None:
    with duplexthreads.serve() as server:
        result = run(["chat", server.url + "no/such/room"])
    assert result.code == 3
    assert "handshake rejected with HTTP 404" in one_error_line(result.stderr)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for a name that is not the server's: wrong.example."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "cert.pem",
         "-days", "2", "-subj", "/CN=wrong.example", "-addext", "subjectAltName=DNS:wrong.example",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,digitalSignature"],
        cwd=folder, check=True, capture_output=True, timeout=30 * UNIT,
    )  # fmt: skip
    return folder


@pytest.fixture
def tls_url(certificate: Path) -> Iterator[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate / "cert.pem", certificate / "key.pem")

    def echo(ws: ServerConnection) -> None:
        for message in ws:
            ws.send(message)

    with websocket_server(echo, ssl=context) as url:
        yield url.replace("ws://", "wss://")


def test_a_certificate_for_another_host(certificate: Path, tls_url: str) -> None:
    # Trusted (--cafile), but made out to wrong.example, not 127.0.0.1.
    result = run(["chat", tls_url, "--cafile", str(certificate / "cert.pem"), "-x", "hi"])
    assert result.code == 3
    line = one_error_line(result.stderr)
    assert "could not connect (TLS failed)" in line and "mismatch" in line


def test_insecure_connects_anyway_with_a_warning(tls_url: str) -> None:
    result = run(["chat", tls_url, "-k", "-x", "over tls", "-w", "0.3"], stdin=None)
    assert result.code == 0, result.stderr
    assert result.stdout == "over tls\n"
    assert "warning: --insecure" in result.stderr


def test_a_server_that_never_answers_the_handshake_times_out() -> None:
    with socket.socket() as listener:  # the kernel accepts the TCP connection; nobody answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        result = run(["chat", f"ws://127.0.0.1:{port}/", "--connect-timeout", "0.3"])
    assert result.code == 3
    assert "could not connect (timed out)" in one_error_line(result.stderr)
    assert result.seconds < 5 * UNIT


@pytest.mark.parametrize("interrupt", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_ctrl_c_while_connecting_gives_up_without_a_traceback(interrupt: int) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(10 * UNIT)
        port = listener.getsockname()[1]
        with Piped(["chat", f"ws://127.0.0.1:{port}/"]) as chat:
            accepted, _ = listener.accept()  # the command now waits for the handshake's answer
            with accepted:
                chat.signal(interrupt)
                assert chat.wait() == 3
                errors = chat.rest("stderr")
    assert errors == [f"error: could not connect to ws://127.0.0.1:{port}/: interrupted"]


def test_insecure_with_a_ws_url_says_it_has_no_effect() -> None:
    with echo_server() as url:
        result = run(["chat", url, "-k", "-x", "hi", "-w", "0.2"], stdin=None)
    assert result.code == 0, result.stderr
    assert result.stdout == "hi\n"
    assert f"warning: --insecure has no effect: {url} is not wss://" in result.stderr
