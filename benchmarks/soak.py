"""Leak soak: thousands of connect / traffic / fault / teardown cycles, every one accounted for.

``python -m benchmarks.soak [--quick]`` prints the table; the runner calls ``measure``. The
random faults come from ``random.Random(seed)``; the seed is printed and recorded, and
``DUPLEXTHREADS_SOAK_SEED=<seed>`` replays the same sequence of faults and message counts
(thread timing still varies from run to run).

Method
------
Two kinds of cycle, each checked on its own:

(a) memory: ``duplexthreads.transports.memory_pair()``, a ``Duplex`` on one end and a peer thread
    reading the other (answering close frames), 5,000 cycles (quick 500). Faults: the peer
    resets, sends FIN, or sends a close frame; our end's writes fail after a random number of
    messages, or its next read fails; the peer stops reading and we close (close_timeout 50 ms);
    ``abort()``; ``close()``; the ``on_message`` callback raises.
(b) loopback: ``duplexthreads.connect`` over each backend, alternating, against
    ``duplexthreads.testing.ScriptedPeer`` in a child process (``isolated=True``: its threads,
    sockets and memory are not counted with ours), 1,000 cycles per backend (quick 100).
    Faults: the peer resets (RST), sends FIN, or sends a close frame; the peer is silent and we
    close (close_timeout 50 ms); a write error (the peer's reader parked, then
    ``shutdown(SHUT_WR)`` on our socket and a send); ``abort()``; ``close()``.

Both kinds use duplexthreads' defaults for the heartbeat (on, 20 s/20 s): no cycle lasts long
enough for a ping (at most 5 s), but the heartbeat thread is one of the threads every cycle's
teardown must end and join, which is what users get.

Each cycle opens a connection, sends 0-20 numbered messages each way, receives some of them,
injects its fault (sometimes sending more just after), and waits for the exit report (at most
5 s). Then it checks: the reason is one the fault allows; message accounting (P4): the messages
``send()`` accepted equal ``sent[:report.written] + report.unsent``, and what the peer received
is a prefix of ``sent[:report.written]``; what we received is a prefix of what the peer sent; a
graceful ``close()`` delivered everything and reported ``ok``; no thread of the connection is
alive after ``wait()`` (P1) and its socket is closed (P2; memory: ``close()`` called exactly
once). Any miss is a failure, recorded with its cycle number and fault.

At the end, against the start of the section: threads named ``duplexthreads-*`` alive,
``threading.active_count()``, open fds, and RSS (VmRSS, after ``gc.collect()``). The RSS
baseline is taken after a warm-up of 50 memory and 10 loopback cycles per backend, also
checked, so that one-time allocations do not count as growth; the last reading is taken before
the scripted peer closes, since closing hands every connection's record to this process.
Cycles stop early, marked incomplete, when ``cap_seconds`` runs out: memory cycles may use 40%
of it, loopback the rest.
"""

from __future__ import annotations

import gc
import os
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ._cycles import LOOPBACK_ALLOWED, MEMORY_ALLOWED, Cycle, loopback_cycle, memory_cycle
from ._metrics import Metric
from ._resources import fd_count, library_threads, rss_kib
from ._servers import fault_peer
from ._trials import Deadline, distribution, fmt, run_standalone

NAME = "soak"

#: RSS growth below this is noise (allocator, caches): the metric never goes under it.
RSS_NOISE_FLOOR_KIB = 4096
SEED_VARIABLE = "DUPLEXTHREADS_SOAK_SEED"
BACKENDS = ("websocket-client", "simple-websocket")


@dataclass(frozen=True)
class Config:
    memory_cycles: int
    loopback_cycles_per_backend: int
    warmup_memory: int = 50
    warmup_loopback_per_backend: int = 10


FULL = Config(memory_cycles=5000, loopback_cycles_per_backend=1000)
QUICK = Config(memory_cycles=500, loopback_cycles_per_backend=100)


# -- the section ----------------------------------------------------------------------------------------


