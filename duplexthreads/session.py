"""``Duplex``: one connection run by a reader and a writer that live and die together.

The application talks to the threads only through queues and events: ``send`` puts on the
outbound queue, ``recv`` takes from the inbound queue. The owner's role (``_owner.py``) is taken
by whoever needs it first: the first worker to end, or the thread that calls ``close()`` or
``abort()``; in ``run()`` the calling thread holds it from the start. Later arrivals post on the
done queue, which only the owner reads. So no thread waits idle for the end.
"""

from __future__ import annotations

import enum
import functools
import queue
import re
import threading
import time
from types import TracebackType
from typing import Callable, Dict, Iterator, Optional, Tuple, Type, Union

from ._owner import AbortRequest, CloseRequest, Owner, Wiring, _Cause, remaining
from ._queues import SealableQueue, Sealed
from ._workers import WriterActivity, extra_worker, read_loop, run_worker, write_loop
from .exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK
from .report import ExitReport, Message, WorkerExit
from .transports.base import Transport, check_close_code

__all__ = ["DEFAULT_CLOSE_TIMEOUT", "DEFAULT_MAX_QUEUE", "Duplex"]

#: Seconds a graceful close may take (flush, close frame, the peer's answer) before it is cut.
DEFAULT_CLOSE_TIMEOUT = 5.0
#: Messages each of the outbound and inbound queues holds before ``send`` or the reader waits.
DEFAULT_MAX_QUEUE = 1024

#: What send() accepts: text as ``str``, binary as any of the bytes-like types.
Sendable = Union[str, bytes, bytearray, memoryview]

