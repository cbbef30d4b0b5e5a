"""Transport over websocket-client (client side).

websocket-client performs the HTTP upgrade (and, behind an HTTP or SOCKS proxy named in the
environment, the whole opening). Everything after the handshake we do ourselves, on the raw
socket, for reasons measured and explained in docs/design.rst:

- Reading: :class:`~._reading.FrameReader` checks every frame as RFC 6455 says and assembles a
  fragmented message in linear time; websocket-client's reader appends each fragment to one
  ``bytes`` (quadratic), delivers frames a client must refuse, and cannot be woken: a thread
  blocked in its ``recv()`` holds its frame lock, so its ``close()`` deadlocks.
- Writing: the writer frames a whole batch and writes it at once, under the lock that our pong
  replies take too, so frames never interleave.
- Waking: the owner shuts the raw socket down, which ends a blocked read or write at once.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import websocket

from .._deadline import deadline_after, remaining
from ..exceptions import ConnectError, HandshakeRejected, TransportError
from ..report import Message
from . import _framing, _opening
from ._reading import FrameReader, Ping, Pong
from ._sockets import SocketWriter, await_end_of_stream, close_without_reset, shutdown_quietly
from .base import CloseFrame, Transport

__all__ = ["WebSocketClientTransport"]

_OPCODE_PING = 0x9
_OPCODE_PONG = 0xA


class WebSocketClientTransport(Transport):
    """A connected socket, after websocket-client's handshake, driven by the reader and writer."""

    backend = "websocket-client"

    def __init__(
        self, sock: socket.socket, subprotocol: Optional[str] = None, max_message_size: Optional[int] = None
    ) -> None:
        super().__init__()
        self._sock = sock
        self._subprotocol = subprotocol
        # Block without a timeout: the owner wakes the reader with shutdown(), so no polling.
        self._sock.settimeout(None)
        # Every write: the writer's batches, send()'s direct writes, our close frame, pongs.
        self._writer = SocketWriter(sock)
        self.direct_writes = self._writer.can_write_now
        self._shut = False
        self._reader = FrameReader(sock, lambda: self._shut, max_message_size)

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        headers: _opening.HeadersArg = None,
        subprotocols: Optional[Sequence[str]] = None,
        ssl_context: Any = None,
        open_timeout: Optional[float] = 10.0,
        max_message_size: Optional[int] = None,
    ) -> WebSocketClientTransport:
        """Open a connection within ``open_timeout``; raise :class:`ConnectError` leaving no socket open."""
        request = _opening.client_request(url, headers, subprotocols)
        deadline = deadline_after(open_timeout)
        if _proxy_for(request) is not None:
            sock, response = _open_through_proxy(request, ssl_context, deadline)
        else:
            sock = _opening.open_socket(request, ssl_context, deadline)
            try:
                response = _upgrade(request, sock, deadline)
            except BaseException:
                close_without_reset(sock)
                raise
        try:
            subprotocol = _chosen_subprotocol(request, response)
        except BaseException:
            close_without_reset(sock)
            raise
        return cls(sock, subprotocol, max_message_size)

    @property
    def raw_socket(self) -> socket.socket:
        """The underlying socket, for diagnostics and tests; reading or writing it breaks framing."""
        return self._sock

    @property
    def closed(self) -> bool:
        """True once close() released the socket."""
        return self._sock.fileno() == -1

    @property
    def subprotocol(self) -> Optional[str]:
        return self._subprotocol

    def recv(self) -> Union[Message, CloseFrame]:
        try:
            while True:
                event = self._reader.read()
                if isinstance(event, Ping):
                    self._writer.write_control(_framing.encode_frame(_OPCODE_PONG, event.payload, os.urandom(4)))
                    continue
                if isinstance(event, Pong):
                    on_pong = self.on_pong
                    if on_pong is not None:
                        on_pong(event.payload)
                    continue
                return event
        except TransportError:
            raise
        except (OSError, ValueError) as exc:
            if self._shut:
                raise TransportError("transport shut down") from exc
            raise TransportError(f"read failed: {exc!r}") from exc

    def send_batch(self, messages: Sequence[Message]) -> None:
        self._writer.write(_framing.encode_messages(messages))

    def send_now(self, message: Message) -> Optional[object]:
        return self._writer.write_now(_framing.encode_messages([message])[0])

    def send_rest(self, rest: object) -> None:
        assert isinstance(rest, bytes)
        self._writer.finish(rest)

    def last_sign_of_life(self) -> float:
        return max(self._reader.heard_at, self._writer.last_progress())

    def set_write_timeout(self, timeout: Optional[float]) -> None:
        super().set_write_timeout(timeout)
        self._writer.stall_timeout = timeout

    def send_ping(self, payload: bytes, timeout: Optional[float]) -> None:
        frame = _framing.encode_frame(_OPCODE_PING, payload, os.urandom(4))
        try:
            self._writer.write_control(frame, deadline_after(timeout))
        except TransportError:
            raise
        except (OSError, ValueError) as exc:
            raise TransportError(f"cannot send a ping: {exc!r}") from exc

    def send_close(self, code: int, reason: str, timeout: Optional[float] = None) -> None:
        frame = _framing.encode_frame(_framing.OPCODE_CLOSE, _framing.close_payload(code, reason), os.urandom(4))
        self._writer.write([frame], deadline_after(timeout))

    def shutdown(self) -> None:
        self._shut = True
        shutdown_quietly(self._sock)

    def close(self, timeout: Optional[float] = None, *, clean: bool = False) -> None:
        try:
            if clean:
                # RFC 6455 7.1.1: after the close handshake the server closes TCP first; the
                # client waits for that (so the server, not us, holds TIME_WAIT), within what is left.
                await_end_of_stream(self._sock, deadline_after(timeout))
        finally:
            # Even if the wait was interrupted (Ctrl-C): close() is called once, and must close.
            close_without_reset(self._sock)
            self._reader.release()

    def forget(self) -> None:
        # Closing our descriptor only drops this process's reference: no FIN, no shutdown, and
        # for TLS no close_notify (CPython's SSL socket sends none on close()).
        self._sock.close()
        self._reader.release()


