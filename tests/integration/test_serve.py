"""serve(): the embedded chat room on Werkzeug, on loopback, against real clients.

The first test is the issue's proof: fifty clients nobody here wrote (websocket-client and the
``websockets`` sync client, half each, in child processes of ``room_clients.py``) chat in one
room and see 1001 when the server stops, which leaves no thread, no descriptor and no listener
behind. The others check what serve() promises one by one: its arguments, its answers to plain
HTTP, the notices, close() in every state a request can be in, and the room's defences: a
message over the size limit, a client whose TCP died, a flood, a client too slow for the room.

Every test runs under the suite's leak check (no thread, socket or descriptor left, no
exception in any thread).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import queue
import re
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional, Set, Tuple

import pytest
import websocket

import duplexthreads
from duplexthreads import ChatServer, ConnectError, Duplex, HandshakeRejected, Message, Reason, serve
from duplexthreads.testing import Relay

from ..timing import UNIT

pytestmark = pytest.mark.timeout(60 * UNIT)

WAIT = 10 * UNIT
LOGGER = "duplexthreads.serve"
SCRIPT = Path(__file__).with_name("room_clients.py")
URL = re.compile(r"^ws://127\.0\.0\.1:(\d+)/$")


# -- helpers ------------------------------------------------------------------------------------------


class Inbox:
    """An ``on_message`` callback that keeps what arrives, with when it arrived."""

    def __init__(self) -> None:
        self.messages: List[Message] = []
        self.times: List[float] = []
        self.chat_count = 0  # messages that are not notices
        self._seen: Set[Message] = set()
        self._cond = threading.Condition()

    def __call__(self, message: Message) -> None:
        now = time.monotonic()
        with self._cond:
            self.messages.append(message)
            self.times.append(now)
            self._seen.add(message)
            if not (isinstance(message, str) and message.startswith("* ")):
                self.chat_count += 1
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[List[Message]], bool], timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.messages), timeout)

    def wait_for_chat_count(self, count: int, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.chat_count >= count, timeout)

    def wait_until_has(self, message: Message, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: message in self._seen, timeout)

    def chat(self) -> List[Message]:
        with self._cond:
            return [m for m in self.messages if not (isinstance(m, str) and m.startswith("* "))]


def join(url: str, **options: Any) -> Tuple[Duplex, Inbox]:
    """A duplexthreads client in the room, with its inbox; its welcome has arrived."""
    inbox = Inbox()
    options.setdefault("ping_interval", None)
    conn = duplexthreads.connect(url, on_message=inbox, **options)
    assert inbox.wait_for(lambda messages: len(messages) >= 1), "no welcome"
    return conn, inbox


def socket_fds() -> Set[str]:
    """The sockets this process holds, by their target in /proc/self/fd."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{name}")
            if target.startswith("socket:"):
                found.add(f"{name}->{target}")
    return found


