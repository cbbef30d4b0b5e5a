"""duplexthreads.testing.LeakCheck: it must catch leaked threads and fds, and only those."""

from __future__ import annotations

import os
import threading
from typing import Iterator, List

import pytest

from duplexthreads.testing import LeakCheck, LeakError, open_fds

from ..timing import UNIT

pytestmark = pytest.mark.timeout(30 * UNIT)

#: Bound for something that must happen; generous, it is only spent when a test fails.
WAIT = 5 * UNIT
#: The timeout of a check that is expected to fail.
SHORT = 0.05 * UNIT


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
