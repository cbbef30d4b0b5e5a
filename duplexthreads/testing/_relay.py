"""A loopback TCP relay that fakes the network failures a close frame never announces.

:class:`Relay` listens on loopback, and for each client it accepts opens a connection to the
target and copies bytes both ways. Its controls cut the path without either end being told:
``go_silent()`` forwards nothing any more and reads nothing either, so what the ends send piles
up in kernel buffers until their writes block (a NAT that dropped its mapping, a cable pulled);
``reset()`` ends every connection with RST at both ends.

Threads: one listener, and two pumps per connection (one per direction), all daemons named
``duplexthreads-relay-PORT-...``. None of them polls: the listener and the pumps block in
``poll()`` (``select()`` where there is no ``poll()``) on their sockets and on a wake-up
socketpair, and a pump whose direction is held back waits on the relay's condition. Every read
and write is non-blocking and made with the condition's lock held, after checking that its
direction forwards: once ``go_silent()`` returns, no byte is read or written any more. The last
pump of a connection to end closes its sockets.
"""

from __future__ import annotations

import errno
import math
import select
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

from ._checks import check_seconds, check_whole, type_name

__all__ = ["Relay"]

#: Names of the relay's threads start with this.
THREAD_PREFIX = "duplexthreads-relay"

TO_SERVER = "to-server"
TO_CLIENT = "to-client"

_CHUNK = 65536  # the most one read takes, and so the most a pump holds that the kernel does not
_LINGER_ZERO = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
# accept() errors that concern one client only: the listener serves on.
_ACCEPT_RETRY = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENOBUFS, errno.ENOMEM}
_CONNECTING = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY}


def _check_host(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str (an address or a host name), not {value!r} ({type_name(value)})")
    if not value or any(character.isspace() or character == "\0" for character in value):
        raise ValueError(f"{name} must name an address, such as '127.0.0.1' or '::1', not {value!r}")
    return value


def _check_path(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"path must be a str starting with '/', not {value!r} ({type_name(value)})")
    if not value.startswith("/") or any(character.isspace() or ord(character) < 0x20 for character in value):
        raise ValueError(f"path must start with '/' and hold no whitespace or control character, not {value!r}")
    return value


def _wait(read: Sequence[socket.socket], write: Sequence[socket.socket], timeout: Optional[float] = None) -> bool:
    """Block until a socket of ``read`` has something to read or one of ``write`` room to write
    (an error or a hang-up counts as either); False when ``timeout`` seconds pass first."""
    if hasattr(select, "poll"):  # no FD_SETSIZE limit, and no descriptor of its own as epoll has
        poller = select.poll()
        for sock in read:
            poller.register(sock, select.POLLIN)
        for sock in write:
            poller.register(sock, select.POLLOUT)
        return bool(poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000))))
    ready = select.select(list(read), list(write), list(read) + list(write), timeout)
    return any(ready)


