"""The numbers of the WebSocket protocol (RFC 6455) that more than one module needs, in one place.

Also the one piece of HTTP grammar the handshake checks in more than one module: a token.
"""

from __future__ import annotations

import re

__all__ = [
    "ABNORMAL_CLOSURE",
    "HTTP_TOKEN",
    "GOING_AWAY",
    "INTERNAL_ERROR",
    "INVALID_DATA",
    "MAX_CLOSE_REASON_BYTES",
    "MAX_CONTROL_PAYLOAD",
    "MESSAGE_TOO_BIG",
    "NORMAL_CLOSE_CODES",
    "NORMAL_CLOSURE",
    "NO_STATUS_CODE",
    "PROTOCOL_ERROR",
    "check_close_code",
    "check_close_reason",
    "is_sendable_close_code",
]

#: RFC 7230 (3.2.6): token = 1*tchar. Header names and subprotocol names (RFC 6455, 4.1).
HTTP_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
#: A text message (or close reason) that is not UTF-8, or data of the wrong type.
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
#: Reported for a close frame that carried no status code; never sent on the wire.
NO_STATUS_CODE = 1005
#: Reported when the connection ended without any close frame; never sent on the wire.
ABNORMAL_CLOSURE = 1006

#: Codes that end a connection normally. 1005 is what browsers and Node send from a plain
#: ``close()``; like websockets, we count it as normal.
NORMAL_CLOSE_CODES = frozenset({NORMAL_CLOSURE, GOING_AWAY, NO_STATUS_CODE})

#: Control frames carry at most 125 bytes of payload; a close frame spends 2 on its code.
MAX_CONTROL_PAYLOAD = 125
MAX_CLOSE_REASON_BYTES = MAX_CONTROL_PAYLOAD - 2

# Section 7.4: the registered codes an endpoint may put in a close frame. 1004 is reserved,
# 1005, 1006 and 1015 are for reporting only; 3000-4999 belong to libraries and applications.
_SENDABLE_REGISTERED = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def is_sendable_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame on the wire."""
    return code in _SENDABLE_REGISTERED or 3000 <= code <= 4999


def check_close_code(code: int) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``code`` may be sent in a close frame."""
    if not isinstance(code, int) or isinstance(code, bool):
        raise TypeError(f"close code must be an int, not {type(code).__name__}")
    if not is_sendable_close_code(code):
        raise ValueError(f"close code {code} may not be sent; use 1000-1014 (not 1004-1006) or 3000-4999")


def check_close_reason(reason: str) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``reason`` fits in a close frame."""
    if not isinstance(reason, str):
        raise TypeError(f"close reason must be str, not {type(reason).__name__}")
    try:
        size = len(reason.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError(f"close reason is not encodable as UTF-8: {exc}") from None
    if size > MAX_CLOSE_REASON_BYTES:
        raise ValueError(f"close reason is {size} bytes in UTF-8; at most {MAX_CLOSE_REASON_BYTES} fit")
