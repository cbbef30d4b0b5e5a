"""accept() under a real Gunicorn with the gthread worker, in a child process (app: gunicorn_app.py).

What Gunicorn does with long-lived WebSockets, and which of its settings matter, is written up
in gunicorn_app.py's docstring; the tests below check each point.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import gunicorn
import pytest
import websocket

from ..timing import UNIT
from .gunicorn_app import MAX_MESSAGE_SIZE
from .test_werkzeug import HOSTILE_CLIENT

GUNICORN_VERSION = tuple(int(part) for part in gunicorn.__version__.split(".")[:2] if part.isdigit())

pytestmark = pytest.mark.timeout(30 * UNIT)

APP_DIR = Path(__file__).resolve().parent

# Gunicorn takes whole seconds.
GRACEFUL_TIMEOUT = max(1, round(UNIT))


class Gunicorn:
    """A real Gunicorn (gthread worker, one worker process) in a child process, on 127.0.0.1.

    It binds port 0 itself and the port is read from its "Listening at" line: no port is picked
    here and then raced for. It runs in a session of its own, so that :meth:`kill` ends the
    master and its worker together and none is left behind, whatever state the test left them
    in. Its log (stderr and stdout) is kept in :attr:`log` and read by a thread as it comes.
    """

    def __init__(self, app: str, *options: str, pythonpath: Path = APP_DIR, cwd: Path = APP_DIR) -> None:
        self.args = [
            sys.executable,
            "-m",
            "gunicorn",
            "--worker-class",
            "gthread",
            "--workers",
            "1",
            "--bind",
            "127.0.0.1:0",
            # Since Gunicorn 25 the master also listens on a Unix socket under ~/.gunicorn, one
            # path for every instance: not wanted in a test. (Older ones, which Python 3.9
            # gets, neither have it nor know the option.)
            *(["--no-control-socket"] if GUNICORN_VERSION >= (25,) else []),
            *options,
            app,
        ]
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pythonpath), os.environ.get("PYTHONPATH", "")]))
        # No gunicorn.conf.py is read from here unless the test asks for it with -c.
        self.cwd = cwd
        self.log: List[str] = []
        self._log_changed = threading.Condition()
        self._log_ended = False
        self.port = 0

    def __enter__(self) -> Gunicorn:
        self.process = subprocess.Popen(
            self.args,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_log, name="test-gunicorn-log")
        self._reader.start()
        try:
            (line,) = self.wait_for_log("Listening at: ")
            found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+) ", line)
            assert found, line
            self.port = int(found.group(1))
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    def _read_log(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._log_changed:
                self.log.append(line.rstrip("\n"))
                self._log_changed.notify_all()
        with self._log_changed:
            self._log_ended = True
            self._log_changed.notify_all()

    def wait_for_log(self, *texts: str, start: int = 0, count: int = 1, timeout: float = 10 * UNIT) -> List[str]:
        """The first ``count`` lines from ``log[start]`` on that hold one of ``texts``, waiting
        for them as they come."""

        def found() -> List[str]:
            return [line for line in self.log[start:] if any(text in line for text in texts)][:count]

        with self._log_changed:
            self._log_changed.wait_for(lambda: len(found()) == count or self._log_ended, timeout)
            lines = found()
        assert len(lines) == count, f"not {count} of {texts} in Gunicorn's log within {timeout} s:\n" + self.log_text()
        return lines

    def log_text(self) -> str:
        with self._log_changed:
            return "\n".join(self.log)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The master's exit status, once it has exited within ``timeout``."""
        return self.process.wait(timeout)

    def workers_exit(self, timeout: float) -> bool:
        """Whether every worker the master started ("Booting worker with pid: N") exits within
        ``timeout``. They are the master's children, not ours: a pidfd tells when one exits."""
        deadline = time.monotonic() + timeout
        pids = [int(line.rsplit(" ", 1)[1]) for line in self.log if "Booting worker with pid: " in line]
        assert pids, self.log_text()
        for pid in pids:
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # gone, and reaped already
            try:
                readable, _, _ = select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
            finally:
                os.close(pidfd)
            if not readable:
                return False
        return True

    def kill(self) -> None:
        """Kill the master and its worker (SIGKILL to the session's process group) and reap."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the whole group has exited already
        try:
            self.process.wait(10 * UNIT)
        finally:
            self._reader.join(10 * UNIT)
            assert self.process.stdout is not None
            self.process.stdout.close()
        assert not self._reader.is_alive()

    def get(self, path: str, timeout: float = 10 * UNIT) -> Tuple[int, bytes]:
        return http_get(self.port, path, timeout=timeout)


def http_get(
    port: int, path: str, headers: Optional[Dict[str, str]] = None, timeout: float = 10 * UNIT
) -> Tuple[int, bytes]:
    """An HTTP GET (a plain one without ``headers``): the status and the body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def connect(port: int, path: str) -> websocket.WebSocket:
    return websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=10 * UNIT)


