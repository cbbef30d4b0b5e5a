"""Liveness on the memory transport: the heartbeat, ping() and latency, and the write deadline.

Every timer here is short (tens of milliseconds) and every assertion about time has two sides:
never before the timer can have run out, and within a bound that is only spent on failure.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, List, Tuple

import pytest

import duplexthreads
from duplexthreads import ConnectionClosed, Duplex, HeartbeatTimeout, Reason, UsageError, WriteTimeout
from duplexthreads._heartbeat import Pings
from duplexthreads.testing import MemoryPeer

from .support import SHORT, WAIT, MakePair, memory_transport

INTERVAL = 0.05
TIMEOUT = 0.1


class Spy:
    """Wraps a transport method or callback: records each call's first argument and signals it."""

    def __init__(self, wrapped: Callable[..., Any]) -> None:
        self.wrapped = wrapped
        self.calls: List[Tuple[float, Any]] = []
        self.cond = threading.Condition()

    def __call__(self, first: Any, *rest: Any) -> Any:
        with self.cond:
            self.calls.append((time.monotonic(), first))
            self.cond.notify_all()
        return self.wrapped(first, *rest)

    def wait_calls(self, count: int, timeout: float = WAIT) -> List[Tuple[float, Any]]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.calls) >= count, timeout):
                raise AssertionError(f"{len(self.calls)} calls within {timeout} s, wanted {count}")
            return list(self.calls)


def spy_on_pings(conn: Duplex) -> Spy:
    transport = memory_transport(conn)
    spy = Spy(transport.send_ping)
    transport.send_ping = spy  # type: ignore[method-assign]
    return spy


def spy_on_pongs(conn: Duplex) -> Spy:
    transport = memory_transport(conn)
    assert transport.on_pong is not None
    spy = Spy(transport.on_pong)
    transport.on_pong = spy
    return spy


# -- the heartbeat ---------------------------------------------------------------------------------


def test_the_heartbeat_pings_at_its_interval_and_measures_the_round_trip(make_pair: MakePair) -> None:
    conn, _peer = make_pair(ping_interval=INTERVAL, ping_timeout=WAIT)
    pings = spy_on_pings(conn)
    pongs = spy_on_pongs(conn)
    started = time.monotonic()
    conn.start()
    sent = pings.wait_calls(3)
    pongs.wait_calls(1)
    # Never early: each ping comes at least one interval after the one before (or the start).
    times = [started] + [at for at, _ in sent[:3]]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert all(gap >= INTERVAL * 0.95 for gap in gaps), gaps
    assert len({payload for _, payload in sent}) == len(sent)  # every ping has its own payload
    assert conn.latency is not None and 0 <= conn.latency < WAIT
    report = conn.close()
    assert report is not None and report.ok
    assert not [t.name for t in conn.threads() if t.is_alive()]


def test_a_silent_peer_is_detected_within_interval_plus_timeout(make_pair: MakePair) -> None:
    conn, peer = make_pair(ping_interval=INTERVAL, ping_timeout=TIMEOUT)
    peer.go_silent()
    started = time.monotonic()
    conn.start()
    report = conn.wait(WAIT)
    elapsed = time.monotonic() - started
    assert report.reason is Reason.HEARTBEAT_TIMEOUT and report.first == "heartbeat"
    assert isinstance(report.error, HeartbeatTimeout)
    assert report.close_code == 1011 and report.close_sent == (1011, "")
    assert not report.ok
    # The first ping goes after one interval, and the verdict comes one timeout later.
    assert elapsed >= INTERVAL + TIMEOUT * 0.95
    assert elapsed < INTERVAL + TIMEOUT + WAIT / 2
    assert peer.wait_close_frame() == (1011, "")
    assert not [t.name for t in conn.threads() if t.is_alive()]
    with pytest.raises(duplexthreads.ConnectionClosedError) as raised:
        conn.recv(timeout=WAIT)
    assert raised.value.report is report


def test_any_frame_from_the_peer_is_proof_of_life(make_pair: MakePair) -> None:
    """A peer that never answers pings but keeps talking is alive; once it stops, it is not."""
    conn, peer = make_pair(ping_interval=INTERVAL, ping_timeout=TIMEOUT)
    peer.go_silent()  # no pongs, ever
    pings = spy_on_pings(conn)
    conn.start()
    # Talk through several pings' timeouts: one message per half interval, for six timeouts.
    talk_until = time.monotonic() + 6 * TIMEOUT
    index = 0
    while time.monotonic() < talk_until:
        peer.send(f"alive {index}")
        assert conn.recv(timeout=WAIT) == f"alive {index}"
        index += 1
        # Pacing, not waiting for something: time passing is what this test is about.
        threading.Event().wait(INTERVAL / 2)
    assert len(pings.calls) >= 3
    assert not conn.closed  # every ping's timeout passed while the peer was talking
    quiet_from = time.monotonic()
    report = conn.wait(WAIT)
    assert report.reason is Reason.HEARTBEAT_TIMEOUT
    assert time.monotonic() - quiet_from >= TIMEOUT * 0.5


