"""Every connection of this process that is not closed yet: for leak reports, at exit, after fork.

A connection's threads hold it, so dropping the last reference to an open connection does not
end it: it runs until it is closed, like a thread runs until it returns. This registry makes
that lifetime visible and safe at its two edges:

- **Leak reports.** Each connection records where the application opened it;
  ``duplexthreads.testing``'s leak check names the connections a block left open and where.
- **Interpreter exit.** Messages a script queued and never waited for would be lost when the
  interpreter kills the daemon threads. An ``atexit`` hook closes every open connection
  gracefully instead (flush, then close code 1001 "going away"), all at once, each within its
  own ``close_timeout``, as ``concurrent.futures`` joins its workers at exit. A connection made
  with ``close_at_exit=False`` is left alone. The hook is an ordinary ``atexit`` one, so it runs
  after the interpreter has joined the application's non-daemon threads: those may still be
  using their connections, and closing them earlier would cut a conversation off mid-way.
- **fork().** A child process inherits the parent's descriptors but none of its threads. In
  the child every inherited connection is marked: using it raises ``UsageError``, and closing
  it only releases the child's descriptor, so the parent's connection goes on untouched.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import TYPE_CHECKING, Dict, List, Tuple

from ._deadline import deadline_after, remaining

if TYPE_CHECKING:
    from ._protocol import ExitProtocol

__all__ = ["live", "register", "unregister", "where_opened"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_TESTING_DIR = os.path.join(_PACKAGE_DIR, "testing")

#: A place in the application's code: (file, line, function).
Place = Tuple[str, int, str]

# Guards _live; replaced in a child after fork, where a thread of the parent may have held it.
_lock = threading.Lock()
# Connection id -> its protocol, from creation until its report is published.
_live: Dict[int, ExitProtocol] = {}


def register(protocol: ExitProtocol) -> None:
    with _lock:
        _live[protocol.connection_id] = protocol


def unregister(protocol: ExitProtocol) -> None:
    with _lock:
        _live.pop(protocol.connection_id, None)


def live() -> List[ExitProtocol]:
    """The connections of this process not closed yet, oldest first."""
    with _lock:
        return list(_live.values())


def where_opened(limit: int = 3) -> Tuple[Place, ...]:
    """The innermost ``limit`` frames of the caller's stack outside this package.

    Cheap enough for every connection: no source lines are read until a report prints them.
    Our own testing helpers count as the application, since users call them to open peers.
    """
    places: List[Place] = []
    frame = sys._getframe(1)
    while frame is not None and len(places) < limit:
        filename = frame.f_code.co_filename
        ours = filename.startswith(_PACKAGE_DIR) and not filename.startswith(_TESTING_DIR)
        if not ours:
            places.append((filename, frame.f_lineno, frame.f_code.co_name))
        frame = frame.f_back  # type: ignore[assignment]
    return tuple(places)


def _close_open_connections_at_exit() -> None:
    # Imported here: those modules import this one.
    from ._protocol import WAKE_TIMEOUT
    from ._rfc6455 import GOING_AWAY
    from .bulk import end_all

    conns = [conn for conn in live() if conn.close_at_exit and not conn.inherited]
    if not conns:
        return
    deadline = deadline_after(max(conn.bounded_close_timeout for conn in conns) + WAKE_TIMEOUT)
    end_all(conns, GOING_AWAY, exiting=True)
    # Connections another thread was already ending are theirs to finish: wait for them, all
    # within one bound (the longest close plus the wake-up backstop), so that exit never hangs.
    for conn in conns:
        if not conn.finished.wait(remaining(deadline)):
            break


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    inherited = list(_live.values())
    _live.clear()
    for protocol in inherited:
        protocol.mark_inherited()


atexit.register(_close_open_connections_at_exit)
if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)
