"""``close_all()``: end many connections at once, for servers and tools that hold thousands.

Closing connections one after another costs each one's teardown in turn: a few thread
wake-ups for an abort, a round trip for a close. ``close_all`` first starts ending every
connection (an abort stops each at once; a close queues each close frame behind that
connection's messages), and only then waits for them, so the wake-ups and round trips overlap.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

from ._owner import AbortRequest, Owner, _Cause
from .report import ExitReport
from .session import Duplex, close_request

__all__ = ["close_all"]


def close_all(
    connections: Iterable[Duplex], code: int = 1000, reason: str = "", *, abort: bool = False
) -> List[ExitReport]:
    """Close (or with ``abort=True``, abort) every connection; return their reports in order.

    Each connection's own ``close_timeout`` bounds its close, and the closes run side by side:
    no connection's close waits for another's to finish. Connections already closed or closing
    are waited for. When this returns, every thread of every connection has exited.
    Call it from a thread of your own, not from an ``on_message`` callback.
    """
    conns = list(connections)
    for conn in conns:
        if not isinstance(conn, Duplex):
            raise TypeError(f"close_all() takes Duplex connections, not {type(conn).__name__}")
    request = AbortRequest() if abort else close_request(code, reason)
    begun: List[Tuple[Duplex, Owner, Optional[_Cause]]] = []
    concluded = 0
    try:
        for conn in conns:
            step = conn._begin_ending(request)
            if step is not None:
                begun.append((conn, *step))
        for conn, owner, stopped_for in begun:
            conn._conclude(owner, stopped_for)
            concluded += 1
    finally:
        # Only after an exception (Ctrl-C, say): the connections this call took over are
        # still ours to end, and nobody else will.
        for conn, owner, _ in begun[concluded:]:
            if not conn.closed:
                conn._publish(owner.finish(None))
    return [conn.wait() for conn in conns]
