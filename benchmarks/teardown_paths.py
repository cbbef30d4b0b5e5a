"""Teardown latency of every way a connection can end, for duplexthreads and beside it today's clients.

``python -m benchmarks.teardown_paths [--quick]`` prints the table; the runner calls ``measure``.

Method
------
Peer. A scripted wsproto server in this process on 127.0.0.1 (``_faults.PeerServer``): it can
send a close frame, reset (``SO_LINGER`` 0, so RST), send FIN without a close frame
(``shutdown(SHUT_WR)``), and go silent (never answer a close frame). After a completed close
handshake it closes TCP first, as a server should.

Subjects. duplexthreads over websocket-client and over simple-websocket, and, side by side,
websocket-client's ``WebSocket`` and ``WebSocketApp``, ``simple_websocket.Client`` and
websockets' sync client, each with its defaults and the reader thread an application needs
(``_subjects.py`` shows each loop).

Trial. Open a connection; the peer sends a greeting and the client's reader receives it, so the
reader is blocked in its receive. Untimed preparation (stop the peer's reader before a reset; make
the peer silent). Then, timed with ``time.perf_counter``, the trigger: the peer's close frame,
reset or FIN, or the client's ``close()``, ``abort()``, or a write error (``shutdown(SHUT_WR)`` on
the client's own socket, then ``send``: the writer's next write fails with EPIPE while the peer
stays connected). The time runs until every thread of the connection has exited: for
duplexthreads ``wait()`` returning (it joins them all; ``report.teardown_seconds`` is recorded as
well, first exit cause to socket closed), for the peers the join of every thread that appeared
while the connection was opened, and the ``close()`` call's return where there is one. A report
whose reason is not the path's, or a thread alive after ``wait()``, counts as unexpected.

Bounds. Each trial runs in a thread of its own that the benchmark thread joins with a cap:
5 s for duplexthreads (P5 promises a few thread wake-ups; the silent peer's path gets its
``close_timeout`` of 0.2 s more), 20 s (quick: 5 s) for the peers. Past the cap, the client's
socket is shut down, which wakes every blocked call, and the peer closes its side (the only way
to wake a thread whose client closed the socket under it, as ``simple_websocket.Client.close()``
does); the trial counts as "did not finish within cap" with the threads that were still alive.
duplexthreads runs first. Then the silent peer's trials for the peers, seconds of waiting on
timers each, side by side (every peer subject, all trials at once). The other paths of the peers
share what is left of ``cap_seconds``, each path and subject at most 30 s (quick 5 s): some
stall for seconds per trial, so their row may hold fewer trials, said in a note. What
``cap_seconds`` cuts short is noted and the section marked incomplete.

Leftovers. After each path and subject: threads still alive (for duplexthreads, named
``duplexthreads-*``), and open file descriptors (``/proc/self/fd``) minus those before the path,
immediately and after ``gc.collect()`` (websocket-client leaves a socket open after a peer's close
until the object is collected). Any client socket still open after that is closed by the
benchmark and counted. The heartbeat-timeout path is listed but not measured: duplexthreads has
no heartbeat yet.
"""

from __future__ import annotations

import gc
import inspect
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import duplexthreads

from ._faults import (
    Deadline,
    Leftovers,
    PeerServer,
    fd_count,
    fmt,
    library_threads,
    load_average,
    run_standalone,
    section_footer,
    summary_ms,
)
from ._metrics import Metric
from ._subjects import (
    ABORT,
    APP,
    DT_SWS,
    DT_WSC,
    DUPLEX_BACKENDS,
    HEARTBEAT,
    LOCAL_CLOSE,
    PEER_CLOSE,
    PEER_FIN,
    PEER_RESET,
    SILENT_CLOSE,
    SWS,
    WRITE_ERROR,
    WSC,
    WSS,
    opener,
)
from ._trials import Outcome, run_batch

NAME = "teardown_paths"

PATH_LABELS = {
    PEER_CLOSE: "peer close frame",
    PEER_RESET: "peer TCP reset",
    PEER_FIN: "peer FIN, no close frame",
    LOCAL_CLOSE: "local close()",
    ABORT: "abort()",
    WRITE_ERROR: "write error",
    SILENT_CLOSE: "close(), silent peer",
    HEARTBEAT: "heartbeat timeout",
}
DUPLEX_SUBJECTS = (DT_WSC, DT_SWS)
PEER_SUBJECTS = (WSC, APP, SWS, WSS)
DUPLEX_PATHS = (PEER_CLOSE, PEER_RESET, PEER_FIN, LOCAL_CLOSE, ABORT, WRITE_ERROR, SILENT_CLOSE)
PEER_PATHS = (PEER_CLOSE, PEER_RESET, PEER_FIN, LOCAL_CLOSE, SILENT_CLOSE)

