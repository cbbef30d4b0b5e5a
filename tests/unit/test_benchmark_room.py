"""The room benchmark's own wire and figures (benchmarks/room.py): pure functions and a socket
pair, no server."""

from __future__ import annotations

import socket

from benchmarks.room import Member, frame, latency_summary


def unmask(data: bytes) -> bytes:
    assert data[1] & 0x80, "a client's frame must be masked"
    key, payload = data[2:6], data[6:]
    return bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))


def test_client_frames_are_masked_and_unmask_to_the_payload() -> None:
    payload = bytes(range(100))
    data = frame(0x2, payload)
    assert data[0] == 0x82 and data[1] & 0x7F == 100
    assert unmask(data) == payload


def test_parse_joins_fragments_answers_pings_and_notes_the_close() -> None:
    left, right = socket.socketpair()
    with left, right:
        member = Member(left, 0, b"")
        member.inbuf += b"\x02\x03abc" + b"\x89\x01p" + b"\x80\x02de" + b"\x88\x04\x03\xf0ok"
        assert list(member.parse()) == [(0x2, b"abcde")]
        assert unmask(bytes(member.outbuf)) == b"p" and member.outbuf[0] == 0x8A  # the pong
        assert member.close_received == (1008, "ok")
        assert not member.inbuf


def test_a_missing_delivery_counts_as_later_than_every_other() -> None:
    summary = latency_summary([0.001, 0.002, 0.003], undelivered=1)
    assert summary["p50_ms"] == 2.0
    assert summary["p99_ms"] is None  # it falls on the missing one
    assert summary["delivered_share"] == 0.75 and summary["max_ms"] is None
