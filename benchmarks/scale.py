"""Many connections in one process: time to open, memory, threads and fds each, and closing them all.

Targets (issue 3): duplexthreads' resident memory per connection no higher than websockets'
sync client's in the same run, and 2,000 connections closed with every thread gone in under
0.5 s.

Method
------
Server. The lean server of ``_peers.py --lean`` in a child process: one thread, one
``selectors`` loop, wsproto; it echoes, answers close frames with close frames and then closes
TCP. websockets' threading server held 2,000 connections too, but with 4,000 threads in one
interpreter it became the bottleneck when they all closed at once (load average above 150,
close replies seconds late, 929 of simple-websocket's 2,000 threads still waiting for theirs
after 15 s): the figures were the server's. RLIMIT_NOFILE is raised to its hard limit there
and here.

Trials. For N in 500, 1,000 and 2,000 (``--quick``: 200 and 500), one trial per client and way
of closing: duplexthreads with the websocket-client backend and with the simple-websocket
backend, each closed by ``abort()`` and, in another trial, by ``close()`` (graceful: close
frame, the server's answer), one after another; and all at once by
``duplexthreads.close_all(conns, abort=True)`` ("close_all-abort") and, for the
websocket-client backend, ``duplexthreads.close_all(conns)`` ("close_all", graceful), which
start ending every connection before waiting for any; websockets' sync client, simple-websocket's Client and
WebSocketApp, each closed by its ``close()``. Every client uses its library's defaults
(websockets' client pings every 20 s from a thread of its own; the others do not ping).

Each trial runs in a fresh worker process (``python -m benchmarks.scale --worker ...``), so
that the memory one trial freed cannot be reused by the next and a thread one library leaves
behind cannot disturb another. The worker:

1. reads its resident memory (``VmRSS``), OS threads (``/proc/self/task``) and open fds;
2. opens N connections one after another from its main thread (the time is "open all");
3. waits 0.5 s, collects garbage and reads the three again: the differences divided by N are
   the per-connection figures;
4. closes every connection from its main thread, one after another (``abort()`` or ``close()``)
   or with one ``close_all()`` call, then joins every thread that was started for them, against
   a bound (15 s; 3 s with ``--quick``). "Closed, all threads gone" is the time from the first
   close call to the last thread found gone; threads still alive at the bound are reported as
   such, with the bound, rather than waited for. For duplexthreads, the threads are those named
   ``duplexthreads-*``; for the others, every thread that appeared while opening.

Between trials the section waits (bounded) for the server's handler threads to wind down.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import duplexthreads

from ._clients import BACKENDS, DT_SWS, DT_WSC, SWS, WSA, WSS, Held, open_held
from ._harness import PeerServer, fd_count, fmt, raise_fd_limit, rss_kib, task_ids
from ._metrics import Metric

NAME = "scale"
SIZES = {False: (500, 1000, 2000), True: (200, 500)}
#: (client, how it is closed) for each trial at each N.
TRIALS: Tuple[Tuple[str, str], ...] = (
    (DT_WSC, "abort"),
    (DT_WSC, "close"),
    (DT_WSC, "close_all-abort"),
    (DT_WSC, "close_all"),
    (DT_SWS, "abort"),
    (DT_SWS, "close"),
    (DT_SWS, "close_all-abort"),
    (WSS, "close"),
    (SWS, "close"),
    (WSA, "close"),
)
#: Ways of closing: one by one with abort() or close(), or all at once with close_all().
MODES = ("abort", "close", "close_all-abort", "close_all")
#: How long a worker waits for the threads to go after closing: (full, quick).
GONE_BOUND = {False: 15.0, True: 3.0}
SETTLE = 0.5
#: Seconds a worker process may take beyond its own bounds before it is killed.
WORKER_TIMEOUT = 180.0
SLUGS = {
    DT_WSC: "duplexthreads-wsc",
    DT_SWS: "duplexthreads-sws",
    WSS: "websockets",
    SWS: "simple-websocket",
    WSA: "websocketapp",
}
REPO = Path(__file__).resolve().parent.parent
TARGET_N = 2000
TARGET_SECONDS = 0.5


# -- the worker process: one trial ----------------------------------------------------------------


def run_trial(client: str, mode: str, count: int, url: str, gone_bound: float) -> Dict[str, Any]:
    """Open ``count`` connections, measure, close them all, time until their threads are gone."""
    raise_fd_limit()
    gc.collect()
    rss_before, tasks_before, fds_before = rss_kib() or 0, len(task_ids()), fd_count()
    threads_before = set(threading.enumerate())
    held: List[Held] = []
    opening = time.perf_counter()
    try:
        for _ in range(count):
            held.append(open_held(client, url))
    except BaseException as exc:
        for connection in held:
            connection.kill()
        raise RuntimeError(f"opening failed after {len(held)} connections: {exc!r}") from exc
    open_seconds = time.perf_counter() - opening
    time.sleep(SETTLE)  # let every new thread reach the call it blocks in
    gc.collect()
    rss_open, tasks_open, fds_open = rss_kib() or 0, len(task_ids()), fd_count()
    if client in BACKENDS:
        threads = [t for connection in held for t in connection.threads()]
    else:
        threads = [t for t in threading.enumerate() if t not in threads_before]

    errors: List[str] = []
    closing = time.perf_counter()
    if mode.startswith("close_all"):
        # duplexthreads.close_all(): every connection starts ending before any is waited for.
        try:
            duplexthreads.close_all(
                [connection.duplex for connection in held if connection.duplex is not None],
                abort=mode == "close_all-abort",
            )
        except Exception as exc:  # noqa: BLE001 - counted; the connections are then killed
            errors.append(repr(exc))
            for connection in held:
                connection.kill()
    for connection in [] if mode.startswith("close_all") else held:
        try:
            if mode == "abort":
                assert connection.abort is not None
                connection.abort()
            else:
                connection.close()
        except Exception as exc:  # noqa: BLE001 - counted; the others are still closed
            errors.append(repr(exc))
            connection.kill()
    calls_seconds = time.perf_counter() - closing
    deadline = closing + gone_bound
    for thread in threads:
        thread.join(max(0.0, deadline - time.perf_counter()))
    gone_seconds = time.perf_counter() - closing
    alive = [t for t in threads if t.is_alive()]
    gc.collect()
    return {
        "client": client,
        "mode": mode,
        "connections": count,
        "open_seconds": open_seconds,
        "rss_kib_per_conn": (rss_open - rss_before) / count,
        "threads_per_conn": (tasks_open - tasks_before) / count,
        "fds_per_conn": (fds_open - fds_before) / count,
        "threads": len(threads),
        "close_calls_seconds": calls_seconds,
        "all_gone_seconds": None if alive else gone_seconds,
        "threads_alive_at_bound": len(alive),
        "gone_bound_seconds": gone_bound,
        "close_errors": len(errors),
        "close_error_examples": sorted(set(errors))[:3],
        "fds_left_after_close": fd_count() - fds_before,
        "duplexthreads_threads_left": sum(t.name.startswith("duplexthreads-") for t in threading.enumerate()),
    }


def worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale --worker")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("client")
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("count", type=int)
    parser.add_argument("url")
    parser.add_argument("--gone-bound", type=float, default=15.0)
    args = parser.parse_args(argv)
    result = run_trial(args.client, args.mode, args.count, args.url, args.gone_bound)
    print(json.dumps(result), flush=True)
    # Threads still alive (WebSocketApp's, past the bound) are daemons: exiting ends them.
    return 0


# -- the section ----------------------------------------------------------------------------------


def spawn_trial(client: str, mode: str, count: int, url: str, gone_bound: float, timeout: float) -> Dict[str, Any]:
    """Run one trial in a worker process; kill it if it overruns ``timeout``."""
    command = [sys.executable, "-m", "benchmarks.scale", "--worker", client, mode, str(count), url]
    command += ["--gone-bound", str(gone_bound)]
    worker = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        output, _ = worker.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.communicate()
        raise RuntimeError(f"worker still running after {timeout:.0f} s: killed") from None
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    if worker.returncode != 0 or not output.strip():
        raise RuntimeError(f"worker exited with {worker.returncode} (its error is on stderr above)")
    result: Dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def measure(quick: bool, cap_seconds: float) -> Dict[str, Any]:
    raise_fd_limit()
    deadline = time.monotonic() + cap_seconds
    trials: List[Dict[str, Any]] = []
    notes: List[str] = []
    with PeerServer(max_seconds=cap_seconds + 120, lean=True) as server:
        idle_threads = server.thread_count() or 0
        url = server.url("/echo")
        for count in SIZES[quick]:
            for client, mode in TRIALS:
                remaining = deadline - time.monotonic()
                label = f"{client} {mode} x{count}"
                if remaining < 5:
                    notes.append(f"{label}: skipped, the section's cap ({cap_seconds:g} s) is spent")
                    continue
                print(f"... scale: {label}", file=sys.stderr, flush=True)
                try:
                    trials.append(
                        spawn_trial(client, mode, count, url, GONE_BOUND[quick], min(remaining, WORKER_TIMEOUT))
                    )
                except Exception as exc:  # noqa: BLE001 - one failed trial is reported, the rest go on
                    notes.append(f"{label}: {exc}")
                if not server.wait_for_threads(idle_threads + 2, min(30.0, max(1.0, deadline - time.monotonic()))):
                    notes.append(f"after {label}: the server still had {server.thread_count()} threads after 30 s")
    return {
        "sizes": list(SIZES[quick]),
        "gone_bound_seconds": GONE_BOUND[quick],
        "trials": trials,
        "complete": not notes,
        "notes": notes,
    }


def find(result: Dict[str, Any], client: str, mode: str, count: int) -> Optional[Dict[str, Any]]:
    trial: Dict[str, Any]
    for trial in result["trials"]:
        if trial["client"] == client and trial["mode"] == mode and trial["connections"] == count:
            return trial
    return None


def gone_cell(trial: Dict[str, Any]) -> str:
    if trial["all_gone_seconds"] is not None:
        return f"{trial['all_gone_seconds']:.3f}"
    return f"{trial['threads_alive_at_bound']} alive at {trial['gone_bound_seconds']:g} s"


def format_table(result: Dict[str, Any]) -> str:
    lines = [
        "Scale: N connections held in one process, then closed one after another from the main thread",
        f"{'client':34} {'close':>15} {'N':>5} {'open s':>7} {'RSS KiB/conn':>12} {'thr/conn':>8} {'fds/conn':>8}"
        f" {'close calls s':>13} {'closed, all threads gone s':>26} {'errors':>6}",
    ]
    for trial in result["trials"]:
        lines.append(
            f"{trial['client']:34} {trial['mode']:>15} {trial['connections']:>5} {trial['open_seconds']:>7.2f}"
            f" {trial['rss_kib_per_conn']:>12.1f} {trial['threads_per_conn']:>8.2f} {trial['fds_per_conn']:>8.2f}"
            f" {trial['close_calls_seconds']:>13.3f} {gone_cell(trial):>26} {trial['close_errors']:>6}"
        )
        for example in trial["close_error_examples"]:
            lines.append(f"    close error: {example}")
        if trial["duplexthreads_threads_left"]:
            lines.append(f"    duplexthreads-* threads left: {trial['duplexthreads_threads_left']}")
    lines += targets(result)
    lines += [f"  note: {note}" for note in result["notes"]]
    return "\n".join(lines)


def targets(result: Dict[str, Any]) -> List[str]:
    """Whether the issue's two targets were met in this run, said plainly."""
    lines = []
    for count in result["sizes"]:
        ours, theirs = find(result, DT_WSC, "abort", count), find(result, WSS, "close", count)
        if ours and theirs:
            verdict = "met" if ours["rss_kib_per_conn"] <= theirs["rss_kib_per_conn"] else "NOT met"
            lines.append(
                f"target RSS/conn <= websockets sync at N={count}: {verdict}"
                f" ({ours['rss_kib_per_conn']:.1f} vs {theirs['rss_kib_per_conn']:.1f} KiB)"
            )
    for client in BACKENDS:
        for mode in MODES:
            trial = find(result, client, mode, TARGET_N)
            if trial is None:
                continue
            gone = trial["all_gone_seconds"]
            verdict = "met" if gone is not None and gone < TARGET_SECONDS else "NOT met"
            lines.append(
                f"target {TARGET_N} closed by {mode}(), every thread gone in < {TARGET_SECONDS} s, {client}:"
                f" {verdict} ({fmt(gone, '.3f')} s)"
            )
    return lines


