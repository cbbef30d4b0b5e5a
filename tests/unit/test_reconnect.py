"""The reconnecting client over the memory transport: backoff, replay, stop rules, callbacks.

The opener of these tests opens a memory pair for each connection and keeps a MemoryPeer on the
far end, so a test plays the server: it resets, drops or closes a connection, or makes the next
openings fail. The backoff pause is injected: it records each delay (drawn from a seeded
``random.Random``) and returns at once, or holds until the test releases it, so no test depends
on the clock.
"""

from __future__ import annotations

import logging
import os
import random
import select
import signal
import threading
import time
import warnings
from collections import deque
from typing import Any, Callable, Deque, Iterator, List, Optional, Tuple

import pytest

import duplexthreads
from duplexthreads import (
    ConnectError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    ConnectTimeout,
    Duplex,
    ExitReport,
    HandshakeRejected,
    Reason,
    UsageError,
)
from duplexthreads.reconnect import Backoff, ReconnectingClient, backoff_arg, connect_reconnecting
from duplexthreads.testing import MemoryPeer
from duplexthreads.transports import memory_pair

from ..timing import UNIT
from .support import SHORT, WAIT

pytestmark = pytest.mark.timeout(30 * UNIT)

#: Tiny and without jitter, for tests that do not look at the delays (the pause is injected anyway).
QUICK = Backoff(initial=0.001, factor=2.0, cap=0.004, jitter=0.0, reset_after=0.0)


class Server:
    """The opener: each call opens a memory pair, starts a Duplex on one end and keeps a
    MemoryPeer on the other. Failures queued with ``fail_next`` are raised instead, in order;
    while ``gate`` is set to an Event, each opening waits for it first."""

    def __init__(self, **duplex_options: Any) -> None:
        self.options = duplex_options
        self.cond = threading.Condition()
        self.peers: List[MemoryPeer] = []
        self.conns: List[Duplex] = []
        self.failures: Deque[BaseException] = deque()
        self.calls = 0
        self.gate: Optional[threading.Event] = None
        self.in_open = threading.Event()
        #: Connections that still had a live thread when the next one was opened.
        self.overlaps: List[Duplex] = []

    def fail_next(self, *errors: BaseException) -> None:
        with self.cond:
            self.failures.extend(errors)

    def __call__(self) -> Duplex:
        with self.cond:
            self.calls += 1
            error = self.failures.popleft() if self.failures else None
            if self.conns and any(thread.is_alive() for thread in self.conns[-1].threads()):
                self.overlaps.append(self.conns[-1])
        self.in_open.set()
        if error is not None:
            raise error
        if self.gate is not None:
            assert self.gate.wait(WAIT), "the test never opened the gate"
        ours, theirs = memory_pair()
        conn = Duplex(ours, **self.options).start()
        peer = MemoryPeer(theirs, timeout=WAIT)
        with self.cond:
            self.conns.append(conn)
            self.peers.append(peer)
            self.cond.notify_all()
        return conn

    def peer(self, index: int) -> MemoryPeer:
        """The far end of the ``index``-th connection (from 0), once it is open."""
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.peers) > index, WAIT):
                raise TimeoutError(f"connection {index} was not opened; {self.calls} openings so far")
            return self.peers[index]

    def stop(self) -> None:
        for peer in self.peers:
            peer.stop()


class Pauses:
    """The injected backoff pause: records each delay; returns at once, or holds until ``gate``
    is set (``gate``), or until the client stops (``until_stop``)."""

    def __init__(self, *, gate: Optional[threading.Event] = None, until_stop: bool = False) -> None:
        self.delays: List[float] = []
        self.cond = threading.Condition()
        self.gate = gate
        self.until_stop = until_stop
        self.woken_by_stop: List[bool] = []

    def __call__(self, seconds: float, stop: threading.Event) -> None:
        with self.cond:
            self.delays.append(seconds)
            self.cond.notify_all()
        if self.gate is not None:
            assert self.gate.wait(WAIT), "the test never released the pause"
        elif self.until_stop:
            self.woken_by_stop.append(stop.wait(WAIT))

    def wait_count(self, count: int) -> List[float]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.delays) >= count, WAIT):
                raise TimeoutError(f"{len(self.delays)} pauses, not {count}")
            return list(self.delays)


