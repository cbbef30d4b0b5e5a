"""Draw the teardown latency distributions of a run as ``benchmarks/results/teardown.png``.

The samples come from the ``teardown_paths`` section (``result["paths"][path][subject]
["samples_ms"]``, one list of milliseconds per path and subject). Each path gets a panel, in
which each subject (duplexthreads with each backend, the peers) is an empirical cumulative
distribution on a logarithmic time axis: the median and the tail of every subject can be read
off the same panel.

Needs matplotlib (``pip install -e '.[plot]'``); without it, ``plot_teardown`` returns a
one-line note instead. ``python -m benchmarks.plot [RESULTS.json]`` redraws from a saved run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "teardown.png"


Groups = Dict[str, Dict[str, List[float]]]


def teardown_samples(results: Mapping[str, Any]) -> Groups:
    """Path -> subject -> samples (ms), from the teardown_paths section; empty if it did not run."""
    sections = results.get("sections", {})
    paths = ((sections.get("teardown_paths") or {}).get("result") or {}).get("paths") or {}
    groups: Groups = {}
    for path, subjects in paths.items():
        for subject, entry in (subjects or {}).items():
            samples = numbers(entry.get("samples_ms") if isinstance(entry, Mapping) else None)
            if samples:
                groups.setdefault(str(path), {})[str(subject)] = samples
    return groups


def numbers(values: Any) -> List[float]:
    if not isinstance(values, Sequence) or isinstance(values, str):
        return []
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def plot_teardown(results: Mapping[str, Any], output: Path = DEFAULT_OUTPUT) -> str:
    """Write the PNG, one panel per path; return one line saying where, or why not."""
    groups = teardown_samples(results)
    if not groups:
        return "plot: no teardown samples in this run (teardown_paths did not run), no picture"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return "plot: matplotlib is not installed (pip install -e '.[plot]'), so no teardown.png"
    columns = 2 if len(groups) > 1 else 1
    rows = (len(groups) + columns - 1) // columns
    figure, panels = plt.subplots(rows, columns, figsize=(7 * columns, 3.6 * rows), squeeze=False)
    try:
        for axes, (path, subjects) in zip(panels.flat, groups.items()):
            for subject, values in subjects.items():
                ordered = sorted(v for v in values if v > 0) or [1e-3]
                fractions = [(rank + 1) / len(ordered) for rank in range(len(ordered))]
                p50 = ordered[(len(ordered) - 1) // 2]
                axes.step(ordered, fractions, where="post", label=f"{subject} (p50 {p50:.2f}, n={len(ordered)})")
            axes.set_xscale("log")
            plain = FuncFormatter(lambda value, _: f"{value:g}")
            axes.xaxis.set_major_formatter(plain)
            axes.xaxis.set_minor_formatter(plain)
            axes.tick_params(axis="x", which="minor", labelsize="x-small")
            axes.set_title(path, fontsize="medium")
            axes.set_xlabel("ms (log scale)")
            axes.set_ylabel("fraction of trials at or below")
            axes.set_ylim(0, 1.02)
            axes.grid(True, which="both", alpha=0.3)
            axes.legend(fontsize="x-small", loc="lower right")
        for axes in list(panels.flat)[len(groups) :]:
            axes.set_visible(False)
        commit = (results.get("machine") or {}).get("duplexthreads_commit") or "?"
        figure.suptitle(f"Teardown latency by exit path, {results.get('mode', '?')} run, commit {str(commit)[:10]}")
        figure.tight_layout()
        output.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(output, dpi=100)
    finally:
        plt.close(figure)
    count = sum(len(subjects) for subjects in groups.values())
    return f"plot: teardown latency distributions ({len(groups)} paths, {count} series) written to {output}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    source = Path(args[0]) if args else DEFAULT_OUTPUT.with_name("latest.json")
    print(plot_teardown(json.loads(source.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