#: duplexthreads' close_timeout on the silent peer's path; every trial waits for all of it.
SILENT_CLOSE_TIMEOUT = 0.2
#: duplexthreads' close_timeout elsewhere (the library default): a close the peer answers.
CLOSE_TIMEOUT = 5.0
#: Cap of a duplexthreads trial beyond its close_timeout on the silent path.
DUPLEX_TRIAL_CAP = 5.0
#: Time kept for the side-by-side batch beyond its trials' cap: opening them, then the kill.
SIDE_BY_SIDE_OVERHEAD = 3.0


@dataclass(frozen=True)
class Config:
    trials: int
    duplex_silent_trials: int
    peer_silent_trials: int
    #: Cap of one trial of a peer subject.
    peer_trial_cap: float
    #: Time a peer subject's trials on one path may take in all (the silent path excepted).
    peer_path_budget: float


FULL = Config(trials=300, duplex_silent_trials=20, peer_silent_trials=3, peer_trial_cap=20.0, peer_path_budget=30.0)
QUICK = Config(trials=40, duplex_silent_trials=5, peer_silent_trials=1, peer_trial_cap=5.0, peer_path_budget=5.0)


# -- one path, one subject ----------------------------------------------------------------------------


def fd_deltas(fds_before: int) -> Tuple[int, int]:
    """Open fds minus ``fds_before``: now, and after a garbage collection."""
    now = fd_count() - fds_before
    gc.collect()
    return now, fd_count() - fds_before


def block_entry(
    outcomes: List[Outcome], planned: int, cap: float, fds_left: Tuple[int, int], duplex: bool
) -> Dict[str, Any]:
    """Latency figures and leftovers of a subject's trials on one path (``fds_left``: see fd_deltas)."""
    threads = [thread for outcome in outcomes for thread in outcome.threads]
    left = [thread.name for thread in threads if thread.is_alive()]
    if duplex:
        left = sorted(set(left) | set(library_threads()))
    closed_by_us = 0
    for outcome in outcomes:
        sock = outcome.sock_ref() if outcome.sock_ref is not None else None
        if sock is not None and sock.fileno() != -1:
            sock.close()
            closed_by_us += 1
    samples = [round(o.ms, 4) for o in outcomes if o.ms is not None]
    unexpected = [o.unexpected for o in outcomes if o.unexpected]
    errors = [o.error for o in outcomes if o.error]
    teardown = [o.teardown_ms for o in outcomes if o.teardown_ms is not None and o.ms is not None]
    entry: Dict[str, Any] = {
        "samples_ms": samples,
        **summary_ms(samples),
        "trials_planned": planned,
        "trials_run": len(outcomes),
        "trial_cap_seconds": cap,
        "did_not_finish": sum(o.capped for o in outcomes),
        "threads_alive_at_cap": sum(len(o.alive_at_cap) for o in outcomes),
        "thread_names_alive_at_cap": sorted({name for o in outcomes for name in o.alive_at_cap})[:10],
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "unexpected": len(unexpected),
        "unexpected_examples": sorted(set(unexpected))[:5],
        "threads_left": len(left),
        "thread_names_left": left[:10],
        "fds_left": fds_left[0],
        "fds_left_after_gc": fds_left[1],
        "sockets_closed_by_benchmark": closed_by_us,
    }
    if duplex:
        entry["report_teardown_ms"] = summary_ms(teardown)
    return entry


def run_sequential(
    server: PeerServer, subject: str, path: str, count: int, cap: float, close_timeout: float, until: float
) -> Dict[str, Any]:
    """``count`` trials one after the other, while ``time.monotonic()`` is before ``until``."""
    gc.collect()
    fds_before = fd_count()
    started = time.monotonic()
    make = opener(subject, server, close_timeout)
    outcomes: List[Outcome] = []
    for _ in range(count):
        if time.monotonic() >= until:
            break
        outcomes.extend(run_batch([subject], [make], path, cap))
    entry = block_entry(outcomes, count, cap, fd_deltas(fds_before), subject in DUPLEX_BACKENDS)
    entry["complete"] = len(outcomes) == count
    entry["seconds"] = round(time.monotonic() - started, 2)
    return entry


