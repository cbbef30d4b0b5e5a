"""What one connection of the scripted peer has seen, and the waits on it.

The connection's reading thread writes here; tests read and wait. A record can be turned into
a snapshot of plain values and back: the process mode hands each connection's final snapshot
to the parent when the child exits, so observations outlive the child just as they outlive the
threads in the in-process mode.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union

Message = Union[str, bytes]
CloseFrame = Tuple[Optional[int], str]
T = TypeVar("T")

#: The observations, by name, with the value each starts from.
FIELDS: Dict[str, Any] = {
    "received": [],
    "dropped": [],
    "close_frames": [],
    "pongs": [],
    "protocol_errors": [],
    "ended_by": None,
    "first_to_end_tcp": None,
    "ended": False,
    "unread_at_close": None,
    "request_target": None,
    "request_headers": [],
    "response_status": None,
    "response_headers": [],
    "subprotocol": None,
    "handshake_error": None,
    "handshake_done": False,
}


class Record:
    """Observations of one connection under one condition, notified on every change."""

    def __init__(self, default_timeout: float) -> None:
        self.default_timeout = default_timeout
        self.cond = threading.Condition()
        self._values: Dict[str, Any] = {
            name: list(value) if isinstance(value, list) else value for name, value in FIELDS.items()
        }

    # -- writing (the connection's own threads) --------------------------------------------------

    def set(self, **values: Any) -> None:
        with self.cond:
            for name, value in values.items():
                self._check(name)
                self._values[name] = value
            self.cond.notify_all()

    def set_if_unset(self, name: str, value: Any) -> None:
        """Set ``name`` unless it already has a value: the first cause of an end is the one kept."""
        with self.cond:
            if self._values[name] is None:
                self._values[name] = value
                self.cond.notify_all()

    def append(self, name: str, item: Any) -> None:
        with self.cond:
            self._values[name].append(item)
            self.cond.notify_all()

    # -- reading -----------------------------------------------------------------------------------

    def observe(self, name: str) -> Any:
        """The current value of ``name``; lists are copies, so a snapshot in time."""
        self._check(name)
        with self.cond:
            value = self._values[name]
            return list(value) if isinstance(value, list) else value

    def wait_messages(self, count: int, timeout: Optional[float] = None) -> List[Message]:
        """Every message received so far, once there are at least ``count``."""
        return self._wait(
            lambda: list(self._values["received"]) if len(self._values["received"]) >= count else None,
            timeout,
            lambda: f"{len(self._values['received'])} of {count} messages arrived",
        )

    def wait_close_frame(self, timeout: Optional[float] = None) -> CloseFrame:
        """The first close frame received: (code, reason), code None for an empty payload."""
        frames = self._wait(lambda: self._values["close_frames"][:1] or None, timeout, lambda: "no close frame arrived")
        return frames[0]  # type: ignore[no-any-return]

    def wait_pongs(self, count: int = 1, timeout: Optional[float] = None) -> List[bytes]:
        """The payloads of every pong received so far, once there are at least ``count``."""
        return self._wait(
            lambda: list(self._values["pongs"]) if len(self._values["pongs"]) >= count else None,
            timeout,
            lambda: f"{len(self._values['pongs'])} of {count} pongs arrived",
        )

    def wait_ended(self, timeout: Optional[float] = None) -> bool:
        """Whether the connection has ended for good (its socket is closed) within ``timeout``."""
        with self.cond:
            return bool(self.cond.wait_for(lambda: self._values["ended"], self._timeout(timeout)))

    def wait_handshake(self, timeout: Optional[float] = None) -> bool:
        """Whether the opening handshake was decided (answered, refused or failed) in time."""
        with self.cond:
            return bool(self.cond.wait_for(lambda: self._values["handshake_done"], self._timeout(timeout)))

    def _wait(self, found: Callable[[], Optional[T]], timeout: Optional[float], missing: Callable[[], str]) -> T:
        """Wait until ``found()`` returns a value; a connection that ends first cannot deliver it."""
        seconds = self._timeout(timeout)
        with self.cond:
            result = self.cond.wait_for(lambda: found() is not None or self._values["ended"], seconds)
            value = found()
            if value is not None:
                return value
            if result:
                raise ConnectionError(f"the connection ended ({self._values['ended_by']}) first: {missing()}")
            raise TimeoutError(f"{missing()} in {seconds:g} s")

    def _timeout(self, timeout: Optional[float]) -> float:
        return self.default_timeout if timeout is None else timeout

    @staticmethod
    def _check(name: str) -> None:
        if name not in FIELDS:
            raise ValueError(f"no observation named {name!r}; known: {', '.join(FIELDS)}")

    # -- handing over ------------------------------------------------------------------------------

    def snapshot(self) -> Dict[str, Any]:
        with self.cond:
            return {name: self.observe(name) for name in FIELDS}

    @classmethod
    def restore(cls, snapshot: Dict[str, Any], default_timeout: float) -> Record:
        record = cls(default_timeout)
        record.set(**snapshot)
        return record
