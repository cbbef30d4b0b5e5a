"""Liveness: what the heartbeat costs an idle connection, and how fast a half-open one is found.

``python -m benchmarks.liveness [--quick]`` runs this section alone.

duplexthreads' heartbeat (``_heartbeat.py``) is a thread per connection that waits in
``quit.wait()``, pings every ``ping_interval`` and ends the connection (reason
``HEARTBEAT_TIMEOUT``, close code 1011) when nothing arrives for ``ping_timeout`` after a ping.
Two parts, each beside the clients that have a keepalive of their own.

1. Idle with the heartbeat on
-----------------------------
The method of the idle section (``idle.measure_client``, the same code): N = 50 connections
per client to the load server (websockets' threading server in a child process: its own pings
are off, and it answers every ping with a pong), settled 0.5 s, then over a window (10 s; 3 s
with ``--quick``: a whole number of intervals) the context switches of every thread the client
started, from ``/proc``, and the process's CPU time. Every client pings every 1 s with a
timeout of 1 s: duplexthreads on each backend (``connect(ping_interval=1, ping_timeout=1)``)
and websockets' sync client with its own keepalive (``connect(ping_interval=1,
ping_timeout=1)``). Voluntary switches are wake-ups (the thread blocked, then woke);
involuntary ones are preemptions (the thread could have run on: on loopback the thread whose
write wakes the server's process is often preempted by it), reported apart, and by thread role.

Expected for duplexthreads: per ping, one wake-up of the heartbeat thread (its timer; with
``ping_timeout == ping_interval`` it pings and judges in the same wake-up) and one of the
thread that reads the pong (the reader; with simple-websocket, the backend's own thread, which
hands the pong over without waking our reader): 2 per connection per ping, and nothing else.
With many connections a little more: a thread that wakes while another holds the GIL blocks
once more to get it, which counts as a voluntary switch too (one connection alone: 1.00).
websockets' keepalive thread wakes at its timer and again for the pong, its reading thread for
the pong. The figures per ping (wake-ups per connection per second times the interval) are
the metrics; CPU is in the table only (the noise of a shared machine at these magnitudes).

2. Half-open detection
----------------------
The peer (``duplexthreads.testing.ScriptedPeer`` in this process, so that the trigger is timed
exactly) accepts, greets, and, in each trial, sends one message that the client receives, then
``go_silent()``: from then on it reads everything and answers nothing, no pong and no close
frame, and sends neither FIN nor RST: a half-open connection as a dead NAT or a hung peer
leaves it. Every client has the same settings, ping_interval 0.5 s and ping_timeout 0.5 s:
duplexthreads on each backend, websockets' sync client (its keepalive). WebSocketApp refuses
them (``run_forever`` raises "Ensure ping_interval > ping_timeout"; the table says so) and runs
twice instead, with the same interval and half the timeout (0.5/0.25) and with the same timeout
and a slightly longer interval (0.6/0.5).

Each library sends its first ping one interval after opening and the next one an interval
after the last, so a silence is noticed at most ``ping_interval + ping_timeout`` after it
begins (the next ping, then its timeout): that bound is stated beside the figures. Where the
silence falls within the interval decides how far below it a trial comes, so the silences of
a client's trials are spread evenly over one interval. Trial k of n goes silent (k + 1/2)/n of
an interval after a ping its library scheduled (counted from the end of its opening); a
library that keeps its schedule notices it ``interval - phase + timeout`` later: for 5 trials
at 0.5/0.5 s, 0.95, 0.85, 0.75, 0.65 and 0.55 s, a median of 0.75 s (half an interval plus
the timeout) and a maximum just under the bound.

Timed from the moment the peer went silent (``time.monotonic()``):

- verdict: the client's close frame reaching the peer, the library's own sign that it gave up
  (duplexthreads and websockets send 1011; WebSocketApp's teardown sends 1000);
- told: the application learns it: duplexthreads' ``wait()`` returns (the report says
  ``HEARTBEAT_TIMEOUT``, code 1011); websockets' ``recv()`` raises ``ConnectionClosedError``;
  WebSocketApp's ``on_error`` is called (``WebSocketTimeoutException``);
- gone: every thread of the client joined. "verdict -> gone" is the teardown that follows:
  duplexthreads sends its 1011 and closes at once (the peer is presumed gone); websockets,
  having sent its 1011, waits its close timeout (10 s by default) for the peer to close TCP
  before ``recv()`` raises; WebSocketApp's ``close()`` waits up to 3 s for the peer's close
  frame.

All trials of all clients (full 10 each, quick 5) run side by side in one batch
(``_trials.run_batch``): detection is timer-driven, and websockets' trials last its close
timeout more, so rounds one after another would cost that each time. Each trial is bounded: 20 s from the silence for
the application to be told ("not detected within 20 s" otherwise), then 10 s for its threads;
past that its socket is shut down and the peer's side reset. The ratios are duplexthreads'
medians over websockets'. websockets logs its keepalive's failure (an ERROR with a traceback):
those records are counted and kept off stderr.

Metrics (``--check``), for duplexthreads on each backend: wake-ups per connection per ping and
the heartbeat thread's own (counts: 2 and 1 expected, the default tolerance), their ratio to
websockets'; the median time from silence to told and the slowest over the bound (timers:
tolerances of 25% and 20%), the verdict's median over websockets'; and ``failed_trials``, a
leak metric: trials not told within the bound, told otherwise than by a heartbeat timeout with
1011, or leaving a thread alive, must be 0. CPU and the teardown after the verdict are in the
table only.
"""

