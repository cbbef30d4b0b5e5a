"""The reconnecting client against real loopback servers that fail under it.

Each test sends 10,000 numbered messages through ``connect(url, reconnect=...)`` while the
server misbehaves, then checks both sides: every number
reached the server, in order within each connection, and the client's accounting (what each
connection wrote plus what is still unsent) covers every message it accepted.

The servers end connections with FIN, after reading everything sent before it (a drop), or
shut down only once they have read everything sent so far (a restart). Neither loses bytes in
flight, so the numbers must arrive exactly once: the client never sends again what a connection
wrote. Bytes lost in flight on a reset are what the module's docstring says the client cannot
know about; the unit tests cover those.
"""

from __future__ import annotations

import threading
from typing import Iterator, List, Optional

import pytest

import duplexthreads
from duplexthreads import ConnectError, ConnectionClosed, ConnectionClosedError, HandshakeRejected, Reason
from duplexthreads.reconnect import Backoff, ReconnectingClient
from duplexthreads.testing import PeerConnection, ScriptedPeer

from ..timing import UNIT

pytestmark = pytest.mark.timeout(60 * UNIT)

COUNT = 10_000
#: The dropping server drops a connection once it has received this many messages on it.
EVERY = 300
#: Every this many messages the sender waits for a pong (see ``send_numbers``).
PACE = 100
TIMEOUT = 10 * UNIT
#: Short enough that a test spends little time disconnected; reset_after=0: every opening counts.
BACKOFF = Backoff(initial=0.005, factor=2.0, cap=0.02, jitter=0.5, reset_after=0.0)


class Connections:
    """The server side of a test: every connection the peers accepted, in order."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.remotes: List[PeerConnection] = []

    def add(self, remote: PeerConnection) -> None:
        with self.cond:
            self.remotes.append(remote)
            self.cond.notify_all()

    def wait_delivered(self, count: int) -> None:
        """Wait until the connections together have received ``count`` messages."""
        while True:
            with self.cond:
                if not self.cond.wait_for(lambda: bool(self.remotes), TIMEOUT):
                    raise TimeoutError("no connection was accepted")
                remotes = list(self.remotes)
            earlier = sum(len(remote.received) for remote in remotes[:-1])
            try:
                remotes[-1].wait_messages(count - earlier, TIMEOUT)
                return
            except ConnectionError:
                pass  # it ended first: the rest goes to the next connection
            seen = len(remotes)
            with self.cond:
                if not self.cond.wait_for(lambda: len(self.remotes) > seen, TIMEOUT):  # noqa: B023 - used at once
                    raise TimeoutError(f"no connection after #{seen - 1} ended")

    def numbers(self) -> List[List[int]]:
        """What each connection received, as numbers."""
        return [[int(message) for message in remote.received] for remote in self.remotes]


class DroppingServer(Connections):
    """A scripted peer that drops each connection (FIN, no close frame, reading on) once it has
    received ``every`` messages on it. A thread of the test process watches the connections."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every
        self.peer = ScriptedPeer(timeout=TIMEOUT)
        self.stopping = threading.Event()
        self.drops = 0
        self.thread = threading.Thread(target=self._drop_each, name="dropping-server")
        self.thread.start()

    def _drop_each(self) -> None:
        while True:
            try:
                remote = self.peer.next_connection(TIMEOUT)
            except TimeoutError:
                return  # only after a failure elsewhere
            self.add(remote)
            try:
                remote.wait_messages(self.every)
            except (ConnectionError, TimeoutError):
                if self.stopping.is_set():
                    return
                continue
            if self.stopping.is_set():
                return
            remote.drop()
            self.drops += 1

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(2 * TIMEOUT)
        self.peer.close()
        assert not self.thread.is_alive()


def send_numbers(client: ReconnectingClient, start: int, stop: int) -> None:
    """Send ``start``..``stop - 1`` as text.

    Every ``PACE`` messages it waits for a pong, which the server sends only once it has read
    everything before the ping: an application that keeps pace with its server. Without it the
    whole run fits in the sockets' buffers before the first drop.
    """
    for number in range(start, stop):
        client.send(str(number), timeout=TIMEOUT)
        if number % PACE == PACE - 1:
            conn = client.connection
            if conn is not None:
                try:
                    conn.ping(TIMEOUT)
                except (ConnectionClosed, TimeoutError):
                    pass  # the connection is ending: the client carries on with the next


def check_delivery(client: ReconnectingClient, server: Connections) -> None:
    report = client.report
    assert report is not None and report.ok and report.unsent == ()
    # The client's accounting: each message written by exactly one connection, none left over.
    assert sum(ended.written for ended in client.reports) + len(report.unsent) == COUNT
    received = server.numbers()
    for numbers in received:
        assert numbers == sorted(set(numbers)), "out of order or repeated within one connection"
    # Nothing was lost in flight (see the module docstring), so each number arrived exactly once.
    assert [number for numbers in received for number in numbers] == list(range(COUNT))


