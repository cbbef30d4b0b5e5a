"""Encoding of client-to-server WebSocket frames (RFC 6455, section 5.2).

The writer builds whole batches of frames itself so that one socket write can carry many
messages; websocket-client would format and send them one by one, each under its lock.
"""

from __future__ import annotations

import os
import struct
from typing import Callable, List, Sequence

from .._rfc6455 import MAX_CLOSE_REASON_BYTES, NO_STATUS_CODE
from ..report import Message

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9

_FIN = 0x80
_MASKED = 0x80


def _apply_mask_python(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated (one big-int XOR runs at C speed)."""
    size = len(payload)
    if size == 0:
        return b""
    repeated = (key * (size // 4 + 1))[:size]
    masked = int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")
    return masked.to_bytes(size, "little")


def _fastest_apply_mask() -> Callable[[bytes, bytes], bytes]:
    # websockets ships the same operation in C, 40x faster on 4 KiB; use it when installed
    # (the 'speedups' extra), since masking dominates the cost of sending large messages.
    try:
        from websockets.speedups import apply_mask as apply_mask_c
    except ImportError:  # pragma: no cover - depends on what is installed
        return _apply_mask_python
    return apply_mask_c


#: Masking in use: websockets' C implementation when available, else pure Python.
apply_mask = _fastest_apply_mask()


def encode_frame(opcode: int, payload: bytes, mask_key: bytes) -> bytes:
    """One final, masked frame (clients must mask every frame they send)."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", _FIN | opcode, _MASKED | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", _FIN | opcode, _MASKED | 126, size)
    else:
        header = struct.pack("!BBQ", _FIN | opcode, _MASKED | 127, size)
    return header + mask_key + apply_mask(payload, mask_key)


def encode_server_frame(opcode: int, payload: bytes) -> bytes:
    """One final frame as a server sends it: unmasked, with no extension applied."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", _FIN | opcode, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", _FIN | opcode, 126, size)
    else:
        header = struct.pack("!BBQ", _FIN | opcode, 127, size)
    return header + payload


def encode_server_messages(messages: Sequence[Message]) -> List[bytes]:
    """Unmasked frames for a batch of messages, as a server sends them."""
    return [
        encode_server_frame(OPCODE_TEXT, message.encode("utf-8"))
        if isinstance(message, str)
        else encode_server_frame(OPCODE_BINARY, message)
        for message in messages
    ]


def encode_messages(messages: Sequence[Message]) -> List[bytes]:
    """Masked frames for a batch of messages: ``str`` as text, ``bytes`` as binary."""
    keys = os.urandom(4 * len(messages))
    frames = []
    for index, message in enumerate(messages):
        key = keys[4 * index : 4 * index + 4]
        if isinstance(message, str):
            frames.append(encode_frame(OPCODE_TEXT, message.encode("utf-8"), key))
        else:
            frames.append(encode_frame(OPCODE_BINARY, message, key))
    return frames


def close_payload(code: int, reason: str) -> bytes:
    """Payload of a close frame; the reason must fit the 125-byte control-frame limit."""
    encoded = reason.encode("utf-8")
    if len(encoded) > MAX_CLOSE_REASON_BYTES:
        raise ValueError(f"close reason is {len(encoded)} bytes in UTF-8; at most {MAX_CLOSE_REASON_BYTES} fit")
    return struct.pack("!H", code) + encoded


def parse_close_payload(payload: bytes) -> tuple[int, str]:
    """``(code, reason)`` of a received close frame; 1005 when it carries no code."""
    if len(payload) < 2:
        return NO_STATUS_CODE, ""
    (code,) = struct.unpack("!H", payload[:2])
    return code, payload[2:].decode("utf-8", errors="replace")
