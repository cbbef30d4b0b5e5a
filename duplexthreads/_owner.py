"""The owner protocol: wait for the first exit cause, stop every worker, account for everything.

Exactly one thread runs it per connection: the caller of ``Duplex.run``, or else whoever comes
first among the workers ending and the threads calling ``close()``/``abort()`` (see
``Duplex._claim_or_post``). It is the only code that sets *quit*, seals the queues, shuts the
transport down and closes it, which is what makes teardown happen exactly once.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from ._queues import SealableQueue
from ._workers import WriterActivity
from .exceptions import TransportError
from .report import ABNORMAL_CLOSURE, ExitReport, Message, Reason, WorkerExit
from .transports.base import Transport

#: RFC 6455's code for a close frame that carried no status code.
NO_STATUS_CODE = 1005

#: How long the workers get to exit once woken; they need microseconds, this is a backstop.
WAKE_TIMEOUT = 2.0

_SENDABLE_REPLY_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


@dataclass(frozen=True)
class CloseRequest:
    """Posted on the done queue by ``Duplex.close()``."""

    code: int
    reason: str


@dataclass(frozen=True)
class AbortRequest:
    """Posted on the done queue by ``Duplex.abort()``."""


@dataclass(frozen=True)
class _Cause:
    first: str
    reason: Reason
    error: Optional[BaseException] = None
    close_code: int = ABNORMAL_CLOSURE
    close_reason: str = ""
    #: The close frame we still owe the peer, sent once the writer has stopped.
    reply: Optional[Tuple[int, str]] = None


#: What ends a connection when the application calls abort().
ABORTED = _Cause("owner", Reason.ABORTED)


@dataclass
class Wiring:
    """What the owner shares with the workers; built by the Duplex."""

    connection_id: int
    transport: Transport
    quit: threading.Event
    outbound: SealableQueue[Message]
    inbound: SealableQueue[Message]
    done: queue.SimpleQueue[object]
    workers: Dict[str, threading.Thread]
    close_timeout: Optional[float]
    set_close_request: Callable[[Tuple[int, str]], None]
    #: Set by the writer while it may be inside a write.
    activity: WriterActivity


class Owner:
    """Runs the exit protocol once for one connection and returns its :class:`ExitReport`.

    The protocol comes in steps so that ``close_all()`` can begin ending many connections before
    it waits for any: :meth:`handle` (take one item: a request or a worker's report),
    :meth:`wait_for_cause`, :meth:`stop` (set quit, wake everyone) and :meth:`complete`
    (collect, join, close, report).
    """

    def __init__(self, wiring: Wiring) -> None:
        self._w = wiring
        # Everything below is touched only by the thread running the protocol.
        # Reports received so far, by role.
        self._exits: Dict[str, WorkerExit] = {}
        # The graceful close under way, and when its close_timeout runs out.
        self._closing: Optional[CloseRequest] = None
        self._deadline: Optional[float] = None
        # When stop() began: the start of report.teardown_seconds.
        self._stopped_at = time.monotonic()
        # Set just before transport.close() is called, so that it is never called twice.
        self._close_attempted = False

    def finish(self, cause: Optional[_Cause] = None) -> ExitReport:
        """Stop everything and build the report; ``None`` means the application aborted."""
        cause = cause or ABORTED
        self.stop(cause)
        return self.complete(cause)

    def stop(self, cause: _Cause) -> None:
        """Set quit and wake every worker wherever it is blocked (after the close reply we owe)."""
        self._stopped_at = time.monotonic()
        w = self._w
        w.quit.set()
        w.outbound.seal()
        if cause.reply is not None:
            self._reply_once_writer_stopped(cause.reply)
        w.transport.shutdown()
        w.inbound.seal()

    def complete(self, cause: _Cause) -> ExitReport:
        """After stop(): collect every report, join the threads, close the transport, report."""
        w = self._w
        deadline = time.monotonic() + WAKE_TIMEOUT
        self._collect(lambda: len(self._exits) == len(w.workers), deadline)
        # The owner may be one of the workers (the first to end takes the role); it is alive by
        # definition and is joined by wait() once it returns.
        others = [thread for thread in w.workers.values() if thread is not threading.current_thread()]
        for thread in others:
            if thread.ident is not None:
                thread.join(remaining(deadline))
        self._close_attempted = True
        w.transport.close(remaining(deadline))
        return self._report(cause)

    def abandon(self, error: BaseException) -> ExitReport:
        """The teardown of last resort, after the protocol itself failed or was interrupted.

        Nothing here waits: it sets quit, seals both queues, shuts the transport down and
        closes it (unless that was already tried), and reports the connection as aborted
        with ``error``, naming any thread still alive as lingering.
        """
        w = self._w
        for step in (w.quit.set, w.outbound.seal, w.inbound.seal, w.transport.shutdown):
            try:
                step()
            except Exception:  # noqa: BLE001 - each step is attempted whatever the others do
                pass
        if not self._close_attempted:
            self._close_attempted = True
            try:
                w.transport.close(0)
            except Exception:  # noqa: BLE001 - the report carries the error that brought us here
                pass
        return self._report(_Cause("owner", Reason.ABORTED, error))

    def _report(self, cause: _Cause) -> ExitReport:
        w = self._w
        current = threading.current_thread()
        threads = (*w.workers.values(), *w.transport.backend_threads())
        lingering = tuple(t.name for t in threads if t is not current and t.is_alive())
        writer = self._exits.get("writer")
        unsent = (writer.unwritten if writer else ()) + tuple(w.outbound.drain())
        return ExitReport(
            connection_id=w.connection_id,
            first=cause.first,
            reason=cause.reason,
            error=cause.error,
            close_code=cause.close_code,
            close_reason=cause.close_reason,
            unsent=unsent,
            written=writer.written if writer else 0,
            teardown_seconds=time.monotonic() - self._stopped_at,
            lingering=lingering,
        )

    def wait_for_cause(self, first: object = None) -> _Cause:
        """Block until something ends the connection; a close request opens a bounded wait.

        ``first`` is an item already in hand (a worker's report or a request), handled before
        anything on the done queue.
        """
        if first is not None:
            cause = self.handle(first)
            if cause is not None:
                return cause
        while True:
            deadline = self._deadline
            try:
                item = self._w.done.get(timeout=remaining(deadline))
            except queue.Empty:
                closing = self._closing
                assert closing is not None
                timeout = TimeoutError(f"close handshake did not finish within {self._w.close_timeout} s")
                return _Cause("owner", Reason.LOCAL_CLOSE, timeout, closing.code, closing.reason)
            cause = self.handle(item)
            if cause is not None:
                return cause

    def handle(self, item: object) -> Optional[_Cause]:
        """Take one request or worker report; return the cause if the connection ends now."""
        w = self._w
        closing = self._closing
        if isinstance(item, AbortRequest):
            return ABORTED
        if isinstance(item, CloseRequest):
            if closing is None:
                self._closing = item
                if w.close_timeout is not None:
                    self._deadline = time.monotonic() + w.close_timeout
                # The writer reads the request once the sealed queue runs dry.
                w.set_close_request((item.code, item.reason))
                w.outbound.seal()
                # The reader must keep reading to see the peer's answer, even if the
                # application stopped taking messages and the inbound queue is full.
                w.inbound.lift_bound()
            return None
        assert isinstance(item, WorkerExit)
        self._exits[item.role] = item
        if closing is None:
            return _cause_of(item)
        if item.role == "writer" and item.close_sent:
            return None  # our close frame is out; wait for the peer's answer
        if item.role not in ("reader", "writer") and item.error is None:
            return None  # an extra worker finishing cleanly (perhaps it asked for the close)
        if item.role == "reader" and item.peer_close is not None:
            # The answer, or the peer's own close crossing ours: reply if ours never left. The
            # report gives the peer's code, unless its frame carried none (1005).
            code, reason = item.peer_close
            if code == NO_STATUS_CODE:
                code, reason = closing.code, closing.reason
            return _Cause("owner", Reason.LOCAL_CLOSE, None, code, reason, (closing.code, closing.reason))
        error = item.error or RuntimeError(f"{item.role} ended during the close handshake")
        return _Cause("owner", Reason.LOCAL_CLOSE, error, closing.code, closing.reason)

    def _reply_once_writer_stopped(self, reply: Tuple[int, str]) -> None:
        """Send the close frame we owe once the writer has stopped, so it is the last frame.

        A writer idle on the queue stops within a wake-up. A writer inside a write may be stuck
        on a peer that no longer reads; waiting for it would break the promise that a peer's
        close tears down at once, so then no reply is sent and shutdown() interrupts the write.
        """
        w = self._w
        if "writer" not in self._exits and w.activity.writing:
            return
        self._collect(lambda: "writer" in self._exits, time.monotonic() + WAKE_TIMEOUT)
        writer = self._exits.get("writer")
        if writer is None or writer.error is not None or writer.close_sent:
            return
        try:
            w.transport.send_close(*reply)
        except TransportError:
            pass  # the peer is gone; the report already says how the connection ended

    def _collect(self, satisfied: Callable[[], bool], deadline: Optional[float]) -> None:
        """Take worker reports until ``satisfied()`` or the deadline; requests are moot now."""
        while not satisfied():
            try:
                item = self._w.done.get(timeout=remaining(deadline))
            except queue.Empty:
                return
            if isinstance(item, WorkerExit):
                self._exits[item.role] = item


def _cause_of(first: WorkerExit) -> _Cause:
    """What the first worker report means when nobody asked to close."""
    if first.role == "reader":
        if first.peer_close is not None:
            code, reason = first.peer_close
            reply_code = code if code in _SENDABLE_REPLY_CODES or 3000 <= code <= 4999 else 1000
            return _Cause("reader", Reason.PEER_CLOSED, None, code, reason, (reply_code, reason))
        if first.error is None or isinstance(first.error, TransportError):
            return _Cause("reader", Reason.READ_ERROR, first.error)
        # The on_message callback raised: the connection is fine, so tell the peer politely.
        return _Cause("reader", Reason.READ_ERROR, first.error, 1011, "", (1011, ""))
    if first.role == "writer":
        return _Cause("writer", Reason.WRITE_ERROR, first.error)
    code = 1000 if first.error is None else 1011
    return _Cause(first.role, Reason.WORKER_EXIT, first.error, code, "", (code, ""))


def remaining(deadline: Optional[float]) -> Optional[float]:
    """Seconds left until ``deadline`` (a ``time.monotonic()`` value); None means no limit."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())
