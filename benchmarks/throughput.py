"""Throughput, echo round trip and teardown latency of duplexthreads, beside plain clients.

Run ``python benchmarks/throughput.py`` (under a minute on 2 cores) or ``--quick`` (under 20 s);
``--json PATH`` also writes every number, with the machine's description, to PATH.

Method
------
Server. websockets' threading server (``websockets.sync.server.serve``) on 127.0.0.1, port 0,
runs in a child process (``_peers.py``), so that on a 2-core machine the client under test and
the server each have a core and do not share a GIL. Compression and server pings are off. The
URL path picks its handler: count messages, echo, or echo and then close on request.

Clients. (a) ``duplexthreads.connect`` with the websocket-client backend, (b) the same with the
simple-websocket backend, (c) a plain websocket-client loop (``create_connection``,
``send_binary``), (d) ``simple_websocket.Client`` (``send``), (e) websockets' sync client
(``send``). Each is used with its library's defaults; only daemon threads are asked of
simple-websocket, so that a stuck one cannot keep the interpreter alive.

1. One-way throughput. Each round opens a fresh connection (not timed), then times from just
   before the first ``send`` until the server's ``"done"`` has been received: the server sends it
   once it has counted the last message (and checked every size). Rounds are interleaved
   round-robin across clients, rotating the starting client, after one untimed warm-up round
   per client at a tenth of the count. The table gives each client's median over its rounds,
   as messages/s and payload MB/s (10^6 B), and the ratio to the plain websocket-client loop.
   It also gives the CPU each side used over the timed part, as a share of one core (client:
   ``time.process_time``, all threads; server: ``/proc/PID/stat``, 10 ms ticks): a server near
   1.00 means the number is the server's limit rather than the client's.
2. Echo round trip. Per client, the round trips (after 20 untimed ones per connection) are split
   over the same number of interleaved rounds and pooled; p50 and p99 use the nearest rank.
3. Teardown of duplexthreads, both backends, trials interleaved over three triggers:
   ``abort()`` (time of the call, which returns what ``wait()`` returns); the peer's close
   (the server reads ``time.monotonic_ns()`` just before its ``close()`` call and sends it as
   the close reason; the monotonic clock is system-wide, so the wall time runs from there to
   the client's ``wait()`` returning); ``close()`` against the responsive server (time of the
   call). ``report.teardown_seconds`` (first exit cause to transport closed) is given as well.
   Afterwards: threads still alive named ``duplexthreads-*`` (must be 0) and the change in
   open file descriptors (``/proc/self/fd``), immediately and after a garbage collection.

Bounds. Every round or trial runs in a thread the main thread waits for with a time limit: the
rest of its phase's cap (``--phase-cap``). When that passes, the main thread kills the
connection (``shutdown(SHUT_RDWR)`` on its socket, or ``transport.shutdown()``), which wakes any
blocked call, and the phase is reported incomplete. Send loops are bounded by their count and
also stop once killed. Every connection is closed, the server process is stopped and reaped,
and the script checks that no thread it caused is left.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Dict, Generic, List, Optional, Sequence, Type, TypeVar, Union

import simple_websocket
import websocket
from websockets.sync.client import connect as websockets_connect

import duplexthreads
from duplexthreads import ExitReport, Reason

Message = Union[str, bytes]
T = TypeVar("T")

PEERS_SCRIPT = Path(__file__).resolve().with_name("_peers.py")
HOST = "127.0.0.1"

DT_WSC = "duplexthreads (websocket-client)"
DT_SWS = "duplexthreads (simple-websocket)"
WSC = "websocket-client loop"
SWS = "simple-websocket Client"
WSS = "websockets sync client"
CLIENTS = (DT_WSC, DT_SWS, WSC, SWS, WSS)
BASELINE = WSC
PEER_CLIENTS = (WSC, SWS, WSS)
BACKENDS = {DT_WSC: "websocket-client", DT_SWS: "simple-websocket"}

ABORT = "abort()"
PEER_CLOSE = "peer close"
LOCAL_CLOSE = "close()"
TEARDOWN_MODES = (ABORT, PEER_CLOSE, LOCAL_CLOSE)

#: Longest any single blocking call of a client may take (also its open and close timeouts).
IO_TIMEOUT = 30.0
#: How long a killed round gets to notice before it is declared stuck.
KILL_GRACE = 5.0
#: Send-loop chunk: the loop checks whether it was killed between chunks.
CHUNK = 1024
ECHO_WARMUP = 20
THREAD_PREFIXES = ("duplexthreads-", "bench-")


@dataclass(frozen=True)
class Config:
    rounds: int
    small_count: int
    large_count: int
    echo_count: int
    teardown_trials: int
    phase_cap: float


FULL = Config(rounds=5, small_count=100_000, large_count=20_000, echo_count=1_000, teardown_trials=200, phase_cap=120.0)
QUICK = Config(rounds=3, small_count=20_000, large_count=4_000, echo_count=300, teardown_trials=50, phase_cap=30.0)
SIZES = (32, 4096)


class BenchError(Exception):
    """A round went wrong: an unexpected reply, or a connection that did not close cleanly."""


class OutOfTime(Exception):
    """A round or trial did not finish within its phase's time cap and was killed."""