def run_side_by_side(
    server: PeerServer, subjects: Sequence[str], path: str, count: int, cap: float
) -> Dict[str, Dict[str, Any]]:
    """``count`` trials of every subject at once; fds are counted for the batch as a whole."""
    gc.collect()
    fds_before = fd_count()
    names = [subject for subject in subjects for _ in range(count)]
    outcomes = run_batch(names, [opener(subject, server, CLOSE_TIMEOUT) for subject in names], path, cap)
    fds_left = fd_deltas(fds_before)
    entries = {}
    for subject in subjects:
        mine = [outcome for outcome in outcomes if outcome.subject == subject]
        entry = block_entry(mine, count, cap, fds_left, duplex=False)
        entry["complete"] = True
        entry["side_by_side"] = f"{count} trial(s) of each of {len(subjects)} subjects at once; fds counted for all"
        entries[subject] = entry
    return entries


# -- the section ----------------------------------------------------------------------------------------


def heartbeat_note() -> str:
    options = inspect.signature(duplexthreads.connect).parameters
    if any("heartbeat" in name or "ping" in name for name in options):
        return "not measured: connect() now has a heartbeat option; add this path to the benchmark"
    return "not measured: no heartbeat (duplexthreads has none yet)"


def measure_duplex(server: PeerServer, config: Config, deadline: Deadline, paths: Dict[str, Any]) -> List[str]:
    """Every path for duplexthreads on both backends; first, since its figures are the metrics."""
    notes = []
    for path in DUPLEX_PATHS:
        silent = path == SILENT_CLOSE
        count = config.duplex_silent_trials if silent else config.trials
        close_timeout = SILENT_CLOSE_TIMEOUT if silent else CLOSE_TIMEOUT
        cap = DUPLEX_TRIAL_CAP + (close_timeout if silent else 0.0)
        for subject in DUPLEX_SUBJECTS:
            # A healthy trial takes milliseconds (the silent path its close_timeout); the cap
            # is there for a bug, so trials go on until the section's last second.
            entry = run_sequential(server, subject, path, count, cap, close_timeout, deadline.at - 1.0)
            paths[path][subject] = entry
            if not entry["complete"]:
                notes.append(f"{subject}, {PATH_LABELS[path]}: cap reached after {entry['trials_run']} trials")
    return notes


def measure_peers(server: PeerServer, config: Config, deadline: Deadline, paths: Dict[str, Any]) -> List[str]:
    """The peers: the silent peer's batch (a fixed cost), then path by path, sharing the time left.

    Returns the notes on what the section's cap cut (budget cuts are recorded in each entry and
    are part of the method: some peers stall for seconds per trial).
    """
    notes = []
    # The silent peer's batch: its cap, plus opening the connections and killing them.
    if deadline.allows(config.peer_trial_cap + SIDE_BY_SIDE_OVERHEAD):
        paths[SILENT_CLOSE].update(
            run_side_by_side(server, PEER_SUBJECTS, SILENT_CLOSE, config.peer_silent_trials, config.peer_trial_cap)
        )
    else:
        notes.append("peers, close() against a silent peer: skipped, no time left within the cap")
    blocks = [(path, subject) for path in PEER_PATHS if path != SILENT_CLOSE for subject in PEER_SUBJECTS]
    # A trial may run its whole cap: start none that could then overrun the section's cap.
    latest_start = deadline.at - config.peer_trial_cap - 1.0
    for done, (path, subject) in enumerate(blocks):
        share = (latest_start - time.monotonic()) / (len(blocks) - done)
        if share <= 0:
            notes.append(f"{subject}, {PATH_LABELS[path]}: skipped, no time left within the cap")
            continue
        budget = min(config.peer_path_budget, share)
        until = time.monotonic() + budget
        entry = run_sequential(server, subject, path, config.trials, config.peer_trial_cap, CLOSE_TIMEOUT, until)
        entry["budget_seconds"] = round(budget, 1)
        paths[path][subject] = entry
        if not entry["complete"]:
            entry["note"] = f"{entry['trials_run']} of {config.trials} trials within its budget of {budget:.1f} s"
    return notes


def measure(quick: bool, cap_seconds: float) -> Dict[str, Any]:
    config = QUICK if quick else FULL
    deadline = Deadline(cap_seconds)
    leftovers = Leftovers()
    load_start = load_average()
    paths: Dict[str, Dict[str, Any]] = {path: {} for path in PATH_LABELS}
    with PeerServer() as server:
        notes = measure_duplex(server, config, deadline, paths)
        notes += measure_peers(server, config, deadline, paths)
    complete = not notes
    return {
        "name": NAME,
        "mode": "quick" if quick else "full",
        "cap_seconds": cap_seconds,
        "complete": complete,
        "notes": notes,
        "config": config.__dict__,
        "silent_close_timeout": SILENT_CLOSE_TIMEOUT,
        "path_labels": PATH_LABELS,
        "paths": paths,
        "not_measured": {HEARTBEAT: heartbeat_note()},
        "leftover": leftovers.check(),
        "seconds": round(deadline.elapsed(), 2),
        "load_average": {"start": load_start, "end": load_average()},
    }