_RESERVED_ROLES = frozenset({"reader", "writer", "owner", "backend"})
_ROLE_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class Duplex:
    """A WebSocket connection run as a team of threads.

    ``transport`` is an open :class:`~duplexthreads.transports.Transport`. Messages arrive through
    ``recv()`` (or iteration), or through ``on_message(message)`` called in the reader thread; an
    exception raised by ``on_message`` ends the connection as a read error. ``max_queue`` bounds
    both queues, in messages (``None`` for no bound). ``close_timeout`` bounds ``close()``
    (``None`` waits for the peer forever).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        on_message: Optional[Callable[[Message], None]] = None,
        max_queue: Optional[int] = DEFAULT_MAX_QUEUE,
        close_timeout: Optional[float] = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        if not isinstance(transport, Transport):
            raise TypeError(f"transport must be a duplexthreads Transport, not {type(transport).__name__}")
        if max_queue is not None and (not isinstance(max_queue, int) or isinstance(max_queue, bool) or max_queue < 1):
            raise ValueError(f"max_queue must be a positive int or None, not {max_queue!r}")
        close_timeout = timeout_arg(close_timeout, "close_timeout")
        if on_message is not None and not callable(on_message):
            raise TypeError("on_message must be callable")
        self.transport = transport
        self.id = transport.connection_id
        self.close_timeout = close_timeout
        self._on_message = on_message
        # Set by the owner alone, once the connection is ending; every worker loop honours it.
        self._quit = threading.Event()
        # Application -> writer. Sealed by the owner; what is left in it becomes report.unsent.
        self._outbound: SealableQueue[Message] = SealableQueue(max_queue or 0)
        # Reader -> recv(). Sealed after the reader is told to stop; recv() drains it first.
        self._inbound: SealableQueue[Message] = SealableQueue(max_queue or 0)
        # Workers post their WorkerExit here unless they became the owner; close()/abort() post
        # requests here when someone else owns the teardown. Only the owner reads it.
        self._done: queue.SimpleQueue[object] = queue.SimpleQueue()
        # Set once the report is published; wait() and close() block on it.
        self._finished = threading.Event()
        # Guards _state, _workers, _owner_thread and _close_request against racing callers.
        self._lock = threading.Lock()
        self._state = _State.NEW
        self._workers: Dict[str, threading.Thread] = {}
        self._extra: Dict[str, Callable[[threading.Event], None]] = {}
        # A thread started only when close()/abort() cannot run the teardown in the caller.
        self._owner_thread: Optional[threading.Thread] = None
        # Whoever sets this first (under _lock) runs the exit protocol: see _claim_or_post.
        self._owner_claimed = False
        # True while start()/run() is starting threads: nobody may take the owner's role then,
        # since the owner joins every worker and some are not started yet.
        self._launching = False
        # Set by the writer while it may be inside a write (the owner answering a peer's close
        # must not wait for a write stuck on a peer that stopped reading).
        self._writer_activity = WriterActivity()
        self._close_request: Optional[Tuple[int, str]] = None
        self._report: Optional[ExitReport] = None

    # -- lifecycle -----------------------------------------------------------------------------------

    def add_worker(self, role: str, target: Callable[[threading.Event], None]) -> None:
        """Run ``target(quit)`` in one more thread of the team, from ``start()``/``run()`` on.

        ``target`` must return promptly once the ``quit`` event it is given is set (wait on it
        with ``quit.wait(interval)``, never ``time.sleep``). If it returns or raises first, the
        connection ends with reason ``WORKER_EXIT``.
        """
        if not isinstance(role, str) or not _ROLE_PATTERN.fullmatch(role) or role in _RESERVED_ROLES:
            raise ValueError(
                f"invalid worker role {role!r}: use a short lowercase name other than {sorted(_RESERVED_ROLES)}"
            )
        if not callable(target):
            raise TypeError("target must be callable")
        with self._lock:
            if self._state is not _State.NEW:
                raise RuntimeError("add_worker() must be called before start() or run()")
            if role in self._extra:
                raise ValueError(f"a worker with role {role!r} was already added")
            self._extra[role] = target

    def start(self) -> Duplex:
        """Start the reader and writer (and added workers); return at once (``self``).

        No thread waits idle for the end: the first worker to end, or the thread that calls
        ``close()``/``abort()``, takes the owner's role and runs the teardown.
        """
        self._launch(owned_by_caller=False)
        return self

    def run(self) -> ExitReport:
        """Start the workers and act as the owner in this thread until the connection ends.

        A ``KeyboardInterrupt`` while waiting aborts the connection, tears it down, then
        propagates.
        """
        self._launch(owned_by_caller=True)
        return self._own_here(None)

    def close(self, code: int = 1000, reason: str = "", timeout: Optional[float] = None) -> Optional[ExitReport]:
        """Close gracefully and return the report; safe to call twice and from any thread.

        Messages already queued are written first, then the close frame; the peer's answer is
        awaited for at most ``close_timeout`` in all, then the socket is shut down regardless.
        ``timeout`` bounds how long this call waits (``TimeoutError``); the teardown goes on
        regardless. Called from one of the connection's own threads (an ``on_message``
        callback), it starts the close and returns ``None`` at once, since waiting there would
        wait for itself. Before ``start()`` there is nothing to flush or hand over: the transport
        is closed at once, as by ``abort()``.
        """
        return self._request_end(close_request(code, reason), timeout_arg(timeout, "timeout"))

    def abort(self) -> Optional[ExitReport]:
        """End the connection at once, without a close handshake; return the report.

        Queued messages are returned in ``report.unsent``. From the connection's own threads it
        returns ``None`` without waiting, like ``close()``.
        """
        return self._request_end(AbortRequest(), None)

    def wait(self, timeout: Optional[float] = None) -> ExitReport:
        """Block until the connection has ended and every thread of it has exited."""
        timeout = timeout_arg(timeout, "timeout")
        if self._in_own_thread():
            raise RuntimeError("wait() called from one of the connection's own threads would wait for itself")
        deadline = _deadline(timeout)
        if not self._finished.wait(timeout):
            raise TimeoutError(f"connection {self.id} still open after {timeout} s")
        self._join_own_threads(deadline)
        assert self._report is not None
        return self._report

    # -- messages ------------------------------------------------------------------------------------

    def send(self, message: Sendable, timeout: Optional[float] = None) -> None:
        """Queue ``message`` for the writer: ``str`` as text, bytes-like as binary.

        Blocks while the outbound queue is full, up to ``timeout`` (then ``TimeoutError``).
        Raises ``TypeError`` for anything else, leaving the connection unharmed, and
        :class:`ConnectionClosed` once the connection is closing or closed.
        """
        if isinstance(message, (str, bytes)):
            item: Message = message
        elif isinstance(message, (bytearray, memoryview)):
            item = bytes(message)  # a copy: later changes by the caller must not leak into the frame
        else:
            raise TypeError(f"send() takes str, bytes, bytearray or memoryview, not {type(message).__name__}")
        timeout = timeout_arg(timeout, "timeout")
        deadline = _deadline(timeout)
        try:
            self._outbound.put(item, timeout=timeout)
        except Sealed:
            raise self._closed_error(deadline) from None
        except queue.Full:
            raise TimeoutError(f"outbound queue still full after {timeout} s") from None

    def recv(self, timeout: Optional[float] = None) -> Message:
        """Return the next message; ``TimeoutError`` after ``timeout`` seconds without one.

        Once the connection is closed and every message received before has been returned,
        raises :class:`ConnectionClosed`.
        """
        if self._on_message is not None:
            raise RuntimeError("recv() is not available: messages go to the on_message callback")
        timeout = timeout_arg(timeout, "timeout")
        deadline = _deadline(timeout)
        try:
            return self._inbound.get(timeout=timeout)
        except Sealed:
            raise self._closed_error(deadline) from None
        except queue.Empty:
            raise TimeoutError(f"no message within {timeout} s") from None

    def __iter__(self) -> Iterator[Message]:
        """Yield messages until a normal close; an abnormal end raises ConnectionClosedError."""
        while True:
            try:
                yield self.recv()
            except ConnectionClosedOK:
                return

    # -- state -----------------------------------------------------------------------------------------

    @property
    def report(self) -> Optional[ExitReport]:
        """The exit report, or ``None`` while the connection is open."""
        return self._report

    @property
    def closed(self) -> bool:
        """True once the connection has ended and its threads have been stopped."""
        return self._finished.is_set()

    @property
    def subprotocol(self) -> Optional[str]:
        return self.transport.subprotocol

    def threads(self) -> Tuple[threading.Thread, ...]:
        """Every thread started for this connection so far, the backend's included."""
        return self._own_threads() + self.transport.backend_threads()

    def __enter__(self) -> Duplex:
        with self._lock:
            new = self._state is _State.NEW
        return self.start() if new else self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Duplex {self.id} {self.transport.backend} {self._state.value}>"

    # -- internals --------------------------------------------------------------------------------------

    def _launch(self, owned_by_caller: bool) -> None:
        """Start the workers; allowed once. ``owned_by_caller``: run() owns, workers only report."""
        with self._lock:
            if self._state is not _State.NEW:
                raise RuntimeError(f"connection {self.id} was already started")
            self._state = _State.RUNNING
            self._owner_claimed = owned_by_caller
            self._launching = True
            bodies: Dict[str, Callable[[], WorkerExit]] = {
                "reader": lambda: read_loop(self.transport, self._deliver),
                "writer": lambda: write_loop(
                    self.transport, self._outbound, self._quit, self._get_close_request, self._writer_activity
                ),
            }
            for role, target in self._extra.items():
                bodies[role] = functools.partial(extra_worker, role, target, self._quit)
            for role, body in bodies.items():
                self._workers[role] = threading.Thread(
                    target=run_worker,
                    args=(role, body, self._worker_ended),
                    name=self._thread_name(role),
                    daemon=True,
                )
        try:
            for thread in self._workers.values():
                thread.start()
        except BaseException:
            # Typically "can't start new thread": stop the ones that did start, then re-raise.
            with self._lock:
                for role in [role for role, thread in self._workers.items() if thread.ident is None]:
                    del self._workers[role]
                self._launching = False
                self._owner_claimed = True
            self._publish(Owner(self._wiring()).finish(None))
            self._join_own_threads(None)
            raise
        with self._lock:
            self._launching = False
            # A worker that ended, or a close()/abort() that came, while threads were starting
            # could not take the owner's role and posted instead: someone must read it.
            orphaned = not self._owner_claimed and not self._done.empty()
            if orphaned:
                self._owner_claimed = True
        if orphaned:
            self._start_owner_thread(None)

    def _claim_or_post(self, item: object) -> bool:
        """Take the owner's role (True), or hand ``item`` to whoever has it or will (False).

        One decision under the lock: a report or request is either handled by the caller as
        the new owner, or already on the done queue when the lock is released, never lost
        between the two.
        """
        with self._lock:
            if self._owner_claimed or self._launching:
                self._done.put(item)
                return False
            self._owner_claimed = True
            return True

    def _worker_ended(self, report: WorkerExit) -> None:
        """Every worker's last act: report to the owner, or become the owner if it is the first."""
        if self._claim_or_post(report):
            self._own_here(report)

    def _request_end(self, request: object, timeout: Optional[float]) -> Optional[ExitReport]:
        """close()/abort(): run the protocol here if nobody owns it yet, else ask the owner."""
        if self._tear_down_if_never_started():
            return self._report
        in_own_thread = self._in_own_thread()
        if self._claim_or_post(request):
            if in_own_thread or timeout is not None:
                # The protocol cannot run here: in one of our own threads it would wait for
                # itself, and with a timeout this call must be able to return before it ends.
                self._start_owner_thread(request)
            else:
                return self._own_here(request)
        if in_own_thread:
            return None
        return self.wait(timeout)

    def _start_owner_thread(self, first: object) -> None:
        """Run the exit protocol, which this thread has claimed, in a thread of its own."""
        owner = threading.Thread(target=self._own_here, args=(first,), name=self._thread_name("owner"), daemon=True)
        with self._lock:
            self._owner_thread = owner
        try:
            owner.start()
        except BaseException as exc:
            self._publish(Owner(self._wiring()).abandon(exc))
            raise

    def _own_here(self, first: object) -> ExitReport:
        """Run the exit protocol in this thread, starting from ``first`` (None: wait for it)."""
        return self._conclude(Owner(self._wiring()), first=first)

    def _begin_ending(self, request: object) -> Optional[Tuple[Owner, Optional[_Cause]]]:
        """close_all()'s first half: start ending this connection, without waiting.

        Returns the owner (this thread has taken the role) and the cause it already stopped
        for (an abort), or None for a close still under way. Returns None instead when there
        is nothing left to do here: never started (torn down now), or someone else owns the
        teardown (the request went to them).
        """
        if self._in_own_thread():
            raise RuntimeError("close_all() cannot run in one of the connections' own threads")
        if self._tear_down_if_never_started():
            return None
        if not self._claim_or_post(request):
            return None
        owner = Owner(self._wiring())
        cause = owner.handle(request)
        if cause is not None:
            owner.stop(cause)
        return owner, cause

    def _conclude(self, owner: Owner, stopped_for: Optional[_Cause] = None, first: object = None) -> ExitReport:
        """Finish the protocol this thread owns and publish the report.

        Whatever happens, a report is published: Ctrl-C while waiting aborts the connection
        (then propagates), and any other failure inside the protocol, or a second Ctrl-C,
        ends it with a teardown that cannot block. Otherwise every later close() or wait()
        would wait for an owner that is gone.
        """
        try:
            cause = stopped_for
            if cause is None:
                try:
                    cause = owner.wait_for_cause(first)
                except KeyboardInterrupt:
                    self._publish(owner.finish(None))
                    raise
                owner.stop(cause)
            report = owner.complete(cause)
            self._publish(report)
            return report
        except BaseException as exc:
            if not self._finished.is_set():
                self._publish(owner.abandon(exc))
            raise

    def _join_own_threads(self, deadline: Optional[float]) -> None:
        """Join this connection's threads, but not those the report names as stuck.

        The others have handed over their report, so joining only waits for them to return.
        """
        report = self._report
        stuck = set(report.lingering) if report is not None else set()
        current = threading.current_thread()
        for thread in self._own_threads():
            if thread is not current and thread.name not in stuck and thread.ident is not None:
                thread.join(remaining(deadline))

    def _own_threads(self) -> Tuple[threading.Thread, ...]:
        with self._lock:
            own = tuple(self._workers.values())
            if self._owner_thread is not None:
                own += (self._owner_thread,)
        return own

    def _wiring(self) -> Wiring:
        return Wiring(
            connection_id=self.id,
            transport=self.transport,
            quit=self._quit,
            outbound=self._outbound,
            inbound=self._inbound,
            done=self._done,
            workers=self._workers,
            close_timeout=self.close_timeout,
            set_close_request=self._set_close_request,
            activity=self._writer_activity,
        )

    def _publish(self, report: ExitReport) -> None:
        with self._lock:
            self._report = report
            self._state = _State.CLOSED
        self._finished.set()

    def _tear_down_if_never_started(self) -> bool:
        """close()/abort() before start(): close the transport here; True if that happened."""
        with self._lock:
            if self._state is not _State.NEW:
                return False
            self._state = _State.RUNNING
            self._owner_claimed = True
        # With no workers the owner's protocol still applies: seal, shut down, close once.
        self._publish(Owner(self._wiring()).finish(None))
        return True

    def _deliver(self, message: Message) -> None:
        if self._on_message is not None:
            self._on_message(message)
        else:
            self._inbound.put(message)

    def _get_close_request(self) -> Optional[Tuple[int, str]]:
        with self._lock:
            return self._close_request

    def _set_close_request(self, request: Tuple[int, str]) -> None:
        with self._lock:
            self._close_request = request

    def _in_own_thread(self) -> bool:
        current = threading.current_thread()
        return current in self._workers.values() or current is self._owner_thread

    def _closed_error(self, deadline: Optional[float]) -> ConnectionClosed:
        """The exception for send/recv on a closing or closed connection.

        Waits, within the caller's own timeout, for the report, and joins the threads as wait()
        does, so that when a loop over recv() ends the connection is gone. In one of the
        connection's own threads, or when the timeout runs out first, there is no report yet.
        """
        if not self._in_own_thread() and self._finished.wait(remaining(deadline)):
            self._join_own_threads(deadline)
        report = self._report
        if report is not None and report.ok:
            return ConnectionClosedOK(report)
        return ConnectionClosedError(report, None if report is not None else "connection closing")

    def _thread_name(self, role: str) -> str:
        return f"duplexthreads-{self.id}-{role}"


