"""``Hub``: a set of live connections that a message can reach all at once.

A server room needs to send one message to many clients without letting any one of them set
the pace. :meth:`Hub.broadcast` hands the message to each connection's own outbound queue
(``max_queue`` messages), which takes it at once or is full. A full queue means the client has
fallen behind. With ``grace`` (seconds, 0 by default) the broadcast then waits, that long in
all and only after everyone else has the message, for such clients to make room: a client
momentarily behind (a burst, another client's flood) is spared, and a broadcaster that outruns
the room's readers is slowed to their pace instead of getting them cut off. With ``grace=0`` a
broadcast never waits. A client still full after that is handled by the ``on_full`` policy:

``"close"`` (the default)
    cut the client off: its connection is closed with 1008 ("policy violation", a client too
    slow for the room) in a thread of its own, bounded by one second (its ``close_timeout``
    if shorter). The close frame goes behind what the client's queue holds, so a client that
    reads nothing more never sees it, and its report then says the handshake did not finish
    (1006). The report accounts for what its queue held; the message that found the queue full
    was never accepted and is counted in ``stats.dropped``.
``"drop"``
    skip this message for that client and count it in ``stats.dropped``; the connection
    stays. A client that stops reading for good is then ended by its own ``write_timeout``
    (give the connections one) and leaves the hub.

Everyone else keeps receiving either way.

With a ``backplane`` (:class:`~duplexthreads.RedisBackplane`, or any object with the
:class:`Backplane` methods) several hubs, in as many processes or machines, make one room:
each broadcast also goes to the backplane, and what the other hubs broadcast arrives from it
and reaches this hub's members. Local delivery never waits for the backplane.

Connections leave the hub by themselves once they end; ``len()`` and iteration count only
live ones. Every method is safe from any thread, including the connections' own
(``on_message`` may broadcast).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Set

from ._deadline import timeout_arg
from ._rfc6455 import GOING_AWAY, check_close_code, check_close_reason
from .bulk import close_all
from .exceptions import ConnectionClosed, UsageError
from .report import ExitReport, Message
from .session import Duplex, Sendable, as_message
from .transports.base import thread_name

__all__ = ["Backplane", "BackplaneStats", "Hub", "HubStats"]

#: Close code for a client cut off for falling behind: RFC 6455's "policy violation".
TOO_SLOW = 1008
#: Seconds a client cut off gets to take its close frame before the connection is cut.
CUT_OFF_TIMEOUT = 1.0

_POLICIES = ("close", "drop")


@dataclass(frozen=True)
class BackplaneStats:
    """What a backplane did so far (a snapshot); a gap shows in ``unsent`` and ``missed``."""

    #: This hub's broadcasts handed to the shared channel.
    published: int = 0
    #: Other hubs' broadcasts received from the channel (each delivered to the members here).
    received: int = 0
    #: This hub's broadcasts that did not go out (outbox full, left at close), or went out
    #: when the connection broke, with no word whether they arrived: each is lost, or was
    #: delivered once, never twice.
    unsent: int = 0
    #: Other hubs' broadcasts known to be lost on the way here (gaps in their numbering). Each
    #: receiving hub counts its own: with three hubs or more the totals across hubs do not add up
    #: to the messages lost.
    missed: int = 0
    #: Times the connection to the channel was lost.
    outages: int = 0
    #: Whether the channel is reachable now.
    connected: bool = False
    #: This hub's broadcasts waiting to go out now (they pile up during an outage).
    pending: int = 0


@dataclass(frozen=True)
class HubStats:
    """What broadcasts did so far (a snapshot)."""

    #: Messages handed to a connection's queue (one per recipient).
    delivered: int = 0
    #: Messages a member missed because its queue was full (either policy).
    dropped: int = 0
    #: Connections closed for falling behind (``on_full="close"``).
    cut_off: int = 0
    #: The backplane's own counts; ``None`` for a hub without one.
    backplane: Optional[BackplaneStats] = None


class Backplane:
    """What a :class:`Hub` needs of a channel it shares with hubs in other processes.

    A base class to document the contract (``RedisBackplane`` is one): subclasses implement
    every method. A backplane serves one hub, for the hub's whole life.
    """

    def start(self, deliver: Callable[[Message], None]) -> None:
        """Begin: call ``deliver(message)`` for each message another hub publishes (from a
        thread of the backplane's own, one message at a time, in the order they arrive), never
        for this hub's own. Called once, by the hub's constructor."""
        raise NotImplementedError

    def publish(self, message: Message) -> None:
        """Hand ``message`` to the other hubs. Never waits for the network: what cannot be
        sent now is queued (bounded) or counted as ``unsent``. Never raises either: a message
        published during or after :meth:`close` (a broadcast racing the hub's close) is counted
        as ``unsent``."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop delivering and publishing and end every thread of the backplane, in bounded
        time. Called once, by :meth:`Hub.close`, before the members are closed."""
        raise NotImplementedError

    @property
    def stats(self) -> BackplaneStats:
        raise NotImplementedError


class Hub:
    """A set of live connections; see the module documentation."""

    def __init__(self, *, on_full: str = "close", grace: float = 0.0, backplane: Optional[Backplane] = None) -> None:
        checked = timeout_arg(grace, "grace")
        if checked is None:  # None or beyond threading's limits: a broadcast could wait for ever
            raise ValueError(f"grace must be a finite number of seconds, not {grace!r}")
        if not isinstance(on_full, str):
            raise TypeError(f"on_full must be a str, one of {_POLICIES}, not {type(on_full).__name__}")
        if on_full not in _POLICIES:
            raise ValueError(f"on_full must be one of {_POLICIES}, not {on_full!r}")
        if backplane is not None and not isinstance(backplane, Backplane):
            raise TypeError(f"backplane must be a Backplane (such as RedisBackplane), not {type(backplane).__name__}")
        self.on_full = on_full
        self.grace = checked
        self.backplane = backplane
        # Guards everything below; held for set operations and counters, never while sending.
        self._lock = threading.Lock()
        self._members: Set[Duplex] = set()
        self._closed = False
        # Set once close() has closed every member; a concurrent close() waits for it.
        self._close_done = threading.Event()
        # The members the first close() is closing, and its thread: a close() from one of their
        # threads, or a second one from the closing thread (a signal handler), would wait forever.
        self._closing: List[Duplex] = []
        self._closer: Optional[threading.Thread] = None
        self._close_reports: List[ExitReport] = []
        self._delivered = 0
        self._dropped = 0
        self._cut_off = 0
        # Threads closing a connection that fell behind, by connection; joined by close().
        self._cutters: Dict[Duplex, threading.Thread] = {}
        # Members (on_full="drop") still full after a grace: later broadcasts do not wait for
        # them again until they take a message at once.
        self._lagging: Set[Duplex] = set()
        if backplane is not None:
            backplane.start(self._deliver_from_backplane)

    def add(self, conn: Duplex) -> None:
        """Let ``conn`` receive broadcasts from now on. ``UsageError`` once the hub is closed."""
        if not isinstance(conn, Duplex):
            raise TypeError(f"a Hub holds Duplex connections, not {type(conn).__name__}")
        with self._lock:
            if self._closed:
                raise UsageError("the hub is closed: it takes no more connections")
            self._members.add(conn)

    def discard(self, conn: Duplex) -> None:
        """Stop sending broadcasts to ``conn`` (it stays open); nothing happens if it is not here."""
        with self._lock:
            self._members.discard(conn)
            self._lagging.discard(conn)

    def broadcast(self, message: Sendable, exclude: Optional[Duplex] = None) -> int:
        """Hand ``message`` to every live connection but ``exclude``; return how many took it.

        Waits for no client, unless some are full: then at most ``grace`` seconds in all.
        Raises ``TypeError``/``ValueError`` for a message no connection could send, before any
        is sent.
        """
        message = as_message(message, "broadcast()")  # checked and copied once for all
        if exclude is not None and not isinstance(exclude, Duplex):
            raise TypeError(f"exclude must be a Duplex or None, not {type(exclude).__name__}")
        delivered = self._fan_out(message, exclude)
        if self.backplane is not None and not self._closed:
            self.backplane.publish(message)
        return delivered

    def close(self, code: int = GOING_AWAY, reason: str = "") -> List[ExitReport]:
        """Close every connection side by side (1001 "going away" by default) and return their
        reports; the hub takes no more connections. When it returns, every member and every
        connection it cut off has ended. A second close() waits for the first and returns the
        same reports. From one of a member's own threads (an ``on_message`` callback), or again
        in the thread running the first close() (a signal handler), it raises ``UsageError`` and
        changes nothing: it would wait for that very thread."""
        check_close_code(code)
        check_close_reason(reason)
        with self._lock:
            if any(conn._protocol.in_own_thread() for conn in [*self._members, *self._closing, *self._cutters]):
                raise UsageError("Hub.close() cannot run in one of its connections' own threads")
            if self._closer is threading.current_thread() and not self._close_done.is_set():
                raise UsageError("Hub.close() is already running in this thread (a signal handler?)")
            first = not self._closed
            self._closed = True
            if first:
                self._closing = list(self._members)
                self._closer = threading.current_thread()
            members = list(self._members)
            self._members.clear()
            cutters = list(self._cutters.values())
        if not first:
            self._close_done.wait()
            return list(self._close_reports)
        try:
            if self.backplane is not None:
                self.backplane.close()  # first: nothing arrives for members being closed
            self._close_reports = close_all(members, code, reason)
            for cutter in cutters:
                cutter.join()  # each is bounded by its connection's (bounded) close timeout
        finally:
            self._close_done.set()
        return list(self._close_reports)

    @property
    def stats(self) -> HubStats:
        with self._lock:
            counts = (self._delivered, self._dropped, self._cut_off)
        return HubStats(*counts, backplane=None if self.backplane is None else self.backplane.stats)

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._live(None))

    def __iter__(self) -> Iterator[Duplex]:
        return iter(self._live(None))

    def __contains__(self, conn: object) -> bool:
        return conn in self._live(None)

    def __repr__(self) -> str:
        return f"<Hub {len(self)} connections, on_full={self.on_full!r}>"

    # -- internals ---------------------------------------------------------------------------------

    def _deliver_from_backplane(self, message: Message) -> None:
        """Another hub's broadcast: to every member here (none of them sent it)."""
        if not self._closed:
            self._fan_out(message, None)

    def _fan_out(self, message: Message, exclude: Optional[Duplex]) -> int:
        recipients = self._live(exclude)
        lagging = self._lagging  # read without the lock: a stale view costs one wait at most
        delivered = 0
        full: List[Duplex] = []
        for conn in recipients:
            taken = _hand(conn, message, 0)
            if not taken:
                if taken is False:
                    full.append(conn)
                continue
            delivered += 1
            if lagging and conn in lagging:
                with self._lock:
                    self._lagging.discard(conn)  # caught up
        if full and self.grace > 0:
            # Everyone else has the message already; now wait, ``grace`` seconds in all, for the
            # members that are only momentarily behind (a burst, a flood) to make room. A member
            # that stayed full through an earlier grace is not waited for again.
            deadline = time.monotonic() + self.grace
            late = [conn for conn in full if conn not in lagging] if lagging else full
            full = [conn for conn in full if conn in lagging] if lagging else []
            for conn in late:
                taken = _hand(conn, message, max(0.0, deadline - time.monotonic()))
                if taken:
                    delivered += 1
                elif taken is False:
                    full.append(conn)
        with self._lock:
            if full and self.on_full == "drop" and self.grace > 0:
                self._lagging.update(full)
            self._delivered += delivered
            self._dropped += len(full)
        if self.on_full == "close":
            for conn in full:
                self._cut(conn)
        return delivered

    def _live(self, exclude: Optional[Duplex]) -> List[Duplex]:
        """The connections still open, in no order; ended ones leave the set here."""
        with self._lock:
            ended = [conn for conn in self._members if conn.closed]
            self._members.difference_update(ended)
            if self._lagging:
                self._lagging.difference_update(ended)
            return [conn for conn in self._members if conn is not exclude]

    def _cut(self, conn: Duplex) -> None:
        """Close a connection that fell behind, without making the broadcaster wait for it."""
        with self._lock:
            if conn not in self._members:
                return  # another broadcast cut it off already
            self._members.discard(conn)
            self._cut_off += 1
            self._cutters = {c: t for c, t in self._cutters.items() if t.is_alive()}
            cutter = threading.Thread(
                target=conn.close,
                # The close frame waits behind a full queue the client is not reading: a short
                # wait is all it deserves before the connection is cut and its memory freed.
                args=(
                    TOO_SLOW,
                    "too slow: the room does not wait",
                    min(CUT_OFF_TIMEOUT, conn._protocol.bounded_close_timeout),
                ),
                name=thread_name(conn.id, "cutoff"),
                daemon=True,
            )
            # Started under the lock: close() must never see a cutter it cannot join yet.
            cutter.start()
            self._cutters[conn] = cutter


def _hand(conn: Duplex, message: Message, timeout: float) -> Optional[bool]:
    """Give ``message`` to one member: True once its queue took it, False if the queue stayed
    full for ``timeout``, None if the connection is ending (it leaves the hub at the next look)."""
    try:
        conn.send(message, timeout=timeout)
    except TimeoutError:
        return False
    except ConnectionClosed:
        return None
    return True