def format_table(result: Dict[str, Any]) -> str:
    config = result["config"]
    lines = [
        f"Teardown by exit path ({result['mode']}): trigger -> every thread of the connection exited, ms",
        f"({config['trials']} trials per path and subject; silent peer: duplexthreads {config['duplex_silent_trials']}"
        f" with close_timeout={result['silent_close_timeout']:g} s, peers {config['peer_silent_trials']}"
        f" side by side; peers' trials capped at {config['peer_trial_cap']:g} s)",
        f"{'':35} {'n':>4} {'p50':>8} {'p99':>8} {'max':>9}  {'report p50/p99':>15}  {'not done':>9}"
        f" {'thr left':>8} {'fds left (gc)':>13} {'unexp':>5}",
    ]
    for path, label in result["path_labels"].items():
        subjects = result["paths"].get(path, {})
        if not subjects:
            lines.append(f"{label}: {result['not_measured'].get(path, 'not measured')}")
            continue
        lines.append(label)
        for subject, e in subjects.items():
            own = e.get("report_teardown_ms")
            report = f"{fmt(own['p50_ms'])}/{fmt(own['p99_ms'])}" if own else ""
            not_done = f"{e['did_not_finish']}/{e['trials_run']}" if e["did_not_finish"] else "0"
            lines.append(
                f"  {subject:33} {e['n']:>4} {fmt(e['p50_ms']):>8} {fmt(e['p99_ms']):>8} {fmt(e['max_ms']):>9}"
                f"  {report:>15}  {not_done:>9} {e['threads_left']:>8}"
                f" {e['fds_left']:>+6d} ({e['fds_left_after_gc']:+d}) {e['unexpected']:>5}"
            )
            if e["did_not_finish"]:
                lines.append(
                    f"      did not finish within cap ({e['trial_cap_seconds']:g} s): {e['did_not_finish']} of"
                    f" {e['trials_run']}; threads alive then: {e['thread_names_alive_at_cap']}"
                )
            for example in e["unexpected_examples"][:2]:
                lines.append(f"      unexpected: {example}")
            for example in e["error_examples"][:2]:
                lines.append(f"      error: {example}")
            if e["sockets_closed_by_benchmark"]:
                lines.append(
                    f"      sockets still open after gc, closed by the benchmark: {e['sockets_closed_by_benchmark']}"
                )
            if e.get("note"):
                lines.append(f"      {e['note']}")
            if e.get("side_by_side"):
                lines.append(f"      ({e['side_by_side']})")
    lines.append("(not done: trials cut at the cap; thr left: the subject's threads alive after its trials;")
    lines.append(" fds left: open fds after minus before the path, then after gc.collect(); unexp: wrong report)")
    lines.extend(section_footer(result))
    return "\n".join(lines)


def metrics(result: Dict[str, Any]) -> List[Metric]:
    found: List[Metric] = []
    for path in DUPLEX_PATHS:
        for subject in DUPLEX_SUBJECTS:
            entry = result["paths"].get(path, {}).get(subject)
            if entry is None:
                continue
            prefix = f"{NAME}.{DUPLEX_BACKENDS[subject]}.{path}"
            if entry["p99_ms"] is not None:
                # Sub-millisecond figures on a shared machine: only a doubling is news. The silent
                # path is close_timeout plus that, so it is steadier.
                tolerance = 0.25 if path == SILENT_CLOSE else 1.0
                found.append(Metric(f"{prefix}.p99_ms", entry["p99_ms"], "ms", "lower", tolerance=tolerance))
            found.append(Metric(f"{prefix}.threads_left", entry["threads_left"], "threads", "lower", leak=True))
            found.append(Metric(f"{prefix}.fds_left", entry["fds_left"], "fds", "lower", leak=True))
            found.append(Metric(f"{prefix}.did_not_finish", entry["did_not_finish"], "trials", "lower", leak=True))
            found.append(Metric(f"{prefix}.unexpected_reports", entry["unexpected"], "trials", "lower", leak=True))
    found.append(Metric(f"{NAME}.leftover_threads", len(result["leftover"]["threads"]), "threads", "lower", leak=True))
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_standalone(NAME, measure, format_table, metrics, (600.0, 150.0), argv)


if __name__ == "__main__":
    sys.exit(main())
