"""``RedisBackplane``: one room across several server processes, through Redis pub/sub.

Each process's :class:`~duplexthreads.Hub` delivers its broadcasts to its own members first,
then hands them to its backplane, which publishes them on a Redis channel; every other
process's backplane receives them from the channel and gives them to its hub. Redis pub/sub is
fire and forget: a message published while a subscriber is disconnected never reaches it. So
each backplane numbers what it publishes, and receivers find the gaps.

Threads. Two daemon threads share one quit event: a publisher (``duplexthreads-<id>-redis-pub``)
and a subscriber (``duplexthreads-<id>-redis-sub``), each with a Redis connection of its own.
:meth:`RedisBackplane.publish` never touches the network: it appends to a bounded outbox
(``max_pending``) that the publisher drains in pipelined batches.

The wire format. A published message is a header and the payload: two magic bytes, a format
version, the kind (text or binary, so each arrives as it was sent), the publishing backplane's
random 16-byte origin id, its sequence number, and how many of its numbered messages it had
counted in ``unsent`` before this one's batch. A backplane ignores its own messages (its hub
delivered them locally already) and whatever on the channel is not in this format.

Outages. While Redis is unreachable, publish() goes on returning at once, local delivery is
unaffected, the outbox holds what is broadcast (overflow counts in ``unsent``), and both
threads reconnect with :class:`~duplexthreads.Backoff`; the outbox is published after the
reconnect. What can be lost:

- a batch in flight when the connection broke: Redis may or may not have run its PUBLISH
  commands, and nobody can tell. It is not sent again (that could repeat it) and counts in
  ``unsent``: across processes delivery is at most once, never twice;
- what other hubs published while this one's subscriber was disconnected: Redis does not keep
  it. The next message from each such hub shows the jump in its numbering, which counts in
  ``missed``, less the numbers that hub itself counted in ``unsent`` (carried in the header),
  so that one loss is not counted on both sides.

After a reconnect the publisher holds the outbox until the channel has as many subscribers as
its last PUBLISH reached (for at most the backoff's cap and 2 s): when Redis restarts, every
process's subscriber comes back after its own backoff pause, and what is published before the
others are back would be lost to them.

Liveness. A write or a reply that takes over 2 s ends a connection. The subscriber, which only
reads, pings Redis after 15 s without traffic and gives up on it when 2 s pass without an
answer, so a Redis that hangs with its connections open is noticed too.

Ending. :meth:`RedisBackplane.close` gives the publisher up to half a second to publish what
the outbox holds (while connected), then sets the quit event and shuts down both connections'
sockets, which wakes a thread blocked reading or writing them wherever it is; each thread then
closes its own connection. close() returns within 2 s. What shutdown cannot wake is an opening
whose socket redis-py has not handed over yet: the TCP connect is bounded by a 1 s timeout, a
TLS handshake by the 2 s I/O timeout, a host name lookup by the system resolver's own; a
thread still in one when close() returns ends by itself right after, and is logged.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import struct
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from .exceptions import UsageError
from .hub import Backplane, BackplaneStats
from .reconnect import Backoff
from .report import Message
from .transports.base import new_connection_id, thread_name

__all__ = ["RedisBackplane"]

logger = logging.getLogger("duplexthreads.backplane")

#: The default pause between reconnect attempts: quick at first, at most 5 s (a Backoff is
#: frozen, so every instance may share it).
DEFAULT_BACKOFF = Backoff(initial=0.1, factor=2.0, cap=5.0, jitter=0.5)

_SCHEMES = ("redis", "rediss", "unix")
#: Largest message published by default: well under Redis's 32 MiB pub/sub output buffer limit.
DEFAULT_MAX_PUBLISHED = 8 * 1024 * 1024
# Options of a connection pool that a single connection does not take (redis-py's URL parser
# returns them along with the connection's own).
_POOL_OPTIONS = ("max_connections", "timeout", "retry_on_error")

_CONNECT_TIMEOUT = 1.0  # bounds close(): a TCP connect under way is the one thing shutdown cannot wake
_IO_TIMEOUT = 2.0  # a write, or a reply, that takes longer means Redis is gone or hung
_IDLE_PING = 15.0  # subscriber: ping after this long without traffic, to notice a hung Redis
_AUDIENCE_POLL = 0.05  # after a reconnect: how often to count the channel's subscribers
_FLUSH_TIME = 0.5  # close(): time the outbox gets to go out, while connected
_STOP_TIME = 1.4  # close(): time the threads get to end once told to
_BATCH = 256  # messages per pipelined write: what one broken connection can leave uncertain
_BATCH_BYTES = 1 << 20
_MAX_ORIGINS = 4096  # other hubs whose numbering is remembered (the least recently heard go first)

_MAGIC = b"dt"
_VERSION = 1
_TEXT = 1
_BINARY = 2
# magic, version, kind, origin id, sequence number, numbered messages counted unsent before the batch
_HEADER = struct.Struct("!2sBB16sQQ")
_ORIGIN_SIZE = 16

_STARTING = "starting"
_UP = "up"
_DOWN = "down"
_PUB = "pub"
_SUB = "sub"


@dataclass(frozen=True)
class _Envelope:
    """A decoded message of the channel."""

    origin: bytes
    seq: int
    #: How many of the origin's numbered messages it had counted unsent before this one's batch.
    declared: int
    message: Message


def _encode(origin: bytes, seq: int, declared: int, message: Message) -> bytes:
    if isinstance(message, str):
        return _HEADER.pack(_MAGIC, _VERSION, _TEXT, origin, seq, declared) + message.encode("utf-8")
    return _HEADER.pack(_MAGIC, _VERSION, _BINARY, origin, seq, declared) + bytes(message)


def _decode(data: bytes) -> Optional[_Envelope]:
    """The envelope in ``data``, or None for anything that is not a message of this format."""
    if len(data) < _HEADER.size:
        return None
    magic, version, kind, origin, seq, declared = _HEADER.unpack_from(data)
    if magic != _MAGIC or version != _VERSION:
        return None
    payload = data[_HEADER.size :]
    if kind == _BINARY:
        return _Envelope(origin, seq, declared, payload)
    if kind == _TEXT:
        try:
            return _Envelope(origin, seq, declared, payload.decode("utf-8"))
        except UnicodeDecodeError:
            return None
    return None


class _Numbering:
    """What the subscriber knows of each other hub's numbering: the last number received and
    how many numbers that hub had counted unsent by then."""

    def __init__(self, limit: int = _MAX_ORIGINS) -> None:
        self._last: OrderedDict[bytes, Tuple[int, int]] = OrderedDict()
        self._limit = limit

    def observe(self, origin: bytes, seq: int, declared: int) -> Optional[int]:
        """How many of ``origin``'s messages were lost just before this one (0: none), or None
        for a number received already, which must not be delivered again.

        The first message of a hub not heard from yet counts nothing: what it published
        before is not this backplane's to miss. The numbers the hub counted in its own
        ``unsent`` meanwhile (``declared`` grew) are left out: they are counted there.
        """
        last = self._last.get(origin)
        if last is None:
            missed = 0
        else:
            last_seq, last_declared = last
            if seq <= last_seq:
                return None
            gap = seq - last_seq - 1
            missed = max(0, gap - max(0, declared - last_declared))
            declared = max(declared, last_declared)
        self._last[origin] = (seq, declared)
        self._last.move_to_end(origin)
        if len(self._last) > self._limit:
            self._last.popitem(last=False)
        return missed


def _shutdown(conn: Any) -> None:
    """Wake a thread blocked on ``conn``'s socket: its read sees the end of the stream, its
    write fails. The thread then closes the connection itself.

    redis-py has no public call for this. Its ``disconnect()`` also closes the socket and
    drops the parser's buffer while the other thread is inside them, so both threads would
    race on one buffer; shutdown(2) is the one call that is safe from another thread. The
    socket is read from the connection's ``_sock`` for want of anything public.
    """
    sock = getattr(conn, "_sock", None)
    if isinstance(sock, socket.socket):
        try:
            # socket.socket's own: SSLSocket.shutdown would also drop its SSL object under the reader.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass  # not connected yet, or closed already: nothing blocks on it


def _safe_url(url: str) -> str:
    """``url`` without its password, for logs and repr."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return parts._replace(netloc=user + host).geturl()


