"""duplexthreads.testing.LeakCheck: it must catch leaked threads and fds, and only those."""

from __future__ import annotations

import _thread
import math
import mmap
import os
import re
import threading
from typing import Iterator, List

import pytest

from duplexthreads import Duplex
from duplexthreads.testing import LeakCheck, LeakError, _leaks, open_fds, os_threads, rss_kib
from duplexthreads.transports import memory_pair

from ..timing import UNIT

pytestmark = pytest.mark.timeout(30 * UNIT)

#: Bound for something that must happen; generous, it is only spent when a test fails.
WAIT = 5 * UNIT
#: The timeout of a check that is expected to fail.
SHORT = 0.05 * UNIT

HAVE_PROC = os.path.isdir("/proc/self/task")
needs_proc = pytest.mark.skipif(not HAVE_PROC, reason="needs Linux /proc")


class Parked:
    """A thread that waits on an event until released, so a test decides when it ends."""

    def __init__(self, name: str) -> None:
        self.release = threading.Event()
        self.thread = threading.Thread(target=self.release.wait, args=(WAIT,), name=name)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        if self.thread.ident is not None:
            self.thread.join(WAIT)
            assert not self.thread.is_alive()


@pytest.fixture
def parked() -> Iterator[List[Parked]]:
    """Parked threads made by a test; released and joined at teardown even if it failed."""
    made: List[Parked] = []
    yield made
    for each in made:
        each.stop()


def park(parked: List[Parked], name: str) -> Parked:
    made = Parked(name)
    parked.append(made)
    return made


def test_names_a_thread_that_outlives_the_block(parked: List[Parked]) -> None:
    leaker = park(parked, "unit-leaky-thread")
    with pytest.raises(LeakError) as leak:
        with LeakCheck(timeout=SHORT):
            leaker.start()
    leaker.stop()
    assert leak.value.threads == (leaker.thread,)
    assert leak.value.fds == {}
    assert "'unit-leaky-thread'" in str(leak.value)
    assert isinstance(leak.value, AssertionError)


def test_passes_for_a_thread_that_ends_within_the_timeout(parked: List[Parked]) -> None:
    worker = park(parked, "unit-short-lived")
    with LeakCheck(timeout=WAIT) as check:
        worker.start()
        worker.release.set()  # it ends soon after; the check waits for it
    assert not worker.thread.is_alive()  # the check returned only once the thread had ended
    assert check.quiesce_seconds is not None and 0 <= check.quiesce_seconds < WAIT


def test_quiesce_seconds_is_set_only_by_a_clean_exit() -> None:
    check = LeakCheck(timeout=WAIT)
    assert check.quiesce_seconds is None
    with check:
        pass
    assert check.quiesce_seconds is not None and check.quiesce_seconds >= 0


def test_threads_alive_before_the_block_are_not_leaks(parked: List[Parked]) -> None:
    earlier = park(parked, "unit-started-before")
    earlier.start()
    with LeakCheck(timeout=SHORT) as check:
        pass
    assert check.quiesce_seconds is not None
    assert earlier.thread.is_alive()


def test_reports_a_leaked_file_descriptor() -> None:
    with pytest.raises(LeakError) as leak:
        with LeakCheck(timeout=SHORT):
            read_end, write_end = os.pipe()
    try:
        assert set(leak.value.fds) == {read_end, write_end}
        assert all(target.startswith("pipe:") for target in leak.value.fds.values())
        assert leak.value.threads == ()
        assert f"fd {read_end} -> pipe:" in str(leak.value)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_descriptor_closed_inside_the_block_is_not_a_leak() -> None:
    before = open_fds()
    with LeakCheck(timeout=WAIT):
        read_end, write_end = os.pipe()
        assert {read_end, write_end} <= set(open_fds())
        os.close(read_end)
        os.close(write_end)
    assert open_fds().keys() == before.keys()


def test_ignore_threads_skips_matching_names(parked: List[Parked]) -> None:
    helper = park(parked, "unit-ignored-helper")
    with LeakCheck(timeout=SHORT, ignore_threads=[r"^unit-ignored-"]) as check:
        helper.start()
    assert helper.thread.is_alive()  # still running, and it did not count
    assert check.quiesce_seconds is not None
    other = park(parked, "unit-not-ignored")
    with pytest.raises(LeakError) as leak:
        with LeakCheck(timeout=SHORT, ignore_threads=[r"^unit-ignored-"]):
            other.start()
    assert leak.value.threads == (other.thread,)


