"""Shared pieces of the unit tests: time bounds, and Duplex/MemoryPeer pairs over memory."""

from __future__ import annotations

from typing import Callable, Tuple

from duplexthreads import Duplex
from duplexthreads.testing import MemoryPeer
from duplexthreads.transports import MemoryTransport

from ..timing import UNIT

#: Bound for something that must happen; generous, it is only spent when a test fails.
WAIT = 5 * UNIT
#: A wait that is expected to run out.
SHORT = 0.05 * UNIT

#: The make_pair fixture (tests/unit/conftest.py): options -> (not yet started Duplex, peer).
MakePair = Callable[..., Tuple[Duplex, MemoryPeer]]


def memory_transport(conn: Duplex) -> MemoryTransport:
    transport = conn.transport
    assert isinstance(transport, MemoryTransport)
    return transport
