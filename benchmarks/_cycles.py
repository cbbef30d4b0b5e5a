"""The soak's cycles: open a connection, exchange messages, inject one fault, check the end.

``memory_cycle`` runs over ``memory_pair()`` with a peer thread on the far end;
``loopback_cycle`` runs ``duplexthreads.connect`` against ``duplexthreads.testing.ScriptedPeer``.
Both return a :class:`Cycle` whose ``problems`` list what did not hold (see ``soak.py``).
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set

import duplexthreads
from duplexthreads import ConnectionClosed, Duplex, ExitReport, Reason
from duplexthreads.report import Message
from duplexthreads.testing import MemoryPeer, PeerConnection, ScriptedPeer
from duplexthreads.transports import MemoryTransport, memory_pair

from ._clients import IO_TIMEOUT
from ._servers import discard_pending, end_connection, park_reader

#: Bound on every wait of a cycle: the report, a receive, the peer's end.
CYCLE_TIMEOUT = 5.0
#: close_timeout for cycles where the close is meant to time out (silent or non-reading peer).
SHORT_CLOSE_TIMEOUT = 0.05
#: close_timeout elsewhere: the peer answers at once.
CLOSE_TIMEOUT = 2.0
MAX_MESSAGES = 20

MEMORY_ALLOWED: Dict[str, Set[Reason]] = {
    "reset": {Reason.READ_ERROR, Reason.WRITE_ERROR},
    "fin": {Reason.READ_ERROR},
    "fail_writes": {Reason.WRITE_ERROR},
    "fail_next_read": {Reason.READ_ERROR},
    "stop_reading_close": {Reason.LOCAL_CLOSE},
    "peer_close": {Reason.PEER_CLOSED},
    "abort": {Reason.ABORTED},
    "local_close": {Reason.LOCAL_CLOSE},
    "callback_error": {Reason.READ_ERROR},
}
LOOPBACK_ALLOWED: Dict[str, Set[Reason]] = {
    "reset": {Reason.READ_ERROR, Reason.WRITE_ERROR},
    "fin": {Reason.READ_ERROR},
    "peer_close": {Reason.PEER_CLOSED},
    "silent_close": {Reason.LOCAL_CLOSE},
    "write_error": {Reason.WRITE_ERROR},
    "abort": {Reason.ABORTED},
    "local_close": {Reason.LOCAL_CLOSE},
}


class InjectedError(Exception):
    """Raised by the on_message callback on purpose."""


@dataclass
class Cycle:
    """What one cycle did and saw; ``problems`` empty means it passed."""

    kind: str
    fault: str
    sent: List[Message] = field(default_factory=list)
    peer_sent: List[Message] = field(default_factory=list)
    received: List[Message] = field(default_factory=list)
    report: Optional[ExitReport] = None
    problems: List[str] = field(default_factory=list)

    def send(self, conn: Duplex, count: int) -> None:
        """Send ``count`` numbered messages; those refused (connection ending) were not accepted."""
        for _ in range(count):
            message = f"m{len(self.sent)}"
            try:
                conn.send(message, timeout=CYCLE_TIMEOUT)
            except ConnectionClosed:
                return
            except TimeoutError:
                self.problems.append("send() still blocked after the cycle timeout")
                return
            self.sent.append(message)

    def receive(self, conn: Duplex, count: int) -> None:
        for _ in range(count):
            try:
                self.received.append(conn.recv(timeout=CYCLE_TIMEOUT))
            except ConnectionClosed:
                return
            except TimeoutError:
                self.problems.append("a message the peer sent did not arrive")
                return

    def check(self, allowed: Set[Reason], conn: Duplex, peer_received: List[Message], graceful: bool) -> None:
        """The checks of the module docstring, on a connection that has ended."""
        report = self.report
        if report is None:
            return
        if report.reason not in allowed:
            allowed_names = sorted(r.value for r in allowed)
            self.problems.append(f"reason {report.reason.value}, allowed {allowed_names}: {report.describe()}")
        written = report.written
        if self.sent != self.sent[:written] + list(report.unsent):
            self.problems.append(
                f"P4: {len(self.sent)} accepted != {written} written + {len(report.unsent)} unsent (or out of order)"
            )
        if len(peer_received) > written or peer_received != self.sent[: len(peer_received)]:
            self.problems.append(f"P4: the peer received {len(peer_received)}, not a prefix of the {written} written")
        if self.received != self.peer_sent[: len(self.received)]:
            self.problems.append("we received messages the peer did not send, or out of order")
        if graceful and (not report.ok or peer_received != self.sent):
            self.problems.append(f"graceful close: ok={report.ok}, peer got {len(peer_received)} of {len(self.sent)}")
        if report.lingering:
            self.problems.append(f"P1: lingering {list(report.lingering)}")
        alive = [thread.name for thread in conn.threads() if thread.is_alive()]
        if alive:
            self.problems.append(f"P1: alive after wait(): {alive}")
        if not conn.transport.closed:
            self.problems.append("P2: transport not closed")

    def await_report(self, conn: Duplex, request: Optional[Callable[[], Optional[ExitReport]]]) -> None:
        """Wait (bounded) for the report; ``request`` is the close()/abort() that ends the cycle."""
        try:
            if request is not None:
                request()
            self.report = conn.wait(CYCLE_TIMEOUT)
        except TimeoutError:
            self.problems.append(f"no report within {CYCLE_TIMEOUT:g} s")
            conn.transport.shutdown()
            conn.abort()
            self.report = conn.wait(CYCLE_TIMEOUT)


# -- (a) memory -------------------------------------------------------------------------------------


def memory_cycle(rng: random.Random, fault: str) -> Cycle:
    cycle = Cycle("memory", fault)
    ours, theirs = memory_pair()

    def on_message(message: Message) -> None:
        if message == "boom":
            raise InjectedError("on_message raised on purpose")
        cycle.received.append(message)

    callback = fault == "callback_error"
    close_timeout = SHORT_CLOSE_TIMEOUT if fault == "stop_reading_close" else CLOSE_TIMEOUT
    conn = Duplex(ours, on_message=on_message if callback else None, close_timeout=close_timeout)
    peer = MemoryPeer(theirs, timeout=CYCLE_TIMEOUT)
    conn.start()
    try:
        cycle.send(conn, rng.randint(0, MAX_MESSAGES))
        for number in range(rng.randint(0, MAX_MESSAGES)):
            cycle.peer_sent.append(f"p{number}")
            theirs.send_batch([cycle.peer_sent[-1]])
        if not callback:
            cycle.receive(conn, rng.randint(0, len(cycle.peer_sent)))
        request = inject_memory_fault(rng, fault, cycle, conn, ours, theirs, peer)
        cycle.await_report(conn, request)
    finally:
        conn.abort()  # a no-op once ended; here for a cycle that raised
        try:
            peer.stop()
        except TimeoutError:
            pass  # reported below as the peer's thread still running
    if callback and not isinstance(cycle.report and cycle.report.error, InjectedError):
        cycle.problems.append(f"callback error: report error {cycle.report and cycle.report.error!r}")
    if ours.close_calls != 1:
        cycle.problems.append(f"P2: transport closed {ours.close_calls} times")
    if peer.thread.is_alive():
        cycle.problems.append("the peer's thread did not end")
    cycle.check(MEMORY_ALLOWED[fault], conn, peer.received, graceful=fault == "local_close")
    return cycle


def inject_memory_fault(
    rng: random.Random,
    fault: str,
    cycle: Cycle,
    conn: Duplex,
    ours: MemoryTransport,
    theirs: MemoryTransport,
    peer: MemoryPeer,
) -> Optional[Callable[[], Optional[ExitReport]]]:
    """Inject ``fault``; return the close()/abort() call that ends the cycle, if the fault is one."""
    request: Optional[Callable[[], Optional[ExitReport]]] = None
    if fault == "reset":
        theirs.reset()
    elif fault == "fin":
        theirs.fin()
    elif fault == "fail_writes":
        after = rng.randint(0, 3)
        ours.fail_writes(OSError("injected write failure"), after=after)
        cycle.send(conn, after + 1 + rng.randint(0, 3))
    elif fault == "fail_next_read":
        ours.fail_next_read(OSError("injected read failure"))
    elif fault == "stop_reading_close":
        theirs.stop_reading()
        cycle.send(conn, rng.randint(1, 5))
        request = conn.close
    elif fault == "peer_close":
        peer.close(1000, "bye")
    elif fault == "abort":
        request = conn.abort
    elif fault == "local_close":
        request = conn.close
    elif fault == "callback_error":
        cycle.peer_sent.append("boom")
        theirs.send_batch(["boom"])
    else:
        raise ValueError(f"unknown fault {fault!r}")
    if request is None and rng.random() < 0.5:
        cycle.send(conn, rng.randint(1, 5))  # racing the teardown: accepted or refused, never lost
    return request


# -- (b) loopback -------------------------------------------------------------------------------------


def loopback_cycle(rng: random.Random, fault: str, backend: str, peer: ScriptedPeer) -> Cycle:
    cycle = Cycle(backend, fault)
    close_timeout = SHORT_CLOSE_TIMEOUT if fault == "silent_close" else CLOSE_TIMEOUT
    try:
        conn = duplexthreads.connect(peer.url, backend=backend, open_timeout=IO_TIMEOUT, close_timeout=close_timeout)
    except BaseException:
        discard_pending(peer)
        raise
    theirs: Optional[PeerConnection] = None
    try:
        theirs = peer.next_connection(IO_TIMEOUT)
        cycle.send(conn, rng.randint(0, MAX_MESSAGES))
        for number in range(rng.randint(0, MAX_MESSAGES)):
            cycle.peer_sent.append(f"p{number}")
            theirs.send(cycle.peer_sent[-1])
        cycle.receive(conn, rng.randint(0, len(cycle.peer_sent)))
        request: Optional[Callable[[], Optional[ExitReport]]] = None
        if fault == "reset":
            theirs.reset()
        elif fault == "fin":
            theirs.drop()
        elif fault == "peer_close":
            theirs.close(1000, "bye")
        elif fault == "silent_close":
            theirs.go_silent()
            request = conn.close
        elif fault == "write_error":

            def send_counted(message: bytes) -> None:
                conn.send(message)
                cycle.sent.append(message)

            # The peer reads nothing more, so its end of stream cannot race our writer's error.
            park_reader(theirs, len(cycle.sent), send_counted)
            conn.transport.raw_socket.shutdown(socket.SHUT_WR)  # type: ignore[attr-defined]
            cycle.send(conn, 1)
        elif fault == "abort":
            request = conn.abort
        elif fault == "local_close":
            request = conn.close
        else:
            raise ValueError(f"unknown fault {fault!r}")
        if request is None and rng.random() < 0.5:
            cycle.send(conn, rng.randint(1, 5))
        cycle.await_report(conn, request)
        # A reset ends the peer's side at once; a parked peer never reads our end of stream.
        if fault not in ("reset", "write_error") and not theirs.wait_ended(CYCLE_TIMEOUT):
            cycle.problems.append("the peer's connection did not end")
    finally:
        conn.abort()
        received = [] if theirs is None else theirs.received
        if theirs is not None:
            end_connection(theirs)
    cycle.check(LOOPBACK_ALLOWED[fault], conn, received, fault == "local_close")
    return cycle