from __future__ import annotations

import logging
import statistics
import sys
import threading
import time
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple

import websocket
from websockets.exceptions import ConnectionClosed as WebsocketsClosed

from duplexthreads import Reason
from duplexthreads.testing import PeerConnection, ScriptedPeer

from ._clients import (
    BACKENDS,
    DT_SWS,
    DT_WSC,
    IO_TIMEOUT,
    LINGERING,
    SLUGS,
    WSA,
    WSS,
    AppClient,
    BenchError,
    Client,
    DuplexClient,
    WebsocketsClient,
    describe_pings,
    join_all,
    open_client,
)
from ._metrics import Metric
from ._servers import LoadServer, discard_pending, end_connection, fault_peer
from ._trials import Deadline, Phase, Timing, fmt, notes_lines, ratio, run_batch, run_standalone
from .idle import measure_client

NAME = "liveness"

# -- 1. idle with the heartbeat on
IDLE_CLIENTS = (DT_WSC, DT_SWS, WSS)
IDLE_PINGS = (1.0, 1.0)
IDLE_CONNECTIONS = 50
IDLE_WINDOW = {False: 10.0, True: 3.0}
#: Share of the section's cap the idle part may use.
IDLE_SHARE = 0.6

# -- 2. half-open detection
HALF_OPEN_PINGS = (0.5, 0.5)
#: (label, client, (ping_interval, ping_timeout)).
HALF_OPEN_SUBJECTS: Tuple[Tuple[str, str, Tuple[float, float]], ...] = (
    (DT_WSC, DT_WSC, HALF_OPEN_PINGS),
    (DT_SWS, DT_SWS, HALF_OPEN_PINGS),
    (WSS, WSS, HALF_OPEN_PINGS),
    ("WebSocketApp 0.5/0.25", WSA, (0.5, 0.25)),
    ("WebSocketApp 0.6/0.5", WSA, (0.6, 0.5)),
)
TRIALS = {False: 10, True: 5}
#: Seconds from the silence within which the application must be told.
TOLD_BOUND = 20.0
#: Seconds after that for every thread of the client to be gone.
GONE_BOUND = 10.0
GREETING = "hello"
LAST_WORD = "still here"


# -- 1. idle with the heartbeat on ----------------------------------------------------------------


def same_settings_refused(url: str, pings: Tuple[float, float]) -> Optional[str]:
    """What WebSocketApp says to ``run_forever(ping_interval=..., ping_timeout=...)`` with ``pings``.

    None if it accepts them: then it connects to ``url`` (the load server) and closes at once.
    """
    app = websocket.WebSocketApp(url, on_open=lambda app: app.close())
    try:
        app.run_forever(ping_interval=pings[0], ping_timeout=pings[1])
    except websocket.WebSocketException as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def measure_idle(quick: bool, cap: float, server: LoadServer) -> Dict[str, Any]:
    phase: Phase[Dict[str, Any]] = Phase("idle with the heartbeat on", cap)
    clients: Dict[str, Any] = {}
    for client in IDLE_CLIENTS:
        LINGERING.reap(15.0)
        print(f"... liveness: idle, {client}", file=sys.stderr, flush=True)
        clients[client] = phase.run(
            client,
            partial(
                measure_client,
                client=client,
                url=server.url("/echo"),
                count=IDLE_CONNECTIONS,
                window=IDLE_WINDOW[quick],
                keepalive=IDLE_PINGS,
            ),
        )
    return {
        "connections": IDLE_CONNECTIONS,
        "pings": list(IDLE_PINGS),
        "window_seconds": IDLE_WINDOW[quick],
        "clients": clients,
        **phase.summary(),
    }


