"""Leak checks for test suites: prove that connections leave no thread and no file behind.

``LeakCheck`` snapshots the process's threads (by identity, daemon threads included) and open
file descriptors (with what they point to: sockets, pipes, files). On exit it waits, against a
deadline, for the process to return to the snapshot, and raises :class:`LeakError` naming each
leaked thread with its current stack and each leaked descriptor with its target::

    from duplexthreads.testing import LeakCheck

    with LeakCheck(timeout=2.0) as check:
        run_my_client()
    print(check.quiesce_seconds)

    @LeakCheck(ignore_threads=[r"^pydevd"])
    def test_something(): ...

The wait re-checks whenever a thread ends (it joins the leftover threads with short bounded
joins) instead of sleeping a fixed time, so a clean run returns as soon as it is clean.
"""

from __future__ import annotations

import functools
import gc
import os
import re
import sys
import threading
import time
import traceback
from types import TracebackType
from typing import Any, Callable, Dict, Iterable, List, Optional, Pattern, Sequence, Set, Type, TypeVar

__all__ = ["LeakCheck", "LeakError", "open_fds"]

F = TypeVar("F", bound=Callable[..., Any])

_FD_DIR = "/proc/self/fd"


class LeakError(AssertionError):
    """Threads or file descriptors outlived the checked block."""

    def __init__(self, message: str, threads: Sequence[threading.Thread], fds: Dict[int, str]) -> None:
        super().__init__(message)
        self.threads = tuple(threads)
        self.fds = dict(fds)


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


class LeakCheck:
    """Context manager and decorator that fails when threads or fds outlive the block.

    ``timeout`` bounds the wait for threads and fds to go away. ``ignore_threads`` are regular
    expressions matched against thread names. ``check_fds=False`` skips descriptors (for
    platforms without ``/proc``). ``collect=True`` runs the garbage collector before comparing,
    so objects that close their fd in ``__del__`` get the chance (and warn) inside the block.
    """

    def __init__(
        self,
        timeout: float = 2.0,
        *,
        ignore_threads: Iterable[str] = (),
        check_fds: bool = True,
        collect: bool = True,
    ) -> None:
        if timeout < 0:
            raise ValueError("timeout must be >= 0")
        self.timeout = timeout
        self.ignore_threads: List[Pattern[str]] = [re.compile(pattern) for pattern in ignore_threads]
        self.check_fds = check_fds
        self.collect = collect
        #: Seconds the process took to return to the snapshot (set on a clean exit).
        self.quiesce_seconds: Optional[float] = None
        self._threads_before: Set[threading.Thread] = set()
        self._fds_before: Dict[int, str] = {}

    def __enter__(self) -> LeakCheck:
        self._threads_before = set(threading.enumerate())
        self._fds_before = open_fds() if self.check_fds else {}
        self.quiesce_seconds = None
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.verify(raise_error=exc_type is None)

    def __call__(self, func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with LeakCheck(
                self.timeout,
                ignore_threads=[p.pattern for p in self.ignore_threads],
                check_fds=self.check_fds,
                collect=self.collect,
            ):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def verify(self, raise_error: bool = True) -> None:
        """Wait for the process to return to the snapshot; raise :class:`LeakError` if it does not."""
        started = time.monotonic()
        deadline = started + self.timeout
        if self.collect:
            gc.collect()
        while True:
            threads = self._new_threads()
            fds = self._new_fds()
            if not threads and not fds:
                self.quiesce_seconds = time.monotonic() - started
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if threads:
                # Returns as soon as that thread ends: waiting on the event we care about.
                threads[0].join(min(remaining, 0.05))
            else:
                # Descriptors have no event to wait on; re-check at a short, bounded interval.
                if self.collect:
                    gc.collect()
                time.sleep(min(remaining, 0.005))
        if raise_error:
            raise LeakError(self._describe(threads, fds), threads, fds)

    def _new_threads(self) -> List[threading.Thread]:
        return [
            thread
            for thread in threading.enumerate()
            if thread not in self._threads_before
            and thread.is_alive()
            and not any(pattern.search(thread.name) for pattern in self.ignore_threads)
        ]

    def _new_fds(self) -> Dict[int, str]:
        if not self.check_fds:
            return {}
        now = open_fds()
        return {fd: target for fd, target in now.items() if self._fds_before.get(fd) != target}

    def _describe(self, threads: Sequence[threading.Thread], fds: Dict[int, str]) -> str:
        lines = [f"leak after {self.timeout} s: {len(threads)} thread(s), {len(fds)} file descriptor(s)"]
        frames = sys._current_frames()
        for thread in threads:
            lines.append(f"thread {thread.name!r} (daemon={thread.daemon}) still alive at:")
            frame = frames.get(thread.ident or -1)
            if frame is not None:
                lines.extend("    " + line.rstrip() for line in traceback.format_stack(frame)[-6:])
        for fd, target in sorted(fds.items()):
            lines.append(f"fd {fd} -> {target}")
        return "\n".join(lines)
