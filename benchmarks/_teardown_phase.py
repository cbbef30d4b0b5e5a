"""Teardown latency of duplexthreads, the phase ``throughput.py`` has always ended with.

Both backends, trials interleaved over three triggers: ``abort()`` (time of the call, which
returns what ``wait()`` returns); the peer's close (the server reads ``time.monotonic_ns()``
just before its ``close()`` call and sends it as the close reason; the monotonic clock is
system-wide, so the wall time runs from there to the client's ``wait()`` returning);
``close()`` against the responsive server (time of the call). ``report.teardown_seconds``
(first exit cause to transport closed) is given as well. Afterwards: threads still alive named
``duplexthreads-*`` (must be 0) and the change in open file descriptors, immediately and after
a garbage collection.

The ``teardown_paths`` section measures more paths against more peers; ``python -m benchmarks``
runs this phase only while that section is not available. ``python benchmarks/throughput.py``
always runs it.
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, List, Optional

import duplexthreads
from duplexthreads import ExitReport, Reason

from ._harness import IO_TIMEOUT, BenchError, PeerServer, Phase, Watch, distribution, fd_count, milli, phase_notes

BACKENDS = ("websocket-client", "simple-websocket")
ABORT = "abort()"
PEER_CLOSE = "peer close"
LOCAL_CLOSE = "close()"
TEARDOWN_MODES = (ABORT, PEER_CLOSE, LOCAL_CLOSE)


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


def teardown_phase(server: PeerServer, trials: int, cap: float) -> Dict[str, Any]:
    phase: Phase[TeardownSample] = Phase("teardown", cap)
    samples: Dict[str, Dict[str, List[TeardownSample]]] = {b: {m: [] for m in TEARDOWN_MODES} for b in BACKENDS}
    gc.collect()
    fds_before = fd_count()
    for trial in range(trials):
        for backend in BACKENDS:
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
                # Every sample, for plot.py's distributions.
                "samples_ms": [round(s.wall * 1e3, 4) for s in values],
            }
    return {
        "trials": trials,
        "backends": results,
        "duplexthreads_threads_alive_after": len(threads_left),
        "duplexthreads_thread_names_alive_after": threads_left[:20],
        "fd_delta": fds_after - fds_before,
        "fd_delta_after_gc": fds_after_gc - fds_before,
        **phase.summary(),
    }


def format_teardown(result: Dict[str, Any]) -> str:
    lines = [
        f"Teardown of duplexthreads, {result['trials']} trials per backend and trigger (ms)",
        f"{'backend':17} {'trigger':11} {'trigger -> wait() returns':>27}   {'report.teardown_seconds':>25}"
        f" {'unexpected':>10}",
        f"{'':29} {'p50':>8} {'p99':>8} {'max':>9}   {'p50':>7} {'p99':>8} {'max':>8}",
    ]
    for backend, modes in result["backends"].items():
        for mode, entry in modes.items():
            wall, own = entry["trigger_to_wait_seconds"], entry["report_teardown_seconds"]
            lines.append(
                f"{backend:17} {mode:11} {milli(wall['p50']):>8} {milli(wall['p99']):>8} {milli(wall['max']):>9}"
                f"   {milli(own['p50']):>7} {milli(own['p99']):>8} {milli(own['max']):>8}"
                f" {entry['unexpected_reports']:>10}"
            )
            lines += [f"    unexpected: {example}" for example in entry["unexpected_examples"]]
    lines += [
        "(peer close: from the server's close() call, read on its monotonic clock, to wait() returning)",
        f"threads named duplexthreads-* alive afterwards: {result['duplexthreads_threads_alive_after']}",
        f"open fds, after minus before: {result['fd_delta']:+d} (after gc.collect(): {result['fd_delta_after_gc']:+d})",
        *phase_notes(result),
    ]
    return "\n".join(lines)