# -- 2. half-open detection ------------------------------------------------------------------------


class HalfOpenTrial:
    """One connection whose peer goes silent; times the verdict, the application told, the threads gone."""

    def __init__(
        self, label: str, client: str, pings: Tuple[float, float], peer: ScriptedPeer, index: int, count: int
    ) -> None:
        self.label, self.client_name, self.pings, self.peer = label, client, pings, peer
        #: Where in the ping interval (seconds since the last scheduled ping) the silence begins:
        #: trial k of n at (k + 1/2) / n of the interval, so a client's trials cover it evenly.
        self.phase = pings[0] * (index + 0.5) / count
        self.opened_at: Optional[float] = None
        self.client: Optional[Client] = None
        self.conn: Optional[PeerConnection] = None
        self._killed = threading.Event()
        self._verdict_waiter: Optional[threading.Thread] = None
        # time.monotonic() of each step; None when it did not happen within its bound.
        self.silent_at: Optional[float] = None
        self.verdict_at: Optional[float] = None
        self.told_at: Optional[float] = None
        self.gone_at: Optional[float] = None
        self.close_frame: Optional[Tuple[Optional[int], str]] = None
        self.told_by = ""
        self.teardown_seconds: Optional[float] = None
        self.alive_at_bound: List[str] = []
        self.unexpected: Optional[str] = None

    # The _trials.Trial interface.

    def open(self) -> None:
        try:
            self.client = open_client(self.client_name, self.peer.url, keepalive=self.pings)
            # Each library schedules its first ping one interval after this (within a millisecond).
            self.opened_at = time.monotonic()
        except BaseException:
            discard_pending(self.peer)
            raise
        try:
            self.conn = self.peer.next_connection(IO_TIMEOUT)
            self.conn.send(GREETING)
            if self.client.recv() != GREETING:
                raise BenchError("the greeting did not arrive")
        except BaseException:
            self.kill()
            raise

    def go(self) -> None:
        client, conn = self.client, self.conn
        assert client is not None and conn is not None
        assert self.opened_at is not None
        interval = self.pings[0]
        delay = (self.phase - (time.monotonic() - self.opened_at)) % interval
        if self._killed.wait(delay):
            return
        # The last exchange: the peer is heard from, then goes silent at once.
        conn.send(LAST_WORD)
        if client.recv() != LAST_WORD:
            raise BenchError("the last message before the silence did not arrive")
        conn.go_silent()
        self.silent_at = time.monotonic()
        self._verdict_waiter = threading.Thread(target=self._await_close_frame, name="bench-verdict", daemon=True)
        self._verdict_waiter.start()
        try:
            self._await_told(client)
            if self.told_at is not None:
                alive = join_all(client.threads, self.told_at + GONE_BOUND)
                self.alive_at_bound = [thread.name for thread in alive]
                if not alive:
                    self.gone_at = time.monotonic()
        finally:
            if self.told_at is None or self.alive_at_bound:
                self.kill()  # wakes the waiter below too
            self._verdict_waiter.join(IO_TIMEOUT)

    def kill(self) -> None:
        self._killed.set()
        if self.client is not None:
            self.client.kill()
        if self.conn is not None:
            end_connection(self.conn)

    def threads(self) -> List[threading.Thread]:
        own = [self._verdict_waiter] if self._verdict_waiter is not None else []
        return ([] if self.client is None else list(self.client.threads)) + own

    # Steps.

    def _await_close_frame(self) -> None:
        """The peer's view: when the client's close frame arrives (it ends without one, or not)."""
        assert self.conn is not None
        try:
            frame = self.conn.wait_close_frame(timeout=TOLD_BOUND + GONE_BOUND)
        except (TimeoutError, ConnectionError):
            return  # the connection ended without a close frame, or the trial was killed
        self.verdict_at = time.monotonic()
        self.close_frame = (frame[0], frame[1])

    def _await_told(self, client: Client) -> None:
        """Wait, bounded, for the application to be told; note how it was."""
        assert self.silent_at is not None
        bound = TOLD_BOUND
        if isinstance(client, DuplexClient):
            try:
                report = client.conn.wait(bound)
            except TimeoutError:
                return
            self.told_at = time.monotonic()
            self.told_by = f"wait(): {report.reason.value}, code {report.close_code}"
            self.teardown_seconds = report.teardown_seconds
            problems = []
            if report.reason is not Reason.HEARTBEAT_TIMEOUT or report.close_code != 1011:
                problems.append(f"expected heartbeat timeout with 1011: {report.describe()}")
            if report.lingering:
                problems.append(f"lingering {list(report.lingering)}")
            self.unexpected = "; ".join(problems) or None
        elif isinstance(client, WebsocketsClient):
            try:
                message = client.ws.recv(timeout=bound)
            except WebsocketsClosed as exc:
                self.told_at = time.monotonic()
                self.told_by = f"recv(): {type(exc).__name__}: {exc}"
            except TimeoutError:
                return
            else:
                raise BenchError(f"a silent peer's connection delivered {message!r}")
        elif isinstance(client, AppClient):
            if not client.ended.wait(bound):
                return
            when, kind, detail = client.endings[0]
            self.told_at = when  # taken in the callback itself
            self.told_by = f"on_{kind}: {detail!r}"
        else:
            raise BenchError(f"{client.name} has no keepalive to time")

    def figures(self) -> Dict[str, Any]:
        """Seconds of each step, from the silence (None where it did not happen)."""

        def since(start: Optional[float], end: Optional[float]) -> Optional[float]:
            return None if start is None or end is None else round(end - start, 6)

        verdict = self.verdict_at
        phase = None
        if self.silent_at is not None and self.opened_at is not None:
            phase = (self.silent_at - self.opened_at) % self.pings[0]
        return {
            # Seconds since the last ping the library scheduled (from its opening) when the
            # silence began; the next ping comes one interval after that ping.
            "phase_s": None if phase is None else round(phase, 6),
            "silence_to_verdict_s": since(self.silent_at, verdict),
            "silence_to_told_s": since(self.silent_at, self.told_at),
            "told_to_gone_s": since(self.told_at, self.gone_at),
            # The teardown after the verdict; without a close frame, from the moment told.
            "verdict_to_gone_s": since(verdict if verdict is not None else self.told_at, self.gone_at),
            "close_frame": list(self.close_frame) if self.close_frame else None,
            "told_by": self.told_by,
            "report_teardown_ms": None if self.teardown_seconds is None else round(self.teardown_seconds * 1e3, 3),
            "alive_at_bound": self.alive_at_bound,
            "unexpected": self.unexpected,
        }


