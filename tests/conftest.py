"""Suite-wide guards: every test fails on a leaked thread or fd, an unclosed socket
(ResourceWarning is an error, see setup.cfg) or an exception raised in a thread."""

from __future__ import annotations

from typing import Iterator

import pytest

from duplexthreads.testing import LeakCheck

from .timing import UNIT


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Autouse, set up first and torn down last: covers setup, call and teardown of each test."""
    with LeakCheck(timeout=3 * UNIT):
        yield
