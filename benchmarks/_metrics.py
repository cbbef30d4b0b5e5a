"""What every benchmark section reports, so that ``--check`` can compare runs.

A section module (``benchmarks/<name>.py``) exposes:

    NAME: str                                        short id, also the JSON key
    def measure(quick: bool, cap_seconds: float) -> Dict[str, Any]
        run the section, bounded by cap_seconds of wall time, leaving no thread, fd or
        process behind; returns JSON-serialisable figures
    def format_table(result: Dict[str, Any]) -> str  the human-readable table
    def metrics(result: Dict[str, Any]) -> List[Metric]  the figures --check compares

The runner adds ``result["leftover"]`` (what the section left behind, see ``_trials.py``) and
the two leak metrics of :func:`leftover_metrics` to every section.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional


@dataclass(frozen=True)
class Metric:
    """One figure that a later run can be checked against."""

    #: Unique, stable name, e.g. "teardown_paths.websocket-client.abort.p99_ms".
    name: str
    value: float
    unit: str
    #: "lower" or "higher": which direction is an improvement.
    better: str
    #: A leak count: any value above zero fails --check, whatever the baseline says.
    leak: bool = False
    #: Allowed relative regression against the baseline (0.25 = 25% worse); None: use the
    #: checker's default. Ratios to peers measured in the same run are the steadiest figures.
    tolerance: Optional[float] = None

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


def leftover_metrics(section: str, result: Dict[str, Any]) -> List[Metric]:
    """Threads and fds the section left behind: both must be 0."""
    left = result.get("leftover") or {}
    return [
        Metric(f"{section}.leftover_threads", len(left.get("threads") or []), "threads", "lower", leak=True),
        Metric(f"{section}.leftover_fds", len(left.get("fds") or []), "fds", "lower", leak=True),
    ]
