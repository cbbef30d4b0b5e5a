"""connect() checks every argument before any I/O, the same way on both backends, and sends
what it was given and nothing else: no header injection, the Host header RFC 7230 asks for,
subprotocols negotiated as RFC 6455 says.

"Before any I/O" is proved with a tripwire: socket creation and name resolution raise while the
call runs, so a check that came after the socket opened would fail the test with that error
instead of the expected one. The peers are scripted peers in child processes, so the leak check
sees only what connect() left behind.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any, Dict, Iterator, List, Optional, Tuple, Type

import pytest

import duplexthreads
from duplexthreads import ConnectError, HandshakeRejected
from duplexthreads.testing import ScriptedPeer

from ..timing import UNIT

pytestmark = pytest.mark.timeout(60 * UNIT)

BACKENDS = list(duplexthreads.BACKENDS)
URL = "ws://127.0.0.1:9/"  # never reached: the tripwire goes off first


class Tripwire(AssertionError):
    """I/O was attempted before the arguments were checked."""


@pytest.fixture
def no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    def tripped(*args: Any, **kwargs: Any) -> Any:
        raise Tripwire("I/O before the arguments were checked")

    monkeypatch.setattr(socket, "getaddrinfo", tripped)
    monkeypatch.setattr(socket, "create_connection", tripped)
    monkeypatch.setattr(socket.socket, "__init__", tripped)


# (keyword arguments of connect(), the exception, a word its message must contain)
BAD_ARGUMENTS: List[Tuple[Dict[str, Any], Type[Exception], str]] = [
    # The connection's own options (item 4): checked first, even before the URL.
    ({"max_queue": 0}, ValueError, "max_queue"),
    ({"max_queue": "3"}, TypeError, "max_queue"),
    ({"close_timeout": -1}, ValueError, "close_timeout"),
    ({"close_timeout": "1"}, TypeError, "close_timeout"),
    ({"on_message": 5}, TypeError, "on_message"),
    ({"open_timeout": "1"}, TypeError, "open_timeout"),
    ({"open_timeout": -1}, ValueError, "open_timeout"),
    ({"open_timeout": 0}, ValueError, "open_timeout"),
    ({"open_timeout": float("nan")}, ValueError, "open_timeout"),
    ({"backend": None}, TypeError, "backend"),
    ({"backend": "nope"}, ValueError, "backend"),
    ({"ssl_context": "yes"}, TypeError, "ssl_context"),
    ({"ssl_context": ssl.create_default_context()}, ValueError, "ssl_context"),  # with ws://
    # headers: the types that are not a collection of headers.
    ({"headers": "X-A: b"}, TypeError, "headers"),  # one str would iterate characters
    ({"headers": b"X-A: b"}, TypeError, "headers"),
    ({"headers": 123}, TypeError, "headers"),
    ({"headers": [("X-A",)]}, TypeError, "headers"),
    ({"headers": [1]}, TypeError, "headers"),
    ({"headers": {"X-A": 1}}, TypeError, "headers"),
    ({"headers": ["no colon"]}, ValueError, "headers"),
    # headers: injection (item 3) and what a header cannot carry.
    ({"headers": {"X-A": "b\r\nX-Injected: 1"}}, ValueError, "headers"),
    ({"headers": {"X-A": "b\nX-Injected: 1"}}, ValueError, "headers"),
    ({"headers": {"X-A": "b\rc"}}, ValueError, "headers"),
    ({"headers": {"X-A": "b\x00c"}}, ValueError, "headers"),
    ({"headers": {"X-A": "b\x7fc"}}, ValueError, "headers"),
    ({"headers": {"X-A": "euro \u20ac"}}, ValueError, "headers"),  # past U+00FF
    ({"headers": [("X-A\r\nX-Injected", "1")]}, ValueError, "headers"),
    ({"headers": ["X-A\r\nX-Injected: 1"]}, ValueError, "headers"),
    ({"headers": {"X A": "b"}}, ValueError, "headers"),
    ({"headers": {"": "b"}}, ValueError, "headers"),
    ({"headers": {"Nam\u00e9": "b"}}, ValueError, "headers"),
    ({"headers": {"Host": "evil\r\nX: 1"}}, ValueError, "headers"),
    ({"headers": {"Host": "a b"}}, ValueError, "headers"),
    ({"headers": {"Sec-WebSocket-Key": "x"}}, ValueError, "headers"),
    ({"headers": {"Upgrade": "h2c"}}, ValueError, "headers"),
    ({"headers": {"Connection": "close"}}, ValueError, "headers"),
    ({"headers": {"Sec-WebSocket-Protocol": "chat"}}, ValueError, "subprotocols"),
    # subprotocols: RFC 7230 tokens, distinct.
    ({"subprotocols": "chat"}, TypeError, "subprotocols"),
    ({"subprotocols": 5}, TypeError, "subprotocols"),
    ({"subprotocols": [1]}, TypeError, "subprotocols"),
    ({"subprotocols": ["a b"]}, ValueError, "subprotocols"),
    ({"subprotocols": ["a,b"]}, ValueError, "subprotocols"),
    ({"subprotocols": ["chat\r\nX-Injected: 1"]}, ValueError, "subprotocols"),
    ({"subprotocols": [""]}, ValueError, "subprotocols"),
    ({"subprotocols": ["caf\u00e9"]}, ValueError, "subprotocols"),
    ({"subprotocols": ["chat", "chat"]}, ValueError, "subprotocols"),
]

BAD_URLS: List[Tuple[Any, Type[Exception]]] = [
    (b"ws://127.0.0.1/", TypeError),
    (None, TypeError),
    ("http://127.0.0.1/", ValueError),
    ("ws:///nohost", ValueError),
    ("ws://127.0.0.1:99999/", ValueError),
    ("ws://127.0.0.1:0/", ValueError),
    ("ws://127.0.0.1:http/", ValueError),
    ("ws://user:secret@127.0.0.1/", ValueError),
    ("ws://127.0.0.1/#fragment", ValueError),
    ("ws://127.0.0.1/p\u00e4th", ValueError),
    ("ws://127.0.0.1/a b", ValueError),
    ("ws://127.0.0.1/\r\nX-Injected: 1", ValueError),
    ("ws://127.0.0.1/?q=\n", ValueError),
    ("ws://exa\tmple.com/", ValueError),
    ("ws://host%0d%0aX-Injected:1/", ValueError),
    ("ws://a..b/", ValueError),
    ("ws://[::1/", ValueError),
    ("ws://[not-ipv6]/", ValueError),
    ("ws://" + "a" * 64 + ".example/", ValueError),
]


@pytest.mark.parametrize(("options", "error", "word"), BAD_ARGUMENTS)
def test_bad_arguments_fail_before_any_io(
    no_io: None, backend: str, options: Dict[str, Any], error: type, word: str
) -> None:
    with pytest.raises(error, match=word) as raised:
        duplexthreads.connect(URL, **{"backend": backend, **options})
    assert not isinstance(raised.value, (Tripwire, ConnectError))


@pytest.mark.parametrize(("url", "error"), BAD_URLS)
def test_bad_urls_fail_before_any_io(no_io: None, backend: str, url: Any, error: type) -> None:
    with pytest.raises(error, match="url") as raised:
        duplexthreads.connect(url, backend=backend)
    assert not isinstance(raised.value, (Tripwire, ConnectError))


def test_the_same_argument_error_on_both_backends(no_io: None) -> None:
    """Whichever backend is chosen, a bad argument is the same exception with the same text."""
    for options, _, _ in BAD_ARGUMENTS:
        if "backend" in options:
            continue
        messages = set()
        for backend in BACKENDS:
            try:
                duplexthreads.connect(URL, **{"backend": backend, **options})
            except (TypeError, ValueError) as exc:
                messages.add((type(exc), str(exc)))
        assert len(messages) == 1, f"{options}: {messages}"


def test_bad_arguments_never_reach_a_real_server(backend: str) -> None:
    """Against a live server: the mistakes fail at the call, and no connection arrives."""
    with ScriptedPeer(timeout=10 * UNIT) as peer:
        mistakes: List[Dict[str, Any]] = [{"max_queue": 0}, {"close_timeout": -1}, {"on_message": 5}, {"headers": "X"}]
        for options in mistakes:
            with pytest.raises((TypeError, ValueError)):
                duplexthreads.connect(peer.url, **{"backend": backend, **options})
        with pytest.raises((TypeError, ValueError)):
            duplexthreads.connect(peer.url.replace("/", "/a b", 3)[:-1], backend=backend)
        with pytest.raises(TimeoutError):
            peer.next_connection(timeout=0.3 * UNIT)


def test_port_out_of_range_is_the_same_value_error(no_io: None) -> None:
    messages = set()
    for backend in BACKENDS:
        with pytest.raises(ValueError) as raised:
            duplexthreads.connect("ws://127.0.0.1:99999/", backend=backend)
        messages.add(str(raised.value))
    assert len(messages) == 1


# -- what is sent --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_peer() -> Iterator[ScriptedPeer]:
    with ScriptedPeer(strict_host=True, timeout=10 * UNIT) as peer:
        yield peer


def test_headers_arrive_as_given(strict_peer: ScriptedPeer, backend: str) -> None:
    headers = [("X-Plain", "value"), ("X-Latin", "caf\u00e9"), ("X-Padded", "  inner  space  "), ("X-Empty", "")]
    with duplexthreads.connect(strict_peer.url + "path/x?q=1&r=%20", backend=backend, headers=headers):
        remote = strict_peer.next_connection()
    assert remote.request_target == "/path/x?q=1&r=%20"
    received = [(name, value) for name, value in remote.request_headers if name.startswith("X-")]
    # Values lose the whitespace around them (RFC 7230 3.2.4) and go out as ISO-8859-1 on both.
    assert received == [("X-Plain", "value"), ("X-Latin", "caf\u00e9"), ("X-Padded", "inner  space"), ("X-Empty", "")]


def test_header_lines_and_mappings_are_the_same(strict_peer: ScriptedPeer, backend: str) -> None:
    for headers in (["X-A: 1", "X-B:2"], {"X-A": "1", "X-B": "2"}, (("X-A", "1"), ("X-B", "2"))):
        with duplexthreads.connect(strict_peer.url, backend=backend, headers=headers):
            remote = strict_peer.next_connection()
        assert [h for h in remote.request_headers if h[0].startswith("X-")] == [("X-A", "1"), ("X-B", "2")]


def test_host_header_carries_the_port(strict_peer: ScriptedPeer, backend: str) -> None:
    """RFC 7230 5.4: host:port unless the port is the scheme's default; a strict server says 400."""
    with duplexthreads.connect(strict_peer.url, backend=backend) as conn:
        remote = strict_peer.next_connection()
        conn.send("through")
        assert remote.wait_messages(1) == ["through"]
    hosts = [value for name, value in remote.request_headers if name.lower() == "host"]
    assert hosts == [f"127.0.0.1:{strict_peer.port}"]


