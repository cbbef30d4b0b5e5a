"""RedisBackplane against a real redis-server: hubs in one process, two server processes with
40 clients and a Redis killed mid-chat, and close() while Redis is down or hung.

Each test starts its own ``redis-server`` on a free loopback port. Without one on PATH the
tests are skipped, unless DUPLEXTHREADS_REQUIRE_REDIS=1 (CI) makes that a failure.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import websocket

from duplexthreads import Backoff, Duplex, Hub, RedisBackplane
from duplexthreads.testing import MemoryPeer
from duplexthreads.transports import memory_pair

from ..timing import UNIT

pytestmark = pytest.mark.timeout(60 * UNIT)

WAIT = 10 * UNIT
#: What RedisBackplane.close() promises, whatever Redis does.
CLOSE_BOUND = 2.0 * UNIT
FAST = Backoff(initial=0.05, cap=0.5)
SERVER_SCRIPT = Path(__file__).with_name("backplane_chat_server.py")


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server child process on 127.0.0.1:``port`` that a test can kill, restart, pause."""

    def __init__(self, executable: str, directory: Path) -> None:
        self.executable = executable
        self.directory = directory
        self.port = free_port()
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = self.directory / "redis.log"
        # No persistence: a restarted Redis starts empty, as pub/sub does anyway.
        options = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [self.executable, *options, "--logfile", str(log)],
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + WAIT
        while not self._answers_ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(errors="replace") if log.exists() else "(no log)"
                self.stop()
                raise AssertionError(f"redis-server on port {self.port} did not answer PING:\n{text}")
            time.sleep(0.01)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: Redis vanishes at once, as in a crash; its clients see their connections end."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: Redis hangs with its connections open."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def command(self, line: bytes) -> bytes:
        """An inline command, and the first line of its reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=WAIT) as sock:
            sock.sendall(line + b"\r\n")
            return sock.recv(4096).split(b"\r\n")[0]

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused one too
            self.process.kill()
        self.process.wait()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    required = os.environ.get("DUPLEXTHREADS_REQUIRE_REDIS") == "1"
    missing = None
    if importlib.util.find_spec("redis") is None:
        missing = "redis-py is not installed (pip install 'duplexthreads[redis]')"
    executable = shutil.which("redis-server")
    if executable is None:
        missing = "redis-server is not on PATH (Debian: apt-get install redis-server)"
    if missing is not None:
        if required:
            pytest.fail(f"{missing}, and DUPLEXTHREADS_REQUIRE_REDIS=1 requires the RedisBackplane tests to run")
        pytest.skip(missing)
    assert executable is not None
    server = RedisServer(executable, tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# -- (a) two hubs in this process ----------------------------------------------------------------


Pair = Tuple[Duplex, MemoryPeer]


def connected(hub: Hub) -> bool:
    stats = hub.stats.backplane
    return stats is not None and stats.connected


@pytest.fixture
def make_member() -> Iterator[Callable[[Hub], MemoryPeer]]:
    """Adds a connection over memory to a hub and returns its peer; all ended at teardown."""
    made: List[Pair] = []

    def make(hub: Hub) -> MemoryPeer:
        ours, theirs = memory_pair()
        conn = Duplex(ours, ping_interval=None).start()
        made.append((conn, MemoryPeer(theirs)))
        hub.add(conn)
        return made[-1][1]

    yield make
    for conn, peer in made:
        conn.abort()
        peer.stop()


def test_two_hubs_share_a_room_each_message_once_text_and_binary_kept(
    redis_server: RedisServer, make_member: Callable[[Hub], MemoryPeer]
) -> None:
    first = Hub(backplane=RedisBackplane(redis_server.url, "room-a", backoff=FAST))
    second = Hub(backplane=RedisBackplane(redis_server.url, "room-a", backoff=FAST))
    # Another room on the same Redis: nothing of room-a reaches it.
    elsewhere = Hub(backplane=RedisBackplane(redis_server.url, "room-b", backoff=FAST))
    hubs = (first, second, elsewhere)
    try:
        members = {hub: [make_member(hub) for _ in range(3)] for hub in hubs}
        wait_for(lambda: all(connected(hub) for hub in hubs), what="the backplanes to connect")
        sent: Dict[Hub, List[Any]] = {first: [], second: []}
        for index in range(100):
            for hub, tag in ((first, "first"), (second, "second")):
                message: Any = f"{tag} {index} ✓" if index % 2 else f"{tag} {index}".encode()
                sent[hub].append(message)
                assert hub.broadcast(message) == 3  # the local members, at once
        everything = sent[first] + sent[second]
        for hub in (first, second):
            for peer in members[hub]:
                received = peer.wait_messages(200, timeout=WAIT)
                assert Counter(map(repr, received)) == Counter(map(repr, everything))  # each once, types kept
                # Per sender, in order: the local ones as broadcast, the other hub's as published.
                for origin in (first, second):
                    assert [m for m in received if m in sent[origin]] == sent[origin]
        time.sleep(0.2 * UNIT)  # nothing more may come: a message never comes back to its own hub
        for hub in (first, second):
            for peer in members[hub]:
                assert len(peer.received) == 200
        assert all(peer.received == [] for peer in members[elsewhere])
        for hub in (first, second):
            stats = hub.stats.backplane
            assert stats is not None
            assert (stats.published, stats.received, stats.unsent, stats.missed, stats.outages) == (100, 100, 0, 0, 0)
        assert elsewhere.stats.backplane is not None and elsewhere.stats.backplane.received == 0
    finally:
        for hub in hubs:
            started = time.monotonic()
            hub.close()
            assert time.monotonic() - started < CLOSE_BOUND + 1.0 * UNIT  # the members' close included


# -- (b) two server processes, 40 clients, Redis killed mid-chat ---------------------------------


class ChatServer:
    """backplane_chat_server.py in a child process."""

    def __init__(self, redis_url: str, channel: str, log: Path) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), redis_url, channel],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], WAIT)
        line = self.process.stdout.readline().decode() if ready else ""
        if not line.startswith("PORT "):
            self.stop()
            raise AssertionError(f"the chat server did not start: {line!r}\n{self.log()}")
        self.port = int(line.split()[1])
        self.final: Optional[Dict[str, Any]] = None

    def stats(self) -> Dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=WAIT) as answer:
            result: Dict[str, Any] = json.loads(answer.read())
        return result

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Close its stdin: it closes the hub (its clients get 1001) and prints its final stats."""
        if self.process.returncode is None:
            try:
                out, _ = self.process.communicate(timeout=WAIT)
                lines = out.decode().strip().splitlines()
                if lines and lines[-1].startswith("{"):
                    self.final = json.loads(lines[-1])
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.communicate()
        self._log.close()


