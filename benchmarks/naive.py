"""The known-bad subject: a naive reader/writer pair, to prove the leak measurement catches a leak.

``python -m benchmarks.naive [--quick]`` prints the table; the runner calls ``measure``.

The pair is what people write over websocket-client: a reader thread looping ``ws.recv()``,
and a writer thread looping on a ``queue.Queue`` and ``ws.send()``. Only the reader triggers
cleanup: when it ends, it puts a stop sentinel for the writer and closes the WebSocket. When the
writer dies first (a send error), nothing wakes the reader, which stays blocked in ``recv()`` for
as long as the peer keeps the connection open, here forever.

Method
------
Peer: ``duplexthreads.testing.ScriptedPeer`` in a child process (``isolated=True``: its sockets
and threads are not counted with the client's). For each subject (the naive pair, and
duplexthreads over websocket-client as the control, with its defaults: its heartbeat thread
is on, 20 s/20 s, and is one of the threads that must be gone; no ping goes out within the
window) and each path, open N connections (full 10, quick 3), each greeted by the peer so
its reader is blocked in its receive, then trigger every one:

``write error``  the peer's reader parked first (it reads nothing more, not even end of
                 stream, and stays connected); then ``shutdown(SHUT_WR)`` on the client's own
                 socket and one ``send``: the writer's write fails with EPIPE.
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
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import websocket

from duplexthreads.testing import PeerConnection, ScriptedPeer

from ._clients import DT_WSC, IO_TIMEOUT, BenchError, Client, join_all, open_client
from ._metrics import Metric
from ._resources import fd_count
from ._servers import discard_pending, end_connection, fault_peer, park_reader
from ._trials import Deadline, distribution, fmt, notes_lines, run_standalone

NAME = "naive"

NAIVE = "naive pair (websocket-client)"
SUBJECTS = (NAIVE, DT_WSC)
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


class NaivePair(Client):
    """A reader thread and a writer thread over one ``websocket.WebSocket``; only the reader cleans up."""

    name = NAIVE

    def __init__(self, url: str, number: int) -> None:
        super().__init__()
        self.ws: Any = websocket.create_connection(url, timeout=IO_TIMEOUT)
        self.ws.settimeout(None)
        self.sock = self.ws.sock
        # The application's messages, from any thread to the writer.
        self.outbound: queue.Queue[object] = queue.Queue()
        self.send = self.outbound.put
        self.recv = self._inbox_recv
        self.write_error: Optional[BaseException] = None
        self.threads = [
            threading.Thread(target=self._read, name=f"bench-naive-{number}-reader", daemon=True),
            threading.Thread(target=self._write, name=f"bench-naive-{number}-writer", daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _read(self) -> None:
        try:
            while self.ws.connected:
                self.inbox.put(self.ws.recv())
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

    def close(self) -> None:
        self.ws.close()


class Connection:
    """One subject's connection and the peer's side of it."""

    def __init__(self, subject: str, peer: ScriptedPeer, number: int) -> None:
        try:
            self.client = NaivePair(peer.url, number) if subject == NAIVE else open_client(subject, peer.url)
        except BaseException:
            discard_pending(peer)
            raise
        self.conn: Optional[PeerConnection] = None
        try:
            self.conn = peer.next_connection(IO_TIMEOUT)
            self.conn.send(GREETING)
            greeting = self.client.recv()
            if greeting != GREETING:
                raise BenchError(f"expected the greeting, got {greeting!r}")
        except BaseException:
            self.client.kill()
            self.release()
            raise
        self.triggered = 0.0
        self.exited: Optional[float] = None

    def prepare(self, path: str) -> None:
        """Before a write error, the peer's reader parked: it stays connected and reads nothing."""
        if path == WRITE_ERROR:
            assert self.conn is not None
            park_reader(self.conn, 0, self.client.send)

    def trigger(self, path: str) -> None:
        assert self.conn is not None
        self.triggered = time.monotonic()
        if path == PEER_CLOSE:
            self.conn.close(1000, "bye")
        else:
            self.client.provoke_write_error()

    def release(self) -> None:
        """Once the threads are gone: close the socket the naive pair leaves open after a peer's
        close, and end the peer's side."""
        join_all(self.client.threads, time.monotonic() + IO_TIMEOUT)
        if isinstance(self.client, NaivePair):
            self.client.ws.shutdown()
        if self.conn is not None:
            end_connection(self.conn)