def close_code(client: websocket.WebSocket) -> int:
    """Read up to the server's close frame, answer it, and return its code."""
    while True:
        frame = client.recv_frame()
        if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            break
    code: int = struct.unpack("!H", frame.data[:2])[0]
    try:
        client.send_close(code)
    except (OSError, websocket.WebSocketException):
        # A server that failed the connection (1009) may have reset it already, for the bytes
        # it left unread: the code came all the same.
        pass
    return code


def join_room(port: int, names: Sequence[str], path: str = "/chat") -> Dict[str, websocket.WebSocket]:
    """Connect one client per name to the room, each a member before the next one joins.

    accept() answers the upgrade before the view adds the connection to the room, so a client
    whose handshake is done may miss what others send for a moment. A member that receives a
    newcomer's message proves both in the room: the newcomer's view adds it before it reads.
    So each newcomer but the first says "<name> joined" until every member has heard it, which
    takes one message unless the first client had not been added yet (nobody could tell it),
    then "<name> ready", behind which no "joined" of its can come: the members read up to it.
    """
    clients: Dict[str, websocket.WebSocket] = {}
    try:
        for name in names:
            client = connect(port, path)
            members = list(clients.values())
            clients[name] = client
            deaf = list(members)
            deadline = time.monotonic() + 10 * UNIT
            while deaf:
                assert time.monotonic() < deadline, f"{name} never reached every member"
                client.send(f"{name} joined")
                for member in list(deaf):
                    member.settimeout(0.2 * UNIT)
                    try:
                        assert member.recv() == f"{name} joined"
                        deaf.remove(member)
                    except websocket.WebSocketTimeoutException:
                        pass  # the first one was not in the room yet: say it again
                    finally:
                        member.settimeout(10 * UNIT)
            if not members:
                continue  # the first says nothing: its view might get to it once others are in
            client.send(f"{name} ready")
            for member in members:
                while (message := member.recv()) != f"{name} ready":
                    assert message == f"{name} joined", message
    except BaseException:
        for client in clients.values():
            client.shutdown()
        raise
    return clients


def chat(clients: Dict[str, websocket.WebSocket], count: int) -> None:
    """Every client sends ``count`` numbered messages; check that every other client gets each
    exactly once and in order. Each ends with "<name> done", which marks the end of its messages
    for the others: nothing of a sender's may come after it, or be missing before it."""
    for number in range(count):
        for name, client in clients.items():
            client.send(f"{name} {number}")
    for name, client in clients.items():
        client.send(f"{name} done")
    for name, client in clients.items():
        others = [other for other in clients if other != name]
        received: Dict[str, List[str]] = {other: [] for other in others}
        done: List[str] = []
        while len(done) < len(others):
            sender, _, text = client.recv().partition(" ")
            assert sender in others, (name, sender, text)
            assert sender not in done, f"{name} got {sender}'s {text!r} after its last message"
            if text == "done":
                done.append(sender)
            else:
                received[sender].append(text)
        for other in others:
            assert received[other] == [str(number) for number in range(count)], (name, other)


