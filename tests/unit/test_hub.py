"""The Hub on the memory transport: fan-out, slow clients, leaving, closing."""

from __future__ import annotations

import threading
import time
from typing import Callable, List, Optional, Tuple

import pytest

from duplexthreads import Duplex, Reason, UsageError
from duplexthreads import hub as hub_module
from duplexthreads.hub import Backplane, BackplaneStats, Hub, HubStats
from duplexthreads.report import Message
from duplexthreads.testing import MemoryPeer

from .support import WAIT, MakePair, memory_transport

Pair = Tuple[Duplex, MemoryPeer]


def room(make_pair: MakePair, count: int, **options: object) -> List[Pair]:
    options.setdefault("ping_interval", None)
    pairs = [make_pair(**options) for _ in range(count)]
    for conn, _ in pairs:
        conn.start()
    return pairs


def test_broadcast_reaches_every_member_but_the_excluded(make_pair: MakePair) -> None:
    pairs = room(make_pair, 4)
    hub = Hub()
    for conn, _ in pairs:
        hub.add(conn)
    assert len(hub) == 4 and pairs[0][0] in hub
    assert hub.broadcast("hello", exclude=pairs[0][0]) == 3
    assert hub.broadcast(bytearray(b"\x01")) == 4
    for index, (_, peer) in enumerate(pairs):
        expected = ["hello", b"\x01"] if index else [b"\x01"]
        assert peer.wait_messages(len(expected)) == expected
    assert hub.stats.delivered == 7 and hub.stats.dropped == 0 and hub.stats.cut_off == 0
    reports = hub.close()
    assert [r.close_code for r in reports] == [1001] * 4
    assert all(peer.wait_close_frame() == (1001, "") for _, peer in pairs)


def test_a_client_that_stops_reading_is_cut_off_and_nobody_waits_for_it(make_pair: MakePair) -> None:
    pairs = room(make_pair, 3, max_queue=4, close_timeout=0.2)
    slow_conn, slow_peer = pairs[0]
    slow_peer.stop_reading()
    hub = Hub()
    for conn, _ in pairs:
        hub.add(conn)
    started = time.monotonic()
    for index in range(50):
        hub.broadcast(f"m{index}")
    assert time.monotonic() - started < WAIT / 2  # never waited for the slow one's close
    for _, peer in pairs[1:]:
        assert peer.wait_messages(50) == [f"m{i}" for i in range(50)]
    assert hub.stats.cut_off == 1 and slow_conn not in hub and len(hub) == 2
    report = slow_conn.wait(WAIT)
    assert report.reason is Reason.LOCAL_CLOSE
    assert report.written + len(report.unsent) == hub.stats.delivered - 2 * 50
    hub.close()


def test_with_on_full_drop_a_slow_client_misses_messages_but_stays(make_pair: MakePair) -> None:
    pairs = room(make_pair, 2, max_queue=2)
    slow_conn, slow_peer = pairs[0]
    slow_peer.stop_reading()
    hub = Hub(on_full="drop")
    for conn, _ in pairs:
        hub.add(conn)
    for index in range(20):
        hub.broadcast(f"m{index}")
    assert pairs[1][1].wait_messages(20) == [f"m{i}" for i in range(20)]
    stats = hub.stats
    assert stats.dropped > 0 and stats.cut_off == 0 and stats.delivered + stats.dropped == 40
    assert slow_conn in hub
    slow_conn.abort()
    hub.close()


def test_connections_that_end_leave_by_themselves(make_pair: MakePair) -> None:
    pairs = room(make_pair, 3)
    hub = Hub()
    for conn, _ in pairs:
        hub.add(conn)
    pairs[1][1].close(1000)
    pairs[1][0].wait(WAIT)
    assert len(hub) == 2 and pairs[1][0] not in list(hub)
    assert hub.broadcast("after") == 2
    hub.discard(pairs[2][0])
    assert len(hub) == 1
    hub.close()
    pairs[2][0].close()