class Client:
    """A websocket-client connection with a thread that records what arrives: (sender, number, type)."""

    def __init__(self, cid: int, port: int) -> None:
        self.cid = cid
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws", timeout=WAIT)
        self.ws.settimeout(None)  # the reader waits as long as the chat goes on
        self.received: List[Tuple[int, int, type]] = []
        self.thread = threading.Thread(target=self._read, name=f"test-client-{cid}")
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.ws.recv()
            except (websocket.WebSocketException, OSError):
                return
            if data in ("", b""):  # the server's close frame
                return
            text = data.decode() if isinstance(data, bytes) else data
            sender, number = text.split(":")
            self.received.append((int(sender), int(number), type(data)))

    def send(self, number: int) -> None:
        text = f"{self.cid}:{number}"
        if number % 2:
            self.ws.send_binary(text.encode())
        else:
            self.ws.send(text)

    def end(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        self.ws.shutdown()


def test_two_server_processes_one_room_through_a_redis_killed_mid_chat(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    per_server, total = 20, 1000
    servers: List[ChatServer] = []
    clients: List[Client] = []
    try:
        servers = [ChatServer(redis_server.url, "chat", tmp_path / f"server{index}.log") for index in range(2)]
        wait_for(lambda: all(s.stats()["backplane"]["connected"] for s in servers), what="the servers to connect")
        clients = [Client(cid, servers[cid // per_server].port) for cid in range(2 * per_server)]
        wait_for(lambda: [s.stats()["members"] for s in servers] == [per_server] * 2, what="every client to join")

        # Who sent what, numbered 0..999 in sending order; the sender's process is cid // 20.
        senders: List[int] = []

        def send(numbers: range, pause: float = 0.0) -> None:
            for number in numbers:
                cid = number % len(clients)
                senders.append(cid)
                clients[cid].send(number)
                if pause:
                    time.sleep(pause)

        def received_all(numbers: range, cross_process: bool) -> bool:
            for client in clients:
                got = {n for _, n, _ in client.received}
                for number in numbers:
                    sender = senders[number]
                    if sender == client.cid:
                        continue
                    if cross_process or sender // per_server == client.cid // per_server:
                        if number not in got:
                            return False
            return True

        # 1. 400 messages: every one reaches every other client, in both processes.
        phase1 = range(0, 400)
        send(phase1, pause=0.0005)
        wait_for(lambda: received_all(phase1, cross_process=True), what="the first 400 messages everywhere")

        # 2. 400 more while Redis dies and is restarted on the same port: the chat goes on. Redis
        # hangs (SIGSTOP) for a moment before it is killed, so that PUBLISH commands are surely
        # in flight when it dies: their outcome is unknown to the servers, they count unsent.
        phase2 = range(400, 800)
        chatting = threading.Thread(target=send, args=(phase2, 0.003), name="test-chat")
        chatting.start()
        time.sleep(0.3)
        redis_server.pause()
        time.sleep(0.2)
        redis_server.kill()
        wait_for(lambda: not any(s.stats()["backplane"]["connected"] for s in servers), what="the outage to show")
        time.sleep(0.3)
        redis_server.start()
        chatting.join(WAIT)
        assert not chatting.is_alive()
        wait_for(lambda: all(s.stats()["backplane"]["connected"] for s in servers), what="the servers to reconnect")
        # Local delivery never stopped.
        wait_for(lambda: received_all(phase2, cross_process=False), what="local delivery during the outage")

        # 3. The last 200 once reconnected: cross-process delivery has resumed.
        phase3 = range(800, total)
        send(phase3, pause=0.0005)
        wait_for(lambda: received_all(phase3, cross_process=True), what="the last 200 messages everywhere")
        stats = [s.stats() for s in servers]
    finally:
        for server in servers:
            server.stop()
        for client in clients:
            client.end()

    assert len(senders) == total
    # Per sending process, which of its messages reached the other process (the same set for
    # every client there: the hub hands each arrival to all of them).
    reached: Dict[int, set[int]] = {}
    for client in clients:
        home = client.cid // per_server
        numbers = [n for _, n, _ in client.received]
        assert len(numbers) == len(set(numbers)), f"client {client.cid} got a message twice"
        by_sender: Dict[int, List[int]] = defaultdict(list)
        for sender, number, kind in client.received:
            assert senders[number] == sender and sender != client.cid
            assert kind is (bytes if number % 2 else str)  # text stays text, binary binary
            by_sender[sender].append(number)
        for numbers_of_sender in by_sender.values():
            assert numbers_of_sender == sorted(numbers_of_sender)  # each sender's order kept
        for origin in (0, 1):
            if origin == home:
                expected = {n for n, s in enumerate(senders) if s // per_server == home and s != client.cid}
                assert {n for s, n, _ in client.received if s // per_server == home} == expected
            else:
                got = frozenset(n for s, n, _ in client.received if s // per_server == origin)
                assert reached.setdefault(origin, set(got)) == got
    for origin in (0, 1):
        other = 1 - origin
        published = {n for n, s in enumerate(senders) if s // per_server == origin}
        lost = published - reached[origin]
        assert lost <= set(phase2)  # nothing of phases 1 and 3
        unsent = stats[origin]["backplane"]["unsent"]
        missed = stats[other]["backplane"]["missed"]
        # The stats account for every loss: missed ones are surely lost, unsent ones may be
        # (a PUBLISH cut off by the kill may have run), and nothing else is.
        assert missed <= len(lost) <= unsent + missed, (lost, unsent, missed)
        assert 1 <= unsent <= 256  # what was in flight (one batch at most) when Redis died
        assert stats[origin]["backplane"]["outages"] == 1
        assert stats[origin]["dropped"] == 0 and stats[origin]["cut_off"] == 0
    for server in servers:
        log = server.log()
        assert "lost Redis" in log and "reconnected" in log, log
        assert server.final is not None and server.final["backplane"]["connected"] is False


# -- what an outage costs, counted exactly -------------------------------------------------------


def test_a_batch_in_flight_when_redis_dies_counts_unsent_once(redis_server: RedisServer) -> None:
    received: List[Any] = []
    listener = started_backplane(redis_server.url, received)
    speaker = started_backplane(redis_server.url)
    try:
        speaker.publish("before")
        wait_for(lambda: received == ["before"], what="the first message")
        redis_server.pause()  # it reads nothing more: what the speaker sends now is in flight
        for index in range(20):
            speaker.publish(f"m{index}")
            time.sleep(0.002)
        time.sleep(0.1)
        redis_server.kill()  # in flight for good: a stopped Redis never ran those PUBLISH commands
        wait_for(lambda: speaker.stats.unsent > 0, what="the batch in flight to count")
        redis_server.start()
        wait_for(lambda: listener.connected and speaker.connected, what="both to reconnect")
        speaker.publish("after")
        wait_for(lambda: received[-1:] == ["after"], what="the message after the outage")
        lost = 22 - len(received)
        speaker_stats, listener_stats = speaker.stats, listener.stats
        # The batch in flight was the first after the pause; the rest waited and went out after.
        assert received == ["before"] + [f"m{index}" for index in range(lost, 20)] + ["after"]
        # Counted once, by the speaker: the listener saw the jump but knows it is counted.
        assert (speaker_stats.unsent, listener_stats.missed) == (lost, 0)
        assert speaker_stats.published == 22 - lost and listener_stats.received == 22 - lost
        assert speaker_stats.outages == listener_stats.outages == 1
    finally:
        speaker.close()
        listener.close()


def test_what_is_published_while_a_subscriber_is_away_counts_missed(redis_server: RedisServer) -> None:
    received: List[Any] = []
    listener = started_backplane(redis_server.url, received)
    speaker = started_backplane(redis_server.url)
    count = 300
    try:

        def chat() -> None:
            for index in range(count):
                speaker.publish(f"m{index}")
                time.sleep(0.002)

        chatting = threading.Thread(target=chat, name="test-chat")
        chatting.start()
        time.sleep(0.2)
        # Redis drops every subscriber (as it does one too slow for its output buffer limit):
        # the publishing connections stay, so what goes out until they are back is missed.
        assert redis_server.command(b"CLIENT KILL TYPE pubsub") == b":2"
        chatting.join(WAIT)
        wait_for(lambda: listener.connected and speaker.connected, what="both to resubscribe")
        speaker.publish("after")
        wait_for(lambda: received[-1:] == ["after"], what="the message after the gap")
        lost = count + 1 - len(received)
        assert lost > 0
        assert (speaker.stats.unsent, listener.stats.missed) == (0, lost)
        assert speaker.stats.published == count + 1
        assert speaker.stats.outages == listener.stats.outages == 1
        assert received[:-1] == sorted(received[:-1], key=lambda m: int(m[1:]))  # in order, with a gap
    finally:
        speaker.close()
        listener.close()


# -- (c) close() is bounded whatever Redis does ---------------------------------------------------


def started_backplane(url: str, received: Optional[List[Any]] = None) -> RedisBackplane:
    backplane = RedisBackplane(url, "room", backoff=FAST)
    backplane.start((received if received is not None else []).append)
    wait_for(lambda: backplane.connected, what="the backplane to connect")
    return backplane


def test_close_flushes_what_waits_when_redis_is_up(redis_server: RedisServer) -> None:
    received: List[Any] = []
    listener = started_backplane(redis_server.url, received)
    speaker = started_backplane(redis_server.url)
    try:
        wait_for(lambda: listener.connected and speaker.connected)
        for index in range(2000):
            speaker.publish(f"m{index}")
        started = time.monotonic()
        speaker.close()
        assert time.monotonic() - started < CLOSE_BOUND
        assert speaker.stats.unsent == 0 and speaker.stats.published == 2000
        wait_for(lambda: len(received) == 2000, what="every message to arrive")
        assert received == [f"m{index}" for index in range(2000)]
    finally:
        speaker.close()
        listener.close()


def test_close_while_redis_is_down_is_bounded(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="duplexthreads.backplane")
    backplane = started_backplane(redis_server.url)
    try:
        redis_server.kill()
        wait_for(lambda: not backplane.connected, what="the outage to show")
        backplane.publish("waits in the outbox")
        time.sleep(0.2)  # a few reconnect attempts
        assert backplane.stats.outages == 1
        started = time.monotonic()
        backplane.close()
        assert time.monotonic() - started < CLOSE_BOUND
        assert backplane.stats.unsent == 1
    finally:
        backplane.close()
    assert [r.levelname for r in caplog.records if "lost Redis" in r.getMessage()] == ["WARNING"]


def test_close_while_redis_hangs_is_bounded(redis_server: RedisServer) -> None:
    received: List[Any] = []
    listener = started_backplane(redis_server.url, received)
    speaker = started_backplane(redis_server.url)
    try:
        speaker.publish("before")
        wait_for(lambda: received == ["before"], what="the first message")
        redis_server.pause()  # SIGSTOP: connections stay open, nothing answers
        for index in range(100):
            speaker.publish(f"m{index}")  # never waits, though the publisher now does
        time.sleep(0.1)
        for backplane in (speaker, listener):
            started = time.monotonic()
            backplane.close()
            assert time.monotonic() - started < CLOSE_BOUND
        # The hung batch's outcome is unknown: unsent, never sent again.
        assert speaker.stats.published + speaker.stats.unsent == 101
    finally:
        speaker.close()
        listener.close()
        redis_server.stop()
