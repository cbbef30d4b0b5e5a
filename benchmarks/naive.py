"""The known-bad subject: a naive reader/writer pair, to prove the leak measurement catches a leak.

``python -m benchmarks.naive [--quick]`` prints the table; the runner calls ``measure``.

The pair is what people write over websocket-client: a reader thread looping ``ws.recv()``,
and a writer thread looping on a ``queue.Queue`` and ``ws.send()``. Only the reader triggers
cleanup: when it ends, it puts a stop sentinel for the writer and closes the WebSocket. When the
writer dies first (a send error), nothing wakes the reader, which stays blocked in ``recv()`` for
as long as the peer keeps the connection open, here forever.

Method
------
Peer: the scripted loopback server of ``_faults.py``, in this process. For each subject (the
naive pair, and duplexthreads over websocket-client as the control) and each path, open N
connections (full 10, quick 3), each greeted by the peer so its reader is blocked in its
receive, then trigger every one:

``write error``  ``shutdown(SHUT_WR)`` on the client's own socket, then one ``send``: the
                 writer's write fails with EPIPE; the peer stays connected and silent (it sees
                 end of stream and stops reading, without closing).
``peer close``   the peer sends a close frame (and closes TCP once it is answered).

Then observe for a bounded window (full 5 s, quick 2 s) after the last trigger, joining each
connection's threads against the window's end (in trigger order, so a connection's exit time,
trigger to join returned, is an upper bound), and count the threads still alive and the
connection's sockets still open (the application still holds its objects, as a long-lived
program would), before and after ``gc.collect()``. The section must report the naive pair's
leak on the write-error path (``leak_detected``); a harness that stopped seeing it would be
blind. Afterwards the benchmark cleans up what leaked (``shutdown(SHUT_RDWR)`` wakes the
reader, then the sockets are closed) and checks that nothing is left.
"""

from __future__ import annotations

import gc
import queue
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import websocket

import duplexthreads

from ._faults import (
    IO_TIMEOUT,
    Deadline,
    Leftovers,
    PeerConn,
    PeerServer,
    fd_count,
    fmt,
    join_all,
    load_average,
    run_standalone,
    section_footer,
    shutdown_socket,
    summary_ms,
)
from ._metrics import Metric

NAME = "naive"

NAIVE = "naive pair (websocket-client)"
DUPLEX = "duplexthreads[websocket-client]"
SUBJECTS = (NAIVE, DUPLEX)
WRITE_ERROR = "write_error"
PEER_CLOSE = "peer_close"
PATH_LABELS = {WRITE_ERROR: "write error", PEER_CLOSE: "peer close frame"}
GREETING = "hello"


@dataclass(frozen=True)
class Config:
    connections: int
    window_seconds: float


FULL = Config(connections=10, window_seconds=5.0)
QUICK = Config(connections=3, window_seconds=2.0)


class _Stop:
    """The writer's stop sentinel."""


_STOP = _Stop()


class NaivePair:
    """A reader thread and a writer thread over one ``websocket.WebSocket``; only the reader cleans up."""

    def __init__(self, url: str, number: int) -> None:
        self.ws: Any = websocket.create_connection(url, timeout=IO_TIMEOUT)
        self.ws.settimeout(None)
        sock: Optional[socket.socket] = self.ws.sock
        assert sock is not None  # set by a successful connect
        self.sock = sock
        self.outbound: queue.Queue[object] = queue.Queue()
        self.greeted = threading.Event()
        self.write_error: Optional[BaseException] = None
        self.reader = threading.Thread(target=self._read, name=f"bench-naive-{number}-reader", daemon=True)
        self.writer = threading.Thread(target=self._write, name=f"bench-naive-{number}-writer", daemon=True)
        self.reader.start()
        self.writer.start()

    def _read(self) -> None:
        try:
            while self.ws.connected:
                self.ws.recv()
                self.greeted.set()
        except Exception:  # noqa: BLE001 - the naive pattern: any error ends the reader
            pass
        finally:
            self.outbound.put(_STOP)  # the only cleanup there is: wake the writer, then close
            self.ws.close()

    def _write(self) -> None:
        while True:
            item = self.outbound.get()
            if item is _STOP:
                return
            try:
                self.ws.send(item)
            except Exception as exc:  # noqa: BLE001 - the writer just ends; nothing wakes the reader
                self.write_error = exc
                return

    def send(self, message: bytes) -> None:
        self.outbound.put(message)