def test_broadcasting_from_many_threads_and_from_callbacks(make_pair: MakePair) -> None:
    hub = Hub()
    pairs = room(make_pair, 3)
    relay_conn, relay_peer = make_pair(ping_interval=None, on_message=lambda m: hub.broadcast(m, exclude=relay_conn))
    relay_conn.start()
    for conn, _ in pairs:
        hub.add(conn)
    hub.add(relay_conn)

    def sender(name: str) -> None:
        for index in range(100):
            hub.broadcast(f"{name}-{index}")

    threads = [threading.Thread(target=sender, args=(name,), name=f"unit-sender-{name}") for name in "ab"]
    for thread in threads:
        thread.start()
    relay_peer.send("from the relay's client")
    for thread in threads:
        thread.join(WAIT)
    for _, peer in pairs:
        got = peer.wait_messages(201)
        for name in "ab":  # each sender's messages arrive in its order
            assert [m for m in got if str(m).startswith(f"{name}-")] == [f"{name}-{i}" for i in range(100)]
        assert "from the relay's client" in got
    hub.close()


def test_a_closed_hub_takes_no_more_connections(make_pair: MakePair) -> None:
    ((conn, _),) = room(make_pair, 1)
    hub = Hub()
    hub.close()
    assert hub.closed
    with pytest.raises(UsageError):
        hub.add(conn)
    conn.close()


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda hub: hub.broadcast(123), TypeError),
        (lambda hub: hub.broadcast("\ud800"), ValueError),
        (lambda hub: hub.add("not a connection"), TypeError),
        (lambda hub: hub.close(1005), ValueError),
        (lambda hub: Hub(on_full="wait"), ValueError),
        (lambda hub: Hub(on_full=None), TypeError),
    ],
)
def test_bad_input_is_refused_at_the_call(call: object, error: type) -> None:
    hub = Hub()
    with pytest.raises(error):
        call(hub)  # type: ignore[operator]
    hub.close()


# -- found by review ---------------------------------------------------------------------------------


def test_close_from_a_members_callback_is_refused_and_changes_nothing(make_pair: MakePair) -> None:
    hub = Hub()
    outcome: List[BaseException] = []
    tried = threading.Event()

    def on_message(message: object) -> None:
        try:
            hub.close()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)
        tried.set()

    conn, peer = make_pair(ping_interval=None, on_message=on_message)
    conn.start()
    hub.add(conn)
    peer.send("close the room")
    assert tried.wait(WAIT)
    assert len(outcome) == 1 and isinstance(outcome[0], UsageError)
    assert not hub.closed and conn in hub  # nothing was dropped without being closed
    reports = hub.close()
    assert [r.close_code for r in reports] == [1001] and conn.closed


def test_a_second_close_waits_for_the_first_and_gets_the_same_reports(make_pair: MakePair) -> None:
    pairs = room(make_pair, 3, close_timeout=0.3)
    for _, peer in pairs:
        peer.go_silent()  # each close runs its whole close_timeout
    hub = Hub()
    for conn, _ in pairs:
        hub.add(conn)
    first: List[List[object]] = []
    closer = threading.Thread(target=lambda: first.append(list(hub.close())), name="unit-first-close")
    closer.start()
    while not hub.closed:
        threading.Event().wait(0.001)  # until the first close has begun (no event to await)
    second = hub.close()
    assert all(conn.closed for conn, _ in pairs)  # returned only once they all ended
    closer.join(WAIT)
    assert len(second) == 3 and first == [second]


def test_cut_off_threads_never_outlive_close(make_pair: MakePair) -> None:
    for _ in range(20):
        pairs = room(make_pair, 4, max_queue=1, close_timeout=0.05)
        for _, peer in pairs:
            peer.stop_reading()
        hub = Hub()
        for conn, _ in pairs:
            hub.add(conn)
        senders = [threading.Thread(target=broadcast_five, args=(hub,), name=f"unit-broadcast-{i}") for i in range(3)]
        for sender in senders:
            sender.start()
        hub.close()
        assert not [t.name for t in threading.enumerate() if t.name.endswith("-cutoff")]
        assert all(conn.closed for conn, _ in pairs)
        for sender in senders:
            sender.join(WAIT)


def test_exclude_must_be_a_connection() -> None:
    hub = Hub()
    with pytest.raises(TypeError, match="exclude"):
        hub.broadcast("x", exclude="not a connection")  # type: ignore[arg-type]
    hub.close()


def broadcast_five(hub: Hub) -> None:
    for _ in range(5):
        hub.broadcast("x")


# -- the backplane hook -----------------------------------------------------------------------------


