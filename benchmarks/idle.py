"""What idle connections cost: CPU time and thread wake-ups per connection per second.

Promise P6: an idle duplexthreads connection wakes only for its heartbeat, and without one it
does not wake at all. This section measures the second half: every client here has its pings
off, duplexthreads included (``ping_interval=None``, passed explicitly: its heartbeat is on by
default), since the point is the cost of doing nothing. The first half, the heartbeat's own
cost at a short interval beside websockets' keepalive, is measured by the liveness section
(``liveness.py``), which reuses :func:`measure_client`. Today's libraries differ:
WebSocketApp's ``run_forever`` selects with a 10 s timeout, a polling design wakes every
interval.

Method
------
For each client (duplexthreads with each backend, WebSocketApp, simple-websocket, websockets'
sync client, and a plain websocket-client connection with a reader thread blocked in
``recv()``: the others receive in threads of their own), in turn:

1. Note this process's OS threads (``duplexthreads.testing.os_threads``), then open N = 50
   connections to the load server (websockets' threading server in a child process, pings off;
   every client with its pings off too: ``keepalive=False`` in ``_clients.py``, which gives
   duplexthreads and websockets ``ping_interval=None``; WebSocketApp, websocket-client and
   simple-websocket do not ping unless asked). The threads that appeared are the client's
   threads (duplexthreads: reader and writer, no heartbeat thread).
2. Settle for 0.5 s, so that the threads have reached the call they block in.
3. Over the idle window (10 s; 3 s with ``--quick``) the measuring thread waits on an Event.
   Before and after it reads ``time.process_time()`` (CPU of every thread of the process) and,
   for each of the client's threads, ``voluntary_ctxt_switches + nonvoluntary_ctxt_switches``
   from ``/proc/self/task/TID/status``. A thread blocked throughout in one call adds no switch;
   each wake-up adds at least one. The measuring thread, the main thread and anything that
   existed before are left out, so a thread some other code left behind cannot be counted.
4. Report wake-ups and CPU microseconds per connection per second, then close every
   connection (its library's ``close()``) and join its threads, bounded; threads that outlive
   that (WebSocketApp's) are joined before the next client opens.

CPU includes the measuring thread's few reads of ``/proc``: tens of microseconds over the
window, under 0.1 µs per connection per second.

The metric ``idle.<client>.wakeups_per_conn_per_s`` for duplexthreads is declared a leak
(``leak=True``): with the heartbeat off the expected value is exactly 0, any wake-up at all
means something polls, and a relative tolerance against a baseline of 0 means nothing. CPU is
in the table only: at these magnitudes it is the noise of the machine.
"""

from __future__ import annotations

import gc
import re
import sys
import threading
import time
from functools import partial
from typing import Any, Dict, List, Optional, Sequence

from ._clients import BACKENDS, CLIENTS, LINGERING, SLUGS, WSC, Client, Keepalive, describe_pings, open_client, settle
from ._metrics import Metric
from ._resources import context_switches_split, task_ids
from ._servers import LoadServer
from ._trials import Phase, Watch, fmt, notes_lines, run_standalone

NAME = "idle"
CONNECTIONS = 50
WINDOW = {False: 10.0, True: 3.0}
SETTLE = 0.5
#: How long closing waits for a client's threads before leaving them to LINGERING.
JOIN_AFTER_CLOSE = 2.0


