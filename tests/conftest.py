"""Suite-wide guards: every test fails on a leaked thread or fd, an unclosed socket
(ResourceWarning is an error, see setup.cfg) or an exception raised in a thread.

The leak check is duplexthreads' own pytest plugin, turned on by ``addopts`` in setup.cfg; it
covers the setup, call and teardown of each test."""

from __future__ import annotations

import gc
from typing import Iterator

import pytest

from duplexthreads.testing import ScriptedPeer

from .timing import UNIT


def pytest_configure(config: pytest.Config) -> None:
    # The leak check's wait is a bound like any other: it scales with the suite's time unit,
    # unless the command line gives one.
    if config.getoption("duplexthreads_leak_timeout", None) is None:
        config.option.duplexthreads_leak_timeout = 3 * UNIT


def pytest_collection_finish(session: pytest.Session) -> None:
    # Each test's leak check runs a full garbage collection. Freezing what collection built
    # (modules, test items) leaves each collection only what the tests made: a few seconds a run.
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def scripted_server() -> Iterator[ScriptedPeer]:
    """One scripted peer (in a child process) that the client kinds of the conformance suite
    connect to; each test claims its own connection of it."""
    with ScriptedPeer(timeout=10 * UNIT) as peer:
        yield peer