class Tally:
    """Cycles by kind and fault: how many, the reasons seen, the failures."""

    def __init__(self) -> None:
        self.cycles: Counter[Tuple[str, str]] = Counter()
        self.reasons: Dict[Tuple[str, str], Counter[str]] = {}
        self.teardown_ms: Dict[Tuple[str, str], List[float]] = {}
        self.failed: Counter[Tuple[str, str]] = Counter()
        self.failures: List[Dict[str, Any]] = []

    def add(self, number: int, cycle: Cycle) -> None:
        key = (cycle.kind, cycle.fault)
        self.cycles[key] += 1
        reason = "no report" if cycle.report is None else cycle.report.reason.value
        self.reasons.setdefault(key, Counter())[reason] += 1
        if cycle.report is not None:
            self.teardown_ms.setdefault(key, []).append(cycle.report.teardown_seconds * 1e3)
        if cycle.problems:
            self.failed[key] += 1
            if len(self.failures) < 20:
                self.failures.append(
                    {"cycle": number, "kind": cycle.kind, "fault": cycle.fault, "problems": cycle.problems}
                )

    def add_error(self, number: int, kind: str, fault: str, error: BaseException) -> None:
        cycle = Cycle(kind, fault, problems=[f"the cycle raised {error!r}"])
        self.add(number, cycle)

    def rows(self) -> List[Dict[str, Any]]:
        return [
            {
                "kind": kind,
                "fault": fault,
                "cycles": count,
                "failures": self.failed[(kind, fault)],
                "reasons": dict(self.reasons.get((kind, fault), {})),
                "report_teardown_ms": distribution(self.teardown_ms.get((kind, fault), [])),
            }
            for (kind, fault), count in sorted(self.cycles.items())
        ]


def run_cycles(
    tally: Tally,
    rng: random.Random,
    count: int,
    until: float,
    first_number: int,
    kind: Callable[[int], str],
    faults: Sequence[str],
    run: Callable[[str, str], Cycle],
) -> int:
    """Run up to ``count`` cycles while before ``until``; return how many ran."""
    for index in range(count):
        if time.monotonic() >= until:
            return index
        name, fault = kind(index), rng.choice(faults)
        try:
            cycle = run(name, fault)
        except Exception as exc:  # noqa: BLE001 - a cycle that blows up is a failure, recorded
            tally.add_error(first_number + index, name, fault, exc)
            continue
        tally.add(first_number + index, cycle)
    return count


def choose_seed() -> int:
    configured = os.environ.get(SEED_VARIABLE, "").strip()
    return int(configured) if configured else random.SystemRandom().randrange(1, 2**32)


def measure(quick: bool, cap_seconds: float) -> Dict[str, Any]:
    config = QUICK if quick else FULL
    deadline = Deadline(cap_seconds)
    gc.collect()
    fds_start = fd_count()
    seed = choose_seed()
    rng = random.Random(seed)
    tally = Tally()
    active_before = threading.active_count()
    rss_start = rss_kib() or 0
    memory_faults = tuple(MEMORY_ALLOWED)
    loopback_faults = tuple(LOOPBACK_ALLOWED)

    def in_memory(kind: str, fault: str) -> Cycle:
        return memory_cycle(rng, fault)

    def alternate(index: int) -> str:
        return BACKENDS[index % len(BACKENDS)]

    memory_until = deadline.started + 0.4 * deadline.seconds
    end = deadline.at - 1.0
    with fault_peer(isolated=True) as peer:

        def on_loopback(backend: str, fault: str) -> Cycle:
            return loopback_cycle(rng, fault, backend, peer)

        warmup = run_cycles(tally, rng, config.warmup_memory, end, 0, lambda i: "memory", memory_faults, in_memory)
        warmup += run_cycles(
            tally, rng, 2 * config.warmup_loopback_per_backend, end, warmup, alternate, loopback_faults, on_loopback
        )
        gc.collect()
        rss_after_warmup = rss_kib() or 0
        started = time.monotonic()
        memory = run_cycles(
            tally, rng, config.memory_cycles, memory_until, warmup, lambda i: "memory", memory_faults, in_memory
        )
        loopback_planned = 2 * config.loopback_cycles_per_backend
        loopback = run_cycles(
            tally, rng, loopback_planned, end, warmup + memory, alternate, loopback_faults, on_loopback
        )
        cycle_seconds = time.monotonic() - started
        # Before the peer closes: closing, it hands every connection's final record to this
        # process (some 10 KiB each), which is not the client's memory.
        gc.collect()
        rss_end = rss_kib() or 0
    complete = memory == config.memory_cycles and loopback == loopback_planned
    rows = tally.rows()
    return {
        "name": NAME,
        "mode": "quick" if quick else "full",
        "cap_seconds": cap_seconds,
        "complete": complete,
        "seed": seed,
        "config": config.__dict__,
        "cycles": {"warmup": warmup, "memory": memory, "loopback": loopback, "total": warmup + memory + loopback},
        "planned": {"memory": config.memory_cycles, "loopback": loopback_planned},
        "failures": sum(row["failures"] for row in rows),
        "failure_examples": tally.failures,
        "by_fault": rows,
        "duplexthreads_threads_left": len(library_threads()),
        "active_threads_delta": threading.active_count() - active_before,
        "fd_delta": fd_count() - fds_start,
        "rss_kib": {"start": rss_start, "after_warmup": rss_after_warmup, "end": rss_end},
        "rss_growth_kib": rss_end - rss_after_warmup,
        "cycle_seconds": round(cycle_seconds, 2),
        "seconds": round(deadline.elapsed(), 2),
    }


