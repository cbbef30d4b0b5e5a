"""What the benchmarks read about processes and the machine, built on ``duplexthreads.testing``.

This process: threads, descriptors and resident memory come from ``duplexthreads.testing``
(``os_threads``, ``open_fds``, ``rss_kib``, ``LeakCheck``), so the benchmarks count exactly as
the test suite's leak check does. Added here: the context switches of given threads (idle's
wake-ups), another process's CPU, threads and descriptors (the load server's), the open-file
limit, and the record of the run (machine, package versions, git commit, load average).
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import duplexthreads
from duplexthreads.testing import LeakCheck, open_fds, os_threads, rss_kib

__all__ = [
    "SectionCheck",
    "context_switches",
    "context_switches_split",
    "fd_count",
    "library_threads",
    "load_average",
    "machine_info",
    "process_cpu_seconds",
    "process_fd_count",
    "process_status_field",
    "raise_fd_limit",
    "rss_kib",
    "task_ids",
]


def fd_count() -> int:
    """Open file descriptors of this process (``open_fds`` leaves out the listing's own)."""
    return len(open_fds())


def task_ids() -> Set[int]:
    """Native ids of every OS thread of this process, ``threading``'s or not."""
    return set(os_threads())


def library_threads() -> List[str]:
    """Names of live threads named ``duplexthreads-*``."""
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("duplexthreads-")]


def context_switches(tids: Iterable[int]) -> Dict[int, int]:
    """Voluntary + involuntary context switches so far of each given thread of this process.

    Every switch is one time the thread stopped running: it blocked (voluntary) or was
    preempted (involuntary); a thread blocked in one call throughout adds nothing. A thread
    that has already exited cannot be read and is left out.
    """
    return {tid: voluntary + involuntary for tid, (voluntary, involuntary) in context_switches_split(tids).items()}


def context_switches_split(tids: Iterable[int]) -> Dict[int, Tuple[int, int]]:
    """(voluntary, involuntary) context switches so far of each given thread of this process.

    A voluntary switch is the thread blocking, so their count is its wake-ups; an involuntary
    one is the thread preempted while it could run (on loopback, the thread whose write wakes
    the peer's process is often preempted by it). Threads already gone are left out.
    """
    found: Dict[int, Tuple[int, int]] = {}
    for tid in tids:
        voluntary = process_status_field(f"/proc/self/task/{tid}/status", "voluntary_ctxt_switches")
        involuntary = process_status_field(f"/proc/self/task/{tid}/status", "nonvoluntary_ctxt_switches")
        if voluntary is not None and involuntary is not None:
            found[tid] = (voluntary, involuntary)
    return found


def process_status_field(path: str, key: str) -> Optional[int]:
    """One numeric field (``Threads``, ``MemTotal`` in kB...) of a /proc status-style file."""
    try:
        with open(path) as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_cpu_seconds(pid: int) -> Optional[float]:
    """CPU time another process has used so far (Linux; 10 ms resolution)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def process_fd_count(pid: int) -> Optional[int]:
    """Open file descriptors of another process (Linux): a server's count falls back once its
    connections are closed."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def raise_fd_limit() -> Tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (one fd per connection, thousands of them)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # keep the soft limit; the sections report what they could open
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class SectionCheck:
    """What a section left behind: a ``LeakCheck`` from its start to its end, never raising.

    Threads get ``timeout`` seconds to end (WebSocketApp's outlive ``close()`` by up to 10 s,
    and sections reap them before they return); the garbage collector runs first, so sockets
    that only ``__del__`` closes are not counted.
    """

    def __init__(self, timeout: float = 5.0) -> None:
        self._check = LeakCheck(timeout, collect=True).start()

    def result(self) -> Dict[str, Any]:
        check = self._check
        check.verify(raise_error=False)
        return {
            "threads": [thread.name for thread in check.leaked_threads]
            + [f"{name} (OS thread {tid})" for tid, name in check.leaked_os_threads.items()],
            "fds": [f"{fd} -> {target}" for fd, target in check.leaked_fds.items()],
            "rss_growth_kib": check.rss_growth_kib,
        }


# -- the record of the run --------------------------------------------------------------------------


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
        "memory_kib": process_status_field("/proc/meminfo", "MemTotal"),
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
