"""Leak checks for test suites: prove that code leaves no thread, descriptor or memory behind.

:class:`LeakCheck` snapshots the process: its threads (by identity, daemon threads included),
``threading.active_count()``, the OS-level threads in ``/proc/self/task`` (so a thread that a C
extension starts behind ``threading``'s back is caught too), the open file descriptors with what
they point to (sockets, pipes, files) and the resident set size. On exit it waits, against a
deadline, for the process to give back what the block took, and raises :class:`LeakError` naming
each leaked thread with its current stack and each leaked descriptor with its target, with the
thread counts before and after::

    from duplexthreads.testing import LeakCheck

    with LeakCheck(timeout=2.0) as check:
        run_my_client()
    print(check.quiesce_seconds)              # how long the process took to settle

    @LeakCheck(ignore_threads=[r"^pydevd"], ignore_fds=[r"^/dev/shm/"])
    def test_something(): ...

    # A soak test: memory may grow a little, threads and descriptors not at all.
    with LeakCheck(timeout=5.0, max_rss_growth_kib=20_000) as check:
        for _ in range(1000):
            run_my_client()
    print(check.rss_growth_kib)

    # Findings without an exception, for a report or a log:
    check = LeakCheck(timeout=1.0).start()
    run_my_client()
    if not check.verify(raise_error=False):
        print(check.leaked_threads, check.leaked_os_threads, check.leaked_fds)

The wait re-checks whenever a thread ends (it joins the leftover threads with short bounded
joins) instead of sleeping a fixed time, so a clean run returns as soon as it is clean. Where
``/proc`` is absent (not Linux) only ``threading``'s threads are checked.

The pytest plugin
-----------------
Installing duplexthreads registers a pytest plugin. It does nothing until asked. To check every
test of a suite, across its setup, call and teardown::

    pytest --duplexthreads-leak-check                      # once, or in CI
    pytest --duplexthreads-leak-check --duplexthreads-leak-timeout 10

In a CI workflow that is one step, for example in GitHub Actions::

    - run: python -m pytest --duplexthreads-leak-check --duplexthreads-leak-timeout 10

or for good, in ``pytest.ini`` (``[tool:pytest]`` in setup.cfg, ``[tool.pytest.ini_options]`` in
pyproject.toml)::

    [pytest]
    duplexthreads_leak_check = true
    duplexthreads_leak_timeout = 5
    duplexthreads_leak_ignore_threads =
        ^pydevd
    duplexthreads_leak_ignore_fds =
        ^/dev/shm/

``--no-duplexthreads-leak-check`` turns it off again for one run. A test that leaks errors at
teardown with the :class:`LeakError` text, headed by the test's id. What a fixture wider than a
test (module, class, package or session scope) sets up belongs to that fixture, not to the test
that happened to set it up; it must be gone once the fixture is torn down, and the test during
whose teardown that happens reports it. Start lazily created pools (a C library's worker
threads, say) in a session fixture or a ``conftest.py`` so that no single test owns them.
``@pytest.mark.duplexthreads_allow_leaks`` exempts one test.

A slow CI machine can scale the timeout from a ``conftest.py``::

    def pytest_configure(config):
        if config.getoption("duplexthreads_leak_timeout") is None:
            config.option.duplexthreads_leak_timeout = 10.0

The ``leak_check`` fixture works with or without the option: it yields a started
:class:`LeakCheck` (timeout and allow-lists from the options above) and verifies it when the
fixture is torn down. Request it first so that it also covers the other fixtures::

    def test_client_cleans_up(leak_check, echo_server):
        run_my_client(echo_server.url)
        leak_check.max_rss_growth_kib = 5_000    # the check is live: tighten it as you go
"""

from __future__ import annotations

from ._leaks import LeakCheck, LeakError, open_fds, os_threads, rss_kib

__all__ = ["LeakCheck", "LeakError", "open_fds", "os_threads", "rss_kib"]