class LoopbackBackplane(Backplane):
    """Two of these, linked, stand for two processes' hubs sharing a channel."""

    def __init__(self) -> None:
        self.other: Optional[LoopbackBackplane] = None
        self.deliver: Optional[Callable[[Message], None]] = None
        self.published: List[Message] = []
        self.closed = 0

    def start(self, deliver: Callable[[Message], None]) -> None:
        assert self.deliver is None, "start() is called once"
        self.deliver = deliver

    def publish(self, message: Message) -> None:
        self.published.append(message)
        if self.other is not None and self.other.deliver is not None and not self.other.closed:
            self.other.deliver(message)

    def close(self) -> None:
        self.closed += 1

    @property
    def stats(self) -> BackplaneStats:
        return BackplaneStats(published=len(self.published), connected=not self.closed)


def test_a_backplane_joins_two_hubs_into_one_room(make_pair: MakePair) -> None:
    left_plane, right_plane = LoopbackBackplane(), LoopbackBackplane()
    left_plane.other, right_plane.other = right_plane, left_plane
    left, right = Hub(backplane=left_plane), Hub(backplane=right_plane)
    left_pairs, right_pairs = room(make_pair, 2), room(make_pair, 2)
    for conn, _ in left_pairs:
        left.add(conn)
    for conn, _ in right_pairs:
        right.add(conn)
    sender = left_pairs[0][0]
    assert left.broadcast("hi", exclude=sender) == 1  # counts this hub's members only
    assert right.broadcast(b"\x02") == 2
    assert left_pairs[0][1].wait_messages(1) == [b"\x02"]  # the sender got the other hub's message
    assert left_pairs[1][1].wait_messages(2) == ["hi", b"\x02"]
    for _, peer in right_pairs:
        assert peer.wait_messages(2) == ["hi", b"\x02"]  # "hi" once: never echoed back
    assert left_plane.published == ["hi"] and right_plane.published == [b"\x02"]
    assert left.stats.backplane == BackplaneStats(published=1, connected=True)
    assert Hub().stats.backplane is None
    left.close()
    assert left_plane.closed == 1 and left.stats.backplane is not None and not left.stats.backplane.connected
    right.broadcast("after")  # the closed hub's backplane no longer delivers
    assert right_pairs[0][1].wait_messages(3)[-1] == "after"
    left.close()
    assert left_plane.closed == 1  # a second close() does not close the backplane again
    right.close()
    assert all(peer.wait_close_frame() == (1001, "") for _, peer in left_pairs + right_pairs)


def test_a_closed_hub_neither_publishes_nor_delivers(make_pair: MakePair) -> None:
    plane = LoopbackBackplane()
    hub = Hub(backplane=plane)
    hub.close()
    assert hub.broadcast("late") == 0 and plane.published == []
    assert plane.deliver is not None
    plane.deliver("from afar")  # a message arriving as the hub closes is dropped quietly


def test_backplane_argument_is_checked() -> None:
    with pytest.raises(TypeError, match="Backplane"):
        Hub(backplane=object())  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError):
        Hub(backplane=Backplane())


# -- grace: waiting for members only momentarily behind ------------------------------------------------


def test_with_grace_a_slow_reader_slows_the_broadcaster_and_is_not_cut_off(make_pair: MakePair) -> None:
    pairs = room(make_pair, 2, max_queue=2)
    slow_conn, slow_peer = pairs[0]
    memory_transport(slow_conn).delay_writes(0.005)  # reads, only slower than we broadcast
    hub = Hub(grace=WAIT)
    for conn, _ in pairs:
        hub.add(conn)
    for index in range(40):
        assert hub.broadcast(f"m{index}") == 2
    expected = [f"m{i}" for i in range(40)]
    assert slow_peer.wait_messages(40) == expected and pairs[1][1].wait_messages(40) == expected
    assert hub.stats == HubStats(delivered=80, dropped=0, cut_off=0)
    hub.close()


def test_grace_is_bounded_for_a_client_that_stopped_reading(make_pair: MakePair) -> None:
    pairs = room(make_pair, 2, max_queue=2, close_timeout=0.2)
    stuck_conn, stuck_peer = pairs[0]
    stuck_peer.stop_reading()
    hub = Hub(grace=0.2)
    for conn, _ in pairs:
        hub.add(conn)
    started = time.monotonic()
    for index in range(10):
        hub.broadcast(f"m{index}")
    # One wait of at most grace, then it is cut off and nobody waits for it again.
    assert time.monotonic() - started < 0.2 + WAIT / 2
    assert pairs[1][1].wait_messages(10) == [f"m{i}" for i in range(10)]
    assert hub.stats.cut_off == 1 and stuck_conn not in hub
    hub.close()


