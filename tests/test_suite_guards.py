"""The suite's guards work: a test that leaks a thread, a socket or a file descriptor, or lets a
thread raise, fails. Each bad test in tests/guards/ runs in its own pytest subprocess, with the
suite's own configuration (setup.cfg, tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from .timing import UNIT

pytestmark = pytest.mark.timeout(60 * UNIT)

GUARDS = Path(__file__).parent / "guards"
ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize(
    ("module", "evidence"),
    [
        (
            "leaks_a_thread.py",
            ["leak in tests/guards/leaks_a_thread.py::test_leaks_a_thread after", "thread 'forgotten-worker'"],
        ),
        ("leaks_a_socket.py", ["ResourceWarning"]),
        ("leaks_an_fd.py", ["leak in tests/guards/leaks_an_fd.py::test_leaks_an_fd after", " -> pipe:["]),
        ("raises_in_a_thread.py", ["boom in a thread"]),
    ],
)
def test_the_guard_fails_the_bad_test(module: str, evidence: List[str]) -> None:
    env = dict(os.environ, DUPLEXTHREADS_TEST_TIME_UNIT="0.2")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(GUARDS / module)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=50 * UNIT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    for text in evidence:
        assert text in output, output
