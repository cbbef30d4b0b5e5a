"""Throughput, echo round trip (and teardown latency) of duplexthreads, beside plain clients.

Run ``python benchmarks/throughput.py`` (about a minute on 2 cores) or ``--quick`` (under 30 s);
``--json PATH`` also writes every number, with the machine's description, to PATH. As a section
of ``python -m benchmarks`` it exposes ``NAME``, ``measure``, ``format_table`` and ``metrics``
(see ``_metrics.py``).

Method
------
Server. websockets' threading server on 127.0.0.1, port 0, in a child process (``_peers.py``),
so that on a 2-core machine the client under test and the server each have a core and do not
share a GIL. Compression and server pings are off. The URL path picks its handler: count
messages, echo, or echo and then close on request.

Clients (``_clients.py``). duplexthreads with each backend, a plain websocket-client loop,
websocket-client's ``WebSocketApp`` (``run_forever`` in a thread, ``send`` from the main
thread), ``simple_websocket.Client`` and websockets' sync client, each with its defaults.

1. One-way throughput, 32 B and 4 KiB. Each round opens a fresh connection (not timed), then
   times from just before the first ``send`` until the server's ``"done"`` has been received:
   the server sends it once it has counted the last message (and checked every size). Rounds
   are interleaved round-robin across clients, rotating the starting client, after one untimed
   warm-up round per client at a tenth of the count. The table gives each client's median over
   its rounds, as messages/s and payload MB/s (10^6 B), the ratio to the plain websocket-client
   loop and the ratio of each duplexthreads backend to the fastest peer. It also gives the CPU
   each side used over the timed part, as a share of one core (client: ``time.process_time``,
   all threads; server: ``/proc/PID/stat``, 10 ms ticks): a server near 1.00 means the number
   is the server's limit rather than the client's.
2. Echo round trip, 32 B. Per client, the round trips (after 20 untimed ones per connection)
   are split over the same number of interleaved rounds and pooled; p50 and p99 use the
   nearest rank.
3. Teardown of duplexthreads (``_teardown_phase.py``): run by the standalone script always, and
   by ``python -m benchmarks`` only while its ``teardown_paths`` section is not available.

Bounds. Every round runs in a thread the main thread waits for with a time limit: the rest of
its phase's cap (the section's cap split evenly between the phases). When that passes, the main
thread kills the connection (``shutdown(SHUT_RDWR)`` on its socket), which wakes any blocked
call, and the phase is reported incomplete. Send loops are bounded by their count and also stop
once killed. Every connection is closed, the server process is stopped and reaped, and the
script checks that no thread it caused is left.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: python benchmarks/throughput.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duplexthreads
from benchmarks._clients import (
    APP_JOIN_TIMEOUT,
    BACKENDS,
    CLIENTS,
    DT_WSC,
    LINGERING,
    PEER_CLIENTS,
    WSC,
    close_after_failure,
    open_conn,
)
from benchmarks._harness import (
    BenchError,
    OutOfTime,
    PeerServer,
    Phase,
    Watch,
    distribution,
    fmt,
    leftover_threads,
    load_average,
    machine_info,
    micro,
    phase_notes,
    rotated,
)
from benchmarks._metrics import Metric
from benchmarks._teardown_phase import format_teardown, teardown_phase

NAME = "throughput"

#: Send-loop chunk: the loop checks whether it was killed between chunks.
CHUNK = 1024
ECHO_WARMUP = 20
SIZES = (32, 4096)
#: Short names for metric ids.
SLUGS = {DT_WSC: "duplexthreads-wsc", "duplexthreads (simple-websocket)": "duplexthreads-sws"}


@dataclass(frozen=True)
class Config:
    rounds: int
    small_count: int
    large_count: int
    echo_count: int
    teardown_trials: int


FULL = Config(rounds=5, small_count=100_000, large_count=20_000, echo_count=1_000, teardown_trials=200)
QUICK = Config(rounds=3, small_count=20_000, large_count=4_000, echo_count=300, teardown_trials=50)


# -- 1. one-way throughput ------------------------------------------------------------------------


@dataclass(frozen=True)
class ThroughputRound:
    seconds: float
    #: CPU seconds over the timed part, as a share of its wall time: 1.0 is one core kept busy.
    client_cpu: float
    server_cpu: Optional[float]


def measure_throughput(
    watch: Watch, client: str, url: str, payload: bytes, count: int, server: PeerServer
) -> ThroughputRound:
    """Time from the first send until the server's "done" arrived, and the CPU both sides used."""
    conn = open_conn(client, url)
    watch.arm(conn.kill)
    try:
        gc.collect()
        send = conn.send
        sent = 0
        server_cpu = server.cpu_seconds()
        client_cpu = time.process_time()
        started = time.perf_counter()
        while sent < count and not watch.killed:
            for _ in range(min(CHUNK, count - sent)):
                send(payload)
            sent += CHUNK
        reply = conn.recv()
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        server_after = server.cpu_seconds()
        if reply != "done":
            raise BenchError(f"server answered {reply!r}")
    except BaseException:
        close_after_failure(conn)
        raise
    conn.close()
    server_share = None if server_cpu is None or server_after is None else (server_after - server_cpu) / elapsed
    return ThroughputRound(elapsed, client_cpu / elapsed, server_share)


