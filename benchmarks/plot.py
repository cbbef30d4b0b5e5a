"""Draw the teardown latency distributions of a run as ``benchmarks/results/teardown.png``.

The samples come from the ``teardown_paths`` section when it ran (``result["paths"][path]
["samples_ms"]``, one list of milliseconds per path), else from the teardown phase of the
``throughput`` section (``result["teardown"]["backends"][backend][trigger]["samples_ms"]``).
Each path is drawn as an empirical cumulative distribution on a logarithmic time axis, so the
median and the tail of every path can be read off the same picture.

Needs matplotlib (``pip install -e '.[plot]'``); without it, ``plot_teardown`` returns a
one-line note instead. ``python -m benchmarks.plot [RESULTS.json]`` redraws from a saved run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "teardown.png"


def teardown_samples(results: Mapping[str, Any]) -> Dict[str, List[float]]:
    """Label -> samples (ms), from teardown_paths if it has any, else from throughput's teardown."""
    sections = results.get("sections", {})
    found: Dict[str, List[float]] = {}
    paths = ((sections.get("teardown_paths") or {}).get("result") or {}).get("paths") or {}
    for label, entry in paths.items():
        collect(str(label), entry, found)
    if found:
        return found
    teardown = ((sections.get("throughput") or {}).get("result") or {}).get("teardown") or {}
    for backend, triggers in (teardown.get("backends") or {}).items():
        for trigger, entry in triggers.items():
            collect(f"{backend} {trigger}", entry, found)
    return found


def collect(label: str, entry: Any, found: Dict[str, List[float]]) -> None:
    """Take ``entry["samples_ms"]``; or, one level down, each sub-entry's (labelled "a / b")."""
    if not isinstance(entry, Mapping):
        return
    samples = entry.get("samples_ms")
    if isinstance(samples, Sequence) and samples:
        found[label] = [float(s) for s in samples if isinstance(s, (int, float))]
        return
    for key, sub in entry.items():
        if isinstance(sub, Mapping) and isinstance(sub.get("samples_ms"), Sequence) and sub["samples_ms"]:
            found[f"{label} / {key}"] = [float(s) for s in sub["samples_ms"] if isinstance(s, (int, float))]


def plot_teardown(results: Mapping[str, Any], output: Path = DEFAULT_OUTPUT) -> str:
    """Write the PNG; return one line saying where, or why not."""
    samples = {label: values for label, values in teardown_samples(results).items() if values}
    if not samples:
        return "plot: no teardown samples in this run (teardown_paths or throughput's teardown phase), no picture"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot: matplotlib is not installed (pip install -e '.[plot]'), so no teardown.png"
    figure, axes = plt.subplots(figsize=(10, 0.25 * len(samples) + 4.5))
    try:
        for label, values in samples.items():
            ordered = sorted(v for v in values if v > 0) or [1e-3]
            fractions = [(rank + 1) / len(ordered) for rank in range(len(ordered))]
            p50 = ordered[len(ordered) // 2]
            axes.step(ordered, fractions, where="post", label=f"{label} (p50 {p50:.2f} ms, n={len(ordered)})")
        axes.set_xscale("log")
        axes.set_xlabel("teardown latency, ms (log scale)")
        axes.set_ylabel("fraction of trials at or below")
        axes.set_ylim(0, 1.01)
        axes.grid(True, which="both", alpha=0.3)
        commit = (results.get("machine") or {}).get("duplexthreads_commit") or "?"
        axes.set_title(f"Teardown latency, {results.get('mode', '?')} run, commit {str(commit)[:10]}")
        axes.legend(fontsize="small", loc="lower right")
        figure.tight_layout()
        output.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(output, dpi=110)
    finally:
        plt.close(figure)
    return f"plot: teardown latency distributions of {len(samples)} paths written to {output}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    source = Path(args[0]) if args else DEFAULT_OUTPUT.with_name("latest.json")
    print(plot_teardown(json.loads(source.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
