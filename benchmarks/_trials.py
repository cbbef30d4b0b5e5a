"""Running and reporting: bounded rounds, trials side by side, percentiles, table cells.

- Bounded execution. :func:`run_bounded` runs one round in a thread of its own and, when the
  round overruns, kills its connection (:class:`Watch`) so that any blocked call wakes up.
  :class:`Deadline` is a section's cap; :class:`Phase` spends one cap across many rounds and
  records what went wrong.
- Trials side by side. :func:`run_batch` opens trials one at a time, fires them together,
  times each until it is done, and kills what the cap cuts.
- Figures: nearest-rank percentiles, distributions, table cells, notes.
- A section on its own: :func:`measure_checked` runs a section's ``measure`` under a leak check
  (``duplexthreads.testing.LeakCheck``); :func:`run_standalone` is ``python -m benchmarks.<name>``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Generic, List, Optional, Protocol, Sequence, Tuple, TypeVar

from ._clients import join_all
from ._metrics import Metric, leftover_metrics
from ._resources import SectionCheck, load_average

T = TypeVar("T")

#: How long a killed round or trial gets to notice before it is declared stuck.
KILL_GRACE = 5.0


class OutOfTime(Exception):
    """A round did not finish within its phase's time cap and was killed."""


class Stuck(Exception):
    """A round did not end even after its connection was killed (its thread is left)."""


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

    thread = threading.Thread(target=target, name="bench-round", daemon=True)
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


class Deadline:
    """A wall-time cap, spent across the steps of a section."""

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


@dataclass
class Phase(Generic[T]):
    """One benchmark phase: a time cap shared by its rounds, and what went wrong in them."""

    name: str
    cap: float
    complete: bool = True
    stuck: bool = False
    notes: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.deadline = Deadline(self.cap)

    def run(self, label: str, work: Callable[[Watch], T]) -> Optional[T]:
        """Run one round; ``None`` if it failed or the phase is over (noted either way)."""
        if not self.complete:
            return None
        try:
            if self.deadline.remaining() <= 0:
                raise OutOfTime("no time left")
            return run_bounded(work, self.deadline.remaining())
        except (OutOfTime, Stuck) as exc:
            self.complete = False
            self.stuck = isinstance(exc, Stuck)
            self.notes.append(f"{label}: {exc} (phase cap {self.cap:g} s); phase stopped")
        except Exception as exc:  # noqa: BLE001 - a failed round is reported, the others go on
            self.notes.append(f"{label}: {exc!r}")
        return None

    def summary(self) -> Dict[str, Any]:
        return {"complete": self.complete, "stuck": self.stuck, "cap_seconds": self.cap, "notes": self.notes}


def rotated(items: Sequence[T], by: int) -> List[T]:
    """``items`` rotated left by ``by``: interleaved rounds start with a different one each time."""
    by %= len(items)
    return [*items[by:], *items[:by]]


# -- trials side by side --------------------------------------------------------------------------


class Trial(Protocol):
    """One connection's trial: opened untimed, then timed from ``go()`` until it returns."""

    def open(self) -> None: ...
    def go(self) -> None: ...
    def kill(self) -> None: ...
    def threads(self) -> List[threading.Thread]: ...


@dataclass
class Timing:
    """How a trial went: its time, or why it has none."""

    seconds: Optional[float] = None
    error: Optional[str] = None
    #: Cut at the cap; the threads still alive then.
    capped: bool = False
    alive_at_cap: List[str] = field(default_factory=list)