# -- the opening handshake, by websocket-client --------------------------------------------------------


def _handshake_options(request: _opening.ClientRequest) -> Dict[str, Any]:
    header = [f"{name}: {value}" for name, value in request.headers]
    if request.subprotocols:
        # Offered here rather than through websocket-client's own option: that one fails the
        # connection when the server picks none (RFC 6455 lets it) and lowercases its choice.
        header.append(f"Sec-WebSocket-Protocol: {', '.join(request.subprotocols)}")
    return {
        "header": header,
        "host": request.host_header,
        # The caller's Origin replaces websocket-client's default one rather than doubling it.
        "suppress_origin": request.has_origin,
        # A redirect would open a second connection outside the deadline and to a host nobody
        # checked; a 3xx answer is reported as HandshakeRejected instead.
        "redirect_limit": 0,
    }


def _upgrade(request: _opening.ClientRequest, sock: socket.socket, deadline: Optional[float]) -> Any:
    """The HTTP upgrade on our socket, every read and write within ``deadline``."""
    channel = _opening.HandshakeSocket(sock, deadline, request.url)
    # Typed as Any: websocket-client's methods carry no annotations, which mypy --strict rejects.
    ws: Any = websocket.WebSocket(enable_multithread=False)
    try:
        ws.connect(request.wire_url, socket=_Latin1Request(channel), **_handshake_options(request))
    except BaseException as exc:  # noqa: BLE001 - translated, then raised by reraise()
        _opening.reraise(_translate(request, exc, bytes(channel.answer), deadline), exc)
    finally:
        ws.sock = None  # websocket-client must not touch our socket again
    response = ws.handshake_response
    if response is None or response.status != 101:
        # Some versions return a redirect they were told not to follow as if it had opened.
        raise _opening.refusal(request, bytes(channel.answer), ValueError("not 101 Switching Protocols"))
    # What websocket-client's dict of headers cannot show: a header repeated, or present empty.
    channel.check_accepted()
    return response


class _Latin1Request:
    """websocket-client encodes its request as UTF-8; header values go out as ISO-8859-1.

    Every header value was checked to be ISO-8859-1, as http.client sends them, and the simple-
    websocket backend sends the same bytes; re-encoding here makes the request identical.
    """

    def __init__(self, channel: _opening.HandshakeSocket) -> None:
        self._channel = channel

    def send(self, data: bytes) -> int:
        try:
            data = data.decode("utf-8").encode("latin-1")
        except UnicodeError:
            pass  # something outside our checks (a cookie websocket-client kept): leave it be
        return self._channel.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


