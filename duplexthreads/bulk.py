"""``close_all()``: end many connections at once, for servers and tools that hold thousands.

Closing connections one after another costs each one's teardown in turn: a few thread
wake-ups for an abort, a round trip for a close. ``close_all`` first starts ending every
connection (an abort stops each at once; a close queues each close frame behind that
connection's messages), and only then waits for them, so the wake-ups and round trips overlap.
"""

from __future__ import annotations

from typing import Iterable, List, Sequence

from ._causes import AbortRequest, close_request
from ._protocol import ExitProtocol
from ._rfc6455 import NORMAL_CLOSURE, check_close_code, check_close_reason
from .exceptions import UsageError
from .report import ExitReport
from .session import Duplex

__all__ = ["close_all", "end_all"]


def close_all(
    connections: Iterable[Duplex], code: int = 1000, reason: str = "", *, abort: bool = False
) -> List[ExitReport]:
    """Close (or with ``abort=True``, abort) every connection; return their reports in order.

    Each connection's own ``close_timeout`` bounds its close, and the closes run side by side:
    no connection's close waits for another's to finish. Connections already closed or closing
    are waited for. When this returns, every thread of every connection has exited.
    Call it from a thread of your own, not from an ``on_message`` callback (``UsageError``).
    """
    if isinstance(connections, Duplex):
        # A Duplex is iterable (over its messages): list() would read them, and never return.
        raise TypeError("close_all() takes an iterable of connections: close_all([conn]), or conn.close()")
    if not isinstance(abort, bool):
        raise TypeError(f"abort must be True or False, not {abort!r}")
    conns = list(connections)
    for conn in conns:
        if not isinstance(conn, Duplex):
            raise TypeError(f"close_all() takes Duplex connections, not {type(conn).__name__}")
    check_close_code(code)
    check_close_reason(reason)
    end_all([conn._protocol for conn in conns], code, reason, abort=abort)
    return [conn.wait() for conn in conns]


def end_all(
    protocols: Sequence[ExitProtocol],
    code: int = NORMAL_CLOSURE,
    reason: str = "",
    *,
    abort: bool = False,
    exiting: bool = False,
) -> None:
    """Start ending every connection, then finish each: the teardowns overlap.

    Each close gets its connection's own ``close_timeout`` (at interpreter exit, ``exiting``,
    one without a limit gets :data:`EXIT_CLOSE_TIMEOUT`). Returns once every connection this
    call took over has published its report; the others are ending under their own owners.
    """
    for protocol in protocols:
        # Before touching any: a refusal must leave every connection as it was.
        if protocol.in_own_thread():
            raise UsageError("close_all() cannot run in one of the connections' own threads")
    begun: List[ExitProtocol] = []
    concluded = 0
    try:
        for protocol in protocols:
            timeout = protocol.bounded_close_timeout if exiting else protocol.close_timeout
            request = AbortRequest() if abort else close_request(code, reason, timeout)
            if protocol.start_ending(request):
                begun.append(protocol)
        for protocol in begun:
            protocol.finish_ending()
            concluded += 1
    except BaseException:
        # Ctrl-C, say: the connections this call took over are still ours to end, and nobody
        # else will. Each is tried even if another Ctrl-C comes: a failed one abandons itself
        # and publishes its report, and the first exception is the one that propagates.
        for protocol in begun[concluded:]:
            try:
                if not protocol.finished.is_set():
                    protocol.finish_ending(abort=True)
            except BaseException:  # noqa: BLE001 - the rest must still be ended
                continue
        raise