def test_a_given_host_header_replaces_the_derived_one(backend: str) -> None:
    with ScriptedPeer(timeout=10 * UNIT) as peer:
        with duplexthreads.connect(peer.url, backend=backend, headers={"Host": "example.com:8080"}):
            remote = peer.next_connection()
    assert [value for name, value in remote.request_headers if name.lower() == "host"] == ["example.com:8080"]


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_host_header_of_an_ipv6_literal(backend: str) -> None:
    with ScriptedPeer(host="::1", strict_host=True, timeout=10 * UNIT) as peer:
        assert peer.url.startswith("ws://[::1]:")
        with duplexthreads.connect(peer.url, backend=backend) as conn:
            remote = peer.next_connection()
            conn.send("v6")
            assert remote.wait_messages(1) == ["v6"]
    assert [value for name, value in remote.request_headers if name.lower() == "host"] == [f"[::1]:{peer.port}"]


# -- subprotocols ------------------------------------------------------------------------------------


def test_the_servers_choice_of_subprotocol(backend: str) -> None:
    with ScriptedPeer(subprotocols=("chat.v2", "chat"), timeout=10 * UNIT) as peer:
        with duplexthreads.connect(peer.url, backend=backend, subprotocols=["chat", "other"]) as conn:
            remote = peer.next_connection()
            assert conn.subprotocol == "chat" == remote.subprotocol
        header = [value for name, value in remote.request_headers if name.lower() == "sec-websocket-protocol"]
        assert header == ["chat, other"]


