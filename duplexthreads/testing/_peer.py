"""ScriptedPeer, ScriptedClient and PeerConnection: the public face of the scripted peer.

Both modes expose one :class:`PeerConnection` class. What differs is the driver underneath: one
calls the connection's :class:`Endpoint` directly (``isolated=False``), the other forwards the
same calls, by the same names, to the child process (``isolated=True``).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from types import TracebackType
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Type, Union

from ._behaviour import Behaviour, check_close, check_message, close_pair, greeting_tuple, handshake_answer_bytes
from ._checks import (
    check_bool,
    check_header_text,
    check_headers,
    check_seconds,
    check_tokens,
    check_wait,
    check_whole,
    check_ws_url,
)
from ._endpoint import Endpoint
from ._record import CloseFrame, Message
from ._remote import PeerProcess
from ._server import LocalServer, open_client
from ._wire import VIOLATIONS


def _check_owner(pid: int, what: str) -> None:
    """Refuse a call from a process forked off the one that made the peer: its copies of the
    pipes and sockets are shared with that process, whose calls and replies they would cut into."""
    if os.getpid() != pid:
        raise RuntimeError(
            f"{what} belongs to process {pid}, not to this one ({os.getpid()}), which was forked off it:"
            " only close() works here, and releases this process's copies of its pipes or sockets"
        )


class _Driver:
    """How a PeerConnection reaches its connection: directly, or through the child process."""

    def call(self, op: str, args: Sequence[Any], budget: float) -> Any:
        raise NotImplementedError


class _LocalDriver(_Driver):
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def call(self, op: str, args: Sequence[Any], budget: float) -> Any:
        return self.endpoint.call(op, args)


class _RemoteDriver(_Driver):
    def __init__(self, process: PeerProcess, index: int) -> None:
        self.process = process
        self.index = index

    def call(self, op: str, args: Sequence[Any], budget: float) -> Any:
        record = self.process.final_record(self.index)
        if record is None:
            return self.process.request(op, self.index, args, budget=budget)
        # The child is gone: what it recorded is still there to read; nothing can be sent.
        if op in Endpoint.RECORD_CALLS:
            return getattr(record, op)(*args)
        if op in ("stop_reading", "resume_reading", "go_silent"):
            return None
        raise ConnectionError(f"the connection has ended ({record.observe('ended_by')}): its peer is closed")


def _bytes(name: str, data: object) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes, bytearray or memoryview, not {type(data).__name__}")
    return bytes(data)


class PeerConnection:
    """One connection of a :class:`ScriptedPeer` (server role) or :class:`ScriptedClient`.

    The same object in both modes. See :mod:`duplexthreads.testing` for what each control sends
    and each observation means. Waits default to the peer's ``timeout``.
    """

    def __init__(self, driver: _Driver, *, role: str, index: int, timeout: float) -> None:
        self._driver = driver
        #: ``"server"`` for a ScriptedPeer's connection, ``"client"`` for a ScriptedClient's.
        self.role = role
        #: Its place in the order the peer accepted clients, from 0.
        self.index = index
        self._timeout = timeout
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"<PeerConnection {self.role} #{self.index}>"

    def _call(self, op: str, *args: Any, budget: float = 0.0) -> Any:
        _check_owner(self._pid, repr(self))
        return self._driver.call(op, args, budget)

    def _seconds(self, timeout: Optional[float]) -> float:
        seconds = check_wait("timeout", timeout)
        return self._timeout if seconds is None else seconds

    # -- controls ----------------------------------------------------------------------------------

    def send(self, message: Union[str, bytes]) -> None:
        """Send one message: ``str`` as text, bytes as binary."""
        check_message(message)
        self._call("send", message)

    def send_fragmented(self, message: Union[str, bytes], fragment_size: int) -> None:
        """Send one message cut every ``fragment_size`` bytes (UTF-8 sequences are cut too)."""
        check_message(message)
        check_whole("fragment_size", fragment_size, minimum=1)
        self._call("send_fragmented", message, fragment_size)

    def send_raw(self, data: bytes) -> None:
        """Send ``data`` as it is: hand-built frames (see ``encode_frame``), garbage, anything."""
        self._call("send_raw", _bytes("data", data))

    def ping(self, payload: bytes = b"") -> None:
        """Send a ping carrying ``payload`` (at most 125 bytes)."""
        payload = _bytes("payload", payload)
        if len(payload) > 125:
            raise ValueError(f"payload: a ping carries at most 125 bytes, not {len(payload)}; violate('long-ping')")
        self._call("ping", payload)

    def close(self, code: Optional[int] = 1000, reason: str = "") -> None:
        """Send a close frame; ``code=None`` sends one with an empty payload (no status code).

        Only what RFC 6455 lets an endpoint send: ``ValueError`` for another code (use
        ``violate('bad-close-code-...')`` for those) or a reason over 123 bytes of UTF-8.
        """
        check_close(code, reason, name="close()")
        self._call("close", code, reason)

    def reset(self) -> None:
        """End TCP with RST (``SO_LINGER`` 0, then close), whatever the WebSocket state."""
        self._call("reset", budget=self._timeout)

    def drop(self) -> None:
        """End TCP with FIN and no close frame; what the client sends after is still recorded."""
        self._call("drop")

    def stop_reading(self) -> None:
        """Read nothing more (after the read in progress): the client's writes eventually block."""
        self._call("stop_reading")

    def resume_reading(self) -> None:
        self._call("resume_reading")

    def go_silent(self) -> None:
        """From now on, answer no close frame and no ping; keep reading."""
        self._call("go_silent")

    def violate(self, name: str) -> None:
        """Send the protocol violation ``name``, one of :data:`VIOLATIONS`."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, one of VIOLATIONS, not {name!r} ({type(name).__name__})")
        if name not in VIOLATIONS:
            raise ValueError(f"unknown violation {name!r}; known: {', '.join(sorted(VIOLATIONS))}")
        self._call("violate", name)

    # -- observations ------------------------------------------------------------------------------

    @property
    def received(self) -> List[Message]:
        """Every whole message received and kept so far, in order."""
        return self._call("observe", "received")  # type: ignore[no-any-return]

    @property
    def dropped(self) -> List[Message]:
        """The messages ``drop_every`` discarded."""
        return self._call("observe", "dropped")  # type: ignore[no-any-return]

    @property
    def close_frames(self) -> List[CloseFrame]:
        """Every close frame received, as (code, reason); code None for an empty payload."""
        return self._call("observe", "close_frames")  # type: ignore[no-any-return]

    @property
    def pongs(self) -> List[bytes]:
        return self._call("observe", "pongs")  # type: ignore[no-any-return]

    @property
    def protocol_errors(self) -> List[Tuple[int, str]]:
        """Frames from the other side that broke RFC 6455, as (close code sent, why)."""
        return self._call("observe", "protocol_errors")  # type: ignore[no-any-return]

    @property
    def ended_by(self) -> Optional[str]:
        """How TCP ended: ``"eof"``, ``"reset"``, ``"peer"`` (this side first), or None while open."""
        return self._call("observe", "ended_by")  # type: ignore[no-any-return]

    @property
    def first_to_end_tcp(self) -> Optional[str]:
        """Which side ended TCP first, as seen from here: ``"client"`` or ``"server"`` (by role,
        this side included), ``"reset"`` (the other side, with RST), or None while neither has."""
        return self._call("observe", "first_to_end_tcp")  # type: ignore[no-any-return]

    @property
    def ended(self) -> bool:
        """Whether the connection is over: its socket is closed and its thread done."""
        return self._call("observe", "ended")  # type: ignore[no-any-return]

    @property
    def unread_at_close(self) -> Optional[int]:
        """Bytes the other side sent that were never read when the socket closed (None while open)."""
        return self._call("observe", "unread_at_close")  # type: ignore[no-any-return]

    @property
    def request_target(self) -> Optional[str]:
        """The upgrade request's path and query, e.g. ``"/chat?room=1"``."""
        return self._call("observe", "request_target")  # type: ignore[no-any-return]

    @property
    def request_headers(self) -> List[Tuple[str, str]]:
        """The upgrade request's header fields, names spelled as they were sent, in order."""
        return self._call("observe", "request_headers")  # type: ignore[no-any-return]

    @property
    def response_status(self) -> Optional[int]:
        """The status that answered the upgrade: 101, or the refusal's; None for a ``handshake_answer``."""
        return self._call("observe", "response_status")  # type: ignore[no-any-return]

    @property
    def response_headers(self) -> List[Tuple[str, str]]:
        return self._call("observe", "response_headers")  # type: ignore[no-any-return]

    @property
    def subprotocol(self) -> Optional[str]:
        return self._call("observe", "subprotocol")  # type: ignore[no-any-return]

    @property
    def handshake_error(self) -> Optional[str]:
        """Why the upgrade request was refused or never completed; None if it was accepted."""
        return self._call("observe", "handshake_error")  # type: ignore[no-any-return]

    def wait_messages(self, count: int, timeout: Optional[float] = None) -> List[Message]:
        """All messages received once there are ``count``; ``TimeoutError`` says how many came,
        ``ConnectionError`` if the connection ended first."""
        check_whole("count", count, minimum=0)
        seconds = self._seconds(timeout)
        return self._call("wait_messages", count, seconds, budget=seconds)  # type: ignore[no-any-return]

    def wait_close_frame(self, timeout: Optional[float] = None) -> CloseFrame:
        """The first close frame received, as (code, reason)."""
        seconds = self._seconds(timeout)
        return self._call("wait_close_frame", seconds, budget=seconds)  # type: ignore[no-any-return]

    def wait_pongs(self, count: int = 1, timeout: Optional[float] = None) -> List[bytes]:
        check_whole("count", count, minimum=0)
        seconds = self._seconds(timeout)
        return self._call("wait_pongs", count, seconds, budget=seconds)  # type: ignore[no-any-return]

    def wait_ended(self, timeout: Optional[float] = None) -> bool:
        """Whether the connection ended within ``timeout``."""
        seconds = self._seconds(timeout)
        return self._call("wait_ended", seconds, budget=seconds)  # type: ignore[no-any-return]


