"""Running trials: each in a thread of its own, side by side if asked, cut at a cap.

A trial opens one connection (``_subjects.Handle``), prepares the path, and then, timed, fires
the trigger and waits until every thread of the connection has exited. The supervising thread
joins the trial with a cap; past it, the connection is killed (``Handle.kill``: the client's socket
shut down, which wakes every blocked call, and the peer's side closed), and the trial is recorded
as not finished, with the threads still alive then. Trials get ``KILL_GRACE`` more to end.
Trials of one batch are opened one at a time (the scripted peer matches connections in order)
and triggered together.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from ._faults import IO_TIMEOUT, join_all
from ._subjects import Handle

#: How long a trial gets to end once its connection was killed at the cap.
KILL_GRACE = 5.0


@dataclass
class Trial:
    """One connection's trial, run in a thread of its own (see the module docstring)."""

    subject: str
    make: Callable[[], Handle]
    path: str
    #: Connections are opened one at a time: the peer server matches them in order.
    open_lock: threading.Lock
    #: Set by the supervisor once every trial of the batch is open: the triggers may go.
    go: threading.Event
    opened: threading.Event = field(default_factory=threading.Event)
    #: Set by the supervisor when opening took too long: the trial must not start.
    cancelled: bool = False
    handle: Optional[Handle] = None
    seconds: Optional[float] = None
    error: Optional[BaseException] = None
    unexpected: Optional[str] = None

    def run(self, go_timeout: float, finish_timeout: float) -> None:
        try:
            with self.open_lock:
                if self.cancelled:
                    return
                self.handle = self.make()
            self.handle.prepare(self.path)
        except BaseException as exc:  # noqa: BLE001 - carried to the supervising thread
            self.error = exc
            return
        finally:
            self.opened.set()
        handle = self.handle
        self.go.wait(go_timeout)
        if self.cancelled or not self.go.is_set():
            handle.kill()
            return
        started = time.perf_counter()
        try:
            handle.trigger(self.path)
            handle.finish(finish_timeout)
            self.seconds = time.perf_counter() - started
            self.unexpected = handle.unexpected(self.path)
        except BaseException as exc:  # noqa: BLE001 - carried to the supervising thread
            self.error = exc


@dataclass
class Outcome:
    """What a trial leaves for the tables: no reference to the connection itself."""

    subject: str
    #: Trigger to every thread exited; None when it did not finish within the cap or failed.
    ms: Optional[float]
    teardown_ms: Optional[float] = None
    unexpected: Optional[str] = None
    error: Optional[str] = None
    capped: bool = False
    alive_at_cap: List[str] = field(default_factory=list)
    threads: List[threading.Thread] = field(default_factory=list)
    sock_ref: Any = None


def run_batch(subjects: Sequence[str], makes: Sequence[Callable[[], Handle]], path: str, cap: float) -> List[Outcome]:
    """Run trials side by side (one, for a sequential trial); kill what is not done after ``cap``."""
    open_lock = threading.Lock()
    go = threading.Event()
    trials = [Trial(subject, make, path, open_lock, go) for subject, make in zip(subjects, makes)]
    open_seconds = 2 * IO_TIMEOUT * len(trials)
    runners = [
        threading.Thread(target=trial.run, args=(open_seconds + 1.0, cap + KILL_GRACE), name="bench-trial", daemon=True)
        for trial in trials
    ]
    for runner in runners:
        runner.start()
    open_deadline = time.monotonic() + open_seconds
    for trial in trials:
        if not trial.opened.wait(max(0.0, open_deadline - time.monotonic())):
            trial.cancelled = True
    go.set()
    join_all(runners, time.monotonic() + cap)
    capped: Dict[int, List[str]] = {}
    for index, (trial, runner) in enumerate(zip(trials, runners)):
        if runner.is_alive() and trial.handle is not None:
            capped[index] = [thread.name for thread in trial.handle.threads if thread.is_alive()]
            trial.handle.kill()
    grace_end = time.monotonic() + KILL_GRACE
    join_all(runners, grace_end)
    for trial in trials:
        handle = trial.handle
        if handle is not None and any(thread.is_alive() for thread in handle.threads):
            handle.kill()  # a trial that failed half-way: its error is recorded below
    outcomes = []
    for index, (trial, runner) in enumerate(zip(trials, runners)):
        handle = trial.handle
        if handle is not None:
            join_all(handle.threads, grace_end)
            if handle.peer is not None:
                handle.peer.stop()
        error = trial.error
        if runner.is_alive():
            error = RuntimeError("the trial's thread was still running after its connection was killed")
        elif trial.cancelled and handle is None:
            error = RuntimeError("opening the connection took too long")
        report = getattr(handle, "report", None)
        outcomes.append(
            Outcome(
                subject=trial.subject,
                ms=None if index in capped or trial.seconds is None else trial.seconds * 1e3,
                teardown_ms=None if report is None else report.teardown_seconds * 1e3,
                unexpected=trial.unexpected,
                error=None if error is None or index in capped else repr(error),
                capped=index in capped,
                alive_at_cap=capped.get(index, []),
                threads=[] if handle is None else handle.threads,
                sock_ref=None if handle is None else handle.sock_ref,
            )
        )
    return outcomes
