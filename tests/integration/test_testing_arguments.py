"""Every argument of the scripted peer and client is checked where the test calls.

``TypeError`` for a value of the wrong type, ``ValueError`` for a bad value, each naming the
argument, and the same in both modes: the checks run in the test's process before a child
process, a thread or a socket exists (the constructors), and before anything reaches the
connection (the controls and the waits). A refused call leaves the connection as it was.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterator, List, Sequence, Tuple, Type

import pytest

from duplexthreads.testing import PeerConnection, ScriptedClient, ScriptedPeer, _peer

from ..timing import UNIT
from .plain_websocket import Wire, open_wire

pytestmark = pytest.mark.timeout(30 * UNIT)

MODES = [pytest.param(True, id="isolated"), pytest.param(False, id="in-process")]
TIMEOUT = 10 * UNIT
TEXT, CLOSE = 0x1, 0x8
NAN, INF = math.nan, math.inf

Case = Tuple[Dict[str, Any], Type[Exception], str]


def case(error: Type[Exception], named: str, **options: Any) -> Any:
    """One row of a table: these options must raise ``error`` with ``named`` in its message."""
    label = ",".join(f"{key}={value!r}" for key, value in options.items())[:60]
    return pytest.param(options, error, named, id=label)


PEER_CASES = [
    # The booleans take True or False only: "no" would be true, 1 and None sneak through.
    *(
        case(TypeError, name, **{name: value})
        for name in ("echo", "silent", "stop_reading", "strict_host", "greeting_with_handshake")
        for value in ("yes", None, 1)
    ),
    # greeting: a list or tuple of messages; a bare str would be sent one character at a time.
    case(TypeError, "greeting", greeting="hello"),
    case(TypeError, "greeting", greeting=b"hello"),
    case(TypeError, "greeting", greeting=None),
    case(TypeError, "greeting", greeting=iter(["hello"])),
    case(TypeError, "greeting", greeting=[5]),
    case(TypeError, "greeting", greeting=["ok", None]),
    case(ValueError, "greeting", greeting=["\ud800"]),  # crashed the connection's thread later
    case(ValueError, "greeting", greeting=["fine", "é\udfff"]),
    # close_after_greeting: None or a (code, reason) pair that may be sent.
    case(TypeError, "close_after_greeting", close_after_greeting=1000),
    case(TypeError, "close_after_greeting", close_after_greeting="1000"),
    case(ValueError, "close_after_greeting", close_after_greeting=(1000,)),
    case(ValueError, "close_after_greeting", close_after_greeting=(1000, "", "")),
    case(TypeError, "close_after_greeting", close_after_greeting=(1000, None)),
    case(TypeError, "close_after_greeting", close_after_greeting=(1000, b"bye")),
    case(TypeError, "close_after_greeting", close_after_greeting=(1000.0, "")),
    case(TypeError, "close_after_greeting", close_after_greeting=(True, "")),
    case(TypeError, "close_after_greeting", close_after_greeting=("1000", "")),
    *(
        case(ValueError, "close_after_greeting", close_after_greeting=(code, ""))
        for code in (999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 0, -1)
    ),
    case(ValueError, "close_after_greeting", close_after_greeting=(1000, "x" * 124)),
    case(ValueError, "close_after_greeting", close_after_greeting=(1000, "é" * 62)),
    case(ValueError, "close_after_greeting", close_after_greeting=(1000, "\ud800")),
    case(ValueError, "close_after_greeting", close_after_greeting=(None, "a reason needs a code")),
    # subprotocols: a list or tuple of distinct HTTP tokens.
    case(TypeError, "subprotocols", subprotocols="chat"),
    case(TypeError, "subprotocols", subprotocols=None),
    case(TypeError, "subprotocols", subprotocols=[5]),
    case(TypeError, "subprotocols", subprotocols=[b"chat"]),
    case(ValueError, "subprotocols", subprotocols=["a b"]),
    case(ValueError, "subprotocols", subprotocols=[""]),
    case(ValueError, "subprotocols", subprotocols=["chat,superchat"]),
    case(ValueError, "subprotocols", subprotocols=["chat", "chat"]),
    # drop_every: a whole number >= 1.
    case(ValueError, "drop_every", drop_every=0),
    case(ValueError, "drop_every", drop_every=-2),
    case(TypeError, "drop_every", drop_every=1.5),
    case(TypeError, "drop_every", drop_every=2.0),
    case(TypeError, "drop_every", drop_every=True),
    case(TypeError, "drop_every", drop_every="2"),
    # reject: a refusal, an int HTTP status from 200 to 599.
    *(case(ValueError, "reject", reject=status) for status in (101, 0, 199, 600, -404)),
    *(case(TypeError, "reject", reject=status) for status in (True, 404.0, 404.5, "404")),
    # The delays and the bound: finite numbers of seconds, never a bool.
    *(case(ValueError, "trickle_handshake", trickle_handshake=value) for value in (0, -1, NAN, INF)),
    *(case(TypeError, "trickle_handshake", trickle_handshake=value) for value in ("0.5", True)),
    *(case(ValueError, "linger_after_close", linger_after_close=value) for value in (-0.1, NAN, INF)),
    *(case(TypeError, "linger_after_close", linger_after_close=value) for value in ("1", True)),
    *(case(ValueError, "timeout", timeout=value) for value in (0, -1, NAN, INF, 1e7)),
    *(case(TypeError, "timeout", timeout=value) for value in ("10", None, True)),
    # Where it listens: the same exception in both modes (the child used to wrap it).
    case(TypeError, "host", host=None),
    case(TypeError, "host", host=b"127.0.0.1"),
    case(ValueError, "host", host=""),
    *(case(ValueError, "port", port=value) for value in (-1, 65536, 70000)),
    *(case(TypeError, "port", port=value) for value in ("0", None, True, 0.0)),
]


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused option must be refused before the peer starts anything, in either mode."""

    def must_not_start(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the peer started before its options were checked")

    for name in ("PeerProcess", "LocalServer", "open_client"):
        monkeypatch.setattr(_peer, name, must_not_start)


@pytest.mark.usefixtures("nothing_starts")
@pytest.mark.parametrize("isolated", MODES)
@pytest.mark.parametrize(("options", "error", "named"), PEER_CASES)
def test_scripted_peer_refuses_a_bad_option(
    isolated: bool, options: Dict[str, Any], error: Type[Exception], named: str
) -> None:
    with pytest.raises(error) as raised:
        ScriptedPeer(isolated=isolated, **options)
    assert type(raised.value) is error  # not a subclass such as UnicodeEncodeError
    assert named in str(raised.value), raised.value


@pytest.mark.usefixtures("nothing_starts")
@pytest.mark.parametrize("value", ["no", 1, None])
def test_isolated_is_true_or_false(value: Any) -> None:
    with pytest.raises(TypeError, match="isolated"):
        ScriptedPeer(isolated=value)
    with pytest.raises(TypeError, match="isolated"):
        ScriptedClient("ws://127.0.0.1:1/", isolated=value)


@pytest.mark.parametrize("isolated", MODES)
def test_what_the_checks_accept_still_works(isolated: bool) -> None:
    """Lists and tuples alike, bytes-like greetings, a close pair as a list, an int timeout."""
    options: Dict[str, Any] = {
        "greeting": ("text", b"bytes", bytearray(b"array"), memoryview(b"view")),
        "close_after_greeting": [4000, "bye"],
        "subprotocols": ["chat"],
        "drop_every": 1,
        "timeout": 10,
    }
    with ScriptedPeer(isolated=isolated, **options) as peer:
        wire, _ = open_wire(peer.url, "/accepted", ("Sec-WebSocket-Protocol", "chat"))
        try:
            got = [(frame.opcode, frame.payload) for frame in (wire.read_frame() for _ in range(5))]
            assert got == [(TEXT, b"text"), (0x2, b"bytes"), (0x2, b"array"), (0x2, b"view"), (CLOSE, b"\x0f\xa0bye")]
            remote = peer.next_connection(TIMEOUT)
            assert remote.subprotocol == "chat"
        finally:
            wire.close()
        assert remote.wait_ended(TIMEOUT)
    for status in (200, 599):  # the ends of the range
        with ScriptedPeer(isolated=False, reject=status, linger_after_close=0, timeout=TIMEOUT):
            pass


# -- the controls and the waits of a connection -------------------------------------------------

CONTROL_CASES = [
    # close(): only what RFC 6455 lets an endpoint send; violate() sends the rest.
    *(pytest.param("close", (code,), ValueError, "violate(", id=f"close({code})") for code in (1004, 1005, 1006, 1015)),
    *(pytest.param("close", (code,), ValueError, "violate(", id=f"close({code})") for code in (999, 5000, 2000, 0)),
    *(
        pytest.param("close", (code,), TypeError, "close code", id=f"close({code!r})")
        for code in (1000.0, True, "1000")
    ),
    pytest.param("close", (1000, None), TypeError, "reason", id="close(1000, None)"),
    pytest.param("close", (1000, b"bye"), TypeError, "reason", id="close(1000, b'bye')"),
    pytest.param("close", (1000, "x" * 124), ValueError, "reason", id="close(1000, long)"),
    pytest.param("close", (1000, "\ud800"), ValueError, "reason", id="close(1000, surrogate)"),
    pytest.param("close", (None, "why"), ValueError, "reason", id="close(None, 'why')"),
    # The waits: NaN used to spin a CPU forever in-process; negative, infinite or not a number.
    *(
        pytest.param(wait, (*head, value), ValueError, "timeout", id=f"{wait}({value!r})")
        for wait, head in (
            ("wait_messages", (1,)),
            ("wait_close_frame", ()),
            ("wait_pongs", (1,)),
            ("wait_ended", ()),
        )
        for value in (NAN, -1, -0.001, INF, 1e7)
    ),
    *(
        pytest.param(wait, (*head, value), TypeError, "timeout", id=f"{wait}({value!r})")
        for wait, head in (
            ("wait_messages", (1,)),
            ("wait_close_frame", ()),
            ("wait_pongs", (1,)),
            ("wait_ended", ()),
        )
        for value in ("1", True, [1])
    ),
    pytest.param("wait_messages", ("2",), TypeError, "count", id="wait_messages('2')"),
    pytest.param("wait_messages", (1.0,), TypeError, "count", id="wait_messages(1.0)"),
    pytest.param("wait_messages", (-1,), ValueError, "count", id="wait_messages(-1)"),
    pytest.param("wait_pongs", (True,), TypeError, "count", id="wait_pongs(True)"),
    # What is sent: a message, bytes, a known violation.
    pytest.param("send", (5,), TypeError, "message", id="send(5)"),
    pytest.param("send", (None,), TypeError, "message", id="send(None)"),
    pytest.param("send", ("\ud800",), ValueError, "UTF-8", id="send(surrogate)"),
    pytest.param("send_fragmented", ("abc", True), TypeError, "fragment_size", id="send_fragmented(True)"),
    pytest.param("send_fragmented", ("abc", 1.5), TypeError, "fragment_size", id="send_fragmented(1.5)"),
    pytest.param("send_fragmented", ("abc", 0), ValueError, "fragment_size", id="send_fragmented(0)"),
    pytest.param("send_fragmented", ("\ud800", 1), ValueError, "UTF-8", id="send_fragmented(surrogate)"),
    pytest.param("send_raw", ("text",), TypeError, "data", id="send_raw(str)"),
    pytest.param("send_raw", (5,), TypeError, "data", id="send_raw(5)"),  # bytes(5) is 5 NULs
    pytest.param("ping", (3,), TypeError, "payload", id="ping(3)"),
    pytest.param("ping", ("str",), TypeError, "payload", id="ping(str)"),
    pytest.param("ping", (b"x" * 126,), ValueError, "payload", id="ping(126 bytes)"),
    pytest.param("violate", (None,), TypeError, "name", id="violate(None)"),
    pytest.param("violate", ("nope",), ValueError, "unknown violation", id="violate('nope')"),
]


@pytest.fixture(scope="module", params=MODES)
def peer(request: pytest.FixtureRequest) -> Iterator[ScriptedPeer]:
    with ScriptedPeer(isolated=request.param, timeout=TIMEOUT) as shared:
        yield shared


@pytest.fixture
def connected(peer: ScriptedPeer) -> Iterator[Tuple[Wire, PeerConnection]]:
    wire, _ = open_wire(peer.url, "/arguments")
    try:
        remote = peer.next_connection(TIMEOUT)
        assert remote.request_target == "/arguments"
        yield wire, remote
    finally:
        wire.close()
    assert remote.wait_ended()


class _Unreachable:
    """Stands in for the connection's driver: a refused call must never get this far."""

    def __init__(self) -> None:
        self.calls: List[str] = []

    def call(self, op: str, args: Sequence[Any], budget: float) -> Any:
        self.calls.append(op)
        raise AssertionError(f"{op}{tuple(args)!r} reached the connection before its arguments were checked")


@pytest.mark.parametrize(("method", "args", "error", "named"), CONTROL_CASES)
def test_a_connection_refuses_bad_arguments_at_the_call(
    connected: Tuple[Wire, PeerConnection],
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    args: Tuple[Any, ...],
    error: Type[Exception],
    named: str,
) -> None:
    wire, remote = connected
    real_driver = remote._driver
    unreachable = _Unreachable()
    monkeypatch.setattr(remote, "_driver", unreachable)
    with pytest.raises(error) as raised:
        getattr(remote, method)(*args)
    assert type(raised.value) is error
    assert named in str(raised.value), raised.value
    assert unreachable.calls == []
    monkeypatch.setattr(remote, "_driver", real_driver)
    # Nothing was sent, and the connection works as before.
    remote.send("still open")
    frame = wire.read_frame()
    assert (frame.opcode, frame.payload) == (TEXT, b"still open")
    assert remote.received == [] and not remote.ended


def test_the_waits_still_take_zero_and_none(connected: Tuple[Wire, PeerConnection]) -> None:
    wire, remote = connected
    wire.send_frame(TEXT, b"one")
    assert remote.wait_messages(1, None) == ["one"]
    assert remote.wait_messages(0, 0) == ["one"]
    assert remote.wait_pongs(0, 0.0) == []
    assert remote.wait_ended(0) is False


@pytest.mark.parametrize("value", [NAN, -1, INF, 1e7])
def test_next_connection_refuses_a_bad_timeout(peer: ScriptedPeer, value: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        peer.next_connection(value)


@pytest.mark.parametrize("value", ["1", True, [1]])
def test_next_connection_refuses_a_timeout_that_is_no_number(peer: ScriptedPeer, value: Any) -> None:
    with pytest.raises(TypeError, match="timeout"):
        peer.next_connection(value)


# -- the scripted client ------------------------------------------------------------------------

CLIENT_CASES = [
    case(TypeError, "url", url=None),
    case(TypeError, "url", url=b"ws://127.0.0.1:1/"),
    case(ValueError, "url", url="http://127.0.0.1:1/"),
    case(ValueError, "url", url="ws://"),
    case(ValueError, "url", url="ws://127.0.0.1:99999/"),
    case(ValueError, "url", url="ws://127.0.0.1:port/"),
    case(ValueError, "url", url="ws://127.0.0.1:1/\r\nX-Evil: 1"),
    case(ValueError, "url", url="ws://127.0.0.1:1/a b"),
    case(ValueError, "url", url="ws://127.0.0.1:1/\u20ac"),
    case(TypeError, "headers", headers="X-A: b"),
    case(TypeError, "headers", headers=None),
    case(TypeError, "headers", headers={"X-A": None}),
    case(TypeError, "headers", headers={"X-A": 5}),
    case(TypeError, "headers", headers={b"X-A": "b"}),
    case(TypeError, "headers", headers=[("X-A",)]),
    case(TypeError, "headers", headers=["X-A: b"]),
    case(ValueError, "headers", headers={"X A": "b"}),
    case(ValueError, "headers", headers={"": "b"}),
    case(ValueError, "headers", headers={"X-A": "b\r\nX-Evil: 1"}),
    case(ValueError, "headers", headers={"X-A": "\u0100"}),
    case(TypeError, "host_header", host_header=5),
    case(ValueError, "host_header", host_header="example.com\r\nX-Evil: 1"),
    case(TypeError, "subprotocols", subprotocols="chat"),
    case(ValueError, "subprotocols", subprotocols=["a b"]),
    *(case(ValueError, "timeout", timeout=value) for value in (0, -1, NAN, INF)),
    *(case(TypeError, "timeout", timeout=value) for value in ("10", None, True)),
]


@pytest.mark.usefixtures("nothing_starts")
@pytest.mark.parametrize("isolated", MODES)
@pytest.mark.parametrize(("options", "error", "named"), CLIENT_CASES)
def test_scripted_client_refuses_a_bad_argument(
    isolated: bool, options: Dict[str, Any], error: Type[Exception], named: str
) -> None:
    arguments: Dict[str, Any] = {"url": "ws://127.0.0.1:1/", "isolated": isolated, **options}
    with pytest.raises(error) as raised:
        ScriptedClient(**arguments)
    assert type(raised.value) is error
    assert named in str(raised.value), raised.value


@pytest.mark.usefixtures("nothing_starts")
@pytest.mark.parametrize("isolated", MODES)
def test_scripted_client_open_checks_its_timeout_and_url(isolated: bool) -> None:
    client = ScriptedClient("ws://127.0.0.1:1/", isolated=isolated, timeout=TIMEOUT)
    for value in (NAN, -1, 0, INF):
        with pytest.raises(ValueError, match="timeout"):
            client.open(value)
    with pytest.raises(TypeError, match="timeout"):
        client.open("1")  # type: ignore[arg-type]
    client.url = "http://127.0.0.1:1/"  # changed after it was made: checked again
    with pytest.raises(ValueError, match="url"):
        client.open()
    client.close()


@pytest.mark.parametrize("isolated", MODES)
def test_scripted_client_sends_the_headers_as_given(isolated: bool) -> None:
    with ScriptedPeer(isolated=False, timeout=TIMEOUT) as server:
        headers = [("X-One", "1"), ("X-Two", "zwei drei")]
        with ScriptedClient(server.url + "h", isolated=isolated, headers=headers, timeout=TIMEOUT):
            remote = server.next_connection(TIMEOUT)
            assert remote.request_headers[-2:] == headers
        with ScriptedClient(server.url, isolated=isolated, headers=dict(headers), subprotocols=("chat",)):
            remote = server.next_connection(TIMEOUT)
            assert remote.request_headers[-2:] == headers