class Connection:
    """One subject's connection, with its peer, reduced to what the observation needs."""

    def __init__(self, subject: str, server: PeerServer, number: int) -> None:
        self.duplex: Optional[duplexthreads.Duplex] = None
        self.naive: Optional[NaivePair] = None
        if subject == NAIVE:
            self.naive = NaivePair(server.url(), number)
        else:
            self.duplex = duplexthreads.connect(server.url(), open_timeout=IO_TIMEOUT)
        try:
            self.peer: PeerConn = server.next_peer()
            self.peer.send(GREETING)
            if self.naive is not None:
                greeted = self.naive.greeted.wait(IO_TIMEOUT)
            else:
                assert self.duplex is not None
                greeted = self.duplex.recv(timeout=IO_TIMEOUT) == GREETING
            if not greeted:
                raise RuntimeError("the greeting did not arrive")
        except BaseException:
            self.kill()
            self.release()
            raise
        self.triggered = 0.0
        self.exited: Optional[float] = None

    @property
    def sock(self) -> socket.socket:
        if self.naive is not None:
            return self.naive.sock
        assert self.duplex is not None
        return self.duplex.transport.raw_socket  # type: ignore[attr-defined,no-any-return]

    def threads(self) -> List[threading.Thread]:
        if self.naive is not None:
            return [self.naive.reader, self.naive.writer]
        assert self.duplex is not None
        return list(self.duplex.threads())

    def trigger(self, path: str) -> None:
        self.triggered = time.monotonic()
        if path == PEER_CLOSE:
            self.peer.close(1000, "bye")
            return
        self.sock.shutdown(socket.SHUT_WR)
        if self.naive is not None:
            self.naive.send(b"x")
        else:
            assert self.duplex is not None
            self.duplex.send(b"x")

    def kill(self) -> None:
        """Wake whatever is blocked: the cleanup the naive pair never does for itself."""
        if self.naive is not None:
            shutdown_socket(self.naive.sock)
        elif self.duplex is not None:
            self.duplex.abort()

    def release(self) -> None:
        """Close the socket and stop the peer once the threads are gone."""
        join_all(self.threads(), time.monotonic() + IO_TIMEOUT)
        if self.naive is not None:
            self.naive.ws.shutdown()  # closes the socket the naive pair leaves open after a peer's close
        peer = getattr(self, "peer", None)
        if peer is not None:
            peer.stop()


def observe(server: PeerServer, subject: str, path: str, config: Config) -> Dict[str, Any]:
    """Open, trigger, watch for the window, count what is left; then clean up and check."""
    gc.collect()
    fds_before = fd_count()
    connections: List[Connection] = []
    try:
        for number in range(config.connections):
            connections.append(Connection(subject, server, number))
        started = sum(len(connection.threads()) for connection in connections)
        for connection in connections:
            connection.trigger(path)
        window_end = time.monotonic() + config.window_seconds
        for connection in connections:
            if not join_all(connection.threads(), window_end):
                connection.exited = time.monotonic()
        left = [thread.name for c in connections for thread in c.threads() if thread.is_alive()]
        # The client's own sockets (the peer's, in this process too, are open by design).
        sockets_open = sum(c.sock.fileno() != -1 for c in connections)
        write_errors = sum(c.naive is not None and c.naive.write_error is not None for c in connections)
    finally:
        for connection in connections:
            connection.kill()
        for connection in connections:
            connection.release()
    exit_ms = [(c.exited - c.triggered) * 1e3 for c in connections if c.exited is not None]
    cleanup_left = [thread.name for c in connections for thread in c.threads() if thread.is_alive()]
    del connections
    gc.collect()
    return {
        "connections": config.connections,
        "threads_started": started,
        "threads_left": len(left),
        "thread_names_left": left[:10],
        "exit_ms": summary_ms(exit_ms),
        "connections_exited": len(exit_ms),
        "sockets_open_at_window_end": sockets_open,
        "writer_send_errors": write_errors,
        "after_cleanup": {"threads_left": len(cleanup_left), "fd_delta": fd_count() - fds_before},
    }