def measure_client(
    watch: Watch, client: str, url: str, count: int, window: float, keepalive: Keepalive = False
) -> Dict[str, Any]:
    """Open ``count`` idle connections of ``client``, measure them over ``window`` s, close them.

    ``keepalive`` is ``open_client``'s: False here (pings off), ``(interval, timeout)`` in the
    liveness section.
    """
    opened: List[Client] = []

    def kill_all() -> None:
        for connection in list(opened):
            connection.kill()

    watch.arm(kill_all)
    gc.collect()
    before = task_ids()
    opening = time.monotonic()
    try:
        for _ in range(count):
            if watch.killed:
                raise RuntimeError("killed while opening")
            opened.append(open_client(client, url, reader=client == WSC, keepalive=keepalive))
        open_seconds = time.monotonic() - opening
        time.sleep(SETTLE)
        tids = task_ids() - before
        names = {thread.native_id: thread.name for thread in threading.enumerate()}
        switches_start = context_switches_split(tids)
        cpu_start = time.process_time()
        started = time.monotonic()
        threading.Event().wait(window)  # nothing sets it: this thread sleeps through the window
        elapsed = time.monotonic() - started
        cpu = time.process_time() - cpu_start
        switches_end = context_switches_split(tids)
    finally:
        closing = time.monotonic()
        closing_errors = settle(opened, JOIN_AFTER_CLOSE)
        close_seconds = time.monotonic() - closing
    common = switches_start.keys() & switches_end.keys()
    per_conn_s = count * elapsed
    # Per role (the thread's name with its numbers taken out: "duplexthreads-N-heartbeat"),
    # voluntary switches (wake-ups) and involuntary ones (preemptions), per thread per second.
    roles: Dict[str, List[int]] = {}
    for tid in common:
        role = re.sub(r"\d+", "N", names.get(tid, "?"))
        totals = roles.setdefault(role, [0, 0, 0])
        totals[0] += 1
        totals[1] += switches_end[tid][0] - switches_start[tid][0]
        totals[2] += switches_end[tid][1] - switches_start[tid][1]
    voluntary = sum(totals[1] for totals in roles.values())
    involuntary = sum(totals[2] for totals in roles.values())
    wakeups = voluntary + involuntary
    return {
        "connections": count,
        "pings": describe_pings(opened[0].pings) if opened else "-",
        "window_seconds": elapsed,
        "threads": len(tids),
        "threads_per_connection": len(tids) / count,
        "threads_exited_during_window": len(switches_start) - len(common),
        # Every switch, as before: a thread blocked throughout adds none of either kind.
        "wakeups": wakeups,
        "wakeups_per_conn_per_s": wakeups / per_conn_s,
        "voluntary_per_conn_per_s": voluntary / per_conn_s,
        "involuntary_per_conn_per_s": involuntary / per_conn_s,
        "by_role": {
            role: {
                "threads": threads,
                "voluntary_per_thread_per_s": vol / (threads * elapsed),
                "involuntary_per_thread_per_s": invol / (threads * elapsed),
            }
            for role, (threads, vol, invol) in sorted(roles.items())
        },
        "cpu_seconds": cpu,
        "cpu_us_per_conn_per_s": cpu * 1e6 / per_conn_s,
        "closing_errors": closing_errors[:5],
        "threads_alive_after_close": sum(thread.is_alive() for c in opened for thread in c.threads),
        "open_seconds": open_seconds,
        "close_seconds": close_seconds,
    }


def measure(quick: bool, cap_seconds: float) -> Dict[str, Any]:
    window = WINDOW[quick]
    phase: Phase[Dict[str, Any]] = Phase("idle", cap_seconds)
    clients: Dict[str, Any] = {}
    with LoadServer(max_seconds=cap_seconds + 120) as server:
        for client in CLIENTS:
            # Threads an earlier client left running must not wake (and spend CPU) in this window.
            LINGERING.reap(15.0)
            print(f"... idle: {client}", file=sys.stderr, flush=True)
            clients[client] = phase.run(
                client,
                partial(measure_client, client=client, url=server.url("/echo"), count=CONNECTIONS, window=window),
            )
        _, still_alive = LINGERING.reap(15.0)
    return {
        "connections": CONNECTIONS,
        "window_seconds": window,
        "clients": clients,
        "threads_alive_15s_after_section": still_alive,
        **phase.summary(),
    }


def format_table(result: Dict[str, Any]) -> str:
    lines = [
        f"Idle cost: {result['connections']} idle connections per client, {result['window_seconds']:g} s window,"
        " client pings off (duplexthreads: ping_interval=None, no heartbeat thread), server pings off",
        f"{'client':34} {'threads/conn':>12} {'wake-ups':>9} {'wake-ups/conn/s':>16} {'CPU µs/conn/s':>14}"
        f" {'open/close s':>13}",
    ]
    for client, entry in result["clients"].items():
        if entry is None:
            lines.append(f"{client:34} {'failed':>12}")
            continue
        lines.append(
            f"{client:34} {entry['threads_per_connection']:>12.2f} {entry['wakeups']:>9}"
            f" {entry['wakeups_per_conn_per_s']:>16.3f} {fmt(entry['cpu_us_per_conn_per_s'], '.2f'):>14}"
            f" {entry['open_seconds']:>6.2f}/{entry['close_seconds']:<6.2f}"
        )
        for error in entry["closing_errors"]:
            lines.append(f"    closing: {error}")
        if entry["threads_exited_during_window"]:
            lines.append(f"    {entry['threads_exited_during_window']} threads exited during the window")
        if entry["threads_alive_after_close"]:
            lines.append(
                f"    {entry['threads_alive_after_close']} threads still alive {JOIN_AFTER_CLOSE:g} s after close()"
            )
    target = all((result["clients"].get(client) or {}).get("wakeups", 1) == 0 for client in BACKENDS)
    lines.append(f"target (duplexthreads: zero wake-ups without a heartbeat): {'met' if target else 'NOT met'}")
    return "\n".join(lines + notes_lines(result))


def metrics(result: Dict[str, Any]) -> List[Metric]:
    found: List[Metric] = []
    for client in BACKENDS:
        entry = result["clients"].get(client)
        if entry is not None:
            found.append(
                Metric(
                    f"idle.{SLUGS[client]}.wakeups_per_conn_per_s",
                    entry["wakeups_per_conn_per_s"],
                    "/s",
                    "lower",
                    leak=True,
                )
            )
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_standalone(NAME, measure, format_table, metrics, (100.0, 40.0), argv)


if __name__ == "__main__":
    sys.exit(main())