class LogCount(logging.Handler):
    """Counts what a library logs (websockets logs its keepalive's failure with a traceback),
    instead of letting it reach stderr through logging's last-resort handler."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: Optional[str] = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.first is None:
            self.first = f"{record.levelname} {record.name}: {record.getMessage()}"


def spread(values: List[Optional[float]]) -> Dict[str, Any]:
    """n, median and max of the values that exist, and how many are missing."""
    present = [value for value in values if value is not None]
    return {
        "n": len(present),
        "missing": len(values) - len(present),
        "p50": statistics.median(present) if present else None,
        "max": max(present) if present else None,
    }


def run_half_open(peer: ScriptedPeer, count: int, cap: float) -> Tuple[List[HalfOpenTrial], List[Timing]]:
    """Every trial of every subject side by side; the peer's side of each is ended afterwards."""
    trials = [
        HalfOpenTrial(label, client, pings, peer, index, count)
        for index in range(count)
        for label, client, pings in HALF_OPEN_SUBJECTS
    ]
    print(f"... liveness: half-open, {len(trials)} trials side by side", file=sys.stderr, flush=True)
    timings = run_batch(trials, cap, IO_TIMEOUT)
    for trial in trials:
        if trial.conn is not None:
            end_connection(trial.conn)
    return trials, timings


