"""Frames built by hand: the ones wsproto refuses to build, and the protocol violations.

The scripted peer sends well-formed traffic through wsproto, which keeps its close handshake
honest. What wsproto will not produce (a fragment cut in the middle of a UTF-8 sequence, a frame
with a reserved opcode, a masked frame from a server) is built here, byte by byte, so that a test
knows exactly what went on the wire.

Each entry of :data:`VIOLATIONS` names one way to break RFC 6455 and the close code the receiving
endpoint must fail the connection with: 1002 (protocol error) or 1007 (data inconsistent with
the message type, that is, text that is not UTF-8).

===============================  ====  ===========================================================
name                             code  bytes sent
===============================  ====  ===========================================================
``invalid-utf8``                 1007  a final text frame whose payload is not UTF-8
``invalid-utf8-fragment``        1007  a first, non-final text fragment that already holds a byte
                                       (0xFF) no UTF-8 sequence can contain; the message is never
                                       finished, so only a receiver that checks each fragment fails
``reserved-opcode``              1002  a final frame with the reserved data opcode 0x3
``reserved-control-opcode``      1002  a final frame with the reserved control opcode 0xB
``rsv-bits``                     1002  a text frame with RSV1 set, no extension negotiated
``orphan-continuation``          1002  a continuation frame while no message is open
``unfinished-message-then-new``  1002  a non-final text frame, then a new text frame (not a
                                       continuation) while that message is open
``long-ping``                    1002  a ping with 126 bytes of payload (control frames carry <= 125)
``fragmented-ping``              1002  a ping with FIN clear
``fragmented-close``             1002  a close frame (code 1000) with FIN clear
``masked-frame``                 1002  a masked text frame from a server (server role only)
``unmasked-frame``               1002  an unmasked text frame from a client (client role only)
``bad-close-code``               1002  a close frame with code 1005, which is never sent
``bad-close-code-999``           1002  ... with code 999 (below the range of defined codes)
``bad-close-code-1004``          1002  ... with code 1004 (reserved)
``bad-close-code-1006``          1002  ... with code 1006 (never sent)
``bad-close-code-1015``          1002  ... with code 1015 (never sent)
``bad-close-code-5000``          1002  ... with code 5000 (above 4999)
``short-close``                  1002  a close frame with a 1-byte payload
``close-reason-not-utf8``        1007  a close frame, code 1000, whose reason is not UTF-8
===============================  ====  ===========================================================

In the client role every frame but ``unmasked-frame`` is masked, so that each violation breaks
one rule only.
"""

from __future__ import annotations

import os
import struct
import types
from typing import Callable, Dict, List, Mapping, Tuple

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

PROTOCOL_ERROR = 1002
INVALID_DATA = 1007


def encode_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bool = False) -> bytes:
    """One WebSocket frame, exactly as asked: nothing is checked, so it can break any rule.

    ``rsv`` holds the three reserved bits (RSV1 is 4, RSV2 is 2, RSV3 is 1). ``mask=True`` masks
    the payload with a random key, as a client must.
    """
    if not 0 <= opcode <= 0xF or not 0 <= rsv <= 7:
        raise ValueError(f"opcode must be 0..15 and rsv 0..7, not {opcode} and {rsv}")
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask else 0
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not mask:
        return header + bytes(payload)
    key = os.urandom(4)
    return header + key + apply_mask(bytes(payload), key)


def apply_mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated (masking and unmasking are the same)."""
    if not payload:
        return b""
    keystream = (key * (len(payload) // 4 + 1))[: len(payload)]
    # One big-integer XOR instead of a Python loop over bytes: fast enough for megabytes.
    mixed = int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")
    return mixed.to_bytes(len(payload), "big")


def close_payload(code: int, reason: bytes = b"") -> bytes:
    """The payload of a close frame: the code in two bytes, then the reason's bytes."""
    return struct.pack("!H", code) + reason


def fragments(opcode: int, payload: bytes, size: int, *, mask: bool) -> bytes:
    """A message cut every ``size`` bytes: a first frame, then continuations, the last one final.

    The cut ignores UTF-8 boundaries on purpose: a receiver must validate text across frames.
    """
    if size < 1:
        raise ValueError(f"fragment_size must be at least 1, not {size}")
    pieces = [payload[start : start + size] for start in range(0, len(payload), size)] or [b""]
    frames: List[bytes] = []
    for number, piece in enumerate(pieces):
        frames.append(
            encode_frame(opcode if number == 0 else OP_CONTINUATION, piece, fin=number == len(pieces) - 1, mask=mask)
        )
    return b"".join(frames)


