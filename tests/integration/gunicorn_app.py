"""A WSGI app on accept() and Hubs, with its Gunicorn hooks, served by a real Gunicorn in test_gunicorn.py.

Routes: ``/chat`` is a room where every message goes to every other member; every other path
but two is an echo (``/echo``; ``/ws`` for test_werkzeug.py's hostile client). A request to a
WebSocket route that is not an upgrade gets the 4xx that accept() names. Plain HTTP:
``/requests`` answers with the requests the app has seen (for the smuggling test), and
``/connections`` with how many connections the gthread worker counts (``nr_conns``).

The module is Gunicorn's configuration too (``-c python:gunicorn_app``): the master imports it
before it forks the worker, so the worker's app (``gunicorn_app:app``) is this very module and
the hooks below see its hubs.

What matters for accept() under Gunicorn's gthread worker (read from gunicorn/workers/gthread.py
27.0 and checked by test_gunicorn.py):

- ``--threads``: a WebSocket holds one thread of the worker's pool for its whole life (the view
  runs until the connection ends). Once every thread is taken, new connections queue inside
  the worker, plain HTTP requests as much as WebSocket upgrades, until a WebSocket ends. The
  thread count is how many clients one worker serves at once, everything else included.
  ``--worker-connections`` (1000) also counts the WebSockets.
- ``--timeout`` does not limit a WebSocket: the gthread worker's main loop tells the master it
  is alive every second whatever its pool threads are doing (only the sync worker is killed
  for a long request).
- ``--keep-alive`` does not apply: the connection is in a pool thread, not among the idle kept
  alive ones, while the WebSocket lives, and closed once the view returns.
- ``--graceful-timeout`` (30 s): on SIGTERM the worker stops accepting and waits that long for
  its views, which never end by themselves. Then the worker cannot exit (its pool threads are
  still in the views) and the master kills it: every client is cut off without a close frame
  (1006 for the client). No Gunicorn hook runs in the worker at SIGTERM (``worker_exit`` runs
  after the wait, racing the kill), so :func:`post_worker_init` chains a SIGTERM handler that
  closes the hubs with 1001: the views end, and Gunicorn exits at once.
"""

from __future__ import annotations

import json
import signal
import threading
from types import FrameType
from typing import Any, Callable, Iterable, List, Optional

import duplexthreads
from duplexthreads import ConnectionClosedError, HandshakeRejected, UsageError

#: Under what the echo test sends (70,000 bytes), over what the size test sends.
MAX_MESSAGE_SIZE = 100_000

room = duplexthreads.Hub()
# Not a room: the echo connections, so that a shutdown closes them too.
echoes = duplexthreads.Hub()

# "METHOD PATH" of every request, for the smuggling test; list.append is atomic.
seen: List[str] = []
# The Gunicorn worker running the app, once post_worker_init has run (with this configuration).
# Gunicorn reads every module-level name of its configuration that is a setting's ("workers").
running: List[Any] = []

StartResponse = Callable[..., Any]


def app(environ: Any, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    seen.append(f"{environ.get('REQUEST_METHOD')} {path}")
    if path == "/requests":
        return _answer(start_response, "200 OK", json.dumps(seen), "application/json")
    if path == "/connections":
        return _answer(start_response, "200 OK", json.dumps({"nr_conns": running[0].nr_conns}), "application/json")
    try:
        conn = duplexthreads.accept(environ, max_message_size=MAX_MESSAGE_SIZE)
    except HandshakeRejected as exc:
        return _answer(start_response, f"{exc.status} Not a WebSocket", str(exc))
    hub = room if path == "/chat" else echoes
    try:
        hub.add(conn)
    except UsageError:  # the hubs are closed: the server is shutting down
        conn.close(1001)
    try:
        for message in conn:
            if hub is room:
                room.broadcast(message, exclude=conn)
            else:
                conn.send(message)
    except ConnectionClosedError:
        pass  # failed (a message over the size limit, a client gone): conn.report says how
    # Never sent: the socket was the WebSocket's, and Gunicorn's write of this response fails
    # as a broken pipe, which it takes for a client gone. The view must not return earlier:
    # Gunicorn closes the connection once it has.
    return _answer(start_response, "200 OK", "")


def _answer(start_response: StartResponse, status: str, body: str, kind: str = "text/plain") -> List[bytes]:
    data = body.encode()
    start_response(status, [("Content-Type", kind), ("Content-Length", str(len(data)))])
    return [data]


def close_hubs() -> None:
    # Side by side: each close waits for its clients' answers (bounded by close_timeout).
    closers = [
        threading.Thread(target=hub.close, name=f"close-{name}") for name, hub in (("room", room), ("echoes", echoes))
    ]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join()


# -- Gunicorn hooks ---------------------------------------------------------------------------------


def post_worker_init(worker: Any) -> None:
    """Close the hubs (1001) as soon as the worker is told to stop, not after the graceful wait."""
    running.append(worker)
    stop: Any = signal.getsignal(signal.SIGTERM)  # the worker's own handler: it stops the worker

    def on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
        # A signal handler must not block the worker's main loop: the hubs close in a thread
        # (not a daemon: the worker's exit waits for it, and it is bounded by close_timeout).
        threading.Thread(target=close_hubs, name="close-hubs").start()
        stop(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
