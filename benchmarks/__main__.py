"""``python -m benchmarks``: run every benchmark section, print a table each, write one JSON file.

    python -m benchmarks                       full run (about 15-20 minutes on 2 cores)
    python -m benchmarks --quick               short run (about 4-5 minutes)
    python -m benchmarks --only idle,scale     a subset, in SECTIONS order
    python -m benchmarks --check BASE.json     also compare with a saved run; exit 1 on a regression
    python -m benchmarks --write-baseline BASE.json

Sections are the modules named in :data:`SECTIONS`, each following the interface in
``_metrics.py`` (``NAME``, ``measure``, ``format_table``, ``metrics``). A module that does not
exist yet or fails to import is reported with a "section not available" line and the run goes
on; ``--check`` then fails, naming the section.

Each section runs in a child process of its own (``python -m benchmarks --child NAME``), with
its time cap (:data:`CAPS`) plus a grace period, after which the child is killed. That keeps
sections from disturbing one another (a thread or a few MB left by one do not show up in the
next one's idle or memory figures), and lets the run finish whatever a section does: a section
that raises, hangs or crashes is reported and the run goes on. The child runs the section
under a leak check (``_trials.measure_checked``); the parent formats the tables and collects
the metrics, with the two leftover metrics every section gets, from the child's JSON result.
The JSON file holds, beside every section's result and metrics, the machine's description, the
git commit measured and the load average before and after each section.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import duplexthreads

from . import check
from ._metrics import leftover_metrics
from ._resources import load_average, machine_info
from ._trials import leftover_line, measure_checked

#: Every section, in the order they run. Modules that are not there yet are skipped.
SECTIONS = ("throughput", "teardown_paths", "idle", "liveness", "scale", "naive", "soak", "room")
#: Seconds each section may take: (full run, quick run). Their sums bound a run's length.
CAPS: Dict[str, Tuple[float, float]] = {
    "throughput": (180.0, 60.0),
    "teardown_paths": (150.0, 45.0),
    "idle": (100.0, 40.0),
    "liveness": (120.0, 60.0),
    "scale": (420.0, 150.0),
    "naive": (90.0, 15.0),
    "soak": (180.0, 30.0),
    "room": (420.0, 120.0),
}
DEFAULT_CAP = (90.0, 20.0)
#: Seconds past its cap before a section's process is killed.
GRACE = 60.0
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"
REPO = Path(__file__).resolve().parent.parent

OK = check.SECTION_OK
FAILED = "failed"
TIMED_OUT = "timed out"
NOT_AVAILABLE = "not available"


def load_section(name: str) -> Union[ModuleType, str]:
    """The section's module, or why it is not available."""
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"benchmarks.{name}":
            return f"no module benchmarks/{name}.py"
        return f"import failed: {exc!r}"
    except Exception as exc:  # noqa: BLE001 - a broken section must not stop the others
        return f"import failed: {exc!r}"
    missing = [attr for attr in ("NAME", "measure", "format_table", "metrics") if not hasattr(module, attr)]
    if missing:
        return f"module lacks {', '.join(missing)}"
    return module


# -- the child: one section -----------------------------------------------------------------------


def run_child(name: str, quick: bool, cap: float, result_file: str) -> int:
    """Run one section in this process and write its result (or its error) to ``result_file``."""
    started = time.monotonic()
    outcome: Dict[str, Any] = {"result": None, "error": None}
    try:
        module = load_section(name)
        if isinstance(module, str):
            raise RuntimeError(module)
        outcome["result"] = measure_checked(module.measure, quick, cap)
    except BaseException:  # noqa: BLE001 - reported to the parent, which goes on
        outcome["error"] = traceback.format_exc()
    outcome["seconds"] = time.monotonic() - started
    Path(result_file).write_text(json.dumps(outcome, default=str))
    return 0


# -- the parent -----------------------------------------------------------------------------------


def run_section(name: str, module: ModuleType, quick: bool) -> Dict[str, Any]:
    """Run one section in a child process, bounded by its cap plus GRACE; format its table."""
    cap = CAPS.get(name, DEFAULT_CAP)[1 if quick else 0]
    entry: Dict[str, Any] = {"status": FAILED, "cap_seconds": cap, "load_average_start": load_average()}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="benchmarks-") as scratch:
        result_file = os.path.join(scratch, "result.json")
        command = [sys.executable, "-m", "benchmarks", "--child", name, "--cap", str(cap), "--result-file", result_file]
        if quick:
            command.append("--quick")
        # The child's own output (progress lines) goes to stderr, leaving stdout to the tables.
        child = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno())
        try:
            child.wait(timeout=cap + GRACE)
        except subprocess.TimeoutExpired:
            entry["status"] = TIMED_OUT
            entry["error"] = f"still running {cap + GRACE:.0f} s after it started (cap {cap:g} s): killed"
        finally:
            stop_child(child)
        entry["exit_code"] = child.returncode
        if entry["status"] != TIMED_OUT:
            try:
                outcome = json.loads(Path(result_file).read_text())
            except (OSError, ValueError) as exc:
                entry["error"] = f"no result from the section's process (exit code {child.returncode}): {exc!r}"
            else:
                entry.update(result=outcome["result"], error=outcome["error"], measure_seconds=outcome["seconds"])
                if outcome["error"] is None:
                    entry["status"] = OK
    entry["seconds"] = time.monotonic() - started
    entry["load_average_end"] = load_average()
    if entry["status"] == OK:
        try:
            entry["table"] = module.format_table(entry["result"])
            found = module.metrics(entry["result"]) + leftover_metrics(name, entry["result"])
            entry["metrics"] = [metric.to_json() for metric in found]
        except Exception:  # noqa: BLE001 - the result is kept; the failure is reported
            entry["status"] = FAILED
            entry["error"] = "formatting the result failed:\n" + traceback.format_exc()
    return entry