def start_session(
    transport: Transport,
    *,
    on_message: Optional[Callable[[Message], None]],
    max_queue: Optional[int],
    close_timeout: Optional[float],
) -> Duplex:
    """A started Duplex over a freshly opened transport, which is closed if that fails."""
    try:
        conn = Duplex(transport, on_message=on_message, max_queue=max_queue, close_timeout=close_timeout)
    except BaseException:
        transport.shutdown()
        transport.close(0)
        raise
    return conn.start()  # if a thread cannot start, start() itself tears the transport down


def close_request(code: int, reason: str) -> CloseRequest:
    """A close request, after checking its arguments as a close frame needs them."""
    check_close_code(code)
    if not isinstance(reason, str):
        raise TypeError(f"reason must be str, not {type(reason).__name__}")
    if len(reason.encode("utf-8")) > 123:
        raise ValueError("close reason must fit in 123 bytes of UTF-8")
    return CloseRequest(code, reason)


def timeout_arg(value: Optional[float], name: str) -> Optional[float]:
    """A timeout argument checked: seconds >= 0, or None for no limit.

    Values beyond what threading can wait for (``threading.TIMEOUT_MAX``, about 292 years),
    infinity included, also mean no limit, instead of failing deep inside a wait.
    """
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, or None, not {value!r}")
    if value >= threading.TIMEOUT_MAX:
        return None
    return float(value)


def _deadline(timeout: Optional[float]) -> Optional[float]:
    return None if timeout is None else time.monotonic() + timeout
