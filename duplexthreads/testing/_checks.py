"""Checks on the arguments of the testing tools, made where the test calls.

Each raises ``TypeError`` for a value of the wrong type and ``ValueError`` for a value of the
right type that cannot be meant, and names the argument. A check that returns gives the value
back in the form the code uses (a tuple for a list, bytes for a bytearray).
"""

from __future__ import annotations

import math
import re
from typing import Any, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from .._rfc6455 import HTTP_TOKEN as _TOKEN

#: The longest time any wait or bound of the scripted peer may be given, in seconds (11.6 days).
#: Far beyond any test; it keeps every deadline within what ``poll()`` and lock waits accept.
MAX_SECONDS = 1_000_000.0

# What a header value or the URL may not hold: they go out as ISO-8859-1 text, one line each.
_LINE_BREAKERS = re.compile(r"[\x00\r\n]")


def type_name(value: object) -> str:
    return type(value).__name__


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r} ({type_name(value)})")
    return value


def is_number(value: object) -> bool:
    """An int or a float, and not a bool (``True`` is an int to Python, never a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_seconds(name: str, value: object, *, zero: bool = False, limit: Optional[float] = MAX_SECONDS) -> float:
    """A finite number of seconds, > 0 (``zero``: >= 0), at most ``limit`` (None: no limit)."""
    if not is_number(value):
        raise TypeError(f"{name} must be a number of seconds, not {value!r} ({type_name(value)})")
    seconds: float = value  # type: ignore[assignment]
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, not {seconds!r}")
    if limit is not None and seconds > limit:
        raise ValueError(f"{name} must be at most {limit:g} seconds, not {seconds!r}")
    return seconds


def check_wait(name: str, value: object) -> Optional[float]:
    """The timeout of a wait: None (the peer's ``timeout``) or a finite number of seconds >= 0."""
    return None if value is None else check_seconds(name, value, zero=True)


def check_whole(name: str, value: object, *, minimum: int, maximum: Optional[int] = None, what: str = "an int") -> int:
    """An int (not a bool) from ``minimum`` to ``maximum``; ``what`` says what it stands for."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be {what}, not {value!r} ({type_name(value)})")
    if value < minimum or (maximum is not None and value > maximum):
        span = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be {what} {span}, not {value}")
    return value


def check_sequence(name: str, value: object, what: str) -> Tuple[Any, ...]:
    """A list or tuple, as a tuple; a bare str or bytes (a sequence of characters) is refused."""
    if not isinstance(value, (list, tuple)):
        hint = f" (one {what}? put it in a list)" if isinstance(value, (str, bytes, bytearray)) else ""
        raise TypeError(f"{name} must be a list or tuple of {what}s, not {type_name(value)}{hint}")
    return tuple(value)


def check_tokens(name: str, value: object) -> Tuple[str, ...]:
    """Subprotocol names: a list or tuple of distinct RFC 7230 tokens."""
    names = check_sequence(name, value, "name")
    for item in names:
        if not isinstance(item, str):
            raise TypeError(f"{name}: each name must be str, not {item!r} ({type_name(item)})")
        if not _TOKEN.fullmatch(item):
            raise ValueError(f"{name}: {item!r} is not a valid name (an RFC 7230 token)")
    if len(set(names)) != len(names):
        raise ValueError(f"{name}: the names must be distinct, not {list(names)}")
    return names


def check_header_text(name: str, value: object) -> str:
    """A header value the request can carry as one line of ISO-8859-1."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, not {value!r} ({type_name(value)})")
    if _LINE_BREAKERS.search(value):
        raise ValueError(f"{name} must not hold CR, LF or NUL: {value!r}")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{name} holds characters past U+00FF, which a header cannot carry: {value!r}") from None
    return value


def check_headers(name: str, value: object) -> List[Tuple[str, str]]:
    """Extra request headers: a mapping of str to str, or a list or tuple of (name, value) pairs.

    Names must be tokens and values one line of ISO-8859-1; which headers they are is not
    checked, so that a test may send a duplicate or contradicting handshake header on purpose.
    """
    if isinstance(value, Mapping):
        items: Tuple[Any, ...] = tuple(value.items())
    elif isinstance(value, (list, tuple)):
        items = tuple(value)
    else:
        raise TypeError(
            f"{name} must be a mapping of str to str or a list of (name, value) pairs, not {type_name(value)}"
        )
    pairs: List[Tuple[str, str]] = []
    for item in items:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise TypeError(f"{name}: each item must be a (name, value) pair, not {item!r}")
        key, text = item
        if not isinstance(key, str):
            raise TypeError(f"{name}: a header name must be str, not {key!r} ({type_name(key)})")
        if not _TOKEN.fullmatch(key):
            raise ValueError(f"{name}: {key!r} is not a valid header name (an RFC 7230 token)")
        pairs.append((key, check_header_text(f"{name}: the value of {key}", text)))
    return pairs


def check_ws_url(name: str, value: object) -> str:
    """A ``ws://`` URL with a host and a valid port, that fits on the request line."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str (a ws:// URL), not {value!r} ({type_name(value)})")
    if _LINE_BREAKERS.search(value) or any(character.isspace() for character in value):
        raise ValueError(f"{name} must not hold whitespace, CR, LF or NUL: {value!r}")
    try:
        value.encode("latin-1")
        parts = urlsplit(value)
        port = parts.port  # ValueError when out of range or not a number
    except (UnicodeEncodeError, ValueError) as exc:
        raise ValueError(f"{name} is not a usable ws:// URL: {value!r} ({exc})") from None
    if parts.scheme != "ws" or not parts.hostname:
        raise ValueError(f"{name} must be a ws:// URL with a host, not {value!r}")
    if port == 0:
        raise ValueError(f"{name} names port 0, which nothing listens on: {value!r}")
    return value
