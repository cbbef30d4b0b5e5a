"""RedisBackplane without a Redis: arguments, the wire format, gap counting, and what it does
while Redis cannot be reached (a refused port on loopback)."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Iterator, List

import pytest

import duplexthreads
from duplexthreads import Backoff, Hub, RedisBackplane, UsageError
from duplexthreads.backplane import _HEADER, _decode, _encode, _Numbering

from ..timing import UNIT
from .support import WAIT

ORIGIN = bytes(range(16))
FAST = Backoff(initial=0.01, cap=0.05)
#: What RedisBackplane.close() promises, whatever Redis does.
CLOSE_BOUND = 2.0 * UNIT


@pytest.fixture
def refused_url() -> str:
    """A redis:// URL on a loopback port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def backplanes() -> Iterator[List[RedisBackplane]]:
    made: List[RedisBackplane] = []
    yield made
    for backplane in made:
        backplane.close()


def wait_for(predicate: Any, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# -- arguments -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"url": b"redis://127.0.0.1"}, TypeError),
        ({"url": None}, TypeError),
        ({"url": "http://127.0.0.1:6379"}, ValueError),
        ({"url": "127.0.0.1:6379"}, ValueError),
        ({"url": "redis://127.0.0.1:6379/0?no_such_option=1"}, ValueError),
        ({"url": "redis://127.0.0.1:6379/0?db=first"}, ValueError),
        ({"channel": b"room"}, TypeError),
        ({"channel": 7}, TypeError),
        ({"channel": ""}, ValueError),
        ({"max_pending": 0}, ValueError),
        ({"max_pending": -1}, ValueError),
        ({"max_pending": True}, TypeError),
        ({"max_pending": 1.5}, TypeError),
        ({"max_message_size": 0}, ValueError),
        ({"max_message_size": None}, TypeError),
        ({"max_message_size": 1.5}, TypeError),
        ({"backoff": 0.5}, TypeError),
        ({"backoff": True}, TypeError),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs: Any, error: type) -> None:
    with pytest.raises(error):
        RedisBackplane(**kwargs)


def test_accepted_urls_and_defaults() -> None:
    backplane = RedisBackplane()
    assert (backplane.url, backplane.channel, backplane.max_pending) == (
        "redis://127.0.0.1:6379/0",
        "duplexthreads",
        10_000,
    )
    assert backplane.backoff.cap == 5.0 and backplane.backoff.initial == 0.1
    for url in ("rediss://:pw@example.com:6380/1", "unix:///run/redis.sock?db=2", "redis://localhost"):
        RedisBackplane(url, "room", max_pending=1, backoff=FAST).close()


def test_repr_hides_the_password() -> None:
    backplane = RedisBackplane("redis://user:s3cret@127.0.0.1:6379/0", "room")
    assert "s3cret" not in repr(backplane) and "user:***@127.0.0.1" in repr(backplane)
    with pytest.raises(ValueError) as caught:
        RedisBackplane("http://user:s3cret@127.0.0.1", "room")
    assert "s3cret" not in str(caught.value)


def test_the_package_imports_without_redis_and_construction_names_the_extra() -> None:
    script = (
        "import sys; sys.modules['redis'] = None\n"
        "import duplexthreads\n"
        "try:\n"
        "    duplexthreads.RedisBackplane()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True)
    assert "pip install 'duplexthreads[redis]'" in out.stdout


# -- the wire format -----------------------------------------------------------------------------


@pytest.mark.parametrize("message", ["hello", "", "héllo ✓ 𝄞", b"", b"\x00\xff" * 100, "x" * 70_000])
def test_encoding_keeps_text_text_and_binary_binary(message: Any) -> None:
    data = _encode(ORIGIN, 41, 3, message)
    assert len(data) == _HEADER.size + len(message.encode() if isinstance(message, str) else message)
    envelope = _decode(data)
    assert envelope is not None
    assert (envelope.origin, envelope.seq, envelope.declared) == (ORIGIN, 41, 3)
    assert envelope.message == message and type(envelope.message) is type(message)


def test_large_sequence_numbers_survive() -> None:
    envelope = _decode(_encode(ORIGIN, 2**64 - 1, 2**63, b"x"))
    assert envelope is not None and envelope.seq == 2**64 - 1 and envelope.declared == 2**63


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, a message some other program published",
        _encode(ORIGIN, 1, 0, b"x")[:-2],  # shorter than the header
        b"xx" + _encode(ORIGIN, 1, 0, b"payload")[2:],  # wrong magic
        _encode(ORIGIN, 1, 0, b"payload")[:2] + b"\x09" + _encode(ORIGIN, 1, 0, b"payload")[3:],  # version
        _encode(ORIGIN, 1, 0, b"payload")[:3] + b"\x07" + _encode(ORIGIN, 1, 0, b"payload")[4:],  # kind
        _encode(ORIGIN, 1, 0, "text")[: _HEADER.size] + b"\xff\xfe",  # text that is not UTF-8
    ],
)
def test_what_is_not_a_backplane_message_decodes_to_none(data: bytes) -> None:
    assert _decode(data) is None


# -- counting gaps -------------------------------------------------------------------------------


def test_numbering_counts_gaps_and_refuses_repeats() -> None:
    numbering = _Numbering()
    assert numbering.observe(ORIGIN, 10, 0) == 0  # the first heard of: what came before is not ours to miss
    assert numbering.observe(ORIGIN, 11, 0) == 0
    assert numbering.observe(ORIGIN, 15, 0) == 3  # 12, 13, 14
    assert numbering.observe(ORIGIN, 15, 0) is None  # a repeat is never delivered
    assert numbering.observe(ORIGIN, 3, 0) is None
    other = bytes(16)
    assert numbering.observe(other, 0, 0) == 0 and numbering.observe(other, 2, 0) == 1


