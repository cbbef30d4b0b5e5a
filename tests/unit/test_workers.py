"""Extra workers added with Duplex.add_worker: they live and die with the connection."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, List

import pytest

from duplexthreads import ConnectionClosed, Duplex, Reason, TransportError
from duplexthreads.transports import memory_pair

from ..timing import UNIT
from .support import WAIT, MakePair

pytestmark = pytest.mark.timeout(30 * UNIT)


def worker_thread(conn: Duplex, role: str) -> threading.Thread:
    (thread,) = [t for t in conn.threads() if t.name == f"duplexthreads-{conn.id}-{role}"]
    return thread


def assert_all_threads_gone(conn: Duplex) -> None:
    assert not [t.name for t in conn.threads() if t.is_alive()]


def test_worker_runs_in_a_named_thread_and_returning_first_closes_with_1000(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    ran_in: List[str] = []
    given: List[threading.Event] = []

    def job(quit: threading.Event) -> None:
        ran_in.append(threading.current_thread().name)
        given.append(quit)

    conn.add_worker("job", job)
    conn.start()
    report = conn.wait(WAIT)
    assert ran_in == [f"duplexthreads-{conn.id}-job"]
    assert len(given) == 1 and given[0].is_set()  # the quit event it was given, set at teardown
    assert (report.first, report.reason, report.error) == ("job", Reason.WORKER_EXIT, None)
    assert (report.close_code, report.close_reason) == (1000, "")
    assert peer.wait_close_frame() == (1000, "")
    assert not worker_thread(conn, "job").is_alive()
    assert_all_threads_gone(conn)


def test_worker_that_raises_ends_the_connection_with_its_error_and_1011(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    failure = ValueError("job failed")

    def job(quit: threading.Event) -> None:
        raise failure

    conn.add_worker("job", job)
    conn.start()
    report = conn.wait(WAIT)
    assert (report.first, report.reason) == ("job", Reason.WORKER_EXIT)
    assert report.error is failure
    assert report.close_code == 1011 and not report.ok
    assert "job failed" in report.describe()
    assert peer.wait_close_frame()[0] == 1011
    assert_all_threads_gone(conn)


def test_worker_waiting_on_quit_exits_when_the_peer_closes(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    waiting = threading.Event()
    woken: List[bool] = []

    def ticker(quit: threading.Event) -> None:
        waiting.set()
        woken.append(quit.wait(WAIT))

    conn.add_worker("ticker", ticker)
    conn.start()
    assert waiting.wait(WAIT)
    assert worker_thread(conn, "ticker").is_alive()
    peer.close(1000, "bye")
    report = conn.wait(WAIT)
    assert woken == [True]  # woken by quit, not by its own timeout
    assert (report.first, report.reason, report.error) == ("reader", Reason.PEER_CLOSED, None)
    assert report.ok
    assert_all_threads_gone(conn)


def test_worker_waiting_on_quit_exits_on_a_local_close(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    waiting = threading.Event()
    woken: List[bool] = []

    def ticker(quit: threading.Event) -> None:
        waiting.set()
        woken.append(quit.wait(WAIT))

    conn.add_worker("ticker", ticker)
    conn.start()
    assert waiting.wait(WAIT)
    report = conn.close()
    assert report is not None and report.ok and report.reason is Reason.LOCAL_CLOSE
    assert woken == [True]
    assert peer.wait_close_frame() == (1000, "")
    assert_all_threads_gone(conn)


@pytest.mark.parametrize(
    "role, error",
    [
        *((name, ValueError) for name in ["reader", "writer", "owner", "backend", "Bad Name", "", "1st", "x" * 33]),
        (7, TypeError),
        (None, TypeError),
        (b"job", TypeError),
    ],
)
def test_invalid_roles_are_refused(role: Any, error: type) -> None:
    ours, _ = memory_pair()
    conn = Duplex(ours)
    with pytest.raises(error):
        conn.add_worker(role, lambda quit: None)
    conn.abort()  # a connection lives until it is closed, started or not


def test_target_must_be_callable() -> None:
    ours, _ = memory_pair()
    conn = Duplex(ours)
    with pytest.raises(TypeError):
        conn.add_worker("job", "not callable")  # type: ignore[arg-type]
    conn.abort()


def test_duplicate_role_is_refused_and_the_first_target_kept(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    ran: List[str] = []
    conn.add_worker("job", lambda quit: ran.append("first"))
    with pytest.raises(ValueError):
        conn.add_worker("job", lambda quit: ran.append("second"))
    conn.start()
    report = conn.wait(WAIT)
    assert ran == ["first"]
    assert report.first == "job"
    assert peer.wait_close_frame() == (1000, "")


def test_add_worker_after_start_raises(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    conn.start()
    with pytest.raises(RuntimeError):
        conn.add_worker("late", lambda quit: None)
    assert not conn.closed  # the refused worker did not end the connection
    report = conn.close()
    assert report is not None and report.ok
    assert peer.wait_close_frame() == (1000, "")
    assert f"duplexthreads-{conn.id}-late" not in [t.name for t in conn.threads()]


def test_wait_from_a_worker_raises_runtime_error(make_pair: MakePair) -> None:
    conn, _ = make_pair()
    raised: List[BaseException] = []

    def job(quit: threading.Event) -> None:
        try:
            conn.wait(WAIT)
        except RuntimeError as exc:
            raised.append(exc)

    conn.add_worker("job", job)
    conn.start()
    report = conn.wait(WAIT)
    assert len(raised) == 1
    assert report.first == "job" and report.error is None


def test_worker_that_closes_then_returns_completes_the_handshake(make_pair: MakePair) -> None:
    conn, peer = make_pair()
    peer.go_silent()  # the peer answers below, after the worker has returned
    returned: List[Any] = []

    def job(quit: threading.Event) -> None:
        conn.send("last words")
        returned.append(conn.close(1000, "done"))

    conn.add_worker("job", job)
    conn.start()
    frame = peer.wait_close_frame()
    with contextlib.suppress(TransportError):  # our side may be gone already: that is the bug
        peer.close(1000, "done")  # the peer's answer to our close frame
    report = conn.wait(WAIT)
    assert returned == [None]  # from its own thread, close() does not wait
    assert frame == (1000, "done")
    assert peer.received == ["last words"]
    assert (report.reason, report.error, report.close_code) == (Reason.LOCAL_CLOSE, None, 1000)
    assert report.ok


def test_a_callback_failing_on_another_closed_connection_ends_this_one(make_pair: MakePair) -> None:
    # A relay: this connection's callback forwards to another that is already closed.
    other, _other_peer = make_pair()
    other.start()
    other.abort()
    conn, peer = make_pair(on_message=other.send)
    conn.start()
    peer.send("relay me")
    report = conn.wait(WAIT)
    assert report.reason is Reason.READ_ERROR and report.close_code == 1011
    assert isinstance(report.error, ConnectionClosed) and report.error.connection_id == other.id
    assert peer.wait_close_frame()[0] == 1011


def test_a_connection_closed_subclass_that_skips_init_is_the_reported_error(make_pair: MakePair) -> None:
    class Closed(ConnectionClosed):
        def __init__(self) -> None:  # no super().__init__(): no connection_id
            Exception.__init__(self, "mine")

    def on_message(message: object) -> None:
        raise Closed()

    conn, peer = make_pair(on_message=on_message)
    conn.start()
    peer.send("x")
    report = conn.wait(WAIT)
    assert isinstance(report.error, Closed) and report.close_code == 1011
