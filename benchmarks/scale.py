"""Many connections in one process: time to open, memory, threads and fds each, and closing them all.

``python -m benchmarks.scale [--quick]`` runs this section alone.

Targets (issue 3): duplexthreads' resident memory per connection no higher than websockets'
sync client's in the same run, and 2,000 connections closed with every thread gone in under
0.5 s. Issue 9 asks whether ``close_all()`` beats closing one by one.

Method
------
Server. The lean server of ``_servers.py`` in a child process: one thread, one ``selectors``
loop, wsproto; it echoes, answers close frames with close frames and then closes TCP.
websockets' threading server became the bottleneck when thousands of connections closed at
once (see ``_servers.py``). RLIMIT_NOFILE is raised to its hard limit there and here.

Trials. One trial opens N connections of one client and closes them one way. Ways of closing:
one after another with ``abort()`` or ``close()`` (graceful: close frame, the server's answer),
or all at once with ``duplexthreads.close_all(conns, abort=True)`` ("close_all-abort") or
``duplexthreads.close_all(conns)`` ("close_all"), which start ending every connection before
waiting for any. The peers close with their own ``close()``. Every client uses its library's
defaults, pings included, since that is what an application holds: duplexthreads' heartbeat
is on (20 s/20 s), a third thread per connection beside the reader and the writer, and
websockets' client pings every 20 s from a keepalive thread of its own; the others do not
ping. The per-connection threads and RSS are therefore with the heartbeat (the table's
"pings" column says so for each row); no ping goes out while a trial holds its connections
(well under 20 s), so the heartbeat costs its thread and its memory, not wake-ups.

- Per connection: for N in 500, 1,000 and 2,000 (quick: 200 and 500), one trial per client and
  way of closing: duplexthreads on each backend by abort, close and close_all-abort, the
  websocket-client backend also by close_all; websockets, simple-websocket and WebSocketApp by
  their close.
- close_all side by side: at the largest N, the websocket-client backend's close, close_all,
  abort and close_all-abort and simple-websocket's close run again, in rounds (full 5, quick 4;
  the first is the trial above), each round in a rotated order. Every round's value is kept, so
  the spread can be quoted, and each round pairs close_all with close() and close_all-abort
  with abort() of the same round.

Each trial runs in a fresh worker process (``python -m benchmarks.scale --worker ...``), so
that the memory one trial freed cannot be reused by the next and a thread one library leaves
behind cannot disturb another. Before each, the section waits (bounded) until the server holds
no connection (its descriptors are back to idle). The worker:

1. reads its resident memory, OS threads and open fds (``duplexthreads.testing``);
2. opens N connections one after another from its main thread (the time is "open all");
3. waits 0.5 s, collects garbage and reads the three again: the differences divided by N are
   the per-connection figures;
4. closes every connection from its main thread, then joins every thread that was started for
   them, against a bound (15 s; 3 s with ``--quick``). "Closed, all threads gone" is the time
   from the first close call to the last thread found gone; threads still alive at the bound
   are reported as such, with the bound, rather than waited for.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import duplexthreads

from ._clients import (
    BACKENDS,
    DT_SWS,
    DT_WSC,
    SLUGS,
    SWS,
    WSA,
    WSS,
    Client,
    DuplexClient,
    describe_pings,
    join_all,
    open_client,
)
from ._metrics import Metric
from ._resources import fd_count, raise_fd_limit, rss_kib, task_ids
from ._servers import LoadServer
from ._trials import Deadline, fmt, notes_lines, rotated, run_standalone

NAME = "scale"
SIZES = {False: (500, 1000, 2000), True: (200, 500)}
ROUNDS = {False: 5, True: 4}
MODES = ("abort", "close", "close_all-abort", "close_all")
#: (client, how it is closed): one trial each at every N.
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
#: The trials run again in rounds at the largest N, to compare close_all with closing one by one.
SIDE_BY_SIDE: Tuple[Tuple[str, str], ...] = (
    (DT_WSC, "close"),
    (DT_WSC, "close_all"),
    (DT_WSC, "abort"),
    (DT_WSC, "close_all-abort"),
    (SWS, "close"),
)
#: Pairs compared round by round: (close_all way, the one-by-one way it replaces).
PAIRS = (("close_all", "close"), ("close_all-abort", "abort"))
#: How long a worker waits for the threads to go after closing: (full, quick).
GONE_BOUND = {False: 15.0, True: 3.0}
SETTLE = 0.5
#: Seconds a worker process may take beyond its own bounds before it is killed.
WORKER_TIMEOUT = 180.0
#: How long the section waits for the server to hold no connection before the next trial.
SERVER_IDLE_TIMEOUT = 30.0
REPO = Path(__file__).resolve().parent.parent
TARGET_N = 2000
TARGET_SECONDS = 0.5


# -- the worker process: one trial ----------------------------------------------------------------


def run_trial(client: str, mode: str, count: int, url: str, gone_bound: float) -> Dict[str, Any]:
    """Open ``count`` connections, measure, close them all, time until their threads are gone."""
    raise_fd_limit()
    gc.collect()
    rss_before, tasks_before, fds_before = rss_kib() or 0, len(task_ids()), fd_count()
    opened: List[Client] = []
    opening = time.perf_counter()
    try:
        for _ in range(count):
            opened.append(open_client(client, url))
    except BaseException as exc:
        for connection in opened:
            connection.kill()
        raise RuntimeError(f"opening failed after {len(opened)} connections: {exc!r}") from exc
    open_seconds = time.perf_counter() - opening
    time.sleep(SETTLE)  # let every new thread reach the call it blocks in
    gc.collect()
    rss_open, tasks_open, fds_open = rss_kib() or 0, len(task_ids()), fd_count()
    threads = [thread for connection in opened for thread in connection.threads]

    errors: List[str] = []
    closing = time.perf_counter()
    if mode.startswith("close_all"):
        try:
            duplexthreads.close_all(
                [connection.conn for connection in opened if isinstance(connection, DuplexClient)],
                abort=mode == "close_all-abort",
            )
        except Exception as exc:  # noqa: BLE001 - counted; the connections are then killed
            errors.append(repr(exc))
            for connection in opened:
                connection.kill()
    else:
        for connection in opened:
            try:
                if mode == "abort":
                    connection.abort()
                else:
                    connection.close()
            except Exception as exc:  # noqa: BLE001 - counted; the others are still closed
                errors.append(repr(exc))
                connection.kill()
    calls_seconds = time.perf_counter() - closing
    alive = join_all(threads, time.monotonic() + gone_bound - calls_seconds)
    gone_seconds = time.perf_counter() - closing
    gc.collect()
    return {
        "client": client,
        "mode": mode,
        "connections": count,
        # What the connections ping with: the library's default (duplexthreads: its heartbeat).
        "pings": describe_pings(opened[0].pings) if opened else "-",
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
    if worker.returncode != 0 or not output.strip():
        raise RuntimeError(f"worker exited with {worker.returncode} (its error is on stderr above)")
    result: Dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def plan(quick: bool) -> List[Tuple[int, str, str, int]]:
    """(N, client, mode, round) of every trial, in the order they run."""
    sizes = SIZES[quick]
    trials = [(count, client, mode, 1) for count in sizes for client, mode in TRIALS]
    for number in range(2, ROUNDS[quick] + 1):
        trials += [(sizes[-1], client, mode, number) for client, mode in rotated(SIDE_BY_SIDE, number - 1)]
    return trials


def measure(quick: bool, cap_seconds: float) -> Dict[str, Any]:
    raise_fd_limit()
    deadline = Deadline(cap_seconds)
    trials: List[Dict[str, Any]] = []
    notes: List[str] = []
    with LoadServer(max_seconds=cap_seconds + 120, lean=True) as server:
        url = server.url("/echo")
        for count, client, mode, number in plan(quick):
            label = f"{client} {mode} x{count} round {number}"
            if deadline.remaining() < 5:
                notes.append(f"{label}: skipped, the section's cap ({cap_seconds:g} s) is spent")
                continue
            if not server.wait_idle(min(SERVER_IDLE_TIMEOUT, deadline.remaining())):
                notes.append(f"before {label}: the server still held connections")
            print(f"... scale: {label}", file=sys.stderr, flush=True)
            try:
                timeout = min(deadline.remaining(), WORKER_TIMEOUT)
                trial = spawn_trial(client, mode, count, url, GONE_BOUND[quick], timeout)
            except Exception as exc:  # noqa: BLE001 - one failed trial is reported, the rest go on
                notes.append(f"{label}: {exc}")
                continue
            trials.append({**trial, "round": number})
    return {
        "sizes": list(SIZES[quick]),
        "rounds": ROUNDS[quick],
        "gone_bound_seconds": GONE_BOUND[quick],
        "trials": trials,
        "side_by_side": side_by_side(trials, SIZES[quick][-1]),
        "complete": not notes,
        "notes": notes,
    }


def side_by_side(trials: List[Dict[str, Any]], count: int) -> Dict[str, Any]:
    """Per way of closing at N=count: every round's "all gone" seconds, their median and range;
    and per pair, in how many rounds close_all was the faster."""
    by_way: Dict[Tuple[str, str], Dict[int, Optional[float]]] = {way: {} for way in SIDE_BY_SIDE}
    for trial in trials:
        if trial["connections"] == count and (trial["client"], trial["mode"]) in by_way:
            by_way[trial["client"], trial["mode"]][trial["round"]] = trial["all_gone_seconds"]
    ways = {}
    for (client, mode), rounds in by_way.items():
        done = [seconds for seconds in rounds.values() if seconds is not None]
        ways[f"{client} {mode}"] = {
            "client": client,
            "mode": mode,
            "rounds_seconds": [rounds[number] for number in sorted(rounds)],
            "median_seconds": statistics.median(done) if done else None,
            "min_seconds": min(done, default=None),
            "max_seconds": max(done, default=None),
        }
    pairs = {}
    for together, one_by_one in PAIRS:
        mine, theirs = by_way[DT_WSC, together], by_way[DT_WSC, one_by_one]
        paired = [(mine[n], theirs[n]) for n in sorted(mine) if n in theirs]
        both = [(a, b) for a, b in paired if a is not None and b is not None]
        pairs[f"{together} vs {one_by_one}"] = {
            "rounds": len(both),
            "close_all_faster": sum(a < b for a, b in both),
            "ratios": [a / b for a, b in both],
        }
    return {"connections": count, "ways": ways, "pairs": pairs}


def find(result: Dict[str, Any], client: str, mode: str, count: int) -> Optional[Dict[str, Any]]:
    """The first round's trial of ``client`` closed by ``mode`` at N=``count``."""
    trial: Dict[str, Any]
    for trial in result["trials"]:
        if (trial["client"], trial["mode"], trial["connections"], trial["round"]) == (client, mode, count, 1):
            return trial
    return None