def metrics(result: Dict[str, Any]) -> List[Metric]:
    found: List[Metric] = []
    for trial in result["trials"]:
        client, mode, count = trial["client"], trial["mode"], trial["connections"]
        if client not in BACKENDS:
            continue
        prefix = f"scale.{SLUGS[client]}.n{count}.{mode}"
        found.append(
            Metric(f"{prefix}.threads_alive_at_bound", trial["threads_alive_at_bound"], "threads", "lower", leak=True)
        )
        if trial["all_gone_seconds"] is not None:
            found.append(Metric(f"{prefix}.all_gone_s", trial["all_gone_seconds"], "s", "lower"))
        if mode == "abort":
            found.append(
                Metric(f"scale.{SLUGS[client]}.n{count}.rss_kib_per_conn", trial["rss_kib_per_conn"], "KiB", "lower")
            )
            theirs = find(result, WSS, "close", count)
            if theirs and theirs["rss_kib_per_conn"] > 0:
                ratio = trial["rss_kib_per_conn"] / theirs["rss_kib_per_conn"]
                found.append(Metric(f"scale.{SLUGS[client]}.n{count}.rss_ratio_to_websockets", ratio, "x", "lower"))
    return found


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        sys.exit(worker_main(sys.argv[1:]))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(format_table(measure("--quick" in sys.argv, 600.0)))