def _translate(
    request: _opening.ClientRequest, exc: BaseException, answer: bytes, deadline: Optional[float]
) -> BaseException:
    """A failure of websocket-client's handshake as one of our documented exceptions."""
    if isinstance(exc, ConnectError):
        return exc
    if isinstance(exc, websocket.WebSocketTimeoutException) or _is_timeout(exc):
        return _opening.timeout_error(request, deadline)
    if isinstance(exc, websocket.WebSocketBadStatusException):
        status = exc.status_code
        return HandshakeRejected(status, f"{request.url}: answered HTTP {status}, not a WebSocket upgrade")
    if isinstance(exc, Exception):
        # Whatever websocket-client raises parsing an answer (versions differ: IndexError for
        # a status line without a code, UnicodeDecodeError, WebSocketException...) says the
        # answer was not a valid upgrade; the original stays in __cause__.
        return _opening.refusal(request, answer, exc)
    return exc  # KeyboardInterrupt and the like: not ours to translate


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (socket.timeout, TimeoutError))


def _chosen_subprotocol(request: _opening.ClientRequest, response: Any) -> Optional[str]:
    """The server's choice, checked as RFC 6455 4.1 says (websocket-client checks neither)."""
    headers: Dict[str, str] = response.headers if response is not None else {}
    if "sec-websocket-extensions" in headers:  # even empty: we offered none
        raise ConnectError(f"{request.url}: the server accepted an extension we did not offer")
    chosen = headers.get("sec-websocket-protocol")
    if chosen is None:
        return None
    if chosen not in request.subprotocols:
        raise ConnectError(f"{request.url}: the server chose the subprotocol {chosen!r}, which we did not offer")
    return chosen


# -- through a proxy named in the environment --------------------------------------------------------
#
# There websocket-client reads the answer from a socket of its own: the checks of HandshakeSocket
# (the limit on the answer's head, a repeated handshake header) do not apply; open_timeout
# bounds each read, and a Sec-WebSocket-Extensions header, even empty, is still refused.


def _proxy_for(request: _opening.ClientRequest) -> Optional[Tuple[Any, ...]]:
    """The proxy websocket-client would use for this URL (from http_proxy and friends), if any."""
    try:
        from websocket._url import get_proxy_info
    except ImportError:  # pragma: no cover - a websocket-client without it: connect directly
        return None
    try:
        host, port, auth = get_proxy_info(request.host, request.secure)
    except Exception:  # noqa: BLE001 - a proxy variable websocket-client cannot read: connect directly
        return None
    return (host, port, auth) if host else None


def _open_through_proxy(
    request: _opening.ClientRequest, ssl_context: Any, deadline: Optional[float]
) -> Tuple[socket.socket, Any]:
    """The whole opening by websocket-client, which knows the proxies (HTTP CONNECT, SOCKS).

    There open_timeout bounds each step rather than their sum: websocket-client opens the
    socket itself. Nothing else is left to it.
    """
    sslopt: Dict[str, Any] = {} if ssl_context is None else {"context": ssl_context}
    ws: Any = websocket.WebSocket(sslopt=sslopt, enable_multithread=False)
    options = _handshake_options(request)
    try:
        ws.connect(request.wire_url, timeout=remaining(deadline), **options)
    except BaseException as exc:  # noqa: BLE001 - translated, then raised by reraise()
        ws.shutdown()
        _opening.reraise(_through_proxy_error(request, exc, deadline), exc)
    sock: socket.socket = ws.sock
    ws.sock = None
    response = ws.handshake_response
    if response is None or response.status != 101:
        close_without_reset(sock)
        status = 0 if response is None else int(response.status)
        raise HandshakeRejected(status, f"{request.url}: answered HTTP {status}, not a WebSocket upgrade")
    return sock, response


def _through_proxy_error(
    request: _opening.ClientRequest, exc: BaseException, deadline: Optional[float]
) -> BaseException:
    error = _translate(request, exc, b"", deadline)
    if type(error) is ConnectError:  # nothing of the answer to tell by: say where it failed
        return ConnectError(f"{request.url}: cannot connect through the proxy from the environment: {exc}")
    return error