def gone_cell(trial: Dict[str, Any]) -> str:
    if trial["all_gone_seconds"] is not None:
        return f"{trial['all_gone_seconds']:.3f}"
    return f"{trial['threads_alive_at_bound']} alive at {trial['gone_bound_seconds']:g} s"


def format_table(result: Dict[str, Any]) -> str:
    lines = [
        "Scale: N connections held in one process, then closed from the main thread (round 1 of each)",
        "(each library's defaults, pings included: duplexthreads' heartbeat on, its thread counted in thr/conn"
        " and RSS; websockets' keepalive thread likewise)",
        f"{'client':34} {'close':>15} {'N':>5} {'pings':>8} {'open s':>7} {'RSS KiB/conn':>12} {'thr/conn':>8}"
        f" {'fds/conn':>8} {'close calls s':>13} {'closed, all threads gone s':>26} {'errors':>6}",
    ]
    for trial in result["trials"]:
        if trial["round"] != 1:
            continue
        lines.append(
            f"{trial['client']:34} {trial['mode']:>15} {trial['connections']:>5} {trial.get('pings', '?'):>8}"
            f" {trial['open_seconds']:>7.2f}"
            f" {trial['rss_kib_per_conn']:>12.1f} {trial['threads_per_conn']:>8.2f} {trial['fds_per_conn']:>8.2f}"
            f" {trial['close_calls_seconds']:>13.3f} {gone_cell(trial):>26} {trial['close_errors']:>6}"
        )
        lines += [f"    close error: {example}" for example in trial["close_error_examples"]]
        if trial["duplexthreads_threads_left"]:
            lines.append(f"    duplexthreads-* threads left: {trial['duplexthreads_threads_left']}")
    lines += format_side_by_side(result["side_by_side"], result["rounds"])
    lines += targets(result)
    return "\n".join(lines + notes_lines(result))


