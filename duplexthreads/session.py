"""``Duplex``: the public API of one connection run by a reader and a writer.

The application talks to the threads only through queues: ``send`` puts on the outbound queue,
``recv`` takes from the inbound queue. Everything about how the connection ends lives in the
exit protocol (``_protocol.py``); this class checks arguments and translates what the protocol
says into the exceptions the API promises.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Type, Union

from ._causes import AbortRequest, close_request
from ._deadline import deadline_after, remaining, timeout_arg
from ._protocol import ExitProtocol, Phase
from ._queues import Sealed
from ._rfc6455 import check_close_code, check_close_reason
from .exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, TransportError, UsageError
from .report import ExitReport, Message
from .transports.base import TimeoutWriteError, Transport

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PING_TIMEOUT",
    "Duplex",
]

#: Seconds a graceful close may take (flush, close frame, the peer's answer) before it is cut.
DEFAULT_CLOSE_TIMEOUT = 5.0
#: Messages each of the outbound and inbound queues holds before ``send`` or the reader waits.
DEFAULT_MAX_QUEUE = 1024
#: Seconds between the heartbeat's pings, and how long after a ping the peer may stay silent
#: before the connection is ended (the values websockets uses).
DEFAULT_PING_INTERVAL = 20.0
DEFAULT_PING_TIMEOUT = 20.0
#: Bytes an incoming message may have, whole or in fragments (1 MiB, as websockets); a larger
#: one fails the connection with close code 1009.
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20

#: What send() accepts: text as ``str``, binary as any of the bytes-like types.
Sendable = Union[str, bytes, bytearray, memoryview]

_RESERVED_ROLES = frozenset({"reader", "writer", "owner", "backend", "heartbeat"})
_ROLE_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class Duplex:
    """A WebSocket connection run as a team of threads.

    ``transport`` is an open :class:`~duplexthreads.transports.Transport`. Messages arrive through
    ``recv()`` (or iteration), or through ``on_message(message)`` called in the reader thread; an
    exception raised by ``on_message`` ends the connection as a read error. ``max_queue`` bounds
    both queues, in messages (``None`` for no bound). ``close_timeout`` bounds a graceful
    ``close()`` (``None`` waits for the peer forever).

    A connection lives until it is closed, even when nothing references it any more: its
    threads hold it. At interpreter exit, connections still open are closed gracefully
    (queued messages are sent, then close code 1001), each within its ``close_timeout``;
    ``close_at_exit=False`` leaves this one to be cut off instead.

    Liveness: a heartbeat thread pings the peer every ``ping_interval`` seconds, and ends the
    connection (reason ``HEARTBEAT_TIMEOUT``, close code 1011) when nothing at all arrives for
    ``ping_timeout`` seconds after a ping; ``None`` turns either off. ``write_timeout`` ends the
    connection (reason ``WRITE_TIMEOUT``) when a write makes no progress for that long, which
    is what a peer that stopped reading looks like; ``None``, the default, waits forever.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        on_message: Optional[Callable[[Message], None]] = None,
        max_queue: Optional[int] = DEFAULT_MAX_QUEUE,
        close_timeout: Optional[float] = DEFAULT_CLOSE_TIMEOUT,
        close_at_exit: bool = True,
        ping_interval: Optional[float] = DEFAULT_PING_INTERVAL,
        ping_timeout: Optional[float] = DEFAULT_PING_TIMEOUT,
        write_timeout: Optional[float] = None,
    ) -> None:
        if not isinstance(transport, Transport):
            raise TypeError(f"transport must be a duplexthreads Transport, not {type(transport).__name__}")
        options = SessionOptions(
            on_message=on_message,
            max_queue=max_queue,
            close_timeout=close_timeout,
            close_at_exit=close_at_exit,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            write_timeout=write_timeout,
        ).check()
        self.transport = transport
        self.id = transport.connection_id
        self.close_timeout = timeout_arg(close_timeout, "close_timeout")
        self._receives_by_callback = on_message is not None
        self._direct_writes = transport.direct_writes
        self._protocol = ExitProtocol(
            transport,
            on_message=options.on_message,
            max_queue=options.max_queue,
            close_timeout=self.close_timeout,
            close_at_exit=options.close_at_exit,
            ping_interval=timeout_arg(options.ping_interval, "ping_interval"),
            ping_timeout=timeout_arg(options.ping_timeout, "ping_timeout"),
            write_timeout=timeout_arg(options.write_timeout, "write_timeout"),
        )

    # -- lifecycle -----------------------------------------------------------------------------------

    def add_worker(self, role: str, target: Callable[[threading.Event], None]) -> None:
        """Run ``target(quit)`` in one more thread of the team, from ``start()``/``run()`` on.

        ``target`` must return promptly once the ``quit`` event it is given is set (wait on it
        with ``quit.wait(interval)``, never ``time.sleep``). If it returns or raises first, the
        connection ends with reason ``WORKER_EXIT``. Raises ``UsageError`` after start.
        """
        if not isinstance(role, str):
            raise TypeError(f"role must be a str, not {type(role).__name__}")
        if not _ROLE_PATTERN.fullmatch(role) or role in _RESERVED_ROLES:
            raise ValueError(
                f"invalid worker role {role!r}: use a short lowercase name other than {sorted(_RESERVED_ROLES)}"
            )
        if not callable(target):
            raise TypeError("target must be callable")
        self._protocol.check_usable()
        self._protocol.add_worker(role, target)

    def start(self) -> Duplex:
        """Start the reader and writer (and added workers); return at once (``self``).

        No thread waits idle for the end: the first worker to end, or the thread that calls
        ``close()``/``abort()``, takes the owner's role and runs the teardown. Raises
        ``UsageError`` if the connection was already started.
        """
        self._protocol.start()
        return self

    def run(self) -> ExitReport:
        """Start the workers and act as the owner in this thread until the connection ends.

        A ``KeyboardInterrupt`` while waiting aborts the connection, tears it down, then
        propagates.
        """
        return self._protocol.run()

    def close(self, code: int = 1000, reason: str = "", timeout: Optional[float] = None) -> Optional[ExitReport]:
        """Close gracefully and return the report; safe to call twice and from any thread.

        Messages already queued are written first, then the close frame, then the peer's answer
        is awaited. ``timeout`` bounds this whole close (``None``: the connection's
        ``close_timeout``; ``float('inf')``: no limit). When it runs out the connection is torn
        down at once and the report's ``error`` says the handshake did not finish; ``close()``
        never raises ``TimeoutError``. A second ``close()`` with less time shortens the close
        under way.

        Called from one of the connection's own threads (an ``on_message`` callback), it starts
        the close and returns ``None`` at once, since waiting there would wait for itself.
        Before ``start()`` there is nothing to hand over: the transport is closed at once and
        anything queued comes back in ``report.unsent``. In a child process that inherited the
        connection through ``fork()``, it only releases the child's copy of the socket and
        returns ``None``; the parent's connection is untouched.
        """
        check_close_code(code)
        check_close_reason(reason)
        limit = self.close_timeout if timeout is None else timeout_arg(timeout, "timeout")
        return self._protocol.request_end(close_request(code, reason, limit))

    def abort(self) -> Optional[ExitReport]:
        """End the connection at once, without a close handshake; return the report.

        Queued messages are returned in ``report.unsent``. From the connection's own threads it
        returns ``None`` without waiting, like ``close()``.
        """
        return self._protocol.request_end(AbortRequest())

    def wait(self, timeout: Optional[float] = None) -> ExitReport:
        """Block until the connection has ended and every thread of it has exited.

        Raises ``TimeoutError`` if it is still open after ``timeout`` seconds, and
        ``UsageError`` from one of the connection's own threads (it would wait for itself).
        """
        timeout = timeout_arg(timeout, "timeout")
        self._protocol.check_usable()
        return self._protocol.wait(timeout)

    # -- messages ------------------------------------------------------------------------------------

    def send(self, message: Sendable, timeout: Optional[float] = None) -> None:
        """Queue ``message`` for the writer: ``str`` as text, bytes-like as binary.

        Blocks while the outbound queue is full, up to ``timeout`` (then ``TimeoutError``).
        Raises ``TypeError`` for anything else and ``ValueError`` for text that UTF-8 cannot
        encode (a lone surrogate), leaving the connection unharmed, and
        :class:`ConnectionClosed` once the connection is closing or closed.
        """
        # as_message(), written out: this is the hot path of every message.
        if isinstance(message, str):
            if not message.isascii():
                check_encodable(message)
            item: Message = message
        elif isinstance(message, bytes):
            item = message
        elif isinstance(message, (bytearray, memoryview)):
            item = bytes(message)  # a copy: later changes by the caller must not leak into the frame
        else:
            raise TypeError(f"send() takes str, bytes, bytearray or memoryview, not {type(message).__name__}")
        protocol = self._protocol
        if protocol.inherited:
            protocol.check_usable()
        if timeout is not None:
            timeout = timeout_arg(timeout, "timeout")
        outbound = protocol.outbound
        if self._direct_writes and outbound.claim_direct():
            # The writer is idle and nothing is queued: write here and spare a thread hand-off.
            # The write cannot block; what it could not finish goes to the writer, in order.
            rest: Optional[object] = item
            try:
                rest = self.transport.send_now(item)
            finally:
                # If an exception escaped (Ctrl-C between bytecodes), the message is resent
                # whole: send_now itself never raises once a byte is out.
                outbound.release_direct(item, None if rest is item else rest, complete=rest is None)
            return
        try:
            outbound.put(item, timeout=timeout)
        except Sealed:
            raise self._closed_error(deadline_after(timeout)) from None
        except queue.Full:
            raise TimeoutError(f"outbound queue still full after {timeout} s") from None

    def recv(self, timeout: Optional[float] = None) -> Message:
        """Return the next message; ``TimeoutError`` after ``timeout`` seconds without one.

        Once the connection is closed and every message received before has been returned,
        raises :class:`ConnectionClosed`. Raises ``UsageError`` on a connection that delivers
        its messages to an ``on_message`` callback.
        """
        if self._receives_by_callback:
            raise UsageError("recv() is not available: messages go to the on_message callback")
        protocol = self._protocol
        if protocol.inherited:
            protocol.check_usable()
        if timeout is not None:
            timeout = timeout_arg(timeout, "timeout")
        try:
            return protocol.inbound.get(timeout=timeout)
        except Sealed:
            raise self._closed_error(deadline_after(timeout)) from None
        except queue.Empty:
            raise TimeoutError(f"no message within {timeout} s") from None

    def __iter__(self) -> Iterator[Message]:
        """Yield messages until a normal close; an abnormal end raises ConnectionClosedError."""
        while True:
            try:
                yield self.recv()
            except ConnectionClosedOK:
                return

    def ping(self, timeout: Optional[float] = None, *, payload: Optional[bytes] = None) -> float:
        """Send a ping and return its round trip in seconds, once the pong is back.

        ``payload`` (at most 125 bytes; random by default) is what the pong must carry.
        Raises ``TimeoutError`` when no pong came within ``timeout`` (None: wait until the
        connection ends), :class:`ConnectionClosed` once the connection is closing or closed
        (also while waiting), and ``UsageError`` before ``start()``. Safe from any thread.
        """
        if payload is not None:
            if not isinstance(payload, (bytes, bytearray, memoryview)):
                raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
            payload = bytes(payload)
            if len(payload) > 125:
                raise ValueError(f"a ping payload is at most 125 bytes, not {len(payload)}")
        timeout = timeout_arg(timeout, "timeout")
        protocol = self._protocol
        protocol.check_usable()
        if protocol.phase is Phase.NEW:
            raise UsageError("ping() needs a started connection: call start() first")
        if protocol.in_reader_thread():
            # The pong is read by this very thread (on websocket-client): it would wait for itself.
            raise UsageError("ping() called from the reader thread (an on_message callback) would wait for itself")
        deadline = deadline_after(timeout)
        pings = protocol.pings
        if payload is None:
            payload = pings.new_payload()
        started = time.monotonic()
        sent = pings.register(payload, waited=True)
        try:
            if protocol.quit.is_set() or protocol.phase in (Phase.CLOSING, Phase.ENDING, Phase.CLOSED):
                raise self._closed_error(deadline)
            try:
                self.transport.send_ping(payload, remaining(deadline))
                sent.written = True
            except TimeoutWriteError:
                raise TimeoutError(
                    f"the ping could not be sent within {timeout} s: another write holds the socket"
                ) from None
            except TransportError:
                raise self._closed_error(deadline) from None  # the connection is failing or closing
            if not sent.answered.wait(remaining(deadline)):
                raise TimeoutError(f"no pong within {timeout} s")
        finally:
            pings.release(payload, sent)
        answered_at = sent.answered_at
        if answered_at is None:
            raise self._closed_error(deadline)
        return max(0.0, answered_at - started)

    # -- state -----------------------------------------------------------------------------------------

    @property
    def latency(self) -> Optional[float]:
        """The round trip, in seconds, of the last ping answered (heartbeat or ``ping()``); None before."""
        return self._protocol.pings.latency

    @property
    def report(self) -> Optional[ExitReport]:
        """The exit report, or ``None`` while the connection is open."""
        return self._protocol.report

    @property
    def closed(self) -> bool:
        """True once the connection has ended and its threads have been stopped."""
        return self._protocol.finished.is_set()

    @property
    def subprotocol(self) -> Optional[str]:
        return self.transport.subprotocol

    @property
    def opened_at(self) -> Tuple[Tuple[str, int, str], ...]:
        """Where the application opened this connection: (file, line, function), innermost first."""
        return self._protocol.opened_at

    def threads(self) -> Tuple[threading.Thread, ...]:
        """Every thread started for this connection so far, the backend's included."""
        return self._protocol.threads()

    def __enter__(self) -> Duplex:
        self._protocol.check_usable()
        return self.start() if self._protocol.phase is Phase.NEW else self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Duplex {self.id} {self.transport.backend} {self._protocol.phase.value}>"

    # -- internals --------------------------------------------------------------------------------------

    def _closed_error(self, deadline: Optional[float]) -> ConnectionClosed:
        """The exception for send/recv on a closing or closed connection.

        Waits, within the caller's own timeout, for the report, and joins the threads as wait()
        does, so that when a loop over recv() ends the connection is gone. In one of the
        connection's own threads, or when the timeout runs out first, there is no report yet.
        """
        protocol = self._protocol
        report = protocol.report_by(deadline)
        if report is not None and report.ok:
            return ConnectionClosedOK(report)
        message = None if report is not None else f"connection {protocol.connection_id} closing"
        return ConnectionClosedError(report, message, connection_id=protocol.connection_id)