class Callbacks:
    """on_open and on_close that record what they were given, and in which thread."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.opened: List[Duplex] = []
        self.open_threads: List[str] = []
        self.closed: List[ExitReport] = []

    def on_open(self, conn: Duplex) -> None:
        with self.cond:
            self.opened.append(conn)
            self.open_threads.append(threading.current_thread().name)
            self.cond.notify_all()

    def on_close(self, report: ExitReport) -> None:
        with self.cond:
            self.closed.append(report)
            self.cond.notify_all()

    def wait_closes(self, count: int) -> List[ExitReport]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.closed) >= count, WAIT):
                raise TimeoutError(f"{len(self.closed)} connections ended, not {count}")
            return list(self.closed)

    def wait_opens(self, count: int) -> List[Duplex]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.opened) >= count, WAIT):
                raise TimeoutError(f"{len(self.opened)} connections opened, not {count}")
            return list(self.opened)


MakeClient = Callable[..., ReconnectingClient]


@pytest.fixture
def server() -> Iterator[Server]:
    made = Server(ping_interval=None)
    yield made
    made.stop()
    assert not made.overlaps, "a connection was opened before the previous one's threads were gone"


@pytest.fixture
def make_client(server: Server) -> Iterator[MakeClient]:
    """Builds clients on ``server`` (tiny backoff, an injected pause); aborted at teardown."""
    made: List[Tuple[ReconnectingClient, Any]] = []

    def make(**options: Any) -> ReconnectingClient:
        options.setdefault("backoff", QUICK)
        options.setdefault("pause", Pauses())
        made.append((ReconnectingClient(server, **options), options["pause"]))
        return made[-1][0]

    yield make
    for client, pause in made:
        if isinstance(pause, Pauses) and pause.gate is not None:
            pause.gate.set()  # a test that failed while a pause was held
        client.abort()


def numbered(start: int, stop: int) -> List[str]:
    return [f"m{i}" for i in range(start, stop)]


def accounted(client: ReconnectingClient) -> int:
    """Messages the client accounts for: written by some connection, or still unsent."""
    assert client.report is not None
    return sum(report.written for report in client.reports) + len(client.report.unsent)


def make_unsent(client: ReconnectingClient, peer: MemoryPeer, messages: List[str]) -> None:
    """Send ``messages`` so that the connection cannot write them: the peer stops reading."""
    peer.stop_reading()
    for message in messages:
        client.send(message)


# -- Backoff ----------------------------------------------------------------------------------------


def test_backoff_defaults() -> None:
    backoff = Backoff()
    assert (backoff.initial, backoff.factor, backoff.cap, backoff.jitter) == (0.1, 2.0, 30.0, 0.5)
    assert backoff.max_attempts is None and backoff.reset_after == 10.0


def test_backoff_grows_by_factor_up_to_the_cap_without_jitter() -> None:
    backoff = Backoff(initial=0.5, factor=3.0, cap=10.0, jitter=0.0)
    rng = random.Random(1)
    assert [backoff.delay(n, rng) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]
    assert backoff.delay(10_000, rng) == 10.0  # no overflow far out in the series
    assert Backoff(initial=2.0, factor=1.0, cap=2.0, jitter=0).delay(50, rng) == 2.0


def test_backoff_jitter_takes_a_seeded_random_part_off() -> None:
    backoff = Backoff(initial=0.1, factor=2.0, cap=1.0, jitter=0.5)
    first = [backoff.delay(n, random.Random(42)) for n in range(1, 8)]
    again = [backoff.delay(n, random.Random(42)) for n in range(1, 8)]
    assert first == again
    draws = random.Random(42)
    expected = []
    for n in range(1, 8):
        schedule = min(1.0, 0.1 * 2.0 ** (n - 1))
        expected.append(schedule - schedule * 0.5 * draws.random())
    rng = random.Random(42)
    assert [backoff.delay(n, rng) for n in range(1, 8)] == pytest.approx(expected)


@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.5, 1.0])
def test_backoff_delay_stays_between_the_jittered_floor_and_the_schedule(jitter: float) -> None:
    backoff = Backoff(initial=0.2, factor=1.7, cap=5.0, jitter=jitter)
    rng = random.Random(7)
    for n in range(1, 40):
        schedule = min(5.0, 0.2 * 1.7 ** (n - 1))
        for _ in range(20):
            delay = backoff.delay(n, rng)
            assert schedule * (1 - jitter) <= delay <= schedule <= 5.0


@pytest.mark.parametrize(
    ("options", "error", "field"),
    [
        ({"initial": 0}, ValueError, "initial"),
        ({"initial": -1.0}, ValueError, "initial"),
        ({"initial": float("nan")}, ValueError, "initial"),
        ({"initial": float("inf"), "cap": float("inf")}, ValueError, "initial"),
        ({"initial": "1"}, TypeError, "initial"),
        ({"initial": True}, TypeError, "initial"),
        ({"factor": 0.5}, ValueError, "factor"),
        ({"factor": float("inf")}, ValueError, "factor"),
        ({"factor": float("nan")}, ValueError, "factor"),
        ({"factor": None}, TypeError, "factor"),
        ({"cap": float("inf")}, ValueError, "cap"),
        ({"cap": -3}, ValueError, "cap"),
        ({"cap": 0.05}, ValueError, "cap"),  # below initial (0.1)
        ({"cap": "30"}, TypeError, "cap"),
        ({"jitter": -0.1}, ValueError, "jitter"),
        ({"jitter": 1.5}, ValueError, "jitter"),
        ({"jitter": float("nan")}, ValueError, "jitter"),
        ({"jitter": False}, TypeError, "jitter"),
        ({"max_attempts": 0}, ValueError, "max_attempts"),
        ({"max_attempts": 2.0}, TypeError, "max_attempts"),
        ({"max_attempts": True}, TypeError, "max_attempts"),
        ({"reset_after": -1}, ValueError, "reset_after"),
        ({"reset_after": float("inf")}, ValueError, "reset_after"),
        ({"reset_after": None}, TypeError, "reset_after"),
    ],
)
def test_backoff_refuses_bad_fields(options: Any, error: type, field: str) -> None:
    with pytest.raises(error, match=field):
        Backoff(**options)


def test_backoff_delay_checks_its_arguments() -> None:
    backoff = Backoff()
    with pytest.raises(ValueError, match="attempt"):
        backoff.delay(0, random.Random())
    with pytest.raises(TypeError, match="attempt"):
        backoff.delay(1.0, random.Random())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rng"):
        backoff.delay(1, None)  # type: ignore[arg-type]


def test_backoff_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Backoff().cap = 1.0  # type: ignore[misc]


def test_reconnect_argument() -> None:
    assert backoff_arg(True) == Backoff()
    custom = Backoff(initial=1.0)
    assert backoff_arg(custom) is custom
    with pytest.raises(ValueError, match="reconnect=False"):
        backoff_arg(False)
    with pytest.raises(TypeError, match="reconnect"):
        backoff_arg("yes")
    with pytest.raises(TypeError, match="reconnect"):
        backoff_arg(1)


# -- construction -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "name"),
    [
        ({"backoff": 1.0}, TypeError, "backoff"),
        ({"reconnect_on_normal_close": 1}, TypeError, "reconnect_on_normal_close"),
        ({"on_open": "print"}, TypeError, "on_open"),
        ({"on_close": 3}, TypeError, "on_close"),
        ({"max_queue": 0}, ValueError, "max_queue"),
        ({"max_queue": 1.5}, TypeError, "max_queue"),
        ({"rng": 42}, TypeError, "rng"),
        ({"pause": 0.1}, TypeError, "pause"),
        ({"clock": "now"}, TypeError, "clock"),
    ],
)
def test_constructor_checks_arguments_before_opening(server: Server, options: Any, error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        ReconnectingClient(server, **options)
    assert server.calls == 0


def test_opener_must_be_callable() -> None:
    with pytest.raises(TypeError, match="opener"):
        ReconnectingClient("ws://example.invalid/")  # type: ignore[arg-type]


def test_first_opening_raises_to_the_caller(server: Server) -> None:
    refused = ConnectError("connection refused")
    server.fail_next(refused)
    with pytest.raises(ConnectError) as caught:
        ReconnectingClient(server, backoff=QUICK)
    assert caught.value is refused
    assert server.calls == 1  # no retry in the background: nothing was started


def test_opener_returning_something_else_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="Duplex"):
        ReconnectingClient(lambda: object())  # type: ignore[arg-type,return-value]


def test_connect_reconnecting_checks_its_own_arguments_before_any_io() -> None:
    url = "ws://127.0.0.1:9/"  # discard: never reached
    with pytest.raises(TypeError, match="reconnect"):
        connect_reconnecting(url, reconnect="always")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reconnect=False"):
        connect_reconnecting(url, reconnect=False)
    with pytest.raises(TypeError, match="reconnect_on_normal_close"):
        connect_reconnecting(url, reconnect=True, reconnect_on_normal_close="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_close"):
        connect_reconnecting(url, reconnect=True, on_close=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_queue"):
        connect_reconnecting(url, reconnect=True, max_queue=0)
    # connect()'s own options are checked by connect(), still before any I/O.
    with pytest.raises(ValueError, match="open_timeout"):
        connect_reconnecting(url, reconnect=True, open_timeout=-1)
    with pytest.raises(TypeError):
        connect_reconnecting(url, reconnect=True, no_such_option=1)


# -- sending across a reconnect ---------------------------------------------------------------------


def test_unsent_messages_go_first_in_order_on_the_next_connection(server: Server, make_client: MakeClient) -> None:
    client = make_client()
    first = server.peer(0)
    for message in numbered(0, 5):
        client.send(message)
    assert first.wait_messages(5) == numbered(0, 5)
    make_unsent(client, first, numbered(5, 25))
    first.reset()
    second = server.peer(1)
    for message in numbered(25, 30):
        client.send(message)
    assert second.wait_messages(25) == numbered(5, 30)
    ended = client.reports[0]
    assert ended.reason in (Reason.READ_ERROR, Reason.WRITE_ERROR) and ended.written == 5
    assert ended.unsent == tuple(numbered(5, 25))
    report = client.close()
    assert report is not None and report.ok and report.unsent == ()
    assert accounted(client) == 30
    assert first.received + second.received == numbered(0, 30)


def test_messages_sent_while_disconnected_wait_behind_the_unsent_ones(server: Server, make_client: MakeClient) -> None:
    pauses = Pauses(gate=threading.Event())
    client = make_client(pause=pauses)
    first = server.peer(0)
    make_unsent(client, first, numbered(0, 10))
    first.drop()  # end of stream without a close frame
    pauses.wait_count(1)
    assert client.connection is None
    for message in numbered(10, 15):
        client.send(message)
    assert client.pending == 15
    assert pauses.gate is not None
    pauses.gate.set()
    second = server.peer(1)
    assert second.wait_messages(15) == numbered(0, 15)
    client.send("after")
    assert second.wait_messages(16)[-1] == "after"
    client.close()
    assert accounted(client) == 16


def test_the_disconnected_queue_is_bounded(server: Server, make_client: MakeClient) -> None:
    pauses = Pauses(until_stop=True)
    client = make_client(pause=pauses, max_queue=3)
    first = server.peer(0)
    first.drop()
    pauses.wait_count(1)
    for message in numbered(0, 3):
        client.send(message, timeout=0)
    with pytest.raises(TimeoutError):
        client.send("one too many", timeout=SHORT)
    assert client.pending == 3
    report = client.close()
    assert report is not None and report.unsent == tuple(numbered(0, 3))


def test_a_send_waiting_for_room_goes_out_once_replayed(server: Server, make_client: MakeClient) -> None:
    gate = threading.Event()
    pauses = Pauses(gate=gate)
    client = make_client(pause=pauses, max_queue=2)
    server.peer(0).drop()
    pauses.wait_count(1)
    client.send("a")
    client.send("b")
    done = threading.Event()

    def third() -> None:
        client.send("c", timeout=WAIT)
        done.set()

    sender = threading.Thread(target=third)
    sender.start()
    assert not done.wait(SHORT)  # no room: it waits
    gate.set()
    assert done.wait(WAIT)
    sender.join(WAIT)
    assert server.peer(1).wait_messages(3) == ["a", "b", "c"]
    client.close()


def test_send_checks_messages_even_while_disconnected(server: Server, make_client: MakeClient) -> None:
    pauses = Pauses(until_stop=True)
    client = make_client(pause=pauses)
    server.peer(0).drop()
    pauses.wait_count(1)
    with pytest.raises(TypeError, match="int"):
        client.send(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="UTF-8"):
        client.send("\ud800")
    data = bytearray(b"ab")
    client.send(data)
    data[0] = ord("X")
    report = client.close()
    assert report is not None and report.unsent == (b"ab",)


def test_send_after_close_raises(server: Server, make_client: MakeClient) -> None:
    client = make_client()
    client.close()
    with pytest.raises(ConnectionClosedOK):
        client.send("late")
    other = make_client()
    other.abort()
    with pytest.raises(ConnectionClosedError):
        other.send("late")


def test_concurrent_senders_across_drops_lose_and_repeat_nothing(server: Server, make_client: MakeClient) -> None:
    senders, rounds, per_round = 4, 5, 100
    barrier = threading.Barrier(senders + 1, timeout=WAIT)
    client = make_client()

    def send_all(name: str) -> None:
        for r in range(rounds):
            for i in range(per_round):
                client.send(f"{name}-{r * per_round + i}", timeout=WAIT)
            barrier.wait()

    threads = [threading.Thread(target=send_all, args=(f"t{n}",)) for n in range(senders)]
    for thread in threads:
        thread.start()
    for r in range(rounds):
        barrier.wait()
        if r < rounds - 1:
            server.peer(r).drop()  # the senders carry on while it ends and the client reconnects
    for thread in threads:
        thread.join(WAIT)
    server.peer(rounds - 1)  # reconnected after the last drop (a close before would end there)
    report = client.close()
    assert report is not None and report.ok and report.unsent == ()
    assert len(client.reports) == rounds
    assert accounted(client) == senders * rounds * per_round
    for peer in server.peers:
        peer.wait_ended()  # its thread may still be reading what was written before the end
    seen = [message for peer in server.peers for message in peer.received]
    for n in range(senders):
        mine = [message for message in seen if isinstance(message, str) and message.startswith(f"t{n}-")]
        assert mine == [f"t{n}-{i}" for i in range(rounds * per_round)]


# -- receiving across a reconnect -------------------------------------------------------------------


def test_recv_drains_each_connection_then_moves_on(server: Server, make_client: MakeClient) -> None:
    callbacks = Callbacks()
    client = make_client(on_close=callbacks.on_close)
    first = server.peer(0)
    first.send("a")
    first.send(b"b")
    first.drop()  # the reader takes both before it meets the end of the stream
    callbacks.wait_closes(1)
    second = server.peer(1)
    second.send("c")
    assert [client.recv(WAIT) for _ in range(3)] == ["a", b"b", "c"]
    with pytest.raises(TimeoutError):
        client.recv(SHORT)
    second.send("d")
    client.close()
    assert list(client) == ["d"]  # what arrived before the close, then a quiet end
    with pytest.raises(ConnectionClosedOK):
        client.recv(WAIT)


def test_recv_waits_across_a_reconnect(server: Server, make_client: MakeClient) -> None:
    gate = threading.Event()
    client = make_client(pause=Pauses(gate=gate))
    got: List[Any] = []
    reader = threading.Thread(target=lambda: got.append(client.recv(WAIT)))
    reader.start()
    server.peer(0).reset()
    with pytest.raises(TimeoutError):
        client.recv(SHORT)  # disconnected: nothing to read yet
    gate.set()
    server.peer(1).send("hello again")
    reader.join(WAIT)
    assert got == ["hello again"]
    client.close()


def test_iteration_raises_after_an_abnormal_final_end(server: Server, make_client: MakeClient) -> None:
    client = make_client()
    server.fail_next(HandshakeRejected(401, "401 Unauthorized"))
    server.peer(0).send("x")
    server.peer(0).reset()
    client.wait(WAIT)
    received = []
    with pytest.raises(ConnectionClosedError) as caught:
        for message in client:
            received.append(message)
    assert caught.value.report is client.report
    assert received in ([], ["x"])  # a reset may beat the reader to the message


# -- what stops the client, and what is retried -----------------------------------------------------


@pytest.mark.parametrize("code", [1000, None])
def test_a_normal_close_by_the_peer_stops_the_client(server: Server, make_client: MakeClient, code: Any) -> None:
    client = make_client()
    server.peer(0).close(code)
    report = client.wait(WAIT)
    assert report.reason is Reason.PEER_CLOSED and report.ok
    assert report.close_code == (1000 if code == 1000 else 1005)
    assert server.calls == 1 and client.closed and client.connection is None
    assert list(client) == []
    with pytest.raises(ConnectionClosedOK):
        client.send("late")


def test_reconnect_on_normal_close(server: Server, make_client: MakeClient) -> None:
    client = make_client(reconnect_on_normal_close=True)
    server.peer(0).close(1000)
    server.peer(1).close(None)
    server.peer(2)
    assert [report.close_code for report in client.reports] == [1000, 1005]
    client.close()


@pytest.mark.parametrize(
    "end",
    [
        pytest.param(lambda peer: peer.close(1001, "restarting"), id="going-away"),
        pytest.param(lambda peer: peer.close(1011), id="internal-error"),
        pytest.param(lambda peer: peer.close(4000, "app"), id="app-code"),
        pytest.param(lambda peer: peer.reset(), id="reset"),
        pytest.param(lambda peer: peer.drop(), id="eof"),
    ],
)
def test_other_ends_are_retried(server: Server, make_client: MakeClient, end: Callable[[MemoryPeer], None]) -> None:
    client = make_client()
    end(server.peer(0))
    second = server.peer(1)
    client.send("back")
    assert second.wait_messages(1) == ["back"]
    assert client.report is None and len(client.reports) == 1
    client.close()


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_a_4xx_rejection_stops_for_good(server: Server, make_client: MakeClient, status: int) -> None:
    client = make_client()
    rejected = HandshakeRejected(status, f"{status} no")
    server.fail_next(rejected)
    make_unsent(client, server.peer(0), ["kept"])
    server.peer(0).reset()
    report = client.wait(WAIT)
    assert server.calls == 2
    assert report.error is rejected and not report.ok
    assert client.last_error is rejected and client.attempts == 1
    assert report.unsent == ("kept",)
    assert client.reports[0].error is not rejected  # each connection's own report is as it was


@pytest.mark.parametrize(
    "failure",
    [
        HandshakeRejected(503, "503 Service Unavailable"),
        HandshakeRejected(502, "502 Bad Gateway"),
        HandshakeRejected(429, "429 Too Many Requests"),
        HandshakeRejected(408, "408 Request Timeout"),
        HandshakeRejected(0, "not HTTP"),
        ConnectError("connection refused"),
        ConnectTimeout("open_timeout ran out"),
    ],
    ids=lambda failure: type(failure).__name__ + str(getattr(failure, "status", "")),
)
def test_failed_openings_are_retried(server: Server, make_client: MakeClient, failure: ConnectError) -> None:
    pauses = Pauses()
    client = make_client(pause=pauses)
    server.fail_next(failure, failure)
    server.peer(0).reset()
    server.peer(1)
    assert server.calls == 4 and len(pauses.delays) == 3
    assert client.last_error is failure and client.attempts == 0  # reset by the opening
    client.close()


def test_max_attempts_gives_up_after_that_many_failures_in_a_row(server: Server, make_client: MakeClient) -> None:
    backoff = Backoff(initial=0.01, factor=2.0, cap=0.03, jitter=0.5, max_attempts=3, reset_after=0.0)
    pauses = Pauses()
    client = make_client(backoff=backoff, pause=pauses, rng=random.Random(5))
    failures = [ConnectError(f"refused {n}") for n in range(5)]
    server.fail_next(*failures)
    server.peer(0).reset()
    report = client.wait(WAIT)
    assert server.calls == 4  # the first opening, then three failed ones
    assert client.attempts == 3 and client.last_error is failures[2]
    assert report.error is failures[2]
    rng = random.Random(5)
    assert pauses.delays == [backoff.delay(n, rng) for n in (1, 2, 3)]


def test_a_successful_opening_resets_the_attempt_count(server: Server, make_client: MakeClient) -> None:
    backoff = Backoff(initial=0.001, cap=0.001, jitter=0, max_attempts=2, reset_after=0)
    client = make_client(backoff=backoff)
    server.fail_next(ConnectError("refused"))
    server.peer(0).reset()
    second = server.peer(1)
    server.fail_next(ConnectError("refused"))
    second.reset()
    server.peer(2)
    assert client.report is None and client.attempts == 0
    client.close()


def test_the_backoff_series_follows_failures_and_resets_after_a_long_connection(
    server: Server, make_client: MakeClient
) -> None:
    backoff = Backoff(initial=0.01, factor=2.0, cap=0.05, jitter=0.5, reset_after=10.0)
    now = [0.0]
    pauses = Pauses()
    callbacks = Callbacks()
    client = make_client(
        backoff=backoff, pause=pauses, rng=random.Random(99), clock=lambda: now[0], on_open=callbacks.on_open
    )
    server.fail_next(ConnectError("refused"), ConnectError("refused"))
    server.peer(0).reset()  # ended at once: 1; two failed openings: 2, 3
    server.peer(1).reset()  # open but short-lived: still a failure, 4
    callbacks.wait_opens(3)
    now[0] += 10.0  # this one lives reset_after seconds: the series starts again
    server.peer(2).reset()
    server.peer(3)
    rng = random.Random(99)
    assert pauses.delays == [backoff.delay(n, rng) for n in (1, 2, 3, 4, 1)]
    client.close()


def test_an_opener_bug_is_not_retried(server: Server, make_client: MakeClient, caplog: Any) -> None:
    client = make_client()
    bug = ValueError("bad option")
    server.fail_next(bug)
    with caplog.at_level(logging.ERROR, logger="duplexthreads"):
        server.peer(0).reset()
        report = client.wait(WAIT)
    assert report.error is bug and client.last_error is bug and server.calls == 2
    assert "opener raised" in caplog.text


def test_closing_the_connection_directly_stops_the_client(server: Server, make_client: MakeClient) -> None:
    client = make_client()
    conn = client.connection
    assert conn is not None
    conn.close()  # as the exit hook or close_all() would
    report = client.wait(WAIT)
    assert report.reason is Reason.LOCAL_CLOSE and server.calls == 1


# -- close and abort --------------------------------------------------------------------------------


def test_close_when_connected_flushes_and_closes(server: Server, make_client: MakeClient) -> None:
    client = make_client()
    for message in numbered(0, 50):
        client.send(message)
    report = client.close(4001, "bye")
    assert report is not None and report.close_sent == (4001, "bye") and report.written == 50
    assert server.peer(0).wait_close_frame() == (4001, "bye")
    assert client.closed and client.report is report and client.reports == (report,)
    assert client.close() is report  # twice is fine
    assert client.abort() is report


def test_close_during_the_backoff_pause_returns_at_once(server: Server, make_client: MakeClient) -> None:
    pauses = Pauses(until_stop=True)
    client = make_client(pause=pauses)
    make_unsent(client, server.peer(0), ["a"])
    server.peer(0).reset()
    pauses.wait_count(1)
    client.send("b")
    report = client.close()
    assert pauses.woken_by_stop == [True]
    assert report is not None and report.unsent == ("a", "b") and server.calls == 1
    assert report.reason in (Reason.READ_ERROR, Reason.WRITE_ERROR)  # the last connection's end
    assert accounted(client) == 2


def test_abort_during_the_backoff_pause(server: Server, make_client: MakeClient) -> None:
    pauses = Pauses(until_stop=True)
    client = make_client(pause=pauses)
    server.peer(0).drop()
    pauses.wait_count(1)
    client.send("a")
    report = client.abort()
    assert report is not None and report.unsent == ("a",) and server.calls == 1
    with pytest.raises(ConnectionClosedError):
        client.recv(WAIT)


def test_the_real_pause_is_cut_short_by_close(server: Server) -> None:
    callbacks = Callbacks()
    client = ReconnectingClient(server, backoff=Backoff(initial=60.0, cap=60.0), on_close=callbacks.on_close)
    try:
        server.peer(0).reset()
        callbacks.wait_closes(1)
        started = time.monotonic()
        client.close()
        assert time.monotonic() - started < WAIT
        assert server.calls == 1
    finally:
        client.abort()


def test_close_waits_for_an_opening_in_flight_and_closes_it(server: Server, make_client: MakeClient) -> None:
    callbacks = Callbacks()
    client = make_client(on_open=callbacks.on_open)
    make_unsent(client, server.peer(0), ["a"])
    server.gate = threading.Event()
    server.in_open.clear()
    server.peer(0).reset()
    assert server.in_open.wait(WAIT)
    client.send("b")
    results: List[Optional[ExitReport]] = []
    closer = threading.Thread(target=lambda: results.append(client.close()))
    closer.start()
    closer.join(SHORT)
    assert closer.is_alive()  # waiting for the opening
    server.gate.set()
    closer.join(WAIT)
    report = results[0]
    assert report is not None and report.ok and report.unsent == ()
    assert server.peer(1).wait_messages(2) == ["a", "b"]
    assert len(callbacks.opened) == 2  # on_open ran first, for a connection that was then closed
    assert accounted(client) == 2


def test_abort_waits_for_an_opening_in_flight_and_aborts_it(server: Server, make_client: MakeClient) -> None:
    callbacks = Callbacks()
    client = make_client(on_open=callbacks.on_open)
    server.gate = threading.Event()
    server.in_open.clear()
    server.peer(0).drop()
    assert server.in_open.wait(WAIT)
    client.send("kept")
    results: List[Optional[ExitReport]] = []
    aborter = threading.Thread(target=lambda: results.append(client.abort()))
    aborter.start()
    server.gate.set()
    aborter.join(WAIT)
    report = results[0]
    assert report is not None and report.reason is Reason.ABORTED and report.unsent == ("kept",)
    assert len(callbacks.opened) == 1 and len(client.reports) == 2
    assert server.peer(1).received == []


def test_close_while_replaying_hands_the_rest_over_first(server: Server, make_client: MakeClient) -> None:
    entered, release = threading.Event(), threading.Event()

    def on_open(conn: Duplex) -> None:
        if len(server.conns) == 2:
            entered.set()
            assert release.wait(WAIT)

    client = make_client(on_open=on_open)
    make_unsent(client, server.peer(0), numbered(0, 20))
    server.peer(0).reset()
    assert entered.wait(WAIT)  # the new connection is open; nothing handed over yet
    results: List[Optional[ExitReport]] = []
    closer = threading.Thread(target=lambda: results.append(client.close(timeout=WAIT)))
    closer.start()
    release.set()
    closer.join(WAIT)
    report = results[0]
    assert report is not None and report.ok and report.unsent == () and report.written == 20
    assert server.peer(1).received == numbered(0, 20)


def test_close_that_runs_out_of_time_while_replaying(server: Server, make_client: MakeClient) -> None:
    client = make_client(on_open=lambda conn: server.peers[-1].stop_reading() if len(server.conns) == 2 else None)
    make_unsent(client, server.peer(0), numbered(0, 5))
    server.peer(0).reset()
    server.peer(1)
    report = client.close(timeout=SHORT)
    assert report is not None and not report.ok
    assert accounted(client) == 5  # whatever was not written is in unsent


def test_close_cuts_a_replay_that_cannot_progress() -> None:
    # The new connection's queue holds one message and its peer reads nothing: the supervisor
    # is stuck handing over. close() gives it the close's time, then cuts the connection.
    server = Server(ping_interval=None, max_queue=1)
    client: Optional[ReconnectingClient] = None
    try:
        stalled = threading.Event()

        def on_open(conn: Duplex) -> None:
            if len(server.conns) == 2:
                server.peers[-1].stop_reading()
                stalled.set()

        gate = threading.Event()
        pauses = Pauses(gate=gate)
        client = ReconnectingClient(server, backoff=QUICK, pause=pauses, on_open=on_open)
        server.peer(0).reset()
        pauses.wait_count(1)
        for message in numbered(0, 20):
            client.send(message)
        gate.set()
        assert stalled.wait(WAIT)
        started = time.monotonic()
        report = client.close(timeout=SHORT)
        assert time.monotonic() - started < WAIT
        assert report is not None and not report.ok
        assert sum(ended.written for ended in client.reports) + len(report.unsent) == 20
        assert report.unsent[-1] == "m19"
    finally:
        if client is not None:
            client.abort()
        server.stop()


def test_send_from_on_open_does_not_wait_for_room(server: Server, make_client: MakeClient) -> None:
    holder: List[ReconnectingClient] = []

    def on_open(conn: Duplex) -> None:
        if holder:
            holder[0].send("from on_open", timeout=WAIT)  # the queue is full; only we could empty it

    gate = threading.Event()
    pauses = Pauses(gate=gate)
    holder.append(make_client(on_open=on_open, pause=pauses, max_queue=1))
    server.peer(0).drop()
    pauses.wait_count(1)
    holder[0].send("queued")
    gate.set()
    assert server.peer(1).wait_messages(2) == ["queued", "from on_open"]
    holder[0].close()


# -- callbacks --------------------------------------------------------------------------------------


def test_callbacks_see_every_connection(server: Server, make_client: MakeClient) -> None:
    callbacks = Callbacks()
    client = make_client(on_open=callbacks.on_open, on_close=callbacks.on_close)
    assert callbacks.opened == [server.conns[0]]
    assert callbacks.open_threads == [threading.current_thread().name]  # the first: in the caller's thread
    server.peer(0).reset()
    server.peer(1).close(1001)
    server.peer(2)
    callbacks.wait_opens(3)
    report = client.close()
    assert callbacks.opened == server.conns
    assert callbacks.open_threads[1:] == [f"duplexthreads-{client.id}-reconnect"] * 2
    assert callbacks.closed == list(client.reports) and callbacks.closed[-1] is client.reports[-1]
    assert report is not None and report.connection_id == server.conns[2].id


def test_on_open_sends_before_the_replayed_messages(server: Server, make_client: MakeClient) -> None:
    client = make_client(on_open=lambda conn: conn.send(f"hello {len(server.conns)}"))
    assert server.peer(0).wait_messages(1) == ["hello 1"]
    make_unsent(client, server.peer(0), ["a", "b"])
    server.peer(0).reset()
    assert server.peer(1).wait_messages(3) == ["hello 2", "a", "b"]
    client.close()


def test_callbacks_that_raise_are_logged_and_the_client_carries_on(
    server: Server, make_client: MakeClient, caplog: Any
) -> None:
    def broken(_: Any) -> None:
        raise RuntimeError("callback bug")

    with caplog.at_level(logging.ERROR, logger="duplexthreads"):
        client = make_client(on_open=broken, on_close=broken)
        server.peer(0).reset()
        client.send("still here")
        assert server.peer(1).wait_messages(1) == ["still here"]
        client.close()
    assert caplog.text.count("callback raised") == 4  # two openings, two ends
    assert "on_open" in caplog.text and "on_close" in caplog.text


def test_close_from_on_close_does_not_deadlock(server: Server, make_client: MakeClient) -> None:
    holder: List[ReconnectingClient] = []
    results: List[Any] = []

    def on_close(report: ExitReport) -> None:
        results.append(holder[0].close())
        try:
            holder[0].wait(0)
        except UsageError as exc:
            results.append(exc)

    holder.append(make_client(on_close=on_close))
    server.peer(0).reset()
    report = holder[0].wait(WAIT)
    assert results[0] is None and isinstance(results[1], UsageError)
    assert server.calls == 1 and report.reason in (Reason.READ_ERROR, Reason.WRITE_ERROR)


def test_close_from_on_open_closes_after_the_replay(server: Server, make_client: MakeClient) -> None:
    holder: List[ReconnectingClient] = []
    results: List[Any] = []

    def on_open(conn: Duplex) -> None:
        if holder:
            results.append(holder[0].close())

    holder.append(make_client(on_open=on_open))
    make_unsent(holder[0], server.peer(0), ["a"])
    server.peer(0).reset()
    report = holder[0].wait(WAIT)
    assert results == [None]
    assert report.ok and report.unsent == () and server.peer(1).received == ["a"]


def test_close_from_on_message_does_not_deadlock() -> None:
    holder: List[ReconnectingClient] = []
    results: List[Any] = []

    def on_message(message: Any) -> None:
        if message == "bye":
            results.append(holder[0].close())

    server = Server(ping_interval=None, on_message=on_message)
    try:
        holder.append(ReconnectingClient(server, backoff=QUICK))
        with pytest.raises(UsageError):
            holder[0].recv(0)  # the messages go to on_message
        server.peer(0).send("bye")
        report = holder[0].wait(WAIT)
        assert results == [None] and report.reason is Reason.LOCAL_CLOSE and server.calls == 1
    finally:
        if holder:
            holder[0].abort()
        server.stop()


# -- waiting and state ------------------------------------------------------------------------------


def test_wait_times_out_while_running(server: Server, make_client: MakeClient) -> None:
    client = make_client()
    with pytest.raises(TimeoutError):
        client.wait(SHORT)
    with pytest.raises(ValueError, match="timeout"):
        client.wait(-1)
    assert client.report is None and not client.closed
    assert repr(client).startswith(f"<ReconnectingClient {client.id} connected")


def test_context_manager_closes(server: Server) -> None:
    with ReconnectingClient(server, backoff=QUICK) as client:
        client.send("x")
    assert client.closed and client.report is not None and client.report.ok
    assert server.peer(0).wait_messages(1) == ["x"]


def test_close_checks_its_arguments(server: Server, make_client: MakeClient) -> None:
    client = make_client()
    with pytest.raises(ValueError):
        client.close(1006)
    with pytest.raises(TypeError):
        client.close(reason=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        client.close(timeout=-1)
    assert not client.closed


def test_report_of_every_connection_is_kept(server: Server, make_client: MakeClient) -> None:
    client = make_client()
    ids: List[Tuple[int, ...]] = []
    for n in range(3):
        server.peer(n).drop()
        ids.append(tuple(report.connection_id for report in client.reports))
    server.peer(3)
    client.close()
    assert [report.connection_id for report in client.reports] == [conn.id for conn in server.conns]
    assert isinstance(client.reports, tuple)


def test_connection_closed_carries_the_final_report(server: Server, make_client: MakeClient) -> None:
    client = make_client()
    report = client.close()
    with pytest.raises(ConnectionClosed) as caught:
        client.recv()
    assert caught.value.report is report


def test_connect_takes_the_reconnect_options_only_with_reconnect() -> None:
    for option in ({"on_open": print}, {"on_close": print}, {"reconnect_on_normal_close": True}):
        with pytest.raises(ValueError, match="only with reconnect"):
            duplexthreads.connect("ws://127.0.0.1:9/", **option)  # type: ignore[call-overload]


def test_connect_with_reconnect_checks_its_arguments_before_any_io() -> None:
    with pytest.raises(TypeError, match="reconnect"):
        duplexthreads.connect("ws://127.0.0.1:9/", reconnect="always")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="ping_interval"):
        duplexthreads.connect("ws://127.0.0.1:9/", reconnect=True, ping_interval=0)


# -- found by review ---------------------------------------------------------------------------------


def test_a_server_that_accepts_and_drops_at_once_exhausts_max_attempts(server: Server, make_client: MakeClient) -> None:
    backoff = Backoff(initial=0.001, cap=0.002, jitter=0.0, max_attempts=3, reset_after=WAIT)
    client = make_client(backoff=backoff)
    for index in range(4):  # the first connection, then three reconnections that do not last
        server.peer(index).reset()
    report = client.wait(WAIT)
    assert server.calls == 4
    assert isinstance(report.error, duplexthreads.ConnectError) and "3 attempts in a row" in str(report.error)


def test_a_pause_longer_than_threads_can_wait_is_waited_until_close(server: Server) -> None:
    client = ReconnectingClient(server, backoff=Backoff(initial=1e10, cap=1e10, jitter=0.0))
    caught: List[BaseException] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: caught.append(args.exc_value)  # type: ignore[assignment,return-value]
    try:
        server.peer(0).reset()
        threading.Event().wait(SHORT)  # the supervisor starts its pause (nothing to await)
        assert not client.closed
        report = client.close()
    finally:
        threading.excepthook = previous
    assert report is not None and caught == []


def test_on_message_replying_through_the_client_never_waits_for_the_supervisor(server: Server) -> None:
    """The reader must not wait for room only the supervisor can make: the supervisor may be
    waiting for that very reader to end (it did, until the 2 s backstop named it lingering)."""
    holder: List[ReconnectingClient] = []
    entered, go, replied = threading.Event(), threading.Event(), threading.Event()

    def reply(message: object) -> None:
        if message != "question":
            return
        entered.set()
        assert go.wait(WAIT)
        for index in range(5):
            holder[0].send(f"reply {index}")  # no timeout: would wait for room if it could
        replied.set()

    server.options["on_message"] = reply
    client = ReconnectingClient(server, backoff=QUICK, max_queue=1)
    holder.append(client)
    peer = server.peer(0)
    peer.send("question")
    assert entered.wait(WAIT)
    peer.reset()
    client.send("fails to go")  # the writer meets the reset: the connection ends around the reader
    go.set()
    assert replied.wait(WAIT)
    server.peer(1)
    report = client.close()
    assert report is not None
    assert all(not r.lingering for r in client.reports), [r.lingering for r in client.reports]


def test_older_reports_keep_their_errors_but_not_their_frames(server: Server, make_client: MakeClient) -> None:
    client = make_client()
    for index in range(3):
        server.peer(index).reset()
    server.peer(3)
    reports = client.reports
    assert len(reports) == 3 and all(r.error is not None for r in reports)
    assert all(r.error is not None and r.error.__traceback__ is None for r in reports[:-1])
    client.close()


def test_a_reconnecting_client_needs_a_finite_open_timeout() -> None:
    with pytest.raises(ValueError, match="open_timeout"):
        duplexthreads.connect("ws://127.0.0.1:9/", reconnect=True, open_timeout=None)


@pytest.mark.parametrize("endless", [float("inf"), 1e12])
def test_an_endless_open_timeout_is_refused_however_it_is_spelled(endless: float) -> None:
    with pytest.raises(ValueError, match="open_timeout"):
        duplexthreads.connect("ws://127.0.0.1:9/", reconnect=True, open_timeout=endless)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_that_inherited_a_disconnected_client_may_only_close_it(
    server: Server, make_client: MakeClient
) -> None:
    client = make_client(pause=Pauses(until_stop=True))
    server.peer(0).reset()  # the client waits in its backoff pause: nothing to send to
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a process with threads may deadlock the child; this
        # child takes no lock that a thread could hold, and is killed if it is stuck anyway.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report what each call did, then leave at once
        outcome = []
        for call in (lambda: client.send("x", timeout=0), lambda: client.recv(timeout=0), client.wait):
            try:
                call()
                outcome.append("returned")
            except UsageError:
                outcome.append("UsageError")
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                outcome.append(type(exc).__name__)
        outcome.append(repr(client.close()))
        os.write(write, ",".join(outcome).encode())
        os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], WAIT)
        seen = os.read(read, 4096).decode() if ready else "the child did not answer"
    finally:
        os.close(read)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert seen == "UsageError,UsageError,UsageError,None"
    assert not client.closed  # the parent's client is untouched
