"""A chat room on one server: a stuck client, fan-out throughput and a flood, beside websockets.

``python -m benchmarks.room [--quick]`` runs this section alone.

Servers
-------
Each run starts a fresh server in a child process of its own (``python -m benchmarks.room
--server KIND``), so that a run inherits nothing from the one before and, on a 2-core
machine, the server has a core while the clients have the other. Four servers, each a room
in which every message a client sends goes to every other client:

- ``duplexthreads``: ``duplexthreads.serve(notices=False, write_timeout=2.0)`` (its Hub,
  on_full="close", max_queue 1024, on Werkzeug's threaded server); defaults otherwise.
- ``websockets sync, relay``: ``websockets.sync.server.serve`` with the plain handler
  ``for message in ws: for peer in others: peer.send(message)``; websockets' defaults.
- ``websockets sync, broadcast()``: the same server, relaying with ``websockets.sync.server
  .broadcast(others, message)``, the fan-out its documentation gives for the threading API
  (it sends through a ``ThreadPoolExecutor`` created per call and waits for every send).
- ``websockets asyncio, broadcast()``: ``websockets.asyncio.server.serve`` relaying with
  ``broadcast()``, documented as pushing each message without backpressure.

The server answers one-line commands on its stdin (``members``, ``stats``) with one JSON
line, and on end of file closes, prints its final JSON line and exits. ``stats`` tells what
only the server can see: for duplexthreads, the hub's ``stats`` and, with ``--watch``, when
each connection ended and its exit report (a thread looks every 10 ms: the hub has no event
for a member leaving); for websockets, how long a handler has been stuck relaying one message
(the sync servers) or the largest write buffer (asyncio). websockets' log records are
counted, not printed.

Clients
-------
Every client runs in this process, in one thread and one ``selectors`` loop (``Room``,
below) that speaks just enough WebSocket: the handshake, masked frames out, unmasked frames
in, pongs and close frames. No library's threads are on the clients' side, so the clients
cost the same against every server and take as little of the machine as can be; more client
processes would only compete for the same two cores. Senders and receivers share this
process, so a message carries ``time.perf_counter()`` at its send and its latency is the
receiver's ``perf_counter()`` when the bytes came in, on one clock. Timestamps that must
match the server's (when a client was cut off) are ``time.time()`` on both sides.

1. Stuck client
---------------
20 clients chat: each sends a 4 KiB message 20 times a second (spread evenly), for 10 s (4 s
quick), and every message goes to the 19 others. Two runs per server: the 20 alone, then
with one more client that connects and never reads (no ``recv``: the server's send buffer and
the client's receive window fill, about 4 MB on loopback here, then the server's writes to it
block). 4 KiB messages make that happen 2.5 s into the run; with chat-sized ones it would take
minutes. The figures are the others' delivery latency, p50 and p99, counting every delivery
that should have happened: one still missing 3 s after the last send counts as later than
that (">3s"), and the share delivered is given. After the run the stuck client reads what
reached it (bounded: until a close frame, end of stream, 0.5 s of silence or 5 s in all) and
tells how it ended; the server tells when it let go of the client and why (duplexthreads: the
connection's exit report, the hub's stats; websockets: how long its handlers have been
blocked, or how much it buffered). Full runs add duplexthreads with serve()'s own
``write_timeout`` (10 s), where the hub's queue fills before the write times out, and
websockets' sync ``broadcast()``; the quick run leaves both out.

2. Fan-out throughput
---------------------
One client sends N messages of 64 B as fast as its socket takes them, and n others receive
every one of them: n = 10, 100 and 500, N = 1,000, 500 and 200 (quick: 500, 200 and 50),
fewer than the hub's 1,024-message queue, so that no receiver can be cut off for falling
behind. Delivered per second is n * N over the time from the first send to the last receipt.
Rounds run on the same connections (after an untimed one at a fifth of N), one after another
(full 5, quick 3); the table gives the median, and the server's CPU per delivery over the
timed rounds. 500 clients need 500 descriptors on each side: both raise their soft limit to
the hard one first (20,000 here). The quick run leaves websockets' sync ``broadcast()`` out.

3. Flood
--------
10 clients chat at 10 messages of 64 B a second each for 6 s (quick 3 s), and an 11th client,
in a process of its own (``--flood``: it must not take this process's CPU), sends up to
100,000 messages of 64 B (quick 50,000) from the start of the chat to its end, as fast as the
server reads them (its send buffer is 32 KiB, so that what it sent is what the server has
read, give or take that much). The chatters' latency, p50 and p99, with the flood and, in
another run, with the flooder connected and silent; on duplexthreads and websockets' sync
relay server (full runs: and asyncio ``broadcast()``). The table gives the flood messages
relayed to each chatter per second and any chatter the server closed.

Metrics (``--check``). Two counts that must be 0: messages the other chatters did not get on
duplexthreads with a stuck client, and a stuck client duplexthreads did not let go of. Ratios
of figures measured in the same run: duplexthreads' p50 with the stuck client over without,
its p50 over websockets' relay loop's (no stuck client), with the flood over calm, and its
server CPU per fan-out delivery over the relay loop's. p99s and delivered/s are in the table
only: they moved by several times between runs on this shared machine.

Bounds. Every loop stops at a deadline; the section starts no run its cap cannot hold; every
child process is stopped (stdin closed, then killed) when its run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import heapq
import json
import logging
import math
import os
import random
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from ._metrics import Metric
from ._resources import process_cpu_seconds, process_status_field, raise_fd_limit
from ._trials import Deadline, fmt, ratio, run_standalone

NAME = "room"
HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent

DT = "duplexthreads"
WS_RELAY = "websockets sync, relay"
WS_BROADCAST = "websockets sync, broadcast()"
WS_ASYNC = "websockets asyncio, broadcast()"
KINDS = (DT, WS_RELAY, WS_BROADCAST, WS_ASYNC)
SLUGS = {DT: "duplexthreads", WS_RELAY: "ws-sync-relay", WS_BROADCAST: "ws-sync-broadcast", WS_ASYNC: "ws-asyncio"}
BY_SLUG = {slug: kind for kind, slug in SLUGS.items()}

#: serve()'s write_timeout here: a client whose socket takes nothing for this long is dropped.
WRITE_TIMEOUT = 2.0
#: serve()'s own default write_timeout, for the stuck client's second run on duplexthreads (full
#: runs): its 1,024-message queue then fills first, and the hub's on_full policy acts.
DEFAULT_WRITE_TIMEOUT = 10.0
#: The server child's watch on its hub, in seconds between looks.
WATCH_INTERVAL = 0.01

# -- 1. stuck client
CHATTERS = 20
CHAT_RATE = 20.0
CHAT_BYTES = 4096
#: After the last send, how long deliveries may still arrive and count (a run ends as soon as
#: all have arrived, so this costs time only where some never do).
DRAIN = 3.0
#: The stuck client's reading after the run: stop after this much silence, or this long in all.
STUCK_READ_IDLE = 0.5
STUCK_READ_MAX = 5.0

# -- 2. fan-out
FANOUT_BYTES = 64

# -- 3. flood
CALM = 10
CALM_RATE = 10.0
CALM_BYTES = 64
FLOOD_BYTES = 64
FLOOD_SNDBUF = 32768
FLOOD_BATCH = 64

#: The section's time caps in seconds, (full, quick), as in benchmarks/__main__.py.
CAPS = (420.0, 120.0)
#: Longest any single blocking step may take: a handshake, a server's answer, a child starting.
IO_TIMEOUT = 10.0

# What a message carries: kind, sender (or round), sequence number, perf_counter() at its send.
HEADER = struct.Struct("!BHId")
CHAT, FAN, FLOOD = 1, 2, 3


@dataclass(frozen=True)
class Subject:
    """A server as one row of the stuck client's table shows it."""

    label: str
    kind: str
    write_timeout: float = WRITE_TIMEOUT
    #: Whether it also runs without the stuck client.
    clean: bool = True