def format_table(result: Dict[str, Any]) -> str:
    cycles = result["cycles"]
    lines = [
        f"Leak soak ({result['mode']}), seed {result['seed']} (replay: {SEED_VARIABLE}={result['seed']})",
        f"cycles: {cycles['memory']} memory of {result['planned']['memory']}, {cycles['loopback']} loopback of"
        f" {result['planned']['loopback']} (both backends, alternating), {cycles['warmup']} warm-up;"
        f" {result['cycle_seconds']:.1f} s",
        f"{'kind':17} {'fault':19} {'cycles':>6} {'failed':>6}  {'report teardown ms p50/p99/max':>30}  reasons seen",
    ]
    for row in result["by_fault"]:
        own = row["report_teardown_ms"]
        teardown = f"{fmt(own['p50'])}/{fmt(own['p99'])}/{fmt(own['max'])}"
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(row["reasons"].items()))
        lines.append(
            f"{row['kind']:17} {row['fault']:19} {row['cycles']:>6} {row['failures']:>6}  {teardown:>30}  {reasons}"
        )
    rss = result["rss_kib"]
    lines += [
        f"failures (accounting, reason, P1/P2): {result['failures']}",
        f"after minus before: duplexthreads-* threads alive {result['duplexthreads_threads_left']},"
        f" threading.active_count() {result['active_threads_delta']:+d}, open fds {result['fd_delta']:+d},"
        f" RSS {result['rss_growth_kib']:+d} KiB after the warm-up ({rss['after_warmup']} -> {rss['end']} KiB;"
        f" {rss['end'] - rss['start']:+d} KiB counting it)",
    ]
    for failure in result["failure_examples"][:5]:
        lines.append(
            f"  failed cycle {failure['cycle']} ({failure['kind']}, {failure['fault']}): {failure['problems']}"
        )
    if not result["complete"]:
        lines.append("INCOMPLETE: the cap ran out before every cycle ran")
    lines.append(f"({result['seconds']:.1f} s)")
    return "\n".join(lines)


def metrics(result: Dict[str, Any]) -> List[Metric]:
    # Growth under the noise floor counts as the floor: a baseline near 0 would make any wobble
    # an infinite regression. Above it, three times the baseline is a regression worth a look.
    rss = max(result["rss_growth_kib"], RSS_NOISE_FLOOR_KIB)
    return [
        Metric(f"{NAME}.failures", result["failures"], "cycles", "lower", leak=True),
        Metric(
            f"{NAME}.duplexthreads_threads_left", result["duplexthreads_threads_left"], "threads", "lower", leak=True
        ),
        Metric(f"{NAME}.active_threads_delta", result["active_threads_delta"], "threads", "lower", leak=True),
        Metric(f"{NAME}.fd_delta", result["fd_delta"], "fds", "lower", leak=True),
        Metric(f"{NAME}.rss_growth_kib", rss, "KiB", "lower", tolerance=2.0),
    ]


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_standalone(NAME, measure, format_table, metrics, (180.0, 30.0), argv)


if __name__ == "__main__":
    sys.exit(main())
