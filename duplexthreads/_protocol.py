"""The exit protocol of one connection, in one place: from starting its team of threads to
publishing the one report of how it ended.

Each ``Duplex`` owns one :class:`ExitProtocol`, created with it. The protocol object owns
everything the threads share: *quit*, the outbound and inbound queues, the *done* queue, the
workers, the lock, the report and the *finished* event. ``Duplex`` only checks arguments and
calls the public methods here; ``close_all`` (``bulk.py``) and the exit hook use the same
methods, starting to end every connection before finishing any.

The life of a connection is one :class:`Phase`; every change of phase is made here, by
``_enter``, against :data:`TRANSITIONS`, and any other change is a bug that raises::

    NEW ──start/run──> LAUNCHING ──> OPEN ──claim──> OWNED ──close request──> CLOSING
     │                     │                           │                         │
     │ close/abort         │ a thread failed to start  │ any other cause         │ answer,
     │ before start        │                           │                         │ error, timeout
     └─────────────────────┴───────────> ENDING <──────┴─────────────────────────┘
                                           │
                                         CLOSED: the report is published

**Who owns.** No thread waits idle for the end. The first worker to end, or the first thread
to call ``close()``/``abort()``, claims the owner's role (OPEN -> OWNED) under the lock; every
later report or request is posted on the done queue, which only the owner reads. In ``run()``
the caller owns from the start. Nobody may claim while threads are starting (LAUNCHING), since
the owner joins every worker; what arrives then waits on the done queue for the owner.

**What the owner does.**

1. *Wait for the cause*: the first worker's report or an abort decides how the connection
   ended. A close request instead seals the outbound queue behind a close frame and waits,
   until its deadline, for the peer's answer (CLOSING).
2. *Stop* (ENDING): set quit; stop the outbound queue, which tells us under the queue's own
   lock whether the writer may be inside a write; send the close frame we still owe the peer
   once the writer is out of the way (never behind a write that may be stuck); shut the
   transport down to wake threads blocked in the socket, unless the close handshake is
   complete and nobody is; seal the inbound queue.
3. *Complete*: collect every worker's report against a backstop, join the threads (naming any
   that will not end as lingering), close the transport exactly once, and publish the report
   (CLOSED), from :meth:`ExitProtocol._publish` and nowhere else. A report is published even
   when the protocol itself is interrupted (Ctrl-C) or fails: then by a teardown that cannot
   block.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import math
import queue
import threading
import time
from dataclasses import replace
from typing import Callable, Dict, FrozenSet, Iterator, Mapping, Optional, Tuple

from . import _registry
from ._causes import ABORTED, AbortRequest, Cause, CloseRequest, cause_of
from ._deadline import deadline_after, earliest, remaining
from ._heartbeat import Pings, heartbeat_loop
from ._queues import SealableQueue
from ._rfc6455 import ABNORMAL_CLOSURE
from ._workers import extra_worker, read_loop, run_worker, write_loop
from .exceptions import ProtocolError, TransportError, UsageError
from .report import Close, ExitReport, Message, Reason, WorkerExit
from .transports.base import Transport, thread_name

__all__ = ["EXIT_CLOSE_TIMEOUT", "TRANSITIONS", "WAKE_TIMEOUT", "ExitProtocol", "IllegalTransition", "Phase"]

#: How long the workers get to exit once woken; they need microseconds, this is a backstop
#: for a thread stuck in application code (an ``on_message`` callback that does not return).
WAKE_TIMEOUT = 2.0

#: A close with no time limit gets this one where it must end anyway: at interpreter exit, and
#: while a peer's close waits for a busy writer before the reply.
EXIT_CLOSE_TIMEOUT = 5.0


class Phase(enum.Enum):
    """Where a connection is in its life; see :data:`TRANSITIONS`."""

    NEW = "new"  # the transport is open, no thread started
    LAUNCHING = "launching"  # threads are starting: nobody may take the owner's role
    OPEN = "open"  # running; nobody owns the ending yet
    OWNED = "owned"  # one thread owns the ending and waits for its cause
    CLOSING = "closing"  # the owner runs a graceful close: flush, close frame, the peer's answer
    ENDING = "ending"  # quit is set: waking, collecting, joining, closing the transport
    CLOSED = "closed"  # the report is published


#: Every allowed change of phase.
TRANSITIONS: Mapping[Phase, FrozenSet[Phase]] = {
    Phase.NEW: frozenset({Phase.LAUNCHING, Phase.ENDING}),
    Phase.LAUNCHING: frozenset({Phase.OPEN, Phase.OWNED, Phase.ENDING}),
    Phase.OPEN: frozenset({Phase.OWNED}),
    Phase.OWNED: frozenset({Phase.CLOSING, Phase.ENDING}),
    Phase.CLOSING: frozenset({Phase.ENDING}),
    Phase.ENDING: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A change of phase that :data:`TRANSITIONS` does not allow: a bug in duplexthreads."""


