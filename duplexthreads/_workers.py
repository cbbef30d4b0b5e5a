"""The worker loops: reader and writer, and the wrapper every worker thread runs in.

Each loop returns a :class:`WorkerExit`; :func:`run_worker` hands exactly one report to the
exit protocol from ``finally``, whatever happens, so the owner can always count its workers home.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, List, Optional, Tuple

from ._queues import Resume, SealableQueue, Sealed, message_of
from .exceptions import ConnectionClosed, TransportError
from .report import Message, WorkerExit
from .transports.base import CloseFrame, PeerClosingError, Transport, WriteError

#: Most messages the writer takes off the queue for one write.
MAX_BATCH = 1024


def run_worker(role: str, body: Callable[[], WorkerExit], on_exit: Callable[[WorkerExit], None]) -> None:
    """Thread target: run ``body``, then hand its one report to ``on_exit``, even if it raised.

    ``on_exit`` either posts the report on the done queue or, for the first worker to end,
    runs the owner's part of the protocol right here in this thread.
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


def read_loop(transport: Transport, deliver: Callable[[Message], None], connection_id: int) -> WorkerExit:
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
        except ConnectionClosed as exc:
            if getattr(exc, "connection_id", None) != connection_id:  # a subclass may skip __init__
                # Another connection is closed (a relay's other end): the callback failed.
                return WorkerExit("reader", error=exc)
            # The callback tried to send on this connection while it closes (an echo, say).
            # That is no failure: keep reading, so the peer's answer is still seen.
            continue


def write_loop(transport: Transport, outbound: SealableQueue[Message], quit: threading.Event) -> WorkerExit:
    """Write what the application queues, in batches, until the queue is stopped or closed.

    A sealed queue that runs dry with ``then_close`` set is a graceful close: everything
    accepted was written, so the writer sends our close frame and ends. A stopped queue ends
    the writer at once; what it holds goes back to the owner as ``unwritten``. A batch may
    start with a :class:`Resume`: the rest of a frame that ``send()`` began writing directly,
    which must go out before anything else.

    Whatever escapes a write, the count stays exact: a transport raises :class:`WriteError`
    with the number of messages written once any byte of the batch may be out, and any other
    exception means none of the batch was written.
    """
    written = 0
    while True:
        batch: List[Any] = outbound.get_batch(MAX_BATCH)
        if not batch:
            close = None if outbound.stopped else outbound.then_close
            if close is None:
                return WorkerExit("writer", written=written)
            try:
                transport.send_close(*close)
            except BaseException as exc:  # noqa: BLE001 - the report carries it to the owner
                return WorkerExit("writer", error=exc, written=written)
            return WorkerExit("writer", close_sent=close, written=written)
        done = 0  # messages of this batch written completely
        try:
            head = batch[0]
            if isinstance(head, Resume):
                if head.rest is None:
                    transport.send_batch([head.message])
                else:
                    transport.send_rest(head.rest)
                done = 1
            if len(batch) > done:
                transport.send_batch(batch[done:] if done else batch)
        except PeerClosingError as exc:
            # The reader is about to report the peer's close frame and end the connection;
            # let it. Everything from here on goes back unwritten.
            written += done + exc.written
            outbound.retire()
            quit.wait()
            return WorkerExit("writer", unwritten=_messages(batch[done + exc.written :]), written=written)
        except WriteError as exc:
            written += done + exc.written
            return WorkerExit("writer", error=exc, unwritten=_messages(batch[done + exc.written :]), written=written)
        except BaseException as exc:  # noqa: BLE001 - the rest of the batch goes back whole
            written += done
            return WorkerExit("writer", error=exc, unwritten=_messages(batch[done:]), written=written)
        written += len(batch)
        outbound.batch_done()


def _messages(items: List[Any]) -> Tuple[Message, ...]:
    return tuple(message_of(item) for item in items)


def extra_worker(role: str, target: Callable[[threading.Event], None], quit: threading.Event) -> WorkerExit:
    """Run an application worker; it must return promptly once ``quit`` is set."""
    target(quit)
    return WorkerExit(role)