def chat_and_leave(port: int, names: Sequence[str], count: int) -> None:
    """Join the room, chat (see :func:`chat`), close with 1000; every socket shut down in the end."""
    clients = join_room(port, names)
    try:
        chat(clients, count)
        for client in clients.values():
            client.close(status=1000)
    finally:
        for client in clients.values():
            client.shutdown()


@pytest.fixture(scope="module")
def server() -> Iterator[Gunicorn]:
    """One Gunicorn for the tests that do not stop it; debug logging to see how each request ends."""
    with Gunicorn(
        "gunicorn_app:app", "-c", "python:gunicorn_app", "--threads", "8", "--log-level", "debug"
    ) as gunicorn:
        yield gunicorn


# How gthread logs the end of a request whose response it could not write: a broken pipe
# (debug: taken for a client gone), or any other socket error (error, with a traceback).
EPIPE_LINE = "Ignoring connection epipe"
SOCKET_ERROR_LINE = "Socket error processing request"


def test_echo(server: Gunicorn) -> None:
    payload = (bytes(range(256)) * 274)[:70_000]
    client = connect(server.port, "/echo")
    try:
        client.send("hello")
        client.send_binary(payload)
        assert client.recv() == "hello"
        assert client.recv() == payload
        client.close(status=1000)
    finally:
        client.shutdown()


def test_ended_websockets_leave_gunicorn_at_peace(server: Gunicorn) -> None:
    """The view's response after a WebSocket goes nowhere, and Gunicorn takes that for a client
    gone (a debug line). accept() used to close Gunicorn's socket object under it: each
    WebSocket's end logged an ERROR with a traceback (EBADF), and gthread, failing again on the
    closed socket in its own close, counted the connection closed twice (nr_conns went down by
    2 per WebSocket, past 0: its worker_connections cap and graceful wait count on it)."""
    start = len(server.log)
    for _ in range(3):
        client = connect(server.port, "/echo")
        try:
            client.send("hi")
            assert client.recv() == "hi"
            client.close(status=1000)
        finally:
            client.shutdown()
    # One line per view returned, once Gunicorn has failed to write its response.
    ends = server.wait_for_log(EPIPE_LINE, SOCKET_ERROR_LINE, start=start, count=3)
    assert all(EPIPE_LINE in line for line in ends), server.log_text()
    status, body = server.get("/connections")
    # This very request is a connection: a count below 1 is the double counting.
    assert status == 200 and json.loads(body)["nr_conns"] >= 1, body
    assert "[ERROR]" not in "\n".join(server.log[start:]), server.log_text()


def test_chat_room_of_three(server: Gunicorn) -> None:
    chat_and_leave(server.port, ["ann", "bob", "cyd"], 100)


def test_a_message_over_the_size_limit_closes_only_its_sender(server: Gunicorn) -> None:
    clients = join_room(server.port, ["ann", "bob", "cyd"])
    try:
        clients["cyd"].send_binary(b"\x00" * (MAX_MESSAGE_SIZE + 1))
        assert close_code(clients["cyd"]) == 1009
        # The others go on, and the big message never reached them (chat() fails on any
        # message it does not expect).
        others = {name: client for name, client in clients.items() if name != "cyd"}
        chat(others, 10)
        for client in others.values():
            client.close(status=1000)
    finally:
        for client in clients.values():
            client.shutdown()


@pytest.mark.parametrize("path", ["/chat", "/echo"])
def test_a_plain_request_to_a_websocket_route_gets_400(server: Gunicorn, path: str) -> None:
    start = len(server.log)
    status, body = server.get(path)
    assert status == 400
    assert b"not a WebSocket upgrade" in body
    assert "Traceback" not in "\n".join(server.log[start:])


