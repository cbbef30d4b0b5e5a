"""The plugin's leak timeout is checked when the options are read, as a usage error."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import pytest

from duplexthreads.testing._pytest_plugin import _Settings

from ..timing import UNIT

pytestmark = pytest.mark.timeout(10 * UNIT)


class _Config:
    """What ``_Settings`` reads of a pytest config: the command line, then the ini file."""

    def __init__(self, option: Optional[float], ini: str = "") -> None:
        self._options: Dict[str, Any] = {"duplexthreads_leak_check": None, "duplexthreads_leak_timeout": option}
        self._ini: Dict[str, Any] = {
            "duplexthreads_leak_check": False,
            "duplexthreads_leak_timeout": ini,
            "duplexthreads_leak_ignore_threads": [],
            "duplexthreads_leak_ignore_fds": [],
        }

    def getoption(self, name: str) -> Any:
        return self._options[name]

    def getini(self, name: str) -> Any:
        return self._ini[name]


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_a_leak_timeout_that_cannot_bound_a_wait_is_a_usage_error(value: float) -> None:
    with pytest.raises(pytest.UsageError, match="leak timeout"):
        _Settings(_Config(value))  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["nan", "inf", "-2"])
def test_the_same_from_the_ini_file(text: str) -> None:
    with pytest.raises(pytest.UsageError, match="leak timeout"):
        _Settings(_Config(None, text))  # type: ignore[arg-type]


def test_a_good_leak_timeout_is_taken() -> None:
    settings = _Settings(_Config(None, "0"))  # type: ignore[arg-type]
    assert settings.timeout == 0.0 and settings.leak_check("label").timeout == 0.0
    assert _Settings(_Config(2.5)).timeout == 2.5  # type: ignore[arg-type]