class ScriptedPeer:
    """A WebSocket server on loopback that behaves as told; see :mod:`duplexthreads.testing`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        isolated: bool = True,
        echo: bool = False,
        drop_every: Optional[int] = None,
        silent: bool = False,
        stop_reading: bool = False,
        greeting: Union[List[Union[str, bytes]], Tuple[Union[str, bytes], ...]] = (),
        close_after_greeting: Optional[Tuple[Optional[int], str]] = None,
        greeting_with_handshake: bool = True,
        reject: Optional[int] = None,
        trickle_handshake: Optional[float] = None,
        strict_host: bool = False,
        subprotocols: Union[List[str], Tuple[str, ...]] = (),
        handshake_answer: Union[str, bytes, None] = None,
        linger_after_close: Optional[float] = None,
        timeout: float = 10.0,
    ) -> None:
        # Everything is checked here, before a child process or a socket exists, so that both
        # modes refuse the same arguments with the same exceptions.
        if not isinstance(host, str):
            raise TypeError(f"host must be a str (an address of this machine), not {host!r} ({type(host).__name__})")
        if not host:
            raise ValueError("host must name an address of this machine, such as '127.0.0.1' or '::1', not ''")
        check_whole("port", port, minimum=0, maximum=65535, what="a TCP port (an int; 0: any free one)")
        check_bool("isolated", isolated)
        behaviour = Behaviour(
            echo=echo,
            drop_every=drop_every,
            silent=silent,
            stop_reading=stop_reading,
            greeting=greeting_tuple(greeting),
            close_after_greeting=close_pair("close_after_greeting", close_after_greeting),
            greeting_with_handshake=greeting_with_handshake,
            reject=reject,
            trickle_handshake=trickle_handshake,
            strict_host=strict_host,
            subprotocols=check_tokens("subprotocols", subprotocols),
            handshake_answer=handshake_answer_bytes(handshake_answer),
            linger_after_close=linger_after_close,
            timeout=timeout,
        )
        self.host = host
        self.isolated = isolated
        self.timeout = timeout
        self._pid = os.getpid()
        self._process: Optional[PeerProcess] = None
        self._server: Optional[LocalServer] = None
        if isolated:
            options = {"host": host, "port": port, "behaviour": asdict(behaviour)}
            self._process = PeerProcess("server", options, timeout=timeout, start_budget=0.0)
            self.port: int = self._process.started
        else:
            self._server = LocalServer(behaviour, host, port)
            self.port = self._server.port

    @property
    def url(self) -> str:
        """``ws://host:port/``; append a path and query as needed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}/"

    def __repr__(self) -> str:
        return f"<ScriptedPeer {self.url} {'isolated' if self.isolated else 'in-process'}>"

    def next_connection(self, timeout: Optional[float] = None) -> PeerConnection:
        """The next client's connection, in the order clients were accepted, once its upgrade
        request has been answered. ``TimeoutError`` if no new client connects in time."""
        _check_owner(self._pid, repr(self))
        wait = check_wait("timeout", timeout)
        seconds = self.timeout if wait is None else wait
        if self._process is not None:
            index = self._process.request("next_connection", None, [seconds], budget=seconds)
            return PeerConnection(_RemoteDriver(self._process, index), role="server", index=index, timeout=self.timeout)
        assert self._server is not None
        endpoint = self._server.next_connection(seconds)
        return PeerConnection(_LocalDriver(endpoint), role="server", index=endpoint.index, timeout=self.timeout)

    def close(self) -> None:
        """Stop serving and end every connection (no close frame); wait for all of it, bounded.

        Idempotent. Raises ``TimeoutError`` if a thread of the in-process mode did not stop.

        In a process forked off the one that made the peer, it only closes that process's copies
        of the pipes (or sockets): the peer serves on, for the process that made it.
        """
        if os.getpid() != self._pid:
            if self._process is not None:
                self._process.release_copy()
            elif self._server is not None:
                self._server.release_copy()
            return
        if self._process is not None:
            self._process.close()
        elif self._server is not None:
            stuck = self._server.close()
            if stuck:
                raise TimeoutError(f"scripted peer threads did not stop within {self.timeout:g} s: {stuck}")

    def __enter__(self) -> ScriptedPeer:
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()