def stop_child(child: subprocess.Popen[bytes]) -> None:
    """Make sure the child is gone and reaped: terminate, then kill."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def print_section(name: str, entry: Dict[str, Any]) -> None:
    title = f"== {name} "
    print("\n" + title + "=" * max(3, 100 - len(title)))
    if entry["status"] == NOT_AVAILABLE:
        print(f"section not available: {entry['error']}")
        return
    if entry.get("table"):
        print(entry["table"])
    if entry.get("error"):
        print(f"SECTION {entry['status'].upper()}: {entry['error'].rstrip()}")
    if entry.get("result"):
        print(leftover_line(entry["result"]))
    print(
        f"({entry['status']}; {entry.get('seconds', 0.0):.1f} s of a {entry['cap_seconds']:g} s cap; "
        f"load average {entry['load_average_start']} -> {entry['load_average_end']})"
    )
    sys.stdout.flush()


def selected(only: Optional[str]) -> List[str]:
    if not only:
        return list(SECTIONS)
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return [name for name in SECTIONS if name in wanted]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (about 4-5 minutes)")
    parser.add_argument("--only", metavar="NAME[,NAME]", help=f"run these sections only: {', '.join(SECTIONS)}")
    parser.add_argument("--json", metavar="PATH", default=str(DEFAULT_JSON), help="where to write the results")
    parser.add_argument("--check", metavar="BASELINE", help="compare the metrics with BASELINE; exit 1 on a regression")
    parser.add_argument("--tolerance", type=float, default=check.DEFAULT_TOLERANCE, help="default allowed regression")
    parser.add_argument("--write-baseline", metavar="PATH", help="also write the results to PATH, as a baseline")
    parser.add_argument("--no-plot", action="store_true", help="do not draw benchmarks/results/teardown.png")
    parser.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--cap", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args.child, args.quick, args.cap, args.result_file)
    names = selected(args.only)
    baseline = check.load(args.check) if args.check else None  # fail early on a bad path
    started = time.monotonic()
    results: Dict[str, Any] = {
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "argv": list(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "load_average_start": load_average(),
        "sections": {},
    }
    machine = results["machine"]
    print(
        f"duplexthreads {duplexthreads.__version__} at {machine['duplexthreads_commit'] or 'unknown commit'}"
        f"{' (uncommitted changes)' if machine['duplexthreads_uncommitted_changes'] else ''}, "
        f"Python {machine['python']}, {machine['cpu_count']} CPUs, {results['mode']} run, "
        f"load average {results['load_average_start']}"
    )
    try:
        for name in names:
            module = load_section(name)
            if isinstance(module, str):
                entry: Dict[str, Any] = {"status": NOT_AVAILABLE, "error": module}
            else:
                print(f"... {name}", file=sys.stderr, flush=True)
                entry = run_section(name, module, args.quick)
            results["sections"][name] = entry
            print_section(name, entry)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    results["load_average_end"] = load_average()
    results["seconds"] = time.monotonic() - started

    status = 0
    if any(entry["status"] in (FAILED, TIMED_OUT) for entry in results["sections"].values()):
        status = 1
    if baseline is not None:
        verdicts = check.compare(results, baseline, args.tolerance)
        results["check"] = {"baseline": args.check, "verdicts": [vars(v) for v in verdicts]}
        print(f"\n== check against {args.check} " + "=" * 40)
        print(check.format_verdicts(verdicts))
        if check.any_failed(verdicts):
            status = 1
    if not args.no_plot:
        from .plot import plot_teardown

        print(plot_teardown(results))

    for path in filter(None, (args.json, args.write_baseline)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"results written to {path}")
    ran = [name for name, entry in results["sections"].items() if entry["status"] != NOT_AVAILABLE]
    print(
        f"{len(ran)} section(s) run in {results['seconds']:.0f} s; load average {results['load_average_start']} -> "
        f"{results['load_average_end']}; exit {status}"
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
