"""The comparison rule of ``python -m benchmarks --check`` (benchmarks/check.py): pure functions,
and the runner's exit status when a section cannot be imported (no section is run)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

import benchmarks.__main__ as runner
from benchmarks import check
from benchmarks._metrics import Metric


def doc(*metrics: Metric, section: str = "s", status: str = "ok") -> Dict[str, Any]:
    entry: Dict[str, Any] = {"status": status, "metrics": [m.to_json() for m in metrics]}
    if status != "ok":
        entry.update(metrics=None, error="Traceback (most recent call last):\nRuntimeError: boom")
    return {"sections": {section: entry}}


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


def test_compare_reports_new_and_passes_what_a_section_not_run_would_have_measured() -> None:
    baseline = doc(Metric("kept", 1.0, "x", "higher"))
    baseline["sections"].update(doc(Metric("other.x", 1.0, "x", "higher"), section="other")["sections"])
    current = doc(Metric("kept", 1.0, "x", "higher"), Metric("fresh", 1.0, "x", "higher"))
    verdicts = check.compare(current, baseline)
    assert statuses(verdicts) == {"kept": check.PASS, "fresh": check.NEW, "other.x": check.NOT_MEASURED}
    assert not check.any_failed(verdicts)


def test_compare_fails_a_baseline_metric_that_a_section_which_ran_no_longer_reports() -> None:
    baseline = doc(Metric("kept", 1.0, "x", "higher"), Metric("gone", 1.0, "x", "higher"))
    verdicts = check.compare(doc(Metric("kept", 1.0, "x", "higher")), baseline)
    assert statuses(verdicts) == {"kept": check.PASS, "gone": check.FAIL}
    assert "did not report it" in next(v.detail for v in verdicts if v.name == "gone")


@pytest.mark.parametrize("status", ["failed", "timed out", "not available"])
def test_compare_fails_a_section_that_did_not_run_to_the_end(status: str) -> None:
    baseline = doc(Metric("s.a", 1.0, "x", "higher"), Metric("s.b", 1.0, "x", "higher"))
    verdicts = check.compare(doc(status=status), baseline)
    assert statuses(verdicts) == {"section s": check.FAIL}
    assert verdicts[0].detail == f"{status}: RuntimeError: boom; 2 baseline metric(s) lost"
    assert check.any_failed(verdicts)


def test_check_exits_nonzero_when_a_section_fails_to_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The regression check that could not fail: a broken section used to come out NOT MEASURED."""
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(doc(Metric("naive.leak_detected", 1.0, "bool", "higher"), section="naive")))
    monkeypatch.setattr(runner, "load_section", lambda name: "import failed: SyntaxError('bogus')")
    argv = ["--only", "naive", "--check", str(baseline), "--json", str(tmp_path / "run.json"), "--no-plot"]
    assert runner.main(argv) == 1
    out = capsys.readouterr().out
    assert "FAIL section naive" in out
    assert "not available: import failed: SyntaxError('bogus'); 1 baseline metric(s) lost" in out
    assert runner.main(argv[:2] + argv[4:]) == 0  # without --check a section not available is only reported


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
    baseline = doc(Metric("soak.a", 1.0, "x", "higher"), Metric("soak.b", 1.0, "x", "higher"), section="soak")
    text = check.format_verdicts(check.compare(doc(), baseline))
    assert "2 baseline metric(s) soak.*" in text
    assert text.splitlines()[-1] == "check: 2 NOT MEASURED"
