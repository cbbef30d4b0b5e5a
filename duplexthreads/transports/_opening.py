"""Opening a client connection, the same way for both client backends.

First :func:`client_request` checks every value that will go into the HTTP upgrade request (the
URL's host, port, path and query, the extra headers, the subprotocols) before any I/O, and
raises ``TypeError``/``ValueError`` naming the argument: a CR or LF in a value would otherwise
let the caller's input write headers of its own (header injection), and each backend library
rejects different things, at different moments, with different exceptions.

Then :func:`open_socket` resolves, connects and wraps TLS under one deadline, and
:class:`HandshakeSocket` gives the HTTP upgrade what is left of it: ``open_timeout`` bounds the
whole opening, not each read (a server trickling its answer one byte at a time used to hold
``connect()`` for as many timeouts as it sent bytes).

:class:`HandshakeSocket` also judges the server's answer as it arrives, the same way for both
backends, because the backends do not: websocket-client reads a header line of any length
(with ``open_timeout=None``, until memory runs out) and simple-websocket waited for the timeout
on an answer that is not HTTP. An answer whose head (status line and headers) is longer than
:data:`MAX_ANSWER_HEAD` fails at once with :class:`ConnectError`, one that is not HTTP with
:class:`HandshakeRejected` (status 0), and :meth:`HandshakeSocket.check_accepted` refuses a
``101`` that the backend accepted but RFC 6455 does not: one that names an extension (we offer
none), repeats ``Sec-WebSocket-Accept`` or ``Sec-WebSocket-Protocol``, or has header bytes that
are not UTF-8 (websocket-client refuses those itself).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, NoReturn, Optional, Tuple, Union
from urllib.parse import urlsplit

from .._deadline import remaining
from .._rfc6455 import HTTP_TOKEN as _TOKEN
from ..exceptions import ConnectError, ConnectTimeout, HandshakeRejected

__all__ = [
    "ClientRequest",
    "HandshakeSocket",
    "check_max_message_size",
    "check_subprotocols",
    "client_request",
    "header_pairs",
    "open_socket",
    "reraise",
    "status_of",
]

#: What ``headers=`` may be: a mapping, ``(name, value)`` pairs, or ``"Name: value"`` lines.
HeadersArg = Union[Mapping[str, str], Iterable[Union[str, Tuple[str, str]]], None]

# RFC 7230 3.2: field-value is VCHAR or obs-text (0x80-0xFF), with SP/HTAB inside. Values are
# sent as ISO-8859-1, as http.client does; anything else (CR, LF, NUL, other controls, DEL,
# characters past U+00FF) is refused.
_FIELD_VALUE = re.compile(r"[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*")
# After IDNA encoding, a host name is letters, digits, hyphens, dots (and underscores, which
# DNS allows and some hosts use).
_HOST_NAME = re.compile(r"[A-Za-z0-9._-]+")
# A Host header given in headers=: host[:port], the host a name, an IPv4 or a bracketed IPv6.
_HOST_VALUE = re.compile(r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
# RFC 3986 path and query characters, percent-escapes included: printable ASCII but for space.
# '#' would start a fragment, which urlsplit has already split off.
_TARGET = re.compile(r"[\x21-\x7e]*")

#: Headers the upgrade request sets itself; a caller's copy would duplicate or contradict them.
#: ``Host`` is allowed, and replaces the one derived from the URL.
_HANDSHAKE_HEADERS = frozenset(
    {
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-accept",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
        "content-length",
        "transfer-encoding",
    }
)

#: The longest head (status line, headers and the blank line) a server's answer may have, in
#: bytes: h11's limit, which simple-websocket's parser (wsproto) applies, here for both backends.
MAX_ANSWER_HEAD = 16384

# Where the head of an answer ends: its first empty line (h11 and websocket-client take a bare
# LF for a line end too).
_HEAD_END = re.compile(rb"\n\r?\n")

# RFC 6455 11.3.3 and 11.3.4: each of these must not appear more than once in the 101 answer.
_ONCE_ONLY = (b"sec-websocket-accept", b"sec-websocket-protocol")


@dataclass(frozen=True)
class ClientRequest:
    """Everything the opening needs, checked; built by :func:`client_request`."""

    url: str
    secure: bool
    #: The host to resolve and to verify TLS against: an IP address or an IDNA-encoded name.
    host: str
    port: int
    #: The ``Host`` header: ``host[:port]``, an IPv6 address in brackets (RFC 7230 5.4).
    host_header: str
    #: The request target: path and query.
    resource: str
    headers: Tuple[Tuple[str, str], ...]
    subprotocols: Tuple[str, ...]

    @property
    def wire_url(self) -> str:
        """The URL as the backends should parse it: host in its ASCII form, port explicit."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'wss' if self.secure else 'ws'}://{host}:{self.port}{self.resource}"

    @property
    def has_origin(self) -> bool:
        return any(name.lower() == "origin" for name, _ in self.headers)


