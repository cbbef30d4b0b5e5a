"""The one deadline helper: a timeout turned into a point in time, and the time left until it.

A deadline is a ``time.monotonic()`` value, or ``None`` for no limit. Steps that share one
budget (a close: flush, close frame, the peer's answer, teardown) spend one deadline between
them instead of each getting the whole timeout again.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

__all__ = ["deadline_after", "earliest", "remaining", "timeout_arg"]


def deadline_after(timeout: Optional[float]) -> Optional[float]:
    """The moment ``timeout`` seconds from now; None (no limit) stays None."""
    return None if timeout is None else time.monotonic() + timeout


def earliest(*deadlines: Optional[float]) -> Optional[float]:
    """The first of ``deadlines`` to come; None (no limit) only if every one is None."""
    limits = [deadline for deadline in deadlines if deadline is not None]
    return min(limits) if limits else None


def remaining(deadline: Optional[float]) -> Optional[float]:
    """Seconds left until ``deadline``, never negative; None means no limit."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def timeout_arg(value: Optional[float], name: str) -> Optional[float]:
    """A timeout argument checked: seconds >= 0, or None for no limit.

    Values beyond what threading can wait for (``threading.TIMEOUT_MAX``, about 292 years),
    infinity included, also mean no limit, instead of failing deep inside a wait.
    """
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    if not value >= 0:  # also catches NaN
        raise ValueError(f"{name} must be a number of seconds >= 0, or None, not {value!r}")
    if value >= threading.TIMEOUT_MAX:
        return None
    return float(value)