def measure(quick: bool, cap_seconds: float) -> Dict[str, Any]:
    config = QUICK if quick else FULL
    deadline = Deadline(cap_seconds)
    leftovers = Leftovers()
    load_start = load_average()
    paths: Dict[str, Dict[str, Any]] = {path: {} for path in PATH_LABELS}
    notes: List[str] = []
    complete = True
    # Opening, the window, then cleanup (whose joins are bounded by IO_TIMEOUT each).
    per_observation = config.window_seconds + 2 * IO_TIMEOUT
    with PeerServer() as server:
        for path in PATH_LABELS:
            for subject in SUBJECTS:
                if not deadline.allows(per_observation):
                    complete = False
                    notes.append(f"{subject}, {PATH_LABELS[path]}: skipped, no time left within the cap")
                    continue
                try:
                    paths[path][subject] = observe(server, subject, path, config)
                except Exception as exc:  # noqa: BLE001 - reported; the other observations go on
                    complete = False
                    notes.append(f"{subject}, {PATH_LABELS[path]}: failed: {exc!r}")
                    server.discard_pending()
    naive = paths[WRITE_ERROR].get(NAIVE)
    return {
        "name": NAME,
        "mode": "quick" if quick else "full",
        "cap_seconds": cap_seconds,
        "complete": complete,
        "notes": notes,
        "config": config.__dict__,
        "path_labels": PATH_LABELS,
        "paths": paths,
        "leak_detected": None if naive is None else naive["threads_left"] > 0,
        "leftover": leftovers.check(),
        "seconds": round(deadline.elapsed(), 2),
        "load_average": {"start": load_start, "end": load_average()},
    }


def format_table(result: Dict[str, Any]) -> str:
    config = result["config"]
    lines = [
        f"Naive reader/writer pair vs duplexthreads ({result['mode']}): {config['connections']} connections each,"
        f" threads still alive {config['window_seconds']:g} s after the trigger",
        f"{'':35} {'threads left':>12} {'exited':>7} {'exit ms p50/max':>16} {'sockets open':>12}"
        f"   {'after cleanup':>14}",
    ]
    for path, label in result["path_labels"].items():
        lines.append(label)
        for subject, e in result["paths"][path].items():
            exit_ms = e["exit_ms"]
            cleanup = e["after_cleanup"]
            lines.append(
                f"  {subject:33} {e['threads_left']:>5} of {e['threads_started']:<4}"
                f" {e['connections_exited']:>3}/{e['connections']:<3}"
                f" {fmt(exit_ms['p50_ms']):>7}/{fmt(exit_ms['max_ms']):<8}"
                f" {e['sockets_open_at_window_end']:>7} of {e['connections']:<4}"
                f"   threads {cleanup['threads_left']}, fds {cleanup['fd_delta']:+d}"
            )
            if e["thread_names_left"]:
                lines.append(f"      alive: {e['thread_names_left'][:4]}")
    detected = result["leak_detected"]
    verdict = {True: "yes (as it must be)", False: "NO: the harness missed the known leak", None: "not measured"}
    lines.append(f"leak of the naive pair on a write error detected: {verdict[detected]}")
    lines.append("(exited: connections whose threads all exited within the window; sockets open: the clients'")
    lines.append(" sockets still open at the window's end, the objects still held as a long-lived program would)")
    lines.extend(section_footer(result))
    return "\n".join(lines)


def metrics(result: Dict[str, Any]) -> List[Metric]:
    found: List[Metric] = []
    if result["leak_detected"] is not None:
        # Higher is better: a check fails if the harness stops detecting the known leak.
        detected = 1.0 if result["leak_detected"] else 0.0
        found.append(Metric(f"{NAME}.leak_detected", detected, "bool", "higher", tolerance=0.0))
    for path in PATH_LABELS:
        control = result["paths"][path].get(DUPLEX)
        if control is not None:
            found.append(
                Metric(
                    f"{NAME}.duplexthreads.{path}.threads_left", control["threads_left"], "threads", "lower", leak=True
                )
            )
    found.append(Metric(f"{NAME}.leftover_threads", len(result["leftover"]["threads"]), "threads", "lower", leak=True))
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_standalone(NAME, measure, format_table, metrics, (120.0, 60.0), argv)


if __name__ == "__main__":
    sys.exit(main())