def test_works_as_a_decorator(parked: List[Parked]) -> None:
    leaker = park(parked, "unit-decorated-leak")

    @LeakCheck(timeout=SHORT)
    def leaks() -> None:
        leaker.start()

    @LeakCheck(timeout=SHORT)
    def clean(value: int) -> int:
        """Returns its argument."""
        return value * 2

    assert clean(21) == 42
    assert clean.__name__ == "clean" and clean.__doc__ == "Returns its argument."
    with pytest.raises(LeakError) as leak:
        leaks()
    assert leak.value.threads == (leaker.thread,)


def test_an_error_in_the_block_is_not_masked_by_a_leak(parked: List[Parked]) -> None:
    leaker = park(parked, "unit-leak-during-error")
    with pytest.raises(KeyError):
        with LeakCheck(timeout=SHORT):
            leaker.start()
            raise KeyError("the block's own error")


def test_negative_timeout_is_refused() -> None:
    with pytest.raises(ValueError):
        LeakCheck(timeout=-1)


def test_verify_before_start_is_refused() -> None:
    with pytest.raises(RuntimeError, match="before start"):
        LeakCheck().verify()


def test_reports_thread_counts_before_and_after(parked: List[Parked]) -> None:
    leaker = park(parked, "unit-counted-leak")
    with pytest.raises(LeakError) as leak:
        with LeakCheck(timeout=SHORT) as check:
            leaker.start()
    assert check.active_count_before is not None and check.active_count_after is not None
    assert check.active_count_after == check.active_count_before + 1
    message = str(leak.value)
    assert f"threading.active_count(): {check.active_count_before} before, {check.active_count_after} after" in message
    if HAVE_PROC:
        assert check.os_thread_count_before is not None and check.os_thread_count_after is not None
        assert check.os_thread_count_after == check.os_thread_count_before + 1
        assert f"OS threads: {check.os_thread_count_before} before, {check.os_thread_count_after} after" in message
        assert leaker.thread.native_id in os_threads()
    assert check.leaked_os_threads == {}  # a threading.Thread is reported as one, not twice


@needs_proc
def test_catches_an_os_thread_that_threading_does_not_know() -> None:
    started = threading.Event()
    release = threading.Event()
    tids: List[int] = []

    def body() -> None:  # started with _thread, as a C extension would: threading never hears of it
        tids.append(threading.get_native_id())
        started.set()
        release.wait(WAIT)

    # threading cannot join this thread: this check, started first, waits for it to be gone.
    settled = LeakCheck(timeout=WAIT).start()
    try:
        with pytest.raises(LeakError) as leak:
            with LeakCheck(timeout=SHORT) as check:
                _thread.start_new_thread(body, ())
                assert started.wait(WAIT)
    finally:
        release.set()
    assert settled.verify()
    assert list(leak.value.os_threads) == tids == list(check.leaked_os_threads)
    assert leak.value.threads == ()
    assert f"OS thread {tids[0]} " in str(leak.value)
    assert "not started through threading" in str(leak.value)
    assert check.active_count_after == check.active_count_before
    assert check.os_thread_count_before is not None
    assert check.os_thread_count_after == check.os_thread_count_before + 1


@needs_proc
def test_check_os_threads_false_leaves_them_alone() -> None:
    started = threading.Event()
    release = threading.Event()

    def body() -> None:
        started.set()
        release.wait(WAIT)

    settled = LeakCheck(timeout=WAIT).start()
    try:
        with LeakCheck(timeout=SHORT, check_os_threads=False) as check:
            _thread.start_new_thread(body, ())
            assert started.wait(WAIT)
    finally:
        release.set()
    assert settled.verify()
    assert check.quiesce_seconds is not None and check.leaked_os_threads == {}