def throughput_phase(server: PeerServer, config: Config, size: int, rounds: int, cap: float) -> Dict[str, Any]:
    count = config.small_count if size == SIZES[0] else config.large_count
    payload = os.urandom(size)
    url = server.url(f"/count?n={count}&size={size}")
    phase: Phase[ThroughputRound] = Phase(f"throughput {size} B", cap)
    for client in CLIENTS:
        warm_url = server.url(f"/count?n={count // 10}&size={size}")
        phase.run(
            f"{client} warm-up",
            partial(measure_throughput, client=client, url=warm_url, payload=payload, count=count // 10, server=server),
        )
    done: Dict[str, List[ThroughputRound]] = {client: [] for client in CLIENTS}
    for number in range(rounds):
        for client in rotated(CLIENTS, number):
            measured = phase.run(
                f"{client} round {number + 1}",
                partial(measure_throughput, client=client, url=url, payload=payload, count=count, server=server),
            )
            if measured is not None:
                done[client].append(measured)
    results: Dict[str, Any] = {}
    for client, measured_rounds in done.items():
        rates = [count / r.seconds for r in measured_rounds]
        median = statistics.median(rates) if rates else None
        server_shares = [r.server_cpu for r in measured_rounds if r.server_cpu is not None]
        results[client] = {
            "rounds_msgs_per_s": rates,
            "median_msgs_per_s": median,
            "median_MB_per_s": median * size / 1e6 if median else None,
            "median_client_cpu_share": statistics.median([r.client_cpu for r in measured_rounds]) if rates else None,
            "median_server_cpu_share": statistics.median(server_shares) if server_shares else None,
        }
    base = results[WSC]["median_msgs_per_s"]
    for entry in results.values():
        median = entry["median_msgs_per_s"]
        entry["ratio_to_websocket_client"] = median / base if median and base else None
    peers = {client: results[client]["median_msgs_per_s"] for client in PEER_CLIENTS}
    fastest = max((c for c in peers if peers[c]), key=lambda c: peers[c], default=None)
    to_fastest = {}
    for client in BACKENDS:
        ours = results[client]["median_msgs_per_s"]
        to_fastest[client] = ours / peers[fastest] if ours and fastest else None
    return {
        "message_bytes": size,
        "messages_per_round": count,
        "rounds": rounds,
        "clients": results,
        "fastest_peer": fastest,
        "duplexthreads_to_fastest_peer": to_fastest,
        **phase.summary(),
    }


# -- 2. echo round trip --------------------------------------------------------------------------


def measure_echo(watch: Watch, client: str, url: str, payload: bytes, count: int) -> List[float]:
    """Seconds of each of ``count`` round trips, after ECHO_WARMUP untimed ones."""
    conn = open_conn(client, url)
    watch.arm(conn.kill)
    samples: List[float] = []
    try:
        gc.collect()
        send, recv, clock = conn.send, conn.recv, time.perf_counter
        for number in range(ECHO_WARMUP + count):
            if watch.killed:
                raise OutOfTime("killed")
            started = clock()
            send(payload)
            reply = recv()
            elapsed = clock() - started
            if reply != payload:
                raise BenchError(f"echo answered {reply!r}")
            if number >= ECHO_WARMUP:
                samples.append(elapsed)
    except BaseException:
        close_after_failure(conn)
        raise
    conn.close()
    return samples


def echo_phase(server: PeerServer, config: Config, rounds: int, cap: float) -> Dict[str, Any]:
    payload = os.urandom(32)
    phase: Phase[List[float]] = Phase("echo", cap)
    samples: Dict[str, List[float]] = {client: [] for client in CLIENTS}
    for number in range(rounds):
        share = config.echo_count // rounds + (1 if number < config.echo_count % rounds else 0)
        for client in rotated(CLIENTS, number):
            values = phase.run(
                f"{client} round {number + 1}",
                partial(measure_echo, client=client, url=server.url("/echo"), payload=payload, count=share),
            )
            if values is not None:
                samples[client].extend(values)
    clients = {client: distribution(values) for client, values in samples.items()}
    base = clients[WSC]["p50"]
    for entry in clients.values():
        entry["p50_ratio_to_websocket_client"] = entry["p50"] / base if entry["p50"] and base else None
    return {"message_bytes": 32, "round_trips": config.echo_count, "clients": clients, **phase.summary()}


# -- the section ----------------------------------------------------------------------------------


def teardown_paths_available() -> bool:
    """True when the ``teardown_paths`` section imports: it supersedes the teardown phase here."""
    try:
        import benchmarks.teardown_paths  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to import means "not available"
        return False
    return True


def measure(
    quick: bool, cap_seconds: float, include_teardown: Optional[bool] = None, rounds: Optional[int] = None
) -> Dict[str, Any]:
    """Run the phases within ``cap_seconds``, split evenly; the teardown phase as described above."""
    config = QUICK if quick else FULL
    rounds = rounds or config.rounds
    if include_teardown is None:
        include_teardown = not teardown_paths_available()
    phase_cap = cap_seconds / (len(SIZES) + 1 + (1 if include_teardown else 0))
    result: Dict[str, Any] = {"mode": "quick" if quick else "full", "throughput": {}}
    with PeerServer(max_seconds=cap_seconds + 120) as server:
        for size in SIZES:
            print(f"... throughput, {size} B", file=sys.stderr, flush=True)
            result["throughput"][str(size)] = throughput_phase(server, config, size, rounds, phase_cap)
        print("... echo", file=sys.stderr, flush=True)
        result["echo"] = echo_phase(server, config, rounds, phase_cap)
        if include_teardown:
            print("... teardown", file=sys.stderr, flush=True)
            result["teardown"] = teardown_phase(server, config.teardown_trials, phase_cap)
        lingered, alive = LINGERING.reap(15.0)
    result["websocketapp_threads_lingering_after_close"] = lingered
    result["websocketapp_threads_alive_after_15s"] = alive
    return result


def format_table(result: Dict[str, Any]) -> str:
    parts = [format_throughput(phase) for phase in result["throughput"].values()]
    parts.append(format_echo(result["echo"]))
    if "teardown" in result:
        parts.append(format_teardown(result["teardown"]))
    lingered = result.get("websocketapp_threads_lingering_after_close", 0)
    parts.append(
        f"WebSocketApp threads alive {APP_JOIN_TIMEOUT:g} s after close(): {lingered}"
        f" (still alive after a further 15 s: {result.get('websocketapp_threads_alive_after_15s', 0)})"
    )
    return "\n\n".join(parts)


def format_throughput(result: Dict[str, Any]) -> str:
    size, count = result["message_bytes"], result["messages_per_round"]
    lines = [
        f"One-way throughput: {count:,} binary messages of {size} B per round, median of {result['rounds']} rounds",
        f"{'client':34} {'msgs/s':>10} {'MB/s':>8} {'vs wsc loop':>11} {'CPU client/server':>17}"
        "   rounds min..max (msgs/s)",
    ]
    for client, entry in result["clients"].items():
        rates = entry["rounds_msgs_per_s"]
        spread = f"{min(rates):>9,.0f}..{max(rates):,.0f} (n={len(rates)})" if rates else "-"
        cpu = f"{fmt(entry['median_client_cpu_share'], '.2f')}/{fmt(entry['median_server_cpu_share'], '.2f')}"
        lines.append(
            f"{client:34} {fmt(entry['median_msgs_per_s'], ',.0f'):>10} {fmt(entry['median_MB_per_s'], '.2f'):>8}"
            f" {fmt(entry['ratio_to_websocket_client'], '.2f'):>11} {cpu:>17}   {spread}"
        )
    for client, ratio in result["duplexthreads_to_fastest_peer"].items():
        lines.append(f"{client} / fastest peer ({result['fastest_peer']}): {fmt(ratio, '.2f')}")
    lines.append("(CPU: median share of one core over the timed part; a server near 1.00 is the limit, not the client)")
    return "\n".join(lines + phase_notes(result))


def format_echo(result: Dict[str, Any]) -> str:
    lines = [
        f"Echo round trip, {result['message_bytes']} B, {result['round_trips']:,} round trips per client",
        f"{'client':34} {'p50 µs':>9} {'p99 µs':>9} {'max µs':>9} {'n':>6} {'p50 vs wsc loop':>16}",
    ]
    for client, dist in result["clients"].items():
        lines.append(
            f"{client:34} {micro(dist['p50']):>9} {micro(dist['p99']):>9} {micro(dist['max']):>9} {dist['n']:>6}"
            f" {fmt(dist.get('p50_ratio_to_websocket_client'), '.2f'):>16}"
        )
    return "\n".join(lines + phase_notes(result))


#: Allowed regression of throughput ratios in --quick runs (see metrics()).
QUICK_RATIO_TOLERANCE = 0.6


def metrics(result: Dict[str, Any]) -> List[Metric]:
    """Ratios to peers measured in the same run (the steadiest figures), and teardown leaks."""
    found: List[Metric] = []
    # Quick rounds last tens of milliseconds: a ratio moved by 43% between two quick runs on a
    # quiet machine. Quick ratios get a looser tolerance than the checker's default.
    tolerance = QUICK_RATIO_TOLERANCE if result.get("mode") == "quick" else None
    for size, phase in result["throughput"].items():
        for client, slug in SLUGS.items():
            ratio = phase["clients"][client]["ratio_to_websocket_client"]
            if ratio is not None:
                found.append(
                    Metric(f"throughput.{size}B.{slug}.ratio_to_wsc_loop", ratio, "x", "higher", tolerance=tolerance)
                )
            to_fastest = phase["duplexthreads_to_fastest_peer"].get(client)
            if to_fastest is not None:
                name = f"throughput.{size}B.{slug}.ratio_to_fastest_peer"
                found.append(Metric(name, to_fastest, "x", "higher", tolerance=tolerance))
    for client, slug in SLUGS.items():
        ratio = result["echo"]["clients"][client].get("p50_ratio_to_websocket_client")
        if ratio is not None:
            found.append(Metric(f"throughput.echo.{slug}.p50_ratio_to_wsc_loop", ratio, "x", "lower"))
    teardown = result.get("teardown")
    if teardown is not None:
        found.append(
            Metric(
                "throughput.teardown.threads_alive_after",
                teardown["duplexthreads_threads_alive_after"],
                "threads",
                "lower",
                leak=True,
            )
        )
        found.append(
            Metric(
                "throughput.teardown.fd_delta_after_gc",
                max(0, teardown["fd_delta_after_gc"]),
                "fds",
                "lower",
                leak=True,
            )
        )
        for backend, modes in teardown["backends"].items():
            p99 = modes["abort()"]["trigger_to_wait_seconds"]["p99"]
            if p99 is not None:
                found.append(Metric(f"throughput.teardown.{backend}.abort.p99_ms", p99 * 1e3, "ms", "lower"))
    return found


# -- the standalone script ------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run: fewer messages, rounds and trials")
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH as JSON")
    parser.add_argument("--rounds", type=int, help="rounds per client (default 5, or 3 with --quick)")
    parser.add_argument("--cap", type=float, help="seconds the whole run may take (default 480, or 120 with --quick)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    results: Dict[str, Any] = {
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": machine_info(),
        "load_average_start": load_average(),
    }
    print(
        f"duplexthreads {duplexthreads.__version__}, Python {results['machine']['python']}, "
        f"{results['machine']['cpu_count']} CPUs, {results['mode']} run, server in a child process"
    )
    section = measure(
        args.quick, args.cap or (120.0 if args.quick else 480.0), include_teardown=True, rounds=args.rounds
    )
    results.update(section)
    print()
    print(format_table(section))
    results["leftover_threads"] = leftover_threads()
    results["load_average_end"] = load_average()
    results["seconds"] = time.monotonic() - started
    print(f"\nthreads left at the end (must be none): {results['leftover_threads'] or 'none'}")
    print(
        f"load average at start {results['load_average_start']}, at end {results['load_average_end']}; "
        f"total {results['seconds']:.1f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")
    phases = [*section["throughput"].values(), section["echo"], section["teardown"]]
    problems = (
        any(not p["complete"] or p["notes"] for p in phases)
        or section["teardown"]["duplexthreads_threads_alive_after"]
        or results["leftover_threads"]
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
