"""A child process of chat clients for test_serve: clients nobody here wrote, in a room of serve().

Run as ``python room_clients.py URL LIBRARY ROOM_SIZE COUNT UNIT``: LIBRARY is ``websocket-client``
or ``websockets`` (its sync client), ROOM_SIZE how many clients the whole room will hold (over
every process), COUNT how many messages each client sends. Nothing of duplexthreads is imported.

Commands come one a line on stdin:

``join``
    open one more client; once it has its first message it prints
    ``{"event": "joined", "client": I, "first": TEXT}``.
``go``
    every client of this process sends COUNT messages ``"<name>:<n>"`` (its name from its
    welcome notice), the clients taking turns; then ``{"event": "sent"}``.
``flood N``
    the first client sends ``"flood:<n>"`` for n from 0 to N - 1, then ``"flood:end"``, as fast
    as it can; then ``{"event": "flooded", "seconds": S}``.
``quit`` (or end of input)
    close what is still open and exit.

Each client reads in a thread of its own from the start. It prints every notice (a text message
starting with ``"* "``) as ``{"event": "notice", "client": I, "text": TEXT}``; it checks every
other message, per sender, against the numbering (exactly once, in order) and, once it has
``(ROOM_SIZE - 1) * COUNT`` of them, prints ``{"event": "received", ...}`` with the count per
sender and the first anomalies. It then reads on until the server closes, and prints
``{"event": "closed", "client": I, "code": CODE, "after": N, ...}``: the close code it got (None
when the connection ended without one), how many messages came after the expected ones, and
the counts per sender and the first anomalies of all it received.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

WELCOME = re.compile(r"^\* welcome, you are (guest-\d+) \(\d+ here\)$")

_print_lock = threading.Lock()


def emit(**event: Any) -> None:
    line = json.dumps(event)
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Client:
    """One connection, read by its own thread; ``send`` from the main thread."""

    def __init__(self, index: int, url: str, library: str, expected: int, unit: float) -> None:
        self.index = index
        self.expected = expected
        self.name: Optional[str] = None
        self.named = threading.Event()
        if library == "websocket-client":
            import websocket

            ws = websocket.create_connection(url, timeout=20 * unit)
            self._send: Callable[[str], Any] = ws.send
            self._recv: Callable[[], Tuple[str, Any]] = lambda: _wsc_recv(ws)
            self._close: Callable[[], None] = ws.shutdown
        else:
            from websockets.sync.client import connect

            # As a context manager, the only way websockets 17 lets a connection be used quietly.
            stack = contextlib.ExitStack()
            conn = stack.enter_context(connect(url, open_timeout=20 * unit, close_timeout=5 * unit, max_size=None))
            self._send = conn.send
            self._recv = lambda: _websockets_recv(conn)
            self._close = stack.close
        self.thread = threading.Thread(target=self._read, name=f"reader-{index}", daemon=True)
        self.thread.start()

    def send(self, text: str) -> None:
        self._send(text)

    def close(self) -> None:
        try:
            self._close()
        except Exception:  # noqa: BLE001  # already gone: nothing to close
            pass

    def _read(self) -> None:
        following: Dict[str, int] = {}  # sender -> next number expected
        anomalies: List[str] = []
        received = 0
        after = 0
        code: Optional[int] = None
        try:
            while True:
                kind, value = self._recv()
                if kind == "close":
                    code = value
                    break
                if kind != "text":
                    anomalies.append(f"a {kind} message: {value!r:.60}")
                    continue
                if self.name is None:
                    match = WELCOME.match(value)
                    self.name = match.group(1) if match else f"unnamed-{self.index}"
                    emit(event="joined", client=self.index, first=value)
                    self.named.set()
                    continue
                if value.startswith("* "):
                    emit(event="notice", client=self.index, text=value)
                    continue
                if received >= self.expected:
                    after += 1
                    continue
                sender, _, number = value.rpartition(":")
                if sender == self.name:
                    anomalies.append(f"own message echoed: {value!r}")
                elif not number.isdigit() or int(number) != following.get(sender, 0):
                    anomalies.append(f"from {sender}: {number!r} where {following.get(sender, 0)} was next")
                following[sender] = int(number) + 1 if number.isdigit() else following.get(sender, 0)
                received += 1
                if received == self.expected:
                    emit(
                        event="received", client=self.index, name=self.name, senders=following, anomalies=anomalies[:5]
                    )
        except Exception as exc:  # noqa: BLE001  # reported to the test, which fails on it
            emit(event="error", client=self.index, error=repr(exc), received=received, anomalies=anomalies[:5])
        finally:
            self.named.set()
            emit(
                event="closed",
                client=self.index,
                code=code,
                after=after,
                received=received,
                senders=following,
                anomalies=anomalies[:5],
            )


def _wsc_recv(ws: Any) -> Tuple[str, Any]:
    import websocket

    opcode, frame = ws.recv_data_frame()  # answers pings itself, and the close frame
    if opcode == websocket.ABNF.OPCODE_CLOSE:
        data = frame.data
        return "close", struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
    if opcode == websocket.ABNF.OPCODE_TEXT:
        return "text", frame.data.decode("utf-8")
    return "binary", frame.data


def _websockets_recv(conn: Any) -> Tuple[str, Any]:
    from websockets.exceptions import ConnectionClosed

    try:
        message = conn.recv()
    except ConnectionClosed as exc:
        return "close", exc.rcvd.code if exc.rcvd is not None else None
    return ("text", message) if isinstance(message, str) else ("binary", message)


def main() -> None:
    url, library, room_size, count, unit = (
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        int(sys.argv[4]),
        float(sys.argv[5]),
    )
    if library not in ("websocket-client", "websockets"):
        raise SystemExit(f"unknown library {library!r}")
    socket.setdefaulttimeout(None)
    clients: List[Client] = []
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "join":
                clients.append(Client(len(clients), url, library, (room_size - 1) * count, unit))
            elif command == "go":
                for client in clients:
                    if not client.named.wait(20 * unit) or client.name is None:
                        raise SystemExit(f"client {client.index} has no name")
                for number in range(count):
                    for client in clients:
                        client.send(f"{client.name}:{number}")
                emit(event="sent")
            elif command.startswith("flood "):
                started = time.monotonic()
                for number in range(int(command.split()[1])):
                    clients[0].send(f"flood:{number}")
                clients[0].send("flood:end")
                emit(event="flooded", seconds=time.monotonic() - started)
            elif command == "quit":
                break
    finally:
        for client in clients:
            client.close()
        for client in clients:
            client.thread.join(10 * unit)


if __name__ == "__main__":
    main()