class RedisBackplane(Backplane):
    """One room across processes through Redis pub/sub: pass it to ``Hub(backplane=...)``.

    ``url``: ``redis://``, ``rediss://`` (TLS) or ``unix://`` in redis-py's format (the db
    number does not separate channels: Redis pub/sub is server-wide). ``channel``: the room's
    Redis channel; every hub on it is one room. ``max_pending``: how many broadcasts may wait
    to be published (during an outage); more count in ``stats.unsent``. ``max_message_size``:
    the largest message (in bytes, UTF-8 for text) published; a larger one stays local and
    counts in ``stats.unsent``, since Redis disconnects every subscriber whose output buffer
    passes 32 MiB (``client-output-buffer-limit pubsub``), which one huge message does for the
    whole room. ``backoff``: the pause between reconnect attempts (default: 0.1 s doubling up
    to 5 s, with jitter).

    Delivery across processes is at most once: a message reaches each other hub's members
    once or not at all, and every loss this backplane can know of shows in ``stats``
    (``unsent`` here, ``missed`` at the receiving end). See the module documentation.
    Needs the ``redis`` extra: ``pip install 'duplexthreads[redis]'``.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        channel: str = "duplexthreads",
        *,
        max_pending: int = 10_000,
        max_message_size: int = DEFAULT_MAX_PUBLISHED,
        backoff: Optional[Backoff] = None,
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        if urlsplit(url).scheme not in _SCHEMES:
            raise ValueError(f"url must start with redis://, rediss:// or unix://, not {_safe_url(url)!r}")
        if not isinstance(channel, str):
            raise TypeError(f"channel must be a str, not {type(channel).__name__}")
        if not channel:
            raise ValueError("channel must not be empty")
        if not isinstance(max_pending, int) or isinstance(max_pending, bool):
            raise TypeError(f"max_pending must be an int, not {type(max_pending).__name__}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {max_pending}")
        if not isinstance(max_message_size, int) or isinstance(max_message_size, bool):
            raise TypeError(f"max_message_size must be an int, not {type(max_message_size).__name__}")
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be at least 1, not {max_message_size}")
        if backoff is not None and not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff or None, not {type(backoff).__name__}")
        try:
            import redis
            import redis.backoff
            import redis.connection
            import redis.retry
        except ImportError as exc:
            raise ImportError(
                "RedisBackplane needs redis-py: install it with pip install 'duplexthreads[redis]'"
            ) from exc
        # redis-py's own objects are typed loosely (untyped methods): kept as Any here.
        self._redis: Any = redis
        self.url = url
        self.channel = channel
        self.max_pending = max_pending
        self.max_message_size = max_message_size
        self._too_large_logged = False
        self.backoff = DEFAULT_BACKOFF if backoff is None else backoff
        self._origin = os.urandom(_ORIGIN_SIZE)
        self._rng = random.Random()
        self._id = new_connection_id()
        self._connection_class, self._options = self._connection_options(url)

        self._quit = threading.Event()  # shared by both threads; set by close()
        # Guards everything below; never held across network I/O.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._threads: List[threading.Thread] = []
        self._deliver: Optional[Callable[[Message], None]] = None
        self._closing = False
        self._finished = False  # close() has counted what was left: the publisher counts no more
        # Messages to publish, oldest first. The publisher's batch stays in it until its outcome
        # is known, so close() can wait for the outbox to be empty to know all went out.
        self._outbox: Deque[Message] = deque()
        self._publisher_idle = False
        # The publisher thread's own: the next sequence number, how many numbered messages it
        # counted unsent so far, how many subscribers a new connection waits for, and the most
        # a PUBLISH reached on the current connection (None: it published nothing yet).
        self._seq = 0
        self._declared = 0
        self._audience = 0
        self._reached: Optional[int] = None
        self._conns: Dict[str, Any] = {}  # each thread's connection, for close() to wake
        # Whether each thread's connection is known to work. After an outage starts, the
        # publisher's counts as unknown until it proves it (it cannot notice a loss while idle).
        self._links: Dict[str, bool] = {_PUB: False, _SUB: False}
        self._state = _STARTING
        self._outage_started = 0.0
        self._unsent_before = 0
        self._published = 0
        self._received = 0
        self._unsent = 0
        self._missed = 0
        self._outages = 0
        self._overflow_logged = False
        self._foreign_logged = False

    def _connection_options(self, url: str) -> Tuple[Any, Dict[str, Any]]:
        """The connection class and options for ``url``; ``ValueError`` for a URL redis-py refuses."""
        redis = self._redis
        try:
            options: Dict[str, Any] = redis.connection.parse_url(url)
        except ValueError as exc:
            raise ValueError(f"url {_safe_url(url)!r}: {exc}") from None
        connection_class = options.pop("connection_class", redis.connection.Connection)
        for name in _POOL_OPTIONS:
            options.pop(name, None)
        options.update(
            socket_connect_timeout=_CONNECT_TIMEOUT,
            socket_timeout=_IO_TIMEOUT,
            # No retries inside redis-py: the threads reconnect themselves, with the backoff,
            # and count each outage once.
            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
            # RESP2 whatever the URL says: pub/sub messages then arrive as plain replies.
            protocol=2,
            decode_responses=False,
            redis_connect_func=self._handshake,
        )
        try:
            connection_class(**options)  # refuses unknown options in the URL's query, without I/O
        except (TypeError, ValueError, redis.RedisError) as exc:
            raise ValueError(f"url {_safe_url(url)!r}: {exc}") from None
        return connection_class, options

    # -- the Backplane contract --------------------------------------------------------------

    def start(self, deliver: Callable[[Message], None]) -> None:
        """Connect and begin delivering other hubs' messages to ``deliver``; once only."""
        if not callable(deliver):
            raise TypeError(f"deliver must be callable, not {type(deliver).__name__}")
        with self._lock:
            if self._closing:
                raise UsageError("the backplane is closed: it cannot start")
            if self._threads:
                raise UsageError("the backplane is started already: one backplane serves one hub")
            self._deliver = deliver
            self._threads = [
                threading.Thread(target=self._run_publisher, name=thread_name(self._id, "redis-pub"), daemon=True),
                threading.Thread(target=self._run_subscriber, name=thread_name(self._id, "redis-sub"), daemon=True),
            ]
            # Started under the lock: close() must never see a thread it cannot join yet.
            for thread in self._threads:
                thread.start()

    def publish(self, message: Message) -> None:
        """Queue ``message`` for the other hubs; never waits. A full outbox counts it unsent."""
        if not isinstance(message, (str, bytes)):
            raise TypeError(f"publish() takes str or bytes, not {type(message).__name__}")
        if isinstance(message, bytes):
            size = len(message)
        else:  # at most 4 bytes a character: most texts need no encoding to be measured
            size = len(message) if 4 * len(message) <= self.max_message_size else len(message.encode("utf-8"))
        if size > self.max_message_size:
            with self._cond:
                self._unsent += 1
                first = not self._too_large_logged
                self._too_large_logged = True
            if first:
                logger.warning(
                    "redis backplane %d: a message of %d bytes stays local (max_message_size %d); such "
                    "messages count as unsent",
                    self._id,
                    size,
                    self.max_message_size,
                )
            return
        overflow = False
        with self._cond:
            if self._closing or len(self._outbox) >= self.max_pending:
                self._unsent += 1
                overflow = not self._closing and not self._overflow_logged
                self._overflow_logged = self._overflow_logged or overflow
            else:
                self._outbox.append(message)
                if self._publisher_idle:
                    self._cond.notify_all()
        if overflow:
            logger.warning(
                "redis backplane %d: the outbox is full (%d messages): broadcasts count as unsent until it drains",
                self._id,
                self.max_pending,
            )

    def close(self) -> None:
        """Publish what waits (up to 0.5 s, while connected), then stop both threads; within 2 s."""
        with self._cond:
            first = not self._closing
            self._closing = True
            threads = list(self._threads)
            if first and threads:
                flush_until = time.monotonic() + _FLUSH_TIME
                while self._outbox and self._links[_PUB] and not self._quit.is_set():
                    left = flush_until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            self._quit.set()
            self._cond.notify_all()
            for conn in self._conns.values():
                _shutdown(conn)
        stop_by = time.monotonic() + _STOP_TIME
        me = threading.current_thread()
        for thread in threads:
            if thread is not me:
                thread.join(max(0.0, stop_by - time.monotonic()))
        with self._cond:
            if not self._finished:
                self._finished = True
                self._unsent += len(self._outbox)  # never went out
                self._outbox.clear()
            self._state = _DOWN
            self._links = {_PUB: False, _SUB: False}
        lingering = [thread.name for thread in threads if thread.is_alive() and thread is not me]
        if lingering:
            logger.warning(
                "redis backplane %d: %s still running after close() (a connect or name lookup under way)",
                self._id,
                ", ".join(lingering),
            )

    @property
    def stats(self) -> BackplaneStats:
        with self._lock:
            return BackplaneStats(
                published=self._published,
                received=self._received,
                unsent=self._unsent,
                missed=self._missed,
                outages=self._outages,
                connected=self._state == _UP,
                pending=len(self._outbox),
            )

    @property
    def connected(self) -> bool:
        """Whether both connections to Redis work now (as far as known)."""
        return self._state == _UP

    @property
    def pending(self) -> int:
        """How many messages wait in the outbox (a batch in flight included)."""
        with self._lock:
            return len(self._outbox)

    def __repr__(self) -> str:
        state = "closed" if self._closing else self._state
        return f"<RedisBackplane {self._id} {_safe_url(self.url)} channel={self.channel!r} {state}>"

    # -- connections -------------------------------------------------------------------------

    def _connect(self, role: str) -> Any:
        """A new connection for ``role``, registered for close() to wake, or None (the failure
        is reported, or the backplane is closing)."""
        options = dict(self._options)
        options.setdefault("client_name", f"duplexthreads-{self._origin[:4].hex()}-{role}")
        conn = self._connection_class(**options)
        with self._lock:
            if self._quit.is_set():
                return None
            # Registered before connecting, so close() can wake a handshake blocked on a hung Redis.
            self._conns[role] = conn
        try:
            conn.connect()
            if role == _SUB:
                conn.send_command("SUBSCRIBE", self.channel)
                conn.read_response()  # the confirmation: from now on messages arrive
        except Exception as exc:  # noqa: BLE001 - every failure to connect is an outage, reported below
            self._release(role, conn)
            self._link_lost(role, exc)
            return None
        return conn

    def _handshake(self, conn: Any) -> None:
        """redis-py's hook between the TCP connect and the handshake (AUTH, SELECT, ...)."""
        with self._lock:
            # close() may have looked for this socket while the TCP connect was under way, and
            # found none to shut down; the handshake must not then wait on a hung Redis.
            if self._quit.is_set():
                raise self._redis.ConnectionError("the backplane is closing")
        conn.on_connect()

    def _release(self, role: str, conn: Any) -> None:
        with self._lock:
            if self._conns.get(role) is conn:
                del self._conns[role]
        conn.disconnect()

    def _pause(self, failures: int) -> None:
        """Wait before the next reconnect attempt; close() cuts it short."""
        self._quit.wait(self.backoff.delay(max(1, failures), self._rng))

    # -- the state of the link, and the log --------------------------------------------------

    def _link_lost(self, role: str, error: BaseException, counted: int = 0) -> None:
        """``role``'s connection failed; the first failure of an outage counts it and logs it.
        ``counted``: messages the failure itself has just counted unsent (a batch in flight),
        part of what the outage cost."""
        with self._cond:
            if self._quit.is_set():
                return  # close() ended it: no outage
            self._links[role] = False
            if self._state == _DOWN:
                return
            what = "cannot reach" if self._state == _STARTING else "lost"
            self._state = _DOWN
            self._outages += 1
            self._outage_started = time.monotonic()
            self._unsent_before = self._unsent - counted
            # An idle publisher cannot notice that its connection died with Redis: it must
            # prove it again before the backplane counts as connected.
            self._links[_PUB] = False
            self._cond.notify_all()
            pending = len(self._outbox)
        logger.warning(
            "redis backplane %d: %s Redis at %s (%s: %s: %s); local delivery goes on, %d broadcasts wait to be "
            "published (at most %d), reconnecting",
            self._id,
            what,
            _safe_url(self.url),
            "publisher" if role == _PUB else "subscriber",
            type(error).__name__,
            error,
            pending,
            self.max_pending,
        )

    def _link_up(self, role: str) -> None:
        with self._cond:
            if self._links[role] or self._quit.is_set():
                return
            self._links[role] = True
            if not all(self._links.values()):
                return
            after_outage = self._state == _DOWN
            self._state = _UP
            self._overflow_logged = False
            self._cond.notify_all()
            seconds = time.monotonic() - self._outage_started
            unsent = self._unsent - self._unsent_before
        if after_outage:
            logger.info(
                "redis backplane %d: reconnected to %s after %.1f s; the outage cost %d unsent broadcasts of this "
                "hub; other hubs' broadcasts lost meanwhile count in missed as their next ones arrive",
                self._id,
                _safe_url(self.url),
                seconds,
                unsent,
            )
        else:
            logger.info("redis backplane %d: connected to %s, channel %r", self._id, _safe_url(self.url), self.channel)

    # -- the publisher -----------------------------------------------------------------------

    def _run_publisher(self) -> None:
        conn: Any = None
        failures = 0
        connected_at = 0.0
        try:
            while not self._quit.is_set():
                if conn is None:
                    conn = self._connect(_PUB)
                    if conn is None:
                        failures += 1
                        self._pause(failures)
                        continue
                    connected_at = time.monotonic()
                    failure = self._await_audience(conn)
                else:
                    failure = self._publish_some(conn)
                if failure is None:
                    continue
                error, counted = failure
                self._release(_PUB, conn)
                conn = None
                self._link_lost(_PUB, error, counted)
                failures = 1 if time.monotonic() - connected_at >= self.backoff.reset_after else failures + 1
                self._pause(failures)
        finally:
            if conn is not None:
                self._release(_PUB, conn)

    def _await_audience(self, conn: Any) -> Optional[Tuple[BaseException, int]]:
        """On a new connection, hold the outbox until the channel has as many subscribers as a
        PUBLISH reached on the last one (at most, in case a hub left meanwhile, for the
        backoff's cap and 2 s): after Redis restarts, the other processes' subscribers come
        back one by one, and what is published before they are back never reaches them. The
        most on the last connection, not the last count: a subscriber that was away just
        then still counts. A hub gone for good costs the wait once.

        Returns (the error, 0) if the connection fails, else None."""
        if self._reached is not None:
            self._audience, self._reached = self._reached, None
        hold_until = time.monotonic() + self.backoff.cap + _IO_TIMEOUT
        try:
            while self._audience > 0 and not self._quit.is_set():
                conn.send_command("PUBSUB", "NUMSUB", self.channel, check_health=False)
                reply = conn.read_response()
                if int(reply[1]) >= self._audience or time.monotonic() >= hold_until:
                    break
                # A short poll, only while recovering: Redis has no way to announce a subscriber.
                self._quit.wait(_AUDIENCE_POLL)
        except Exception as exc:  # noqa: BLE001 - the new connection failed: reported by the caller
            return exc, 0
        self._link_up(_PUB)
        return None

    def _publish_some(self, conn: Any) -> Optional[Tuple[BaseException, int]]:
        """Wait for messages, publish a batch of them; (the error, how many it left with an
        unknown outcome, now counted unsent) if the connection fails, else None."""
        with self._cond:
            self._publisher_idle = True
            while not self._quit.is_set() and not self._outbox and self._links[_PUB]:
                self._cond.wait()
            self._publisher_idle = False
            if self._quit.is_set():
                return None
            batch = self._take_batch()
        try:
            # Redis closing the connection shows here, before anything is sent: the batch then
            # waits for the next connection, none of it lost.
            if conn.can_read(timeout=0):
                raise self._redis.ConnectionError("unexpected data from Redis on the publishing connection")
            if not batch:  # nothing to send: the connection must prove it works (see _link_lost)
                conn.send_command("PING", check_health=False)
                conn.read_response()
        except Exception as exc:  # noqa: BLE001 - the connection failed: reported by the caller
            return exc, 0
        if not batch:
            self._link_up(_PUB)
            return None
        ok, refused, error = self._send_batch(conn, batch)
        uncertain = len(batch) - ok - refused
        self._seq += len(batch)
        self._declared += refused + uncertain
        with self._cond:
            if not self._finished:  # else close() counted the whole outbox already
                for _ in batch:
                    self._outbox.popleft()
                self._published += ok
                self._unsent += refused + uncertain
            self._cond.notify_all()  # close() waits for the outbox to empty
        if error is not None:
            return error, uncertain
        self._link_up(_PUB)
        return None

    def _take_batch(self) -> List[Message]:
        """The oldest messages, up to a batch (called under the lock; they stay in the outbox)."""
        batch: List[Message] = []
        size = 0
        for message in self._outbox:
            if len(batch) >= _BATCH or (batch and size + len(message) > _BATCH_BYTES):
                break
            batch.append(message)
            size += len(message)
        return batch

    def _send_batch(self, conn: Any, batch: List[Message]) -> Tuple[int, int, Optional[BaseException]]:
        """PUBLISH each message of ``batch`` in one pipelined write: (published, refused by
        Redis, the error that broke the connection or None). The messages after the replies
        read when the connection broke have an unknown outcome: Redis may have run their
        PUBLISH or not. They are not sent again, since that could deliver them twice."""
        origin, seq, declared = self._origin, self._seq, self._declared
        commands = [
            ("PUBLISH", self.channel, _encode(origin, seq + index, declared, message))
            for index, message in enumerate(batch)
        ]
        ok = refused = 0
        try:
            conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            for _ in commands:
                try:
                    reply = conn.read_response()
                except self._redis.ResponseError as exc:  # ACL, a replica: this one was not published
                    refused += 1
                    logger.warning("redis backplane %d: Redis refused a PUBLISH: %s", self._id, exc)
                    continue
                ok += 1
                # How many subscribers it reached, ours included.
                self._reached = max(self._reached or 0, int(reply))
        except Exception as exc:  # noqa: BLE001 - the connection broke: the rest's outcome is unknown
            return ok, refused, exc
        return ok, refused, None

    # -- the subscriber ----------------------------------------------------------------------

    def _run_subscriber(self) -> None:
        failures = 0
        numbering = _Numbering()
        while not self._quit.is_set():
            conn = self._connect(_SUB)
            if conn is None:
                failures += 1
                self._pause(failures)
                continue
            connected_at = time.monotonic()
            self._link_up(_SUB)
            try:
                self._listen(conn, numbering)
            except Exception as exc:  # noqa: BLE001 - the connection broke (or close() woke it)
                self._link_lost(_SUB, exc)
            finally:
                self._release(_SUB, conn)
            failures = 1 if time.monotonic() - connected_at >= self.backoff.reset_after else failures + 1
            self._pause(failures)

    def _listen(self, conn: Any, numbering: _Numbering) -> None:
        """Deliver what arrives on ``conn`` until the backplane closes (or the connection fails: raises)."""
        pinged = False
        while not self._quit.is_set():
            # Blocks until something arrives; close() wakes it by shutting the socket down.
            if not conn.can_read(timeout=_IO_TIMEOUT if pinged else _IDLE_PING):
                if pinged:
                    raise self._redis.TimeoutError(f"Redis did not answer a ping within {_IO_TIMEOUT:g} s")
                conn.send_command("PING", check_health=False)
                pinged = True
                continue
            pinged = False
            reply = conn.read_response()  # the rest of a message that began to arrive: bounded by the I/O timeout
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                self._arrived(reply[2], numbering)

    def _arrived(self, data: Any, numbering: _Numbering) -> None:
        envelope = _decode(data) if isinstance(data, bytes) else None
        if envelope is None:
            with self._lock:
                logged, self._foreign_logged = self._foreign_logged, True
            if not logged:
                logger.warning(
                    "redis backplane %d: ignoring messages on channel %r that no backplane published",
                    self._id,
                    self.channel,
                )
            return
        if envelope.origin == self._origin:
            return  # our own: the hub delivered it locally already
        missed = numbering.observe(envelope.origin, envelope.seq, envelope.declared)
        if missed is None:
            return  # a number received already: at most once
        with self._lock:
            self._received += 1
            self._missed += missed
            deliver = self._deliver
        if missed:
            logger.info(
                "redis backplane %d: %d broadcasts of hub %s were missed (a gap in its numbering)",
                self._id,
                missed,
                envelope.origin[:4].hex(),
            )
        if deliver is not None:
            try:
                deliver(envelope.message)
            except Exception:
                logger.exception("redis backplane %d: delivering a message to the hub raised", self._id)