def listeners(port: int) -> List[str]:
    """The local addresses with a TCP socket listening on ``port``, from /proc/net/tcp{,6}."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                address, hex_port = fields[1].split(":")
                if fields[3] != "0A" or int(hex_port, 16) != port:
                    continue
                if len(address) == 8:
                    found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:  # four 32-bit words, each in host (little-endian) order
                    raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, 32, 8))
                    found.append(socket.inet_ntop(socket.AF_INET6, raw))
    return found


def http_request(port: int, method: str, path: str, headers: Optional[Dict[str, str]] = None) -> Tuple[int, Any, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request(method, path, body=b"hello" if method == "POST" else None, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection and read until the server ends it."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(data)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
    return answer


def assert_refused(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()


def serve_threads() -> List[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("duplexthreads-serve")]


def percentile(values: List[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- 1. the proof -------------------------------------------------------------------------------------------

ROOM = 50
COUNT = 100
# One process per library (two cores run them and the server best; more processes add nothing).
LIBRARIES = ["websocket-client", "websockets"]


def event_is(kind: str, **fields: object) -> Callable[[Dict[str, Any]], bool]:
    """A predicate on the events of ClientProcesses: of this kind, with these values."""
    return lambda event: event["event"] == kind and all(event.get(k) == v for k, v in fields.items())


class ClientProcesses:
    """The child processes of room_clients.py, and what they print, as one stream of events."""

    def __init__(self, directory: Path) -> None:
        self.events: queue.Queue[Dict[str, Any]] = queue.Queue()
        self.seen: List[Dict[str, Any]] = []  # every event taken off the queue, in order
        self._pending: List[Dict[str, Any]] = []  # taken, not claimed by a wait yet
        self.procs: List[subprocess.Popen[str]] = []
        self._readers: List[threading.Thread] = []
        self._errors: List[IO[str]] = []
        self.stderr_texts: List[str] = []  # what each process wrote on stderr, once closed
        self._directory = directory

    def start(self, url: str, libraries: List[str], room: int, count: int) -> None:
        for child, library in enumerate(libraries):
            errors = open(self._directory / f"child-{child}.err", "w+")  # closed by close()
            self._errors.append(errors)
            proc = subprocess.Popen(
                [sys.executable, str(SCRIPT), url, library, str(room), str(count), str(UNIT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                bufsize=1,
            )
            self.procs.append(proc)
            reader = threading.Thread(target=self._read, args=(child, proc), name=f"test-serve-child-{child}")
            reader.start()
            self._readers.append(reader)

    def _read(self, child: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = json.loads(line)
            event["child"] = child
            self.events.put(event)
        self.events.put({"event": "exited", "child": child})

    def tell(self, child: int, command: str) -> None:
        stdin = self.procs[child].stdin
        assert stdin is not None
        stdin.write(command + "\n")
        stdin.flush()

    def wait_for(
        self, predicate: Callable[[Dict[str, Any]], bool], deadline: float, what: str, fail_on: Tuple[str, ...] = ()
    ) -> Dict[str, Any]:
        """The first event matching ``predicate``; AssertionError at the deadline, when a process
        fails, or on an event of a kind in ``fail_on`` (such as a client closed too early)."""
        for index, event in enumerate(self._pending):
            if event["event"] in fail_on:
                raise AssertionError(f"{event} while waiting for {what}")
            if predicate(event):
                return self._pending.pop(index)
        while True:
            try:
                event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {what} in time; stderr: {self.stderr()!r}") from None
            self.seen.append(event)
            if event["event"] in ("error", "exited"):
                raise AssertionError(f"a client process failed: {event}; stderr: {self.stderr()!r}")
            if event["event"] in fail_on:
                raise AssertionError(f"{event} while waiting for {what}")
            if predicate(event):
                return event
            self._pending.append(event)

    def stderr(self) -> List[str]:
        texts = []
        for errors in self._errors:
            errors.seek(0)
            texts.append(errors.read())
        return texts

    def close(self) -> List[Optional[int]]:
        """Ask each process to quit, kill what is left, join the readers; the exit codes."""
        deadline = time.monotonic() + WAIT
        for proc in self.procs:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.write("quit\n")
                proc.stdin.close()
        codes: List[Optional[int]] = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(WAIT)
                codes.append(None)
        for reader in self._readers:
            reader.join(WAIT)
        for proc in self.procs:
            assert proc.stdout is not None
            proc.stdout.close()
        self.stderr_texts = self.stderr()
        for errors in self._errors:
            errors.close()
        return codes


@pytest.mark.timeout(90 * UNIT)
def test_fifty_clients_of_two_libraries_chat_in_one_room_then_see_1001(tmp_path: Path) -> None:
    started = time.monotonic()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    sockets_before = socket_fds()
    children = ClientProcesses(tmp_path)
    try:
        with serve() as server:
            port = server.port
            children.start(server.url, LIBRARIES, ROOM, COUNT)
            deadline = time.monotonic() + 45 * UNIT
            # The clients join one at a time, so that names, counts and notices are exact: the
            # next one opens once the first client has heard of the last one joining.
            where: Dict[Tuple[int, int], int] = {}  # (process, client in it) -> join order
            for k in range(1, ROOM + 1):
                child = (k - 1) % len(LIBRARIES)
                children.tell(child, "join")
                joined = children.wait_for(
                    event_is("joined", child=child),
                    deadline,
                    f"join of client {k}",
                    fail_on=("closed",),
                )
                assert joined["first"] == f"* welcome, you are guest-{k} ({k} here)"
                where[(child, joined["client"])] = k
                if k > 1:
                    expected = f"* guest-{k} joined ({k} here)"
                    children.wait_for(
                        event_is("notice", child=0, client=0, text=expected),
                        deadline,
                        f"notice {expected!r} at the first client",
                        fail_on=("closed",),
                    )
            joined_at = time.monotonic()
            assert len(server.hub) == ROOM
            for child in range(len(LIBRARIES)):
                children.tell(child, "go")
            received: Dict[int, Dict[str, Any]] = {}
            for _ in range(ROOM):
                event = children.wait_for(
                    lambda e: e["event"] == "received", deadline, "all messages", fail_on=("closed",)
                )
                received[where[(event["child"], event["client"])]] = event
            chatted_at = time.monotonic()
        # The with block has ended: the server closed every client and stopped.
        closed_at = time.monotonic()
        codes: Dict[int, Dict[str, Any]] = {}
        for _ in range(ROOM):
            event = children.wait_for(lambda e: e["event"] == "closed", time.monotonic() + WAIT, "close codes")
            codes[where[(event["child"], event["client"])]] = event
    finally:
        exit_codes = children.close()  # quit, or killed after a bound
    # Nothing of the server is left: threads, sockets, the listener; the port refuses.
    assert serve_threads() == []
    assert [t.name for t in threading.enumerate() if t.name.startswith("duplexthreads-")] == []
    assert socket_fds() == sockets_before
    assert listeners(port) == []
    assert_refused(port)
    assert server.closed
    reports = server.close()  # the same as the with block's
    assert len(reports) == ROOM
    # The close code a report gives is the client's answer: websocket-client answers 1000.
    assert {(r.reason, r.close_sent) for r in reports} == {(Reason.LOCAL_CLOSE, (1001, "server shutting down"))}
    assert all(r.ok and r.lingering == () and r.unsent == () for r in reports)
    # What each client saw.
    names = {f"guest-{k}" for k in range(1, ROOM + 1)}
    for k in range(1, ROOM + 1):
        event = received[k]
        assert event["name"] == f"guest-{k}"
        assert event["anomalies"] == [], (k, event["anomalies"])
        assert event["senders"] == {name: COUNT for name in names - {f"guest-{k}"}}, k
        notices = [e["text"] for e in children.seen if e["event"] == "notice" and where[(e["child"], e["client"])] == k]
        # Each once; in any order: two joins' notices are broadcast by two request threads, and
        # the next client may join while the last one's notice is still on its way to some.
        assert sorted(notices) == sorted(f"* guest-{j} joined ({j} here)" for j in range(k + 1, ROOM + 1)), k
        assert (codes[k]["code"], codes[k]["after"], codes[k]["received"]) == (1001, 0, (ROOM - 1) * COUNT), k
    assert exit_codes == [0] * len(LIBRARIES), children.stderr_texts
    assert children.stderr_texts == [""] * len(LIBRARIES)
    cpu = [
        after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        for before, after in zip(
            cpu_before, (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
        )
    ]
    print(
        f"\n{ROOM} clients: joined in {joined_at - started:.2f} s, {ROOM * (ROOM - 1) * COUNT} messages relayed "
        f"in {chatted_at - joined_at:.2f} s, closed in {closed_at - chatted_at:.2f} s; "
        f"CPU: {cpu[0]:.1f} s in this process (the server), {cpu[1]:.1f} s in the client processes"
    )


# -- 2. serve() itself ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(20 * UNIT)
@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"host": 1}, TypeError),
        ({"host": None}, TypeError),
        ({"port": "80"}, TypeError),
        ({"port": True}, TypeError),
        ({"port": 8.0}, TypeError),
        ({"port": -1}, ValueError),
        ({"port": 65536}, ValueError),
        ({"notices": "yes"}, TypeError),
        ({"notices": 1}, TypeError),
        ({"on_full": 1}, TypeError),
        ({"on_full": "wait"}, ValueError),
        ({"backplane": object()}, TypeError),
        ({"max_queue": 0}, ValueError),
        ({"max_queue": 1.5}, TypeError),
        ({"max_queue": True}, TypeError),
        ({"ping_interval": 0}, ValueError),
        ({"ping_interval": -1}, ValueError),
        ({"ping_interval": "1"}, TypeError),
        ({"ping_timeout": float("nan")}, ValueError),
        ({"write_timeout": 0}, ValueError),
        ({"write_timeout": -1}, ValueError),
        ({"close_timeout": -1}, ValueError),
        ({"close_timeout": "5"}, TypeError),
        ({"close_timeout": None}, ValueError),  # close() must end
        ({"close_timeout": float("inf")}, ValueError),
        ({"host": ""}, ValueError),  # would listen on every interface
        ({"grace": -1}, ValueError),
        ({"grace": None}, ValueError),
        ({"grace": "1"}, TypeError),
    ],
)
def test_bad_arguments_are_refused_at_the_call(options: Dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        serve(**options)
    assert serve_threads() == []


@pytest.mark.timeout(20 * UNIT)
@pytest.mark.parametrize(
    ("size", "error"), [("big", TypeError), (1.5, TypeError), (True, TypeError), (-1, ValueError), (0, ValueError)]
)
def test_a_bad_max_message_size_is_refused_at_the_call(size: object, error: type) -> None:
    """connect() and accept() check it before any I/O; serve() took it and every client that
    came then got a 500 from Werkzeug, with a traceback on stderr."""
    server: Optional[ChatServer] = None
    try:
        with pytest.raises(error):
            server = serve(max_message_size=size)  # type: ignore[arg-type]
    finally:
        if server is not None:
            server.close()


@pytest.mark.timeout(20 * UNIT)
def test_a_port_in_use_raises_an_oserror(capfd: pytest.CaptureFixture[str]) -> None:
    """Werkzeug's server prints a hint and calls sys.exit(1) when it cannot bind: serve() must
    raise an OSError (EADDRINUSE) instead, print nothing, and leave nothing behind."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            try:
                serve(port=port)
            except SystemExit as exc:
                raise AssertionError(f"serve() raised SystemExit({exc.code}) for a port in use") from None
    assert serve_threads() == []
    assert capfd.readouterr().err == ""


