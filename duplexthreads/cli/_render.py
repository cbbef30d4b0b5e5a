"""How the command shows what happens: messages, notes about the connection, errors.

Messages go to stdout; everything about the connection (it opened, it closed with this code, a
pong, the answer to a slash command) goes to stderr, so that a script reading stdout gets the
messages and nothing else. On a terminal, incoming lines are marked and coloured; the prompt is
the input side's business.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import unicodedata
from typing import Optional, TextIO

from ..report import ExitReport, Message, Reason

__all__ = ["LogToRenderer", "Renderer", "escape", "show_binary"]

#: Bytes of a binary message shown in hex on a terminal; the rest is only counted. Pipes get all.
TERMINAL_BINARY_BYTES = 256
#: Characters of a text message shown on a terminal; the rest is only counted. Pipes get all.
TERMINAL_TEXT_CHARACTERS = 4096

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_RESET = "\x1b[0m"
#: Invisible characters that change how the rest shows: format characters, line and paragraph separators.
_ESCAPED_CATEGORIES = frozenset({"Cf", "Zl", "Zp"})
_ZWJ = 0x200D
_COLOURS = {"incoming": "", "notice": "\x1b[2m", "note": "\x1b[36m", "error": "\x1b[31m", "warning": "\x1b[33m"}


def escape(text: str) -> str:
    """``text`` with control characters (C0, DEL, C1), invisible format characters (Unicode
    category Cf: bidirectional overrides such as U+202E, zero-width spaces) and line and
    paragraph separators (U+2028, U+2029) written as escapes, so that a message can neither
    move the cursor, nor reorder or hide what is shown, nor split into several lines. The zero
    width joiner (U+200D) stays: emoji sequences need it. Backslashes are left alone (the
    escaping is for reading, not for decoding back)."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        code = ord(char)
        if code < 0x20 or 0x7F <= code < 0xA0:
            out.append(_NAMED.get(char) or f"\\x{code:02x}")
        elif code > 0xA0 and code != _ZWJ and unicodedata.category(char) in _ESCAPED_CATEGORIES:
            out.append(f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


def show_binary(data: bytes, limit: Optional[int] = None) -> str:
    """``[binary, N bytes] 68656c6c6f``, cut after ``limit`` bytes with an ellipsis."""
    shown = data if limit is None else data[:limit]
    more = "..." if len(shown) < len(data) else ""
    unit = "byte" if len(data) == 1 else "bytes"
    return f"[binary, {len(data)} {unit}] {shown.hex()}{more}"


class Renderer:
    """Writes lines for the command; safe to call from any thread (one lock, one line at a time)."""

    def __init__(
        self,
        *,
        interactive: bool,
        color: bool,
        out: Optional[TextIO] = sys.stdout,
        err: Optional[TextIO] = sys.stderr,
    ) -> None:
        #: A person at a terminal: mark incoming lines, say more.
        self.interactive = interactive
        self.color = color
        self._out = out
        self._err = err
        self._lock = threading.Lock()

    @classmethod
    def for_streams(cls, no_color: bool) -> Renderer:
        """The renderer for this process's stdout and stderr."""
        for stream in (sys.stdout, sys.stderr):
            # A message may hold characters the terminal's encoding lacks (LANG=C): show an
            # escape rather than fail in the reader thread.
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                try:
                    reconfigure(errors="backslashreplace")
                except (OSError, ValueError):
                    pass
        interactive = _is_terminal(sys.stdout)
        color = interactive and not no_color and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        return cls(interactive=interactive, color=color)

    def redirect(self, out: Optional[TextIO], err: Optional[TextIO]) -> None:
        """Write through these streams from now on (the prompt's, which print above the input line)."""
        with self._lock:
            self._out, self._err = out, err

    # -- messages ------------------------------------------------------------------------------

    def message(self, message: Message) -> None:
        """An incoming message: one line on stdout."""
        if isinstance(message, str):
            if self.interactive and len(message) > TERMINAL_TEXT_CHARACTERS:
                more = len(message) - TERMINAL_TEXT_CHARACTERS
                text = f"{escape(message[:TERMINAL_TEXT_CHARACTERS])}... ({more} more characters)"
            else:
                text = escape(message)
            kind = "notice" if message.startswith("* ") else "incoming"
        else:
            text = show_binary(message, TERMINAL_BINARY_BYTES if self.interactive else None)
            kind = "incoming"
        if self.interactive:
            text = self._paint("< " + text, kind)
        self._write(self._out, text, strict=True)

    # -- notes on stderr -----------------------------------------------------------------------

    def reply(self, text: str) -> None:
        """The answer to a slash command (/help, /ping): someone is typing, so always said."""
        self._write(self._err, self._paint(f"* {text}", "note"))

    def status(self, text: str) -> None:
        """Something worth saying even to a script's stderr (how the connection ended)."""
        self._write(self._err, self._paint(text, "note"))

    def warning(self, text: str) -> None:
        self._write(self._err, self._paint(f"warning: {text}", "warning"))

    def error(self, text: str) -> None:
        self._write(self._err, self._paint(f"error: {text}", "error"))

    def ended(self, report: ExitReport) -> None:
        """The one line saying how the connection ended, with its close code and reason."""
        self.status(describe_end(report))

    # -- internals -----------------------------------------------------------------------------

    def _paint(self, text: str, kind: str) -> str:
        colour = _COLOURS[kind] if self.color else ""
        return f"{colour}{text}{_RESET}" if colour else text

    def _write(self, stream: Optional[TextIO], line: str, strict: bool = False) -> None:
        """One line on ``stream``; nothing when there is none (closed with ``>&-``).

        Failing to write a message (``strict``) raises: nobody reads them any more, so the
        reader closes. Failing to write anything else (to stderr) does not: notes about the connection must never change
        what is sent or the exit status.
        """
        if stream is None:
            return
        with self._lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                if strict:
                    raise


def _is_terminal(stream: Optional[TextIO]) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, OSError, ValueError):
        return False


class LogToRenderer(logging.Handler):
    """The library's warnings (``duplexthreads`` logger) as one ``warning:`` line each on
    stderr, escaped, with the exception's one-line summary instead of a traceback."""

    def __init__(self, renderer: Renderer) -> None:
        super().__init__(logging.WARNING)
        self._renderer = renderer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text = f"{text}: {_error_text(record.exc_info[1])}"
            self._renderer.warning(escape(text))
        except Exception:  # noqa: BLE001 - a log line must never break the command
            pass


def describe_end(report: ExitReport) -> str:
    """``closed by the server: 4001 'bye'`` and the like, for the last line of a session."""
    code = report.close_code
    reason = f" '{escape(report.close_reason)}'" if report.close_reason else ""
    error = report.error
    detail = f": {_error_text(error)}" if error is not None else ""
    if report.reason is Reason.PEER_CLOSED:
        return f"closed by the server: {code}{reason}"
    if report.reason is Reason.LOCAL_CLOSE:
        if error is not None:
            return f"closed: {code}{reason}, but the close handshake did not finish{detail}"
        return f"closed: {code}{reason}"
    if report.reason is Reason.ABORTED:
        return "aborted: 1006 (no close handshake)"
    if report.reason is Reason.HEARTBEAT_TIMEOUT:
        return f"connection lost: the server was silent after a ping (heartbeat timeout), {code}"
    if report.reason is Reason.WRITE_TIMEOUT:
        return f"connection lost: the server stopped reading (write timeout), {code}"
    if report.reason is Reason.READ_ERROR and error is None:
        return f"connection lost: {code} (closed without a close frame)"
    return f"connection lost: {code}{reason}{detail}"


def _error_text(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return escape(text)