@pytest.mark.parametrize("mode", ["pipelined", "after-close"])
def test_no_request_is_smuggled_through_the_websocket(server: Gunicorn, mode: str) -> None:
    """test_werkzeug.py's hostile client against Gunicorn: a request it sends along with the
    upgrade request, or after its close frame, never reaches the app. Gunicorn's failed write
    of the view's response makes it close the connection rather than read on.

    Unlike Werkzeug, Gunicorn's parser keeps what it read past the upgrade request to itself:
    accept() cannot hand it to the WebSocket, so here it is lost (the close is a clean 1000,
    where Werkzeug fails the connection with 1002). A client must wait for the 101 anyway."""
    before = json.loads(server.get("/requests")[1])
    start = len(server.log)
    client = subprocess.run(
        [sys.executable, "-c", HOSTILE_CLIENT, str(server.port), mode, str(UNIT)],
        capture_output=True,
        timeout=20 * UNIT,
        check=True,
    )
    seen = json.loads(client.stdout)
    assert seen == {"status": "101", "close_codes": [1000]}
    # Gunicorn is done with the connection once the view's response has failed.
    server.wait_for_log(EPIPE_LINE, SOCKET_ERROR_LINE, start=start)
    after = json.loads(server.get("/requests")[1])
    assert after[len(before) :] == ["GET /ws", "GET /requests"]


def test_each_websocket_holds_a_thread_past_timeout(tmp_path: Path) -> None:
    """With --threads 2, two WebSockets take the whole pool: a plain request waits until one
    ends. Meanwhile they outlive --timeout: the gthread worker is not killed for long requests."""
    timeout = max(2, round(2 * UNIT))
    with Gunicorn("gunicorn_app:app", "--threads", "2", "--timeout", str(timeout), cwd=tmp_path) as server:
        clients = [connect(server.port, "/echo") for _ in range(2)]
        try:
            started = time.monotonic()
            with pytest.raises(socket.timeout):
                server.get("/requests", timeout=timeout + 1 * UNIT)
            assert time.monotonic() - started > timeout
            for client in clients:
                client.send("still here")
                assert client.recv() == "still here"
            assert "WORKER TIMEOUT" not in server.log_text()
            clients[0].close(status=1000)
            # A thread is free: the request that gave up is served, then this one.
            assert server.get("/requests")[0] == 200
            clients[1].close(status=1000)
        finally:
            for client in clients:
                client.shutdown()


def test_sigterm_closes_the_clients_with_1001_through_the_hook(tmp_path: Path) -> None:
    """gunicorn_app's post_worker_init hook closes the hubs when the worker gets SIGTERM: each
    client gets 1001 at once, and Gunicorn exits long before its graceful timeout."""
    graceful_timeout = 30 * GRACEFUL_TIMEOUT  # Gunicorn's default
    options = ["-c", "python:gunicorn_app", "--threads", "8", "--graceful-timeout", str(graceful_timeout)]
    with Gunicorn("gunicorn_app:app", *options, cwd=tmp_path) as server:
        clients = list(join_room(server.port, ["ann", "bob"]).values())
        try:
            clients.append(connect(server.port, "/echo"))
            clients[-1].send("in")
            assert clients[-1].recv() == "in"
            started = time.monotonic()
            server.signal(signal.SIGTERM)
            assert [close_code(client) for client in clients] == [1001, 1001, 1001]
            assert server.wait(5 * UNIT) == 0
            assert time.monotonic() - started < 5 * UNIT < graceful_timeout
            assert server.workers_exit(5 * UNIT)
        finally:
            for client in clients:
                client.shutdown()
        assert "[ERROR]" not in server.log_text()


def test_sigterm_without_the_hook_cuts_the_clients_off_after_the_graceful_timeout(tmp_path: Path) -> None:
    """What Gunicorn does by itself: the worker waits --graceful-timeout for the views, which go
    on, and the master then kills it. The client gets no close frame (1006 in RFC 6455 terms)."""
    options = ["--threads", "8", "--graceful-timeout", str(GRACEFUL_TIMEOUT)]
    with Gunicorn("gunicorn_app:app", *options, cwd=tmp_path) as server:
        client = connect(server.port, "/echo")
        try:
            client.send("in")
            assert client.recv() == "in"
            started = time.monotonic()
            server.signal(signal.SIGTERM)
            with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionResetError)):
                client.recv()
            assert time.monotonic() - started > GRACEFUL_TIMEOUT - 0.1
            assert server.wait(10 * UNIT) == 0
            assert server.workers_exit(5 * UNIT)
        finally:
            client.shutdown()
