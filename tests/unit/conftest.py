"""Fixtures for the unit tests (memory transport only, no sockets)."""

from __future__ import annotations

from typing import Any, Iterator, List, Tuple

import pytest

from duplexthreads import Duplex
from duplexthreads.testing import MemoryPeer
from duplexthreads.transports import memory_pair

from .support import MakePair


@pytest.fixture
def make_pair() -> Iterator[MakePair]:
    """Builds a (not yet started) Duplex and a MemoryPeer; both are ended at teardown."""
    made: List[Tuple[Duplex, MemoryPeer]] = []

    def make(**options: Any) -> Tuple[Duplex, MemoryPeer]:
        ours, theirs = memory_pair()
        conn = Duplex(ours, **options)
        made.append((conn, MemoryPeer(theirs)))
        return made[-1]

    yield make
    for conn, peer in made:
        conn.abort()
        peer.stop()
