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
- A section of this run that could not be imported or did not run to the end (not available,
  failed, timed out) FAILs, one verdict naming the section and why: a check whose figures went
  missing must not pass.
- A baseline metric this run did not produce FAILs when its section ran (the section no longer
  reports it: renamed, or its trials produced nothing); write a new baseline when names change.
  When its section was not selected (``--only``), it is NOT MEASURED and does not fail.

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

#: A section's status in a result document when it ran to the end; anything else is a failure.
SECTION_OK = "ok"


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
    """Verdicts for every section that did not run to the end, every metric of ``results``, then
    the baseline's metrics this run did not produce (see the module docstring)."""
    sections = results.get("sections", {})
    current = metrics_by_name(results)
    previous = metrics_by_name(baseline)
    verdicts = []
    for name, entry in sections.items():
        if entry.get("status") != SECTION_OK:
            lost = [metric for metric in section_metrics(baseline, name) if metric["name"] not in current]
            detail = f"{entry.get('status')}: {error_line(entry.get('error'))}; {len(lost)} baseline metric(s) lost"
            verdicts.append(Verdict(f"section {name}", FAIL, None, None, "", detail))
    verdicts += [judge(metric, previous.get(name), default_tolerance) for name, metric in current.items()]
    for section in baseline.get("sections", {}):
        if section in sections and sections[section].get("status") != SECTION_OK:
            continue  # its own verdict above says what was lost
        for metric in section_metrics(baseline, section):
            if metric["name"] not in current:
                status, detail = (
                    (NOT_MEASURED, "its section was not run")
                    if section not in sections
                    else (FAIL, f"missing: section {section} ran but did not report it")
                )
                verdicts.append(
                    Verdict(metric["name"], status, None, metric.get("value"), metric.get("unit", ""), detail)
                )
    return verdicts


def section_metrics(document: Mapping[str, Any], section: str) -> List[Dict[str, Any]]:
    return list((document.get("sections", {}).get(section) or {}).get("metrics") or [])


def error_line(text: Optional[str]) -> str:
    """The line of an error that says the most (a traceback's last), or "no error text"."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no error text"


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
        lines.append(f"{NOT_MEASURED}: {count} baseline metric(s) {prefix}.* (section not run)")
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
