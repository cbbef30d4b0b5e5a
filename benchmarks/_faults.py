"""A scripted, misbehaving WebSocket server on loopback, and what the fault benchmarks measure with.

Shared by ``teardown_paths``, ``naive`` and ``soak`` (and by nothing else: the runner's own
helpers live elsewhere). Nothing here imports from ``tests/``; the peer follows the idea of
``tests/peers.py`` (wsproto over a real socket, so it can do what a polite library refuses to).

:class:`PeerServer` listens on 127.0.0.1, port 0, in this process. Its listener thread accepts
each client, answers the opening handshake, and hands a
:class:`PeerConn` to the benchmark through :meth:`PeerServer.next_peer` (connections are matched
in the order they were opened, so open them one at a time). Each ``PeerConn`` has one reading
thread that records every message, answers pings and close frames (unless ``silent``) and, once
the close handshake is complete, closes its side of TCP first, as RFC 6455 (7.1.1) asks of a
server, then reads to the end. The benchmark thread drives the faults directly on the socket:

``close()``    send a close frame
``reset()``    close with ``SO_LINGER`` 0, so the kernel sends RST (call ``stop_reader()`` first,
               untimed: a socket closed under a thread blocked in ``recv()`` sends nothing)
``fin()``      ``shutdown(SHUT_WR)``: end of stream without a close frame
``silent``     never answer a close frame or a ping again; keep reading, so writes do not block
``stop_reading()``  stop reading, so the client's writes eventually block

Peer threads are named ``bench-peer-*`` so that counts of the client's threads can leave them out.
The peer shares the client's process (and GIL): the trigger is then a direct call, timed exactly,
at the cost of the peer's thread competing with the client's for the GIL while it answers.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import queue
import socket
import struct
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Request,
    TextMessage,
)

Msg = Union[str, bytes]

HOST = "127.0.0.1"
#: Names of the peer's threads start with this; leave them out when counting a client's threads.
PEER_THREAD_PREFIX = "bench-peer"
#: Threads the benchmarks start to run and supervise trials; not the subject's either.
HARNESS_THREAD_PREFIX = "bench-trial"
#: Bound on the opening handshake, and on any join of a thread that has been told to stop.
IO_TIMEOUT = 5.0


class PeerConn:
    """The server end of one loopback WebSocket connection, scripted by the benchmark."""

    def __init__(self, sock: socket.socket, ws: WSConnection, number: int) -> None:
        self.sock = sock
        self.ws = ws
        # Serialises writes: the benchmark thread's (messages, close, faults) and the reading
        # thread's (pongs, close replies); wsproto's state is touched only under it too.
        self.write_lock = threading.Lock()
        # Guards what the reading thread records; notified on every change.
        self.cond = threading.Condition()
        self.received: List[Msg] = []
        self.close_frames: List[Tuple[int, str]] = []
        self.ended = False
        #: Never answer a close frame or a ping (set before the client closes).
        self.silent = False
        # Cleared by stop_reading(): the reading thread then waits here instead of in recv().
        self._may_read = threading.Event()
        self._may_read.set()
        self._stopping = False
        self._closed = False
        self._pending: Optional[bytearray] = None
        self._pending_text = False
        self.thread = threading.Thread(target=self._read, name=f"{PEER_THREAD_PREFIX}-{number}", daemon=True)

    # -- the reading thread -------------------------------------------------------------------------

    def _read(self) -> None:
        draining = False  # close handshake done (or abandoned): read to the end, parse nothing
        try:
            while True:
                self._may_read.wait()
                if self._stopping:
                    return
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                if draining:
                    continue
                with self.write_lock:
                    self.ws.receive_data(data)
                    draining = not self._handle_events()
        finally:
            with self.cond:
                self.ended = True
                self.cond.notify_all()

    def _handle_events(self) -> bool:
        """Handle what arrived (write_lock held); False once the close handshake is over."""
        for event in self.ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self._collect(event)
            elif isinstance(event, CloseConnection):
                with self.cond:
                    self.close_frames.append((event.code, event.reason or ""))
                    self.cond.notify_all()
                if self.silent:
                    return False
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self._send_quietly(self.ws.send(event.response()))
                # Handshake complete: the server closes TCP first (RFC 6455, 7.1.1).
                self._shutdown_quietly(socket.SHUT_WR)
                return False
            elif isinstance(event, Ping) and not self.silent:
                self._send_quietly(self.ws.send(event.response()))
        return True

    def _collect(self, event: Message) -> None:  # type: ignore[type-arg]
        if self._pending is None:
            self._pending = bytearray()
            self._pending_text = isinstance(event, TextMessage)
        data = event.data
        self._pending += data.encode("utf-8") if isinstance(data, str) else data
        if event.message_finished:
            whole = bytes(self._pending)
            self._pending = None
            with self.cond:
                self.received.append(whole.decode("utf-8") if self._pending_text else whole)
                self.cond.notify_all()

    def _send_quietly(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass  # the client is gone; what it did is the benchmark's business, not the peer's

    def _shutdown_quietly(self, how: int) -> None:
        try:
            self.sock.shutdown(how)
        except OSError:
            pass

    # -- controls, called from the benchmark thread ---------------------------------------------

    def send(self, message: Msg) -> None:
        event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        with self.write_lock:
            self.sock.sendall(self.ws.send(event))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame; the reading thread completes the handshake."""
        with self.write_lock:
            self.sock.sendall(self.ws.send(CloseConnection(code=code, reason=reason)))

    def fin(self) -> None:
        """End of stream without a close frame (the reading side stays open)."""
        self.sock.shutdown(socket.SHUT_WR)

    def stop_reading(self) -> None:
        """Read nothing more (after the read in progress, if any)."""
        self._may_read.clear()

    def stop_reader(self) -> None:
        """Stop the reading thread and wait for it (bounded); the socket stays open."""
        self._stopping = True
        self._shutdown_quietly(socket.SHUT_RD)  # wakes a blocked recv() on Linux; sends nothing
        self._may_read.set()
        if self.thread.ident is not None:
            self.thread.join(IO_TIMEOUT)

    def reset(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST. Call ``stop_reader()`` first."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._closed = True
        self.sock.close()

    def stop(self) -> None:
        """Stop reading and close the socket; safe to call twice."""
        self.stop_reader()
        if not self._closed:
            self._closed = True
            self.sock.close()

    def wait_ended(self, timeout: float) -> bool:
        """Wait until the reading thread has stopped for good; False on timeout."""
        with self.cond:
            return self.cond.wait_for(lambda: self.ended, timeout)

    def messages(self) -> List[Msg]:
        with self.cond:
            return list(self.received)


class PeerServer:
    """Loopback listener that turns every client into a :class:`PeerConn`; see the module doc."""

    def __init__(self) -> None:
        self.sock = socket.create_server((HOST, 0))
        self.port: int = self.sock.getsockname()[1]
        # Listener -> next_peer(): one PeerConn (or the handshake's exception) per client.
        self._accepted: queue.Queue[Union[PeerConn, BaseException]] = queue.Queue()
        # Every PeerConn still referenced anywhere, so close() can stop any left open.
        self._peers: weakref.WeakSet[PeerConn] = weakref.WeakSet()
        self._count = 0
        self.thread = threading.Thread(target=self._accept_loop, name=f"{PEER_THREAD_PREFIX}-listener", daemon=True)
        self.thread.start()

    def url(self, path: str = "/") -> str:
        return f"ws://{HOST}:{self.port}{path}"

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return  # close() shut the listening socket down
            try:
                peer = self._handshake(client)
            except Exception as exc:  # noqa: BLE001 - a failed handshake must not end the listener
                client.close()
                self._accepted.put(exc)
                continue
            self._peers.add(peer)
            peer.thread.start()
            self._accepted.put(peer)

    def _handshake(self, client: socket.socket) -> PeerConn:
        client.settimeout(IO_TIMEOUT)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ws = WSConnection(ConnectionType.SERVER)
        while True:
            data = client.recv(65536)
            if not data:
                raise ConnectionError("client left during the handshake")
            ws.receive_data(data)
            if any(isinstance(event, Request) for event in ws.events()):
                break
        # Nothing else goes in the 101's segment: simple_websocket.Client would leave a message
        # that came with it unparsed until more data arrives.
        client.sendall(ws.send(AcceptConnection()))
        client.settimeout(None)
        self._count += 1
        return PeerConn(client, ws, self._count)

    def next_peer(self, timeout: float = IO_TIMEOUT) -> PeerConn:
        """The server end of the connection opened last (raises what its handshake raised)."""
        item = self._accepted.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def discard_pending(self) -> None:
        """Stop peers nobody took: after a client's connect failed, its peer must not be matched
        with the next client."""
        while True:
            try:
                item = self._accepted.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, PeerConn):
                item.stop()

    def close(self) -> None:
        """Stop listening, stop every peer still open, join the listener."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        except OSError:
            pass
        self.sock.close()
        self.thread.join(IO_TIMEOUT)
        for peer in list(self._peers):
            peer.stop()
        self.discard_pending()

    def __enter__(self) -> PeerServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- measuring --------------------------------------------------------------------------------------


def shutdown_socket(sock: Optional[socket.socket]) -> None:
    """``shutdown(SHUT_RDWR)``: wakes every thread blocked on the socket; tolerates a dead one."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass


