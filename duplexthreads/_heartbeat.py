"""Liveness: the heartbeat worker, and the pings in flight with the round trips they measure.

A connection can die without a word: a NAT forgets its mapping, a laptop sleeps, the peer's
process hangs with its socket open. TCP then stays "up" for minutes or hours. The heartbeat
notices within ``ping_interval + ping_timeout``: every ``ping_interval`` it sends a ping, and
when nothing at all has come from the peer (the pong, or any other bytes) for ``ping_timeout``
after a ping, it ends the connection as :attr:`~duplexthreads.Reason.HEARTBEAT_TIMEOUT`.

It is one more worker of the exit protocol. It waits only in ``quit.wait()``, so the owner's
quit ends it at once, and an idle connection wakes once per interval (twice when the timeout
is shorter than the interval: once to ping, once to judge). The reader never wakes it: the
transport stamps the time it last had a sign of life from the peer
(:meth:`Transport.last_sign_of_life`), which the heartbeat reads when it wakes anyway.

Two things are not silence, and a heartbeat that took them for it would kill live
connections: our own reader not reading (an ``on_message`` callback that takes its time, a
full inbound queue), and our writer pushing a long upload to a peer that reads it slowly, so
that no ping can get between the frames. The first is told by ``reader_busy``; the second
shows as room freed in a full send buffer, which only the peer's acknowledgements free.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict, deque
from typing import Callable, Deque, Optional

from .exceptions import HeartbeatTimeout, TransportError
from .report import WorkerExit
from .transports.base import Transport

__all__ = ["Pings", "SentPing", "heartbeat_loop"]

#: Pings whose pong never came are forgotten past this many, oldest first (a peer may legally
#: answer only the latest ping, and one that never answers must not grow our memory).
MAX_OUTSTANDING = 32


class SentPing:
    """One ping in flight: when it left, and when its pong (or a later one) came back."""

    __slots__ = ("answered", "answered_at", "sent_at", "waiters", "written")

    def __init__(self) -> None:
        self.sent_at = time.monotonic()
        self.answered_at: Optional[float] = None
        # Set when the pong comes, or when the connection ends (then answered_at stays None).
        self.answered = threading.Event()
        # How many ping() calls wait for it (they may share a payload); while any does, it is
        # never dropped to make room, nor forgotten when another of them gives up.
        self.waiters = 0
        # Set once the ping is on the wire: a later pong settles only pings that went out
        # (one still waiting to be written cannot have been answered).
        self.written = False


class Pings:
    """The pings of one connection that wait for their pong, and the last round trip measured.

    The reader calls :meth:`pong` for each pong; the heartbeat and ``Duplex.ping()`` call
    :meth:`register` before sending; the owner calls :meth:`cancel_all` when the connection
    ends, which wakes every ``ping()`` still waiting.
    """

    def __init__(self) -> None:
        # Guards everything below; held for a few dictionary operations at a time.
        self._lock = threading.Lock()
        # In the order sent: a pong answers its own ping and, by RFC 6455 5.5.3, may stand for
        # the ones before it, which a peer may leave unanswered.
        self._outstanding: OrderedDict[bytes, SentPing] = OrderedDict()
        self._ended = False
        #: Seconds between the last answered ping and its pong; None until one is answered.
        self.latency: Optional[float] = None

    def new_payload(self) -> bytes:
        """A payload no ping in flight carries."""
        with self._lock:
            while True:
                payload = os.urandom(4)
                if payload not in self._outstanding:
                    return payload

    def register(self, payload: bytes, *, waited: bool = False) -> SentPing:
        """Note a ping about to be sent; a ping already in flight with this payload is shared.

        ``waited``: a ping() call waits for it, and must :meth:`release` it if it gives up.
        """
        with self._lock:
            sent = self._outstanding.get(payload)
            if sent is None:
                sent = SentPing()
                if self._ended:
                    sent.answered.set()  # the connection is over: nothing will answer
                    return sent
                self._outstanding[payload] = sent
                self._forget_oldest_unwaited()
            if waited:
                sent.waiters += 1
            return sent

    def release(self, payload: bytes, sent: SentPing) -> None:
        """A ping() call stops waiting for ``sent``; forgotten once nobody waits for it."""
        with self._lock:
            sent.waiters -= 1
            if sent.waiters <= 0 and self._outstanding.get(payload) is sent:
                del self._outstanding[payload]

    def forget(self, payload: bytes) -> None:
        """The heartbeat's ping could not go: forget it, unless a ping() call waits for it."""
        with self._lock:
            sent = self._outstanding.get(payload)
            if sent is not None and sent.waiters == 0:
                del self._outstanding[payload]

    def pong(self, payload: bytes) -> None:
        """A pong arrived (reader thread): settle its ping and every ping sent before it."""
        now = time.monotonic()
        with self._lock:
            sent = self._outstanding.get(payload)
            if sent is None:
                return  # unsolicited, or for a ping forgotten already: proof of life only
            settled = []
            for key, earlier in self._outstanding.items():
                if key == payload or earlier.written:
                    settled.append((key, earlier))
                if key == payload:
                    break
            for key, earlier in settled:
                del self._outstanding[key]
                earlier.answered_at = now
                earlier.answered.set()
            self.latency = now - sent.sent_at

    def cancel_all(self) -> None:
        """The connection is ending: wake every waiting ping(), unanswered."""
        with self._lock:
            self._ended = True
            pending = list(self._outstanding.values())
            self._outstanding.clear()
        for sent in pending:
            sent.answered.set()

    def _forget_oldest_unwaited(self) -> None:
        if len(self._outstanding) <= MAX_OUTSTANDING:
            return
        for key, sent in self._outstanding.items():
            if not sent.waiters:
                del self._outstanding[key]
                return