def test_without_ping_timeout_the_pings_only_keep_the_path_warm(make_pair: MakePair) -> None:
    conn, peer = make_pair(ping_interval=INTERVAL, ping_timeout=None)
    peer.go_silent()
    pings = spy_on_pings(conn)
    conn.start()
    pings.wait_calls(4)  # four intervals of silence, no verdict
    assert not conn.closed
    report = conn.abort()
    assert report is not None and report.reason is Reason.ABORTED


def test_without_ping_interval_there_is_no_heartbeat_thread(make_pair: MakePair) -> None:
    conn, _peer = make_pair(ping_interval=None)
    conn.start()
    roles = sorted(t.name.rsplit("-", 1)[1] for t in conn.threads())
    assert roles == ["reader", "writer"]
    report = conn.close()
    assert report is not None and report.ok


def test_the_heartbeat_ends_at_once_on_close_and_abort(make_pair: MakePair) -> None:
    """It waits only in quit.wait(): a 1-hour interval does not hold up the end."""
    for end in ("close", "abort"):
        conn, _peer = make_pair(ping_interval=3600.0, ping_timeout=3600.0)
        conn.start()
        started = time.monotonic()
        report = conn.close() if end == "close" else conn.abort()
        assert report is not None and report.lingering == ()
        assert time.monotonic() - started < WAIT / 2
        assert not [t.name for t in conn.threads() if t.is_alive()]


def test_a_heartbeat_timeout_does_not_wait_for_a_writer_stuck_on_the_dead_peer(make_pair: MakePair) -> None:
    """No write deadline, a peer that neither reads nor answers: the heartbeat still ends it,
    without waiting close_timeout for the stuck writer, and the accounting stays exact."""
    conn, peer = make_pair(ping_interval=INTERVAL, ping_timeout=TIMEOUT, close_timeout=30.0)
    peer.go_silent()
    peer.stop_reading()
    conn.start()
    messages = [f"m{i}" for i in range(5)]
    for message in messages:
        conn.send(message)
    report = conn.wait(WAIT)
    assert report.reason is Reason.HEARTBEAT_TIMEOUT
    assert report.teardown_seconds < 5.0  # not the 30 s close_timeout
    assert report.close_sent is None  # a reply behind the stuck write could not go
    assert report.written + len(report.unsent) == len(messages)
    assert list(report.unsent) == messages[report.written :]
    assert report.lingering == ()


# -- ping() and latency ----------------------------------------------------------------------------


def test_ping_returns_the_round_trip_and_sets_latency(make_pair: MakePair) -> None:
    conn, _peer = make_pair(ping_interval=None)
    assert conn.latency is None
    conn.start()
    rtt = conn.ping(timeout=WAIT)
    assert 0 <= rtt < WAIT
    assert conn.latency is not None and 0 <= conn.latency <= rtt
    assert 0 <= conn.ping(timeout=WAIT, payload=b"hello") < WAIT
    report = conn.close()
    assert report is not None and report.ok


def test_ping_times_out_when_no_pong_comes(make_pair: MakePair) -> None:
    conn, peer = make_pair(ping_interval=None)
    peer.go_silent()
    conn.start()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no pong"):
        conn.ping(timeout=SHORT)
    assert time.monotonic() - started >= SHORT * 0.95
    assert not conn.closed  # a missing pong to ping() alone ends nothing
    assert conn.latency is None


def test_ping_waiting_for_its_pong_ends_with_the_connection(make_pair: MakePair) -> None:
    conn, peer = make_pair(ping_interval=None)
    peer.go_silent()
    conn.start()
    raised: List[BaseException] = []
    waiting = threading.Thread(target=lambda: _catch(raised, lambda: conn.ping()), name="unit-pinger")
    waiting.start()
    conn.abort()
    waiting.join(WAIT)
    assert not waiting.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], ConnectionClosed)