def fd_count() -> int:
    """Open file descriptors of this process (-1 where /proc is absent)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir itself opened
    except OSError:
        return -1


def rss_kib() -> int:
    """Resident set size in KiB (VmRSS), or -1 where /proc is absent."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def library_threads() -> List[str]:
    """Names of live threads named ``duplexthreads-*``."""
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("duplexthreads-")]


def new_threads(before: Iterable[threading.Thread]) -> List[threading.Thread]:
    """Live threads not in ``before``, leaving out the scripted peer's and the trial runners'."""
    old = set(before)
    skip = (PEER_THREAD_PREFIX, HARNESS_THREAD_PREFIX)
    return [t for t in threading.enumerate() if t not in old and not t.name.startswith(skip)]


def join_all(threads: Sequence[threading.Thread], deadline: float) -> List[threading.Thread]:
    """Join each thread until ``deadline`` (``time.monotonic``); return those still alive."""
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [thread for thread in threads if thread.is_alive()]


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(len(ordered) * fraction - 1e-9))
    return ordered[rank - 1]


def summary_ms(samples_ms: Sequence[float]) -> Dict[str, Optional[float]]:
    """n, p50, p99 and max of samples in milliseconds (None when there are none)."""
    ordered = sorted(samples_ms)
    if not ordered:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "n": len(ordered),
        "p50_ms": percentile(ordered, 0.50),
        "p99_ms": percentile(ordered, 0.99),
        "max_ms": ordered[-1],
    }


