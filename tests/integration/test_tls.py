"""wss:// end to end against the websockets server, with a certificate made for the test.

The certificate is issued by a throwaway CA created with the openssl command; the test is
skipped where openssl is missing. Verification stays on: the client trusts only that CA.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from websockets.sync.server import ServerConnection

import duplexthreads
from duplexthreads import ConnectError

from ..timing import UNIT
from .websockets_server import running_server

pytestmark = [
    pytest.mark.timeout(60 * UNIT),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]


def run(*args: str, cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, timeout=30 * UNIT)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tls")
    # Python 3.13 verifies strictly (VERIFY_X509_STRICT): the CA needs its key usage, the
    # server certificate its authority key identifier.
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=duplexthreads test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)  # fmt: skip
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost", cwd=folder)  # fmt: skip
    (folder / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n"
    )
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "server.ext", cwd=folder)  # fmt: skip
    return folder


@pytest.fixture
def tls_echo_url(certificates: Path) -> Iterator[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates / "server.pem", certificates / "server.key")

    def echo(ws: ServerConnection) -> None:
        for message in ws:
            ws.send(message)

    with running_server(echo, ssl=context) as server:
        yield f"wss://127.0.0.1:{server.socket.getsockname()[1]}/"


@pytest.mark.parametrize("backend", list(duplexthreads.BACKENDS))
def test_wss_round_trip_with_a_trusted_certificate(certificates: Path, tls_echo_url: str, backend: str) -> None:
    trusted = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
    with duplexthreads.connect(tls_echo_url, backend=backend, ssl_context=trusted) as conn:
        conn.send("over tls")
        conn.send(b"\x00" * 100_000)
        assert conn.recv(timeout=10 * UNIT) == "over tls"
        assert conn.recv(timeout=10 * UNIT) == b"\x00" * 100_000
    assert conn.report is not None and conn.report.ok


@pytest.mark.parametrize("backend", list(duplexthreads.BACKENDS))
def test_wss_refuses_an_untrusted_certificate(tls_echo_url: str, backend: str) -> None:
    with pytest.raises(ConnectError) as failed:
        duplexthreads.connect(tls_echo_url, backend=backend, ssl_context=ssl.create_default_context())
    assert isinstance(failed.value.__cause__, ssl.SSLError)


@pytest.mark.parametrize("backend", list(duplexthreads.BACKENDS))
def test_wss_abort_wakes_a_reader_blocked_inside_tls(certificates: Path, tls_echo_url: str, backend: str) -> None:
    trusted = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
    conn = duplexthreads.connect(tls_echo_url, backend=backend, ssl_context=trusted)
    conn.send("prime")
    assert conn.recv(timeout=10 * UNIT) == "prime"  # the reader is now blocked in an SSL read
    report = conn.abort()
    assert report is not None and report.reason is duplexthreads.Reason.ABORTED
    assert report.lingering == () and conn.transport.closed