def test_ping_on_a_closed_or_unstarted_connection(make_pair: MakePair) -> None:
    conn, _peer = make_pair(ping_interval=None)
    with pytest.raises(UsageError, match="start"):
        conn.ping(timeout=WAIT)
    conn.start()
    conn.close()
    with pytest.raises(ConnectionClosed):
        conn.ping(timeout=WAIT)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"payload": "text"}, TypeError, "payload must be bytes"),
        ({"payload": b"x" * 126}, ValueError, "at most 125 bytes"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": "1"}, TypeError, "timeout"),
    ],
)
def test_ping_checks_its_arguments(make_pair: MakePair, options: Any, error: type, match: str) -> None:
    conn, _peer = make_pair(ping_interval=None)
    conn.start()
    with pytest.raises(error, match=match):
        conn.ping(**options)
    assert conn.ping(timeout=WAIT) >= 0  # unharmed


# -- the write deadline ----------------------------------------------------------------------------


def test_a_peer_that_stops_reading_is_cut_off_by_the_write_timeout(make_pair: MakePair) -> None:
    conn, peer = make_pair(ping_interval=None, write_timeout=TIMEOUT)
    conn.start()
    conn.send("before")
    assert peer.wait_messages(1) == ["before"]
    peer.stop_reading()
    stalled_from = time.monotonic()
    later = [f"later {i}" for i in range(20)]
    for message in later:
        conn.send(message)
    report = conn.wait(WAIT)
    assert time.monotonic() - stalled_from >= TIMEOUT * 0.95
    assert report.reason is Reason.WRITE_TIMEOUT and report.first == "writer"
    assert isinstance(report.error, WriteTimeout)
    assert report.close_code == 1006 and report.close_sent is None  # nothing could reach it
    # Exact accounting: what the peer got, then the rest in order.
    assert report.written == len(peer.received)
    assert report.written + len(report.unsent) == 1 + len(later)
    assert list(report.unsent) == later[report.written - 1 :]
    assert report.lingering == ()


def test_no_write_timeout_means_a_write_waits_for_the_peer(make_pair: MakePair) -> None:
    conn, peer = make_pair(ping_interval=None)
    conn.start()
    peer.stop_reading()
    conn.send("stuck")
    with pytest.raises(TimeoutError):
        conn.wait(SHORT)  # a wait expected to run out: the write waits on, unbounded
    report = conn.abort()
    assert report is not None and report.reason is Reason.ABORTED
    assert report.unsent == ("stuck",)


# -- argument checks -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ping_interval", "ping_timeout", "write_timeout"])
@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-1.0, ValueError), (float("nan"), ValueError), ("1", TypeError), (True, TypeError)],
)
def test_liveness_options_are_checked(name: str, value: object, error: type) -> None:
    ours, _theirs = duplexthreads.transports.memory_pair()
    with pytest.raises(error, match=name):
        Duplex(ours, **{name: value})  # type: ignore[arg-type]
    assert not ours.closed  # nothing started, nothing to close: the caller still owns it


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-5, ValueError), (1.5, TypeError), ("1", TypeError)])
def test_connect_checks_max_message_size_before_any_io(value: object, error: type) -> None:
    # Port 9 (discard) on loopback: were the check late, this would fail differently.
    with pytest.raises(error, match="max_message_size"):
        duplexthreads.connect("ws://127.0.0.1:9/", max_message_size=value)  # type: ignore[arg-type]


def test_defaults_are_those_of_websockets() -> None:
    assert duplexthreads.DEFAULT_PING_INTERVAL == 20.0
    assert duplexthreads.DEFAULT_PING_TIMEOUT == 20.0
    assert duplexthreads.DEFAULT_MAX_MESSAGE_SIZE == 1 << 20


def _catch(into: List[BaseException], call: Callable[[], object]) -> None:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        into.append(exc)


# -- found by review: what is not silence, and ping() at its edges --------------------------------


def test_a_slow_on_message_callback_is_not_the_peer_going_silent(make_pair: MakePair) -> None:
    """While our reader is in the application's callback it reads nothing, pongs included."""
    release = threading.Event()
    calls: List[str] = []

    def slow(message: object) -> None:
        calls.append(str(message))
        release.wait(6 * TIMEOUT)  # several heartbeat timeouts in the application's code

    conn, peer = make_pair(ping_interval=INTERVAL, ping_timeout=TIMEOUT, on_message=slow)
    pings = spy_on_pings(conn)
    conn.start()
    peer.send("take your time")
    pings.wait_calls(4)  # the heartbeat ran through the callback's time
    assert not conn.closed
    release.set()
    report = conn.close()
    assert report is not None and report.ok, report.describe() if report else None
    assert calls == ["take your time"]


