"""The comparison rule of ``python -m benchmarks --check`` (benchmarks/check.py): pure functions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from benchmarks import check
from benchmarks._metrics import Metric


def doc(*metrics: Metric, section: str = "s") -> Dict[str, Any]:
    return {"sections": {section: {"status": "ok", "metrics": [m.to_json() for m in metrics]}}}


def one(metric: Metric, base: Optional[Metric], tolerance: float = 0.35) -> check.Verdict:
    return check.judge(metric.to_json(), None if base is None else base.to_json(), tolerance)


def statuses(verdicts: List[check.Verdict]) -> Dict[str, str]:
    return {v.name: v.status for v in verdicts}


def test_lower_is_better_within_and_beyond_tolerance() -> None:
    base = Metric("t.ms", 10.0, "ms", "lower")
    assert one(Metric("t.ms", 13.4, "ms", "lower"), base).status == check.PASS
    assert one(Metric("t.ms", 13.6, "ms", "lower"), base).status == check.FAIL
    assert one(Metric("t.ms", 2.0, "ms", "lower"), base).status == check.PASS


def test_higher_is_better_within_and_beyond_tolerance() -> None:
    base = Metric("r", 2.0, "x", "higher")
    assert one(Metric("r", 1.31, "x", "higher"), base).status == check.PASS
    assert one(Metric("r", 1.29, "x", "higher"), base).status == check.FAIL
    assert one(Metric("r", 9.0, "x", "higher"), base).status == check.PASS


def test_metric_tolerance_overrides_the_default_and_falls_back_to_the_baselines() -> None:
    base = Metric("t", 10.0, "ms", "lower")
    assert one(Metric("t", 11.0, "ms", "lower", tolerance=0.05), base).status == check.FAIL
    assert one(Metric("t", 11.0, "ms", "lower"), Metric("t", 10.0, "ms", "lower", tolerance=0.05)).status == check.FAIL
    assert one(Metric("t", 11.0, "ms", "lower"), base, tolerance=0.5).status == check.PASS


def test_zero_baseline_any_worse_value_fails() -> None:
    base = Metric("w", 0.0, "/s", "lower", tolerance=0.0)
    assert one(Metric("w", 0.0, "/s", "lower", tolerance=0.0), base).status == check.PASS
    verdict = one(Metric("w", 0.01, "/s", "lower", tolerance=0.0), base)
    assert verdict.status == check.FAIL
    assert "inf" in verdict.detail


def test_leak_fails_above_zero_whatever_the_baseline() -> None:
    leaked = Metric("threads", 1, "threads", "lower", leak=True)
    assert one(leaked, Metric("threads", 5, "threads", "lower", leak=True)).status == check.FAIL
    assert one(leaked, None).status == check.FAIL
    assert one(Metric("threads", 0, "threads", "lower", leak=True), None).status == check.PASS


def test_not_a_number_fails() -> None:
    base = Metric("t", 1.0, "ms", "lower")
    assert one(Metric("t", math.nan, "ms", "lower"), base).status == check.FAIL
    assert check.judge({"name": "t", "value": None, "better": "lower"}, base.to_json(), 0.35).status == check.FAIL


def test_compare_reports_new_and_not_measured_without_failing() -> None:
    baseline = doc(Metric("kept", 1.0, "x", "higher"), Metric("gone", 1.0, "x", "higher"))
    current = doc(Metric("kept", 1.0, "x", "higher"), Metric("fresh", 1.0, "x", "higher"))
    verdicts = check.compare(current, baseline)
    assert statuses(verdicts) == {"kept": check.PASS, "fresh": check.NEW, "gone": check.NOT_MEASURED}
    assert not check.any_failed(verdicts)


def test_compare_matches_by_name_across_sections() -> None:
    baseline = doc(Metric("a.b", 10.0, "ms", "lower"), section="one")
    current = doc(Metric("a.b", 20.0, "ms", "lower"), section="two")
    verdicts = check.compare(current, baseline)
    assert statuses(verdicts) == {"a.b": check.FAIL}
    assert check.any_failed(verdicts)


def test_format_verdicts_has_a_line_per_metric_and_a_summary() -> None:
    verdicts = check.compare(doc(Metric("x", 1.0, "ms", "lower")), doc(Metric("x", 1.0, "ms", "lower")))
    text = check.format_verdicts(verdicts)
    assert text.splitlines()[0].startswith("PASS")
    assert text.splitlines()[-1] == "check: 1 PASS"


def test_load_rejects_other_json(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"x": 1}))
    with pytest.raises(ValueError):
        check.load(str(path))
    path.write_text(json.dumps(doc(Metric("x", 1.0, "ms", "lower"))))
    assert "sections" in check.load(str(path))


def test_format_verdicts_sums_up_what_was_not_measured() -> None:
    baseline = doc(Metric("soak.a", 1.0, "x", "higher"), Metric("soak.b", 1.0, "x", "higher"))
    text = check.format_verdicts(check.compare(doc(), baseline))
    assert "2 baseline metric(s) soak.*" in text
    assert text.splitlines()[-1] == "check: 2 NOT MEASURED"