def format_side_by_side(summary: Dict[str, Any], rounds: int) -> List[str]:
    lines = [
        "",
        f"Closing {summary['connections']:,} connections, {rounds} rounds in rotated order: all threads gone, s",
        f"{'':50} {'median':>7} {'min..max':>13}   every round",
    ]
    for way, entry in summary["ways"].items():
        spread = f"{fmt(entry['min_seconds'], '.3f')}..{fmt(entry['max_seconds'], '.3f')}"
        every = " ".join(fmt(seconds, ".3f") for seconds in entry["rounds_seconds"])
        lines.append(f"{way:50} {fmt(entry['median_seconds'], '.3f'):>7} {spread:>13}   {every}")
    for pair, entry in summary["pairs"].items():
        ratios = " ".join(f"{value:.2f}" for value in entry["ratios"])
        lines.append(
            f"{pair}: close_all faster in {entry['close_all_faster']} of {entry['rounds']} rounds;"
            f" close_all / one by one, each round: {ratios or '-'}"
        )
    return lines


def targets(result: Dict[str, Any]) -> List[str]:
    """Whether the issue's two targets were met in this run, said plainly."""
    lines = []
    for count in result["sizes"]:
        ours, theirs = find(result, DT_WSC, "abort", count), find(result, WSS, "close", count)
        if ours and theirs:
            met = "met" if ours["rss_kib_per_conn"] <= theirs["rss_kib_per_conn"] else "NOT met"
            lines.append(
                f"target RSS/conn <= websockets sync at N={count}: {met}"
                f" ({ours['rss_kib_per_conn']:.1f} vs {theirs['rss_kib_per_conn']:.1f} KiB; pings"
                f" {ours.get('pings', '?')} vs {theirs.get('pings', '?')}, each with its thread)"
            )
    for client in BACKENDS:
        for mode in MODES:
            trial = find(result, client, mode, TARGET_N)
            if trial is not None:
                gone = trial["all_gone_seconds"]
                met = "met" if gone is not None and gone < TARGET_SECONDS else "NOT met"
                lines.append(
                    f"target {TARGET_N} closed by {mode}(), every thread gone in < {TARGET_SECONDS} s, {client}:"
                    f" {met} ({fmt(gone, '.3f')} s)"
                )
    return lines


