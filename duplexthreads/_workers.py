"""The worker loops: reader and writer, and the wrapper every worker thread runs in.

Each loop returns a :class:`WorkerExit`; :func:`run_worker` posts exactly one report on the
done queue from ``finally``, whatever happens, so the owner can always count its workers home.
"""

from __future__ import annotations

import threading
from typing import Callable, List, Optional, Tuple

from ._queues import SealableQueue, Sealed
from .exceptions import ConnectionClosed, TransportError
from .report import Message, WorkerExit
from .transports.base import CloseFrame, PeerClosingError, Transport, WriteError

#: Most messages the writer takes off the queue for one write.
MAX_BATCH = 1024


class WriterActivity:
    """Whether the writer may be inside a write; set by the writer, read by an owner.

    A plain attribute, not an Event: nobody waits on it, and reads and writes of one
    attribute are atomic in CPython, so a lock would only cost memory per connection.
    """

    __slots__ = ("writing",)

    def __init__(self) -> None:
        self.writing = False


def run_worker(role: str, body: Callable[[], WorkerExit], on_exit: Callable[[WorkerExit], None]) -> None:
    """Thread target: run ``body``, then hand its one report to ``on_exit``, even if it raised.

    ``on_exit`` either posts the report on the done queue or, for the first worker to end,
    runs the owner protocol right here in this thread.
    """
    report: Optional[WorkerExit] = None
    try:
        report = body()
    except BaseException as exc:  # noqa: BLE001 - the report carries it to the owner
        report = WorkerExit(role, error=exc)
    finally:
        if report is None:  # only if building the exception's report itself failed
            report = WorkerExit(role, error=RuntimeError(f"{role} ended without a report"))
        on_exit(report)


def read_loop(transport: Transport, deliver: Callable[[Message], None]) -> WorkerExit:
    """Receive until the peer's close frame or an error; hand each message to ``deliver``.

    ``deliver`` is the ``on_message`` callback or a put on the inbound queue; an exception it
    raises ends the loop and becomes the reader's error (``Sealed`` means teardown stopped us).
    """
    while True:
        try:
            item = transport.recv()
        except TransportError as exc:
            return WorkerExit("reader", error=exc)
        if isinstance(item, CloseFrame):
            return WorkerExit("reader", peer_close=(item.code, item.reason))
        try:
            deliver(item)
        except Sealed:
            return WorkerExit("reader")
        except ConnectionClosed:
            # The callback tried to send while we are closing (an echo, say). That is no
            # failure of the connection: keep reading, so the peer's answer is still seen.
            continue


def write_loop(
    transport: Transport,
    outbound: SealableQueue[Message],
    quit: threading.Event,
    close_request: Callable[[], Optional[Tuple[int, str]]],
    activity: WriterActivity,
) -> WorkerExit:
    """Write what the application queues, in batches, until quit or a graceful close.

    A sealed and empty queue without quit means a graceful close: everything accepted was
    written, so the writer sends our close frame and ends. With quit set, whatever the writer
    holds goes back to the owner as ``unwritten``. ``activity.writing`` is True while a write may be under
    way, so an owner answering a peer's close knows whether the writer can stop at once.
    """
    written = 0
    while True:
        activity.writing = False
        batch: List[Message] = outbound.get_batch(MAX_BATCH)
        if quit.is_set():
            return WorkerExit("writer", unwritten=tuple(batch), written=written)
        # Set only now, past the quit check: an idle writer woken to leave never looks busy.
        activity.writing = True
        if not batch:
            request = close_request()
            if request is None:
                return WorkerExit("writer", written=written)
            try:
                transport.send_close(*request)
            except TransportError as exc:
                return WorkerExit("writer", error=exc, written=written)
            return WorkerExit("writer", close_sent=True, written=written)
        try:
            transport.send_batch(batch)
        except PeerClosingError as exc:
            # The reader is about to report the peer's close frame and end the connection;
            # let it. Everything from here on goes back unwritten.
            written += exc.written
            activity.writing = False
            quit.wait()
            return WorkerExit("writer", unwritten=tuple(batch[exc.written :]), written=written)
        except WriteError as exc:
            written += exc.written
            return WorkerExit("writer", error=exc, unwritten=tuple(batch[exc.written :]), written=written)
        except TransportError as exc:
            return WorkerExit("writer", error=exc, unwritten=tuple(batch), written=written)
        written += len(batch)


def extra_worker(role: str, target: Callable[[threading.Event], None], quit: threading.Event) -> WorkerExit:
    """Run an application worker; it must return promptly once ``quit`` is set."""
    target(quit)
    return WorkerExit(role)