def observe(peer: ScriptedPeer, subject: str, path: str, config: Config) -> Dict[str, Any]:
    """Open, trigger, watch for the window, count what is left; then clean up and check."""
    gc.collect()
    fds_before = fd_count()
    connections: List[Connection] = []
    try:
        for number in range(config.connections):
            connections.append(Connection(subject, peer, number))
        started = sum(len(connection.client.threads) for connection in connections)
        for connection in connections:
            connection.prepare(path)
        for connection in connections:
            connection.trigger(path)
        window_end = time.monotonic() + config.window_seconds
        for connection in connections:
            if not join_all(connection.client.threads, window_end):
                connection.exited = time.monotonic()
        left = [thread.name for c in connections for thread in c.client.threads if thread.is_alive()]
        # The client's own sockets, still held by the application as a long-lived program would.
        sockets_open = sum(c.client.sock is not None and c.client.sock.fileno() != -1 for c in connections)
        write_errors = sum(isinstance(c.client, NaivePair) and c.client.write_error is not None for c in connections)
    finally:
        for connection in connections:
            connection.client.kill()  # wakes what is blocked: the cleanup the naive pair never does
        for connection in connections:
            connection.release()
    exit_ms = [(c.exited - c.triggered) * 1e3 for c in connections if c.exited is not None]
    cleanup_left = [thread.name for c in connections for thread in c.client.threads if thread.is_alive()]
    del connections
    gc.collect()
    return {
        "connections": config.connections,
        "threads_started": started,
        "threads_left": len(left),
        "thread_names_left": left[:10],
        "exit_ms": distribution(exit_ms),
        "connections_exited": len(exit_ms),
        "sockets_open_at_window_end": sockets_open,
        "writer_send_errors": write_errors,
        "after_cleanup": {"threads_left": len(cleanup_left), "fd_delta": fd_count() - fds_before},
    }


def measure(quick: bool, cap_seconds: float) -> Dict[str, Any]:
    config = QUICK if quick else FULL
    deadline = Deadline(cap_seconds)
    paths: Dict[str, Dict[str, Any]] = {path: {} for path in PATH_LABELS}
    notes: List[str] = []
    # Opening and cleanup take a fraction of a second when all goes well; one that goes wrong can
    # overrun by its bounded joins, which the runner's grace period covers.
    per_observation = config.window_seconds + 1.0
    with fault_peer(isolated=True) as peer:
        for path in PATH_LABELS:
            for subject in SUBJECTS:
                if not deadline.allows(per_observation):
                    notes.append(f"{subject}, {PATH_LABELS[path]}: skipped, no time left within the cap")
                    continue
                try:
                    paths[path][subject] = observe(peer, subject, path, config)
                except Exception as exc:  # noqa: BLE001 - reported; the other observations go on
                    notes.append(f"{subject}, {PATH_LABELS[path]}: failed: {exc!r}")
    naive = paths[WRITE_ERROR].get(NAIVE)
    return {
        "name": NAME,
        "mode": "quick" if quick else "full",
        "cap_seconds": cap_seconds,
        "complete": not notes,
        "notes": notes,
        "config": config.__dict__,
        "path_labels": PATH_LABELS,
        "paths": paths,
        "leak_detected": None if naive is None else naive["threads_left"] > 0,
        "seconds": round(deadline.elapsed(), 2),
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
                f" {fmt(exit_ms['p50']):>7}/{fmt(exit_ms['max']):<8}"
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
    return "\n".join(lines + notes_lines(result) + [f"({result['seconds']:.1f} s)"])


def metrics(result: Dict[str, Any]) -> List[Metric]:
    found: List[Metric] = []
    if result["leak_detected"] is not None:
        # Higher is better: a check fails if the harness stops detecting the known leak.
        detected = 1.0 if result["leak_detected"] else 0.0
        found.append(Metric(f"{NAME}.leak_detected", detected, "bool", "higher", tolerance=0.0))
    for path in PATH_LABELS:
        control = result["paths"][path].get(DT_WSC)
        if control is not None:
            found.append(
                Metric(
                    f"{NAME}.duplexthreads.{path}.threads_left", control["threads_left"], "threads", "lower", leak=True
                )
            )
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_standalone(NAME, measure, format_table, metrics, (90.0, 15.0), argv)


if __name__ == "__main__":
    sys.exit(main())