def measure_half_open(quick: bool, deadline: Deadline) -> Dict[str, Any]:
    count = TRIALS[quick]
    longest_delay = max(pings[0] for _, _, pings in HALF_OPEN_SUBJECTS)
    batch_cap = longest_delay + TOLD_BOUND + GONE_BOUND + 2.0
    subjects: Dict[str, Any] = {}
    notes: List[str] = []
    logged = LogCount()
    logger = logging.getLogger("websockets")
    propagate = logger.propagate
    logger.addHandler(logged)
    logger.propagate = False
    try:
        with fault_peer(isolated=False) as peer:
            trials, timings = run_half_open(peer, count, min(batch_cap, deadline.remaining()))
    finally:
        logger.removeHandler(logged)
        logger.propagate = propagate
    for label, client, pings in HALF_OPEN_SUBJECTS:
        mine = [(trial, timing) for trial, timing in zip(trials, timings) if trial.label == label]
        rows = [trial.figures() for trial, _ in mine]
        errors = sorted({timing.error for _, timing in mine if timing.error})
        capped = sum(timing.capped for _, timing in mine)
        if capped:
            notes.append(f"{label}: {capped} trial(s) cut at the batch's cap ({batch_cap:g} s)")
        subjects[label] = {
            "client": client,
            "pings": list(pings),
            "pings_label": describe_pings(pings),
            "bound_s": pings[0] + pings[1],
            "trials": rows,
            "errors": errors[:5],
            "silence_to_verdict_s": spread([row["silence_to_verdict_s"] for row in rows]),
            "silence_to_told_s": spread([row["silence_to_told_s"] for row in rows]),
            "told_to_gone_s": spread([row["told_to_gone_s"] for row in rows]),
            "verdict_to_gone_s": spread([row["verdict_to_gone_s"] for row in rows]),
            "report_teardown_ms": spread([row["report_teardown_ms"] for row in rows]),
            "not_told": sum(row["silence_to_told_s"] is None for row in rows),
            "threads_alive_at_bound": sum(len(row["alive_at_bound"]) for row in rows),
            "unexpected": sum(row["unexpected"] is not None for row in rows) + len(errors),
            "close_frames": sorted({str(row["close_frame"]) for row in rows}),
            "told_by": sorted({row["told_by"] for row in rows if row["told_by"]})[:3],
        }
    return {
        "trials_per_client": count,
        "pings": list(HALF_OPEN_PINGS),
        "told_bound_s": TOLD_BOUND,
        "gone_bound_s": GONE_BOUND,
        "subjects": subjects,
        "library_log_records": logged.count,
        "library_log_first": logged.first,
        "notes": notes,
    }


# -- the section -----------------------------------------------------------------------------------


def measure(quick: bool, cap_seconds: float) -> Dict[str, Any]:
    deadline = Deadline(cap_seconds)
    with LoadServer(max_seconds=cap_seconds + 120) as server:
        idle = measure_idle(quick, cap_seconds * IDLE_SHARE, server)
        refused = same_settings_refused(server.url("/echo"), HALF_OPEN_PINGS)
        _, still_alive = LINGERING.reap(15.0)
    notes = [f"idle: {note}" for note in idle["notes"]]
    half_open: Optional[Dict[str, Any]] = None
    if deadline.remaining() > 5.0:
        half_open = measure_half_open(quick, deadline)
        half_open["websocketapp_same_settings"] = refused
        notes += [f"half-open: {note}" for note in half_open["notes"]]
    else:
        notes.append("half-open: skipped, the section's cap is spent")
    return {
        "mode": "quick" if quick else "full",
        "idle": idle,
        "half_open": half_open,
        "threads_alive_15s_after_idle": still_alive,
        "complete": idle["complete"] and half_open is not None and not half_open["notes"],
        "notes": notes,
        "seconds": round(deadline.elapsed(), 1),
    }


# -- tables and metrics ----------------------------------------------------------------------------


def idle_per_ping(entry: Dict[str, Any], interval: float, key: str = "voluntary_per_conn_per_s") -> float:
    value: float = entry[key] * interval
    return value


