"""The pytest plugin, seen from a user's suite. Each case writes a small suite and runs pytest on
it in a subprocess (pytester), so the entry point loads the plugin exactly as it does for a user,
and what the inner tests leak dies with that process."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Set

import pytest

from .timing import UNIT

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.timeout(60 * UNIT)

#: The inner suites' leak timeout: how long each leaking inner test waits before it errors.
LEAK_TIMEOUT = f"{0.2 * UNIT:g}"
#: Bound on one inner pytest run.
RUN_TIMEOUT = 30 * UNIT

LEAKY = """
import os
import threading

import pytest

_never = threading.Event()


def forget(name):
    threading.Thread(target=_never.wait, name=name, daemon=True).start()


def test_leaks_a_thread():
    forget("forgotten-in-call")


def test_leaks_an_fd():
    read_end, write_end = os.pipe()
    os.close(write_end)


@pytest.mark.duplexthreads_allow_leaks
def test_allowed_to_leak():
    forget("allowed-to-leak")


@pytest.fixture
def leaves_a_thread_at_teardown():
    yield
    forget("forgotten-in-teardown")


def test_fixture_teardown_leaks(leaves_a_thread_at_teardown):
    pass


def test_clean():
    worker = threading.Thread(target=_never.wait, args=(0,), name="joined")
    worker.start()
    worker.join(5)
"""

#: Every test in LEAKY, for the runs where none of them may fail.
LEAKY_TESTS = 5


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-rA", "-p", "no:cacheprovider", *args, timeout=RUN_TIMEOUT)


def not_passed(result: pytest.RunResult) -> Set[str]:
    """Names of the inner tests that errored or failed, from the -rA short summary."""
    found = set()
    for line in result.outlines:
        match = re.match(r"(?:ERROR|FAILED) \S+::(\w+)", line)
        if match:
            found.add(match.group(1))
    return found


def test_off_unless_asked_a_leaking_test_passes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    result = run(pytester)
    result.assert_outcomes(passed=LEAKY_TESTS)
    assert not_passed(result) == set()


def test_on_each_leaking_test_errors_naming_the_test_and_what_it_left(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    # --strict-markers: the allow marker is registered.
    result = run(
        pytester, "--strict-markers", "--duplexthreads-leak-check", "--duplexthreads-leak-timeout", LEAK_TIMEOUT
    )
    result.assert_outcomes(passed=LEAKY_TESTS, errors=3)
    assert not_passed(result) == {"test_leaks_a_thread", "test_leaks_an_fd", "test_fixture_teardown_leaks"}
    output = result.stdout.str()
    assert "leak in test_leaky.py::test_leaks_a_thread after" in output
    assert "thread 'forgotten-in-call' (daemon=True) still alive at:" in output
    assert re.search(r"leak in test_leaky.py::test_leaks_an_fd after .*\n.*\nfd \d+ -> pipe:\[", output), output
    # A leak made by a fixture's teardown is the test's, too.
    assert "thread 'forgotten-in-teardown'" in output
    assert "threading.active_count(): " in output
    assert "allowed-to-leak" not in output


def test_ini_options_turn_it_on_with_allow_lists_and_the_command_line_turns_it_off(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_leaky=LEAKY)
    pytester.makeini(
        f"""
        [pytest]
        duplexthreads_leak_check = true
        duplexthreads_leak_timeout = {LEAK_TIMEOUT}
        duplexthreads_leak_ignore_threads =
            ^forgotten-in-call$
        duplexthreads_leak_ignore_fds =
            ^pipe:
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=LEAKY_TESTS, errors=1)
    assert not_passed(result) == {"test_fixture_teardown_leaks"}
    result = run(pytester, "--no-duplexthreads-leak-check")
    result.assert_outcomes(passed=LEAKY_TESTS)


def test_leak_check_fixture_works_with_the_option_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_fixture="""
        import threading

        from duplexthreads.testing import LeakCheck

        _never = threading.Event()


        def test_leaks(leak_check):
            assert isinstance(leak_check, LeakCheck)
            threading.Thread(target=_never.wait, name="leaked-under-fixture", daemon=True).start()


        def test_clean(leak_check):
            worker = threading.Thread(target=_never.wait, args=(0,))
            worker.start()
            worker.join(5)
        """
    )
    result = run(pytester, "--duplexthreads-leak-timeout", LEAK_TIMEOUT)
    result.assert_outcomes(passed=2, errors=1)
    assert not_passed(result) == {"test_leaks"}
    assert "thread 'leaked-under-fixture'" in result.stdout.str()


def test_fixtures_wider_than_a_test_own_what_they_set_up(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_tidy_server="""
        import threading

        import pytest


        @pytest.fixture(scope="module")
        def server():
            stop = threading.Event()
            thread = threading.Thread(target=stop.wait, name="tidy-server")
            thread.start()
            yield thread
            stop.set()
            thread.join(5)


        def test_one(server):
            assert server.is_alive()


        def test_two(server):
            assert server.is_alive()
        """,
        test_sloppy_server="""
        import threading

        import pytest

        _never = threading.Event()


        @pytest.fixture(scope="module")
        def sloppy_server():
            thread = threading.Thread(target=_never.wait, name="sloppy-server", daemon=True)
            thread.start()
            yield thread  # and never stopped


        def test_three(sloppy_server):
            assert sloppy_server.is_alive()


        def test_four(sloppy_server):
            assert sloppy_server.is_alive()
        """,
    )
    result = run(pytester, "--duplexthreads-leak-check", "--duplexthreads-leak-timeout", LEAK_TIMEOUT)
    # The module fixtures' threads are not their first test's leak; the sloppy one's thread is a
    # leak of its teardown, reported by the test during whose teardown that ran: the module's last.
    result.assert_outcomes(passed=4, errors=1)
    assert not_passed(result) == {"test_four"}
    output = result.stdout.str()
    assert "leak in the teardown of module-scoped fixture 'sloppy_server' (it must end what it started)" in output
    assert "thread 'sloppy-server'" in output
    assert "tidy-server" not in output


def test_the_marker_is_listed_and_bad_options_are_usage_errors(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--markers")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["@pytest.mark.duplexthreads_allow_leaks: exempt this test*"])
    pytester.makeini("[pytest]\nduplexthreads_leak_timeout = soon\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "duplexthreads_leak_timeout: not a number of seconds: 'soon'" in result.stderr.str()
    pytester.makeini("[pytest]\nduplexthreads_leak_ignore_threads =\n    worker-(\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "duplexthreads_leak_ignore_threads: 'worker-(' is not a regular expression" in result.stderr.str()


def test_importing_the_toolkit_does_not_import_pytest() -> None:
    code = "import sys, duplexthreads.testing; print('pytest' in sys.modules, '_pytest' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=RUN_TIMEOUT, check=True
    )
    assert result.stdout.split() == ["False", "False"]
