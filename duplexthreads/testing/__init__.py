"""Leak checks for test suites: prove that code leaves no thread, descriptor or memory behind.

:class:`LeakCheck` snapshots the process: its threads (by identity, daemon threads included),
``threading.active_count()``, the OS-level threads in ``/proc/self/task`` (so a thread that a C
extension starts behind ``threading``'s back is caught too), the open file descriptors with what
they point to (sockets, pipes, files), the duplexthreads connections not closed yet, and the
resident set size. On exit it waits, against a deadline, for the process to give back what the
block took, and raises :class:`LeakError` naming each leaked thread with its current stack, each
leaked descriptor with its target, and each connection left open with the place that opened it
(a connection lives until it is closed, referenced or not), with the thread counts before and
after::

    from duplexthreads.testing import LeakCheck

    with LeakCheck(timeout=2.0) as check:
        run_my_client()
    print(check.quiesce_seconds)              # how long the process took to settle

    @LeakCheck(ignore_threads=[r"^pydevd"], ignore_fds=[r"^/dev/shm/"])
    def test_something(): ...

    # A soak test: memory may grow a little, threads and descriptors not at all.
    with LeakCheck(timeout=5.0, max_rss_growth_kib=20_000) as check:
        for _ in range(1000):
            run_my_client()
    print(check.rss_growth_kib)

    # Findings without an exception, for a report or a log:
    check = LeakCheck(timeout=1.0).start()
    run_my_client()
    if not check.verify(raise_error=False):
        print(check.leaked_threads, check.leaked_os_threads, check.leaked_fds)

The wait re-checks whenever a thread ends (it joins the leftover threads with short bounded
joins) instead of sleeping a fixed time, so a clean run returns as soon as it is clean. Where
``/proc`` is absent (not Linux) only ``threading``'s threads are checked.

The arguments are checked when the check is made (``timeout`` and ``max_rss_growth_kib`` also
when set later): ``timeout`` is a finite number of seconds >= 0 and ``max_rss_growth_kib`` a
finite number >= 0 or None (a bool, a str or None for ``timeout`` is a ``TypeError``; NaN, an
infinity or a negative number a ``ValueError``). ``ignore_threads`` and ``ignore_fds`` are lists
(any iterable) of regular expressions given as str: one pattern alone must still be in a list,
``ignore_threads=[r"^pydevd"]``; a bare str is a ``TypeError``, since each of its characters
would become a pattern of its own and let almost any leak pass.

The pytest plugin
-----------------
Installing duplexthreads registers a pytest plugin. It does nothing until asked. To check every
test of a suite, across its setup, call and teardown::

    pytest --duplexthreads-leak-check                      # once, or in CI
    pytest --duplexthreads-leak-check --duplexthreads-leak-timeout 10

In a CI workflow that is one step, for example in GitHub Actions::

    - run: python -m pytest --duplexthreads-leak-check --duplexthreads-leak-timeout 10

or for good, in ``pytest.ini`` (``[tool:pytest]`` in setup.cfg, ``[tool.pytest.ini_options]`` in
pyproject.toml)::

    [pytest]
    duplexthreads_leak_check = true
    duplexthreads_leak_timeout = 5
    duplexthreads_leak_ignore_threads =
        ^pydevd
    duplexthreads_leak_ignore_fds =
        ^/dev/shm/

``--no-duplexthreads-leak-check`` turns it off again for one run. A test that leaks errors at
teardown with the :class:`LeakError` text, headed by the test's id. What a fixture wider than a
test (module, class, package or session scope) sets up belongs to that fixture, not to the test
that happened to set it up; it must be gone once the fixture is torn down, and the test during
whose teardown that happens reports it. Start lazily created pools (a C library's worker
threads, say) in a session fixture or a ``conftest.py`` so that no single test owns them.
``@pytest.mark.duplexthreads_allow_leaks`` exempts one test.

A slow CI machine can scale the timeout from a ``conftest.py``::

    def pytest_configure(config):
        if config.getoption("duplexthreads_leak_timeout") is None:
            config.option.duplexthreads_leak_timeout = 10.0

The ``leak_check`` fixture works with or without the option: it yields a started
:class:`LeakCheck` (timeout and allow-lists from the options above) and verifies it when the
fixture is torn down. Request it first so that it also covers the other fixtures::

    def test_client_cleans_up(leak_check, echo_server):
        run_my_client(echo_server.url)
        leak_check.max_rss_growth_kib = 5_000    # the check is live: tighten it as you go

The scripted peer
-----------------
:class:`ScriptedPeer` is a WebSocket server on loopback (127.0.0.1, a free port) that does what
the test tells it, including what no well-behaved server does. It is serving once the
constructor returns. Each client it accepts becomes a :class:`PeerConnection`, handed out by
``next_connection()`` in the order the clients were accepted::

    from duplexthreads.testing import VIOLATIONS, ScriptedPeer

    with ScriptedPeer(echo=True) as peer:
        client = MyClient(peer.url)                     # "ws://127.0.0.1:PORT/"
        remote = peer.next_connection(timeout=5)
        client.send("hi")
        assert remote.wait_messages(1) == ["hi"]
        remote.violate("invalid-utf8")
        # A conforming client fails the connection with the code RFC 6455 asks for, 1007 here:
        assert remote.wait_close_frame()[0] == VIOLATIONS["invalid-utf8"]
        assert remote.wait_ended() and remote.ended_by == "eof"

Two checks of a client's opening and closing, with the options below::

    # A 101 without the Upgrade header, the accept key right: the client must not open.
    answer = "HTTP/1.1 101 Switching Protocols\\r\\nConnection: Upgrade\\r\\n"
    answer += "Sec-WebSocket-Accept: {accept}\\r\\n\\r\\n"
    with ScriptedPeer(handshake_answer=answer) as peer:
        with pytest.raises(MyClientError):
            MyClient(peer.url)
        assert peer.next_connection(timeout=5).request_target == "/"

    # After the close handshake, does the client let the server end TCP first (RFC 6455, 7.1.1)?
    with ScriptedPeer(linger_after_close=0.5) as peer:
        client = MyClient(peer.url)
        remote = peer.next_connection(timeout=5)
        client.close()
        assert remote.wait_ended() and remote.first_to_end_tcp == "server"

The options apply to every connection the peer accepts. Each is checked when the peer is made,
in the test's process before a child process, a thread or a socket exists, and the same way in
both modes: a ``TypeError`` for a value of the wrong type (the switches take True or False
only; a number is an int or a float, never a bool), a ``ValueError`` for a bad value, each
naming the option. ``host`` (``"127.0.0.1"``, a non-empty str) and ``port`` (0, any free port;
an int up to 65535) say where it listens.

``echo=True``
    Send every message back, with its type. ``drop_every=N`` (an int >= 1) discards every Nth
    message instead (recorded in ``dropped``), for applications that must cope with loss.
``silent=True``
    Never answer a close frame or a ping, and keep reading, so the client's writes never block.
``stop_reading=True``
    Read nothing after the handshake: the client's writes block once the TCP window is full.
``greeting=[...]``, ``close_after_greeting=(code, reason)``
    Messages sent right after the handshake (a list or tuple of str, sent as text and encodable
    as UTF-8, and bytes, sent as binary; one message alone goes in a list too), then a close
    frame (code None: empty payload). The close frame is one ``close()`` could send (below).
    With ``greeting_with_handshake=True`` (the default) they go out in the same write, and on
    loopback in the same TCP segment, as the 101 response: a client must not lose a message
    that arrives together with the handshake's answer.
``reject=404``
    Answer the upgrade with that status (an int from 200 to 599) and a short text body, then
    end TCP.
``trickle_handshake=0.5``
    Send the 101 response one byte every 0.5 s (a finite number of seconds > 0): does the
    client's open timeout bound the
    whole opening, or only each read? ``close()`` interrupts the trickle.
``strict_host=True``
    Answer 400 unless the Host header is what RFC 7230 (5.4) asks for the URL: the host,
    IPv6 literals in brackets, plus ``:port`` unless it is the scheme's default.
``subprotocols=("chat",)``
    Accept the first subprotocol the client offers that is in this list or tuple of distinct
    names (RFC 7230 tokens).
``handshake_answer="HTTP/1.1 101 ...\\r\\n\\r\\n"``
    Answer every upgrade request with exactly these bytes instead of a 101, then end TCP: how
    does a client handle a broken or unexpected answer (a wrong accept key, no Upgrade header, a
    subprotocol or extension it did not offer, a redirect, garbage, an answer cut short, header
    bytes that are not UTF-8...)? A str is taken as latin-1, one byte a character (pass bytes
    for anything else). ``{accept}`` in it becomes the ``Sec-WebSocket-Accept`` that answers the
    request's key (nothing, if the request has no key); ``""`` ends TCP without a word.
    The request is recorded as usual (``request_target``, ``request_headers``; ``handshake_error``
    says what was wrong with it, if anything); ``response_status`` stays None. No option that
    shapes the answer or the connection after it may be given too.
``linger_after_close=0.5``
    After a close handshake, whoever started it, do not end TCP first: wait up to that many
    seconds (a finite number >= 0) for the client to end it, then end it. RFC 6455 (7.1.1) asks the client to wait for
    the server to end TCP; ``first_to_end_tcp`` says whether it did, and a long linger shows
    whether a client bounded by its close timeout hangs on a server that never ends TCP. Not
    with ``silent``; a close frame answered late, by ``close()`` after ``go_silent()``, still
    ends TCP at once.
``timeout=10.0``
    Bound on every wait without a timeout of its own: ``next_connection()`` and the waits by
    default, a send to a client that stopped reading, the opening handshake, the wait for the
    client to end TCP after the close handshake, each call to the child process. A finite
    number of seconds > 0, at most 1,000,000.

A :class:`PeerConnection` sends ``send(message)`` (str: text, bytes: binary),
``send_fragmented(message, fragment_size)`` (cut at any byte, even inside a UTF-8 sequence),
``send_raw(data)`` (any bytes; :func:`encode_frame` builds frames, valid or not),
``ping(payload)`` (bytes, at most 125), ``close(code=1000, reason="")`` (``close(None)``: an
empty close payload, as browsers send), and ``violate(name)``. ``close()`` sends only what
RFC 6455 lets an endpoint send: an int code from 1000-1003, 1007-1014 or 3000-4999 and a
reason of at most 123 bytes of UTF-8; any other code (999, 1004, 1005, 1006, 1015, 5000...)
is a ``ValueError`` that points to ``violate("bad-close-code-...")``, or to ``send_raw()`` for
a close frame no violation covers. Arguments are checked before anything is sent, in both
modes, as the options are. It ends TCP with ``reset()`` (RST: ``SO_LINGER`` 0)
or ``drop()`` (FIN, no close frame); ``stop_reading()``, ``resume_reading()`` and
``go_silent()`` change its behaviour from then on. After a close handshake the server ends TCP
first (RFC 6455, 7.1.1; later with ``linger_after_close``) and reads on until the client ends
its side. Pings are answered and close frames returned unless the connection is silent. A
client that breaks the protocol is sent a close frame with code 1002 or 1007 (see
``protocol_errors``).

What it saw: ``received`` (whole messages), ``dropped``, ``close_frames`` ((code, reason) pairs,
code None for an empty payload), ``pongs``, ``protocol_errors``, ``request_target``,
``request_headers`` (names spelled as sent), ``response_status``, ``subprotocol``,
``handshake_error``, ``ended`` and ``ended_by``: how TCP ended as seen from the peer,
``"eof"`` (the client's FIN), ``"reset"`` (the client's RST), ``"peer"`` (the peer ended it
first: ``reset()``, ``drop()``, closing the peer, or a client that never ended TCP after the
close handshake), or None while open. ``first_to_end_tcp`` is who ended TCP first, by FIN or
RST: ``"client"`` (its FIN came while the peer's side was still open), ``"reset"`` (the
client's RST came first), ``"server"`` (the peer ended its side first: after a close handshake,
a refusal, a ``handshake_answer`` or a protocol error, by ``reset()``, ``drop()`` or closing
the peer), or None while neither has. After a plain close handshake it is ``"server"`` while
``ended_by`` is ``"eof"``: the server ended TCP first, then read the client's FIN.
``unread_at_close`` counts the bytes the client sent that were never read when the socket
closed; when it is above 0 the kernel answered with RST.
The waits, ``wait_messages(count)``, ``wait_close_frame()``, ``wait_pongs(count)`` and
``wait_ended()``, raise ``TimeoutError`` saying what did come, and ``ConnectionError`` if the
connection ended first. Their ``timeout``, like ``next_connection()``'s, is None (the peer's
``timeout``) or a finite number of seconds from 0 to 1,000,000; ``count`` an int >= 0.
Controls that write raise ``ConnectionError`` once it has ended.

``VIOLATIONS`` maps each violation to the close code RFC 6455 says the receiver must fail the
connection with:

=============================== ==== ===========================================================
``invalid-utf8``                1007 a text frame that is not UTF-8
``invalid-utf8-fragment``       1007 a first, non-final text fragment holding 0xFF; the message
                                     never ends, so only a receiver checking each fragment fails
``reserved-opcode``             1002 a frame with opcode 0x3
``reserved-control-opcode``     1002 a frame with opcode 0xB
``rsv-bits``                    1002 a text frame with RSV1 set, no extension negotiated
``orphan-continuation``         1002 a continuation frame with no message open
``unfinished-message-then-new`` 1002 a non-final text frame, then a new text frame
``long-ping``                   1002 a ping with 126 bytes of payload
``fragmented-ping``             1002 a ping with FIN clear
``fragmented-close``            1002 a close frame with FIN clear
``masked-frame``                1002 a masked frame from a server (server role only)
``unmasked-frame``              1002 an unmasked frame from a client (client role only)
``bad-close-code``              1002 a close frame with code 1005; ``bad-close-code-999``,
                                     ``-1004``, ``-1006``, ``-1015`` and ``-5000`` likewise
``short-close``                 1002 a close frame with a 1-byte payload
``close-reason-not-utf8``       1007 a close frame whose reason is not UTF-8
=============================== ==== ===========================================================

:class:`ScriptedClient` is the same connection in the client role, for testing a server such as
``duplexthreads.accept()`` in a WSGI app. It masks its frames (``violate("unmasked-frame")``
does not). Entering it connects, and its ``connection`` attribute is the
:class:`PeerConnection`; its ``first_to_end_tcp`` names the sides by role too (``"client"`` is
the scripted client; ``"server"`` and ``"reset"`` are the server under test). A refused upgrade
raises :class:`HandshakeRefused`, a ``ConnectionError`` with the ``status`` and ``body`` of the
answer. Its ``url`` is a ``ws://`` URL with a host, ``headers`` a mapping of str to str or a
list of (name, value) pairs (names are tokens, values one line of ISO-8859-1; which headers
they are is not checked, so a test may send a duplicate handshake header on purpose),
``host_header`` a str that replaces the Host header, ``subprotocols`` and ``timeout`` as for
the peer, all checked when it is made::

    with ScriptedClient(f"ws://127.0.0.1:{port}/ws", headers={"X-Token": "t"}) as client:
        client.connection.send_fragmented("hello", 2)
        client.connection.violate("unmasked-frame")
        assert client.connection.wait_close_frame()[0] == 1002

``isolated=True`` (the default, for both) runs the peer in a child process, so that a leak check
of the test process never counts the peer's sockets and threads as the code under test's:
the test process holds only two pipes to it. Calls are forwarded over the pipes as JSON lines,
and several threads may call at once. A call costs a few tenths of a millisecond and starting
the child about 0.15 s, so share one peer through a fixture of module or session scope where
the options allow. The child exits when the peer is closed, or when the test process dies.
What a connection recorded can still be read after the peer is closed, in both modes.
``isolated=False`` runs the same code in threads of the test process, named
``scripted-peer-*``: controls are then plain calls, which suits benchmarks that time a trigger.
``close()`` ends every connection without a close frame and waits, bounded, until the threads or
the child are gone.

A peer (or scripted client) belongs to the process that made it. A process forked off that one
(a forked worker, ``multiprocessing`` with the fork start method) holds copies of its pipes or
sockets: there ``close()``, and so leaving the ``with`` block, only closes those copies, and
the peer serves on for the process that made it; any other call raises ``RuntimeError``, since
it would cut into the owner's pipe or connections.

The memory peer
---------------
:class:`MemoryPeer` is the far end of ``duplexthreads.transports.memory_pair()``, read by a
thread of its own, for tests of code that takes a transport and needs no socket. It has the
controls (``send``, ``close(code, reason)``, ``reset``, ``drop``, ``stop_reading``,
``go_silent``) and the waits (``wait_messages``, ``wait_close_frame``, ``wait_ended``) of a
:class:`PeerConnection`, and records ``received`` and ``close_frames``. It answers the first
close frame unless it sent one itself or went silent, and reads on until the stream ends.
``stop()`` ends the stream and joins its thread within ``timeout`` (10 s unless given), which
also bounds the waits.

The relay
---------
:class:`Relay` is a TCP relay on loopback (127.0.0.1, a free port) between WebSocket clients
and a server, for liveness tests: it fakes the failures no close frame announces. Each client
it accepts gets a connection of its own to the target, and bytes flow both ways until told
otherwise::

    from duplexthreads.testing import Relay, ScriptedPeer

    with ScriptedPeer(echo=True) as peer, Relay(peer.port) as relay:
        client = MyClient(relay.url())                  # "ws://127.0.0.1:PORT/"
        relay.go_silent()               # a NAT that dropped its mapping: nothing passes, nothing ends
        ...                             # the heartbeat must notice; writes block once buffers fill
        relay.resume()                  # what was held back goes on, in order
        relay.reset()                   # RST at both ends of every connection

``go_silent()`` forwards nothing either way, for the connections open and those accepted
later, and reads nothing either: each end's data piles up in kernel buffers until its writes
block, and no FIN or RST reaches anyone. ``stop_forwarding_to_client()`` and
``stop_forwarding_to_server()`` hold back one direction only. ``reset()`` ends every connection
open with RST at both ends (``SO_LINGER`` 0, then close) and returns once they are closed;
``connections`` counts the clients accepted so far. ``Relay(target_port, target_host="127.0.0.1",
host="127.0.0.1", port=0, timeout=10.0)`` checks its arguments as the peer does. ``timeout``
bounds the connection to the target made for each client (a client the target refuses is reset)
and the waits of ``reset()`` and ``close()``. ``close()``, or leaving the ``with`` block, stops
listening, closes every connection and joins the relay's threads (named ``duplexthreads-relay-*``),
raising ``RuntimeError`` if one does not end in time.
"""

from __future__ import annotations

from ._handshake import HandshakeRefused
from ._leaks import LeakCheck, LeakError, open_fds, os_threads, rss_kib
from ._memory_peer import MemoryPeer
from ._peer import PeerConnection, ScriptedClient, ScriptedPeer
from ._relay import Relay
from ._wire import VIOLATIONS, encode_frame

__all__ = [
    "VIOLATIONS",
    "HandshakeRefused",
    "LeakCheck",
    "LeakError",
    "MemoryPeer",
    "PeerConnection",
    "Relay",
    "ScriptedClient",
    "ScriptedPeer",
    "encode_frame",
    "open_fds",
    "os_threads",
    "rss_kib",
]