def test_a_server_may_choose_no_subprotocol(backend: str) -> None:
    """RFC 6455 4.1 lets the server pick none; websocket-client used to fail the connection."""
    with ScriptedPeer(timeout=10 * UNIT) as peer:
        with duplexthreads.connect(peer.url, backend=backend, subprotocols=["chat"]) as conn:
            assert conn.subprotocol is None
            peer.next_connection()


# -- what the server answers: only documented exceptions come out (item 5) -----------------------------

# What the server answers instead of a proper 101, by name; {accept} is the right accept value.
CANNED_ANSWERS = {
    "garbage": "SSH-2.0-OpenSSH_9.6\r\n",
    "bad-accept": (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ),
    "no-upgrade-header": (
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    ),
    "subprotocol-not-offered": (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: never.offered\r\n\r\n"
    ),
    "subprotocol-in-other-case": (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: CHAT\r\n\r\n"
    ),
    "extension-not-offered": (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    ),
    "redirect": "HTTP/1.1 301 Moved Permanently\r\nLocation: ws://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\n\r\n",
    # A str is sent as latin-1: the header holds the byte 0xE9, not UTF-8.
    "non-utf8-header": "HTTP/1.1 403 Forbidden\r\nX-Why: caf\xe9\r\nContent-Length: 0\r\n\r\n",
    "nothing": "",
    "cut-short": "HTTP/1.1 101 Switching",
    # RFC 6455 11.3: a 101 that the backends used to accept, each its own way.
    "extension-empty": (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Extensions: \r\n\r\n"
    ),
    "accept-twice-wrong-first": (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    ),
    "accept-twice": (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: {accept}\r\nsec-websocket-accept: {accept}\r\n\r\n"
    ),
    "subprotocol-twice": (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: superchat\r\n\r\n"
    ),
    # websocket-client cannot read a header that is not UTF-8; simple-websocket could.
    "non-utf8-header-in-101": (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: {accept}\r\nX-Why: caf\xe9\r\n\r\n"
    ),
    # A four-digit status is no HTTP status: not HTTP on both (websocket-client said 1010).
    "status-1010": "HTTP/1.1 1010 Switching\r\nUpgrade: websocket\r\n\r\n",
    # An upgrade is HTTP/1: websocket-client took this, h11 refused it.
    "http2-status": (
        "HTTP/2 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ),
    # Obsolete line folding: h11 folds the line into X-Foo, websocket-client refused it.
    "obs-fold": (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: {accept}\r\nX-Foo: a\r\n b\r\n\r\n"
    ),
    # websocket-client ended the head at the line of spaces, opened, and read the rest as frames.
    "blank-looking-line-then-extension": (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: {accept}\r\n \r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    ),
}

# (the canned answer, the options, the exception expected, its status if HandshakeRejected)
ANSWERS: List[Tuple[str, Dict[str, Any], Type[Exception], Optional[int]]] = [
    ("garbage", {}, HandshakeRejected, 0),
    ("bad-accept", {}, ConnectError, None),
    ("no-upgrade-header", {}, ConnectError, None),
    ("subprotocol-not-offered", {"subprotocols": ["chat"]}, ConnectError, None),
    ("subprotocol-not-offered", {}, ConnectError, None),
    ("subprotocol-in-other-case", {"subprotocols": ["chat"]}, ConnectError, None),
    ("extension-not-offered", {}, ConnectError, None),
    ("redirect", {}, HandshakeRejected, 301),
    ("non-utf8-header", {}, HandshakeRejected, 403),
    ("nothing", {}, ConnectError, None),
    ("cut-short", {}, ConnectError, None),
    ("extension-empty", {}, ConnectError, None),
    ("accept-twice-wrong-first", {}, ConnectError, None),
    ("accept-twice", {}, ConnectError, None),
    ("subprotocol-twice", {"subprotocols": ["chat", "superchat"]}, ConnectError, None),
    ("non-utf8-header-in-101", {}, ConnectError, None),
    ("status-1010", {}, HandshakeRejected, 0),
    ("http2-status", {}, HandshakeRejected, 0),
    ("obs-fold", {}, ConnectError, None),
    ("blank-looking-line-then-extension", {}, ConnectError, None),
]


@pytest.fixture(scope="module")
def answering_peer(answer: str) -> Iterator[ScriptedPeer]:
    """A server that sends the canned answer named ``answer``; both backends' tests share it."""
    with ScriptedPeer(handshake_answer=CANNED_ANSWERS[answer], timeout=10 * UNIT) as peer:
        yield peer


# scope="module": the tests of one answer are grouped, so that each answer starts one peer.
@pytest.mark.parametrize(("answer", "options", "error", "status"), ANSWERS, scope="module")
def test_a_broken_answer_is_a_documented_exception(
    answering_peer: ScriptedPeer, backend: str, answer: str, options: Dict[str, Any], error: type, status: Any
) -> None:
    url = f"{answering_peer.url}answer/{answer}"
    with pytest.raises(ConnectError) as raised:
        duplexthreads.connect(url, backend=backend, open_timeout=10 * UNIT, **options)
    assert type(raised.value) is error, repr(raised.value)
    if status is not None:
        assert isinstance(raised.value, HandshakeRejected) and raised.value.status == status
    if answer == "redirect":
        assert "redirect" in str(raised.value)
    # The request was a proper upgrade request (a GET over HTTP/1.1) for the URL's path.
    remote = answering_peer.next_connection()
    assert (remote.request_target, remote.handshake_error) == (f"/answer/{answer}", None)
    if answer == "redirect":  # not followed: no second request comes
        with pytest.raises(TimeoutError):
            answering_peer.next_connection(timeout=0.3 * UNIT)


def test_an_unresolvable_host_is_a_connect_error(backend: str) -> None:
    with pytest.raises(ConnectError) as raised:
        duplexthreads.connect("ws://nonexistent.invalid/", backend=backend, open_timeout=10 * UNIT)
    assert isinstance(raised.value.__cause__, socket.gaierror)


def test_an_idna_host_name_is_sent_in_ascii(no_io: None, backend: str) -> None:
    # Only the checks run here (the tripwire stops the resolution); what matters is that a
    # name outside ASCII is accepted and turned into its ASCII form, not refused or sent raw.
    from duplexthreads.transports._opening import client_request

    assert client_request("ws://b\u00fccher.example:8080/").host_header == "xn--bcher-kva.example:8080"
    with pytest.raises(Tripwire):
        duplexthreads.connect("ws://b\u00fccher.example/", backend=backend)