def run_batch(trials: Sequence[Trial], cap: float, open_timeout: float) -> List[Timing]:
    """Open the trials one at a time (the scripted peer hands out connections in order), fire
    them together, time each in a thread of its own; kill what is not done after ``cap``."""
    go = threading.Event()
    opened = [threading.Event() for _ in trials]
    timings = [Timing() for _ in trials]
    open_lock = threading.Lock()  # one open at a time
    cancelled = threading.Event()  # opening took too long: no trial may start
    # A trial cut at the cap may still end later, in its own thread: its time must not count.
    timing_lock = threading.Lock()

    def run(index: int, trial: Trial) -> None:
        timing = timings[index]
        try:
            with open_lock:
                if cancelled.is_set():
                    timing.error = "opening the connections took too long"
                    return
                trial.open()
        except BaseException as exc:  # noqa: BLE001 - carried to the supervising thread
            timing.error = repr(exc)
            return
        finally:
            opened[index].set()
        go.wait(open_timeout * len(trials) + 1.0)
        if cancelled.is_set() or not go.is_set():
            timing.error = "not started: opening the other connections took too long"
            trial.kill()
            return
        started = time.perf_counter()
        try:
            trial.go()
        except BaseException as exc:  # noqa: BLE001 - carried to the supervising thread
            with timing_lock:
                if not timing.capped:  # what a killed trial raises is the kill's doing
                    timing.error = repr(exc)
        else:
            seconds = time.perf_counter() - started
            with timing_lock:
                if not timing.capped:
                    timing.seconds = seconds

    runners = [
        threading.Thread(target=run, args=(index, trial), name="bench-trial", daemon=True)
        for index, trial in enumerate(trials)
    ]
    for runner in runners:
        runner.start()
    open_deadline = time.monotonic() + open_timeout * len(trials)
    if not all(event.wait(max(0.0, open_deadline - time.monotonic())) for event in opened):
        cancelled.set()
    go.set()
    join_all(runners, time.monotonic() + cap)
    for trial, runner, timing in zip(trials, runners, timings):
        with timing_lock:
            timing.capped = runner.is_alive()
        if timing.capped:
            timing.alive_at_cap = [thread.name for thread in trial.threads() if thread.is_alive()]
            trial.kill()
    grace_end = time.monotonic() + KILL_GRACE
    join_all(runners, grace_end)
    for trial, runner, timing in zip(trials, runners, timings):
        if any(thread.is_alive() for thread in trial.threads()):
            trial.kill()  # a trial that failed half-way: its error is recorded
        join_all(trial.threads(), grace_end)
        if runner.is_alive():
            timing.error = "the trial's thread was still running after its connection was killed"
    return timings


# -- figures ----------------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(len(ordered) * fraction - 1e-9))
    return ordered[rank - 1]


def distribution(values: Sequence[float]) -> Dict[str, Any]:
    """n, p50, p90, p99 and max (nearest rank) of ``values``, in their unit; None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    stats = {f"p{round(q * 100)}": percentile(ordered, q) for q in (0.50, 0.90, 0.99)}
    return {"n": len(ordered), **stats, "max": ordered[-1]}


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    return numerator / denominator if numerator is not None and denominator else None


def fmt(value: Optional[float], spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def notes_lines(result: Dict[str, Any], limit: int = 10) -> List[str]:
    """Lines saying a phase or section is incomplete, and its notes (none when all went well)."""
    lines = [] if result.get("complete", True) else ["INCOMPLETE"]
    notes = result.get("notes", [])
    lines += [f"  note: {note}" for note in notes[:limit]]
    if len(notes) > limit:
        lines.append(f"  ... and {len(notes) - limit} more notes")
    return lines


# -- a section, checked -------------------------------------------------------------------------------


def measure_checked(measure: Callable[[bool, float], Dict[str, Any]], quick: bool, cap: float) -> Dict[str, Any]:
    """The section's result, with ``leftover``: what it left behind (threads, fds, RSS growth)."""
    check = SectionCheck()
    result = measure(quick, cap)
    result["leftover"] = check.result()
    return result


def leftover_line(result: Dict[str, Any]) -> str:
    left = result.get("leftover") or {}
    threads, fds = left.get("threads") or "none", left.get("fds") or "none"
    return f"left behind by the section: threads {threads}, fds {fds}"


def run_standalone(
    name: str,
    measure: Callable[[bool, float], Dict[str, Any]],
    format_table: Callable[[Dict[str, Any]], str],
    metrics: Callable[[Dict[str, Any]], List[Metric]],
    caps: Tuple[float, float],
    argv: Optional[Sequence[str]] = None,
) -> int:
    """``python -m benchmarks.<name> [--quick] [--cap S] [--json PATH] [--metrics]``.

    ``caps`` is (full, quick) seconds. Exits 1 if the section left anything behind or a leak
    metric is above zero.
    """
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, trials and cycles")
    parser.add_argument("--cap", type=float, help=f"wall-time cap in seconds (default {caps[0]:g}, quick {caps[1]:g})")
    parser.add_argument("--json", metavar="PATH", help="also write the result to PATH as JSON")
    parser.add_argument("--metrics", action="store_true", help="also print the metrics --check compares")
    args = parser.parse_args(argv)
    cap = args.cap if args.cap is not None else caps[1 if args.quick else 0]
    load_start = load_average()
    result = measure_checked(measure, args.quick, cap)
    print(format_table(result))
    print(leftover_line(result))
    print(f"load average at start {load_start}, at end {load_average()}")
    found = metrics(result) + leftover_metrics(name, result)
    if args.metrics:
        for metric in found:
            leak = ", leak" if metric.leak else ""
            print(f"  {metric.name} = {metric.value:g} {metric.unit} ({metric.better} is better{leak})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"result written to {args.json}", file=sys.stderr)
    return 1 if any(metric.leak and metric.value > 0 for metric in found) else 0