@needs_proc
def test_rss_growth_is_recorded_and_limited() -> None:
    with LeakCheck(timeout=WAIT) as check:
        pass
    assert isinstance(check.rss_growth_kib, int)
    size_kib = 32 * 1024
    with pytest.raises(LeakError) as leak:
        with LeakCheck(timeout=SHORT, max_rss_growth_kib=size_kib // 4) as check:
            # Fresh pages from the kernel, written so they are resident: a bytes object could
            # reuse heap pages that earlier tests freed but malloc kept, and not grow RSS at all.
            ballast = mmap.mmap(-1, size_kib * 1024)
            ballast.write(b"\x01" * (size_kib * 1024))
    ballast.close()
    assert check.rss_growth_kib is not None and check.rss_growth_kib >= size_kib // 2
    assert leak.value.rss_growth_kib == check.rss_growth_kib
    assert f"RSS grew {check.rss_growth_kib} KiB (limit {size_kib // 4} KiB)" in str(leak.value)
    assert leak.value.threads == () and leak.value.fds == {}
    with LeakCheck(timeout=WAIT, max_rss_growth_kib=size_kib) as check:
        pass  # within the limit
    assert check.quiesce_seconds is not None
    current = rss_kib()
    assert current is not None and current > 0


def test_negative_rss_limit_is_refused() -> None:
    with pytest.raises(ValueError):
        LeakCheck(max_rss_growth_kib=-1)


def test_ignore_fds_skips_matching_targets() -> None:
    opened: List[int] = []
    try:
        with LeakCheck(timeout=SHORT, ignore_fds=[r"^pipe:"]) as check:
            opened.extend(os.pipe())
        assert check.quiesce_seconds is not None
        with pytest.raises(LeakError) as leak:
            with LeakCheck(timeout=SHORT, ignore_fds=[r"^socket:"]):
                opened.extend(os.pipe())
        assert list(leak.value.fds) == opened[2:]
    finally:
        for fd in opened:
            os.close(fd)


def test_raise_error_false_keeps_the_findings_on_the_check(parked: List[Parked]) -> None:
    leaker = park(parked, "unit-quiet-leak")
    check = LeakCheck(timeout=SHORT).start()
    leaker.start()
    read_end, write_end = os.pipe()
    try:
        assert check.verify(raise_error=False) is False
        assert check.leaked_threads == (leaker.thread,)
        assert check.leaked_fds.keys() == {read_end, write_end}
        assert check.quiesce_seconds is None
        error = check.error()
        assert error.threads == (leaker.thread,) and error.fds == check.leaked_fds
        assert "'unit-quiet-leak'" in str(error)
    finally:
        os.close(read_end)
        os.close(write_end)
    leaker.stop()
    assert check.verify(raise_error=False) is True  # the same check, once the process settled
    assert check.leaked_threads == () and check.leaked_fds == {}
    assert check.quiesce_seconds is not None


def test_a_block_that_raises_keeps_the_findings_too(parked: List[Parked]) -> None:
    leaker = park(parked, "unit-leak-with-error")
    with pytest.raises(KeyError):
        with LeakCheck(timeout=SHORT) as check:
            leaker.start()
            raise KeyError("the block's own error")
    assert check.leaked_threads == (leaker.thread,)


def test_the_decorator_names_the_function_in_the_report(parked: List[Parked]) -> None:
    leaker = park(parked, "unit-labelled-leak")

    @LeakCheck(timeout=SHORT)
    def leaks_politely() -> None:
        leaker.start()

    with pytest.raises(LeakError, match=r"^leak in .*leaks_politely after "):
        leaks_politely()


def test_without_proc_only_threading_is_checked(monkeypatch: pytest.MonkeyPatch, parked: List[Parked]) -> None:
    for name in ["_FD_DIR", "_TASK_DIR", "_STATUS_FILE"]:
        monkeypatch.setattr(_leaks, name, "/nonexistent/duplexthreads-test")
    assert open_fds() == {} and os_threads() == {} and rss_kib() is None
    with LeakCheck(timeout=WAIT, max_rss_growth_kib=0) as check:
        read_end, write_end = os.pipe()  # invisible without /proc
    os.close(read_end)
    os.close(write_end)
    assert check.quiesce_seconds is not None
    assert check.rss_growth_kib is None and check.os_thread_count_before is None
    leaker = park(parked, "unit-leak-without-proc")
    with pytest.raises(LeakError) as leak:
        with LeakCheck(timeout=SHORT):
            leaker.start()
    assert leak.value.threads == (leaker.thread,)
    assert "OS threads: unknown (no /proc)" in str(leak.value)


def test_the_report_names_an_open_connection_and_where_it_was_opened() -> None:
    """A connection lives until it is closed, even with nothing referencing it: dropping it
    leaks its threads and socket, and the leak report says which connection and where."""
    check = LeakCheck(timeout=0.05).start()
    ours, theirs = memory_pair()
    conn = Duplex(ours).start()  # opened here, on this line
    opened_line = conn.opened_at[0]
    try:
        assert not check.verify(raise_error=False)
        assert len(check.leaked_connections) == 1
        message = str(check.error())
        assert f"duplexthreads connection {conn.id} (memory) is still open (open)" in message
        assert opened_line[0] == __file__ and opened_line[2] == (
            "test_the_report_names_an_open_connection_and_where_it_was_opened"
        )
        assert f"{__file__}:{opened_line[1]}" in message
    finally:
        conn.abort()
        theirs.close()
    assert check.verify(raise_error=False) and check.leaked_connections == ()


# -- the arguments, checked at the call ------------------------------------------------------------


@pytest.mark.parametrize("name", ["ignore_threads", "ignore_fds"])
@pytest.mark.parametrize("patterns", ["^pydevd", b"^pydevd", "", bytearray(b"x")])
def test_one_pattern_given_as_a_str_is_refused(name: str, patterns: object) -> None:
    """Iterated, a str is one pattern per character; "^pydevd" then ignored every thread name
    holding a 'd', an 'e' or a 'p', and any descriptor: the check passed leaky code."""
    with pytest.raises(TypeError, match=name):
        LeakCheck(timeout=SHORT, **{name: patterns})  # type: ignore[arg-type]


def test_a_str_pattern_no_longer_lets_a_leak_pass(parked: List[Parked]) -> None:
    leaker = park(parked, "unit-leak-despite-the-pattern")  # holds 'e', 'p' and 'd'
    with pytest.raises(TypeError, match=r"ignore_threads.*\['\^pydevd'\]"):
        with LeakCheck(timeout=SHORT, ignore_threads="^pydevd"):  # type: ignore[arg-type]
            leaker.start()
    assert leaker.thread.ident is None  # refused before the block ran
    with pytest.raises(LeakError) as leak:
        with LeakCheck(timeout=SHORT, ignore_threads=["^pydevd"]):
            leaker.start()
    assert leak.value.threads == (leaker.thread,)
    opened: List[int] = []
    try:
        with pytest.raises(LeakError) as leak:
            with LeakCheck(timeout=SHORT, ignore_fds=("^/dev/shm/",)):
                opened.extend(os.pipe())
        assert list(leak.value.fds) == opened
    finally:
        for fd in opened:
            os.close(fd)


@pytest.mark.parametrize(
    ("name", "patterns", "error"),
    [
        ("ignore_threads", ["("], ValueError),  # not a regular expression
        ("ignore_fds", ["[a-"], ValueError),
        ("ignore_threads", [5], TypeError),
        ("ignore_fds", [b"^pipe:"], TypeError),  # a bytes pattern never matches a str
        ("ignore_fds", [None], TypeError),
        ("ignore_threads", None, TypeError),
        ("ignore_fds", 5, TypeError),
    ],
)
def test_bad_patterns_are_refused_with_the_argument_named(name: str, patterns: object, error: type) -> None:
    with pytest.raises(error, match=name):
        LeakCheck(**{name: patterns})  # type: ignore[arg-type]


def test_compiled_patterns_are_taken_as_they_are() -> None:
    compiled = re.compile("^x", re.IGNORECASE)
    check = LeakCheck(ignore_threads=[compiled, "^y"])
    assert check.ignore_threads[0] is compiled and check.ignore_threads[1].pattern == "^y"


def test_patterns_may_come_in_any_iterable() -> None:
    check = LeakCheck(ignore_threads=(p for p in ["^a", "b$"]), ignore_fds=("^pipe:",))
    assert [p.pattern for p in check.ignore_threads] == ["^a", "b$"]
    assert [p.pattern for p in check.ignore_fds] == ["^pipe:"]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (None, TypeError),
        ("2", TypeError),
        (True, TypeError),
        ([1], TypeError),
        (math.nan, ValueError),  # verify() failed with an unrelated error, or passed at once
        (-1, ValueError),
        (-0.001, ValueError),
        (math.inf, ValueError),
    ],
)
def test_a_bad_timeout_is_refused_at_the_call(value: object, error: type) -> None:
    with pytest.raises(error, match="timeout"):
        LeakCheck(timeout=value)  # type: ignore[arg-type]
    check = LeakCheck()
    with pytest.raises(error, match="timeout"):
        check.timeout = value  # type: ignore[assignment]
    assert check.timeout == 2.0


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("5", TypeError),
        (True, TypeError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (-1, ValueError),
    ],
)
def test_a_bad_rss_limit_is_refused_when_given_or_set(value: object, error: type) -> None:
    with pytest.raises(error, match="max_rss_growth_kib"):
        LeakCheck(max_rss_growth_kib=value)  # type: ignore[arg-type]
    check = LeakCheck(max_rss_growth_kib=100)
    with pytest.raises(error, match="max_rss_growth_kib"):
        check.max_rss_growth_kib = value  # type: ignore[assignment]
    assert check.max_rss_growth_kib == 100


def test_good_limits_are_taken() -> None:
    check = LeakCheck(timeout=0, max_rss_growth_kib=0)
    assert (check.timeout, check.max_rss_growth_kib) == (0, 0)
    check.timeout, check.max_rss_growth_kib = 1.5, 2_000.5
    assert (check.timeout, check.max_rss_growth_kib) == (1.5, 2_000.5)
    check.max_rss_growth_kib = None
    assert check.max_rss_growth_kib is None


@pytest.mark.parametrize("name", ["check_fds", "check_os_threads", "collect"])
@pytest.mark.parametrize("value", ["no", None, 0])
def test_the_switches_are_true_or_false(name: str, value: object) -> None:
    with pytest.raises(TypeError, match=name):
        LeakCheck(**{name: value})  # type: ignore[arg-type]


def test_the_label_is_a_str() -> None:
    with pytest.raises(TypeError, match="label"):
        LeakCheck(label=5)  # type: ignore[arg-type]