def test_a_full_inbound_queue_is_not_the_peer_going_silent(make_pair: MakePair) -> None:
    conn, peer = make_pair(ping_interval=INTERVAL, ping_timeout=TIMEOUT, max_queue=1)
    pings = spy_on_pings(conn)
    conn.start()
    for index in range(3):
        peer.send(f"m{index}")
    pings.wait_calls(4)  # the application takes nothing for several timeouts
    assert not conn.closed
    assert [conn.recv(timeout=WAIT) for _ in range(3)] == ["m0", "m1", "m2"]
    report = conn.close()
    assert report is not None and report.ok


def test_no_ping_follows_our_close_frame(make_pair: MakePair) -> None:
    conn, peer = make_pair(ping_interval=INTERVAL / 5, ping_timeout=None, close_timeout=10 * INTERVAL)
    peer.go_silent()  # never answers the close: the close runs its whole time
    pings = spy_on_pings(conn)
    conn.start()
    pings.wait_calls(2)
    closing_from = time.monotonic()
    report = conn.close()
    assert report is not None and isinstance(report.error, TimeoutError)
    assert not [at for at, _ in pings.calls if at > closing_from + 0.005]


def test_ping_from_the_reader_thread_is_refused() -> None:
    outcome: List[BaseException] = []
    ours, theirs = duplexthreads.transports.memory_pair()
    holder: List[Duplex] = []

    def on_message(message: object) -> None:
        _catch(outcome, lambda: holder[0].ping(timeout=WAIT))

    conn = Duplex(ours, on_message=on_message, ping_interval=None)
    holder.append(conn)
    peer = MemoryPeer(theirs)
    conn.start()
    peer.send("ping from in here")
    report = conn.close()
    peer.stop()
    assert report is not None and report.ok
    assert len(outcome) == 1 and isinstance(outcome[0], UsageError)


def test_ping_on_a_connection_that_failed_raises_connection_closed(make_pair: MakePair) -> None:
    conn, peer = make_pair(ping_interval=None)
    conn.start()
    peer.reset()
    with pytest.raises(ConnectionClosed):
        conn.ping(timeout=WAIT)


def test_pings_sharing_a_payload_each_get_the_pong() -> None:
    """One ping() giving up must not take the shared pong away from another."""
    pings = Pings()
    first = pings.register(b"same", waited=True)
    second = pings.register(b"same", waited=True)
    assert first is second
    pings.release(b"same", first)  # the first caller timed out
    pings.pong(b"same")
    assert second.answered.is_set() and second.answered_at is not None
    assert pings.latency is not None


def test_a_pong_settles_the_pings_before_it_that_went_out() -> None:
    pings = Pings()
    older, unwritten, newer = pings.register(b"a"), pings.register(b"u", waited=True), pings.register(b"b")
    older.written = newer.written = True
    pings.pong(b"b")
    assert older.answered.is_set() and newer.answered.is_set()
    assert not unwritten.answered.is_set()  # still waiting to go out: no pong can be its answer
    pings.pong(b"unknown")  # unsolicited: nothing to settle, no error
    pings.cancel_all()
    late = pings.register(b"c", waited=True)
    assert late.answered.is_set() and late.answered_at is None  # over: nothing will answer


def test_a_heartbeat_ping_that_meets_another_write_waits_for_it_briefly() -> None:
    """Two peers with the same interval ping at the same moments: our heartbeat's ping (written
    with a deadline of 0) met our reader writing the pong to the peer's ping, was given up, and
    on an idle connection nothing then came before the verdict: a live connection timed out."""
    import socket

    from duplexthreads._deadline import deadline_after
    from duplexthreads.transports._sockets import CONTROL_LOCK_WAIT, SocketWriter

    ours, theirs = socket.socketpair()
    try:
        writer = SocketWriter(ours)
        held, release = threading.Event(), threading.Event()

        def a_pong_being_written() -> None:
            with writer.lock:
                held.set()
                release.wait(WAIT)

        pong = threading.Thread(target=a_pong_being_written)
        pong.start()
        assert held.wait(WAIT)
        timer = threading.Timer(CONTROL_LOCK_WAIT / 5, release.set)  # the pong is done soon
        timer.start()
        writer.write_control(b"ping", deadline_after(0))  # the heartbeat's deadline
        pong.join(WAIT)
        timer.join(WAIT)
        theirs.settimeout(WAIT)
        assert theirs.recv(16) == b"ping"
    finally:
        ours.close()
        theirs.close()