def metrics(result: Dict[str, Any]) -> List[Metric]:
    found: List[Metric] = []
    alive: Dict[str, int] = {}  # threads alive at the bound, over every round
    for trial in result["trials"]:
        client, mode, count = trial["client"], trial["mode"], trial["connections"]
        if client not in BACKENDS:
            continue
        prefix = f"scale.{SLUGS[client]}.n{count}"
        name = f"{prefix}.{mode}.threads_alive_at_bound"
        alive[name] = alive.get(name, 0) + trial["threads_alive_at_bound"]
        if trial["round"] != 1:
            continue
        in_rounds = count == result["side_by_side"]["connections"] and (client, mode) in SIDE_BY_SIDE
        if trial["all_gone_seconds"] is not None and not in_rounds:
            # One trial's seconds of thread wake-ups on a shared machine: rounds of the same trial
            # spread by 70% in one run. Only a doubling is news. At the largest N, the median of
            # the rounds (below) is the figure.
            found.append(Metric(f"{prefix}.{mode}.all_gone_s", trial["all_gone_seconds"], "s", "lower", tolerance=1.0))
        if mode == "abort":
            found.append(Metric(f"{prefix}.rss_kib_per_conn", trial["rss_kib_per_conn"], "KiB", "lower"))
            theirs = find(result, WSS, "close", count)
            if theirs and theirs["rss_kib_per_conn"] > 0:
                rss_ratio = trial["rss_kib_per_conn"] / theirs["rss_kib_per_conn"]
                found.append(Metric(f"{prefix}.rss_ratio_to_websockets", rss_ratio, "x", "lower"))
    # Medians over the rounds: steadier than any one trial, but the same kind of figure.
    found += [Metric(name, value, "threads", "lower", leak=True) for name, value in alive.items()]
    count = result["side_by_side"]["connections"]
    for entry in result["side_by_side"]["ways"].values():
        if entry["client"] in BACKENDS and entry["median_seconds"] is not None:
            name = f"scale.{SLUGS[entry['client']]}.n{count}.{entry['mode']}.median_all_gone_s"
            found.append(Metric(name, entry["median_seconds"], "s", "lower", tolerance=1.0))
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_standalone(NAME, measure, format_table, metrics, (420.0, 150.0), argv)


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        sys.exit(worker_main(sys.argv[1:]))
    sys.exit(main())