def format_idle(idle: Dict[str, Any]) -> List[str]:
    interval = idle["pings"][0]
    lines = [
        f"Idle with pings on: {idle['connections']} idle connections per client, ping_interval {interval:g} s,"
        f" ping_timeout {idle['pings'][1]:g} s, {idle['window_seconds']:g} s window; the server answers pings",
        f"{'client':34} {'pings':>7} {'thr/conn':>8} {'wake-ups/conn/s':>15} {'per ping':>8}"
        f" {'preempted/conn/s':>16} {'all switches/conn/s':>19} {'CPU µs/conn/s':>13}",
    ]
    for client, entry in idle["clients"].items():
        if entry is None:
            lines.append(f"{client:34} {'failed':>7}")
            continue
        lines.append(
            f"{client:34} {entry['pings']:>7} {entry['threads_per_connection']:>8.2f}"
            f" {entry['voluntary_per_conn_per_s']:>15.3f} {idle_per_ping(entry, interval):>8.2f}"
            f" {entry['involuntary_per_conn_per_s']:>16.3f} {entry['wakeups_per_conn_per_s']:>19.3f}"
            f" {fmt(entry['cpu_us_per_conn_per_s'], '.1f'):>13}"
        )
        roles = ", ".join(
            f"{role} {figures['voluntary_per_thread_per_s']:.2f} (+{figures['involuntary_per_thread_per_s']:.2f})"
            for role, figures in entry["by_role"].items()
        )
        lines.append(f"    per thread per s, wake-ups (+preempted): {roles}")
        for error in entry["closing_errors"]:
            lines.append(f"    closing: {error}")
        if entry["threads_alive_after_close"]:
            lines.append(f"    {entry['threads_alive_after_close']} threads still alive after close()")
    lines.append(
        "expected for duplexthreads: 2 wake-ups per connection per ping (its heartbeat's timer, and the thread"
        " that reads the pong: the reader, or simple-websocket's backend thread); preemptions are not wake-ups"
    )
    theirs = idle["clients"].get(WSS)
    for client in BACKENDS:
        ours = idle["clients"].get(client)
        if ours and theirs:
            lines.append(
                f"{client} / websockets sync: wake-ups"
                f" {fmt(ratio(ours['voluntary_per_conn_per_s'], theirs['voluntary_per_conn_per_s']))}x,"
                f" CPU {fmt(ratio(ours['cpu_us_per_conn_per_s'], theirs['cpu_us_per_conn_per_s']))}x"
            )
    return lines


def format_half_open(half: Dict[str, Any]) -> List[str]:
    interval, timeout = half["pings"]
    lines = [
        "",
        f"Half-open detection: the peer goes silent (no pong, no close frame, no FIN, no RST) right after an"
        f" exchange; {half['trials_per_client']} trials per client, their silences spread over one ping interval,"
        " all side by side",
        "bound: ping_interval + ping_timeout after the silence (each library pings one interval after opening,"
        " then one interval after its last ping); verdict: the client's close frame at the peer; told: the"
        " application learns it",
        f"{'':34} {'pings':>9} {'bound':>6} {'silence->verdict s':>18} {'silence->told s':>16}"
        f" {'verdict->gone s':>16} {'not told':>8}",
        f"{'':34} {'':>9} {'s':>6} {'p50':>8} {'max':>9} {'p50':>7} {'max':>8} {'p50':>7} {'max':>8}",
    ]
    for label, entry in half["subjects"].items():
        verdict, told, gone = entry["silence_to_verdict_s"], entry["silence_to_told_s"], entry["verdict_to_gone_s"]
        not_told = f"{entry['not_told']}/{len(entry['trials'])}"
        lines.append(
            f"{label:34} {entry['pings_label']:>9} {entry['bound_s']:>6.2f}"
            f" {fmt(verdict['p50'], '.3f'):>8} {fmt(verdict['max'], '.3f'):>9}"
            f" {fmt(told['p50'], '.3f'):>7} {fmt(told['max'], '.3f'):>8}"
            f" {fmt(gone['p50'], '.3f'):>7} {fmt(gone['max'], '.3f'):>8} {not_told:>8}"
        )
        if entry["not_told"]:
            bound = half["told_bound_s"]
            lines.append(f"    not detected within {bound:g} s of the silence: {entry['not_told']} trial(s)")
        told_by = "; ".join(entry["told_by"]) or "-"
        lines.append(f"    told by {told_by}; close frames at the peer {entry['close_frames']}")
        own = entry["report_teardown_ms"]
        if own["n"]:
            lines.append(
                f"    report.teardown_seconds (heartbeat's verdict -> socket closed): p50 {fmt(own['p50'], '.3f')} ms,"
                f" max {fmt(own['max'], '.3f')} ms; told (wait() returning) comes after every thread is joined"
            )
        if entry["threads_alive_at_bound"]:
            lines.append(f"    threads alive {half['gone_bound_s']:g} s after told: {entry['threads_alive_at_bound']}")
        for error in entry["errors"][:2]:
            lines.append(f"    error: {error}")
        examples = sorted({row["unexpected"] for row in entry["trials"] if row["unexpected"]})
        for example in examples[:2]:
            lines.append(f"    unexpected: {example}")
    if half.get("library_log_records"):
        lines.append(
            f"logged by websockets during the trials (kept off stderr): {half['library_log_records']} record(s),"
            f" e.g. {half['library_log_first']}"
        )
    refused = half.get("websocketapp_same_settings")
    lines.append(
        f"WebSocketApp with the same settings ({interval:g}/{timeout:g} s): "
        + (f"refused by run_forever ({refused})" if refused else "accepted (not measured here)")
    )
    theirs = half["subjects"].get(WSS)
    for client in BACKENDS:
        ours = half["subjects"].get(client)
        if ours and theirs:
            lines.append(
                f"{client} / websockets sync, medians: verdict"
                f" {fmt(ratio(ours['silence_to_verdict_s']['p50'], theirs['silence_to_verdict_s']['p50']))}x,"
                f" told {fmt(ratio(ours['silence_to_told_s']['p50'], theirs['silence_to_told_s']['p50']))}x;"
                f" max told / bound {fmt(ratio(ours['silence_to_told_s']['max'], ours['bound_s']))}"
            )
    return lines


