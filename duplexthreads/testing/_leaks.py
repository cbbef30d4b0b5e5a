"""LeakCheck: snapshot what the process holds, then prove a block of code gave it all back.

A snapshot records the threads (by identity), the OS-level threads of the process (their ids in
``/proc/self/task``, so threads that C extensions start behind ``threading``'s back count too),
the open file descriptors with their targets, and the resident set size. ``verify()`` waits,
against one deadline, until nothing the block added is left, and names what is.
"""

from __future__ import annotations

import functools
import gc
import math
import os
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from types import TracebackType
from typing import (
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Pattern,
    Sequence,
    Tuple,
    Type,
    TypeVar,
)

from .. import _registry
from ._checks import check_bool, check_seconds, is_number

F = TypeVar("F", bound=Callable[..., Any])

_FD_DIR = "/proc/self/fd"
_TASK_DIR = "/proc/self/task"
_STATUS_FILE = "/proc/self/status"

#: Longest single join on a leftover thread: the wait re-checks everything at least this often.
_JOIN_SLICE = 0.05
#: Descriptors and OS-level threads have no event to wait on: re-check them this often.
_POLL_INTERVAL = 0.005


class LeakError(AssertionError):
    """Threads, file descriptors or memory outlived the checked block."""

    def __init__(
        self,
        message: str,
        threads: Sequence[threading.Thread],
        fds: Mapping[int, str],
        *,
        os_threads: Optional[Mapping[int, str]] = None,
        rss_growth_kib: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.threads = tuple(threads)
        self.fds = dict(fds)
        #: OS-level threads not started through ``threading``: thread id -> OS thread name.
        self.os_threads = dict(os_threads or {})
        self.rss_growth_kib = rss_growth_kib


def open_fds() -> Dict[int, str]:
    """Open file descriptors of this process and their targets (empty where /proc is absent)."""
    fds: Dict[int, str] = {}
    try:
        names = os.listdir(_FD_DIR)
    except OSError:
        return fds
    for name in names:
        try:
            fds[int(name)] = os.readlink(os.path.join(_FD_DIR, name))
        except OSError:
            continue  # closed between listdir and readlink (or the listdir's own fd)
    return fds


def os_threads() -> Dict[int, str]:
    """OS-level threads of this process, ``threading`` or not: thread id -> OS thread name.

    Empty where ``/proc`` is absent.
    """
    return {tid: _os_thread_name(tid) for tid in sorted(_os_thread_ids() or ())}


def rss_kib() -> Optional[int]:
    """Resident set size of this process in KiB (``VmRSS``), or None where /proc is absent."""
    try:
        with open(_STATUS_FILE, encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _os_thread_ids() -> Optional[FrozenSet[int]]:
    try:
        return frozenset(int(name) for name in os.listdir(_TASK_DIR))
    except OSError:
        return None


def _os_thread_name(tid: int) -> str:
    try:
        with open(os.path.join(_TASK_DIR, str(tid), "comm"), encoding="utf-8", errors="replace") as comm:
            return comm.read().strip()
    except OSError:
        return "?"  # it ended since it was listed


@dataclass(frozen=True, eq=False)
class _Resources:
    """Things a block of code can leave behind: threads, OS-level thread ids, descriptors, and
    duplexthreads connections not closed yet (by id)."""

    threads: FrozenSet[threading.Thread]
    os_thread_ids: FrozenSet[int]
    fds: Mapping[int, str]
    connections: FrozenSet[int] = frozenset()

    @classmethod
    def current(cls, *, fds: bool = True) -> _Resources:
        return _take(fds=fds)[1]

    def plus(self, other: _Resources) -> _Resources:
        return _Resources(
            self.threads | other.threads,
            self.os_thread_ids | other.os_thread_ids,
            {**self.fds, **other.fds},
            self.connections | other.connections,
        )

    def minus(self, other: _Resources) -> _Resources:
        """What this holds that ``other`` does not (a descriptor whose target changed is new)."""
        return _Resources(
            self.threads - other.threads,
            self.os_thread_ids - other.os_thread_ids,
            {fd: target for fd, target in self.fds.items() if other.fds.get(fd) != target},
            self.connections - other.connections,
        )

    def __bool__(self) -> bool:
        return bool(self.threads or self.os_thread_ids or self.fds or self.connections)


@dataclass(frozen=True)
class _Counts:
    """The process-wide numbers a failure report shows before and after."""

    active_count: int
    os_thread_count: Optional[int]
    rss_kib: Optional[int]


def _patterns(name: str, patterns: Iterable[str]) -> List[Pattern[str]]:
    """``ignore_threads`` or ``ignore_fds`` compiled. A bare str is refused: iterated, each of
    its characters would become a pattern of its own, and one of them matches almost anything."""
    if isinstance(patterns, (str, bytes, bytearray)):
        raise TypeError(
            f"{name} must be a list of regular expressions, not a {type(patterns).__name__}"
            f" (for one pattern, write [{patterns!r}])"
        )
    if not isinstance(patterns, Iterable):
        raise TypeError(f"{name} must be a list of regular expressions, not {type(patterns).__name__}")
    compiled: List[Pattern[str]] = []
    for pattern in patterns:
        if isinstance(pattern, re.Pattern) and isinstance(pattern.pattern, str):
            compiled.append(pattern)
            continue
        if not isinstance(pattern, str):
            raise TypeError(
                f"{name}: each pattern must be a str or a compiled str pattern, not {pattern!r} "
                f"({type(pattern).__name__})"
            )
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"{name}: {pattern!r} is not a regular expression: {exc}") from None
    return compiled


def _describe_connection(conn: Any) -> str:
    """Where an open connection was opened: a connection lives until closed, referenced or not."""
    places = "; ".join(f"{file}:{line} in {function}" for file, line, function in conn.opened_at)
    return (
        f"duplexthreads connection {conn.connection_id} ({conn.transport.backend}) is still open "
        f"({conn.phase.value}); opened at {places or 'an unknown place'}; close() it (or abort())"
    )


def _take(*, fds: bool) -> Tuple[List[threading.Thread], _Resources, _Counts]:
    """One look at the process: its threads in ``threading``'s order, its resources, its counts."""
    # OS threads first: a thread that ends in between is then at worst listed by the OS and
    # missing from threading, which the wait re-checks, never the other way round.
    os_ids = _os_thread_ids()
    alive = threading.enumerate()
    connections = frozenset(conn.connection_id for conn in _registry.live())
    resources = _Resources(frozenset(alive), os_ids or frozenset(), open_fds() if fds else {}, connections)
    # len(threading.enumerate()) is threading.active_count(), taken from the same look.
    counts = _Counts(len(alive), None if os_ids is None else len(os_ids), rss_kib())
    return alive, resources, counts


class LeakCheck:
    """Context manager and decorator that fails when threads, fds or memory outlive the block.

    ``timeout`` (a finite number of seconds >= 0) bounds the wait for threads and fds to go
    away. ``ignore_threads`` are regular expressions, in a list even if there is one only,
    matched against thread names (for an OS-level thread not started through
    ``threading``, against its OS name). ``ignore_fds`` are regular expressions matched against
    what a descriptor points to (``pipe:[...]``, ``socket:[...]``, a path). ``check_fds=False``
    skips descriptors. ``check_os_threads=False`` skips OS-level threads that ``threading`` does
    not know. ``max_rss_growth_kib`` fails the check when the resident set grew by more than that
    many KiB (None: growth is recorded, not limited). ``collect=True`` runs the garbage collector
    before comparing, so objects that close their fd in ``__del__`` get the chance (and warn)
    inside the block. ``label`` names the checked block in the failure message.

    A duplexthreads connection opened in the block and not closed is a leak too: it lives until
    it is closed, whether or not anything references it. The report names each one and the
    place in the application's code that opened it (``leaked_connections``).

    Whatever :meth:`verify` finds is kept on the object (``leaked_threads``, ``leaked_os_threads``,
    ``leaked_fds``, ``leaked_connections``, ``rss_growth_kib`` and the counts before and after),
    also when it does not raise. Where ``/proc`` is absent only ``threading``'s threads are checked.
    """

    def __init__(
        self,
        timeout: float = 2.0,
        *,
        ignore_threads: Iterable[str] = (),
        ignore_fds: Iterable[str] = (),
        check_fds: bool = True,
        check_os_threads: bool = True,
        max_rss_growth_kib: Optional[float] = None,
        collect: bool = True,
        label: Optional[str] = None,
    ) -> None:
        self.timeout = timeout
        self.ignore_threads: List[Pattern[str]] = _patterns("ignore_threads", ignore_threads)
        self.ignore_fds: List[Pattern[str]] = _patterns("ignore_fds", ignore_fds)
        self.check_fds = check_bool("check_fds", check_fds)
        self.check_os_threads = check_bool("check_os_threads", check_os_threads)
        self.max_rss_growth_kib = max_rss_growth_kib
        self.collect = check_bool("collect", collect)
        if label is not None and not isinstance(label, str):
            raise TypeError(f"label must be a str or None, not {label!r} ({type(label).__name__})")
        self.label = label
        self._reset()
        # Set by start(): what the process held then. The pytest plugin adjusts it for fixtures
        # wider than a test, whose resources belong to the fixture rather than to the test.
        self._baseline: Optional[_Resources] = None

    def _reset(self) -> None:
        #: Seconds the process took to return to the snapshot (set on a clean verify only).
        self.quiesce_seconds: Optional[float] = None
        self.leaked_threads: Tuple[threading.Thread, ...] = ()
        #: OS-level threads that ``threading`` does not know: thread id -> OS thread name.
        self.leaked_os_threads: Dict[int, str] = {}
        self.leaked_fds: Dict[int, str] = {}
        #: KiB the resident set grew between start and verify; None before verify or without /proc.
        self.rss_growth_kib: Optional[int] = None
        #: duplexthreads connections opened in the block and still open: one line each, saying
        #: where the application opened it (their threads and sockets are among the leaks).
        self.leaked_connections: Tuple[str, ...] = ()
        self._before: Optional[_Counts] = None
        self._after: Optional[_Counts] = None

    # -- the limits, checked when set (the pytest plugin's leak_check fixture is tightened live) --

    @property
    def timeout(self) -> float:
        """Seconds :meth:`verify` waits for the process to give back what the block took."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._timeout = check_seconds("timeout", value, zero=True, limit=None)

    @property
    def max_rss_growth_kib(self) -> Optional[float]:
        """The most the resident set may grow, in KiB; None: growth is recorded, not limited."""
        return self._max_rss_growth_kib

    @max_rss_growth_kib.setter
    def max_rss_growth_kib(self, value: Optional[float]) -> None:
        if value is not None:
            if not is_number(value):
                raise TypeError(
                    f"max_rss_growth_kib must be a number of KiB or None, not {value!r} ({type(value).__name__})"
                )
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"max_rss_growth_kib must be a finite number of KiB >= 0, or None, not {value!r}")
        self._max_rss_growth_kib = value

    # -- the counts a report shows, as plain attributes ----------------------------------------

    @property
    def active_count_before(self) -> Optional[int]:
        """``threading.active_count()`` at start (None before start)."""
        return None if self._before is None else self._before.active_count

    @property
    def active_count_after(self) -> Optional[int]:
        """``threading.active_count()`` when verify finished (None before verify)."""
        return None if self._after is None else self._after.active_count

    @property
    def os_thread_count_before(self) -> Optional[int]:
        """OS-level threads of the process at start (None without /proc)."""
        return None if self._before is None else self._before.os_thread_count

    @property
    def os_thread_count_after(self) -> Optional[int]:
        """OS-level threads of the process when verify finished (None without /proc)."""
        return None if self._after is None else self._after.os_thread_count

    # -- use ---------------------------------------------------------------------------------

    def start(self) -> LeakCheck:
        """Take the snapshot that :meth:`verify` compares against; ``with`` calls it for you."""
        self._reset()
        _, self._baseline, self._before = _take(fds=self.check_fds)
        return self

    def __enter__(self) -> LeakCheck:
        return self.start()

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.verify(raise_error=exc_type is None)

    def __call__(self, func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._copy(label=self.label or func.__qualname__):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def _copy(self, *, label: Optional[str]) -> LeakCheck:
        return LeakCheck(
            self.timeout,
            ignore_threads=[p.pattern for p in self.ignore_threads],
            ignore_fds=[p.pattern for p in self.ignore_fds],
            check_fds=self.check_fds,
            check_os_threads=self.check_os_threads,
            max_rss_growth_kib=self.max_rss_growth_kib,
            collect=self.collect,
            label=label,
        )

    def verify(self, raise_error: bool = True) -> bool:
        """Wait for the process to give back what the block took; True if it did.

        Otherwise raise :class:`LeakError` (or, with ``raise_error=False``, return False); the
        findings are on the object either way.
        """
        if self._baseline is None:
            raise RuntimeError("LeakCheck.verify() before start(): use `with LeakCheck():` or call start()")
        started = time.monotonic()
        deadline = started + self.timeout
        if self.collect:
            gc.collect()
        while True:
            self._look()
            clean = not (
                self.leaked_threads
                or self.leaked_os_threads
                or self.leaked_fds
                or self.leaked_connections
                or self._rss_exceeded()
            )
            remaining = deadline - time.monotonic()
            if clean or remaining <= 0:
                break
            if self.leaked_threads:
                # Returns as soon as that thread ends: waiting on the event we care about.
                self.leaked_threads[0].join(min(remaining, _JOIN_SLICE))
            else:
                # Descriptors, OS threads and memory have no event to wait on: a short, bounded poll.
                if self.collect:
                    gc.collect()
                time.sleep(min(remaining, _POLL_INTERVAL))
        if clean:
            self.quiesce_seconds = time.monotonic() - started
        elif raise_error:
            raise self.error()
        return clean

    def error(self) -> LeakError:
        """The :class:`LeakError` describing what the last :meth:`verify` found."""
        return LeakError(
            self._describe(),
            self.leaked_threads,
            self.leaked_fds,
            os_threads=self.leaked_os_threads,
            rss_growth_kib=self.rss_growth_kib,
        )

    # -- the plugin's adjustments for fixtures wider than a test --------------------------------

    def _allow(self, resources: _Resources) -> None:
        """Count these as held before the block (a wider fixture set them up inside it)."""
        assert self._baseline is not None, "start() first"
        self._baseline = self._baseline.plus(resources)

    def _expect_gone(self, resources: _Resources) -> None:
        """Require these to be gone at verify even if they were held at start."""
        assert self._baseline is not None, "start() first"
        self._baseline = self._baseline.minus(resources)

    # -- internals ---------------------------------------------------------------------------

    def _look(self) -> None:
        assert self._baseline is not None
        alive, now, self._after = _take(fds=self.check_fds)
        added = now.minus(self._baseline)
        self.leaked_threads = tuple(
            thread
            for thread in alive
            if thread in added.threads and thread.is_alive() and not self._ignored(thread.name)
        )
        self.leaked_os_threads = {}
        if self.check_os_threads:
            known = {thread.native_id for thread in alive}
            for tid in sorted(added.os_thread_ids - known):
                name = _os_thread_name(tid)
                if not self._ignored(name):
                    self.leaked_os_threads[tid] = name
        self.leaked_fds = {
            fd: target
            for fd, target in sorted(added.fds.items())
            if not any(pattern.search(target) for pattern in self.ignore_fds)
        }
        assert self._before is not None
        if self._before.rss_kib is None or self._after.rss_kib is None:
            self.rss_growth_kib = None
        else:
            self.rss_growth_kib = self._after.rss_kib - self._before.rss_kib
        self.leaked_connections = tuple(
            _describe_connection(conn) for conn in _registry.live() if conn.connection_id in added.connections
        )

    def _ignored(self, name: str) -> bool:
        return any(pattern.search(name) for pattern in self.ignore_threads)

    def _rss_exceeded(self) -> bool:
        limit = self.max_rss_growth_kib
        return limit is not None and self.rss_growth_kib is not None and self.rss_growth_kib > limit

    def _describe(self) -> str:
        where = f" in {self.label}" if self.label else ""
        found = [
            f"{count} {what}"
            for count, what in [
                (len(self.leaked_threads), "thread(s)"),
                (len(self.leaked_os_threads), "OS-level thread(s) outside threading"),
                (len(self.leaked_fds), "file descriptor(s)"),
                (len(self.leaked_connections), "open duplexthreads connection(s)"),
            ]
            if count
        ]
        if self._rss_exceeded():
            found.append(f"RSS grew {self.rss_growth_kib} KiB (limit {self.max_rss_growth_kib} KiB)")
        lines = [f"leak{where} after {self.timeout:g} s: " + (", ".join(found) or "nothing left")]
        lines.append(self._counts_line())
        lines.extend(self.leaked_connections)
        frames = sys._current_frames()
        for thread in self.leaked_threads:
            lines.append(f"thread {thread.name!r} (daemon={thread.daemon}) still alive at:")
            frame = frames.get(thread.ident or -1)
            if frame is not None:
                stack = "".join(traceback.format_stack(frame)[-6:])
                lines.extend("    " + line for line in stack.splitlines())
        for tid, name in self.leaked_os_threads.items():
            lines.append(f"OS thread {tid} {name!r} still alive, not started through threading (a C extension's?)")
        for fd, target in self.leaked_fds.items():
            lines.append(f"fd {fd} -> {target}")
        return "\n".join(lines)

    def _counts_line(self) -> str:
        before, after = self._before, self._after
        assert before is not None and after is not None

        def pair(first: Optional[int], last: Optional[int], unit: str = "") -> str:
            if first is None or last is None:
                return "unknown (no /proc)"
            return f"{first}{unit} before, {last}{unit} after"

        return (
            f"threading.active_count(): {pair(before.active_count, after.active_count)}; "
            f"OS threads: {pair(before.os_thread_count, after.os_thread_count)}; "
            f"RSS: {pair(before.rss_kib, after.rss_kib, ' KiB')}"
        )