class Stuck(Exception):
    """A round or trial did not end even after its connection was killed (its thread is left)."""


# -- the clients ------------------------------------------------------------------------------------


@dataclass
class Conn:
    """One open client connection, reduced to what the benchmark loops need."""

    send: Callable[[Any], object]
    #: Next message; ``None`` (simple-websocket) or an exception after IO_TIMEOUT.
    recv: Callable[[], Optional[Message]]
    #: Wake every call blocked on the connection at once; safe from another thread, never blocks.
    kill: Callable[[], None]
    #: Close gracefully, bounded in time; raises BenchError if that did not go cleanly.
    close: Callable[[], None]


def open_conn(client: str, url: str) -> Conn:
    if client in BACKENDS:
        dconn = duplexthreads.connect(url, backend=BACKENDS[client], open_timeout=IO_TIMEOUT)
        return Conn(
            dconn.send, partial(dconn.recv, timeout=IO_TIMEOUT), dconn.transport.shutdown, partial(close_duplex, dconn)
        )
    if client == WSC:
        wsc = websocket.create_connection(url, timeout=IO_TIMEOUT)
        return Conn(wsc.send_binary, wsc.recv, partial(shutdown_socket, wsc.sock), wsc.close)
    if client == SWS:
        sws = simple_websocket.Client.connect(
            url, thread_class=partial(threading.Thread, daemon=True, name="bench-simple-websocket")
        )
        return Conn(
            sws.send,
            partial(sws.receive, timeout=IO_TIMEOUT),
            partial(shutdown_socket, sws.sock),
            partial(close_simple_websocket, sws),
        )
    if client == WSS:
        wss = websockets_connect(url, open_timeout=IO_TIMEOUT, close_timeout=IO_TIMEOUT, legacy=True)
        return Conn(wss.send, partial(wss.recv, timeout=IO_TIMEOUT), partial(shutdown_socket, wss.socket), wss.close)
    raise ValueError(f"unknown client {client!r}")


def close_duplex(conn: duplexthreads.Duplex) -> None:
    report = conn.close(timeout=IO_TIMEOUT)
    if report is None or not report.ok or report.lingering:
        raise BenchError(f"duplexthreads close: {report.describe() if report else 'no report'}")


def close_simple_websocket(ws: Any) -> None:
    ws.close()  # sends the close frame; its thread ends when the server's answer arrives
    ws.thread.join(IO_TIMEOUT)
    if ws.thread.is_alive():
        raise BenchError("simple-websocket's thread outlived close() by 30 s")


def shutdown_socket(sock: Optional[socket.socket]) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already shut down or closed


def close_after_failure(conn: Conn) -> None:
    """Tear a connection down after an error, whatever state it is in."""
    conn.kill()
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - the round's own error is the one to report
        pass


# -- bounded execution ----------------------------------------------------------------------------