def client_request(url: object, headers: HeadersArg = None, subprotocols: object = None) -> ClientRequest:
    """Check the URL, headers and subprotocols; raise ``TypeError``/``ValueError`` naming the argument."""
    if not isinstance(url, str):
        raise TypeError(f"url must be str, not {type(url).__name__}")
    # urlsplit silently deletes tabs and newlines anywhere in a URL; refuse them instead.
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in url):
        raise ValueError(f"url contains whitespace or control characters: {url!r}")
    try:
        parts = urlsplit(url)
        port_given = parts.port
    except ValueError as exc:
        raise ValueError(f"url is not valid ({exc}): {url!r}") from None
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"url must start with ws:// or wss://, not {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"url must not carry credentials (send them in headers instead): {url!r}")
    if "#" in url:
        raise ValueError(f"url must not have a fragment (RFC 6455 3): {url!r}")
    secure = parts.scheme == "wss"
    host, literal = _host_of(parts.hostname, parts.netloc, url)
    default_port = 443 if secure else 80
    if port_given == 0:
        raise ValueError(f"url has port 0: {url!r}")
    port = port_given or default_port
    bracketed = f"[{host}]" if isinstance(literal, ipaddress.IPv6Address) else host
    host_header = bracketed if port == default_port else f"{bracketed}:{port}"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not _TARGET.fullmatch(resource):
        raise ValueError(f"url path and query must be ASCII (percent-encode anything else): {url!r}")
    pairs = tuple(header_pairs(headers))
    for name, value in pairs:
        if name.lower() == "host":
            if not _HOST_VALUE.fullmatch(value) or not _idna_ok(value):
                raise ValueError(f"headers: Host must be host[:port], not {value!r}")
            host_header = value
    extra = tuple((name, value) for name, value in pairs if name.lower() != "host")
    return ClientRequest(
        url=url,
        secure=secure,
        host=host,
        port=port,
        host_header=host_header,
        resource=resource,
        headers=extra,
        subprotocols=check_subprotocols(subprotocols),
    )


def _host_of(hostname: Optional[str], netloc: str, url: str) -> Tuple[str, Any]:
    """The host to connect to, and the IP address it is (None for a name)."""
    if not hostname:
        raise ValueError(f"url has no host: {url!r}")
    if netloc.rpartition("@")[2].startswith("["):
        try:
            address = ipaddress.IPv6Address(hostname)
        except ValueError:
            raise ValueError(f"url has an invalid IPv6 address (zone ids are not supported): {url!r}") from None
        return str(hostname), address
    try:
        return str(ipaddress.IPv4Address(hostname)), ipaddress.IPv4Address(hostname)
    except ValueError:
        pass
    try:
        name = hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"url has a host name that is not valid: {url!r}") from None
    if not _HOST_NAME.fullmatch(name):
        raise ValueError(f"url has a host name that is not valid: {url!r}")
    return name, None


def _idna_ok(value: str) -> bool:
    # wsproto encodes the Host header with the IDNA codec, which refuses empty or long labels.
    try:
        value.encode("idna")
    except UnicodeError:
        return False
    return True


