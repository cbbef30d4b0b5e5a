"""Helpers every benchmark section shares: bounded execution, the server process, measurements.

- Bounded execution: :func:`run_bounded` runs one round in a thread of its own and, when the
  round overruns, kills its connection (``Watch``) so that any blocked call wakes up;
  :class:`Phase` spends one time cap across many rounds and records what went wrong.
- The server: :class:`PeerServer` runs ``_peers.py`` in a child process (so client and server
  do not share a GIL) and always stops and reaps it.
- Measurements of this process, read from ``/proc`` on Linux: open fds, OS threads (tasks),
  their context switches, resident memory.
- Statistics and formatting: nearest-rank percentiles, distributions, table cells.
- The record of the run: machine description, git commit, load average.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Dict, Generic, Iterable, List, Optional, Sequence, Set, Tuple, Type, TypeVar

import duplexthreads

T = TypeVar("T")

HOST = "127.0.0.1"
PEERS_SCRIPT = Path(__file__).resolve().with_name("_peers.py")
#: Longest any single blocking call of a client may take (also its open and close timeouts).
IO_TIMEOUT = 30.0
#: How long a killed round gets to notice before it is declared stuck.
KILL_GRACE = 5.0


class BenchError(Exception):
    """A round went wrong: an unexpected reply, or a connection that did not close cleanly."""


class OutOfTime(Exception):
    """A round or trial did not finish within its phase's time cap and was killed."""


class Stuck(Exception):
    """A round or trial did not end even after its connection was killed (its thread is left)."""


# -- bounded execution ----------------------------------------------------------------------------


class Watch:
    """Lets the supervising thread kill whatever connection a round has open."""

    def __init__(self) -> None:
        # Guards _kill and killed between the round's thread (arm) and the supervisor (fire).
        self._lock = threading.Lock()
        self._kill: Optional[Callable[[], None]] = None
        self.killed = False

    def arm(self, kill: Callable[[], None]) -> None:
        """Register how to kill the round's connection; kills at once if the round is over."""
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

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def summary(self) -> Dict[str, Any]:
        return {"complete": self.complete, "stuck": self.stuck, "cap_seconds": self.cap, "notes": self.notes}


def rotated(items: Sequence[T], by: int) -> List[T]:
    """``items`` rotated left by ``by``: interleaved rounds start with a different client each time."""
    by %= len(items)
    return [*items[by:], *items[:by]]


def shutdown_socket(sock: Optional[socket.socket]) -> None:
    """``shutdown(SHUT_RDWR)``: wakes every thread blocked on the socket; tolerates a closed one."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already shut down or closed


# -- the server ------------------------------------------------------------------------------------


class PeerServer:
    """The child process running ``_peers.py``; always stopped and reaped on exit."""

    def __init__(self, max_seconds: float = 1800.0, lean: bool = False) -> None:
        """``lean``: the one-thread selectors server (``/echo`` only) instead of websockets'."""
        self._proc = subprocess.Popen(
            [sys.executable, str(PEERS_SCRIPT), "--max-seconds", str(max_seconds), *(["--lean"] if lean else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
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

    @property
    def pid(self) -> int:
        return self._proc.pid

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

    def thread_count(self) -> Optional[int]:
        """OS threads of the server process now (Linux only)."""
        return proc_status_field(f"/proc/{self._proc.pid}/status", "Threads")

    def wait_for_threads(self, at_most: int, timeout: float) -> bool:
        """Wait (bounded) until the server is down to ``at_most`` threads: its handlers wound down."""
        deadline = time.monotonic() + timeout
        while True:
            count = self.thread_count()
            if count is None or count <= at_most:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def stop(self) -> None:
        """Close its stdin (it shuts down on end of file) and reap it; kill it if it lingers."""
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=60)
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


# -- this process, from /proc ---------------------------------------------------------------------


def fd_count() -> int:
    """Open file descriptors of this process (-1 where /proc is missing)."""
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else -1


def task_ids() -> Set[int]:
    """Native ids of every OS thread of this process (``threading.get_native_id`` values)."""
    try:
        return {int(name) for name in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def context_switches(tids: Iterable[int]) -> Dict[int, int]:
    """Voluntary + involuntary context switches so far of each given thread of this process.

    Every switch is one time the thread stopped running: it blocked (voluntary) or was
    preempted (involuntary); a thread blocked in one call throughout adds nothing. A thread
    that has already exited cannot be read and is left out.
    """
    found: Dict[int, int] = {}
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/status") as status:
                lines = status.read().splitlines()
        except OSError:
            continue
        found[tid] = sum(
            int(line.split()[1])
            for line in lines
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"))
        )
    return found


def proc_status_field(path: str, key: str) -> Optional[int]:
    """One numeric field (``VmRSS`` in kB, ``Threads``...) of a /proc status file."""
    try:
        with open(path) as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_kib() -> Optional[int]:
    """Resident memory of this process, KiB."""
    return proc_status_field("/proc/self/status", "VmRSS")


def raise_fd_limit() -> Tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE soft limit to its hard limit; return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def leftover_threads(grace: float = 2.0) -> List[str]:
    """Threads other than the main one still alive, after up to ``grace`` s for daemon exits."""
    deadline = time.monotonic() + grace
    while True:
        names = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        if not names or time.monotonic() > deadline:
            return names
        time.sleep(0.05)


# -- statistics and formatting -------------------------------------------------------------------


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(len(ordered) * fraction - 1e-9))
    return ordered[rank - 1]


def distribution(values: Sequence[float]) -> Dict[str, Any]:
    """n, p50, p99 and max (nearest rank) of ``values``; None for each when there are none."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": len(ordered), "p50": percentile(ordered, 0.50), "p99": percentile(ordered, 0.99), "max": ordered[-1]}


def fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def micro(seconds: Optional[float]) -> str:
    return fmt(None if seconds is None else seconds * 1e6, ".0f")


def milli(seconds: Optional[float]) -> str:
    return fmt(None if seconds is None else seconds * 1e3, ".2f")


def phase_notes(result: Dict[str, Any], limit: int = 10) -> List[str]:
    """Lines describing an incomplete phase and its notes (empty when all went well)."""
    lines = ["PHASE INCOMPLETE"] if not result.get("complete", True) else []
    notes = result.get("notes", [])
    lines += [f"  note: {note}" for note in notes[:limit]]
    if len(notes) > limit:
        lines.append(f"  ... and {len(notes) - limit} more notes")
    return lines


# -- the record of the run ------------------------------------------------------------------------


def machine_info() -> Dict[str, Any]:
    """Platform, CPUs, package versions and the git commit of the duplexthreads being measured."""
    versions: Dict[str, Optional[str]] = {}
    for package in ("duplexthreads", "websocket-client", "simple-websocket", "wsproto", "websockets", "wsaccel"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    source = Path(duplexthreads.__file__).parent
    status = git("status", "--porcelain", "--", str(source))
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_kib": proc_status_field("/proc/meminfo", "MemTotal"),
        "fd_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "packages": versions,
        "duplexthreads_path": str(source),
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
    return [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None
