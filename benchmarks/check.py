"""``--check BASELINE.json``: compare this run's metrics with a saved run, one verdict per metric.

The rule, per :class:`~benchmarks._metrics.Metric` (matched by ``name``):

- A leak metric (``leak=True``) FAILs when its value is above zero, whatever the baseline
  says, and even when the baseline does not have it. Leaks are counts that must be zero.
- Any other metric is compared with the baseline's value of the same name. Its regression is
  how much worse it is, relative to the baseline: ``(value - base) / |base|`` when lower is
  better, ``(base - value) / |base|`` when higher is better (a baseline of 0 makes any worse
  value an infinite regression). It FAILs when the regression exceeds the tolerance: the
  metric's own ``tolerance`` if it sets one (from this run, else from the baseline), otherwise
  the default, 0.35. That default is wide because this machine is shared and noisy (2 cores;
  medians of a few rounds still move by 20%); sections prefer ratios to peers measured in the
  same run, which move far less than absolute rates.
- A value that is not a finite number FAILs.
- A metric the baseline does not have is reported as NEW and does not fail (unless it leaks).
- A baseline metric this run did not produce (its section was skipped with ``--only``, not
  available, or no longer reports it) is reported as NOT MEASURED and does not fail; a section
  that failed makes the run fail on its own.

Everything here is a pure function of the two result documents, so it is unit-tested without
a network (tests/unit/test_benchmark_check.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

DEFAULT_TOLERANCE = 0.35

PASS = "PASS"
FAIL = "FAIL"
NEW = "NEW"
NOT_MEASURED = "NOT MEASURED"


@dataclass(frozen=True)
class Verdict:
    """The outcome for one metric."""

    name: str
    status: str
    value: Optional[float]
    baseline: Optional[float]
    unit: str
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == FAIL


def metrics_by_name(results: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Every metric of a result document (``python -m benchmarks --json``), keyed by name."""
    found: Dict[str, Dict[str, Any]] = {}
    for section in results.get("sections", {}).values():
        for metric in section.get("metrics") or []:
            found[metric["name"]] = metric
    return found


def regression(value: float, base: float, better: str) -> float:
    """How much worse ``value`` is than ``base``, relative to ``base`` (negative: better)."""
    worse_by = value - base if better == "lower" else base - value
    if base == 0:
        return math.inf if worse_by > 0 else 0.0
    return worse_by / abs(base)


def judge(metric: Mapping[str, Any], base: Optional[Mapping[str, Any]], default_tolerance: float) -> Verdict:
    """The verdict for one metric of this run against its baseline (``None``: not in the baseline)."""
    name, unit = metric["name"], metric.get("unit", "")
    value = metric.get("value")
    base_value = None if base is None else base.get("value")

    def verdict(status: str, detail: str) -> Verdict:
        return Verdict(name, status, value, base_value, unit, detail)

    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return verdict(FAIL, f"not a finite number: {value!r}")
    if metric.get("leak"):
        return verdict(FAIL, "leak: must be 0") if value > 0 else verdict(PASS, "leak: 0")
    if base is None:
        return verdict(NEW, "not in the baseline")
    if not isinstance(base_value, (int, float)) or not math.isfinite(base_value):
        return verdict(NEW, f"baseline value is not a finite number: {base_value!r}")
    tolerance = metric.get("tolerance")
    if tolerance is None:
        tolerance = base.get("tolerance")
    if tolerance is None:
        tolerance = default_tolerance
    better = metric.get("better", "lower")
    worse = regression(value, base_value, better)
    change = "better" if worse < 0 else "worse"
    amount = "inf" if math.isinf(worse) else f"{abs(worse):.0%}"
    detail = f"{amount} {change} ({better} is better; tolerance {tolerance:.0%})"
    return verdict(FAIL if worse > tolerance else PASS, detail)


def compare(
    results: Mapping[str, Any], baseline: Mapping[str, Any], default_tolerance: float = DEFAULT_TOLERANCE
) -> List[Verdict]:
    """Verdicts for every metric of ``results``, then NOT MEASURED for the baseline's others."""
    current = metrics_by_name(results)
    previous = metrics_by_name(baseline)
    verdicts = [judge(metric, previous.get(name), default_tolerance) for name, metric in current.items()]
    for name, metric in previous.items():
        if name not in current:
            verdicts.append(
                Verdict(name, NOT_MEASURED, None, metric.get("value"), metric.get("unit", ""), "not measured this run")
            )
    return verdicts


def format_verdicts(verdicts: List[Verdict]) -> str:
    """One line per metric (NOT MEASURED ones summed up per section prefix), then a count of each status."""
    lines = []
    unmeasured: Dict[str, int] = {}
    for v in verdicts:
        if v.status == NOT_MEASURED:
            prefix = v.name.split(".", 1)[0]
            unmeasured[prefix] = unmeasured.get(prefix, 0) + 1
            continue
        now = "-" if v.value is None else f"{v.value:.4g}"
        then = "-" if v.baseline is None else f"{v.baseline:.4g}"
        lines.append(f"{v.status:4} {v.name:64} {now:>10} vs {then:>10} {v.unit:8} {v.detail}")
    for prefix, count in unmeasured.items():
        lines.append(f"{NOT_MEASURED}: {count} baseline metric(s) {prefix}.* (section not run, or no longer reported)")
    counts: Dict[str, int] = {}
    for v in verdicts:
        counts[v.status] = counts.get(v.status, 0) + 1
    lines.append("check: " + ", ".join(f"{count} {status}" for status, count in sorted(counts.items())))
    return "\n".join(lines)


def any_failed(verdicts: List[Verdict]) -> bool:
    return any(v.failed for v in verdicts)


def load(path: str) -> Dict[str, Any]:
    """A result document written by ``--json`` or ``--write-baseline``."""
    document = json.loads(Path(path).read_text())
    if not isinstance(document, dict) or "sections" not in document:
        raise ValueError(f"{path} is not a benchmark result (no 'sections')")
    return document
