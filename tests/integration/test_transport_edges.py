"""Transport-level behaviour at the edges where the backends' own habits would hurt us."""

from __future__ import annotations

import socket
from typing import Iterator, Tuple

import pytest

from duplexthreads import TransportError
from duplexthreads.testing import PeerConnection, ScriptedPeer
from duplexthreads.transports import CloseFrame, PeerClosingError, Transport, WriteError
from duplexthreads.transports.simple_websocket import SimpleWebSocketTransport
from duplexthreads.transports.websocket_client import WebSocketClientTransport

from ..timing import UNIT

pytestmark = pytest.mark.timeout(30 * UNIT)

TRANSPORTS = {"websocket-client": WebSocketClientTransport, "simple-websocket": SimpleWebSocketTransport}


@pytest.fixture(params=sorted(TRANSPORTS))
def connected(request: pytest.FixtureRequest) -> Iterator[Tuple[Transport, PeerConnection]]:
    with ScriptedPeer(timeout=10 * UNIT) as server:
        transport = TRANSPORTS[request.param].connect(server.url, open_timeout=10 * UNIT)
        try:
            yield transport, server.next_connection()
        finally:
            transport.shutdown()
            transport.close(10 * UNIT)


def raw_socket(transport: Transport) -> socket.socket:
    sock = getattr(transport, "raw_socket")  # noqa: B009 - both socket transports have it
    assert isinstance(sock, socket.socket)
    return sock


def test_end_of_stream_leaves_the_socket_to_the_transport(connected: Tuple[Transport, PeerConnection]) -> None:
    """The backend must not close the socket when the stream ends: the writer may still be
    writing to it, and a freed fd number can be reused by another connection."""
    transport, peer = connected
    peer.drop()
    with pytest.raises(TransportError):
        transport.recv()
    assert raw_socket(transport).fileno() != -1
    transport.send_batch(["the peer half-closed, so writing still works"])
    assert peer.wait_messages(1) == ["the peer half-closed, so writing still works"]
    transport.shutdown()
    transport.close(10 * UNIT)
    assert raw_socket(transport).fileno() == -1


def test_writing_after_the_peers_close_frame(connected: Tuple[Transport, PeerConnection]) -> None:
    """After the peer's close frame a write either still goes out (websocket-client tracks no
    state) or says the peer is closing; it never passes for a failed connection."""
    transport, peer = connected
    peer.close(1000, "bye")
    assert transport.recv() == CloseFrame(1000, "bye")
    try:
        transport.send_batch(["late"])
    except PeerClosingError as exc:
        assert exc.written == 0
        assert isinstance(transport, SimpleWebSocketTransport)
    except WriteError as exc:  # pragma: no cover - the failure this test guards against
        pytest.fail(f"a write after the peer's close frame looked like a broken connection: {exc!r}")
    else:
        assert isinstance(transport, WebSocketClientTransport)