@pytest.fixture
def dropping_server() -> Iterator[DroppingServer]:
    server = DroppingServer(EVERY)
    try:
        yield server
    finally:
        server.close()


def test_a_server_that_drops_every_few_hundred_messages(dropping_server: DroppingServer, backend: str) -> None:
    client = duplexthreads.connect(
        dropping_server.peer.url, reconnect=BACKOFF, backend=backend, max_queue=200, ping_interval=None
    )
    try:
        send_numbers(client, 0, COUNT)
        dropping_server.stopping.set()
        # Closing while disconnected would leave the rest unsent (as the report would say):
        # wait until the server has everything, then close.
        dropping_server.wait_delivered(COUNT)
        client.close()
    finally:
        client.abort()
    check_delivery(client, dropping_server)
    assert dropping_server.drops >= 5 and len(client.reports) == dropping_server.drops + 1
    for ended in client.reports[:-1]:
        assert ended.reason is Reason.READ_ERROR and ended.close_code == 1006
    # Each connection got a few hundred messages, never the whole run.
    assert max(len(numbers) for numbers in dropping_server.numbers()) < COUNT // 4


def test_a_server_restarted_on_the_same_port(backend: str) -> None:
    server = Connections()
    ended = threading.Semaphore(0)
    peers: List[ScriptedPeer] = [ScriptedPeer(timeout=TIMEOUT)]
    port = peers[0].port
    client: Optional[ReconnectingClient] = None
    try:
        client = duplexthreads.connect(
            peers[0].url, reconnect=BACKOFF, backend=backend, on_close=lambda report: ended.release()
        )
        server.add(peers[0].next_connection(TIMEOUT))
        sent = 0
        for restart_at in (3_000, 7_000):
            send_numbers(client, sent, restart_at)
            sent = restart_at
            # The server stops once it has read everything sent so far: nothing is in flight.
            server.wait_delivered(sent)
            peers[-1].close()
            assert ended.acquire(timeout=TIMEOUT), "the client did not see the server go"
            # While the server is down, messages wait in the client; openings are refused.
            send_numbers(client, sent, sent + 500)
            sent += 500
            assert client.connection is None and client.pending == 500
            peers.append(ScriptedPeer(port=port, timeout=TIMEOUT))
            server.add(peers[-1].next_connection(TIMEOUT))
        send_numbers(client, sent, COUNT)
        server.wait_delivered(COUNT)
        client.close()
        check_delivery(client, server)
        assert len(client.reports) == 3
        assert isinstance(client.last_error, ConnectError)  # at least one opening was refused
        assert [len(numbers) for numbers in server.numbers()] == [3_000, 4_000, 3_000]
    finally:
        if client is not None:
            client.abort()
        for peer in peers:
            peer.close()


def test_a_5xx_is_retried_and_a_4xx_stops_for_good() -> None:
    ended = threading.Semaphore(0)
    peers: List[ScriptedPeer] = [ScriptedPeer(timeout=TIMEOUT)]
    port = peers[0].port
    client: Optional[ReconnectingClient] = None
    try:
        client = duplexthreads.connect(peers[0].url, reconnect=BACKOFF, on_close=lambda report: ended.release())
        peers[0].next_connection(TIMEOUT)
        peers[0].close()
        assert ended.acquire(timeout=TIMEOUT)
        client.send("waiting")
        # Restarted, but not ready: 503 twice (each attempt shows up on the peer), still retrying.
        peers.append(ScriptedPeer(port=port, reject=503, timeout=TIMEOUT))
        for _ in range(2):
            assert peers[-1].next_connection(TIMEOUT).response_status == 503
        assert client.report is None
        peers[-1].close()
        # Now it refuses us for good.
        peers.append(ScriptedPeer(port=port, reject=403, timeout=TIMEOUT))
        report = client.wait(TIMEOUT)
        assert isinstance(report.error, HandshakeRejected) and report.error.status == 403
        assert report.unsent == ("waiting",) and len(client.reports) == 1
        with pytest.raises(ConnectionClosedError):
            client.recv(TIMEOUT)
    finally:
        if client is not None:
            client.abort()
        for peer in peers:
            peer.close()


def test_the_first_connection_fails_loudly() -> None:
    with ScriptedPeer(timeout=TIMEOUT) as peer:
        url = peer.url
    with pytest.raises(ConnectError):  # nothing listens there any more
        duplexthreads.connect(url, reconnect=True, open_timeout=TIMEOUT)
    with ScriptedPeer(reject=401, timeout=TIMEOUT) as peer, pytest.raises(HandshakeRejected) as caught:
        duplexthreads.connect(peer.url, reconnect=True, open_timeout=TIMEOUT)
    assert caught.value.status == 401