def header_pairs(headers: HeadersArg) -> List[Tuple[str, str]]:
    """``headers=`` as checked ``(name, value)`` pairs; values lose surrounding whitespace."""
    if headers is None:
        return []
    if isinstance(headers, (str, bytes, bytearray)):
        raise TypeError(
            f"headers must be a mapping, (name, value) pairs or 'Name: value' lines, not one {type(headers).__name__}"
        )
    if isinstance(headers, Mapping):
        items: Iterable[Any] = headers.items()
    else:
        try:
            items = list(headers)
        except TypeError:
            raise TypeError(
                f"headers must be a mapping, (name, value) pairs or 'Name: value' lines, not {type(headers).__name__}"
            ) from None
    pairs: List[Tuple[str, str]] = []
    for item in items:
        if isinstance(item, str):
            name, sep, value = item.partition(":")
            if not sep:
                raise ValueError(f"headers: the line {item!r} has no ':'")
        elif isinstance(item, tuple) and len(item) == 2:
            name, value = item
        else:
            raise TypeError(f"headers: each item must be a (name, value) pair or a 'Name: value' line, not {item!r}")
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"headers: names and values must be str, not {name!r}: {value!r}")
        name, value = name.strip(" \t"), value.strip(" \t")
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"headers: {name!r} is not a valid header name (RFC 7230 token)")
        if value and not _FIELD_VALUE.fullmatch(value):
            raise ValueError(
                f"headers: the value of {name} has characters a header cannot carry "
                f"(CR, LF, NUL, other controls, or past U+00FF): {value!r}"
            )
        if name.lower() in _HANDSHAKE_HEADERS:
            hint = " (use subprotocols=)" if name.lower() == "sec-websocket-protocol" else ""
            raise ValueError(f"headers: {name} is set by the WebSocket handshake itself{hint}")
        pairs.append((name, value))
    return pairs


def check_max_message_size(size: Optional[int]) -> None:
    """``max_message_size``: a whole number of bytes >= 1, or None for no limit."""
    if size is None:
        return
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"max_message_size must be an int or None, not {type(size).__name__}")
    if size < 1:
        raise ValueError(f"max_message_size must be at least 1 (or None for no limit), not {size}")


def check_subprotocols(subprotocols: object) -> Tuple[str, ...]:
    """``subprotocols=`` checked: distinct RFC 7230 tokens (RFC 6455 4.1)."""
    if subprotocols is None:
        return ()
    if isinstance(subprotocols, (str, bytes, bytearray)) or not isinstance(subprotocols, Iterable):
        raise TypeError(f"subprotocols must be a sequence of names, not {type(subprotocols).__name__}")
    names = tuple(subprotocols)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"subprotocols: each name must be str, not {type(name).__name__}")
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"subprotocols: {name!r} is not a valid subprotocol name (RFC 7230 token)")
    if len(set(names)) != len(names):
        raise ValueError(f"subprotocols: the names must be distinct: {list(names)}")
    return names


# -- the opening ------------------------------------------------------------------------------------