class ScriptedClient:
    """A WebSocket client that behaves as told, for testing a server; see :mod:`duplexthreads.testing`."""

    def __init__(
        self,
        url: str,
        *,
        isolated: bool = True,
        host_header: Optional[str] = None,
        headers: Union[Mapping[str, str], Sequence[Tuple[str, str]]] = (),
        subprotocols: Union[List[str], Tuple[str, ...]] = (),
        timeout: float = 10.0,
    ) -> None:
        self.url = check_ws_url("url", url)
        self.isolated = check_bool("isolated", isolated)
        self.timeout = check_seconds("timeout", timeout)
        self._host_header = None if host_header is None else check_header_text("host_header", host_header)
        self._headers = check_headers("headers", headers)
        self._subprotocols = list(check_tokens("subprotocols", subprotocols))
        self._behaviour = Behaviour(timeout=timeout)
        self._pid = os.getpid()
        self._process: Optional[PeerProcess] = None
        self._endpoint: Optional[Endpoint] = None
        self._connection: Optional[PeerConnection] = None

    def open(self, timeout: Optional[float] = None) -> PeerConnection:
        """Connect and complete the opening handshake within ``timeout`` (default: ``timeout``).

        Raises :class:`HandshakeRefused` (a ``ConnectionError`` with ``.status``) when the server
        answers anything but 101, ``TimeoutError`` or another ``OSError`` when it cannot be
        reached. Nothing is left running when it raises.
        """
        _check_owner(self._pid, "this ScriptedClient")
        if self._connection is not None:
            raise RuntimeError("this ScriptedClient is already open")
        check_ws_url("url", self.url)
        seconds = self.timeout if timeout is None else check_seconds("timeout", timeout)
        if self.isolated:
            options = {
                "url": self.url,
                "behaviour": asdict(self._behaviour),
                "host_header": self._host_header,
                "headers": self._headers,
                "subprotocols": self._subprotocols,
                "timeout": seconds,
            }
            self._process = PeerProcess("client", options, timeout=self.timeout, start_budget=seconds)
            driver: _Driver = _RemoteDriver(self._process, self._process.started)
        else:
            self._endpoint = open_client(
                self.url,
                self._behaviour,
                host_header=self._host_header,
                headers=self._headers,
                subprotocols=self._subprotocols,
                timeout=seconds,
            )
            driver = _LocalDriver(self._endpoint)
        self._connection = PeerConnection(driver, role="client", index=0, timeout=self.timeout)
        return self._connection

    @property
    def connection(self) -> PeerConnection:
        """The controls and observations of the open connection."""
        if self._connection is None:
            raise RuntimeError("this ScriptedClient is not open: call open() or use it in a with block")
        return self._connection

    def close(self) -> None:
        """End the connection (no close frame) and wait for its thread or process, bounded.

        In a process forked off the one that opened it, only that process's copies of the pipes
        (or the socket) are closed: the connection goes on, for the process that opened it.
        """
        if os.getpid() != self._pid:
            if self._process is not None:
                self._process.release_copy()
            elif self._endpoint is not None:
                self._endpoint.release_copy()
            return
        if self._process is not None:
            self._process.close()
        elif self._endpoint is not None:
            self._endpoint.stop()
            if not self._endpoint.join(time.monotonic() + self.timeout):
                raise TimeoutError(f"the scripted client's thread did not stop within {self.timeout:g} s")

    def __enter__(self) -> ScriptedClient:
        self.open()
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()