class ExitProtocol:
    """The team of threads of one connection and the protocol that ends it; see the module."""

    __slots__ = (
        "__weakref__",
        "_awaiting_finish",
        "_clean",
        "_close_attempted",
        "_closing",
        "_cut_short",
        "_deaf_until",
        "_done",
        "_exits",
        "_extra",
        "_forgotten",
        "_lock",
        "_on_message",
        "_owner_thread",
        "_pending_cause",
        "_phase",
        "_received",
        "_report",
        "_requested_deadline",
        "_sent",
        "_stopped_at",
        "_workers",
        "close_at_exit",
        "close_timeout",
        "connection_id",
        "delivering",
        "finished",
        "inbound",
        "inherited",
        "opened_at",
        "outbound",
        "ping_interval",
        "ping_timeout",
        "pings",
        "quit",
        "transport",
    )

    def __init__(
        self,
        transport: Transport,
        *,
        on_message: Optional[Callable[[Message], None]],
        max_queue: Optional[int],
        close_timeout: Optional[float],
        close_at_exit: bool = True,
        ping_interval: Optional[float] = None,
        ping_timeout: Optional[float] = None,
        write_timeout: Optional[float] = None,
    ) -> None:
        self.transport = transport
        self.connection_id = transport.connection_id
        self.close_timeout = close_timeout
        self.close_at_exit = close_at_exit
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        # Pings waiting for their pong: the reader settles them, the owner cancels them at the end.
        self.pings = Pings()
        # True while the reader is in our code or the application's (on_message, a full
        # inbound queue) rather than reading: the heartbeat must not take that for silence.
        self.delivering = False
        transport.on_pong = self.pings.pong
        transport.set_write_timeout(write_timeout)
        #: Where the application opened the connection, for leak reports.
        self.opened_at = _registry.where_opened()
        self._on_message = on_message
        # Set by the owner alone, once the connection is ending; every worker loop honours it.
        self.quit = threading.Event()
        # Application -> writer. Stopped by the owner; what is left in it becomes report.unsent.
        self.outbound: SealableQueue[Message] = SealableQueue(max_queue or 0)
        # Reader -> recv(). Sealed once the reader is told to stop; recv() drains it first.
        self.inbound: SealableQueue[Message] = SealableQueue(max_queue or 0)
        # Workers post their WorkerExit here unless they became the owner; close()/abort() post
        # requests here when someone else owns the ending. Only the owner reads it.
        self._done: queue.SimpleQueue[object] = queue.SimpleQueue()
        # Set once the report is published; wait() and close() block on it.
        self.finished = threading.Event()
        # Guards _phase, _workers (replaced, never changed in place) and _owner_thread.
        self._lock = threading.Lock()
        self._phase = Phase.NEW
        self._workers: Dict[str, threading.Thread] = {}
        self._extra: Dict[str, Callable[[threading.Event], None]] = {}
        # A thread started only when close()/abort() comes from one of our own threads.
        self._owner_thread: Optional[threading.Thread] = None
        self._report: Optional[ExitReport] = None
        # Set in a child process on a connection inherited through fork(); see _registry.
        self.inherited = False
        self._forgotten = False
        # Everything below is the owner's alone: only the thread running the protocol touches it.
        self._exits: Dict[str, WorkerExit] = {}  # reports received so far, by role
        self._closing: Optional[CloseRequest] = None  # the graceful close under way
        self._received: Optional[Close] = None  # the peer's close frame
        self._sent: Optional[Close] = None  # our close frame, once completely written
        self._pending_cause: Optional[Cause] = None  # end_all(): decided, not yet completed
        self._awaiting_finish = False  # end_all() began the ending and has not finished it yet
        self._stopped_at = time.monotonic()  # the start of report.teardown_seconds
        self._clean = False  # the handshake completed and nobody was woken: see _stop
        self._close_attempted = False  # transport.close() is called once, even when abandoning
        self._cut_short = False  # an abort() came while the ending was already decided
        # The earliest deadline of the close()/abort() requests the owner has read since the
        # cause was decided (an abort's is the moment it came).
        self._requested_deadline: Optional[float] = None
        # Set while the owner is in a write or wait that reads no requests (the reply to the
        # peer's close, the wait for the server to end TCP), until when it may last: read by
        # request_end(), whose caller cuts it short by shutting the transport down.
        self._deaf_until: Optional[float] = None
        _registry.register(self)

    # -- state -------------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def report(self) -> Optional[ExitReport]:
        return self._report

    def threads(self) -> Tuple[threading.Thread, ...]:
        """Every thread started for this connection so far, the backend's included."""
        return self._own_threads() + self.transport.backend_threads()

    @property
    def bounded_close_timeout(self) -> float:
        """``close_timeout``, or :data:`EXIT_CLOSE_TIMEOUT` for a connection without a limit."""
        return self.close_timeout if self.close_timeout is not None else EXIT_CLOSE_TIMEOUT

    def in_reader_thread(self) -> bool:
        return threading.current_thread() is self._workers.get("reader")

    def in_own_thread(self) -> bool:
        current = threading.current_thread()
        return current in self._workers.values() or current is self._owner_thread

    def check_usable(self) -> None:
        """Raise ``UsageError`` in a child process that inherited this connection."""
        if self.inherited:
            raise UsageError(
                f"connection {self.connection_id} was inherited through fork(): it belongs to the parent "
                "process, and this process may only close() it, which releases its copy of the socket"
            )

    def mark_inherited(self) -> None:
        """In a child after fork(): none of our threads exist here; see ``_registry``."""
        self.inherited = True

    # -- starting ----------------------------------------------------------------------------------

    def add_worker(self, role: str, target: Callable[[threading.Event], None]) -> None:
        with self._lock:
            if self._phase is not Phase.NEW:
                raise UsageError("add_worker() must be called before start() or run()")
            if role in self._extra:
                raise ValueError(f"a worker with role {role!r} was already added")
            self._extra[role] = target

    def start(self) -> None:
        """Start the workers; the first to end, or the first close()/abort(), will own the ending."""
        self._launch(owned_by_caller=False)

    def run(self) -> ExitReport:
        """Start the workers and own the ending in this thread until the connection ends."""
        self._launch(owned_by_caller=True)
        return self._own(None)

    def _launch(self, owned_by_caller: bool) -> None:
        self.check_usable()
        with self._lock:
            if self._phase is not Phase.NEW:
                raise UsageError(f"connection {self.connection_id} was already started")
            self._enter(Phase.LAUNCHING)
            bodies: Dict[str, Callable[[], WorkerExit]] = {
                "reader": functools.partial(read_loop, self.transport, self._deliver, self.connection_id),
                "writer": functools.partial(write_loop, self.transport, self.outbound, self.quit),
            }
            if self.ping_interval is not None:
                bodies["heartbeat"] = functools.partial(
                    heartbeat_loop,
                    self.transport,
                    self.pings,
                    self.quit,
                    self.ping_interval,
                    self.ping_timeout,
                    reader_busy=lambda: self.delivering,
                    may_ping=lambda: self._phase in (Phase.OPEN, Phase.OWNED),
                )
            for role, target in self._extra.items():
                bodies[role] = functools.partial(extra_worker, role, target, self.quit)
            self._workers = {
                role: threading.Thread(
                    target=run_worker,
                    args=(role, body, self._worker_ended),
                    name=thread_name(self.connection_id, role),
                    daemon=True,
                )
                for role, body in bodies.items()
            }
        # From now on the writer exists to take over what a direct write cannot finish.
        self.outbound.allow_direct()
        try:
            for thread in self._workers.values():
                thread.start()
        except BaseException:
            # Typically "can't start new thread": stop the ones that did start, then re-raise.
            with self._lock:
                self._workers = {role: t for role, t in self._workers.items() if t.ident is not None}
            self._conclude_or_abandon(ABORTED)
            raise
        with self._lock:
            # A worker that ended, or a close()/abort() that came, while threads were starting
            # could not take the owner's role and posted instead: someone must read it.
            orphaned = not owned_by_caller and not self._done.empty()
            self._enter(Phase.OWNED if owned_by_caller or orphaned else Phase.OPEN)
        if orphaned:
            self._start_owner_thread(None)

    # -- ending: what close(), abort(), wait() and close_all() call -------------------------------

    def request_end(self, request: object) -> Optional[ExitReport]:
        """close()/abort(): own the ending here if nobody does yet, else ask the owner.

        Returns the report, or None when called from one of the connection's own threads
        (waiting there would wait for itself) or in a child that inherited the connection.
        """
        if self.inherited:
            self._forget()
            return None
        if self._tear_down_if_new():
            return self._report
        in_own_thread = self.in_own_thread()
        if not in_own_thread and self._take_over_pending():
            return self._finish_pending(request)
        if self._claim_or_post(request):
            if not in_own_thread:
                return self._own(request)
            self._start_owner_thread(request)
        if in_own_thread:
            return None
        # Someone else owns the ending. It reads our request at once (even during a close,
        # where an earlier deadline shortens the handshake) and publishes within its bounds.
        # Only in a write or wait that reads no requests may it miss our deadline: once that
        # has passed, end such a write or wait here, by shutting the transport down.
        deadline = request.deadline if isinstance(request, CloseRequest) else time.monotonic()
        if not self.finished.wait(remaining(deadline)) and self._deaf_until is not None:
            self.transport.shutdown()
        bound = None if deadline is None else deadline + 2 * WAKE_TIMEOUT
        self.finished.wait(remaining(bound))
        self._join_threads(bound)
        return self._report

    def start_ending(self, request: object) -> bool:
        """``end_all()``'s first half: begin ending without waiting for the end.

        True when this thread now owns the ending and must call :meth:`finish_ending`; False
        when there is nothing more to do here (never started: torn down now; or someone else
        owns the ending: the request went to them). The caller has made sure it is not one of
        this connection's own threads (end_all() checks every connection before touching any).
        """
        if self.inherited:
            self._forget()
            return False
        if self._tear_down_if_new() or not self._claim_or_post(request):
            return False
        with self._published_whatever_happens():
            cause = self._handle(request)
            if cause is not None:
                self._stop(cause)
            self._pending_cause = cause
        with self._lock:
            self._awaiting_finish = True
        return True

    def finish_ending(self, abort: bool = False) -> Optional[ExitReport]:
        """``end_all()``'s second half, after :meth:`start_ending` returned True.

        ``abort=True`` cuts short a close still waiting for the peer (Ctrl-C in end_all).
        Returns None without waiting if a close()/abort() from another thread took the ending
        over in the meantime (see :meth:`_take_over_pending`).
        """
        if not self._take_over_pending():
            return None
        return self._finish_pending(AbortRequest() if abort else None)

    def _take_over_pending(self) -> bool:
        """Claim the second half of an ending end_all() began; True for the one thread that does.

        end_all() finishes its connections one after another, so a connection it began may wait
        its turn while a close with a peer that is slow to answer runs: a close()/abort() from
        another thread meanwhile takes it over, rather than post a request nobody reads yet.
        """
        with self._lock:
            taken, self._awaiting_finish = self._awaiting_finish, False
            return taken

    def _finish_pending(self, request: object) -> ExitReport:
        cause = self._pending_cause
        if cause is None:
            return self._own(request)  # a close under way: wait for the answer, or the request
        with self._published_whatever_happens():
            return self._publish(self._complete(cause))  # an abort: stopped already

    def wait(self, timeout: Optional[float]) -> ExitReport:
        """Block until the report is published and every thread has exited."""
        if self.in_own_thread():
            raise UsageError("wait() called from one of the connection's own threads would wait for itself")
        deadline = deadline_after(timeout)
        if not self.finished.wait(timeout):
            raise TimeoutError(f"connection {self.connection_id} still open after {timeout} s")
        self._join_threads(deadline)
        assert self._report is not None
        return self._report

    def report_by(self, deadline: Optional[float]) -> Optional[ExitReport]:
        """The report once published and the threads joined, if that happens by ``deadline``.

        None in one of the connection's own threads (the report needs them to end first).
        """
        if not self.in_own_thread() and self.finished.wait(remaining(deadline)):
            self._join_threads(deadline)
        return self._report

    # -- claiming the owner's role -----------------------------------------------------------------

    def _claim_or_post(self, item: object) -> bool:
        """Take the owner's role (True), or hand ``item`` to whoever has it or will (False).

        One decision under the lock: the item is either handled by the caller as the new owner,
        or already on the done queue when the lock is released, never lost between the two.
        """
        with self._lock:
            if self._phase is Phase.OPEN:
                self._enter(Phase.OWNED)
                return True
            self._done.put(item)
            return False

    def _worker_ended(self, report: WorkerExit) -> None:
        """Every worker's last act: report to the owner, or become the owner if it is the first."""
        if self._claim_or_post(report):
            self._own(report)

    def _tear_down_if_new(self) -> bool:
        """close()/abort() before start(): end here, with nothing to flush or hand over."""
        with self._lock:
            if self._phase is not Phase.NEW:
                return False
            self._enter(Phase.ENDING)
        self._conclude_or_abandon(ABORTED)
        return True

    def _start_owner_thread(self, first: object) -> None:
        """Run the protocol, which this thread has claimed, in a thread of its own."""
        owner = threading.Thread(
            target=self._own, args=(first,), name=thread_name(self.connection_id, "owner"), daemon=True
        )
        with self._lock:
            self._owner_thread = owner
        with self._published_whatever_happens():
            owner.start()

    # -- the owner's part --------------------------------------------------------------------------

    def _own(self, first: object) -> ExitReport:
        """Run the protocol in this thread from ``first`` (an item in hand, or None) to the report.

        Ctrl-C while waiting for the cause aborts the connection, then propagates. Any failure
        inside the protocol, or a second Ctrl-C, ends it with a teardown that cannot block;
        otherwise every later close() or wait() would wait for an owner that is gone.
        """
        with self._published_whatever_happens():
            try:
                cause = self._wait_for_cause(first)
            except KeyboardInterrupt:
                self._conclude(ABORTED)
                raise
            return self._conclude(cause)

    def _conclude(self, cause: Cause) -> ExitReport:
        self._stop(cause)
        return self._publish(self._complete(cause))

    def _conclude_or_abandon(self, cause: Cause) -> ExitReport:
        """Conclude; if that fails or is interrupted (a second Ctrl-C), abandon, then re-raise."""
        with self._published_whatever_happens():
            return self._conclude(cause)

    @contextlib.contextmanager
    def _published_whatever_happens(self) -> Iterator[None]:
        """If the block fails or is interrupted, end with a teardown that cannot block, publish
        that report (unless one is out already), and re-raise: nobody is then left waiting for
        an owner that is gone."""
        try:
            yield
        except BaseException as exc:
            if not self.finished.is_set():
                self._publish(self._abandon(exc))
            raise

    def _wait_for_cause(self, first: object) -> Cause:
        """Step 1: block until something ends the connection; a close waits for its deadline."""
        if first is not None:
            cause = self._handle(first)
            if cause is not None:
                return cause
        while True:
            closing = self._closing
            try:
                item = self._done.get(timeout=remaining(closing.deadline if closing else None))
            except queue.Empty:
                assert closing is not None
                timeout = TimeoutError(f"the close handshake did not finish within {closing.timeout} s")
                return Cause("owner", Reason.LOCAL_CLOSE, timeout)
            cause = self._handle(item)
            if cause is not None:
                return cause

    def _handle(self, item: object) -> Optional[Cause]:
        """Take one request or worker report; return the cause if the connection ends now."""
        if isinstance(item, AbortRequest):
            return ABORTED
        if isinstance(item, CloseRequest):
            closing = self._closing
            if closing is None:
                with self._lock:
                    self._enter(Phase.CLOSING)
                self._closing = item
                if not self._close_directly(item):
                    # The writer sends our close frame once everything accepted before is out.
                    self.outbound.seal(then_close=(item.code, item.reason))
                # The reader must keep reading to see the peer's answer, even if the
                # application stopped taking messages and the inbound queue is full; what
                # does not fit is dropped and counted, so a peer that floods instead of
                # answering cannot grow our memory past max_queue.
                self.inbound.discard_when_full()
            elif item.deadline is not None and (closing.deadline is None or item.deadline < closing.deadline):
                # A later close() with less time shortens this one; the first one's frame stands.
                self._closing = replace(closing, timeout=item.timeout, deadline=item.deadline)
            return None
        assert isinstance(item, WorkerExit)
        self._record(item)
        closing = self._closing
        if closing is None:
            return cause_of(item)
        if item.role == "writer" and item.error is None and self._sent is not None:
            return None  # our close frame is out (the writer's or ours); wait for the answer
        if item.role not in ("reader", "writer") and item.error is None:
            return None  # an extra worker finishing cleanly (perhaps it asked for the close)
        if item.role == "reader" and item.peer_close is not None:
            # The answer, or the peer's own close crossing ours: reply if ours never left.
            return Cause("owner", Reason.LOCAL_CLOSE, None, (closing.code, closing.reason))
        error = item.error or RuntimeError(f"{item.role} ended during the close handshake")
        reply = (error.close_code, "") if isinstance(error, ProtocolError) else None
        return Cause("owner", Reason.LOCAL_CLOSE, error, reply)

    def _close_directly(self, request: CloseRequest) -> bool:
        """Send our close frame here if nothing is queued and the writer is idle; True if sent.

        It spares waking the writer just to send one small frame (which matters when thousands
        of connections close at once), and a write that cannot wait leaves nothing half done:
        the transport writes the frame whole or not at all unless the socket has failed, and
        then the writer meets the failure and reports it.
        """
        if not self.outbound.claim_direct():
            return False
        sent = False
        try:
            self.transport.send_close(request.code, request.reason, timeout=0)
            sent = True
        except TransportError:
            pass
        finally:
            self.outbound.end_direct_close(sent)
        if sent:
            self._sent = (request.code, request.reason)
        return sent

    def _stop(self, cause: Cause) -> None:
        """Step 2: set quit and wake every worker wherever it is blocked."""
        self._stopped_at = time.monotonic()
        with self._lock:
            if self._phase is not Phase.ENDING:
                self._enter(Phase.ENDING)
        self.quit.set()
        self.pings.cancel_all()
        writer_busy = self.outbound.stop()
        if cause.reply is not None:
            self._reply_once_writer_stopped(cause.reply, writer_busy, patient=cause.patient)
        closing = self._closing
        if closing is not None and self._received is not None and "writer" not in self._exits:
            # The peer's answer to our close frame can overtake the writer's report that it
            # wrote the frame: wait for that report (within the close's own time), or a
            # complete handshake would be taken for an unclean one.
            bound = earliest(deadline_after(WAKE_TIMEOUT), closing.deadline)
            self._collect_until(lambda: "writer" in self._exits, bound, optional=True)
        # After a complete handshake with reader and writer gone, nothing is blocked in the
        # socket: leave TCP open so the transport can close it cleanly (the server first).
        handshake_done = self._received is not None and self._sent is not None
        self._clean = handshake_done and "reader" in self._exits and "writer" in self._exits
        if not self._clean:
            self.transport.shutdown()
        self.inbound.seal()

    def _reply_once_writer_stopped(self, reply: Close, writer_busy: bool, *, patient: bool = True) -> None:
        """Send the close frame we owe once the writer has stopped, so it is the last frame.

        A writer idle on the queue stops within a wake-up. A writer inside a write finishes
        its batch first: RFC 6455 asks for the reply, and a peer that closes usually reads on.
        That wait is a close handshake like any other, bounded by ``close_timeout`` (5 s if
        the connection has none), and an abort() cuts it short: a writer stuck on a peer that
        stopped reading then gets no reply behind it, and shutdown() interrupts its write.
        The reply itself is bounded: nothing could wake the owner from a stuck write. When the
        peer is presumed gone (a heartbeat timeout) a busy writer is not waited for: no reply
        then, since the writer may be stuck on that very peer.
        """
        if self._sent is not None:
            return  # ours already left (sent directly by the owner of a close)
        # A send() writing directly cannot block: let it finish. If it left part of a frame
        # on the wire, a close frame now would land inside it.
        if not self.outbound.wait_direct_done(WAKE_TIMEOUT) or self.outbound.partial_frame_pending():
            return
        # The handshake's own bound: close_timeout from the cause (5 s without one), or the
        # deadline of the close under way, whichever comes first.
        closing_deadline = self._closing.deadline if self._closing is not None else None
        handshake_ends = earliest(self._stopped_at + self.bounded_close_timeout, closing_deadline)
        if writer_busy and not patient:
            return
        if "writer" not in self._exits:
            wait_until = handshake_ends if writer_busy else time.monotonic() + WAKE_TIMEOUT
            self._collect_until(lambda: "writer" in self._exits, wait_until, optional=True)
        if self._cut_short:
            return
        writer = self._exits.get("writer")
        if writer is None or writer.error is not None or writer.close_sent is not None:
            return
        # When the peer is presumed gone the reply goes only if the socket takes it at once: a
        # pong of the reader's stuck on that peer must not hold the teardown up.
        now = time.monotonic()
        limit = self._go_deaf(earliest(now + WAKE_TIMEOUT if patient else now, handshake_ends))
        try:
            if self._cut_short:
                return
            self.transport.send_close(*reply, timeout=remaining(limit))
        except TransportError:
            return  # the peer is gone or not reading; the report says how the connection ended
        finally:
            self._deaf_until = None
        self._sent = reply

    def _complete(self, cause: Cause) -> ExitReport:
        """Step 3: collect every report, join the threads, close the transport, build the report."""
        backstop = deadline_after(WAKE_TIMEOUT)
        self._collect_until(lambda: len(self._exits) == len(self._workers), backstop)
        # The owner may be one of the workers (the first to end takes the role); it is alive by
        # definition and is joined by wait() once it returns.
        current = threading.current_thread()
        for thread in self._workers.values():
            if thread is not current and thread.ident is not None:
                thread.join(remaining(backstop))
        # A clean close may wait for the server to close TCP first, within the close's budget;
        # otherwise the wait is only for backend threads, woken by shutdown() already.
        limit = backstop
        if self._clean:
            closing_deadline = self._closing.deadline if self._closing is not None else None
            if closing_deadline is None and self.close_timeout is not None:
                closing_deadline = self._stopped_at + self.close_timeout
            limit = earliest(backstop, closing_deadline)
            # From here the owner reads no requests until the server has ended TCP.
            limit = self._go_deaf(limit)
        # Never close the socket under a send() still writing to it directly (microseconds).
        self.outbound.wait_direct_done(remaining(backstop))
        self._close_attempted = True
        try:
            self.transport.close(remaining(limit), clean=self._clean)
        finally:
            self._deaf_until = None
        return self._build_report(cause)

    def _collect_until(
        self, satisfied: Callable[[], bool], deadline: Optional[float], *, optional: bool = False
    ) -> None:
        """Take worker reports until ``satisfied()`` or the deadline.

        The cause is decided, but a request still counts in an ``optional`` wait (for the
        writer before replying to the peer's close): a close() with less time shortens it, an
        abort() ends it. A wait that is not optional, for the workers' last reports, is never
        shortened: they come within microseconds, and the accounting needs them.
        """
        while not satisfied() and not (optional and self._cut_short):
            try:
                item = self._done.get(timeout=remaining(deadline))
            except queue.Empty:
                return
            self._take_late(item)
            if optional:
                deadline = self._within_requests(deadline)

    def _go_deaf(self, limit: Optional[float]) -> Optional[float]:
        """Before a write or wait that reads no requests: say so, then read what came already.

        Returns ``limit`` cut by every request read so far. In that order, a request posted
        meanwhile is either read here or finds ``_deaf_until`` set (see request_end).
        """
        self._deaf_until = math.inf if limit is None else limit
        while True:
            try:
                self._take_late(self._done.get_nowait())
            except queue.Empty:
                return self._within_requests(limit)

    def _take_late(self, item: object) -> None:
        """An item read after the cause was decided: a worker's report, or a request."""
        if isinstance(item, WorkerExit):
            self._record(item)
        else:
            self._note_request(item)

    def _within_requests(self, limit: Optional[float]) -> Optional[float]:
        """``limit``, or the earliest deadline a close()/abort() read so far asked for."""
        return earliest(limit, self._requested_deadline)

    def _note_request(self, item: object) -> None:
        """A close()/abort() that came after the cause: it can only cut what is left short."""
        if isinstance(item, AbortRequest):
            self._cut_short = True
            deadline: Optional[float] = time.monotonic()
        elif isinstance(item, CloseRequest):
            deadline = item.deadline
        else:
            return
        self._requested_deadline = earliest(self._requested_deadline, deadline)

    def _record(self, item: WorkerExit) -> None:
        self._exits[item.role] = item
        if item.peer_close is not None:
            self._received = item.peer_close
        if item.close_sent is not None:
            self._sent = item.close_sent

    def _build_report(self, cause: Cause) -> ExitReport:
        current = threading.current_thread()
        threads = (*self._workers.values(), *self.transport.backend_threads())
        lingering = tuple(t.name for t in threads if t is not current and t.is_alive())
        writer = self._exits.get("writer")
        unsent = (writer.unwritten if writer else ()) + tuple(self.outbound.drain())
        # The code really exchanged: the peer's, else ours if it left, else none at all.
        exchanged = self._received or self._sent
        code, reason = exchanged if exchanged is not None else (ABNORMAL_CLOSURE, "")
        return ExitReport(
            connection_id=self.connection_id,
            first=cause.first,
            reason=cause.reason,
            error=cause.error,
            close_code=code,
            close_reason=reason,
            unsent=unsent,
            written=(writer.written if writer else 0) + self.outbound.direct_written,
            teardown_seconds=time.monotonic() - self._stopped_at,
            lingering=lingering,
            close_sent=self._sent,
            close_received=self._received,
            discarded=self.inbound.discarded,
        )

    def _abandon(self, error: BaseException) -> ExitReport:
        """The teardown of last resort, after the protocol itself failed or was interrupted.

        Nothing here waits: it sets quit, stops both queues, shuts the transport down and
        closes it (unless that was already tried), and reports the connection as aborted with
        ``error``, naming any thread still alive as lingering.
        """
        with self._lock:
            if self._phase is not Phase.ENDING:
                self._enter(Phase.ENDING)
        for step in (self.quit.set, self.outbound.stop, self.inbound.seal, self.transport.shutdown):
            try:
                step()
            except Exception:  # noqa: BLE001 - each step is attempted whatever the others do
                pass
        if not self._close_attempted:
            self._close_attempted = True
            try:
                self.transport.close(0)
            except Exception:  # noqa: BLE001 - the report carries the error that brought us here
                pass
        return self._build_report(Cause("owner", Reason.ABORTED, error))

    def _publish(self, report: ExitReport) -> ExitReport:
        """The one place a report is published."""
        with self._lock:
            self._enter(Phase.CLOSED)
            self._report = report
        self.finished.set()
        _registry.unregister(self)
        return report

    # -- helpers -----------------------------------------------------------------------------------

    def _enter(self, phase: Phase) -> None:
        assert self._lock.locked(), "phase changes happen under the lock"
        if phase not in TRANSITIONS[self._phase]:
            raise IllegalTransition(f"connection {self.connection_id}: {self._phase.value} -> {phase.value}")
        self._phase = phase

    def _deliver(self, message: Message) -> None:
        self.delivering = True
        try:
            if self._on_message is not None:
                self._on_message(message)
            else:
                self.inbound.put(message)
        finally:
            self.delivering = False

    def _own_threads(self) -> Tuple[threading.Thread, ...]:
        with self._lock:
            own = tuple(self._workers.values())
            if self._owner_thread is not None:
                own += (self._owner_thread,)
        return own

    def _join_threads(self, deadline: Optional[float]) -> None:
        """Join this connection's threads, but not those the report names as stuck.

        The others have handed over their report, so joining only waits for them to return.
        """
        report = self._report
        stuck = set(report.lingering) if report is not None else set()
        current = threading.current_thread()
        for thread in self._own_threads():
            if thread is not current and thread.name not in stuck and thread.ident is not None:
                thread.join(remaining(deadline))

    def _forget(self) -> None:
        """In a child that inherited the connection: release our copy of the socket, once."""
        if not self._forgotten:
            self._forgotten = True
            try:
                self.transport.forget()
            except OSError:
                pass