# Each builder takes ``mask`` (True in the client role) and returns the bytes to send.
_Builder = Callable[[bool], bytes]


def _bad_close_code(code: int) -> Tuple[int, _Builder]:
    return PROTOCOL_ERROR, lambda mask: encode_frame(OP_CLOSE, close_payload(code), mask=mask)


_VIOLATIONS: Dict[str, Tuple[int, _Builder]] = {
    "invalid-utf8": (INVALID_DATA, lambda mask: encode_frame(OP_TEXT, b"not \xff utf-8", mask=mask)),
    "invalid-utf8-fragment": (
        INVALID_DATA,
        lambda mask: encode_frame(OP_TEXT, b"\xffnever finished", fin=False, mask=mask),
    ),
    "reserved-opcode": (PROTOCOL_ERROR, lambda mask: encode_frame(0x3, b"opcode 3", mask=mask)),
    "reserved-control-opcode": (PROTOCOL_ERROR, lambda mask: encode_frame(0xB, b"opcode 11", mask=mask)),
    "rsv-bits": (PROTOCOL_ERROR, lambda mask: encode_frame(OP_TEXT, b"rsv1", rsv=4, mask=mask)),
    "orphan-continuation": (PROTOCOL_ERROR, lambda mask: encode_frame(OP_CONTINUATION, b"orphan", mask=mask)),
    "unfinished-message-then-new": (
        PROTOCOL_ERROR,
        lambda mask: (
            encode_frame(OP_TEXT, b"first", fin=False, mask=mask) + encode_frame(OP_TEXT, b"second", mask=mask)
        ),
    ),
    "long-ping": (PROTOCOL_ERROR, lambda mask: encode_frame(OP_PING, b"p" * 126, mask=mask)),
    "fragmented-ping": (PROTOCOL_ERROR, lambda mask: encode_frame(OP_PING, b"ping", fin=False, mask=mask)),
    "fragmented-close": (
        PROTOCOL_ERROR,
        lambda mask: encode_frame(OP_CLOSE, close_payload(1000), fin=False, mask=mask),
    ),
    "masked-frame": (PROTOCOL_ERROR, lambda mask: encode_frame(OP_TEXT, b"masked", mask=True)),
    "unmasked-frame": (PROTOCOL_ERROR, lambda mask: encode_frame(OP_TEXT, b"unmasked", mask=False)),
    "bad-close-code": _bad_close_code(1005),
    "bad-close-code-999": _bad_close_code(999),
    "bad-close-code-1004": _bad_close_code(1004),
    "bad-close-code-1006": _bad_close_code(1006),
    "bad-close-code-1015": _bad_close_code(1015),
    "bad-close-code-5000": _bad_close_code(5000),
    "short-close": (PROTOCOL_ERROR, lambda mask: encode_frame(OP_CLOSE, b"\x03", mask=mask)),
    "close-reason-not-utf8": (
        INVALID_DATA,
        lambda mask: encode_frame(OP_CLOSE, close_payload(1000, b"\xff"), mask=mask),
    ),
}

#: Violation name -> the close code the receiving endpoint must fail the connection with.
VIOLATIONS: Mapping[str, int] = types.MappingProxyType({name: code for name, (code, _) in _VIOLATIONS.items()})

# A violation that only one role can commit: the other role's frames are supposed to look so.
_ROLE_ONLY = {"masked-frame": "server", "unmasked-frame": "client"}


def violation_bytes(name: str, *, client: bool) -> bytes:
    """The bytes of the violation ``name`` as sent by a client (masked) or a server."""
    try:
        _, build = _VIOLATIONS[name]
    except KeyError:
        raise ValueError(f"unknown violation {name!r}; known: {', '.join(sorted(_VIOLATIONS))}") from None
    role = "client" if client else "server"
    if _ROLE_ONLY.get(name, role) != role:
        raise ValueError(f"{name!r} breaks the protocol only when a {_ROLE_ONLY[name]} sends it, not a {role}")
    return build(client)
