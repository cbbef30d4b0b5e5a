"""Values and exceptions as JSON, for the pipes between a test and its scripted peer's process.

Bytes travel base64-encoded and tuples keep their type, so a message or a close frame comes
back exactly as the in-process mode would return it.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Dict, Type

from ._handshake import HandshakeRefused

# The exceptions a call may raise on the child's side, rebuilt as themselves in the parent.
_EXCEPTIONS: Dict[str, Type[BaseException]] = {
    cls.__name__: cls
    for cls in (
        TimeoutError,
        ConnectionError,
        ConnectionResetError,
        ConnectionRefusedError,
        ConnectionAbortedError,
        BrokenPipeError,
        OSError,
        ValueError,
        TypeError,
        RuntimeError,
    )
}
_EXCEPTIONS["timeout"] = TimeoutError  # socket.timeout before Python 3.10


def encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        # bytes() first: a memoryview need not be contiguous, and base64 refuses one that is not.
        return {"bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, tuple):
        return {"tuple": [encode(item) for item in value]}
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return {"dict": [[encode(key), encode(item)] for key, item in value.items()]}
    raise TypeError(f"cannot pass a {type(value).__name__} to the scripted peer's process")


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    if "bytes" in value:
        return base64.b64decode(value["bytes"])
    if "tuple" in value:
        return tuple(decode(item) for item in value["tuple"])
    return {decode(key): decode(item) for key, item in value["dict"]}


def encode_error(error: BaseException) -> Dict[str, Any]:
    return {
        "type": type(error).__name__,
        "message": str(error),
        "status": getattr(error, "status", None),
        "body": encode(getattr(error, "body", b"")),
    }


def decode_error(data: Dict[str, Any]) -> BaseException:
    if data["type"] == "HandshakeRefused":
        return HandshakeRefused(data["status"], data["message"], decode(data["body"]))
    cls = _EXCEPTIONS.get(data["type"])
    if cls is None:  # a bug in the child, most likely: keep its name in the message
        return RuntimeError(f"{data['type']} in the scripted peer's process: {data['message']}")
    return cls(data["message"])


def dumps(message: Dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n"