@pytest.mark.parametrize("grace", [None, -1.0, float("inf"), "1"])
def test_grace_must_be_finite_seconds(grace: object) -> None:
    with pytest.raises((TypeError, ValueError), match="grace"):
        Hub(grace=grace)  # type: ignore[arg-type]


def test_close_again_in_the_closing_thread_raises_instead_of_waiting_for_itself(make_pair: MakePair) -> None:
    ((conn, _peer),) = room(make_pair, 1)
    hub = Hub()
    hub.add(conn)
    inner: List[BaseException] = []

    def close_again(report: object) -> None:  # as a signal handler would, in the closing thread
        try:
            hub.close()
        except UsageError as exc:
            inner.append(exc)

    original_close_all = hub_module.close_all

    def close_all_then_again(*args: object, **kwargs: object) -> object:
        close_again(None)
        return original_close_all(*args, **kwargs)  # type: ignore[arg-type]

    hub_module.close_all = close_all_then_again  # type: ignore[assignment]
    try:
        reports = hub.close()
    finally:
        hub_module.close_all = original_close_all
    assert len(inner) == 1 and "already running in this thread" in str(inner[0])
    assert [r.close_code for r in reports] == [1001] and hub.close() == reports


def test_close_from_a_member_being_closed_by_another_close_raises(make_pair: MakePair) -> None:
    errors: List[BaseException] = []
    hub = Hub()
    in_callback = threading.Event()
    closing = threading.Event()

    def on_message(message: object) -> None:
        in_callback.set()
        closing.wait(WAIT)  # until the other close() has emptied the member set
        try:
            hub.close()
        except UsageError as exc:
            errors.append(exc)

    ((conn, peer),) = room(make_pair, 1, on_message=on_message, close_timeout=WAIT)
    hub.add(conn)
    peer.send("go")
    assert in_callback.wait(WAIT)
    original_close_all = hub_module.close_all

    def signal_then_close_all(*args: object, **kwargs: object) -> object:
        closing.set()
        return original_close_all(*args, **kwargs)  # type: ignore[arg-type]

    hub_module.close_all = signal_then_close_all  # type: ignore[assignment]
    try:
        started = time.monotonic()
        reports = hub.close()
    finally:
        hub_module.close_all = original_close_all
    assert len(errors) == 1 and "own threads" in str(errors[0])
    assert reports[0].lingering == () and time.monotonic() - started < WAIT / 2


def test_with_drop_a_member_still_full_after_a_grace_is_not_waited_for_again(make_pair: MakePair) -> None:
    pairs = room(make_pair, 2, max_queue=2)
    stuck_conn, stuck_peer = pairs[0]
    stuck_peer.stop_reading()
    hub = Hub(on_full="drop", grace=0.2)
    for conn, _ in pairs:
        hub.add(conn)
    started = time.monotonic()
    for index in range(20):
        hub.broadcast(f"m{index}")
    # One grace in all, not one per broadcast: every broadcast used to wait for it again.
    assert time.monotonic() - started < 2 * 0.2 + WAIT / 4
    assert pairs[1][1].wait_messages(20) == [f"m{i}" for i in range(20)]
    stats = hub.stats
    assert stuck_conn in hub and stats.cut_off == 0 and stats.dropped > 0 and stats.delivered + stats.dropped == 40
    stuck_conn.abort()
    hub.close()


def test_close_from_a_member_being_cut_off_raises(make_pair: MakePair) -> None:
    """Its cutter waits for the member's reader, which was in the callback calling close()."""
    errors: List[BaseException] = []
    hub = Hub()
    cut = threading.Event()

    def on_message(message: object) -> None:
        cut.wait(WAIT)
        try:
            hub.close()
        except UsageError as exc:
            errors.append(exc)

    (member, peer), (other, _) = room(make_pair, 1, on_message=on_message, max_queue=1) + room(make_pair, 1)
    peer.stop_reading()
    hub.add(member)
    hub.add(other)
    peer.send("go")  # the member's reader is now in on_message
    for index in range(4):
        hub.broadcast(f"m{index}")  # its queue fills: cut off, by a thread waiting for its reader
    assert hub.stats.cut_off == 1
    started = time.monotonic()
    cut.set()
    member.wait(WAIT)
    assert len(errors) == 1 and "own threads" in str(errors[0])
    assert time.monotonic() - started < 1.0 + WAIT / 4  # the cut-off's own bound, no backstop
    hub.close()