def as_message(message: object, caller: str = "send()") -> Message:
    """``message`` as a connection sends it: text checked for UTF-8, bytes-like copied to bytes.

    ``TypeError`` (naming ``caller``) for anything else, ``ValueError`` for text UTF-8 cannot
    encode; both before anything is queued.
    """
    if isinstance(message, str):
        if not message.isascii():
            check_encodable(message)
        return message
    if isinstance(message, bytes):
        return message
    if isinstance(message, (bytearray, memoryview)):
        return bytes(message)  # a copy: later changes by the caller must not leak into the frame
    raise TypeError(f"{caller} takes str, bytes, bytearray or memoryview, not {type(message).__name__}")


def check_encodable(text: str) -> None:
    """Raise ``ValueError`` at the call for text UTF-8 cannot encode, before it is queued."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text message is not encodable as UTF-8 (a lone surrogate?): {exc}") from None


@dataclass(frozen=True)
class SessionOptions:
    """The options every connection takes, in one place for connect(), accept() and Duplex."""

    on_message: Optional[Callable[[Message], None]] = None
    max_queue: Optional[int] = DEFAULT_MAX_QUEUE
    close_timeout: Optional[float] = DEFAULT_CLOSE_TIMEOUT
    close_at_exit: bool = True
    ping_interval: Optional[float] = DEFAULT_PING_INTERVAL
    ping_timeout: Optional[float] = DEFAULT_PING_TIMEOUT
    write_timeout: Optional[float] = None

    def check(self) -> SessionOptions:
        """Raise ``TypeError``/``ValueError`` naming a wrong option, before any I/O; return self."""
        max_queue = self.max_queue
        if max_queue is not None:
            if not isinstance(max_queue, int) or isinstance(max_queue, bool):
                raise TypeError(f"max_queue must be an int or None, not {type(max_queue).__name__}")
            if max_queue < 1:
                raise ValueError(f"max_queue must be at least 1 (or None for no bound), not {max_queue}")
        timeout_arg(self.close_timeout, "close_timeout")
        for name in ("ping_interval", "ping_timeout", "write_timeout"):
            value = getattr(self, name)
            if timeout_arg(value, name) == 0:
                raise ValueError(f"{name} must be a number of seconds > 0 (None turns it off), not {value!r}")
        if self.on_message is not None and not callable(self.on_message):
            raise TypeError(f"on_message must be callable, not {type(self.on_message).__name__}")
        if not isinstance(self.close_at_exit, bool):
            raise TypeError(f"close_at_exit must be True or False, not {type(self.close_at_exit).__name__}")
        return self

    def as_kwargs(self) -> Dict[str, Any]:
        """The options as keyword arguments of ``Duplex`` (and ``connect``)."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


def start_session(transport: Transport, options: SessionOptions, *, start: bool = True) -> Duplex:
    """A Duplex over a freshly opened transport, which is closed if that fails; started unless
    ``start`` is False (then the caller may add workers first)."""
    try:
        conn = Duplex(transport, **options.as_kwargs())
    except BaseException:
        transport.shutdown()
        transport.close(0)
        raise
    if not start:
        return conn
    return conn.start()  # if a thread cannot start, start() itself tears the transport down