class Watch:
    """Lets the supervising thread kill whatever connection a round has open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kill: Optional[Callable[[], None]] = None
        self.killed = False

    def arm(self, kill: Callable[[], None]) -> None:
        with self._lock:
            self._kill = kill
            killed = self.killed
        if killed:
            kill()

    def fire(self) -> None:
        with self._lock:
            self.killed = True
            kill = self._kill
        if kill is not None:
            kill()


def run_bounded(work: Callable[[Watch], T], timeout: float) -> T:
    """Run ``work`` in a thread of its own; kill its connection if it takes over ``timeout`` s."""
    watch = Watch()
    values: List[T] = []
    errors: List[BaseException] = []

    def target() -> None:
        try:
            values.append(work(watch))
        except BaseException as exc:  # noqa: BLE001 - carried to the supervising thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="bench-unit", daemon=True)
    thread.start()
    thread.join(max(timeout, 0.0))
    if thread.is_alive():
        watch.fire()
        thread.join(KILL_GRACE)
        if thread.is_alive():
            raise Stuck(f"still running {KILL_GRACE:.0f} s after its connection was killed")
        raise OutOfTime(f"killed after {timeout:.1f} s")
    if errors:
        raise errors[0]
    return values[0]


@dataclass
class Phase(Generic[T]):
    """One benchmark phase: a time cap shared by its rounds, and what went wrong in them."""

    name: str
    cap: float
    deadline: float = 0.0
    complete: bool = True
    stuck: bool = False
    notes: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.cap

    def run(self, label: str, work: Callable[[Watch], T]) -> Optional[T]:
        """Run one round; ``None`` if it failed or the phase is over (noted either way)."""
        if not self.complete:
            return None
        remaining = self.deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise OutOfTime("no time left")
            return run_bounded(work, remaining)
        except (OutOfTime, Stuck) as exc:
            self.complete = False
            self.stuck = isinstance(exc, Stuck)
            self.notes.append(f"{label}: {exc} (phase cap {self.cap:g} s); phase stopped")
        except Exception as exc:  # noqa: BLE001 - a failed round is reported, the others go on
            self.notes.append(f"{label}: {exc!r}")
        return None

    def summary(self) -> Dict[str, Any]:
        return {"complete": self.complete, "stuck": self.stuck, "cap_seconds": self.cap, "notes": self.notes}


# -- the server ------------------------------------------------------------------------------------


class PeerServer:
    """The child process running ``_peers.py``; always stopped and reaped on exit."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, str(PEERS_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            self.port = int(self._read_line(30.0))
        except BaseException:
            self.stop()
            raise

    def _read_line(self, timeout: float) -> str:
        assert self._proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise RuntimeError(f"the peer server did not print its port within {timeout:.0f} s")
        return self._proc.stdout.readline()

    def url(self, path: str) -> str:
        return f"ws://{HOST}:{self.port}{path}"

    def cpu_seconds(self) -> Optional[float]:
        """CPU time the server process has used so far (Linux only; 10 ms resolution)."""
        try:
            with open(f"/proc/{self._proc.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def stop(self) -> None:
        """Close its stdin (it shuts down on end of file) and reap it; kill it if it lingers."""
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> PeerServer:
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.stop()


# -- 1. one-way throughput ------------------------------------------------------------------------


@dataclass(frozen=True)
class ThroughputRound:
    seconds: float
    #: CPU seconds over the timed part, as a share of its wall time: 1.0 is one core kept busy.
    client_cpu: float
    server_cpu: Optional[float]


def measure_throughput(
    watch: Watch, client: str, url: str, payload: bytes, count: int, server: PeerServer
) -> ThroughputRound:
    """Time from the first send until the server's "done" arrived, and the CPU both sides used."""
    conn = open_conn(client, url)
    watch.arm(conn.kill)
    try:
        gc.collect()
        send = conn.send
        sent = 0
        server_cpu = server.cpu_seconds()
        client_cpu = time.process_time()
        started = time.perf_counter()
        while sent < count and not watch.killed:
            for _ in range(min(CHUNK, count - sent)):
                send(payload)
            sent += CHUNK
        reply = conn.recv()
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        server_after = server.cpu_seconds()
        if reply != "done":
            raise BenchError(f"server answered {reply!r}")
    except BaseException:
        close_after_failure(conn)
        raise
    conn.close()
    server_share = None if server_cpu is None or server_after is None else (server_after - server_cpu) / elapsed
    return ThroughputRound(elapsed, client_cpu / elapsed, server_share)


def throughput_phase(server: PeerServer, config: Config, size: int, rounds: int) -> Dict[str, Any]:
    count = config.small_count if size == SIZES[0] else config.large_count
    payload = os.urandom(size)
    url = server.url(f"/count?n={count}&size={size}")
    phase: Phase[ThroughputRound] = Phase(f"throughput {size} B", config.phase_cap)
    for client in CLIENTS:
        warm_url = server.url(f"/count?n={count // 10}&size={size}")
        phase.run(
            f"{client} warm-up",
            partial(measure_throughput, client=client, url=warm_url, payload=payload, count=count // 10, server=server),
        )
    done: Dict[str, List[ThroughputRound]] = {client: [] for client in CLIENTS}
    for number in range(rounds):
        for client in rotated(CLIENTS, number):
            measured = phase.run(
                f"{client} round {number + 1}",
                partial(measure_throughput, client=client, url=url, payload=payload, count=count, server=server),
            )
            if measured is not None:
                done[client].append(measured)
    results: Dict[str, Any] = {}
    for client, measured_rounds in done.items():
        rates = [count / r.seconds for r in measured_rounds]
        median = statistics.median(rates) if rates else None
        server_shares = [r.server_cpu for r in measured_rounds if r.server_cpu is not None]
        results[client] = {
            "rounds_msgs_per_s": rates,
            "median_msgs_per_s": median,
            "median_MB_per_s": median * size / 1e6 if median else None,
            "median_client_cpu_share": statistics.median([r.client_cpu for r in measured_rounds]) if rates else None,
            "median_server_cpu_share": statistics.median(server_shares) if server_shares else None,
        }
    base = results[BASELINE]["median_msgs_per_s"]
    for entry in results.values():
        median = entry["median_msgs_per_s"]
        entry["ratio_to_websocket_client"] = median / base if median and base else None
    peers = {client: results[client]["median_msgs_per_s"] for client in PEER_CLIENTS}
    fastest = max((c for c in peers if peers[c]), key=lambda c: peers[c], default=None)
    ours = results[DT_WSC]["median_msgs_per_s"]
    return {
        "message_bytes": size,
        "messages_per_round": count,
        "rounds": rounds,
        "clients": results,
        "fastest_peer": fastest,
        "duplexthreads_wsc_to_fastest_peer": ours / peers[fastest] if ours and fastest else None,
        **phase.summary(),
    }


def rotated(items: Sequence[T], by: int) -> List[T]:
    by %= len(items)
    return [*items[by:], *items[:by]]


# -- 2. echo round trip --------------------------------------------------------------------------


def measure_echo(watch: Watch, client: str, url: str, payload: bytes, count: int) -> List[float]:
    """Seconds of each of ``count`` round trips, after ECHO_WARMUP untimed ones."""
    conn = open_conn(client, url)
    watch.arm(conn.kill)
    samples: List[float] = []
    try:
        gc.collect()
        send, recv, clock = conn.send, conn.recv, time.perf_counter
        for number in range(ECHO_WARMUP + count):
            if watch.killed:
                raise OutOfTime("killed")
            started = clock()
            send(payload)
            reply = recv()
            elapsed = clock() - started
            if reply != payload:
                raise BenchError(f"echo answered {reply!r}")
            if number >= ECHO_WARMUP:
                samples.append(elapsed)
    except BaseException:
        close_after_failure(conn)
        raise
    conn.close()
    return samples


def echo_phase(server: PeerServer, config: Config, rounds: int) -> Dict[str, Any]:
    payload = os.urandom(32)
    phase: Phase[List[float]] = Phase("echo", config.phase_cap)
    samples: Dict[str, List[float]] = {client: [] for client in CLIENTS}
    for number in range(rounds):
        share = config.echo_count // rounds + (1 if number < config.echo_count % rounds else 0)
        for client in rotated(CLIENTS, number):
            values = phase.run(
                f"{client} round {number + 1}",
                partial(measure_echo, client=client, url=server.url("/echo"), payload=payload, count=share),
            )
            if values is not None:
                samples[client].extend(values)
    return {
        "message_bytes": 32,
        "round_trips": config.echo_count,
        "clients": {client: distribution(values) for client, values in samples.items()},
        **phase.summary(),
    }


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(len(ordered) * fraction - 1e-9))
    return ordered[rank - 1]


def distribution(values: Sequence[float]) -> Dict[str, Any]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": len(ordered), "p50": percentile(ordered, 0.50), "p99": percentile(ordered, 0.99), "max": ordered[-1]}


# -- 3. teardown ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeardownSample:
    #: Trigger to wait() returning: the abort()/close() call, or from the server's close() call.
    wall: float
    #: report.teardown_seconds: first exit cause to transport closed.
    teardown: float
    #: Why the report was not what the trigger should give, if it was not.
    unexpected: Optional[str]


def measure_teardown(watch: Watch, backend: str, mode: str, server: PeerServer) -> TeardownSample:
    conn = duplexthreads.connect(
        server.url("/close" if mode == PEER_CLOSE else "/echo"), backend=backend, open_timeout=IO_TIMEOUT
    )
    watch.arm(conn.transport.shutdown)
    try:
        # One round trip first, so that the reader is blocked in its receive when the trigger comes.
        conn.send(b"ping")
        if conn.recv(timeout=IO_TIMEOUT) != b"ping":
            raise BenchError("echo failed before the teardown trial")
        if mode == PEER_CLOSE:
            conn.send("close")
            report = conn.wait(timeout=IO_TIMEOUT)
            finished_ns = time.monotonic_ns()
            wall = (finished_ns - int(report.close_reason)) / 1e9 if report.close_reason.isdigit() else float("nan")
        else:
            started = time.perf_counter()
            returned = conn.abort() if mode == ABORT else conn.close(timeout=IO_TIMEOUT)
            wall = time.perf_counter() - started
            assert returned is not None  # None only when called from the connection's own threads
            report = returned
    except BaseException:
        conn.transport.shutdown()
        conn.abort()
        raise
    report = conn.wait(timeout=IO_TIMEOUT)  # returns at once: the connection has ended
    return TeardownSample(wall, report.teardown_seconds, unexpected_report(mode, report))


def unexpected_report(mode: str, report: ExitReport) -> Optional[str]:
    expected = {ABORT: Reason.ABORTED, PEER_CLOSE: Reason.PEER_CLOSED, LOCAL_CLOSE: Reason.LOCAL_CLOSE}[mode]
    wrong = report.reason is not expected or report.lingering or (mode != ABORT and not report.ok)
    return report.describe() + (f"; lingering {report.lingering}" if report.lingering else "") if wrong else None


def teardown_phase(server: PeerServer, config: Config) -> Dict[str, Any]:
    phase: Phase[TeardownSample] = Phase("teardown", config.phase_cap)
    backends = list(BACKENDS.values())
    samples: Dict[str, Dict[str, List[TeardownSample]]] = {b: {m: [] for m in TEARDOWN_MODES} for b in backends}
    gc.collect()
    fds_before = fd_count()
    for trial in range(config.teardown_trials):
        for backend in backends:
            for mode in TEARDOWN_MODES:
                sample = phase.run(
                    f"{backend} {mode} trial {trial + 1}",
                    partial(measure_teardown, backend=backend, mode=mode, server=server),
                )
                if sample is not None:
                    samples[backend][mode].append(sample)
    threads_left = [t.name for t in threading.enumerate() if t.name.startswith("duplexthreads-")]
    fds_after = fd_count()
    gc.collect()
    fds_after_gc = fd_count()
    results: Dict[str, Any] = {}
    for backend, modes in samples.items():
        results[backend] = {}
        for mode, values in modes.items():
            unexpected = [s.unexpected for s in values if s.unexpected]
            results[backend][mode] = {
                "trigger_to_wait_seconds": distribution([s.wall for s in values]),
                "report_teardown_seconds": distribution([s.teardown for s in values]),
                "unexpected_reports": len(unexpected),
                "unexpected_examples": sorted(set(unexpected))[:5],
            }
    return {
        "trials": config.teardown_trials,
        "backends": results,
        "duplexthreads_threads_alive_after": len(threads_left),
        "duplexthreads_thread_names_alive_after": threads_left[:20],
        "fd_delta": fds_after - fds_before,
        "fd_delta_after_gc": fds_after_gc - fds_before,
        **phase.summary(),
    }


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else -1


# -- report -------------------------------------------------------------------------------------


def machine_info() -> Dict[str, Any]:
    versions: Dict[str, Optional[str]] = {}
    for package in ("duplexthreads", "websocket-client", "simple-websocket", "wsproto", "websockets", "wsaccel"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    status = git("status", "--porcelain", "--", str(Path(duplexthreads.__file__).parent))
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "packages": versions,
        "duplexthreads_path": str(Path(duplexthreads.__file__).parent),
        "duplexthreads_commit": git("rev-parse", "HEAD"),
        "duplexthreads_uncommitted_changes": None if status is None else bool(status),
    }


def git(*args: str) -> Optional[str]:
    """Output of a git command run in duplexthreads' source tree, or None if that fails."""
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=Path(duplexthreads.__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def load_average() -> Optional[List[float]]:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_throughput(result: Dict[str, Any]) -> None:
    size, count = result["message_bytes"], result["messages_per_round"]
    print(f"\nOne-way throughput: {count:,} binary messages of {size} B per round, median of {result['rounds']} rounds")
    print(
        f"{'client':34} {'msgs/s':>10} {'MB/s':>8} {'vs wsc loop':>11} {'CPU client/server':>17}"
        "   rounds min..max (msgs/s)"
    )
    for client, entry in result["clients"].items():
        rates = entry["rounds_msgs_per_s"]
        spread = f"{min(rates):>9,.0f}..{max(rates):,.0f} (n={len(rates)})" if rates else "-"
        cpu = f"{fmt(entry['median_client_cpu_share'], '.2f')}/{fmt(entry['median_server_cpu_share'], '.2f')}"
        print(
            f"{client:34} {fmt(entry['median_msgs_per_s'], ',.0f'):>10} {fmt(entry['median_MB_per_s'], '.2f'):>8}"
            f" {fmt(entry['ratio_to_websocket_client'], '.2f'):>11} {cpu:>17}   {spread}"
        )
    print(
        f"duplexthreads (websocket-client) / fastest peer ({result['fastest_peer']}): "
        f"{fmt(result['duplexthreads_wsc_to_fastest_peer'], '.2f')}"
    )
    print("(CPU: median share of one core over the timed part; a server near 1.00 is the limit, not the client)")
    print_phase_notes(result)


def print_echo(result: Dict[str, Any]) -> None:
    print(f"\nEcho round trip, {result['message_bytes']} B, {result['round_trips']:,} round trips per client")
    print(f"{'client':34} {'p50 µs':>9} {'p99 µs':>9} {'max µs':>9} {'n':>6}")
    for client, dist in result["clients"].items():
        print(f"{client:34} {micro(dist['p50']):>9} {micro(dist['p99']):>9} {micro(dist['max']):>9} {dist['n']:>6}")
    print_phase_notes(result)


def print_teardown(result: Dict[str, Any]) -> None:
    print(f"\nTeardown of duplexthreads, {result['trials']} trials per backend and trigger (ms)")
    print(
        f"{'backend':17} {'trigger':11} {'trigger -> wait() returns':>27}   {'report.teardown_seconds':>25}"
        f" {'unexpected':>10}"
    )
    print(f"{'':29} {'p50':>8} {'p99':>8} {'max':>9}   {'p50':>7} {'p99':>8} {'max':>8}")
    for backend, modes in result["backends"].items():
        for mode, entry in modes.items():
            wall, own = entry["trigger_to_wait_seconds"], entry["report_teardown_seconds"]
            print(
                f"{backend:17} {mode:11} {milli(wall['p50']):>8} {milli(wall['p99']):>8} {milli(wall['max']):>9}"
                f"   {milli(own['p50']):>7} {milli(own['p99']):>8} {milli(own['max']):>8}"
                f" {entry['unexpected_reports']:>10}"
            )
            for example in entry["unexpected_examples"]:
                print(f"    unexpected: {example}")
    print("(peer close: from the server's close() call, read on its monotonic clock, to wait() returning)")
    print(f"threads named duplexthreads-* alive afterwards: {result['duplexthreads_threads_alive_after']}")
    print(
        f"open fds, after minus before: {result['fd_delta']:+d} (after gc.collect(): {result['fd_delta_after_gc']:+d})"
    )
    print_phase_notes(result)


def print_phase_notes(result: Dict[str, Any]) -> None:
    if not result["complete"]:
        print("PHASE INCOMPLETE")
    for note in result["notes"][:10]:
        print(f"  note: {note}")
    if len(result["notes"]) > 10:
        print(f"  ... and {len(result['notes']) - 10} more notes")


def micro(seconds: Optional[float]) -> str:
    return fmt(None if seconds is None else seconds * 1e6, ".0f")


def milli(seconds: Optional[float]) -> str:
    return fmt(None if seconds is None else seconds * 1e3, ".2f")


def leftover_threads() -> List[str]:
    """Threads this script caused that are still alive (after a short grace for daemon exits)."""
    deadline = time.monotonic() + 2.0
    while True:
        names = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        if not names or time.monotonic() > deadline:
            return names
        time.sleep(0.05)


# -- main -----------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run: fewer messages, rounds and trials")
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH as JSON")
    parser.add_argument("--rounds", type=int, help="rounds per client (default 5, or 3 with --quick)")
    parser.add_argument("--phase-cap", type=float, help="seconds each phase may take (default 120, or 30 with --quick)")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    rounds = args.rounds or config.rounds
    if args.phase_cap:
        config = Config(
            config.rounds,
            config.small_count,
            config.large_count,
            config.echo_count,
            config.teardown_trials,
            args.phase_cap,
        )

    started = time.monotonic()
    results: Dict[str, Any] = {
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": machine_info(),
        "load_average_start": load_average(),
    }
    print(
        f"duplexthreads {duplexthreads.__version__}, Python {results['machine']['python']}, "
        f"{results['machine']['cpu_count']} CPUs, {results['mode']} run, server in a child process"
    )
    with PeerServer() as server:
        results["throughput"] = {}
        for size in SIZES:
            print(f"... throughput, {size} B", file=sys.stderr, flush=True)
            results["throughput"][str(size)] = throughput_phase(server, config, size, rounds)
            print_throughput(results["throughput"][str(size)])
        print("... echo", file=sys.stderr, flush=True)
        results["echo"] = echo_phase(server, config, rounds)
        print_echo(results["echo"])
        print("... teardown", file=sys.stderr, flush=True)
        results["teardown"] = teardown_phase(server, config)
        print_teardown(results["teardown"])

    results["leftover_threads"] = leftover_threads()
    results["load_average_end"] = load_average()
    results["seconds"] = time.monotonic() - started
    print(f"\nthreads left at the end (must be none): {results['leftover_threads'] or 'none'}")
    print(
        f"load average at start {results['load_average_start']}, at end {results['load_average_end']}; "
        f"total {results['seconds']:.1f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")

    phases = [*results["throughput"].values(), results["echo"], results["teardown"]]
    problems = (
        any(not p["complete"] or p["notes"] for p in phases)
        or results["teardown"]["duplexthreads_threads_alive_after"]
        or results["leftover_threads"]
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
