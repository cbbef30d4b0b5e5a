"""The duplexthreads pytest plugin: a leak check for every test, a ``leak_check`` fixture.

Registered through the ``pytest11`` entry point, so installing duplexthreads makes it available;
it checks nothing until ``--duplexthreads-leak-check`` or the ``duplexthreads_leak_check`` ini
option asks (see :mod:`duplexthreads.testing` for the user's view).

How one test is checked:

- ``pytest_runtest_setup`` (tryfirst) starts a :class:`LeakCheck` before any fixture is set up.
- A fixture wider than a test that gets set up meanwhile takes its resources out of the check:
  they are the fixture's, not the test's. They must be gone when that fixture is torn down,
  which a check of its own around its teardown proves.
- An autouse fixture of this plugin, the first function-scoped fixture set up and so the last
  torn down, verifies the check: after the test's teardown, and still inside it, so an unclosed
  socket found by the check's garbage collection warns into the same test.
"""

from __future__ import annotations

import functools
import math
import re
from typing import TYPE_CHECKING, Dict, Generator, Iterator, List, Optional, Tuple

import pytest

from ._leaks import LeakCheck, _Resources

if TYPE_CHECKING:
    from _pytest.fixtures import FixtureDef, SubRequest

MARKER = "duplexthreads_allow_leaks"
DEFAULT_TIMEOUT = 2.0


class _Settings:
    """The options, read once: whether every test is checked, and how."""

    def __init__(self, config: pytest.Config) -> None:
        enabled = config.getoption("duplexthreads_leak_check")
        self.enabled = bool(config.getini("duplexthreads_leak_check") if enabled is None else enabled)
        timeout = config.getoption("duplexthreads_leak_timeout")
        if timeout is None:
            text = str(config.getini("duplexthreads_leak_timeout")).strip() or str(DEFAULT_TIMEOUT)
            try:
                timeout = float(text)
            except ValueError:
                raise pytest.UsageError(f"duplexthreads_leak_timeout: not a number of seconds: {text!r}") from None
        if not (math.isfinite(timeout) and timeout >= 0):
            raise pytest.UsageError(f"duplexthreads leak timeout must be finite and >= 0, not {timeout}")
        self.timeout = float(timeout)
        self.ignore_threads = _patterns(config, "duplexthreads_leak_ignore_threads")
        self.ignore_fds = _patterns(config, "duplexthreads_leak_ignore_fds")

    def leak_check(self, label: str) -> LeakCheck:
        return LeakCheck(self.timeout, ignore_threads=self.ignore_threads, ignore_fds=self.ignore_fds, label=label)


def _patterns(config: pytest.Config, name: str) -> Tuple[str, ...]:
    patterns = tuple(config.getini(name))
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise pytest.UsageError(f"{name}: {pattern!r} is not a regular expression: {error}") from None
    return patterns


class _Watch:
    """The plugin's state for one pytest run. Only pytest's main thread touches it."""

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings
        # The test being run, from the start of its setup to the end of its teardown.
        self.item: Optional[pytest.Item] = None
        # That test's check when every test is checked (started in its setup, verified in its teardown).
        self.check: Optional[LeakCheck] = None
        # Every check running for it, that one and any leak_check fixture's: wider fixtures set up
        # meanwhile take their resources out of each.
        self.checks: List[LeakCheck] = []
        # What each live fixture wider than a test set up: it must be gone after its teardown.
        self.owned: Dict[FixtureDef[object], _Resources] = {}
        # Wider fixtures being set up, innermost last: what the fixtures nested in each took.
        self.setting_up: List[List[_Resources]] = []
        # Checks around the teardown of wider fixtures, started just before it.
        self.teardowns: Dict[FixtureDef[object], LeakCheck] = {}

    def checking(self) -> bool:
        """True while the current test (and what is torn down during it) is to be checked."""
        return self.settings.enabled and self.item is not None and self.item.get_closest_marker(MARKER) is None


_WATCH = pytest.StashKey[_Watch]()


def _verify(check: LeakCheck) -> None:
    __tracebackhide__ = True
    if not check.verify(raise_error=False):
        # No traceback: it would show this plugin; the text names the test and what it left.
        pytest.fail(str(check.error()), pytrace=False)