DT_DEFAULT = Subject(f"{DT}, write_timeout {DEFAULT_WRITE_TIMEOUT:g} s", DT, DEFAULT_WRITE_TIMEOUT, clean=False)
STUCK_FULL = (Subject(DT, DT), DT_DEFAULT, *(Subject(kind, kind) for kind in KINDS[1:]))
#: websockets' sync broadcast() cannot keep up with this chat even without a stuck client (see
#: a full run): the quick run leaves it out, with the second duplexthreads run.
STUCK_QUICK = (Subject(DT, DT), Subject(WS_RELAY, WS_RELAY), Subject(WS_ASYNC, WS_ASYNC))


@dataclass(frozen=True)
class Config:
    stuck_seconds: float
    stuck_subjects: Tuple[Subject, ...]
    #: (receivers n, messages per round N), each below the hub's 1,024-message queue.
    fanout: Tuple[Tuple[int, int], ...]
    fanout_rounds: int
    fanout_kinds: Tuple[str, ...]
    flood_seconds: float
    flood_count: int
    flood_kinds: Tuple[str, ...]


FULL = Config(
    stuck_seconds=10.0,
    stuck_subjects=STUCK_FULL,
    fanout=((10, 1000), (100, 500), (500, 200)),
    fanout_rounds=5,
    fanout_kinds=KINDS,
    flood_seconds=6.0,
    flood_count=100_000,
    flood_kinds=(DT, WS_RELAY, WS_ASYNC),
)
QUICK = Config(
    stuck_seconds=4.0,
    stuck_subjects=STUCK_QUICK,
    fanout=((10, 500), (100, 200), (500, 50)),
    fanout_rounds=3,
    # websockets' sync broadcast() is 5 to 20 times slower than the others at 10 and 100 (see a
    # full run); the quick run leaves it out, and its minute with it.
    fanout_kinds=(DT, WS_RELAY, WS_ASYNC),
    flood_seconds=3.0,
    flood_count=50_000,
    flood_kinds=(DT, WS_RELAY),
)


class RoomError(Exception):
    """A run could not be carried out (a server that did not start or answer, a failed handshake)."""


# -- the wire: just enough WebSocket for many clients in one thread ---------------------------------


