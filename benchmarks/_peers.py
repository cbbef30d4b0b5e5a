"""The server side of the benchmarks: websockets' threading server, run as a child process.

``python benchmarks/_peers.py`` listens on 127.0.0.1 at a free port, prints the port on one
line of stdout, and serves until its stdin reaches end of file (the parent closes the pipe, or
dies) or ``--max-seconds`` pass, then shuts the server down and joins every thread it started.

It runs in its own process so that the client under test and the server do not share a GIL:
on a 2-core machine each gets a core, and the client's numbers are not the server's.

The URL path selects the handler:

``/count?n=N&size=S``
    Count incoming messages; once N have arrived, send ``"done"`` (or ``"bad: ..."`` if any
    message was not S bytes of binary). Then keep reading until the client closes.
``/echo``
    Send every message back.
``/close``
    Echo, until the text message ``"close"`` arrives: then read ``time.monotonic_ns()`` and
    close with code 1000 and that number as the reason. On Linux (and macOS) the monotonic clock
    is shared by every process, so the client can measure from the server's close call.
"""

from __future__ import annotations

import argparse
import os
import selectors
import sys
import threading
import time
from typing import List, Optional
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

__all__ = ["main"]


def handle(ws: ServerConnection) -> None:
    """Dispatch one connection on its path; a connection ending abruptly is not an error here."""
    assert ws.request is not None  # set once the opening handshake is done
    parts = urlsplit(ws.request.path)
    try:
        if parts.path == "/count":
            query = parse_qs(parts.query)
            count_messages(ws, int(query["n"][0]), int(query["size"][0]))
        elif parts.path == "/echo":
            echo(ws, close_on=None)
        elif parts.path == "/close":
            echo(ws, close_on="close")
        else:
            ws.close(1008, f"unknown path {parts.path}")
    except ConnectionClosed:
        pass  # aborts and kills are part of the benchmark


def count_messages(ws: ServerConnection, expected: int, size: int) -> None:
    received = 0
    wrong = 0
    for message in ws:
        received += 1
        if not isinstance(message, bytes) or len(message) != size:
            wrong += 1
        if received == expected:
            ws.send("done" if not wrong else f"bad: {wrong} of {received} messages were not {size} B binary")


def echo(ws: ServerConnection, close_on: Optional[str]) -> None:
    for message in ws:
        if close_on is not None and message == close_on:
            ws.close(1000, str(time.monotonic_ns()))
            return
        ws.send(message)


def wait_for_eof(max_seconds: float) -> None:
    """Block until stdin reaches end of file, or ``max_seconds`` pass; nothing polls."""
    deadline = time.monotonic() + max_seconds
    stdin = sys.stdin.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(stdin, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (selector.select(remaining) and not os.read(stdin, 4096)):
                return


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="stop after this long in any case")
    args = parser.parse_args(argv)
    # Pings off: the plain send loops never read, so a pinging server would close them.
    # Compression off: clients that negotiate it (websockets) would not be comparable.
    server = serve(handle, "127.0.0.1", 0, compression=None, ping_interval=None, max_size=None, close_timeout=5)
    thread = threading.Thread(target=server.serve_forever, name="peer-server")
    thread.start()
    try:
        print(server.socket.getsockname()[1], flush=True)
        wait_for_eof(args.max_seconds)
    finally:
        server.shutdown()  # closes open connections and joins their handler threads
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
