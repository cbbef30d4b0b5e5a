"""How the scripted peer's connections behave, and the checks on what a test asks it to send.

Everything here is checked where the test calls, before anything reaches a socket or the child
process, so a wrong argument fails at once as ``ValueError`` or ``TypeError``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional, Tuple, Union

from wsproto.events import BytesMessage, CloseConnection, TextMessage
from wsproto.frame_protocol import CloseReason

from .._rfc6455 import check_close_reason, is_sendable_close_code
from ._checks import check_bool, check_seconds, check_sequence, check_tokens, check_whole


@dataclass(frozen=True)
class Behaviour:
    """How every new connection of a peer behaves; see :class:`~duplexthreads.testing.ScriptedPeer`.

    Every field is checked here, in the test's process before anything reaches the child, and
    again in the child; ``greeting``, ``subprotocols`` and ``close_after_greeting`` come as
    tuples (``greeting``'s bytes-like items as bytes): see :func:`greeting_tuple` and the others.
    """

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
        for name in ("echo", "silent", "stop_reading", "greeting_with_handshake", "strict_host"):
            check_bool(name, getattr(self, name))
        if self.drop_every is not None:
            check_whole("drop_every", self.drop_every, minimum=1)
        greeting_tuple(self.greeting)
        close_pair("close_after_greeting", self.close_after_greeting)
        if self.reject is not None:
            check_whole("reject", self.reject, minimum=200, maximum=599, what="an HTTP status (an int)")
        if self.trickle_handshake is not None:
            check_seconds("trickle_handshake", self.trickle_handshake)
        check_tokens("subprotocols", self.subprotocols)
        check_seconds("timeout", self.timeout)
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
            check_seconds("linger_after_close", self.linger_after_close, zero=True)
            if self.silent:
                raise ValueError("linger_after_close cannot apply with silent=True: it completes no close handshake")


def greeting_tuple(greeting: object) -> Tuple[Union[str, bytes], ...]:
    """``greeting`` checked: a list or tuple of messages, bytes-like ones as bytes."""
    messages = check_sequence("greeting", greeting, "message")
    for message in messages:
        check_message(message, "greeting: each message")
    return tuple(message if isinstance(message, (str, bytes)) else bytes(message) for message in messages)


def close_pair(name: str, value: object) -> Optional[Tuple[Optional[int], str]]:
    """``close_after_greeting`` checked: None, or a (code, reason) pair that ``close()`` could send."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a (code, reason) pair or None, not {value!r} ({type(value).__name__})")
    if len(value) != 2:
        raise ValueError(f"{name} must be a (code, reason) pair, not {len(value)} items: {value!r}")
    code, reason = value
    check_close(code, reason, name=name)
    return (code, reason)


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


def check_message(message: object, label: str = "message") -> None:
    """A message the peer can send: str (text, encodable as UTF-8) or bytes-like (binary)."""
    if not isinstance(message, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"{label} must be str (text) or bytes (binary), not {type(message).__name__}")
    if isinstance(message, str):
        try:
            message.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{label} is text that cannot be encoded as UTF-8 ({message[exc.start : exc.end]!r} at {exc.start});"
                " send bytes, or violate('invalid-utf8'), for a text frame that is not UTF-8"
            ) from None


def message_event(message: Any) -> Union[TextMessage, BytesMessage]:
    return TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=bytes(message))


def check_close(code: object, reason: object, *, name: str = "close") -> None:
    """A close frame that may be sent: code None (an empty payload, no reason) or a code RFC 6455
    lets an endpoint send (1000-1003, 1007-1014, 3000-4999), and a reason of at most 123 bytes
    of UTF-8. wsproto would silently change the rest (it sends 1000 for 1005, 1006 and 1015 and
    truncates long reasons); invalid close frames are sent with ``violate()`` or ``send_raw()``."""
    if code is not None and (not isinstance(code, int) or isinstance(code, bool)):
        raise TypeError(f"{name}: the close code must be an int or None, not {code!r} ({type(code).__name__})")
    if not isinstance(reason, str):
        raise TypeError(f"{name}: the close reason must be str, not {reason!r} ({type(reason).__name__})")
    if code is None:
        if reason:
            raise ValueError(f"{name}: a close frame without a code cannot carry a reason")
        return
    if not is_sendable_close_code(code):
        raise ValueError(
            f"{name}: close code {code} may not be sent (RFC 6455, 7.4: 1000-1003, 1007-1014, 3000-4999);"
            " use violate('bad-close-code-...') for that, or send_raw(encode_frame(0x8, ...)) for any other"
        )
    try:
        check_close_reason(reason)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def close_event(code: Optional[int], reason: str) -> CloseConnection:
    """wsproto's close event; code None makes a close frame with an empty payload."""
    return CloseConnection(code=CloseReason.NO_STATUS_RCVD if code is None else code, reason=reason)
