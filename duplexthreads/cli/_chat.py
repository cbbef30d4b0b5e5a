"""``duplexthreads chat``: one connection, and a stdin worker in its team.

The connection is opened unstarted (``connect(start=False)``) and the stdin worker joins its
team with ``add_worker("stdin", ...)``: stdin, the reader, the writer and the heartbeat share
one quit event, and whichever ends the connection, the exit protocol ends the rest. The worker
never ends the connection by returning; it asks with ``close()`` or ``abort()``, which from a
thread of the team start the ending and return at once, and then it waits to be told to quit.

Telling it: the worker waits on stdin and a wake-up socket together (see ``_stdin``). The main
thread, which has nothing else to do, waits on the connection's quit event and writes to the
wake-up socket as soon as it is set; the signal handlers (Ctrl-C, SIGTERM) write to it too.
So the command leaves within a wake-up of the connection's end, however idle the user is, and
the teardown never waits on the worker's backstop.

With ``--reconnect`` the connection is a series of them, so the stdin worker cannot belong to
one team: it runs in a thread of its own, with a quit event of its own that the main thread
sets once the reconnecting client has stopped for good.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Union

from ..client import connect
from ..exceptions import ConnectError, ConnectionClosed, ConnectTimeout, HandshakeRejected, UsageError
from ..reconnect import ReconnectingClient
from ..report import ExitReport, Message, Reason
from ..session import Duplex
from ._args import EXIT_ABNORMAL, EXIT_CONNECT, EXIT_OK, EXIT_USAGE, header_lines
from ._render import Renderer, describe_end, escape
from ._stdin import STDIN_SUPPORTED, Event, Line, PipeInput, TerminalInput
from ._wakeup import Signal, Wakeup, interrupting

__all__ = ["run_chat"]

#: Seconds /ping waits for its pong.
PING_TIMEOUT = 5.0
#: Seconds between looks at the wake-up while send() waits for room in a full queue.
SEND_SLICE = 0.1
#: Seconds prompt-toolkit's output thread pauses after a write at the prompt.
PROXY_PAUSE = 0.05

SLASH_HELP = """\
/ping [payload]         send a ping, print the round trip
/close [code [reason]]  close with that code (default 1000) and exit
/quit                   close normally and exit
/help                   this list
//text                  send "/text"
Ctrl-D closes normally; Ctrl-C closes normally, a second Ctrl-C aborts."""

_NORMAL_CODES = (1000, 1001, 1005)

Link = Union[Duplex, ReconnectingClient]


def run_chat(args: argparse.Namespace, renderer: Renderer) -> int:
    """Run ``chat``; return the exit status."""
    if not STDIN_SUPPORTED and not args.execute:
        renderer.error("reading stdin needs select() on it, which this system lacks: use -x MSG")
        return EXIT_USAGE
    if args.url is not None:
        return _chat(args, args.url, renderer)
    from ..chat_server import serve

    try:
        server = serve()
    except OSError as exc:
        renderer.error(f"could not start the chat server: {escape(str(exc))}")
        return EXIT_CONNECT
    try:
        renderer.status(f"chat server on {server.url} - to join from another terminal: {_join_command(server.url)}")
        return _chat(args, server.url, renderer)
    finally:
        server.close()


def _join_command(url: str) -> str:
    if os.path.basename(sys.argv[0]) == "__main__.py":
        return f"python -m duplexthreads chat {url}"
    return f"duplexthreads chat {url}"


def _chat(args: argparse.Namespace, url: str, renderer: Renderer) -> int:
    try:
        ssl_context = _ssl_context(args, url, renderer)
    except (OSError, ValueError) as exc:
        renderer.error(f"--cafile {args.cafile}: {escape(str(exc))}")
        return EXIT_USAGE
    session = ChatSession(args, renderer)
    options: Dict[str, Any] = dict(
        backend=args.backend,
        headers=header_lines(args) or None,
        subprotocols=args.subprotocol or None,
        ssl_context=ssl_context,
        open_timeout=args.connect_timeout,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        max_message_size=args.max_size,
        on_message=session.on_message,
    )
    try:
        link: Link
        try:
            with interrupting():  # SIGTERM and SIGHUP give up as Ctrl-C does
                if args.reconnect:
                    link = connect(url, reconnect=True, on_open=session.on_open, on_close=session.on_close, **options)
                else:
                    link = connect(url, start=False, **options)
        except ConnectError as exc:
            renderer.error(describe_connect_error(url, exc))
            return EXIT_CONNECT
        except (ValueError, TypeError) as exc:  # the URL, a header: checked before any I/O
            renderer.error(escape(str(exc)))
            return EXIT_USAGE
        except KeyboardInterrupt:
            renderer.error(f"could not connect to {url}: interrupted")
            return EXIT_CONNECT
        try:
            if isinstance(link, ReconnectingClient):
                return session.run_reconnecting(link)
            return session.run(link)
        except BaseException:
            link.abort()  # Ctrl-C before the handlers were in place, or a bug: leave nothing open
            raise
    finally:
        session.close()


def _ssl_context(args: argparse.Namespace, url: str, renderer: Renderer) -> Optional[ssl.SSLContext]:
    if not url.lower().startswith("wss://"):
        for flag, given in (("--insecure", args.insecure), ("--cafile", args.cafile)):
            if given:
                renderer.warning(f"{flag} has no effect: {escape(url)} is not wss:// (no TLS)")
        return None
    if args.insecure:
        renderer.warning("--insecure: the server's certificate is not checked, so anyone on the path could pose as it")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if args.cafile:
        return ssl.create_default_context(cafile=args.cafile)
    return None


def describe_connect_error(url: str, exc: ConnectError) -> str:
    """One line saying why ``url`` could not be reached: refused, DNS, TLS, timeout, or the status."""
    if isinstance(exc, HandshakeRejected):
        what = f"handshake rejected with HTTP {exc.status}" if exc.status else "handshake rejected (not HTTP)"
    elif isinstance(exc, ConnectTimeout):
        what = "timed out"
    else:
        what = "failed"
        cause: Optional[BaseException] = exc.__cause__ or exc.__context__
        seen = 0
        while cause is not None and seen < 10:  # the backend's error, chained with ``from``
            if isinstance(cause, ConnectionRefusedError):
                what = "connection refused"
                break
            if isinstance(cause, ssl.SSLError):  # SSLCertVerificationError among them
                what = "TLS failed"
                break
            if type(cause).__name__ == "gaierror":
                what = "DNS lookup failed"
                break
            cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return f"could not connect ({what}): {escape(str(exc))}"


def exit_status(report: ExitReport) -> int:
    """0 for a normal close or one we asked for; 1 for anything abnormal."""
    if report.error is None and report.reason in (Reason.LOCAL_CLOSE, Reason.WORKER_EXIT):
        return EXIT_OK
    if report.error is None and report.reason is Reason.PEER_CLOSED and report.close_code in _NORMAL_CODES:
        return EXIT_OK
    return EXIT_ABNORMAL


class ChatSession:
    """The stdin worker and what the reader calls, for one run of ``chat``."""

    def __init__(self, args: argparse.Namespace, renderer: Renderer) -> None:
        self.args = args
        self.renderer = renderer
        self.wakeup = Wakeup()
        #: A person types (slash commands); with a terminal on stdout too, prompt-toolkit edits the line.
        self.typing = sys.stdin is not None and sys.stdin.isatty()
        self.link: Optional[Link] = None
        self._quit: Optional[threading.Event] = None
        self._attached = threading.Event()
        self._closing = False
        self._input_done_at: Optional[float] = None
        self._last_heard = time.monotonic()
        self._answered = False
        self._helpers: List[threading.Thread] = []

    # -- running -------------------------------------------------------------------------------

    def run(self, conn: Duplex) -> int:
        """Run one connection with the stdin worker in its team; the exit status."""
        self.link = conn
        if self.args.show_ping_pong:
            self._show_pongs(conn)
        conn.add_worker("stdin", self.work)
        with self.wakeup.on_signals():
            self._connected(conn)  # first: the server may greet us as soon as the reader runs
            conn.start()
            self._attached.wait()  # the worker's first act; it always runs once started
            assert self._quit is not None
            self._quit.wait()
            self.wakeup.wake(Signal.QUIT)
            report = conn.wait()
        return self._finish(report)

    def run_reconnecting(self, client: ReconnectingClient) -> int:
        """Run a reconnecting client with the stdin worker in a thread of its own."""
        self.link = client
        quit = threading.Event()

        def work() -> None:
            try:
                self.work(quit)
            except BaseException as exc:  # noqa: BLE001 - said once, and the client stops
                self.renderer.error(f"input failed: {escape(repr(exc))}")
                client.abort()

        worker = threading.Thread(target=work, name="duplexthreads-chat-stdin", daemon=True)
        with self.wakeup.on_signals():
            worker.start()
            report = client.wait()
            quit.set()
            self.wakeup.wake(Signal.QUIT)
            worker.join()
        return self._finish(report)

    def _finish(self, report: ExitReport) -> int:
        for helper in self._helpers:
            helper.join()
        self.renderer.ended(report)
        if report.unsent:  # accepted from the input, never written: the user should know
            count = len(report.unsent)
            self.renderer.status(f"{count} message{'' if count == 1 else 's'} not sent")
        return exit_status(report)

    def close(self) -> None:
        self.wakeup.close()

    def _connected(self, conn: Duplex) -> None:
        subprotocol = f" (subprotocol {conn.subprotocol})" if conn.subprotocol else ""
        hint = " - /help for commands, Ctrl-D to quit" if self.typing else ""
        # On stderr even for scripts: a log then says when the connection was up.
        self.renderer.status(f"connected{subprotocol}{hint}")

    # -- callbacks -----------------------------------------------------------------------------

    def on_message(self, message: Message) -> None:
        """In the reader thread: show the message; with --one-message, close after the first."""
        self._last_heard = time.monotonic()
        if self.args.one_message:
            if self._answered:
                return  # more that came before the close: not asked for
            self._answered = True
            self._request_close(1000, "")
        try:
            self.renderer.message(message)
        except (BrokenPipeError, ValueError):
            # Whoever read stdout is gone: nobody is left to see what comes, so close.
            self._request_close(1000, "")

    def on_open(self, conn: Duplex) -> None:
        """--reconnect: each connection of the series, before anything is sent on it."""
        if self.args.show_ping_pong:
            self._show_pongs(conn)  # the reader may already run: the next pong is shown
        self._connected(conn)

    def on_close(self, report: ExitReport) -> None:
        """--reconnect: one connection of the series ended; the client decides what comes next."""
        if not self._closing:  # when we close, the last line says how it went
            self.renderer.status(f"connection ended ({describe_end(report)})")

    def _show_pongs(self, conn: Duplex) -> None:
        settle = conn.transport.on_pong

        def on_pong(payload: bytes) -> None:
            if settle is not None:
                settle(payload)  # the heartbeat's bookkeeping first: it measures the round trip
            latency = conn.latency
            rtt = f", round trip {latency * 1000:.1f} ms" if latency is not None else ""
            self.renderer.status(f"pong {payload.hex() or '(empty)'}{rtt}")

        conn.transport.on_pong = on_pong

    # -- the stdin worker ----------------------------------------------------------------------

    def work(self, quit: threading.Event) -> None:
        """The stdin worker: returns only once told the connection has ended."""
        self._quit = quit
        self._attached.set()
        if self.args.execute:
            for text in self.args.execute:
                if not self._send(Line(text, text.encode("utf-8", "surrogateescape"))):
                    break
            self._input_done_at = time.monotonic()
            self._wait_to_quit(None)
            return
        if self.typing and sys.stdout.isatty():
            from prompt_toolkit.patch_stdout import StdoutProxy

            # What the reader prints goes through prompt-toolkit, above the line being typed.
            # Its writer thread pauses after each write to batch repaints (0.2 s by default);
            # closing it waits that pause out, so keep it short: the command must exit promptly.
            proxy = StdoutProxy(raw=True, sleep_between_writes=PROXY_PAUSE)
            self.renderer.redirect(proxy, proxy)  # type: ignore[arg-type]
            terminal = TerminalInput(self.wakeup)
            try:
                self._wait_to_quit(terminal.next_event)
            finally:
                terminal.close()
                self.renderer.redirect(sys.stdout, sys.stderr)
                proxy.close()
            return
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):
            fd = -1
        if fd < 0:  # no stdin at all (closed with <&-): like input that ended at once
            self._input_done_at = time.monotonic()
            self._wait_to_quit(None)
            return
        self._wait_to_quit(PipeInput(self.wakeup, fd).next_event)

    def _wait_to_quit(self, read: Optional[Callable[[], Optional[Event]]]) -> None:
        """Read and act until QUIT: lines while input lasts, then only wake-ups."""
        while True:
            event: Optional[Event]
            if self._closing:
                event = self.wakeup.wait(None)
            elif self._input_done_at is not None or read is None:
                quiet = max(self._input_done_at or 0.0, self._last_heard) + self.args.wait - time.monotonic()
                if quiet <= 0:
                    self._request_close(1000, "")
                    continue
                event = self.wakeup.wait(quiet)
            else:
                event = read()
            if event is None:
                continue
            if event is Signal.QUIT:
                return
            if event is Signal.INTERRUPT:
                self._interrupt()
            elif event is Signal.EOF:
                if self.typing:
                    self._request_close(1000, "")  # Ctrl-D
                else:
                    self._input_done_at = time.monotonic()
            elif isinstance(event, Line):
                self._line(event)

    def _interrupt(self) -> None:
        if self._closing:
            self.renderer.status("aborting")
            self._call_link("abort")
            return
        self.renderer.status("closing (Ctrl-C again to abort)")
        self._request_close(1000, "")

    def _line(self, line: Line) -> None:
        text = line.text
        if self.typing and text.startswith("/"):
            if text.startswith("//"):
                line = Line(text[1:], line.raw[1:])
            else:
                self._command(text)
                return
        elif self.typing and not text:
            return  # Enter on an empty line sends nothing
        self._send(line)

    def _send(self, line: Line) -> bool:
        """Send a line; False once the connection is closing.

        A server that stops reading fills the outbound queue, and send() waits for room. The
        wait goes in slices, between which Ctrl-C is heard: the close it starts seals the
        queue, and send() then raises ConnectionClosed instead of waiting on.
        """
        assert self.link is not None
        message = line.raw if self.args.binary else line.text
        while True:
            try:
                self.link.send(message, timeout=SEND_SLICE)
            except TimeoutError:
                signal = self.wakeup.take()
                if signal is Signal.QUIT:
                    self.wakeup.wake(Signal.QUIT)  # for the wait that follows
                    return False
                if signal is Signal.INTERRUPT:
                    self._interrupt()
                continue
            except ConnectionClosed:
                self._closing = True  # it is ending; the wake-up to quit follows
                return False
            except ValueError as exc:  # text UTF-8 cannot carry (a lone surrogate)
                self.renderer.error(f"not sent: {escape(str(exc))}")
            return True

    def _command(self, text: str) -> None:
        name, _, rest = text.partition(" ")
        rest = rest.strip()
        if name == "/help":
            for line in SLASH_HELP.splitlines():
                self.renderer.reply(line)
        elif name == "/quit":
            self._request_close(1000, "")
        elif name == "/close":
            code_text, _, reason = rest.partition(" ")
            try:
                code = int(code_text) if code_text else 1000
            except ValueError:
                self.renderer.error(f"/close takes a close code, not {code_text!r}")
                return
            self._request_close(code, reason.strip())
        elif name == "/ping":
            self._ping(rest)
        else:
            self.renderer.error(f"unknown command {name}: /help lists them, //{name[1:]} sends it as text")

    def _ping(self, payload: str) -> None:
        link = self.link
        conn = link.connection if isinstance(link, ReconnectingClient) else link
        if conn is None:
            self.renderer.error("not connected right now")
            return
        try:
            rtt = conn.ping(PING_TIMEOUT, payload=payload.encode("utf-8") if payload else None)
        except ValueError as exc:
            self.renderer.error(escape(str(exc)))
        except TimeoutError:
            self.renderer.error(f"no pong within {PING_TIMEOUT:g} s")
        except (ConnectionClosed, UsageError):
            self._closing = True
        else:
            self.renderer.reply(f"pong: round trip {rtt * 1000:.1f} ms")

    def _request_close(self, code: int, reason: str) -> None:
        """Start a graceful close without waiting for it; its end wakes the worker to quit."""
        try:
            self._call_link("close", code, reason)
        except ValueError as exc:  # a code that may not be sent (1005, 1006, 1015...) or too long a reason
            self.renderer.error(escape(str(exc)))
            return
        self._closing = True

    def _call_link(self, name: str, *args: Any) -> None:
        link = self.link
        assert link is not None
        method = getattr(link, name)
        if isinstance(link, Duplex):
            method(*args)  # from a thread of the team: starts the ending and returns at once
            return
        if name == "close":
            from .._rfc6455 import check_close_code, check_close_reason

            check_close_code(args[0])
            check_close_reason(args[1])
        # A reconnecting client's close() waits for the end; the worker must keep listening
        # for a second Ctrl-C meanwhile, so the waiting happens in a helper.
        helper = threading.Thread(target=method, args=args, name=f"duplexthreads-chat-{name}", daemon=True)
        helper.start()
        self._helpers.append(helper)
