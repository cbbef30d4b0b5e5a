"""Client frame encoding: masking (C and pure Python agree) and the three length forms."""

from __future__ import annotations

import os
import random
import struct

import pytest

from duplexthreads.transports import _framing


def unmask(frame: bytes) -> tuple[int, bool, bytes]:
    """Decode one client frame: (opcode, fin, payload)."""
    first, second = frame[0], frame[1]
    assert second & 0x80, "client frames must be masked"
    length = second & 0x7F
    offset = 2
    if length == 126:
        (length,) = struct.unpack("!H", frame[2:4])
        offset = 4
    elif length == 127:
        (length,) = struct.unpack("!Q", frame[2:10])
        offset = 10
    key = frame[offset : offset + 4]
    body = frame[offset + 4 :]
    assert len(body) == length
    payload = bytes(b ^ key[i % 4] for i, b in enumerate(body))
    return first & 0x0F, bool(first & 0x80), payload


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 127, 4096, 65535, 65536, 70001])
def test_python_masking_matches_the_masking_in_use(size: int) -> None:
    rng = random.Random(size)
    payload = bytes(rng.getrandbits(8) for _ in range(size))
    key = bytes(rng.getrandbits(8) for _ in range(4))
    expected = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert _framing._apply_mask_python(payload, key) == expected
    assert _framing.apply_mask(payload, key) == expected


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_frames_round_trip_at_each_length_form(size: int) -> None:
    payload = os.urandom(size)
    frame = _framing.encode_frame(_framing.OPCODE_BINARY, payload, os.urandom(4))
    assert unmask(frame) == (_framing.OPCODE_BINARY, True, payload)


def test_a_batch_keeps_order_and_types_and_uses_a_fresh_key_per_frame() -> None:
    frames = _framing.encode_messages(["héllo", b"\x00\x01", ""])
    assert [unmask(frame) for frame in frames] == [
        (_framing.OPCODE_TEXT, True, "héllo".encode()),
        (_framing.OPCODE_BINARY, True, b"\x00\x01"),
        (_framing.OPCODE_TEXT, True, b""),
    ]


def test_close_payload_limits_and_parsing() -> None:
    assert _framing.parse_close_payload(_framing.close_payload(1001, "bye")) == (1001, "bye")
    assert _framing.parse_close_payload(b"") == (1005, "")
    with pytest.raises(ValueError):
        _framing.close_payload(1000, "x" * 124)
