"""Running websockets' threading server as a test peer, and stopping it without leaks."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from websockets.sync.server import Server, ServerConnection, serve

from ..timing import UNIT


@contextmanager
def running_server(handler: Callable[[ServerConnection], None], **options: Any) -> Iterator[Server]:
    """A websockets server on 127.0.0.1, serving in a thread until the block ends."""
    server = serve(handler, "127.0.0.1", 0, **options)
    thread = threading.Thread(target=server.serve_forever, name="test-websockets-server")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(10 * UNIT)
        assert not thread.is_alive()
        # websockets 15 and older (the last for Python 3.9) make a shutdown pipe and never
        # close it; newer ones use a socket pair they close themselves.
        for name in ("shutdown_watcher", "shutdown_notifier"):
            fd = getattr(server, name, None)
            if isinstance(fd, int):
                os.close(fd)
