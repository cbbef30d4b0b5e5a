"""The input side of a chat: stdin and a wake-up socket, waited on together.

Nothing here sits in a blocking ``input()``. The stdin worker waits on two file descriptors at
once: stdin, and a :class:`~._wakeup.Wakeup` that the main thread writes to when the
connection has ended (its quit is set), and SIGINT and SIGTERM write to as they come. So the
worker leaves its wait within a wake-up however idle the user is, and the connection's
teardown never waits for it.

Two sources read stdin: :class:`PipeInput` with ``select()`` on raw reads (pipes, files, a
terminal in line mode), and :class:`TerminalInput` with prompt-toolkit (a person at a
terminal: line editing, history, and messages printed above the line being typed).
prompt-toolkit runs its asyncio loop in the worker thread, and the wake-up socket is one more
reader on that loop, so a wake-up ends the prompt at once. ``select()`` on stdin is POSIX
only: see :data:`STDIN_SUPPORTED`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import select
import sys
from typing import TYPE_CHECKING, Any, Deque, List, NamedTuple, Optional, Union

from ._wakeup import Signal, Wakeup

if TYPE_CHECKING:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.output import Output

__all__ = ["STDIN_SUPPORTED", "Event", "Line", "PipeInput", "TerminalInput"]

#: Whether stdin can be waited on with select() together with the wake-up socket. Windows'
#: select() takes only sockets: there the command reads no stdin (only -x works), as documented.
STDIN_SUPPORTED = os.name == "posix"

_READ_SIZE = 65536


class Line(NamedTuple):
    """One line of input, without its line ending, as text and as the bytes that came."""

    text: str
    raw: bytes


Event = Union[Line, Signal]


class PipeInput:
    """Lines from a stdin that is not a terminal, read without ever blocking past a wake-up."""

    def __init__(self, wakeup: Wakeup, fd: int = 0) -> None:
        self._wakeup = wakeup
        self._fd = fd
        #: The line being read, in the pieces it came in: joined once, when its newline comes
        #: (joining at every read would make a long line without newlines quadratic).
        self._partial: List[bytes] = []
        self._lines: Deque[bytes] = collections.deque()
        self._eof = False

    def next_event(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next line or signal; None when ``timeout`` passes with neither."""
        while True:
            signal = self._wakeup.take()
            if signal is not None:
                return signal
            if self._lines:
                return _line(self._lines.popleft())
            if self._eof:
                return Signal.EOF
            ready, _, _ = select.select([self._wakeup.fileno(), self._fd], [], [], timeout)
            if not ready:
                return None
            if self._fd in ready:
                self._read()

    def _read(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # a stdin that fails to read (closed under us) ends the input like EOF
        if not data:
            self._eof = True
            if self._partial:  # a last line without its newline is still a line
                self._lines.append(b"".join(self._partial))
                self._partial = []
            return
        first, *complete = data.split(b"\n")
        if not complete:  # no newline yet
            self._partial.append(data)
            return
        rest = complete.pop()
        self._lines.append(b"".join([*self._partial, first]))
        self._lines.extend(complete)
        self._partial = [rest] if rest else []


def _line(raw: bytes) -> Line:
    if raw.endswith(b"\r"):
        raw = raw[:-1]  # CRLF input (a file from Windows) sends the same messages as LF
    # A text message must be UTF-8: bytes that are not are shown as U+FFFD rather than refused.
    return Line(raw.decode("utf-8", "replace"), raw)


class _Woken(Exception):
    """Ends a prompt from the wake-up reader; carries what woke it."""

    def __init__(self, signal: Signal) -> None:
        super().__init__(signal.value)
        self.signal = signal


class TerminalInput:
    """Lines typed at a terminal, through prompt-toolkit, in the worker's own asyncio loop."""

    def __init__(self, wakeup: Wakeup, prompt: str = "> ") -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

        keys = KeyBindings()

        @keys.add("c-c")
        def _interrupt(event: KeyPressEvent) -> None:
            # prompt-toolkit would raise KeyboardInterrupt, which asyncio lets escape from its
            # loop rather than from the prompt's task: say it with an ordinary exception.
            event.app.exit(exception=_Woken(Signal.INTERRUPT), style="class:aborting")

        self._wakeup = wakeup
        self._loop = asyncio.new_event_loop()
        # Ctrl-Z suspends (SIGTSTP) as in any other program, rather than typing \x1a.
        self._session: PromptSession[str] = PromptSession(
            prompt, key_bindings=keys, enable_suspend=True, output=_output_without_cpr()
        )

    def next_event(self) -> Event:
        """Prompt for one line; a wake-up ends the prompt at once and is returned instead."""
        signal = self._wakeup.take()
        if signal is not None:
            return signal
        return self._loop.run_until_complete(self._prompt())

    async def _prompt(self) -> Event:
        loop = asyncio.get_running_loop()
        woke: asyncio.Future[Any] = loop.create_future()

        def woken() -> None:
            if not woke.done():  # a later wake-up stays in the socket for the next call
                signal = self._wakeup.take()
                if signal is not None:
                    woke.set_result(signal)

        loop.add_reader(self._wakeup.fileno(), woken)
        prompt: asyncio.Future[Any] = asyncio.ensure_future(self._session.prompt_async())
        try:
            await asyncio.wait([prompt, woke], return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_reader(self._wakeup.fileno())
        if not prompt.done():
            # Cancelling runs prompt-toolkit's own cleanup: the terminal leaves raw mode.
            prompt.cancel()
            with contextlib.suppress(asyncio.CancelledError, EOFError, _Woken):
                await prompt
            result: Signal = woke.result()
            return result
        try:
            text: str = prompt.result()
        except EOFError:  # Ctrl-D on an empty line
            return Signal.EOF
        except _Woken as woke:  # Ctrl-C
            return woke.signal
        return Line(text, text.encode("utf-8", "surrogateescape"))

    def close(self) -> None:
        self._loop.close()


def _output_without_cpr() -> Output:
    """prompt-toolkit's output to the terminal, asking no cursor position reports (CPR).

    It asks them to place a full-screen layout's bottom toolbar; a one-line prompt has no use
    for them, and on a terminal that does not answer (pexpect, some serial consoles, Emacs'
    shell) prompt-toolkit waits a second for the answers when the prompt ends: at every exit.
    """
    from prompt_toolkit.output import create_output
    from prompt_toolkit.output.vt100 import Vt100_Output

    output = create_output()
    if isinstance(output, Vt100_Output):
        output.enable_cpr = False
    return output


def stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False
