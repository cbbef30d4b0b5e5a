"""The scripted peer's listener, its server-role connections and its client opener.

:class:`LocalServer` is the whole server of the in-process mode, and what the child process runs
in the isolated mode. Its listener thread accepts each client and starts a
:class:`ServerEndpoint` for it. :meth:`LocalServer.next_connection` hands them out in the order
they were accepted.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from wsproto.connection import Connection, ConnectionType

from . import _handshake as hs
from ._behaviour import Behaviour, close_event, message_event
from ._endpoint import Endpoint

#: Names of the in-process mode's threads start with this.
THREAD_PREFIX = "scripted-peer"


class ServerEndpoint(Endpoint):
    """A server-role connection: its reading thread first answers the client's upgrade request
    (or sends the test's ``handshake_answer`` instead).

    The answer is decided (and recorded) before it is written, with the write lock held, so a
    control called meanwhile waits until the response, trickled or not, is on the wire.
    """

    def __init__(
        self, sock: socket.socket, behaviour: Behaviour, *, name: str, index: int, address: Tuple[str, int]
    ) -> None:
        super().__init__(sock, client=False, behaviour=behaviour, name=name, index=index)
        self._address = address  # of the URL the peer serves, which a strict Host must name

    def _open(self) -> bool:
        """Answer the upgrade request; True when the WebSocket connection is open."""
        behaviour = self._behaviour
        problem: Optional[str]
        try:
            head, self._trailing = hs.read_head(self._sock, time.monotonic() + behaviour.timeout)
        except OSError as exc:  # TimeoutError and ConnectionError are OSErrors
            self._note_stream_end(exc)
            self.record.set(handshake_error=f"{type(exc).__name__}: {exc}", handshake_done=True)
            return False
        except ValueError as exc:  # not HTTP: answered with 400 below
            head, problem = hs.Head(""), str(exc)
        else:
            problem = hs.check_upgrade_request(head)
        self._sock.settimeout(None)
        start_line = head.start_line.split(" ")
        self.record.set(request_target=start_line[1] if len(start_line) == 3 else None, request_headers=head.headers)
        if behaviour.handshake_answer is not None:
            self._send_handshake_answer(behaviour.handshake_answer, head, problem)
            return False
        answer = hs.answer_request(
            head,
            problem,
            address=self._address,
            strict_host=behaviour.strict_host,
            reject=behaviour.reject,
            subprotocols=behaviour.subprotocols,
        )
        with self._write_lock:  # controls wait here until the answer is on the wire
            self.record.set(
                response_status=answer.status,
                response_headers=answer.headers,
                subprotocol=answer.subprotocol,
                handshake_error=answer.problem,
                handshake_done=True,
            )
            response = hs.response_bytes(answer.status, answer.headers, answer.body)
            if answer.status != 101:
                self._send_quietly(response)
            else:
                self._ws = Connection(ConnectionType.SERVER)
                if not self._send_opening(response, self._greeting_bytes(self._ws)):
                    return False
        if answer.status != 101:  # the server ends TCP after a refusal; the client's answer is awaited
            self._shut_wr()
            self._drain(time.monotonic() + behaviour.timeout)
        return answer.status == 101

    def _send_handshake_answer(self, answer: bytes, head: hs.Head, problem: Optional[str]) -> None:
        """Send the test's own answer, whatever the request, then end TCP as after a refusal.

        ``{accept}`` becomes the accept value for the request's key, even if something else is
        wrong with the request (``problem`` says what, for the record); without one key, nothing.
        """
        keys = head.values("Sec-WebSocket-Key")
        accept = hs.accept_key(keys[0]) if len(keys) == 1 and keys[0].isascii() else ""
        with self._write_lock:  # controls wait here until the answer is on the wire
            self.record.set(handshake_error=problem, handshake_done=True)
            self._send_quietly(answer.replace(b"{accept}", accept.encode("ascii")))
        self._shut_wr()
        self._drain(time.monotonic() + self._behaviour.timeout)

    def _greeting_bytes(self, ws: Connection) -> bytes:
        frames = [ws.send(message_event(message)) for message in self._behaviour.greeting]
        if self._behaviour.close_after_greeting is not None:
            frames.append(ws.send(close_event(*self._behaviour.close_after_greeting)))
        return b"".join(frames)

    def _send_opening(self, response: bytes, greeting: bytes) -> bool:
        """Write the 101 and the greeting (write lock held); False if stopped meanwhile."""
        delay = self._behaviour.trickle_handshake
        if delay is None:
            if self._behaviour.greeting_with_handshake:  # one sendall: one segment on loopback
                self._send_quietly(response + greeting)
            else:
                self._send_quietly(response)
                self._send_quietly(greeting)
            return True
        for offset in range(len(response)):
            if offset:  # a wait between bytes that stop() cuts short
                with self._control:
                    if self._control.wait_for(lambda: self._stopping, delay):
                        return False
            self._send_quietly(response[offset : offset + 1])
        self._send_quietly(greeting)
        return True


class LocalServer:
    """A loopback WebSocket server whose connections behave as ``behaviour`` says."""

    def __init__(self, behaviour: Behaviour, host: str = "127.0.0.1", port: int = 0) -> None:
        self.behaviour = behaviour
        self.host = host
        self._listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.port: int = self._listener.getsockname()[1]
        self._cond = threading.Condition()
        self._endpoints: List[Endpoint] = []  # in the order they were accepted
        self._handed_out = 0
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name=f"{THREAD_PREFIX}-listener", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # close() shut the listening socket down
            with self._cond:
                if self._closed:
                    sock.close()
                    return
                index = len(self._endpoints)
                endpoint = ServerEndpoint(
                    sock, self.behaviour, name=f"{THREAD_PREFIX}-{index}", index=index, address=(self.host, self.port)
                )
                self._endpoints.append(endpoint)
                endpoint.start()
                self._cond.notify_all()

    def next_connection(self, timeout: Optional[float] = None) -> Endpoint:
        """The next connection not handed out yet, once its upgrade request has been answered.

        Raises ``TimeoutError`` if no client connected in time. A client that connected but
        sent no complete request within the deadline is handed out all the same: its record
        says how far its handshake got.
        """
        seconds = self.behaviour.timeout if timeout is None else timeout
        deadline = time.monotonic() + seconds
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._endpoints) > self._handed_out or self._closed, seconds):
                raise TimeoutError(f"no new client connected within {seconds:g} s ({self._handed_out} before)")
            if len(self._endpoints) <= self._handed_out:
                raise RuntimeError("the scripted peer is closed")
            endpoint = self._endpoints[self._handed_out]
            self._handed_out += 1
        endpoint.record.wait_handshake(max(0.0, deadline - time.monotonic()))
        return endpoint

    def release_copy(self) -> None:
        """In a process forked off this server's: close this process's copies of the listening
        socket and of the connections' sockets, and nothing more. No shutdown() (it would end
        them for the owner too) and no lock (one held by a thread at the fork stays held here)."""
        self._listener.close()
        for endpoint in list(self._endpoints):
            endpoint.release_copy()

    def close(self) -> List[str]:
        """Stop listening and end every connection; return the names of threads that did not stop.

        Connections end without a close frame: FIN, followed by RST where unread data remains.
        """
        with self._cond:
            self._closed = True
            endpoints = list(self._endpoints)
            self._cond.notify_all()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        except OSError:
            pass
        self._listener.close()
        deadline = time.monotonic() + self.behaviour.timeout
        for endpoint in endpoints:
            endpoint.stop()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [] if not self._thread.is_alive() else [self._thread.name]
        return stuck + [f"{THREAD_PREFIX}-{e.index}" for e in endpoints if not e.join(deadline)]


def open_client(
    url: str,
    behaviour: Behaviour,
    *,
    host_header: Optional[str] = None,
    headers: Sequence[Tuple[str, str]] = (),
    subprotocols: Sequence[str] = (),
    timeout: Optional[float] = None,
) -> Endpoint:
    """Connect to ``url``, complete the opening handshake and return the client-role connection.

    Raises :class:`HandshakeRefused` for an answer other than 101, ``TimeoutError`` when the
    connection or the handshake takes longer than ``timeout``, and ``ConnectionError`` for the
    rest. Nothing is left open when it raises.
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ValueError(f"a ws:// URL with a host is needed, not {url!r}")
    seconds = behaviour.timeout if timeout is None else timeout
    deadline = time.monotonic() + seconds
    try:
        sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=seconds)
    except socket.timeout:  # an OSError of its own before Python 3.10
        raise TimeoutError(f"could not connect to {url} within {seconds:g} s") from None
    try:
        handshake = hs.open_client(
            sock, url, host_header_value=host_header, headers=headers, subprotocols=subprotocols, deadline=deadline
        )
        sock.settimeout(None)
    except socket.timeout:
        sock.close()
        raise TimeoutError(f"the opening handshake with {url} took longer than {seconds:g} s") from None
    except BaseException:
        sock.close()
        raise
    return Endpoint.opened(sock, handshake, behaviour, name=f"{THREAD_PREFIX}-client")