def _set_linger_zero(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    except OSError:
        pass  # already reset by its peer: closing it sends nothing anyway


def _set_nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not TCP (never here), or already reset: nothing to tune


class _Link:
    """One client connection and the relay's connection to the target for it.

    Every field but the sockets and the threads is guarded by the relay's condition.
    """

    def __init__(self, index: int, client: socket.socket, server: socket.socket) -> None:
        self.index = index
        self.client = client
        self.server = server
        self.wake_r, self.wake_w = socket.socketpair()
        self.ending = False  # the pumps are to stop: the relay closes, reset(), or one side failed
        self.woken = False  # a byte was written to wake_w (once: nobody drains it)
        self.closed = False  # the sockets are closed
        self.running = 0  # pumps not ended yet
        self.threads: List[threading.Thread] = []

    def sockets(self) -> Tuple[socket.socket, ...]:
        return (self.client, self.server, self.wake_r, self.wake_w)


class Relay:
    """Forward TCP between clients on loopback and ``target_host:target_port``; see the module.

    ``target_port`` (an int from 1 to 65535) and ``target_host`` (default ``"127.0.0.1"``; a
    name is resolved once, here) say where each client's bytes go; ``host`` (default
    ``"127.0.0.1"``) and ``port`` (0, the default: a free port) where the relay listens.
    ``timeout`` (a finite number of seconds > 0, 10 by default) bounds the connection to the
    target made for each client, and the wait of ``reset()`` and ``close()`` for the threads.
    Each argument is checked here, before a socket or a thread exists: ``TypeError`` for a
    wrong type, ``ValueError`` for a bad value, each naming the argument.
    """

    def __init__(
        self,
        target_port: int,
        target_host: str = "127.0.0.1",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        timeout: float = 10.0,
    ) -> None:
        self.target_port = check_whole("target_port", target_port, minimum=1, maximum=65535, what="a port number")
        self.target_host = _check_host("target_host", target_host)
        self.host = _check_host("host", host)
        check_whole("port", port, minimum=0, maximum=65535, what="a port number")
        self.timeout = check_seconds("timeout", timeout)
        try:
            family, kind, proto, _, address = socket.getaddrinfo(target_host, target_port, type=socket.SOCK_STREAM)[0]
        except (OSError, UnicodeError) as exc:
            raise ValueError(f"target_host {target_host!r} does not resolve: {exc}") from None
        self._target: Tuple[int, int, int, Any] = (family, kind, proto, address)
        self._cond = threading.Condition()
        self._forwarding: Dict[str, bool] = {TO_SERVER: True, TO_CLIENT: True}
        self._links: List[_Link] = []
        self._accepted = 0
        self._connecting = False  # the listener is connecting to the target for a client
        self._resets = 0  # reset() calls so far
        self._closed = False
        self._released = False  # the listener and the wake-up pair are closed
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        except BaseException:
            self._wake_r.close()
            self._wake_w.close()
            raise
        self._listener = listener
        listener.setblocking(False)
        #: Where clients connect.
        self.port: int = listener.getsockname()[1]
        self._thread = threading.Thread(target=self._listen, name=f"{THREAD_PREFIX}-{self.port}-listener", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Relay {self.host}:{self.port} -> {self.target_host}:{self.target_port} {state}>"

    def __enter__(self) -> Relay:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()

    # -- where to connect ------------------------------------------------------------------------------

    def url(self, path: str = "/") -> str:
        """``ws://HOST:PORT/`` with ``path`` (a str starting with ``/``, a query allowed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}{_check_path(path)}"

    @property
    def connections(self) -> int:
        """How many client connections the relay has accepted so far."""
        with self._cond:
            return self._accepted

    # -- controls ----------------------------------------------------------------------------------------

    def go_silent(self) -> None:
        """From now on forward nothing either way, and read nothing: the ends' data piles up in
        their kernel buffers, no FIN or RST goes anywhere, every socket stays open. Applies to
        the connections accepted later too, until ``resume()``."""
        self._set_forwarding(to_server=False, to_client=False)

    def stop_forwarding_to_client(self) -> None:
        """Hold back what the target sends, as ``go_silent()`` does, in this direction only."""
        self._set_forwarding(to_client=False)

    def stop_forwarding_to_server(self) -> None:
        """Hold back what clients send, as ``go_silent()`` does, in this direction only."""
        self._set_forwarding(to_server=False)

    def resume(self) -> None:
        """Forward both ways again; what was held back goes first, in order."""
        self._set_forwarding(to_server=True, to_client=True)

    def _set_forwarding(self, *, to_server: Optional[bool] = None, to_client: Optional[bool] = None) -> None:
        with self._cond:
            self._check_open()
            if to_server is not None:
                self._forwarding[TO_SERVER] = to_server
            if to_client is not None:
                self._forwarding[TO_CLIENT] = to_client
            self._cond.notify_all()

    def reset(self) -> None:
        """End every connection the relay accepted and still holds with RST at both ends
        (``SO_LINGER`` 0, then close), silent or not, including one whose connection to the
        target is still being made; return once their sockets are closed. Clients that connect
        later are served as before.

        Raises ``RuntimeError`` if a pump does not end within ``timeout``.
        """
        deadline = time.monotonic() + self.timeout
        with self._cond:
            self._check_open()
            self._resets += 1  # a client accepted whose target is being connected is reset too
            links = [link for link in self._links if not link.closed]
            for link in links:
                self._end(link, reset=True)
            # The connection to the target is bounded by timeout; close() ends it early.
            self._cond.wait_for(lambda: not self._connecting or self._closed, self.timeout)
        stuck = self._join([thread for link in links for thread in link.threads], deadline)
        if stuck:
            raise RuntimeError(f"relay threads did not end within {self.timeout:g} s of reset(): {', '.join(stuck)}")

    def close(self) -> None:
        """Stop accepting, close every connection (FIN, or RST where unread data remains) and
        join every thread, within ``timeout``. Safe to call twice.

        Raises ``RuntimeError`` naming the threads that did not end in time.
        """
        with self._cond:
            if not self._closed:
                self._closed = True
                self._wake_w.send(b"\0")  # the listener's poll() returns; nobody drains it
            links = list(self._links)
            for link in links:
                self._end(link, reset=False)
        threads = [self._thread] + [thread for link in links for thread in link.threads]
        stuck = self._join(threads)
        if not self._thread.is_alive() and not self._released:
            self._released = True
            for sock in (self._listener, self._wake_r, self._wake_w):
                sock.close()
        if stuck:
            raise RuntimeError(f"relay threads did not end within {self.timeout:g} s of close(): {', '.join(stuck)}")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the relay is closed")

    def _join(self, threads: Sequence[threading.Thread], deadline: Optional[float] = None) -> List[str]:
        """Join ``threads`` against one deadline (``timeout`` from now unless given); the names
        of those still alive after it."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        return [thread.name for thread in threads if thread.is_alive()]

    def _end(self, link: _Link, *, reset: bool) -> None:
        """Tell ``link``'s pumps to stop (the condition's lock held); ``reset``: close with RST."""
        if link.closed:
            return
        if reset:
            _set_linger_zero(link.client)
            _set_linger_zero(link.server)
        link.ending = True
        if not link.woken:
            link.woken = True
            link.wake_w.send(b"\0")  # a poll() of either pump returns; nobody drains it
        self._cond.notify_all()

    # -- the threads -------------------------------------------------------------------------------------

    def _listen(self) -> None:
        while True:
            _wait([self._listener, self._wake_r], [])
            with self._cond:
                if self._closed:
                    return
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                continue  # the client went away before we took it
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY:
                    continue
                raise  # out of descriptors, say: fail loudly rather than spin
            with self._cond:
                index = self._accepted
                self._accepted += 1
                self._connecting = True  # reset() waits until this client is served or reset
                resets = self._resets
            try:
                client.setblocking(False)
                _set_nodelay(client)
                server = self._connect_target()
            except BaseException:
                client.close()
                with self._cond:
                    self._connecting = False
                    self._cond.notify_all()
                raise
            with self._cond:
                self._connecting = False
                self._cond.notify_all()
                if self._closed or server is None or self._resets != resets:
                    # Closed meanwhile, or the target refused, was unreachable or too slow, or
                    # reset() came while the target was being connected: the client gets RST.
                    for sock in (client, server):
                        if sock is not None:
                            _set_linger_zero(sock)
                            sock.close()
                    if self._closed:
                        return
                    continue
                self._links = [link for link in self._links if not link.closed]
                link = _Link(index, client, server)
                self._links.append(link)
                link.running = 2
                for direction in (TO_SERVER, TO_CLIENT):
                    name = f"{THREAD_PREFIX}-{self.port}-{index}-{direction}"
                    thread = threading.Thread(target=self._pump, args=(link, direction), name=name, daemon=True)
                    link.threads.append(thread)
                    thread.start()

    def _connect_target(self) -> Optional[socket.socket]:
        """A connected, non-blocking socket to the target, or None; close() cuts the wait short."""
        family, kind, proto, address = self._target
        server = socket.socket(family, kind, proto)
        try:
            server.setblocking(False)
            error = server.connect_ex(address)
            if error in _CONNECTING:
                if not _wait([self._wake_r], [server], self.timeout):
                    error = errno.ETIMEDOUT
                else:
                    with self._cond:
                        closed = self._closed
                    error = errno.ECANCELED if closed else server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:
            error = errno.EIO
        if error:
            server.close()
            return None
        _set_nodelay(server)
        return server

    def _pump(self, link: _Link, direction: str) -> None:
        """Copy one direction of ``link`` while it forwards, until EOF, an error or the end."""
        source, sink = (link.client, link.server) if direction == TO_SERVER else (link.server, link.client)
        cond = self._cond
        pending = memoryview(b"")  # read from source, not written to sink yet
        at_eof = False
        finished = False  # this direction ended normally: EOF passed on
        try:
            while True:
                with cond:
                    while not link.ending and not self._forwarding[direction]:
                        cond.wait()  # held back: read nothing, write nothing
                    if link.ending:
                        return
                    try:
                        if not pending and not at_eof:
                            try:
                                data = source.recv(_CHUNK)
                            except (BlockingIOError, InterruptedError):
                                data = None
                            if data == b"":
                                at_eof = True
                            elif data:
                                pending = memoryview(data)
                        if pending:
                            try:
                                pending = pending[sink.send(pending) :]
                            except (BlockingIOError, InterruptedError):
                                pass
                        if at_eof and not pending:
                            sink.shutdown(socket.SHUT_WR)  # pass the FIN on
                            finished = True
                            return
                    except OSError:  # an end vanished (ECONNRESET, EPIPE...): reset the other one too
                        self._end(link, reset=True)
                        return
                if pending:
                    _wait([link.wake_r], [sink])
                else:
                    _wait([link.wake_r, source], [])
        finally:
            with cond:
                if not finished and not link.ending:  # an unexpected exception: take the link down
                    self._end(link, reset=True)
                link.running -= 1
                if link.running == 0 and not link.closed:
                    link.closed = True
                    for sock in link.sockets():
                        sock.close()
