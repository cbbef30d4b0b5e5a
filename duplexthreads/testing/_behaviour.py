"""How the scripted peer's connections behave, and the checks on what a test asks it to send.

Everything here is checked where the test calls, before anything reaches a socket or the child
process, so a wrong argument fails at once as ``ValueError`` or ``TypeError``.
"""

from __future__ import annotations

from dataclasses import dataclass
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