# -- options --------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("duplexthreads", "duplexthreads leak check")
    group.addoption(
        "--duplexthreads-leak-check",
        action="store_true",
        default=None,
        dest="duplexthreads_leak_check",
        help="fail every test that leaves a thread or file descriptor behind (setup, call and teardown).",
    )
    group.addoption(
        "--no-duplexthreads-leak-check",
        action="store_false",
        default=None,
        dest="duplexthreads_leak_check",
        help="do not check every test, whatever the ini file or addopts say.",
    )
    group.addoption(
        "--duplexthreads-leak-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        dest="duplexthreads_leak_timeout",
        help=f"how long a test's threads and descriptors get to go away (default {DEFAULT_TIMEOUT}).",
    )
    parser.addini(
        "duplexthreads_leak_check",
        type="bool",
        default=False,
        help="fail every test that leaves a thread or file descriptor behind.",
    )
    parser.addini(
        "duplexthreads_leak_timeout",
        default=str(DEFAULT_TIMEOUT),
        help="seconds a test's threads and descriptors get to go away.",
    )
    parser.addini(
        "duplexthreads_leak_ignore_threads",
        type="linelist",
        default=[],
        help="regular expressions: threads whose names match are not leaks.",
    )
    parser.addini(
        "duplexthreads_leak_ignore_fds",
        type="linelist",
        default=[],
        help="regular expressions: descriptors whose targets match are not leaks.",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}: exempt this test from the duplexthreads leak check (--duplexthreads-leak-check).",
    )


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    # Read here, after every conftest's pytest_configure had its say on the options.
    session.config.stash[_WATCH] = _Watch(_Settings(session.config))


def _watch(config: pytest.Config) -> _Watch:
    watch = config.stash.get(_WATCH, None)
    if watch is None:  # a test run without a session start (a plugin driving items by hand)
        watch = config.stash[_WATCH] = _Watch(_Settings(config))
    return watch


# -- one test -------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    watch = _watch(item.config)
    watch.item = item
    watch.check = None
    watch.checks = []
    if watch.checking():
        watch.check = watch.settings.leak_check(label=item.nodeid).start()
        watch.checks.append(watch.check)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, object, None]:
    yield
    watch = _watch(item.config)
    watch.item = None
    watch.check = None
    watch.checks = []


@pytest.fixture(autouse=True)
def _duplexthreads_leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """Verifies the test's leak check once every other function-scoped fixture is torn down."""
    watch = _watch(request.config)
    check = watch.check if watch.item is request.node else None
    yield
    if check is not None and check is watch.check:
        watch.check = None
        watch.checks.remove(check)
        _verify(check)


@pytest.fixture
def leak_check(request: pytest.FixtureRequest) -> Iterator[LeakCheck]:
    """A started :class:`~duplexthreads.testing.LeakCheck`, verified when this fixture is torn down.

    Works whether or not ``--duplexthreads-leak-check`` is on, with the timeout and allow-lists
    of the plugin's options. Request it before other fixtures to cover them too.
    """
    watch = _watch(request.config)
    check = watch.settings.leak_check(label=request.node.nodeid).start()
    watch.checks.append(check)
    yield check
    if check in watch.checks:
        watch.checks.remove(check)
    _verify(check)


# -- fixtures wider than a test -------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: FixtureDef[object], request: SubRequest) -> Generator[None, object, None]:
    watch = _watch(request.config)
    if fixturedef.scope == "function" or not (watch.settings.enabled or watch.checks):
        yield
        return
    before = _Resources.current()
    watch.setting_up.append([])
    yield
    nested = watch.setting_up.pop()
    took = _Resources.current().minus(before)
    if watch.setting_up:
        watch.setting_up[-1].append(took)  # the enclosing fixture did not take these itself
    owned = functools.reduce(_Resources.minus, nested, took)
    for check in watch.checks:
        check._allow(owned)
    watch.owned[fixturedef] = owned
    # Registered after the fixture's own teardown, so it runs just before it.
    fixturedef.addfinalizer(functools.partial(_before_teardown, watch, fixturedef))


def _before_teardown(watch: _Watch, fixturedef: FixtureDef[object]) -> None:
    owned = watch.owned.pop(fixturedef, None)
    if owned is None or not watch.checking():
        return
    label = f"the teardown of {fixturedef.scope}-scoped fixture {fixturedef.argname!r} (it must end what it started)"
    check = watch.settings.leak_check(label=label).start()
    check._expect_gone(owned)
    watch.teardowns[fixturedef] = check


def pytest_fixture_post_finalizer(fixturedef: FixtureDef[object], request: SubRequest) -> None:
    check = _watch(request.config).teardowns.pop(fixturedef, None)
    if check is not None:
        _verify(check)