def handshake(port: int, timeout: float = IO_TIMEOUT) -> Tuple[socket.socket, bytes]:
    """Open a WebSocket to ``ws://HOST:port/``; return the socket (blocking) and any bytes past the 101."""
    sock = socket.create_connection((HOST, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise RoomError(f"the server closed during the handshake: {data[:80]!r}")
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        if not head.startswith(b"HTTP/1.1 101") or accept not in head:
            raise RoomError(f"the server refused the upgrade: {head[:120]!r}")
        return sock, rest
    except BaseException:
        sock.close()
        raise


def frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame: FIN set, masked (RFC 6455 requires it of clients)."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    key = random.randbytes(4)
    # XOR as one big integer: far cheaper in Python than byte by byte.
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes((key * (size // 4 + 1))[:size], "big")).to_bytes(
        size, "big"
    )
    return head + key + masked


def close_frame(code: int = 1000) -> bytes:
    return frame(0x8, code.to_bytes(2, "big"))


def message(kind: int, sender: int, seq: int, size: int) -> bytes:
    """A binary payload of ``size`` bytes stamped with ``perf_counter()`` now."""
    head = HEADER.pack(kind, sender, seq, time.perf_counter())
    return head + bytes(size - len(head))


class Member:
    """One client connection of the room: its socket, what it has read, what is still to write."""

    def __init__(self, sock: socket.socket, index: int, leftover: bytes) -> None:
        self.sock = sock
        self.index = index
        #: The client's port: the server's records of its connections name it by that.
        self.port: Optional[int] = sock.getsockname()[1] if sock.family == socket.AF_INET else None
        self.inbuf = bytearray(leftover)
        self.outbuf = bytearray()
        self.fragments: List[bytes] = []
        self.fragment_opcode = 0
        #: The server's close frame: (code, reason), once it came.
        self.close_received: Optional[Tuple[int, str]] = None
        #: How the stream ended without a close frame ("end of stream", "reset"...), once it did.
        self.ended: Optional[str] = None
        self.close_sent = False
        self.registered = False
        self.notices = 0

    @property
    def done(self) -> bool:
        return self.close_received is not None or self.ended is not None

    def parse(self) -> Iterator[Tuple[int, bytes]]:
        """Complete data messages in ``inbuf`` as (opcode, payload); answers pings, notes a close."""
        buf, pos = self.inbuf, 0
        try:
            while len(buf) - pos >= 2:
                first, second = buf[pos], buf[pos + 1]
                size, start = second & 0x7F, pos + 2
                if size == 126:
                    if len(buf) - pos < 4:
                        break
                    size, start = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
                elif size == 127:
                    if len(buf) - pos < 10:
                        break
                    size, start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
                if second & 0x80:
                    raise RoomError("the server sent a masked frame")
                if len(buf) - start < size:
                    break
                payload = bytes(buf[start : start + size])
                pos = start + size
                opcode = first & 0x0F
                if opcode == 0x9:
                    self.outbuf += frame(0xA, payload)
                elif opcode == 0x8:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                    self.close_received = (code, payload[2:].decode("utf-8", "replace"))
                elif opcode in (0x1, 0x2, 0x0):
                    if opcode:
                        self.fragment_opcode = opcode
                    if not first & 0x80:
                        self.fragments.append(payload)
                        continue
                    if self.fragments:
                        payload = b"".join(self.fragments) + payload
                        self.fragments = []
                    yield self.fragment_opcode, payload
        finally:
            del buf[:pos]  # once per read, not per frame: deleting a prefix copies the rest


class Room:
    """Every client of a run, in this thread: one selector, no other thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.members: List[Member] = []
        #: Called with (member, payload, perf_counter() at receipt) for each binary message.
        self.on_binary: Callable[[Member, bytes, float], None] = lambda member, payload, now: None

    def join(self, count: int, read: bool = True) -> List[Member]:
        joined = []
        for _ in range(count):
            sock, leftover = handshake(self.port)
            member = Member(sock, len(self.members), leftover)
            self.members.append(member)
            joined.append(member)
            if read:
                sock.setblocking(False)
                self.selector.register(sock, selectors.EVENT_READ, member)
                member.registered = True
        return joined

    def send(self, member: Member, data: bytes) -> None:
        member.outbuf += data
        self._flush(member)

    def _flush(self, member: Member) -> None:
        if member.outbuf and not member.ended:
            try:
                sent = member.sock.send(member.outbuf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                member.ended = f"write failed: {exc.strerror or exc!r}"
                sent = len(member.outbuf)
            del member.outbuf[:sent]
        if member.registered:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if member.outbuf else 0)
            self.selector.modify(member.sock, events, member)

    def _read(self, member: Member) -> None:
        try:
            data = member.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            data, member.ended = b"", f"reset ({exc.strerror or exc!r})"
        now = time.perf_counter()
        if not data:
            member.ended = member.ended or "end of stream"
            self._unregister(member)
            return
        member.inbuf += data
        for opcode, payload in member.parse():
            if opcode == 0x2:
                self.on_binary(member, payload, now)
            else:
                member.notices += 1  # text: serve()'s "* " notices (off here) or anything else
        if member.close_received is not None and not member.close_sent:
            member.close_sent = True
            member.outbuf += close_frame(member.close_received[0] if member.close_received[0] != 1005 else 1000)
        if member.outbuf:
            self._flush(member)

    def _unregister(self, member: Member) -> None:
        if member.registered:
            self.selector.unregister(member.sock)
            member.registered = False

    def pump(
        self,
        until: float,
        tick: Optional[Callable[[float], float]] = None,
        done: Optional[Callable[[], bool]] = None,
    ) -> None:
        """Serve the sockets until ``until`` (``perf_counter``) or ``done()``; ``tick(now)`` sends
        what is due and returns when it next has something to send."""
        due = tick(time.perf_counter()) if tick else math.inf
        while True:
            now = time.perf_counter()
            if now >= until or (done is not None and done()):
                return
            if not self.selector.get_map():
                time.sleep(min(until, due) - now if due > now else 0)  # nothing to read: wait for the next send
            else:
                for key, mask in self.selector.select(max(0.0, min(until, due) - now)):
                    member = key.data
                    if mask & selectors.EVENT_WRITE:
                        self._flush(member)
                    if mask & selectors.EVENT_READ:
                        self._read(member)
            if tick is not None and time.perf_counter() >= due:
                due = tick(time.perf_counter())

    def leave(self, timeout: float = 3.0) -> int:
        """Close every connection: a close frame, the server's answer or end of stream (bounded),
        then the socket. Returns how many did not end within ``timeout``."""
        for member in self.members:
            if member.registered and not member.done and not member.close_sent:
                member.close_sent = True
                self.send(member, close_frame())
        self.pump(time.perf_counter() + timeout, done=lambda: all(m.done for m in self.members if m.registered))
        unfinished = sum(1 for m in self.members if m.registered and not m.done)
        for member in self.members:
            self._unregister(member)
            try:
                member.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            member.sock.close()
        self.selector.close()
        return unfinished


def read_stuck(member: Member) -> Dict[str, Any]:
    """What the stuck client finds when it reads at last: messages, then how the stream ended."""
    received = 0
    sock = member.sock
    started = time.monotonic()
    try:
        sock.setblocking(True)
        sock.settimeout(STUCK_READ_IDLE)
        while not member.done and time.monotonic() - started < STUCK_READ_MAX:
            try:
                data = sock.recv(262144)
            except socket.timeout:
                break  # silence: the server has sent all it will
            except OSError as exc:
                member.ended = f"reset ({exc.strerror or exc!r})"
                break
            if not data:
                member.ended = "end of stream"
                break
            member.inbuf += data
            received += sum(1 for opcode, _ in member.parse() if opcode == 0x2)
    except RoomError as exc:
        member.ended = f"bad frames: {exc}"
    if member.close_received is not None:
        ended = f"close frame {member.close_received[0]} {member.close_received[1]!r}"
    elif member.ended is not None:
        ended = f"no close frame: {member.ended}"
    else:
        ended = "still open (silence after what it read)"
    return {"messages_read": received, "ended": ended, "read_seconds": time.monotonic() - started}


# -- the server, in a child process --------------------------------------------------------------------


class ServerProcess:
    """A room server in a child process; always stopped and reaped."""

    def __init__(
        self, kind: str, watch: bool = False, write_timeout: float = WRITE_TIMEOUT, max_seconds: float = 300.0
    ) -> None:
        command = [sys.executable, "-m", "benchmarks.room", "--server", SLUGS[kind], "--max-seconds", str(max_seconds)]
        command += ["--write-timeout", str(write_timeout)]
        if watch:
            command.append("--watch")
        self.kind = kind
        self._proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.port = int(self._line(30.0))
        except BaseException:
            self.stop()
            raise
        self.final: Optional[Dict[str, Any]] = None

    def _line(self, timeout: float) -> str:
        line = _read_line(self._proc, timeout, f"the {self.kind} server")
        if not line:
            raise RoomError(f"the {self.kind} server exited (code {self._proc.poll()})")
        return line

    def ask(self, command: str) -> Dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        answer: Dict[str, Any] = json.loads(self._line(IO_TIMEOUT))
        return answer

    def wait_members(self, count: int, timeout: float = IO_TIMEOUT) -> None:
        """Until the server has ``count`` clients in its room: a client has its 101 before the
        server's handler has added it (a message sent then would miss it)."""
        deadline = time.monotonic() + timeout
        while True:
            have = self.ask("members")["members"]
            if have == count:
                return
            if time.monotonic() > deadline:
                raise RoomError(f"the {self.kind} server has {have} clients in its room, not {count}")
            time.sleep(0.02)  # no event to wait on across processes: a short, bounded poll

    def cpu_seconds(self) -> Optional[float]:
        return process_cpu_seconds(self._proc.pid)

    def memory_kib(self) -> Dict[str, Optional[int]]:
        path = f"/proc/{self._proc.pid}/status"
        return {"rss": process_status_field(path, "VmRSS"), "peak": process_status_field(path, "VmHWM")}

    def stop(self) -> Optional[Dict[str, Any]]:
        """Close its stdin (it closes and prints its last line), then reap it; kill it if it lingers."""
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            try:
                self.final = json.loads(self._line(20.0))
            except (RoomError, ValueError):
                self.final = None
        _reap(self._proc)
        return self.final

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class LogCount(logging.Handler):
    """Counts a library's log records instead of printing them (websockets warns per failed
    broadcast); keeps the first few."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: Dict[str, int] = {}
        self.first: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] = self.counts.get(record.levelname, 0) + 1
        if len(self.first) < 3:
            self.first.append(f"{record.levelname} {record.name}: {record.getMessage()[:160]}")

    def summary(self) -> Dict[str, Any]:
        return {"counts": dict(self.counts), "first": list(self.first)}


class DuplexRoom:
    """``duplexthreads.serve()``, and a watch on its hub."""

    def __init__(self, watch: bool, write_timeout: float) -> None:
        import duplexthreads

        self.server = duplexthreads.serve(notices=False, write_timeout=write_timeout)
        self.port = self.server.port
        self._lock = threading.Lock()  # the watch thread writes what the main thread reads
        self._seen: Dict[Any, Dict[str, Any]] = {}
        self._events: List[Dict[str, Any]] = []
        self._stop = threading.Event()
        self._watcher: Optional[threading.Thread] = None
        if watch:
            self._watcher = threading.Thread(target=self._watch, name="room-watch", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        last = (0, 0)
        while not self._stop.wait(WATCH_INTERVAL):
            now = time.time()
            members = list(self.server.hub)
            stats = self.server.hub.stats
            with self._lock:
                for conn in members:
                    if conn not in self._seen:
                        self._seen[conn] = {"port": peer_port(conn), "seen_at": now, "ended_at": None}
                for conn, entry in self._seen.items():
                    if entry["ended_at"] is None and conn.closed:
                        entry["ended_at"] = now
                if (stats.dropped, stats.cut_off) != last:
                    last = (stats.dropped, stats.cut_off)
                    self._events.append({"at": now, "dropped": stats.dropped, "cut_off": stats.cut_off})

    def members(self) -> int:
        return len(self.server.hub)

    def stats(self) -> Dict[str, Any]:
        stats = self.server.hub.stats
        with self._lock:
            conns = [dict(entry, report=describe_report(conn.report)) for conn, entry in self._seen.items()]
            events = list(self._events)
        return {
            "hub": {"delivered": stats.delivered, "dropped": stats.dropped, "cut_off": stats.cut_off},
            "events": events,
            "ended": [conn for conn in conns if conn["ended_at"] is not None],
        }

    def stop(self) -> Dict[str, Any]:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5.0)
        reports = self.server.close()
        final = self.stats()
        final["close_reports"] = len(reports)
        return final


def peer_port(conn: Any) -> Optional[int]:
    try:
        port: int = conn.transport.raw_socket.getpeername()[1]
    except (OSError, AttributeError, IndexError):
        return None
    return port


def describe_report(report: Any) -> Optional[Dict[str, Any]]:
    if report is None:
        return None
    return {
        "reason": report.reason.value,
        "first": report.first,
        "close_code": report.close_code,
        "close_sent": list(report.close_sent) if report.close_sent else None,
        "written": report.written,
        "unsent": len(report.unsent),
        "error": None if report.error is None else repr(report.error)[:200],
    }


class SyncRoom:
    """websockets' threading server relaying with a loop of ``send()`` or with ``broadcast()``."""

    def __init__(self, kind: str) -> None:
        from websockets.sync.server import serve

        self.kind = kind
        self._lock = threading.Lock()  # the handlers' threads share the set of peers
        self.peers: Set[Any] = set()
        # When each handler started relaying the message it is on: a stuck relay shows here.
        self.relaying: Dict[Any, float] = {}
        self.server = serve(self.handle, HOST, 0)  # websockets' defaults, as its users get them
        self.port: int = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="room-serve", daemon=True)
        self.thread.start()

    def handle(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.server import broadcast

        with self._lock:
            self.peers.add(ws)
        try:
            for data in ws:
                with self._lock:
                    others = [peer for peer in self.peers if peer is not ws]
                    self.relaying[ws] = time.time()
                if self.kind == WS_BROADCAST:
                    broadcast(others, data)
                else:
                    for peer in others:
                        try:
                            peer.send(data)
                        except ConnectionClosed:
                            pass  # that peer is leaving; the others still get it
                with self._lock:
                    del self.relaying[ws]
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self.peers.discard(ws)
                self.relaying.pop(ws, None)

    def members(self) -> int:
        with self._lock:
            return len(self.peers)

    def stats(self) -> Dict[str, Any]:
        now = time.time()
        with self._lock:
            stuck = sorted((now - since for since in self.relaying.values()), reverse=True)
        return {"longest_relay_s": stuck[0] if stuck else 0.0, "relays_over_1s": sum(1 for s in stuck if s > 1.0)}

    def stop(self) -> Dict[str, Any]:
        final = self.stats()
        self.server.shutdown()  # closes the connections and joins the handlers' threads
        self.thread.join(10.0)
        return final


class AsyncRoom:
    """websockets' asyncio server relaying with ``broadcast()``, its loop in a thread of its own."""

    def __init__(self) -> None:
        from websockets.asyncio.server import serve

        self.peers: Set[Any] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="room-asyncio", daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._serve(serve), self.loop).result(IO_TIMEOUT)
        self.port: int = self.server.sockets[0].getsockname()[1]

    async def _serve(self, serve: Any) -> Any:
        return await serve(self.handle, HOST, 0)

    async def handle(self, ws: Any) -> None:
        from websockets.asyncio.server import broadcast
        from websockets.exceptions import ConnectionClosed

        self.peers.add(ws)
        try:
            async for data in ws:
                broadcast([peer for peer in self.peers if peer is not ws], data)
        except ConnectionClosed:
            pass
        finally:
            self.peers.discard(ws)

    def _call(self, function: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return function()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(IO_TIMEOUT)

    def members(self) -> int:
        return int(self._call(lambda: len(self.peers)))

    def stats(self) -> Dict[str, Any]:
        def buffers() -> List[int]:
            return sorted((ws.transport.get_write_buffer_size() for ws in self.peers), reverse=True)

        sizes: List[int] = self._call(buffers)
        return {"largest_write_buffer_bytes": sizes[0] if sizes else 0}

    def stop(self) -> Dict[str, Any]:
        final = self.stats()

        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(20.0)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10.0)
            self.loop.close()
        return final


def commands(fd: int, max_seconds: float) -> Iterator[str]:
    """Lines from ``fd`` until end of file or ``max_seconds`` pass (read raw: a buffered reader
    would hide lines from select)."""
    deadline = time.monotonic() + max_seconds
    pending = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                yield line.decode().strip()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return
            chunk = os.read(fd, 4096)
            if not chunk:
                return
            pending += chunk


def serve_child(slug: str, watch: bool, write_timeout: float, max_seconds: float) -> int:
    raise_fd_limit()
    logs = LogCount()
    for name in ("websockets", "duplexthreads"):
        logger = logging.getLogger(name)
        logger.addHandler(logs)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    kind = BY_SLUG[slug]
    room: Any = DuplexRoom(watch, write_timeout) if kind == DT else AsyncRoom() if kind == WS_ASYNC else SyncRoom(kind)
    print(room.port, flush=True)
    try:
        for command in commands(sys.stdin.fileno(), max_seconds):
            if command == "members":
                answer: Dict[str, Any] = {"members": room.members()}
            elif command == "stats":
                answer = {"at": time.time(), **room.stats()}
            else:
                answer = {"error": f"unknown command {command!r}"}
            print(json.dumps(answer), flush=True)
    finally:
        final = room.stop()
        print(json.dumps({"at": time.time(), **final, "log": logs.summary()}), flush=True)
    return 0


# -- the flooder, in a child process -------------------------------------------------------------------


def flood_child(port: int, count: int, size: int, max_seconds: float) -> int:
    """Connect, print "ready", wait for "go", send ``count`` messages as fast as the server reads
    them (or until stdin ends), print what it did, then stay until stdin ends and close."""
    deadline = time.monotonic() + max_seconds
    sock, _ = handshake(port)
    # A small send buffer: the flood then goes out as fast as the server reads it, instead of
    # a few MB of it sitting in the kernel ahead of the server (and past the end of the chat).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, FLOOD_SNDBUF)
    # Timeout mode: a send() writes what fits and says how much (frames stay whole), and neither
    # thread can block for longer than this without looking at its deadline.
    sock.settimeout(0.5)
    stop = threading.Event()

    def discard() -> None:
        # The flooder is a member too: the others' messages reach it and must be read.
        while time.monotonic() < deadline:
            try:
                if not sock.recv(262144):
                    return
            except socket.timeout:
                continue
            except OSError:
                return

    reader = threading.Thread(target=discard, name="flood-reader", daemon=True)
    reader.start()
    frames = [frame(0x2, HEADER.pack(FLOOD, 0, seq, 0.0) + bytes(size - HEADER.size)) for seq in range(count)]
    lines = commands(sys.stdin.fileno(), max_seconds)
    print("ready", flush=True)
    if next(lines, None) != "go":
        stop.set()
    lines_left = iter(lines)

    def watch_stdin() -> None:
        for _ in lines_left:
            pass
        stop.set()

    watcher = threading.Thread(target=watch_stdin, name="flood-stdin", daemon=True)
    watcher.start()
    started = time.perf_counter()
    sent = 0
    while sent < count and not stop.is_set() and time.monotonic() < deadline:
        # Batches of whole frames, each written out before "stop" is looked at again: a frame
        # cut short would make the close frame after it unreadable.
        pending = memoryview(b"".join(frames[sent : sent + FLOOD_BATCH]))
        while pending and time.monotonic() < deadline:
            try:
                pending = pending[sock.send(pending) :]
            except socket.timeout:
                pass
        sent += min(FLOOD_BATCH, count - sent)
    seconds = time.perf_counter() - started
    print(json.dumps({"sent": sent, "seconds": seconds}), flush=True)
    watcher.join(max(0.0, deadline - time.monotonic()))
    try:
        sock.sendall(close_frame())
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    reader.join(3.0)
    sock.close()
    return 0


class FloodProcess:
    """The flooding client in a child process; always stopped and reaped."""

    def __init__(self, port: int, count: int, max_seconds: float) -> None:
        command = [
            sys.executable,
            "-m",
            "benchmarks.room",
            "--flood",
            str(port),
            "--count",
            str(count),
            "--max-seconds",
            str(max_seconds),
        ]
        self._proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            if self._line(30.0).strip() != "ready":
                raise RoomError("the flooder did not connect")
        except BaseException:
            self.stop()
            raise

    def _line(self, timeout: float) -> str:
        return _read_line(self._proc, timeout, "the flooder")

    def go(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write("go\n")
        self._proc.stdin.flush()

    def stop(self) -> Optional[Dict[str, Any]]:
        """End its flood and its connection (stdin closed); return what it says it sent."""
        result = None
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
                result = json.loads(self._line(10.0))
            except (OSError, RoomError, ValueError):
                result = None
        _reap(self._proc)
        return result


# -- a chat, and what it measures ---------------------------------------------------------------------


class Chat:
    """Senders that each send a message every 1/rate s, spread evenly, until ``seconds`` pass;
    and what the other chatters received."""

    def __init__(self, room: Room, chatters: List[Member], rate: float, size: int, seconds: float) -> None:
        self.room, self.chatters, self.rate, self.size = room, chatters, rate, size
        self.ids = {member.index for member in chatters}
        self.sent = 0
        self.latencies: List[float] = []
        #: Deliveries still missing per message, and when each was sent (seconds from the start).
        self.missing: Dict[Tuple[int, int], int] = {}
        self.sent_at: Dict[Tuple[int, int], float] = {}
        self.floods: Dict[int, int] = {member.index: 0 for member in chatters}
        self.last_flood_at: Optional[float] = None
        self.seq = {member.index: 0 for member in chatters}
        self.started = time.perf_counter()
        self.started_wall = time.time()
        self.end = self.started + seconds
        spacing = 1.0 / (rate * len(chatters))
        self.queue = [(self.started + n * spacing, member.index) for n, member in enumerate(chatters)]
        heapq.heapify(self.queue)
        self.by_index = {member.index: member for member in chatters}
        room.on_binary = self.received

    def tick(self, now: float) -> float:
        while self.queue and self.queue[0][0] <= now:
            due, index = heapq.heappop(self.queue)
            if due >= self.end:
                continue  # this sender is done
            seq = self.seq[index]
            self.seq[index] = seq + 1
            key = (index, seq)
            self.missing[key] = len(self.chatters) - 1
            self.sent_at[key] = due - self.started
            self.sent += 1
            self.room.send(self.by_index[index], frame(0x2, message(CHAT, index, seq, self.size)))
            heapq.heappush(self.queue, (due + 1.0 / self.rate, index))
        return self.queue[0][0] if self.queue and self.queue[0][0] < self.end else math.inf

    def received(self, member: Member, payload: bytes, now: float) -> None:
        kind, sender, seq, stamp = HEADER.unpack_from(payload)
        if kind == CHAT and member.index in self.ids:
            self.latencies.append(now - stamp)
            key = (sender, seq)
            left = self.missing.get(key)
            if left is not None:  # None: a copy past the count, which the server should not send
                if left > 1:
                    self.missing[key] = left - 1
                else:
                    del self.missing[key]
        elif kind == FLOOD and member.index in self.ids:
            self.floods[member.index] += 1
            self.last_flood_at = now

    def all_delivered(self) -> bool:
        return time.perf_counter() >= self.end and not self.missing

    def run(self, drain: float) -> None:
        """Send for the chat's time, then let deliveries arrive for up to ``drain`` s more."""
        self.room.pump(self.end, tick=self.tick)
        self.room.pump(self.end + drain, done=self.all_delivered)

    def summary(self) -> Dict[str, Any]:
        undelivered = sum(self.missing.values())
        late_from = min((self.sent_at[key] for key in self.missing), default=None)
        return {
            "sent": self.sent,
            "expected_deliveries": self.sent * (len(self.chatters) - 1),
            **latency_summary(self.latencies, undelivered),
            "first_undelivered_sent_at_s": late_from,
        }


def latency_summary(latencies: List[float], undelivered: int) -> Dict[str, Any]:
    """p50/p99 in ms over every delivery that should have happened, a missing one counting as
    later than all (None when the percentile falls on a missing one)."""
    ordered = sorted(latencies)
    total = len(ordered) + undelivered

    def pick(fraction: float) -> Optional[float]:
        rank = max(1, math.ceil(total * fraction - 1e-9))
        return ordered[rank - 1] * 1e3 if rank <= len(ordered) else None

    return {
        "deliveries": len(ordered),
        "undelivered": undelivered,
        "delivered_share": len(ordered) / total if total else None,
        "p50_ms": pick(0.50) if total else None,
        "p99_ms": pick(0.99) if total else None,
        "max_ms": ordered[-1] * 1e3 if ordered and not undelivered else None,
    }


# -- 1. stuck client ----------------------------------------------------------------------------------


def stuck_run(subject: Subject, stuck: bool, seconds: float) -> Dict[str, Any]:
    """20 chatters, with or without a client that never reads; what everyone saw."""
    kind = subject.kind
    with ServerProcess(kind, watch=stuck and kind == DT, write_timeout=subject.write_timeout) as server:
        room = Room(server.port)
        try:
            chatters = room.join(CHATTERS)
            extra = room.join(1, read=False)[0] if stuck else None
            server.wait_members(CHATTERS + (1 if stuck else 0))
            memory_before = server.memory_kib()
            cpu = server.cpu_seconds()
            chat = Chat(room, chatters, CHAT_RATE, CHAT_BYTES, seconds)
            chat.run(DRAIN)
            result: Dict[str, Any] = {"chat_seconds": seconds, **chat.summary()}
            cpu_after = server.cpu_seconds()
            result["server_cpu_share"] = None if cpu is None or cpu_after is None else (cpu_after - cpu) / seconds
            result["server_memory_kib"] = {"before": memory_before, "after": server.memory_kib()}
            if extra is not None:
                at_end = server.ask("stats")
                if kind == DT:
                    at_end = wait_for_end(server, extra, at_end, subject.write_timeout)
                result["stuck_client"] = stuck_story(extra, chat.started_wall, at_end, read_stuck(extra))
        finally:
            unfinished = room.leave()
        final = server.stop()
    result["clients_not_closed_cleanly"] = unfinished
    result["server_log"] = (final or {}).get("log")
    return result


def wait_for_end(server: ServerProcess, member: Member, at_end: Dict[str, Any], write_timeout: float) -> Dict[str, Any]:
    """The server's stats once it has ended the stuck client's connection, or after the longest
    it could take (its write timeout, then a close timeout of 5 s, and a margin)."""
    deadline = time.monotonic() + write_timeout + 7.0
    while not any(conn.get("port") == member.port for conn in at_end.get("ended", [])):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)  # the server's end is another process's event: a short, bounded poll
        at_end = server.ask("stats")
    return at_end


def stuck_story(member: Member, started_wall: float, server: Dict[str, Any], seen: Dict[str, Any]) -> Dict[str, Any]:
    """When and how the server let go of the stuck client, from both ends."""
    story: Dict[str, Any] = {"client_saw": seen, "server_asked_at_s": server["at"] - started_wall}
    ended = [conn for conn in server.get("ended", []) if conn.get("port") == member.port]
    if ended:
        conn = ended[0]
        story["server_ended_it_at_s"] = conn["ended_at"] - started_wall
        story["server_report"] = conn["report"]
    cut = [event for event in server.get("events", []) if event.get("cut_off")]
    if cut:
        story["hub_cut_off_at_s"] = cut[0]["at"] - started_wall
    hub = server.get("hub")
    if hub is not None:
        story["hub"] = hub
    for key in ("longest_relay_s", "relays_over_1s", "largest_write_buffer_bytes"):
        if key in server:
            story[key] = server[key]
    return story


def measure_stuck(config: Config, deadline: Deadline, notes: List[str]) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    run_bound = config.stuck_seconds + DRAIN + STUCK_READ_MAX + 20.0
    for subject in config.stuck_subjects:
        results[subject.label] = {}
        for label, stuck in (("clean", False), ("stuck", True)):
            if not stuck and not subject.clean:
                continue
            if not deadline.allows(run_bound):
                notes.append(f"stuck client: {subject.label} {label}: no time left in the cap")
                continue
            print(f"... room: stuck client, {subject.label}, {label}", file=sys.stderr, flush=True)
            try:
                results[subject.label][label] = stuck_run(subject, stuck, config.stuck_seconds)
            except Exception as exc:  # noqa: BLE001 - a failed run is reported, the others go on
                notes.append(f"stuck client: {subject.label} {label}: {exc!r}")
    return {
        "chatters": CHATTERS,
        "rate_per_s": CHAT_RATE,
        "message_bytes": CHAT_BYTES,
        "seconds": config.stuck_seconds,
        "drain_s": DRAIN,
        "write_timeout_s": WRITE_TIMEOUT,
        "servers": results,
    }


# -- 2. fan-out ------------------------------------------------------------------------------------------


class FanRound:
    """One round: the sender's N messages, and when the last one reached the last receiver."""

    def __init__(self, receivers: List[Member], number: int, count: int) -> None:
        self.number, self.count = number, count
        self.ids = {member.index for member in receivers}
        self.got = {member.index: 0 for member in receivers}
        self.unfinished = len(receivers)
        self.last_at = 0.0

    def received(self, member: Member, payload: bytes, now: float) -> None:
        kind, number, _, _ = HEADER.unpack_from(payload)
        if kind == FAN and number == self.number and member.index in self.ids:
            got = self.got[member.index] = self.got[member.index] + 1
            if got == self.count:
                self.unfinished -= 1
                self.last_at = now

    def done(self) -> bool:
        return not self.unfinished


def fanout_size(kind: str, receivers: int, count: int, rounds: int, deadline: Deadline) -> Dict[str, Any]:
    """Delivered per second for ``receivers`` clients, over ``rounds`` timed rounds on one room."""
    rates: List[float] = []
    errors: List[str] = []
    cpu_total = 0.0
    deliveries = 0
    with ServerProcess(kind) as server:
        room = Room(server.port)
        try:
            sender = room.join(1)[0]
            members = room.join(receivers)
            server.wait_members(receivers + 1, timeout=30.0)
            for number in range(rounds + 1):
                n = count // 5 if number == 0 else count  # round 0: an untimed warm-up
                fan = FanRound(members, number, n)
                room.on_binary = fan.received
                frames = b"".join(frame(0x2, message(FAN, number, seq, FANOUT_BYTES)) for seq in range(n))
                cpu = server.cpu_seconds()
                started = time.perf_counter()
                room.send(sender, frames)
                room.pump(started + min(30.0, deadline.remaining()), done=fan.done)
                cpu_after = server.cpu_seconds()
                if not fan.done():
                    errors.append(
                        f"round {number}: {fan.unfinished} of {receivers} receivers incomplete after the wait"
                    )
                    break
                if number:
                    rates.append(receivers * n / (fan.last_at - started))
                    deliveries += receivers * n
                    if cpu is not None and cpu_after is not None:
                        cpu_total += cpu_after - cpu
        finally:
            room.leave()
        final = server.stop()
    return {
        "receivers": receivers,
        "messages_per_round": count,
        "rounds_per_s": rates,
        "median_per_s": statistics.median(rates) if rates else None,
        "server_cpu_us_per_delivery": cpu_total / deliveries * 1e6 if deliveries else None,
        "errors": errors,
        "server_log": (final or {}).get("log"),
    }


def measure_fanout(config: Config, deadline: Deadline, notes: List[str]) -> Dict[str, Any]:
    soft, hard = raise_fd_limit()
    results: Dict[str, Dict[str, Any]] = {}
    for receivers, count in config.fanout:
        results[str(receivers)] = {}
        if receivers * 2 + 50 > soft:
            notes.append(f"fan-out at {receivers}: the descriptor limit ({soft}, hard {hard}) is too low")
            continue
        for kind in config.fanout_kinds:
            if not deadline.allows(10.0 + receivers / 50):
                notes.append(f"fan-out: {kind} at {receivers}: no time left in the cap")
                continue
            print(f"... room: fan-out, {kind}, {receivers} receivers", file=sys.stderr, flush=True)
            try:
                results[str(receivers)][kind] = fanout_size(kind, receivers, count, config.fanout_rounds, deadline)
            except Exception as exc:  # noqa: BLE001 - a failed run is reported, the others go on
                notes.append(f"fan-out: {kind} at {receivers}: {exc!r}")
        ours = results[str(receivers)].get(DT)
        for entry in results[str(receivers)].values():
            entry["ours_over_this"] = ratio(ours["median_per_s"] if ours else None, entry["median_per_s"])
    return {"message_bytes": FANOUT_BYTES, "rounds": config.fanout_rounds, "fd_limit": [soft, hard], "sizes": results}


# -- 3. flood ---------------------------------------------------------------------------------------------


def flood_run(kind: str, flooding: bool, config: Config) -> Dict[str, Any]:
    """10 calm chatters and a flooder, flooding or silent; the chatters' latency."""
    with ServerProcess(kind) as server:
        room = Room(server.port)
        flooder: Optional[FloodProcess] = None
        flood_result: Optional[Dict[str, Any]] = None
        try:
            chatters = room.join(CALM)
            flooder = FloodProcess(server.port, config.flood_count, config.flood_seconds + 60.0)
            server.wait_members(CALM + 1)
            cpu = server.cpu_seconds()
            chat = Chat(room, chatters, CALM_RATE, CALM_BYTES, config.flood_seconds)
            if flooding:
                flooder.go()
            room.pump(chat.end, tick=chat.tick)
            # The flood stops with the chat; what it had sent is still relayed during the drain.
            flood_result = flooder.stop()
            room.pump(chat.end + DRAIN, done=chat.all_delivered)
            cpu_after = server.cpu_seconds()
            # Closed by the server during the run: a chatter cut off for falling behind the flood.
            closed = [
                f"{m.close_received[0]} {m.close_received[1]!r}" if m.close_received else str(m.ended)
                for m in chatters
                if m.done
            ]
            at_end = server.ask("stats")
        finally:
            if flooder is not None:
                flooder.stop()
            unfinished = room.leave()
        final = server.stop()
    floods = list(chat.floods.values())
    flood_seconds = None if chat.last_flood_at is None else chat.last_flood_at - chat.started
    return {
        **chat.summary(),
        "flood_sent": (flood_result or {}).get("sent") if flooding else 0,
        "flood_received_per_chatter_min": min(floods),
        "flood_received_per_chatter_max": max(floods),
        "flood_relayed_per_s": min(floods) / flood_seconds if flooding and flood_seconds else None,
        "chatters_closed_by_server": closed,
        "server_cpu_share": None if cpu is None or cpu_after is None else (cpu_after - cpu) / config.flood_seconds,
        "server_at_end": at_end,
        "server_log": (final or {}).get("log"),
        "clients_not_closed_cleanly": unfinished,
    }


def measure_flood(config: Config, deadline: Deadline, notes: List[str]) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    for kind in config.flood_kinds:
        results[kind] = {}
        for label, flooding in (("calm", False), ("flood", True)):
            if not deadline.allows(config.flood_seconds + DRAIN + 15.0):
                notes.append(f"flood: {kind} {label}: no time left in the cap")
                continue
            print(f"... room: flood, {kind}, {label}", file=sys.stderr, flush=True)
            try:
                results[kind][label] = flood_run(kind, flooding, config)
            except Exception as exc:  # noqa: BLE001 - a failed run is reported, the others go on
                notes.append(f"flood: {kind} {label}: {exc!r}")
    return {
        "chatters": CALM,
        "rate_per_s": CALM_RATE,
        "message_bytes": CALM_BYTES,
        "seconds": config.flood_seconds,
        "flood_count": config.flood_count,
        "servers": results,
    }


# -- the section ------------------------------------------------------------------------------------------


def measure(quick: bool, cap_seconds: float) -> Dict[str, Any]:
    config = QUICK if quick else FULL
    deadline = Deadline(cap_seconds)
    notes: List[str] = []
    result: Dict[str, Any] = {"mode": "quick" if quick else "full"}
    for part, run in (("stuck", measure_stuck), ("fanout", measure_fanout), ("flood", measure_flood)):
        started = time.monotonic()
        result[part] = run(config, deadline, notes)
        result[part]["part_seconds"] = time.monotonic() - started
    result["notes"] = notes
    result["complete"] = not notes
    result["seconds"] = deadline.elapsed()
    return result


def ms(value: Optional[float], undelivered: int, drain: float) -> str:
    if value is None:
        return f">{drain:g}s" if undelivered else "-"
    return f"{value:.1f}"


def format_stuck(stuck: Dict[str, Any]) -> List[str]:
    drain = stuck["drain_s"]
    lines = [
        f"Stuck client: {stuck['chatters']} clients each send {stuck['message_bytes']} B {stuck['rate_per_s']:g}"
        f" times a second for {stuck['seconds']:g} s, to the {stuck['chatters'] - 1} others; then one more client"
        " that never reads",
        f"latency in ms over every delivery due; '>{drain:g}s': still missing {drain:g} s after the last send",
        f"{'server':34} {'clean p50':>9} {'p99':>7} {'stuck p50':>9} {'p99':>7} {'delivered':>9}"
        f" {'stall from':>10} {'CPU':>5} {'peak RSS':>9}",
    ]
    for kind, runs in stuck["servers"].items():
        clean, with_stuck = runs.get("clean"), runs.get("stuck")
        cells = []
        for run in (clean, with_stuck):
            if run is None:
                cells += ["-", "-"]
            else:
                cells += [ms(run["p50_ms"], run["undelivered"], drain), ms(run["p99_ms"], run["undelivered"], drain)]
        share = fmt(with_stuck["delivered_share"] * 100, ".1f") + "%" if with_stuck else "-"
        late = with_stuck.get("first_undelivered_sent_at_s") if with_stuck else None
        stall = "-" if late is None else f"{late:.1f} s"
        cpu = fmt(with_stuck.get("server_cpu_share")) if with_stuck else "-"
        peak = (with_stuck or {}).get("server_memory_kib", {}).get("after", {}).get("peak")
        rss = "-" if peak is None else f"{peak / 1024:.0f} MiB"
        lines.append(
            f"{kind:34} {cells[0]:>9} {cells[1]:>7} {cells[2]:>9} {cells[3]:>7} {share:>9} {stall:>10}"
            f" {cpu:>5} {rss:>9}"
        )
    lines.append("(stall from: send time of the first message some chatter never got; CPU: server, share of a core)")
    for kind, runs in stuck["servers"].items():
        story = (runs.get("stuck") or {}).get("stuck_client")
        if story is not None:
            lines.append(f"  {kind}: {describe_story(story)}")
    return lines


def describe_story(story: Dict[str, Any]) -> str:
    seen = story["client_saw"]
    parts = []
    if "hub_cut_off_at_s" in story:
        parts.append(f"hub cut it off at {story['hub_cut_off_at_s']:.2f} s")
    if "server_ended_it_at_s" in story:
        report = story.get("server_report") or {}
        parts.append(
            f"its connection ended at {story['server_ended_it_at_s']:.2f} s"
            f" ({report.get('reason')}, code {report.get('close_code')}, {report.get('unsent')} unsent)"
        )
    elif "hub" in story:
        parts.append("its connection had not ended")
    if "hub" in story:
        hub = story["hub"]
        parts.append(f"hub stats: delivered {hub['delivered']:,}, dropped {hub['dropped']:,}, cut_off {hub['cut_off']}")
    if "longest_relay_s" in story:
        parts.append(
            f"a handler blocked relaying one message for {story['longest_relay_s']:.1f} s"
            f" ({story['relays_over_1s']} blocked over 1 s) at the end of the run"
        )
    if "largest_write_buffer_bytes" in story:
        parts.append(f"largest write buffer {story['largest_write_buffer_bytes'] / 1e6:.1f} MB at the end")
    parts.append(f"reading afterwards it got {seen['messages_read']:,} messages, then {seen['ended']}")
    return "; ".join(parts)


def format_fanout(fanout: Dict[str, Any]) -> List[str]:
    lines = [
        "",
        f"Fan-out: one client sends N messages of {fanout['message_bytes']} B, n receive each;"
        f" delivered/s = n*N / (first send -> last receipt), median of {fanout['rounds']} rounds",
        f"{'server':34} {'n':>4} {'N':>5} {'delivered/s':>12} {'ours/this':>9} {'CPU µs/delivery':>16}"
        "   rounds min..max",
    ]
    for size, kinds in fanout["sizes"].items():
        for kind, entry in kinds.items():
            rates = entry["rounds_per_s"]
            spread = f"{min(rates):,.0f}..{max(rates):,.0f}" if rates else "; ".join(entry["errors"]) or "-"
            lines.append(
                f"{kind:34} {size:>4} {entry['messages_per_round']:>5} {fmt(entry['median_per_s'], ',.0f'):>12}"
                f" {fmt(entry['ours_over_this']):>9} {fmt(entry['server_cpu_us_per_delivery'], '.1f'):>16}   {spread}"
            )
    return lines


def format_flood(flood: Dict[str, Any]) -> List[str]:
    lines = [
        "",
        f"Flood: {flood['chatters']} clients chat ({flood['message_bytes']} B, {flood['rate_per_s']:g}/s each) for"
        f" {flood['seconds']:g} s while an 11th sends up to {flood['flood_count']:,} messages of {FLOOD_BYTES} B as"
        " fast as the server reads them ('calm': it is connected and silent)",
        f"{'server':34} {'run':>6} {'p50 ms':>8} {'p99 ms':>8} {'delivered':>9} {'flood in/s':>10}"
        f" {'CPU':>5}  chatters closed by the server",
    ]
    for kind, runs in flood["servers"].items():
        for label, run in runs.items():
            closed = ", ".join(run["chatters_closed_by_server"]) or "none"
            lines.append(
                f"{kind:34} {label:>6} {ms(run['p50_ms'], run['undelivered'], DRAIN):>8}"
                f" {ms(run['p99_ms'], run['undelivered'], DRAIN):>8} {fmt(run['delivered_share'] * 100, '.1f'):>8}%"
                f" {fmt(run['flood_relayed_per_s'], ',.0f'):>10} {fmt(run['server_cpu_share']):>5}  {closed}"
            )
    lines.append("(flood in/s: flood messages relayed to each chatter per second; each went to all 10)")
    return lines


def format_table(result: Dict[str, Any]) -> str:
    lines = format_stuck(result["stuck"]) + format_fanout(result["fanout"]) + format_flood(result["flood"])
    if not result.get("complete", True):
        lines.append("INCOMPLETE")
    lines += [f"  note: {note}" for note in result.get("notes", [])]
    parts = ", ".join(f"{part} {result[part].get('part_seconds', 0.0):.0f} s" for part in ("stuck", "fanout", "flood"))
    lines.append(f"({result['seconds']:.1f} s: {parts})")
    return "\n".join(lines)


#: Tolerances by mode (quick: True), from four quick runs on this shared machine (load average 4
#: to 49): the p50 ratios moved by up to 20%, the fan-out CPU ratio at 500 clients from 8.3 to
#: 19.9. A lower-is-better ratio fails past (1 + tolerance) times the baseline.
LATENCY_TOLERANCE = {True: 1.0, False: 0.6}
FANOUT_TOLERANCE = {True: 2.0, False: 1.0}


def metrics(result: Dict[str, Any]) -> List[Metric]:
    """Two counts that must be 0, then ratios measured in the same run (p50s: the p99s of a
    loaded room on 2 shared cores moved by several times between runs)."""
    found: List[Metric] = []
    quick = result.get("mode") == "quick"
    stuck = result["stuck"]["servers"].get(DT, {})
    clean, with_stuck = stuck.get("clean"), stuck.get("stuck")
    if with_stuck is not None:
        # The hub must not let one client that stopped reading cost the others a message, and
        # the server must let go of that client: counts that must be 0.
        found.append(
            Metric(f"{NAME}.stuck.duplexthreads.undelivered", with_stuck["undelivered"], "msgs", "lower", leak=True)
        )
        story = with_stuck.get("stuck_client") or {}
        kept = 0 if "server_ended_it_at_s" in story else 1
        found.append(Metric(f"{NAME}.stuck.duplexthreads.stuck_client_kept", kept, "conns", "lower", leak=True))
    ratios = {}
    if clean is not None and with_stuck is not None:
        ratios["stuck.duplexthreads.p50_ratio_stuck_to_clean"] = ratio(with_stuck["p50_ms"], clean["p50_ms"])
    relay = result["stuck"]["servers"].get(WS_RELAY, {}).get("clean")
    if clean is not None and relay is not None:
        ratios["clean.duplexthreads.p50_ratio_to_ws_sync_relay"] = ratio(clean["p50_ms"], relay["p50_ms"])
    flood = result["flood"]["servers"].get(DT, {})
    if flood.get("calm") is not None and flood.get("flood") is not None:
        ratios["flood.duplexthreads.p50_ratio_flood_to_calm"] = ratio(flood["flood"]["p50_ms"], flood["calm"]["p50_ms"])
    found += [
        Metric(f"{NAME}.{name}", value, "x", "lower", tolerance=LATENCY_TOLERANCE[quick])
        for name, value in ratios.items()
        if value is not None
    ]
    # Fan-out: the server's CPU per delivery, over websockets' relay loop's: it moved by 20% between
    # quick runs at 10 and 100 clients (by 2.3 times at 500), where delivered/s moved by up to 3
    # times (the table has both).
    for size, kinds in result["fanout"]["sizes"].items():
        ours, theirs = kinds.get(DT), kinds.get(WS_RELAY)
        if ours is not None and theirs is not None:
            value = ratio(ours["server_cpu_us_per_delivery"], theirs["server_cpu_us_per_delivery"])
            if value is not None:
                name = f"{NAME}.fanout.n{size}.cpu_per_delivery_ratio_to_ws_sync_relay"
                found.append(Metric(name, value, "x", "lower", tolerance=FANOUT_TOLERANCE[quick]))
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["--server"], ["--flood"]):
        parser = argparse.ArgumentParser(prog="python -m benchmarks.room")
        parser.add_argument("--server", choices=sorted(BY_SLUG))
        parser.add_argument("--flood", type=int, metavar="PORT")
        parser.add_argument("--count", type=int, default=QUICK.flood_count)
        parser.add_argument("--watch", action="store_true")
        parser.add_argument("--write-timeout", type=float, default=WRITE_TIMEOUT)
        parser.add_argument("--max-seconds", type=float, default=300.0)
        child = parser.parse_args(args)
        if child.server:
            return serve_child(child.server, child.watch, child.write_timeout, child.max_seconds)
        return flood_child(child.flood, child.count, FLOOD_BYTES, child.max_seconds)
    return run_standalone(NAME, measure, format_table, metrics, CAPS, args)


def _reap(proc: subprocess.Popen[str]) -> None:
    """Wait for a child told to end (killed after 10 s) and close its pipe."""
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _read_line(proc: subprocess.Popen[str], timeout: float, who: str) -> str:
    """The child's next line ("" at its end); RoomError if none comes within ``timeout``."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise RoomError(f"{who} did not answer within {timeout:g} s")
    return proc.stdout.readline()


if __name__ == "__main__":
    sys.exit(main())