@pytest.mark.timeout(20 * UNIT)
def test_url_and_loopback_binding() -> None:
    with serve() as server:
        match = URL.match(server.url)
        assert match, server.url
        assert int(match.group(1)) == server.port > 0
        assert server.host == "127.0.0.1"
        assert listeners(server.port) == ["127.0.0.1"]  # loopback only, no IPv6 wildcard
        assert repr(server) == f"<ChatServer {server.url} 0 clients>"
        conn, inbox = join(server.url)
        assert inbox.messages == ["* welcome, you are guest-1 (1 here)"]
        assert repr(server) == f"<ChatServer {server.url} 1 clients>"
    assert conn.wait(WAIT).close_code == 1001
    assert repr(server) == f"<ChatServer {server.url} closed>"


@pytest.mark.timeout(20 * UNIT)
def test_plain_http_gets_short_4xx_answers_never_a_500_or_a_traceback(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    with serve() as server:
        port = server.port
        status, headers, body = http_request(port, "GET", "/")
        assert status == 426
        assert headers["Upgrade"] == "websocket"
        assert headers["Content-Type"].startswith("text/plain")
        assert 0 < len(body) < 200 and b"WebSocket" in body and b"<" not in body

        status, headers, body = http_request(port, "GET", "/other")
        assert status == 404 and headers["Content-Type"].startswith("text/plain") and 0 < len(body) < 200

        status, _, _ = http_request(port, "POST", "/")
        assert 400 <= status < 500
        upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
        status, _, _ = http_request(port, "POST", "/", {**upgrade, "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert 400 <= status < 500
        status, _, body = http_request(port, "GET", "/", upgrade)  # no Sec-WebSocket-Key
        assert 400 <= status < 500 and len(body) < 200
        status, _, _ = http_request(
            port, "GET", "/", {**upgrade, "Sec-WebSocket-Version": "8", "Sec-WebSocket-Key": "x"}
        )
        assert 400 <= status < 500

        garbage_lines = [b"\x00\x01\x02 garbage", b"GET", b"GET / HTTP/9.9", b"", b"GET / HTTP/1.1 x", b"\xff" * 5000]
        for garbage in garbage_lines:
            answer = raw_exchange(port, garbage + b"\r\n\r\n")
            # A status line, or a bare body for what http.server takes for HTTP/0.9; 505 (HTTP
            # Version Not Supported) is its answer to HTTP/9.9: about the request, not a failure.
            code = re.match(rb"^HTTP/1\.[01] (\d{3}) ", answer) or re.search(rb"Error code: (\d{3})", answer)
            if answer:
                assert code, (garbage, answer[:200])
                assert code.group(1)[:1] == b"4" or code.group(1) == b"505", (garbage, answer[:200])
            # else: a closed connection is fine too
        # A client the server does not know how to answer is gone; the room goes on.
        conn, inbox = join(server.url)
        assert inbox.messages == ["* welcome, you are guest-1 (1 here)"]
        conn.close()
    assert conn.report is not None and conn.report.ok
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert "Traceback" not in caplog.text
    assert capfd.readouterr().err == ""


@pytest.mark.timeout(20 * UNIT)
def test_normal_requests_log_to_the_serve_logger_not_stderr(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    with serve() as server:
        assert http_request(server.port, "GET", "/")[0] == 426
        assert http_request(server.port, "GET", "/other")[0] == 404
        conn, _ = join(server.url)
        conn.close()
    assert conn.report is not None and conn.report.ok
    assert capfd.readouterr().err == ""
    serve_records = [r for r in caplog.records if r.name == LOGGER]
    requests = [r.getMessage() for r in serve_records if "HTTP/1.1" in r.getMessage()]
    assert len(requests) == 3, caplog.text  # one line per request, the WebSocket's once it ends
    assert [r.levelname for r in serve_records if r.levelno > logging.INFO] == []
    assert [r for r in caplog.records if r.name == "werkzeug"] == []


@pytest.mark.timeout(20 * UNIT)
def test_request_log_lines_carry_no_terminal_colour_codes(caplog: pytest.LogCaptureFixture) -> None:
    """Werkzeug styles the request line of a 4xx answer with ANSI escapes for its console
    output; in the application's logger (a file, a JSON log) they are garbage."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with serve() as server:
        assert http_request(server.port, "GET", "/")[0] == 426
        assert http_request(server.port, "GET", "/other")[0] == 404
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER and "HTTP/1.1" in r.getMessage()]
    assert len(lines) == 2
    assert [line for line in lines if "\x1b" in line] == []
    assert '"GET / HTTP/1.1" 426' in lines[0] and '"GET /other HTTP/1.1" 404' in lines[1]


@pytest.mark.timeout(20 * UNIT)
def test_join_and_leave_notices_and_relaying() -> None:
    with serve() as server:
        first, first_inbox = join(server.url)
        second, second_inbox = join(server.url)
        assert first_inbox.wait_until_has("* guest-2 joined (2 here)")
        third, third_inbox = join(server.url, backend="simple-websocket")
        assert second_inbox.wait_until_has("* guest-3 joined (3 here)")
        assert first_inbox.wait_until_has("* guest-3 joined (3 here)")
        first.send("text from 1")
        first.send(b"\x00\xffbinary from 1")
        first.send("* guest-9 joined (1 here)")  # looks like a notice; relayed as sent
        for inbox in (second_inbox, third_inbox):
            assert inbox.wait_until_has("* guest-9 joined (1 here)")
        # Only what one client sends arrives in order; the next sender waits for the first.
        second.send("")
        second.send(b"")
        assert third_inbox.wait_until_has(b"") and first_inbox.wait_until_has(b"")
        second.close()
        assert first_inbox.wait_until_has("* guest-2 left (2 here)")
        assert third_inbox.wait_until_has("* guest-2 left (2 here)")
        assert first_inbox.messages == [
            "* welcome, you are guest-1 (1 here)",
            "* guest-2 joined (2 here)",
            "* guest-3 joined (3 here)",
            "",
            b"",
            "* guest-2 left (2 here)",
        ]
        assert second_inbox.messages == [
            "* welcome, you are guest-2 (2 here)",
            "* guest-3 joined (3 here)",
            "text from 1",
            b"\x00\xffbinary from 1",
            "* guest-9 joined (1 here)",
        ]
        assert third_inbox.messages == [
            "* welcome, you are guest-3 (3 here)",
            "text from 1",
            b"\x00\xffbinary from 1",
            "* guest-9 joined (1 here)",
            "",
            b"",
            "* guest-2 left (2 here)",
        ]
        assert isinstance(third_inbox.messages[2], bytes)
    for conn in (first, third):
        report = conn.wait(WAIT)
        assert (report.reason, report.close_code, report.close_reason) == (
            Reason.PEER_CLOSED,
            1001,
            "server shutting down",
        )
    assert second.report is not None and second.report.ok


@pytest.mark.timeout(20 * UNIT)
def test_without_notices_the_room_is_a_plain_broadcast_channel() -> None:
    with serve(notices=False) as server:
        a_inbox, b_inbox = Inbox(), Inbox()
        a = duplexthreads.connect(server.url, on_message=a_inbox, ping_interval=None)
        b = duplexthreads.connect(server.url, on_message=b_inbox, ping_interval=None)
        # Nothing arrives on joining: a message each way shows both are in the room.
        b.send("b is here")
        assert a_inbox.wait_until_has("b is here")
        a.send("a is here")
        assert b_inbox.wait_until_has("a is here")
        b.close()
        c_inbox = Inbox()
        c = duplexthreads.connect(server.url, on_message=c_inbox, ping_interval=None)
        c.send("c is here")
        assert a_inbox.wait_until_has("c is here")
        assert a_inbox.messages == ["b is here", "c is here"]  # no leave notice for b either
    assert b_inbox.messages == ["a is here"] and c_inbox.messages == []
    assert a.wait(WAIT).close_code == 1001 and c.wait(WAIT).close_code == 1001


@pytest.mark.timeout(20 * UNIT)
def test_an_idle_http_client_does_not_delay_close() -> None:
    server = serve()
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    try:
        idle.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the end of the headers
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
        # The server accepts in order: once a later request is answered, both are in its threads.
        assert http_request(server.port, "GET", "/")[0] == 426
        start = time.monotonic()
        reports = server.close()
        took = time.monotonic() - start
        assert reports == []
        assert took < 1.0 * UNIT, f"close() took {took:.2f} s"
        for sock in (idle, silent):
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(4096) == b""  # cut, without an answer
    finally:
        idle.close()
        silent.close()
        server.close()
    assert serve_threads() == []
    assert_refused(server.port)


@pytest.mark.timeout(30 * UNIT)
def test_clients_opening_while_the_server_closes_get_1001_or_no_connection() -> None:
    """Clients keep opening while close() runs: each either never opens (refused, cut during
    its handshake) or opens and ends with 1001 at once; none is left open or half-served."""
    server = serve()
    opened: List[Duplex] = []
    failures: List[BaseException] = []
    stop = threading.Event()

    def keep_opening() -> None:
        while not stop.is_set():
            try:
                opened.append(duplexthreads.connect(server.url, ping_interval=None, open_timeout=WAIT))
            except (ConnectError, HandshakeRejected) as exc:
                failures.append(exc)
                if server.closed:
                    return

    openers = [threading.Thread(target=keep_opening, name=f"test-serve-opener-{i}") for i in range(4)]
    try:
        members, _ = join(server.url)
        for opener in openers:
            opener.start()
        assert threading.Event().wait(0.2 * UNIT) is False  # let openings run: time passing is the point
        start = time.monotonic()
        server.close()
        took = time.monotonic() - start
    finally:
        stop.set()
        for opener in openers:
            opener.join(WAIT)
        server.close()
    assert not any(opener.is_alive() for opener in openers)
    assert took < 3.0 * UNIT, f"close() took {took:.2f} s"
    assert members.wait(WAIT).close_code == 1001
    assert opened, "no client opened before the close"
    for conn in opened:
        report = conn.wait(WAIT)
        assert report.close_code == 1001, report.describe()
    assert serve_threads() == []
    assert_refused(server.port)


@pytest.mark.timeout(20 * UNIT)
def test_a_client_upgraded_just_as_close_begins_gets_1001(monkeypatch: pytest.MonkeyPatch) -> None:
    """close() cuts the sockets of requests still in HTTP. One whose handshake is done (its
    client has the 101 and an open WebSocket) but whose thread has not joined the room yet is
    not in HTTP any more: its client must get 1001 as the others do, not a cut TCP (1006).
    The window is made wide here by holding the request between accept() and joining."""
    upgraded, proceed, closing = threading.Event(), threading.Event(), threading.Event()
    real_accept = duplexthreads.accept  # what chat_server calls

    def accept_then_hold(environ: Dict[str, Any], **options: Any) -> Duplex:
        conn = real_accept(environ, **options)
        upgraded.set()
        proceed.wait(WAIT)
        return conn

    monkeypatch.setattr("duplexthreads.chat_server.accept", accept_then_hold)
    server = serve()
    real_hub_close = server.hub.close

    def hub_close(*args: Any) -> List[duplexthreads.ExitReport]:
        closing.set()  # close() has refused new clients and cut the requests in HTTP by now
        return real_hub_close(*args)

    monkeypatch.setattr(server.hub, "close", hub_close)
    closer = threading.Thread(target=server.close, name="test-serve-closer")
    try:
        client = duplexthreads.connect(server.url, ping_interval=None)  # returns with the 101
        assert upgraded.wait(WAIT)
        closer.start()
        assert closing.wait(WAIT)
    finally:
        proceed.set()
        if closer.is_alive():
            closer.join(WAIT)
        server.close()
    report = client.wait(WAIT)
    assert (report.close_code, report.close_reason) == (1001, "server shutting down"), report.describe()
    assert serve_threads() == []


@pytest.mark.timeout(20 * UNIT)
def test_close_while_a_client_is_mid_handshake() -> None:
    server = serve()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as halfway:
            halfway.sendall(
                b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\n"  # the key and the blank line never come
            )
            assert http_request(server.port, "GET", "/other")[0] == 404  # the first one is accepted
            start = time.monotonic()
            assert server.close() == []
            assert time.monotonic() - start < 1.0 * UNIT
            with contextlib.suppress(ConnectionResetError):
                assert halfway.recv(4096) == b""  # no 101: cut
    finally:
        server.close()
    assert serve_threads() == []


@pytest.mark.timeout(20 * UNIT)
def test_close_twice_and_from_two_threads_returns_the_same_reports() -> None:
    server = serve()
    conn, _ = join(server.url)
    results: List[List[duplexthreads.ExitReport]] = []
    other = threading.Thread(target=lambda: results.append(server.close()), name="test-serve-closer")
    other.start()
    results.append(server.close())
    other.join(WAIT)
    assert not other.is_alive()
    results.append(server.close())
    assert len(results) == 3 and results[0] == results[1] == results[2]
    assert len(results[0]) == 1 and results[0][0].close_code == 1001
    assert conn.wait(WAIT).close_code == 1001


@pytest.mark.timeout(20 * UNIT)
def test_wait_returns_once_another_thread_closes() -> None:
    server = serve()
    try:
        assert server.wait(0) is False and not server.closed
        assert server.wait(0.05 * UNIT) is False
        closer = threading.Timer(0.1 * UNIT, server.close)
        closer.name = "test-serve-closer"
        closer.start()
        start = time.monotonic()
        assert server.wait(WAIT) is True
        assert time.monotonic() - start < WAIT / 2
        closer.join(WAIT)
    finally:
        server.close()
    assert server.closed and server.wait(0) is True


@pytest.mark.timeout(20 * UNIT)
def test_serve_without_with_then_close() -> None:
    server = serve(port=0)
    conn, inbox = join(server.url, backend="simple-websocket")
    assert inbox.messages == ["* welcome, you are guest-1 (1 here)"]
    assert serve_threads()  # the accepting loop and the client's request
    reports = server.close()
    assert [r.close_code for r in reports] == [1001]
    assert server.closed and server.hub.closed
    assert conn.wait(WAIT).close_code == 1001
    assert serve_threads() == []
    assert_refused(server.port)


# -- 3. bad input on the server side ---------------------------------------------------------------------------------


@pytest.mark.timeout(20 * UNIT)
def test_an_oversized_message_closes_only_its_sender_with_1009() -> None:
    limit = 64 * 1024
    with serve(max_message_size=limit) as server:
        big, _ = join(server.url)
        b, b_inbox = join(server.url)
        c, c_inbox = join(server.url, backend="simple-websocket")
        assert b_inbox.wait_until_has("* guest-3 joined (3 here)")
        big.send(b"\x01" * limit)  # exactly the limit: relayed
        assert b_inbox.wait_until_has(b"\x01" * limit) and c_inbox.wait_until_has(b"\x01" * limit)
        big.send(b"\x02" * (limit + 1))
        report = big.wait(WAIT)
        assert report.close_code == 1009 and report.close_received is not None
        assert report.close_received[0] == 1009
        for inbox in (b_inbox, c_inbox):
            assert inbox.wait_until_has("* guest-1 left (2 here)")
        b.send("still chatting")
        c.send("me too")
        assert c_inbox.wait_until_has("still chatting") and b_inbox.wait_until_has("me too")
        assert not b.closed and not c.closed
        assert all(len(m) <= limit for m in b_inbox.messages + c_inbox.messages)
        assert len(server.hub) == 2


@pytest.mark.timeout(20 * UNIT)
def test_a_client_whose_tcp_died_is_dropped_by_the_heartbeat() -> None:
    interval, timeout = 0.3, 0.3
    with serve(ping_interval=interval, ping_timeout=timeout) as server:
        watcher, inbox = join(server.url)  # answers the server's pings
        with Relay(server.port, timeout=WAIT) as relay:
            victim, _ = join(relay.url(), close_timeout=0.5)
            assert inbox.wait_until_has("* guest-2 joined (2 here)")
            victim.send("alive")
            assert inbox.wait_until_has("alive")
            relay.go_silent()
            silent_from = time.monotonic()
            assert inbox.wait_until_has("* guest-2 left (1 here)", WAIT)
            detected = time.monotonic() - silent_from
            victim.abort()
            victim.wait(WAIT)
        assert detected < interval + timeout + 1.0 * UNIT, f"dropped after {detected:.2f} s"
        assert len(server.hub) == 1
        # The watcher, pinged all along, stays.
        threading.Event().wait(2 * (interval + timeout))  # several heartbeats: time passing is the point
        assert not watcher.closed and len(server.hub) == 1
    assert watcher.wait(WAIT).close_code == 1001
    print(f"\na dead client was dropped {detected:.2f} s after its TCP went silent")


@pytest.mark.timeout(40 * UNIT)
def test_a_flood_from_one_client_does_not_starve_the_others(tmp_path: Path) -> None:
    """A websocket-client in a process of its own sends 20,000 messages as fast as it can; a
    chatter here sends one every 20 ms meanwhile. Everybody gets everything, in order, nobody
    is cut off (the flooder reads what the room says, the others keep reading), and the
    chatter's messages reach another client with a latency that is printed (-s) and held to
    a sanity bound only."""
    flood = 20_000
    flooder = ClientProcesses(tmp_path)
    try:
        with serve() as server:
            flooder.start(server.url, ["websocket-client"], 2, 10**9)
            deadline = time.monotonic() + 30 * UNIT
            flooder.tell(0, "join")
            assert flooder.wait_for(lambda e: e["event"] == "joined", deadline, "the flooder")["first"] == (
                "* welcome, you are guest-1 (1 here)"
            )
            chatter, chatter_inbox = join(server.url)
            reader, reader_inbox = join(server.url)
            assert chatter_inbox.wait_until_has("* guest-3 joined (3 here)")
            sent_at: Dict[str, float] = {}
            flooder.tell(0, f"flood {flood}")
            started = time.monotonic()
            chats = 0
            # A chat message every 20 ms, until the reader has the whole flood.
            while not reader_inbox.wait_until_has("flood:end", 0.02):
                cut = [
                    f"{name}: {conn.report.describe()}"
                    for name, conn in [("chatter", chatter), ("reader", reader)]
                    if conn.report is not None
                ]
                assert not cut, (
                    f"cut off during the flood: {cut}; {server.hub.stats}; reader at {reader_inbox.chat_count}"
                )
                assert time.monotonic() < deadline, (reader_inbox.chat_count, server.hub.stats)
                text = f"chat:{chats}"
                sent_at[text] = time.monotonic()
                with contextlib.suppress(duplexthreads.ConnectionClosed):  # reported at the next turn
                    chatter.send(text, timeout=WAIT)
                chats += 1
            relayed = time.monotonic() - started
            flooded = flooder.wait_for(lambda e: e["event"] == "flooded", deadline, "the end of the flood")
            assert chatter_inbox.wait_until_has("flood:end", WAIT), (chatter_inbox.chat_count, server.hub.stats)
            assert reader_inbox.wait_until_has(f"chat:{chats - 1}")
            assert not chatter.closed and not reader.closed and len(server.hub) == 3
        # Only now are the counts final: a broadcast counts its deliveries once it has handed the
        # message to every member, and a direct write may reach a client before that.
        stats = server.hub.stats
        # The with block has ended: the flooder reports what it got, and 1001.
        closed = flooder.wait_for(lambda e: e["event"] == "closed", time.monotonic() + WAIT, "the flooder's end")
    finally:
        flooder.close()
    assert (closed["code"], closed["senders"], closed["anomalies"]) == (1001, {"chat": chats}, [])
    floods = [f"flood:{i}" for i in range(flood)] + ["flood:end"]
    chat = [f"chat:{i}" for i in range(chats)]
    reader_chat = reader_inbox.chat()
    assert [m for m in reader_chat if str(m).startswith("flood:")] == floods
    assert [m for m in reader_chat if str(m).startswith("chat:")] == chat
    assert chatter_inbox.chat() == floods
    assert stats.cut_off == 0 and stats.dropped == 0
    assert stats.delivered == 2 * len(floods) + 2 * len(chat) + 3  # and the three joined notices
    latencies = [
        reader_inbox.times[i] - sent_at[m]
        for i, m in enumerate(reader_inbox.messages)
        if isinstance(m, str) and m in sent_at
    ]
    assert len(latencies) == chats >= 1
    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    print(
        f"\nflood of {flood} messages sent in {flooded['seconds']:.2f} s, relayed to the reader in {relayed:.2f} s; "
        f"{chats} chat messages during it, latency to another client p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )
    assert p99 < 5 * UNIT  # a sanity bound, not a performance claim


@pytest.mark.timeout(30 * UNIT)
def test_a_client_too_slow_for_the_room_is_cut_off_with_1008() -> None:
    size, batch = 16 * 1024, 16
    with serve(max_queue=64) as server:
        talker, _ = join(server.url)
        listener, listener_inbox = join(server.url)
        # websocket-client reads only when asked: this one is never asked until the end.
        slow = websocket.create_connection(
            server.url, timeout=WAIT, sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]
        )
        try:
            assert listener_inbox.wait_until_has("* guest-3 joined (3 here)")
            sent = 0
            # The room chats in batches that the listener keeps up with, until the slow client's
            # queue is full and the hub cuts it off; then one more batch.
            more = 2
            while more and sent < 4000:
                for _ in range(batch):
                    talker.send(f"{sent:06d}:" + "x" * size)
                    sent += 1
                assert listener_inbox.wait_for_chat_count(sent), f"stuck at {sent}"
                if server.hub.stats.cut_off:
                    more -= 1
            stats = server.hub.stats
            assert stats.cut_off == 1 and stats.dropped >= 1, stats
            # The slow client reads again: a prefix of the room's messages, in order, then 1008.
            # The close frame waits behind its queue for at most a second (the hub's cut-off
            # bound); on a machine too busy for this client to read within it, the connection is
            # cut instead and the client reads the end of the stream.
            got: List[str] = []
            code: Optional[int] = None
            reason = ""
            ended = False
            while code is None and not ended:
                try:
                    opcode, frame = slow.recv_data_frame()
                except websocket.WebSocketConnectionClosedException:
                    ended = True
                    continue
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = int.from_bytes(frame.data[:2], "big")
                    reason = frame.data[2:].decode()
                else:
                    got.append(frame.data.decode())
            assert listener_inbox.wait_until_has("* guest-3 left (2 here)")
        finally:
            slow.shutdown()
        assert not talker.closed and not listener.closed
    assert (code == 1008 and reason.startswith("too slow")) or (code is None and ended), (code, reason)
    assert got[0] == "* welcome, you are guest-3 (3 here)"
    numbers = [int(text[:6]) for text in got[1:]]
    assert numbers == list(range(len(numbers))) and 0 < len(numbers) < sent
    assert [m[:6] for m in listener_inbox.chat()] == [f"{i:06d}" for i in range(sent)]
    print(f"\nthe slow client got {len(numbers)} of {sent} messages, then 1008; {stats}")


# -- review findings ------------------------------------------------------------------------------------


def test_close_again_in_the_closing_thread_raises_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal handler calling close() while the main thread is in close() waited for itself."""
    server = serve()
    inner: List[BaseException] = []
    original = server.hub.close

    def hub_close_then_again(*args: Any, **kwargs: Any) -> List[duplexthreads.ExitReport]:
        try:
            server.close()  # as a second SIGTERM's handler would, in the same thread
        except duplexthreads.UsageError as exc:
            inner.append(exc)
        return original(*args, **kwargs)

    monkeypatch.setattr(server.hub, "close", hub_close_then_again)
    server.close()
    assert len(inner) == 1 and "already running in this thread" in str(inner[0])
    assert server.closed and server.close() == []


def test_a_client_joining_a_hub_closed_by_the_application_gets_1001() -> None:
    """The hub is public: closed by the application, the next client got a 500 written into
    its WebSocket stream, and its connection's threads outlived the server."""
    with serve() as server:
        server.hub.close()
        client = websocket.create_connection(server.url, timeout=WAIT)
        try:
            opcode, data = client.recv_data(control_frame=True)
            assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(data[:2], "big") == 1001
        finally:
            client.shutdown()


def test_connections_that_send_nothing_cost_a_bounded_number_of_threads_and_never_lock_the_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the limit the connection that has waited longest is cut: refusing the newest (503)
    let a few idle sockets lock every client out for as long as they liked."""
    from duplexthreads import chat_server

    monkeypatch.setattr(chat_server, "MAX_HTTP_REQUESTS", 3)
    with serve() as server:
        silent = [socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) for _ in range(3)]
        try:
            conn, _ = join(server.url)  # the fourth: the oldest silent one makes room
            with conn:
                assert silent[0].recv(16) == b""  # cut: end of stream, no answer
                assert len([name for name in serve_threads() if "request" in name]) <= 4
        finally:
            for sock in silent:
                sock.close()


def test_the_server_side_of_a_websocket_sends_without_nagle() -> None:
    """Werkzeug and Gunicorn leave Nagle's algorithm on: small frames waited for acknowledgements."""
    with serve() as server:
        conn, _ = join(server.url)
        try:
            (member,) = list(server.hub)
            raw = member.transport.raw_socket  # type: ignore[attr-defined]
            assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            conn.close()
