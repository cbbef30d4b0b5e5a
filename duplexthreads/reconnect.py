"""A client that outlives its connections: ``connect(url, reconnect=True)``.

A :class:`ReconnectingClient` looks like one connection (``send``, ``recv``, iteration,
``close``, ``abort``, ``wait``, ``report``) but is a series of them. When a connection ends
abnormally the client opens a new one, after a pause that grows with each failure
(:class:`Backoff`), and carries on where the old one stopped.

Opening. The first connection is opened by the constructor, in the caller's thread: if it
fails the error is raised right there, because a wrong URL or a refused token must be loud.
From then on one supervisor thread per client (a daemon named
``duplexthreads-<id>-reconnect``) waits for the current connection to end, reports it, and
decides what comes next. Every thread of the old connection has exited before the next
connection is opened (one stuck in an ``on_message`` callback past the connection's backstop
is named in that report's ``lingering`` and logged instead).

What ends the client for good:

- ``close()`` or ``abort()``; also a close or abort of the current connection made on this
  side by anyone else (``client.connection.close()``, ``close_all()``, or the exit hook that
  closes connections at interpreter exit), since someone on this side wanted it over;
- the peer's normal close, code 1000 or a close frame without a code (1005, what a plain
  ``close()`` in a browser or Node sends), unless ``reconnect_on_normal_close=True``;
- a reconnect answered with an HTTP 4xx status, other than 408 and 429: a rejected token or a
  wrong path will not fix itself;
- ``Backoff.max_attempts`` reconnect attempts in a row that failed to open or whose connection
  ended within ``reset_after`` seconds, or an opener that raises something other
  than :class:`~duplexthreads.ConnectError` (a bug: it is logged and not retried).

Everything else is retried: a refused or timed-out opening, a 5xx, 408 or 429, a reset or a
connection that ended without a close frame, a heartbeat or write timeout, and every close code
but 1000 and 1005 (1001 "going away" is what a restarting server sends).

Backoff. The pause before a reconnect grows from ``initial`` by ``factor`` per consecutive
failure up to ``cap``, and ``jitter`` takes a random part of it off so that many clients of one
server do not come back in step. A failure is an opening that failed, and also a connection
that ended less than ``reset_after`` seconds after it opened: a server that accepts and then
drops every connection must not be reconnected to in a tight loop. A connection that stayed
open that long starts the series again from ``initial``.

Sending. While connected and nothing is waiting, ``send`` goes straight to the connection.
When the connection ends, what it had accepted but not written (its report's ``unsent``) is
kept, in order, ahead of what the application sends while the client is disconnected; those
wait in a queue of ``max_queue`` messages (``send`` waits for room, up to its ``timeout``).
After reconnecting, ``on_open(conn)`` runs first, then the kept messages are handed to the new
connection in order, and only then does ``send`` go direct again. The client itself never drops
or repeats a message, and keeps the order of the messages of each sending thread.

What ``written`` can promise. A connection counts a message as written once all of its bytes
were handed to the operating system. That is not delivery: when a connection is reset or the
peer's process dies, what was still in the kernel's buffers, on the wire, or read but not yet
handled by the peer is lost, and neither side's WebSocket layer can tell which messages those
were. The client does not send a written message again, so a loss shows as a gap just before
the reset. A message a connection had not written goes out again on the next connection, whole
(a frame cut off by the reset never reached the peer as a message). So each message the client
accepts is written once, by one connection, or ends in the final ``unsent``; the peer gets it
at most once, in send order, with possible gaps at resets, never a repeat. An application that
needs every message to arrive must have its peer acknowledge them (number the messages, let
the peer say which number it has), and after a reconnect send again what was not acknowledged,
ignoring repeats on the peer's side.

Accounting: each connection's report counts what it wrote; the client's final ``report`` is
the last connection's report, with ``unsent`` holding everything still waiting when the client
stopped. So ``sum(r.written for r in client.reports) + len(client.report.unsent)`` is the
number of messages ``send`` accepted.

Receiving. ``recv`` reads the connections in the order they were opened, each until it is
drained, so messages that arrived just before a connection ended are not lost. Once the client
has stopped for good and everything is read, ``recv`` raises :class:`ConnectionClosedOK` (a
final report that is ``ok``) or :class:`ConnectionClosedError`, and iteration ends quietly on
the first. The messages of a connection that ended unread are kept until they are read; a
client that never calls ``recv`` should pass ``on_message`` to its connections instead.

Callbacks. ``on_open(conn)`` runs for each connection before anything else is sent on it (the
first one in the caller's thread, the later ones in the supervisor thread), so it is the place
to authenticate or subscribe with ``conn.send(...)``. ``on_close(report)`` runs in the
supervisor thread for each connection that ended, before the client decides what comes next.
An exception raised by either is logged on the ``"duplexthreads"`` logger and otherwise
ignored. ``close()`` from a callback starts the close and returns None without waiting, since
the callback runs in the thread that would have to finish it.

Logging goes to the ``"duplexthreads"`` logger: each end and reconnect at INFO, each failed
opening and giving up at WARNING, a callback or opener that raised at ERROR with its traceback.

At interpreter exit the current connection is closed like any other (what it holds is sent,
then 1001), which ends the client; messages waiting while disconnected are lost then, since
there is no connection to send them on.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Callable, Deque, Iterator, List, Optional, Tuple, Type, Union

from ._deadline import deadline_after, remaining, timeout_arg
from ._rfc6455 import NO_STATUS_CODE, NORMAL_CLOSURE, check_close_code, check_close_reason
from .exceptions import (
    ConnectError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    HandshakeRejected,
    UsageError,
)
from .report import ExitReport, Message, Reason
from .session import DEFAULT_MAX_QUEUE, Duplex, Sendable, as_message
from .transports.base import new_connection_id, thread_name

__all__ = ["Backoff", "ReconnectingClient", "connect_reconnecting"]

logger = logging.getLogger("duplexthreads")

#: HTTP statuses of the 4xx class that say "later", not "never": retried like a 5xx.
RETRIED_4XX = frozenset({408, 429})

#: Close codes of the peer's that end the client for good (unless reconnect_on_normal_close).
NORMAL_END_CODES = frozenset({NORMAL_CLOSURE, NO_STATUS_CODE})


def _seconds(name: str, value: object, *, positive: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"Backoff {name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"Backoff {name} must be a finite number {bound}, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class Backoff:
    """How long a :class:`ReconnectingClient` waits before each reconnect attempt.

    Before the ``n``-th attempt in a row (``n`` from 1) the pause is ``initial * factor **
    (n - 1)`` seconds, at most ``cap``; ``jitter`` (0 to 1) then takes up to that fraction of it
    off at random, so the pause is drawn uniformly between ``(1 - jitter)`` times that and that
    itself. ``jitter=0`` waits exactly the schedule, ``jitter=1`` anything from 0 to it ("full
    jitter"). The pause never exceeds ``cap``.

    ``max_attempts`` reconnect attempts in a row that failed to open, or opened a connection
    that ended within ``reset_after``, end the client for good (None: never give up).
    A connection that stays open ``reset_after`` seconds starts the series again from
    ``initial``; one that ends sooner counts as one more failure, so that a server which accepts
    and drops at once is not hammered. ``reset_after=0`` resets on every successful opening.

    Every field is checked when the object is made (``TypeError``/``ValueError`` naming it).
    """

    initial: float = 0.1
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.5
    max_attempts: Optional[int] = None
    reset_after: float = 10.0

    def __post_init__(self) -> None:
        initial = _seconds("initial", self.initial, positive=True)
        cap = _seconds("cap", self.cap, positive=True)
        _seconds("reset_after", self.reset_after)
        factor = self.factor
        if not isinstance(factor, (int, float)) or isinstance(factor, bool):
            raise TypeError(f"Backoff factor must be a number, not {type(factor).__name__}")
        if not (math.isfinite(factor) and factor >= 1):
            raise ValueError(f"Backoff factor must be a finite number >= 1, not {factor!r}")
        jitter = self.jitter
        if not isinstance(jitter, (int, float)) or isinstance(jitter, bool):
            raise TypeError(f"Backoff jitter must be a number from 0 to 1, not {type(jitter).__name__}")
        if not 0 <= jitter <= 1:  # also refuses NaN
            raise ValueError(f"Backoff jitter must be from 0 to 1 (a fraction of the pause), not {jitter!r}")
        if cap < initial:
            raise ValueError(f"Backoff cap ({self.cap!r}) must be at least initial ({self.initial!r})")
        attempts = self.max_attempts
        if attempts is not None:
            if not isinstance(attempts, int) or isinstance(attempts, bool):
                raise TypeError(f"Backoff max_attempts must be an int or None, not {type(attempts).__name__}")
            if attempts < 1:
                raise ValueError(f"Backoff max_attempts must be at least 1 (or None: no limit), not {attempts}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The pause, in seconds, before attempt number ``attempt`` (1 for the first) in a row.

        ``rng`` draws the jitter: pass ``random.Random(seed)`` for a repeatable series.
        """
        if not isinstance(attempt, int) or isinstance(attempt, bool):
            raise TypeError(f"attempt must be an int, not {type(attempt).__name__}")
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, not {attempt}")
        if not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, not {type(rng).__name__}")
        try:
            grown = self.initial * self.factor ** (attempt - 1)
        except OverflowError:
            grown = math.inf
        pause = min(float(self.cap), grown)
        return pause - pause * self.jitter * rng.random()


def backoff_arg(reconnect: object) -> Backoff:
    """``reconnect=``: True (the default :class:`Backoff`) or a Backoff."""
    if isinstance(reconnect, Backoff):
        return reconnect
    if reconnect is True:
        return Backoff()
    if reconnect is False:
        raise ValueError("reconnect=False asks for a plain connection: call connect() without reconnect")
    raise TypeError(f"reconnect must be True, False or a Backoff, not {type(reconnect).__name__}")


class _State(enum.Enum):
    CONNECTED = "connected"  # send goes straight to the connection; nothing is waiting
    ENDING = "ending"  # the connection refused a send: it is ending, sends wait for the next
    DISCONNECTED = "disconnected"  # between connections: in on_close, in a backoff pause
    OPENING = "opening"  # an opening is in flight
    REPLAYING = "replaying"  # on_open, then what waited is handed to the new connection
    FINISHED = "finished"  # stopped for good; the final report is published


@dataclass(frozen=True)
class _Stop:
    """What the application asked for: a close (with its frame and time) or an abort."""

    abort: bool
    code: int = NORMAL_CLOSURE
    reason: str = ""
    timeout: Optional[float] = None

    def limit(self, conn: Duplex) -> Optional[float]:
        """Seconds for handing over what waits and closing ``conn``."""
        return conn.close_timeout if self.timeout is None else self.timeout


def _pause(seconds: float, stop: threading.Event) -> None:
    # Past threading.TIMEOUT_MAX (292 years) a wait overflows; that long is forever anyway.
    stop.wait(min(seconds, threading.TIMEOUT_MAX))


class ReconnectingClient:
    """One logical connection made of successive real ones; see :mod:`duplexthreads.reconnect`.

    ``opener()`` opens and returns a started :class:`Duplex`, or raises
    :class:`~duplexthreads.ConnectError` (including ``HandshakeRejected`` and ``ConnectTimeout``);
    it is called once here, in the caller's thread (its exception propagates), then by the
    supervisor thread for each reconnect. ``max_queue`` bounds the messages the application may
    queue while disconnected (None: no bound); the unsent messages of the connection that ended
    come on top of it.

    ``rng``, ``pause`` and ``clock`` are for tests: the jitter's random source, the wait before a
    reconnect (``pause(seconds, stop)`` must return early once the event ``stop`` is set), and the
    clock that measures how long a connection stayed open (for ``Backoff.reset_after``).
    """

    def __init__(
        self,
        opener: Callable[[], Duplex],
        *,
        backoff: Optional[Backoff] = None,
        reconnect_on_normal_close: bool = False,
        on_open: Optional[Callable[[Duplex], Any]] = None,
        on_close: Optional[Callable[[ExitReport], Any]] = None,
        max_queue: Optional[int] = DEFAULT_MAX_QUEUE,
        rng: Optional[random.Random] = None,
        pause: Optional[Callable[[float, threading.Event], Any]] = None,
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        if not callable(opener):
            raise TypeError(f"opener must be callable, not {type(opener).__name__}")
        if backoff is None:
            backoff = Backoff()
        elif not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff, not {type(backoff).__name__}")
        if not isinstance(reconnect_on_normal_close, bool):
            raise TypeError(
                f"reconnect_on_normal_close must be True or False, not {type(reconnect_on_normal_close).__name__}"
            )
        for name, callback in (("on_open", on_open), ("on_close", on_close), ("pause", pause), ("clock", clock)):
            if callback is not None and not callable(callback):
                raise TypeError(f"{name} must be callable or None, not {type(callback).__name__}")
        if max_queue is not None:
            if not isinstance(max_queue, int) or isinstance(max_queue, bool):
                raise TypeError(f"max_queue must be an int or None, not {type(max_queue).__name__}")
            if max_queue < 1:
                raise ValueError(f"max_queue must be at least 1 (or None for no bound), not {max_queue}")
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random or None, not {type(rng).__name__}")

        self.id = new_connection_id()
        self.backoff = backoff
        self.reconnect_on_normal_close = reconnect_on_normal_close
        self.max_queue = max_queue
        self._opener = opener
        self._on_open = on_open
        self._on_close = on_close
        self._rng = rng if rng is not None else random.Random()
        self._pause = pause if pause is not None else _pause
        self._clock = clock if clock is not None else time.monotonic

        # One condition guards everything below; every change notifies all waiters.
        self._cond = threading.Condition()
        self._state = _State.OPENING
        self._current: Optional[Duplex] = None
        #: Messages waiting for a connection, oldest first.
        self._pending: Deque[Message] = deque()
        #: Connections recv() has not drained yet, oldest first.
        self._unread: Deque[Duplex] = deque()
        self._reports: List[ExitReport] = []
        self._report: Optional[ExitReport] = None
        self._stop: Optional[_Stop] = None
        self._attempts = 0
        self._last_error: Optional[BaseException] = None
        # Set with _stop: what the backoff pause waits on. Only the supervisor reads these two.
        self._stop_event = threading.Event()
        self._failures = 0
        #: When the current connection opened, on ``clock``: how long it lived decides the backoff.
        self._opened_at = 0.0
        # The caller's thread while it opens the first connection: it plays the supervisor's
        # part then (on_open, handing over what waits), so it is one of the client's own threads.
        self._first_opener: Optional[threading.Thread] = threading.current_thread()
        # A client inherited by a child process through fork() belongs to the parent.
        self._pid = os.getpid()

        try:
            conn = self._open_first()
        finally:
            self._first_opener = None
        self._thread = threading.Thread(
            target=self._supervise, args=(conn,), name=thread_name(self.id, "reconnect"), daemon=True
        )
        try:
            self._thread.start()
        except BaseException:
            conn.abort()
            raise

    # -- the application's side ----------------------------------------------------------------

    def send(self, message: Sendable, timeout: Optional[float] = None) -> None:
        """Send ``message`` (``str`` as text, bytes-like as binary) on the current connection,
        or keep it for the next one while disconnected.

        Waits up to ``timeout`` for room (the connection's queue, or ``max_queue`` while
        disconnected), then raises ``TimeoutError``. ``TypeError``/``ValueError`` for a message
        that cannot be sent; :class:`ConnectionClosed` once the client is closing or closed.
        """
        item = as_message(message)
        self._check_not_inherited()
        if timeout is not None:
            timeout = timeout_arg(timeout, "timeout")
        deadline = deadline_after(timeout)
        refused: Optional[Duplex] = None  # a connection that raised ConnectionClosed for this message
        limit = self.max_queue
        # The client's own threads must not wait for room: only the supervisor makes room, and
        # it may be waiting for them (a callback, or on_message replying through the client).
        in_callback = self._own_thread()[1]
        while True:
            with self._cond:
                while True:
                    if self._stop is not None or self._state is _State.FINISHED:
                        break
                    conn = self._current
                    if self._state is _State.CONNECTED and conn is not None and conn is not refused:
                        break
                    if self._state is _State.CONNECTED:
                        # The connection refused a message: it is ending. From now on messages
                        # wait here, after its unsent ones, until the next connection.
                        self._state = _State.ENDING
                    if limit is None or in_callback or len(self._pending) < limit:
                        self._pending.append(item)
                        self._cond.notify_all()
                        return
                    left = remaining(deadline)
                    if left == 0:
                        raise TimeoutError(
                            f"{len(self._pending)} messages still wait for a connection after {timeout} s"
                        )
                    self._cond.wait(left)
                stopped = self._stop is not None or self._state is _State.FINISHED
            if stopped:
                raise self._closed_error(deadline)
            assert conn is not None
            try:
                conn.send(item, remaining(deadline))
                return
            except ConnectionClosed:
                refused = conn

    def recv(self, timeout: Optional[float] = None) -> Message:
        """The next message, from the oldest connection not yet drained.

        Waits across reconnects, up to ``timeout`` (then ``TimeoutError``). Once the client has
        stopped for good and every message was returned, raises :class:`ConnectionClosed`.
        """
        if timeout is not None:
            timeout = timeout_arg(timeout, "timeout")
        self._check_not_inherited()
        deadline = deadline_after(timeout)
        while True:
            with self._cond:
                while not self._unread:
                    if self._state is _State.FINISHED:
                        raise self._final_error()
                    left = remaining(deadline)
                    if left == 0:
                        raise TimeoutError(f"no message within {timeout} s")
                    self._cond.wait(left)
                conn = self._unread[0]
            try:
                return conn.recv(remaining(deadline))
            except ConnectionClosed:
                # Drained for good: move on to the next connection.
                with self._cond:
                    if self._unread and self._unread[0] is conn:
                        self._unread.popleft()

    def __iter__(self) -> Iterator[Message]:
        """Yield messages until the client stops; an abnormal end raises ConnectionClosedError."""
        while True:
            try:
                yield self.recv()
            except ConnectionClosedOK:
                return

    def close(self, code: int = 1000, reason: str = "", timeout: Optional[float] = None) -> Optional[ExitReport]:
        """Stop for good: hand what waits to the connection, close it, and return the final report.

        ``timeout`` bounds handing over and the close handshake together (None: the connection's
        ``close_timeout``). While disconnected it returns at once, what waited in
        ``report.unsent``. An opening in flight is waited for (its ``open_timeout`` bounds it);
        the new connection gets ``on_open`` and what waited, then is closed. From a callback or
        one of the connection's threads it starts the close and returns None. Safe to call
        twice, and from any thread.
        """
        check_close_code(code)
        check_close_reason(reason)
        timeout = timeout_arg(timeout, "timeout")
        if os.getpid() != self._pid:
            # No supervisor exists here: release this process's copy of the connection only.
            current = self._current
            if current is not None:
                current.close()
            return None
        supervisor, own = self._own_thread()
        with self._cond:
            if self._stop is None:
                self._stop = _Stop(abort=False, code=code, reason=reason, timeout=timeout)
            self._stop_event.set()
            self._cond.notify_all()
            if not own:
                while self._state is _State.OPENING:
                    self._cond.wait()
            conn, state = self._current, self._state
            if conn is not None and state is _State.REPLAYING and not own:
                # The supervisor is handing over what waited; it gets the close's time for that.
                limit = timeout if timeout is not None else conn.close_timeout
                deadline = deadline_after(limit)
                self._cond.wait_for(lambda: self._current is not conn or self._state is not _State.REPLAYING, limit)
                timeout = remaining(deadline)
        if conn is not None and not supervisor and (state is not _State.REPLAYING or not own):
            conn.close(code, reason, timeout)
        if own:
            return self._report
        self._thread.join()
        return self._report

    def abort(self) -> Optional[ExitReport]:
        """Stop for good at once: the connection is aborted, what waited goes to ``report.unsent``.

        An opening in flight is waited for and the new connection aborted. From a callback or
        one of the connection's threads it returns None without waiting.
        """
        if os.getpid() != self._pid:
            return self.close()  # in a child: release this process's copy only, as close() does
        _, own = self._own_thread()
        with self._cond:
            if self._stop is None or not self._stop.abort:
                self._stop = _Stop(abort=True)
            self._stop_event.set()
            self._cond.notify_all()
            conn = self._current
        if conn is not None:
            conn.abort()
        if own:
            return self._report
        self._thread.join()
        return self._report

    def wait(self, timeout: Optional[float] = None) -> ExitReport:
        """Block until the client has stopped for good and every thread of it has exited.

        ``TimeoutError`` if it still runs after ``timeout`` seconds; ``UsageError`` from a
        callback or one of the connection's threads (it would wait for itself).
        """
        timeout = timeout_arg(timeout, "timeout")
        self._check_not_inherited()
        if self._own_thread()[1]:
            raise UsageError("wait() called from the client's own threads would wait for itself")
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"reconnecting client {self.id} still running after {timeout} s")
        report = self._report
        assert report is not None, "the supervisor publishes the final report before it ends"
        return report

    def _check_not_inherited(self) -> None:
        if os.getpid() != self._pid:
            raise UsageError(
                f"reconnecting client {self.id} was inherited through fork(): it belongs to the parent "
                "process, and this process may only close() it"
            )

    # -- state -------------------------------------------------------------------------------------

    @property
    def report(self) -> Optional[ExitReport]:
        """The final report once the client has stopped for good, else None.

        It is the last connection's report, with ``unsent`` holding every message that was still
        waiting, and ``error`` the exception that made the client give up, if it gave up.
        """
        return self._report

    @property
    def reports(self) -> Tuple[ExitReport, ...]:
        """The report of every connection that ended, in order."""
        with self._cond:
            return tuple(self._reports)

    @property
    def connection(self) -> Optional[Duplex]:
        """The current connection, or None between connections.

        For ``ping()``, ``latency`` or ``subprotocol``. Send through the client: a message sent on
        the connection itself may overtake messages still waiting to be handed over.
        """
        return self._current

    @property
    def closed(self) -> bool:
        """True once the client has stopped for good and its last connection's threads are gone."""
        return self._report is not None

    @property
    def attempts(self) -> int:
        """Attempts in a row that failed to open, or whose connection ended within
        ``reset_after`` (what ``max_attempts`` counts); 0 again once a connection lasts."""
        return self._attempts

    @property
    def last_error(self) -> Optional[BaseException]:
        """The exception of the last opening that failed, or None if none has."""
        return self._last_error

    @property
    def pending(self) -> int:
        """How many messages wait for a connection."""
        with self._cond:
            return len(self._pending)

    def __enter__(self) -> ReconnectingClient:
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ReconnectingClient {self.id} {self._state.value}, {len(self._reports)} connections ended>"

    # -- internals: the application's side -----------------------------------------------------

    def _own_thread(self) -> Tuple[bool, bool]:
        """(in the supervisor thread, in the supervisor or one of the current connection's threads)."""
        me = threading.current_thread()
        if me is getattr(self, "_thread", None) or me is self._first_opener:
            return True, True
        conn = self._current
        return False, conn is not None and me in conn.threads()

    def _closed_error(self, deadline: Optional[float]) -> ConnectionClosed:
        """For send() once stopping: the final report if it comes within the caller's time."""
        if not self._own_thread()[1]:
            self._thread.join(remaining(deadline))
        report = self._report
        if report is not None:
            return self._final_error()
        return ConnectionClosedError(None, f"reconnecting client {self.id} is closing")

    def _final_error(self) -> ConnectionClosed:
        report = self._report
        assert report is not None
        if report.ok:
            return ConnectionClosedOK(report)
        return ConnectionClosedError(report)

    # -- internals: the supervisor -------------------------------------------------------------

    def _open_first(self) -> Duplex:
        """The first connection, in the caller's thread: any failure is the caller's."""
        conn = self._opener()
        if not isinstance(conn, Duplex):
            raise TypeError(f"opener must return a started Duplex, not {type(conn).__name__}")
        self._opened_at = self._clock()
        with self._cond:
            self._current = conn
            self._state = _State.REPLAYING
            self._unread.append(conn)
        try:
            # As for every later connection: on_open, what it sent meanwhile, a close it asked for.
            self._replay(conn)
        except BaseException:  # Ctrl-C in the callback: nothing may be left running
            conn.abort()
            raise
        return conn

    def _supervise(self, conn: Duplex) -> None:
        last: Optional[ExitReport] = None
        give_up: Optional[BaseException] = None
        current: Optional[Duplex] = conn
        try:
            while current is not None:
                last = current.wait()
                lived = self._clock() - self._opened_at
                if last.lingering:
                    logger.warning(
                        "reconnecting client %d: threads of connection %d did not end: %s",
                        self.id,
                        last.connection_id,
                        ", ".join(last.lingering),
                    )
                self._ended(current, last)
                self._call("on_close", self._on_close, last)
                if lived >= self.backoff.reset_after:
                    self._failures = 0
                    with self._cond:
                        self._attempts = 0
                elif self._why_stop(last) is None and len(self._reports) > 1:
                    # A reconnection that did not last counts as a failed attempt, so that a
                    # server which accepts and drops at once also exhausts max_attempts (the
                    # first connection is no attempt: max_attempts bounds the reconnecting).
                    with self._cond:
                        self._attempts += 1
                        exhausted = (
                            self.backoff.max_attempts is not None and self._attempts >= self.backoff.max_attempts
                        )
                    if exhausted:
                        give_up = ConnectError(
                            f"{self._attempts} attempts in a row failed or ended within reset_after "
                            f"({self.backoff.reset_after:g} s): {last.describe()}"
                        )
                        logger.warning("reconnecting client %d gives up: %s", self.id, give_up)
                        break
                why = self._why_stop(last)
                if why is not None:
                    logger.info("reconnecting client %d stops: %s (%s)", self.id, why, last.describe())
                    break
                self._failures += 1  # a connection that ended before reset_after counts
                logger.info("reconnecting client %d: connection ended (%s)", self.id, last.describe())
                current, give_up = self._reconnect()
                if current is not None:
                    self._replay(current)
        finally:
            with self._cond:
                leftover = self._current
            if leftover is not None:  # only after an unexpected exception: leave nothing running
                leftover.abort()
                last = leftover.wait()
                self._ended(leftover, last)
            self._finish(last, give_up)

    def _why_stop(self, report: ExitReport) -> Optional[str]:
        with self._cond:
            stop = self._stop
        if stop is not None:
            return "aborted" if stop.abort else "closed"
        if report.reason in (Reason.LOCAL_CLOSE, Reason.ABORTED):
            return "the connection was closed on this side"
        if (
            report.reason is Reason.PEER_CLOSED
            and report.close_code in NORMAL_END_CODES
            and not self.reconnect_on_normal_close
        ):
            return "the peer closed normally"
        return None

    def _reconnect(self) -> Tuple[Optional[Duplex], Optional[BaseException]]:
        """Pause and open until a connection opens (returned) or the client stops (None, why)."""
        while True:
            delay = self.backoff.delay(max(1, self._failures), self._rng)
            if not self._stop_event.is_set():
                logger.info("reconnecting client %d: next attempt in %.3f s", self.id, delay)
                self._pause(delay, self._stop_event)
            with self._cond:
                if self._stop is not None:
                    return None, None
                self._state = _State.OPENING
                self._cond.notify_all()
            try:
                conn = self._opener()
            except ConnectError as exc:
                final = isinstance(exc, HandshakeRejected) and 400 <= exc.status < 500 and exc.status not in RETRIED_4XX
                with self._cond:
                    self._attempts += 1
                    self._last_error = exc
                    self._state = _State.DISCONNECTED
                    self._cond.notify_all()
                    exhausted = self.backoff.max_attempts is not None and self._attempts >= self.backoff.max_attempts
                if final or exhausted:
                    why = "rejected" if final else f"{self._attempts} failed attempts in a row"
                    logger.warning("reconnecting client %d gives up (%s): %r", self.id, why, exc)
                    return None, exc
                logger.info("reconnecting client %d: attempt %d failed: %r", self.id, self._attempts, exc)
                self._failures += 1
                continue
            except Exception as exc:
                logger.exception("reconnecting client %d: the opener raised; not retrying", self.id)
                with self._cond:
                    self._last_error = exc
                    self._state = _State.DISCONNECTED
                    self._cond.notify_all()
                return None, exc
            except BaseException:
                with self._cond:
                    self._state = _State.DISCONNECTED
                    self._cond.notify_all()
                raise
            if not isinstance(conn, Duplex):
                error = TypeError(f"opener must return a started Duplex, not {type(conn).__name__}")
                with self._cond:
                    self._last_error = error
                    self._state = _State.DISCONNECTED
                    self._cond.notify_all()
                return None, error
            self._opened_at = self._clock()
            with self._cond:
                if self.backoff.reset_after == 0:
                    self._attempts = 0  # every opening counts as a success at once
                self._current = conn
                self._state = _State.REPLAYING
                self._unread.append(conn)
                self._cond.notify_all()
            logger.info("reconnecting client %d: connection %d open", self.id, conn.id)
            return conn, None

    def _replay(self, conn: Duplex) -> None:
        """on_open, then hand what waited to ``conn`` in order, then switch to direct sends."""
        with self._cond:
            stop = self._stop
        if stop is not None and stop.abort:
            conn.abort()
            return
        self._call("on_open", self._on_open, conn)
        deadline: Optional[float] = None
        closing = False
        while True:
            with self._cond:
                stop = self._stop
                if stop is not None and stop.abort:
                    break
                if stop is not None and not closing:
                    closing = True
                    deadline = deadline_after(stop.limit(conn))
                if not self._pending:
                    if self._current is conn:
                        self._state = _State.CONNECTED
                        self._cond.notify_all()
                    break
                message = self._pending[0]
            try:
                conn.send(message, remaining(deadline))
            except ConnectionClosed:
                return  # the connection is ending: what is left waits for the next one
            except TimeoutError:
                if deadline is None:
                    continue
                break  # a close is under way and its time ran out: the rest goes to unsent
            with self._cond:
                self._pending.popleft()
                self._cond.notify_all()
        with self._cond:
            stop = self._stop
        if stop is not None:
            if stop.abort:
                conn.abort()
            elif deadline is None:
                conn.close(stop.code, stop.reason, stop.limit(conn))
            else:
                conn.close(stop.code, stop.reason, remaining(deadline))

    def _ended(self, conn: Duplex, report: ExitReport) -> None:
        """``conn`` ended: its unsent messages go first in line, its report on the list."""
        with self._cond:
            if self._reports:
                # The error of an older report keeps its traceback, whose frames hold that
                # connection's transport, threads and queues: a flapping server would grow
                # memory by kilobytes per reconnect. The exceptions stay; their frames go.
                _forget_frames(self._reports[-1].error)
            self._reports.append(report)
            if self._current is conn:
                self._current = None
            self._pending.extendleft(reversed(report.unsent))
            self._state = _State.DISCONNECTED
            # Nothing is left to read in it: recv() need not visit it (the queue is sealed).
            if conn._protocol.inbound.empty():
                try:
                    self._unread.remove(conn)
                except ValueError:
                    pass
            self._cond.notify_all()

    def _finish(self, last: Optional[ExitReport], give_up: Optional[BaseException]) -> None:
        with self._cond:
            assert last is not None, "the supervisor ends only after a connection has ended"
            final = replace(last, unsent=tuple(self._pending))
            if give_up is not None:
                final = replace(final, error=give_up)
            self._pending.clear()
            self._report = final
            self._state = _State.FINISHED
            self._cond.notify_all()
        self._stop_event.set()

    def _call(self, name: str, callback: Optional[Callable[[Any], Any]], argument: object) -> None:
        if callback is None:
            return
        try:
            callback(argument)
        except Exception:
            logger.exception("reconnecting client %d: %s callback raised", self.id, name)


def _forget_frames(error: Optional[BaseException]) -> None:
    """Drop the tracebacks of ``error`` and the exceptions chained to it."""
    seen = 0
    while error is not None and seen < 16:
        error.__traceback__ = None
        error = error.__cause__ or error.__context__
        seen += 1


def connect_reconnecting(
    url: str,
    *,
    reconnect: Union[bool, Backoff],
    reconnect_on_normal_close: bool = False,
    on_open: Optional[Callable[[Duplex], Any]] = None,
    on_close: Optional[Callable[[ExitReport], Any]] = None,
    **connect_options: Any,
) -> ReconnectingClient:
    """Open a :class:`ReconnectingClient` to ``url``; ``connect(url, reconnect=...)`` calls this.

    ``connect_options`` are :func:`~duplexthreads.connect`'s, used for every connection; its
    ``max_queue`` also bounds what waits while disconnected. The first connection is opened
    here: anything wrong with it raises, as ``connect()`` does.
    """
    backoff = backoff_arg(reconnect)
    from . import client  # here: client imports this module

    def opener() -> Duplex:
        conn = client.connect(url, **connect_options)
        assert isinstance(conn, Duplex)  # without reconnect= it is a plain connection
        return conn

    return ReconnectingClient(
        opener,
        backoff=backoff,
        reconnect_on_normal_close=reconnect_on_normal_close,
        on_open=on_open,
        on_close=on_close,
        max_queue=connect_options.get("max_queue", DEFAULT_MAX_QUEUE),
    )
