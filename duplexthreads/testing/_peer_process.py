"""The scripted peer's child process: ``python -m duplexthreads.testing._peer_process``.

It runs the same server (or client) code as the in-process mode and takes its orders as JSON
lines on stdin, ``{"id": 7, "op": "send", "conn": 0, "args": [...]}``, each answered by one line
on stdout with the same id: ``{"id": 7, "result": ...}`` or ``{"id": 7, "error": {...}}``.

The first request, ``start``, is handled before any other. Every later one runs in a thread of
its own, so a wait or a send blocked on a full TCP window holds up no other call. The process
ends when stdin reaches its end (the test process closed it, or died) or on ``shutdown``, whose
reply carries the final record of every connection handed out, so that the test can still read
them once the process is gone.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import IO, Any, Dict, Optional

from ._behaviour import Behaviour
from ._codec import decode, dumps, encode, encode_error
from ._endpoint import Endpoint
from ._server import LocalServer, open_client


class _Child:
    """What the child serves, and the replies it writes."""

    def __init__(self, replies: IO[bytes]) -> None:
        self._replies = replies
        self._reply_lock = threading.Lock()
        self._lock = threading.Lock()  # guards the two below
        self._server: Optional[LocalServer] = None
        self._endpoints: Dict[int, Endpoint] = {}  # handed out, by index

    def handle(self, request: Dict[str, Any]) -> None:
        try:
            result = self._run(request["op"], request.get("conn"), decode(request["args"]))
        except Exception as error:  # noqa: BLE001 - every failure is the caller's to see, in its process
            self.reply({"id": request["id"], "error": encode_error(error)})
        else:
            self.reply({"id": request["id"], "result": encode(result)})

    def reply(self, message: Dict[str, Any]) -> None:
        with self._reply_lock:
            try:
                self._replies.write(dumps(message))
                self._replies.flush()
            except (BrokenPipeError, ValueError):
                pass  # the test process is gone (or the pipe closed at shutdown): nobody to tell

    def _run(self, op: str, conn: Optional[int], args: Any) -> Any:
        if op == "start":
            return self._start(*args)
        if op == "next_connection":
            assert self._server is not None, "next_connection on a client"
            endpoint = self._server.next_connection(*args)
            with self._lock:
                self._endpoints[endpoint.index] = endpoint
            return endpoint.index
        with self._lock:
            endpoint = self._endpoints[conn]  # type: ignore[index]
        return endpoint.call(op, args)

    def _start(self, role: str, options: Dict[str, Any]) -> int:
        behaviour = Behaviour(**options["behaviour"])
        if role == "server":
            self._server = LocalServer(behaviour, options["host"], options["port"])
            return self._server.port
        endpoint = open_client(
            options["url"],
            behaviour,
            host_header=options["host_header"],
            headers=options["headers"],
            subprotocols=options["subprotocols"],
            timeout=options["timeout"],
        )
        with self._lock:
            self._endpoints[endpoint.index] = endpoint
        return endpoint.index

    def close(self) -> Dict[int, Dict[str, Any]]:
        """End everything; return the final record of each connection handed out."""
        if self._server is not None:
            self._server.close()
        with self._lock:
            endpoints = dict(self._endpoints)
        for endpoint in endpoints.values():
            if endpoint.client:
                endpoint.stop()
                endpoint.join(time.monotonic() + endpoint.record.default_timeout)
        return {index: endpoint.record.snapshot() for index, endpoint in endpoints.items()}

    def finish(self) -> None:
        """Close the reply pipe; a request thread still running writes nothing after this."""
        with self._reply_lock:
            self._replies.close()


def main() -> int:
    # Ctrl-C in the terminal is the test process's to handle; it ends this one by closing stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print() must not corrupt a reply
    child = _Child(replies)
    shutdown_id = None
    for line in iter(requests.readline, b""):
        request = json.loads(line)
        if request["op"] == "shutdown":
            shutdown_id = request["id"]
            break
        if request["op"] == "start":
            child.handle(request)
        else:
            threading.Thread(target=child.handle, args=(request,), name=f"request-{request['id']}", daemon=True).start()
    final = child.close()
    if shutdown_id is not None:
        child.reply({"id": shutdown_id, "result": encode(final)})
    child.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