def format_table(result: Dict[str, Any]) -> str:
    lines = format_idle(result["idle"])
    if result["half_open"] is not None:
        lines += format_half_open(result["half_open"])
    return "\n".join(lines + notes_lines(result) + [f"({result['seconds']:.1f} s)"])


def metrics(result: Dict[str, Any]) -> List[Metric]:
    found: List[Metric] = []
    idle = result["idle"]
    interval = idle["pings"][0]
    theirs = idle["clients"].get(WSS)
    for client in BACKENDS:
        entry = idle["clients"].get(client)
        if entry is None:
            continue
        prefix = f"{NAME}.idle.{SLUGS[client]}"
        # Counts of wake-ups: 2.0 expected; more means something wakes that should not.
        found.append(Metric(f"{prefix}.wakeups_per_ping", idle_per_ping(entry, interval), "/ping", "lower"))
        heartbeat = entry["by_role"].get("duplexthreads-N-heartbeat")
        if heartbeat is not None:
            per_ping = heartbeat["voluntary_per_thread_per_s"] * interval
            found.append(Metric(f"{prefix}.heartbeat_wakeups_per_ping", per_ping, "/ping", "lower"))
        if theirs is not None:
            value = ratio(entry["voluntary_per_conn_per_s"], theirs["voluntary_per_conn_per_s"])
            if value is not None:
                found.append(Metric(f"{prefix}.wakeups_ratio_to_websockets", value, "x", "lower", tolerance=0.5))
    half = result["half_open"]
    if half is None:
        return found
    wss = half["subjects"].get(WSS)
    for client in BACKENDS:
        entry = half["subjects"].get(client)
        if entry is None:
            continue
        prefix = f"{NAME}.half_open.{SLUGS[client]}"
        told = entry["silence_to_told_s"]
        # Trials not told within the bound, told otherwise than by the heartbeat, or leaving threads.
        bad = entry["not_told"] + entry["unexpected"] + entry["threads_alive_at_bound"]
        found.append(Metric(f"{prefix}.failed_trials", bad, "trials", "lower", leak=True))
        if told["p50"] is not None:
            # Timers, not throughput: the figures move little; the phase spread is fixed.
            found.append(Metric(f"{prefix}.detect_p50_s", told["p50"], "s", "lower", tolerance=0.25))
            found.append(
                Metric(f"{prefix}.detect_max_over_bound", told["max"] / entry["bound_s"], "x", "lower", tolerance=0.2)
            )
        # The teardown after the verdict (about a millisecond) is in the table only: it races the
        # peer's thread that notes the close frame, and the teardown section times it already;
        # threads still alive after it count in failed_trials.
        if wss is not None:
            value = ratio(entry["silence_to_verdict_s"]["p50"], wss["silence_to_verdict_s"]["p50"])
            if value is not None:
                found.append(Metric(f"{prefix}.verdict_ratio_to_websockets", value, "x", "lower"))
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_standalone(NAME, measure, format_table, metrics, (120.0, 60.0), argv)


if __name__ == "__main__":
    sys.exit(main())
