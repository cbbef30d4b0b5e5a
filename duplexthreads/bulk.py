"""``close_all()``: end many connections at once, for servers and tools that hold thousands.

Closing connections one after another costs each one's teardown in turn: a few thread
wake-ups for an abort, a round trip for a close. ``close_all`` first starts ending every
connection (an abort stops each at once; a close queues each close frame behind that
connection's messages), and only then waits for them, so the wake-ups and round trips overlap.
"""

from __future__ import annotations

from typing import Iterable, List

from ._protocol import end_all
from ._rfc6455 import check_close_code, check_close_reason
from .report import ExitReport
from .session import Duplex

__all__ = ["close_all"]


def close_all(
    connections: Iterable[Duplex], code: int = 1000, reason: str = "", *, abort: bool = False
) -> List[ExitReport]:
    """Close (or with ``abort=True``, abort) every connection; return their reports in order.

    Each connection's own ``close_timeout`` bounds its close, and the closes run side by side:
    no connection's close waits for another's to finish. Connections already closed or closing
    are waited for. When this returns, every thread of every connection has exited.
    Call it from a thread of your own, not from an ``on_message`` callback (``UsageError``).
    """
    conns = list(connections)
    for conn in conns:
        if not isinstance(conn, Duplex):
            raise TypeError(f"close_all() takes Duplex connections, not {type(conn).__name__}")
    check_close_code(code)
    check_close_reason(reason)
    end_all([conn._protocol for conn in conns], code, reason, abort=abort)
    return [conn.wait() for conn in conns]