def fmt(value: Optional[float], spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def load_average() -> Optional[List[float]]:
    return [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None


class Deadline:
    """The section's wall-time cap, spent across its phases."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()
        self.at = self.started + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def allows(self, seconds: float) -> bool:
        """Whether ``seconds`` more fit in the cap."""
        return time.monotonic() + seconds <= self.at

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Leftovers:
    """Threads and fds at the start of a section, to prove at its end that nothing is left."""

    def __init__(self) -> None:
        gc.collect()
        self.threads = set(threading.enumerate())
        self.fds = fd_count()

    def check(self, grace: float = 2.0) -> Dict[str, Any]:
        """Threads started since and still alive (after a bounded grace), and the fd delta."""
        started = [thread for thread in threading.enumerate() if thread not in self.threads]
        alive = join_all(started, time.monotonic() + grace)
        gc.collect()
        return {"threads": [thread.name for thread in alive], "fd_delta": fd_count() - self.fds}


# -- running a section on its own ---------------------------------------------------------------------


def section_footer(result: Dict[str, Any]) -> List[str]:
    """The last lines of a section's table: completeness, notes, and what was left behind."""
    lines = [] if result.get("complete", True) else ["INCOMPLETE"]
    lines.extend(f"note: {note}" for note in result.get("notes", ()))
    left = result["leftover"]
    lines.append(
        f"left at the end of the section: threads {left['threads'] or 'none'}, fds {left['fd_delta']:+d};"
        f" {result['seconds']:.1f} s"
    )
    return lines


def run_standalone(
    name: str,
    measure: Callable[[bool, float], Dict[str, Any]],
    format_table: Callable[[Dict[str, Any]], str],
    metrics: Callable[[Dict[str, Any]], List[Any]],
    default_caps: Tuple[float, float],
    argv: Optional[Sequence[str]] = None,
) -> int:
    """``python -m benchmarks.<name> [--quick] [--cap S] [--json PATH] [--metrics]``.

    ``default_caps`` is (full, quick) seconds. Exits 1 if the section reports anything left
    behind, incomplete, or a leak metric above zero.
    """
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}")
    parser.add_argument("--quick", action="store_true", help="fewer trials and cycles")
    parser.add_argument("--cap", type=float, help=f"wall-time cap in seconds (default {default_caps})")
    parser.add_argument("--json", metavar="PATH", help="also write the result to PATH as JSON")
    parser.add_argument("--metrics", action="store_true", help="also print the metrics --check compares")
    args = parser.parse_args(argv)
    cap = args.cap if args.cap is not None else default_caps[1 if args.quick else 0]
    load_start = load_average()
    result = measure(args.quick, cap)
    print(format_table(result))
    print(f"load average at start {load_start}, at end {load_average()}")
    found = metrics(result)
    if args.metrics:
        for metric in found:
            leak = ", leak" if metric.leak else ""
            print(f"  {metric.name} = {metric.value:g} {metric.unit} ({metric.better} is better{leak})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"result written to {args.json}", file=sys.stderr)
    leaked = [metric.name for metric in found if metric.leak and metric.value > 0]
    left = result.get("leftover", {})
    return 1 if leaked or left.get("threads") or left.get("fd_delta") or not result.get("complete", True) else 0
