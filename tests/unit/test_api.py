"""The public surface: __all__, the exception tree and the exit report."""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Dict

import pytest

import duplexthreads
from duplexthreads import (
    ConnectError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    DuplexError,
    ExitReport,
    HandshakeRejected,
    Reason,
    TransportError,
)

PUBLIC_NAMES = {
    "BACKENDS",
    "Backoff",
    "Backplane",
    "BackplaneStats",
    "ChatServer",
    "RedisBackplane",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PING_TIMEOUT",
    "ConnectError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "ConnectTimeout",
    "Duplex",
    "DuplexError",
    "ExitReport",
    "HandshakeRejected",
    "HeartbeatTimeout",
    "Hub",
    "HubStats",
    "Message",
    "ProtocolError",
    "Reason",
    "ReconnectingClient",
    "TransportError",
    "UsageError",
    "WriteTimeout",
    "__version__",
    "accept",
    "close_all",
    "connect",
    "serve",
}


def test_all_lists_exactly_the_public_names() -> None:
    assert len(duplexthreads.__all__) == len(set(duplexthreads.__all__))
    assert set(duplexthreads.__all__) == PUBLIC_NAMES


def test_every_name_in_all_resolves() -> None:
    for name in duplexthreads.__all__:
        assert getattr(duplexthreads, name) is not None, name
    namespace: Dict[str, Any] = {}
    exec("from duplexthreads import *", namespace)
    assert PUBLIC_NAMES - {"__version__"} <= set(namespace)


def test_no_public_attribute_is_missing_from_all() -> None:
    # Submodules are reachable but not part of the API; `annotations` is the __future__ import.
    public = {
        name
        for name, value in vars(duplexthreads).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }
    assert public <= set(duplexthreads.__all__)


def test_version_is_a_string() -> None:
    assert isinstance(duplexthreads.__version__, str) and duplexthreads.__version__


def test_exception_tree() -> None:
    assert issubclass(ConnectionClosed, DuplexError)
    for closed in (ConnectionClosedOK, ConnectionClosedError):
        assert issubclass(closed, ConnectionClosed) and issubclass(closed, DuplexError)
    assert not issubclass(ConnectionClosedOK, ConnectionClosedError)
    for os_level in (ConnectError, TransportError, HandshakeRejected):
        assert issubclass(os_level, OSError) and issubclass(os_level, DuplexError)
    assert issubclass(HandshakeRejected, ConnectError)
    assert issubclass(DuplexError, Exception)


def test_connect_and_transport_errors_are_caught_as_os_error() -> None:
    with pytest.raises(OSError):
        raise ConnectError("refused")
    with pytest.raises(OSError):
        raise TransportError("reset")
    rejected = HandshakeRejected(404, "not a WebSocket endpoint")
    assert rejected.status == 404 and "not a WebSocket" in str(rejected)


def test_connection_closed_carries_the_report() -> None:
    report = ExitReport(connection_id=3, first="reader", reason=Reason.PEER_CLOSED, close_code=1000)
    closed = ConnectionClosedOK(report)
    assert closed.report is report
    assert report.describe() in str(closed)
    assert ConnectionClosedError(None).report is None


def test_exit_report_is_frozen() -> None:
    report = ExitReport(connection_id=1, first="owner", reason=Reason.ABORTED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.first = "reader"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.unsent = ("sneaked in",)  # type: ignore[misc]
    assert report.first == "owner" and report.unsent == ()


def test_describe_mentions_reason_first_code_error_and_unsent() -> None:
    report = ExitReport(
        connection_id=1,
        first="writer",
        reason=Reason.WRITE_ERROR,
        error=TransportError("broken pipe"),
        close_code=1006,
        unsent=("a", b"b"),
    )
    text = report.describe()
    assert "write error" in text and "writer" in text and "1006" in text
    assert "broken pipe" in text and "2 unsent" in text
    closed = ExitReport(
        connection_id=2, first="reader", reason=Reason.PEER_CLOSED, close_code=1001, close_reason="going away"
    )
    assert "peer closed" in closed.describe() and "1001" in closed.describe()
    assert "going away" in closed.describe()


@pytest.mark.parametrize(
    ("reason", "code", "error", "ok"),
    [
        (Reason.PEER_CLOSED, 1000, None, True),
        (Reason.LOCAL_CLOSE, 1001, None, True),
        (Reason.PEER_CLOSED, 1011, None, False),
        (Reason.LOCAL_CLOSE, 1000, TimeoutError("no answer"), False),
        (Reason.ABORTED, 1006, None, False),
        (Reason.WORKER_EXIT, 1000, None, False),
    ],
)
def test_ok_means_a_normal_close_handshake_without_error(
    reason: Reason, code: int, error: BaseException, ok: bool
) -> None:
    report = ExitReport(connection_id=1, first="owner", reason=reason, close_code=code, error=error)
    assert report.ok is ok
