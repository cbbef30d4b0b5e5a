"""How the scripted peer's connections behave, and the checks on what a test asks it to send.

Everything here is checked where the test calls, before anything reaches a socket or the child
process, so a wrong argument fails at once as ``ValueError`` or ``TypeError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Optional, Tuple, Union

from wsproto.events import BytesMessage, CloseConnection, TextMessage
from wsproto.frame_protocol import CloseReason


@dataclass(frozen=True)
class Behaviour:
    """How every new connection of a peer behaves; see :class:`~duplexthreads.testing.ScriptedPeer`."""

    echo: bool = False
    drop_every: Optional[int] = None
    silent: bool = False
    stop_reading: bool = False
    greeting: Tuple[Any, ...] = ()
    close_after_greeting: Optional[Tuple[Optional[int], str]] = None
    greeting_with_handshake: bool = True
    reject: Optional[int] = None
    trickle_handshake: Optional[float] = None
    strict_host: bool = False
    subprotocols: Tuple[str, ...] = ()
    handshake_answer: Optional[bytes] = None
    linger_after_close: Optional[float] = None
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.drop_every is not None and (not isinstance(self.drop_every, int) or self.drop_every < 1):
            raise ValueError(f"drop_every must be a whole number >= 1, not {self.drop_every!r}")
        for message in self.greeting:
            check_message(message)
        if self.close_after_greeting is not None:
            code, reason = self.close_after_greeting
            check_close(code, reason)
        if self.reject is not None and not (200 <= self.reject <= 599):
            raise ValueError(f"reject must be an HTTP status from 200 to 599, not {self.reject!r}")
        if self.trickle_handshake is not None and not self.trickle_handshake > 0:
            raise ValueError(f"trickle_handshake must be a delay in seconds > 0, not {self.trickle_handshake!r}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0, not {self.timeout!r}")
        if self.handshake_answer is not None:
            if not isinstance(self.handshake_answer, bytes):
                raise TypeError(f"handshake_answer must be bytes, not {type(self.handshake_answer).__name__}")
            # The canned answer replaces the whole handshake, so an option that shapes the answer
            # or the WebSocket connection after it could never apply: say so rather than ignore it.
            ignored = [
                item.name
                for item in fields(self)
                if item.name not in ("handshake_answer", "timeout") and getattr(self, item.name) != item.default
            ]
            if ignored:
                raise ValueError(f"handshake_answer replaces the handshake: {', '.join(ignored)} cannot apply")
        if self.linger_after_close is not None:
            linger = self.linger_after_close
            if isinstance(linger, bool) or not isinstance(linger, (int, float)):
                raise TypeError(f"linger_after_close must be a number of seconds, not {type(linger).__name__}")
            if not (linger >= 0 and math.isfinite(linger)):
                raise ValueError(f"linger_after_close must be a finite number of seconds >= 0, not {linger!r}")
            if self.silent:
                raise ValueError("linger_after_close cannot apply with silent=True: it completes no close handshake")


def handshake_answer_bytes(answer: object) -> Optional[bytes]:
    """``handshake_answer`` as the bytes to send: a str is taken as latin-1, one byte a character."""
    if answer is None or isinstance(answer, bytes):
        return answer
    if isinstance(answer, (bytearray, memoryview)):
        return bytes(answer)
    if isinstance(answer, str):
        try:
            return answer.encode("latin-1")
        except UnicodeEncodeError as exc:
            character = exc.object[exc.start]
            raise ValueError(
                f"a str handshake_answer holds characters up to U+00FF only (one byte each), not {character!r};"
                " pass bytes for anything else"
            ) from None
    raise TypeError(f"handshake_answer must be str or bytes, not {type(answer).__name__}")


def check_message(message: object) -> None:
    if not isinstance(message, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"a message is str (text) or bytes (binary), not {type(message).__name__}")


def message_event(message: Any) -> Union[TextMessage, BytesMessage]:
    return TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=bytes(message))


def check_close(code: Optional[int], reason: str) -> None:
    """Refuse what wsproto would silently change: it sends 1000 for 1005, 1006 and 1015 and
    truncates long reasons. Invalid close frames are sent with ``violate()`` instead."""
    if code is None:
        if reason:
            raise ValueError("a close frame without a code cannot carry a reason")
        return
    if not 1000 <= code <= 4999 or code in (1005, 1006, 1015):
        raise ValueError(f"close code {code} may not be sent; violate('bad-close-code-...') sends invalid ones")
    if len(reason.encode("utf-8")) > 123:
        raise ValueError("a close reason holds at most 123 bytes of UTF-8")


def close_event(code: Optional[int], reason: str) -> CloseConnection:
    """wsproto's close event; code None makes a close frame with an empty payload."""
    return CloseConnection(code=CloseReason.NO_STATUS_RCVD if code is None else code, reason=reason)