def test_numbering_leaves_out_what_the_sender_counted_unsent() -> None:
    numbering = _Numbering()
    numbering.observe(ORIGIN, 0, 0)
    # 1..5 went missing; the sender counted 3 of its numbers unsent (a batch in flight when its
    # connection broke): only 2 are this side's to count.
    assert numbering.observe(ORIGIN, 6, 3) == 2
    # The sender's count covers numbers this side did receive: never below zero.
    assert numbering.observe(ORIGIN, 7, 10) == 0
    assert numbering.observe(ORIGIN, 9, 10) == 1


def test_numbering_forgets_the_least_recently_heard_origin_first() -> None:
    numbering = _Numbering(limit=2)
    first, second, third = (bytes([n]) * 16 for n in (1, 2, 3))
    numbering.observe(first, 0, 0)
    numbering.observe(second, 0, 0)
    numbering.observe(first, 1, 0)  # heard again: second is now the oldest
    numbering.observe(third, 0, 0)
    assert numbering.observe(first, 3, 0) == 1
    assert numbering.observe(second, 5, 0) == 0  # forgotten: heard of anew


# -- without a reachable Redis -------------------------------------------------------------------


def test_start_twice_and_start_after_close_raise(refused_url: str, backplanes: List[RedisBackplane]) -> None:
    backplane = RedisBackplane(refused_url, "room", backoff=FAST)
    backplanes.append(backplane)
    with pytest.raises(TypeError):
        backplane.start("not callable")  # type: ignore[arg-type]
    backplane.start(lambda message: None)
    with pytest.raises(UsageError):
        backplane.start(lambda message: None)
    names = sorted(thread.name for thread in threading.enumerate() if "redis-" in thread.name)
    assert len(names) == 2 and names[0].startswith("duplexthreads-") and names[0].endswith("-redis-pub")
    assert all(t.daemon for t in threading.enumerate() if t.name in names)
    backplane.close()
    closed = RedisBackplane(refused_url, "room")
    closed.close()
    with pytest.raises(UsageError):
        closed.start(lambda message: None)


def test_unreachable_redis_is_an_outage_and_publish_never_waits(
    refused_url: str, backplanes: List[RedisBackplane], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="duplexthreads.backplane")
    backplane = RedisBackplane(refused_url, "room", max_pending=3, backoff=FAST)
    backplanes.append(backplane)
    backplane.start(lambda message: None)
    started = time.monotonic()
    for index in range(5):
        backplane.publish(f"m{index}")
    assert time.monotonic() - started < WAIT / 10
    assert wait_for(lambda: backplane.stats.outages == 1)
    time.sleep(0.1)  # several failed attempts: still one outage, one warning
    stats = backplane.stats
    assert (stats.outages, stats.connected, stats.unsent, stats.published) == (1, False, 2, 0)
    assert backplane.pending == 3
    warnings = [r for r in caplog.records if r.name == "duplexthreads.backplane" and r.levelno == logging.WARNING]
    assert any("cannot reach Redis" in r.getMessage() and "ConnectionError" in r.getMessage() for r in warnings)
    assert sum("Redis at" in r.getMessage() for r in warnings) == 1
    assert any("outbox is full" in r.getMessage() for r in warnings)
    started = time.monotonic()
    backplane.close()
    assert time.monotonic() - started < CLOSE_BOUND
    assert backplane.stats.unsent == 5 and backplane.pending == 0  # what never went out counts
    backplane.publish("after close")  # a broadcast racing the hub's close: counted, never raises
    assert backplane.stats.unsent == 6


def test_publish_checks_its_argument(refused_url: str) -> None:
    backplane = RedisBackplane(refused_url, "room")
    with pytest.raises(TypeError):
        backplane.publish(bytearray(b"x"))  # type: ignore[arg-type]
    backplane.publish("before start")  # waits in the outbox
    assert backplane.pending == 1
    backplane.close()
    assert backplane.stats.unsent == 1


def test_a_hub_with_an_unreachable_backplane_delivers_locally_and_closes_in_time(refused_url: str) -> None:
    backplane = RedisBackplane(refused_url, "room", backoff=FAST)
    hub = Hub(backplane=backplane)
    assert isinstance(hub.stats.backplane, duplexthreads.BackplaneStats)
    assert hub.broadcast("hello") == 0
    assert wait_for(lambda: backplane.stats.outages == 1)
    started = time.monotonic()
    hub.close()
    assert time.monotonic() - started < CLOSE_BOUND
    stats = hub.stats.backplane
    assert stats is not None and stats.unsent == 1 and not stats.connected


def test_a_message_too_large_for_redis_stays_local_and_counts_unsent(
    refused_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis disconnects every subscriber a message over 32 MiB is sent to: the whole room."""
    caplog.set_level(logging.WARNING, logger="duplexthreads.backplane")
    backplane = RedisBackplane(refused_url, "room", max_message_size=10)
    try:
        backplane.publish("x" * 10)
        backplane.publish("é" * 5)  # 10 bytes in UTF-8
        backplane.publish("é" * 6)  # 12 bytes in UTF-8, 6 characters
        backplane.publish(b"\x00" * 11)
        assert backplane.pending == 2 and backplane.stats.unsent == 2
        assert sum("stays local" in r.getMessage() for r in caplog.records) == 1  # logged once
    finally:
        backplane.close()