def heartbeat_loop(
    transport: Transport,
    pings: Pings,
    quit: threading.Event,
    interval: float,
    timeout: Optional[float],
    reader_busy: Callable[[], bool],
    may_ping: Callable[[], bool],
) -> WorkerExit:
    """Ping every ``interval``; end with :class:`HeartbeatTimeout` if the peer stays silent.

    The verdict rests on signs of life, not on whether a ping could be written: a ping is
    written only if the socket takes it at once, after waiting at most ``CONTROL_LOCK_WAIT``
    for another write to finish (never long behind one, which may be stuck on a dead peer), and
    one that cannot go still starts its timeout. With
    ``timeout`` None the pings only keep the path warm (a NAT's mapping, a proxy's idle
    timer) and measure the latency. ``may_ping`` turns false once a close has begun: no new
    ping follows our close frame.
    """
    # When each ping still waiting for a sign of life left, oldest first.
    unanswered: Deque[float] = deque()
    next_ping = time.monotonic() + interval
    while True:
        wake = next_ping
        if unanswered and timeout is not None:
            wake = min(wake, unanswered[0] + timeout)
        if quit.wait(max(0.0, wake - time.monotonic())):
            return WorkerExit("heartbeat")
        now = time.monotonic()
        # Our reader held up in our own code is not the peer's silence: judge it later.
        alive = now if reader_busy() else transport.last_sign_of_life()
        while unanswered and alive >= unanswered[0]:
            unanswered.popleft()  # a sign of life since this ping: the peer was there then
        if unanswered and timeout is not None and now >= unanswered[0] + timeout:
            error = HeartbeatTimeout(
                f"heartbeat: no sign of life from the peer for {now - unanswered[0]:.3g} s after a ping "
                f"(ping_timeout {timeout:g} s; last sign {now - alive:.3g} s ago)"
            )
            return WorkerExit("heartbeat", error=error)
        if now >= next_ping:
            next_ping = now + interval
            if not may_ping():
                continue
            payload = pings.new_payload()
            sent = pings.register(payload)
            unanswered.append(sent.sent_at)
            try:
                transport.send_ping(payload, 0)
                sent.written = True
            except TransportError:
                pings.forget(payload)  # not written: a sign of life must still come in time