def open_socket(
    request: ClientRequest, ssl_context: Optional[ssl.SSLContext], deadline: Optional[float]
) -> socket.socket:
    """DNS, TCP and TLS under ``deadline``; raise :class:`ConnectError` leaving no socket open.

    ``getaddrinfo`` cannot be interrupted; the time it takes counts against the deadline, which
    is checked as soon as it returns (the system resolver bounds it with its own timeout).
    """
    url = request.url
    try:
        addresses = socket.getaddrinfo(request.host, request.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ConnectError(f"{url}: cannot resolve {request.host}: {exc}") from exc
    _check_deadline(deadline, url, "resolving the host")
    sock: Optional[socket.socket] = None
    failure: Optional[BaseException] = None
    for family, kind, proto, _, address in addresses:
        candidate = socket.socket(family, kind, proto)
        try:
            _arm(candidate, deadline, url, "connecting")
            candidate.connect(address)
        except BaseException as exc:
            candidate.close()
            if isinstance(exc, ConnectError) or not isinstance(exc, OSError):
                raise
            if _is_timeout(exc):
                raise _timeout_error(url, "connecting", deadline) from exc
            failure = exc
            continue
        sock = candidate
        break
    if sock is None:
        raise ConnectError(f"{url}: cannot connect: {failure!r}") from failure
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if request.secure:
            context = ssl_context if ssl_context is not None else ssl.create_default_context()
            _arm(sock, deadline, url, "the TLS handshake")
            # The handshake runs under one deadline in CPython, not one timeout per read.
            sock = context.wrap_socket(sock, server_hostname=request.host)
    except BaseException as exc:
        sock.close()
        if isinstance(exc, ConnectError):
            raise
        if _is_timeout(exc):
            raise _timeout_error(url, "the TLS handshake", deadline) from exc
        if isinstance(exc, (OSError, ValueError)):
            raise ConnectError(f"{url}: TLS failed: {exc}") from exc
        raise
    return sock


class HandshakeSocket:
    """The socket as the HTTP upgrade sees it: every read and write within the one deadline.

    It keeps the head of the server's answer (at most :data:`MAX_ANSWER_HEAD` bytes), so that a
    refusal can be reported with the status the server gave (or as "not HTTP" when it gave
    none), whatever the backend made of it, and fails the opening as soon as the answer is not
    HTTP or its head grows past the limit: before the backend sees the bytes.
    """

    def __init__(self, sock: socket.socket, deadline: Optional[float], url: str) -> None:
        self.raw = sock
        self.deadline = deadline
        self.url = url
        #: The head of the answer so far; once it is complete, exactly the head.
        self.answer = bytearray()
        # Where the head ends in ``answer``, once its blank line has come.
        self._head_end: Optional[int] = None
        self._status_known = False

    def arm(self) -> None:
        _arm(self.raw, self.deadline, self.url, "the opening handshake")

    def recv(self, size: int) -> bytes:
        self.arm()
        data = self.raw.recv(size)
        if data and self._head_end is None:
            self._see(data)
        return data

    def _see(self, data: bytes) -> None:
        """Take in more of the answer's head; raise as soon as it cannot be a valid one."""
        answer = self.answer
        searched = max(0, len(answer) - 2)  # the blank line may straddle two reads
        answer += data
        if not self._status_known:
            self._check_status_line(first_line_done=b"\n" in data)
        end = _HEAD_END.search(answer, searched)
        # The limit is on the head, wherever the reads happen to cut it (websocket-client reads
        # one byte at a time, simple-websocket 4 KiB), so that both backends agree on every answer.
        if (len(answer) if end is None else end.end()) > MAX_ANSWER_HEAD:
            del answer[MAX_ANSWER_HEAD:]
            raise ConnectError(
                f"{self.url}: the answer's status line and headers are over {MAX_ANSWER_HEAD} bytes: "
                "not a WebSocket upgrade"
            )
        if end is not None:
            self._head_end = end.end()
            del answer[self._head_end :]  # what follows is the backend's (frames), not the head

    def _check_status_line(self, first_line_done: bool) -> None:
        # The first line is complete at its first LF; before that, an answer is HTTP only while
        # it can still begin with "HTTP/".
        start = bytes(self.answer[:5])
        if first_line_done:
            status = status_of(bytes(self.answer))
            self._status_known = True
        else:
            status = None if b"HTTP/".startswith(start) else 0
        if status == 0:
            self._status_known = True
            raise HandshakeRejected(0, _not_http(self.url, bytes(self.answer)))

    def check_accepted(self) -> None:
        """Refuse a 101 the backend accepted that RFC 6455 does not; :class:`ConnectError`."""
        head = bytes(self.answer if self._head_end is None else self.answer[: self._head_end])
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            # websocket-client cannot read such a header; refused on both backends alike.
            raise ConnectError(
                f"{self.url}: invalid WebSocket handshake: a header of the answer is not UTF-8: "
                f"{head[max(0, exc.start - 20) : exc.end + 20]!r}"
            ) from None
        for line in head.split(b"\n")[1:]:
            if line in (b"", b"\r"):
                break  # the end of the head
            if line[:1] in (b" ", b"\t"):
                # Obsolete line folding, or a line of only spaces: the backends disagree on
                # where such a head ends (websocket-client stops at the blank-looking line, h11
                # folds it into the header before), so neither may decide alone. RFC 7230 (3.2.4)
                # lets a client refuse it.
                raise ConnectError(
                    f"{self.url}: invalid WebSocket handshake: a header line of the answer begins "
                    f"with white space (obsolete line folding): {line[:60]!r}"
                )
        counts = _header_counts(head)
        if counts.get(b"sec-websocket-extensions"):
            raise ConnectError(
                f"{self.url}: invalid WebSocket handshake: the answer has a Sec-WebSocket-Extensions "
                "header, and we offered no extension"
            )
        for name in _ONCE_ONLY:
            if counts.get(name, 0) > 1:
                raise ConnectError(
                    f"{self.url}: invalid WebSocket handshake: the answer has {counts[name]} "
                    f"{name.decode()} headers; RFC 6455 (11.3) allows one"
                )

    def send(self, data: bytes) -> int:
        self.arm()
        self.raw.sendall(data)
        return len(data)

    sendall = send

    def gettimeout(self) -> Optional[float]:
        # Libraries that wait with a selector of their own ask for the timeout to wait with.
        return remaining(self.deadline)

    def settimeout(self, timeout: Optional[float]) -> None:
        """Ignored: the deadline decides."""

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        """Ignored: the caller owns the socket and closes it."""


def _header_counts(head: bytes) -> Dict[bytes, int]:
    """How many times each header name (lowercased) appears in the head of an answer."""
    counts: Dict[bytes, int] = {}
    for line in head.split(b"\n")[1:]:
        name, colon, _ = line.partition(b":")
        if colon and not line[:1].isspace():  # an obs-fold continuation line names nothing
            key = name.strip().lower()
            counts[key] = counts.get(key, 0) + 1
    return counts


def _not_http(url: str, answer: bytes) -> str:
    # The answer may be refused after its first byte (websocket-client reads one at a time).
    return f"{url}: the answer is not HTTP (it begins {bytes(answer[:60])!r})"


def reraise(error: BaseException, cause: BaseException) -> NoReturn:
    """``raise error from cause`` (or ``cause`` itself, when it is ``error``), leaving no cycle.

    A caller that keeps the exception it raises in a local variable makes a reference cycle
    (the exception, its traceback, the caller's frame, the variable), which holds everything
    the failed opening read until the garbage collector runs; this frame lets go of both.
    """
    try:
        if error is cause:
            raise error
        raise error from cause
    finally:
        del error, cause


def status_of(answer: bytes) -> Optional[int]:
    """The HTTP status in the first line of ``answer``; 0 if it is not HTTP; None if cut short."""
    line, newline, _ = bytes(answer).partition(b"\n")
    # HTTP/1.0 and HTTP/1.1 only: an upgrade is an HTTP/1 thing (h11 refuses other versions).
    match = re.match(rb"HTTP/1\.[01] (\d{3})(?: |\r?$)", line)
    if match:
        return int(match.group(1))
    if not newline and b"HTTP/".startswith(line[:5]):
        return None  # the start of a status line, then nothing: the server stopped mid-way
    return 0


def refusal(request: ClientRequest, answer: bytes, cause: BaseException) -> ConnectError:
    """The exception for a failed upgrade, from what the server answered.

    Not HTTP at all: :class:`HandshakeRejected` with status 0; an HTTP status other than 101:
    :class:`HandshakeRejected` with it; a 101 that breaks the handshake (a wrong accept key, a
    subprotocol or extension we did not offer), or an answer cut short: :class:`ConnectError`.
    """
    url = request.url
    status = status_of(answer) if answer else None
    if status == 0:
        return HandshakeRejected(0, _not_http(url, answer))
    if status is not None and status != 101:
        location = _header(answer, b"location")
        moved = f" (redirect to {location}; redirects are not followed)" if location and 300 <= status < 400 else ""
        return HandshakeRejected(status, f"{url}: answered HTTP {status}, not a WebSocket upgrade{moved}")
    if status == 101:
        return ConnectError(f"{url}: invalid WebSocket handshake: {cause}")
    return ConnectError(f"{url}: the connection closed during the opening handshake: {cause}")


def timeout_error(request: ClientRequest, deadline: Optional[float]) -> ConnectError:
    """The exception for an opening that ran out of time during the HTTP upgrade."""
    return _timeout_error(request.url, "the opening handshake", deadline)


def _header(answer: bytes, name: bytes) -> Optional[str]:
    for line in bytes(answer).split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return None


def _arm(sock: socket.socket, deadline: Optional[float], url: str, step: str) -> None:
    """Give the next blocking call on ``sock`` what is left until ``deadline``."""
    left = remaining(deadline)
    if left == 0:
        raise _timeout_error(url, step, deadline)
    sock.settimeout(left)


def _check_deadline(deadline: Optional[float], url: str, step: str) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise _timeout_error(url, step, deadline)


def _timeout_error(url: str, step: str, deadline: Optional[float]) -> ConnectTimeout:
    return ConnectTimeout(f"{url}: open_timeout ran out during {step}")


def _is_timeout(exc: BaseException) -> bool:
    # socket.timeout is TimeoutError from Python 3.10 on, a distinct OSError before; an SSL
    # handshake that runs out raises one too ("_ssl.c: The handshake operation timed out").
    return isinstance(exc, (socket.timeout, TimeoutError)) or "timed out" in str(exc)
