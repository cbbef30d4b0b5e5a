"""The test process's side of an isolated scripted peer: the child process and its two pipes.

No thread is started here, because the point of the child is to leave the test process's
threads and descriptors alone (two pipe descriptors are all it costs). A call writes its request
line under a lock, then either reads replies itself or waits for the caller already reading to
hand its reply over: one caller reads at a time, and replies are matched by id. Calls from
several threads are thereby serialised on the pipes but not on each other, so a thread waiting
for a message does not hold up another thread's send. Every read has a deadline.

The child belongs to the process that started it. A process forked off that one holds copies of
the two pipes; its ``close()`` closes those copies and nothing else (no shutdown request, no
signal to the child), so the peer goes on serving the process that started it.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Optional, Sequence, Set

from ._codec import decode, decode_error, dumps, encode
from ._endpoint import readable
from ._record import Record

# The directory that holds the duplexthreads package: the child imports this very copy of it.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class PeerProcess:
    """A scripted peer (server or client role) running in a child process."""

    def __init__(self, role: str, options: Dict[str, Any], *, timeout: float, start_budget: float) -> None:
        self._timeout = timeout  # added to each call's own budget: the child's start, a slow machine
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()  # guards everything below
        self._replies: Dict[int, Dict[str, Any]] = {}  # read by one caller, waiting for another
        self._abandoned: Set[int] = set()  # ids whose caller gave up: drop their replies
        self._reading = False  # a caller is reading the pipe
        self._ended: Optional[str] = None  # why no more replies will come
        self._closing = False
        self._final: Optional[Dict[int, Dict[str, Any]]] = None  # records handed over at shutdown
        self._restored: Dict[int, Record] = {}  # final records turned back into Records
        self._ids = itertools.count(1)
        # What was read past the last whole line; touched only by the caller reading.
        self._buffer = bytearray()
        self._pid = os.getpid()  # the process that owns the child; a fork's copy only lets go
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        self._process = subprocess.Popen(
            [sys.executable, "-m", f"{__package__}._peer_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Unbuffered: nothing is ever left in a buffer, so a forked copy has nothing to flush.
            bufsize=0,
            env=env,
            start_new_session=True,  # not in the terminal's process group: Ctrl-C is ours to handle
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._stdin = self._process.stdin
        self._stdout = self._process.stdout
        try:
            #: What ``start`` returned: the port of a server, the connection index of a client.
            self.started: int = self.request("start", None, [role, options], budget=start_budget)
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self._process.pid

    def request(self, op: str, conn: Optional[int], args: Sequence[Any], *, budget: float = 0.0) -> Any:
        """Have the child run ``op`` and return its result, or raise what it raised.

        ``budget`` is how long the operation itself may take (a wait's timeout); the child gets
        ``timeout`` more to answer before this raises ``TimeoutError``.
        """
        deadline = time.monotonic() + budget + self._timeout
        with self._cond:
            if self._ended is not None:
                raise ConnectionError(self._ended)
            ident = next(self._ids)
        line = memoryview(dumps({"id": ident, "op": op, "conn": conn, "args": encode(list(args))}))
        with self._write_lock:
            try:
                while line:  # an unbuffered write may take part of the line only
                    line = line[self._stdin.write(line) or 0 :]
            except (OSError, ValueError):
                self._end(f"the scripted peer's process is gone (exit status {self._process.poll()})")
                raise ConnectionError(self._ended) from None
        reply = self._await(ident, deadline, op)
        if "error" in reply:
            raise decode_error(reply["error"])
        return decode(reply["result"])

    def _await(self, ident: int, deadline: float, op: str) -> Dict[str, Any]:
        with self._cond:
            while True:
                if ident in self._replies:
                    return self._replies.pop(ident)
                if self._ended is not None:
                    raise ConnectionError(self._ended)
                if not self._reading:
                    self._reading = True
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._abandoned.add(ident)
                    raise TimeoutError(f"the scripted peer's process did not answer {op!r} in time")
                self._cond.wait(remaining)
        try:
            return self._read_until(ident, deadline, op)
        finally:
            with self._cond:
                self._reading = False
                self._cond.notify_all()

    def _read_until(self, ident: int, deadline: float, op: str) -> Dict[str, Any]:
        """Read replies, handing over others', until ours (this caller is the one reading)."""
        while True:
            line = self._read_line(deadline)
            if line is None:
                with self._cond:
                    self._abandoned.add(ident)
                raise TimeoutError(f"the scripted peer's process did not answer {op!r} in time")
            reply = json.loads(line)
            if reply["id"] == ident:
                return reply  # type: ignore[no-any-return]
            with self._cond:
                if reply["id"] in self._abandoned:
                    self._abandoned.discard(reply["id"])
                else:
                    self._replies[reply["id"]] = reply
                    self._cond.notify_all()

    def _read_line(self, deadline: float) -> Optional[bytes]:
        """The next line from the child; None at the deadline; ConnectionError at its end."""
        # Only new bytes are searched for the end of the line, and appended in place: a reply
        # carrying megabytes of messages arrives in hundreds of reads, and searching or copying
        # the whole buffer each time made that quadratic (seconds for 20 MB).
        end = self._buffer.find(b"\n")
        while end < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not readable(self._stdout.fileno(), remaining):
                return None
            chunk = os.read(self._stdout.fileno(), 1 << 20)
            if not chunk:
                self._end("the scripted peer's process has ended")
                raise ConnectionError(self._ended)
            found = chunk.find(b"\n")
            if found >= 0:
                end = len(self._buffer) + found
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    def _end(self, why: str) -> None:
        with self._cond:
            if self._ended is None:
                self._ended = why
            self._cond.notify_all()

    def final_record(self, index: int) -> Optional[Record]:
        """Connection ``index`` as it ended, once the process is closed; None before."""
        with self._cond:
            if self._final is None:
                return None
            if index not in self._restored:
                snapshot = self._final.get(index, {})  # empty if the child died before telling
                ended_by = snapshot.get("ended_by") or "peer"
                self._restored[index] = Record.restore({**snapshot, "ended": True, "ended_by": ended_by}, self._timeout)
            return self._restored[index]

    def release_copy(self) -> None:
        """In a process forked off the owner: close this process's copies of the pipes, and only
        those. Takes no lock (one held by another thread at the fork stays held here for good)."""
        if os.getpid() == self._pid:
            raise RuntimeError("release_copy() is for a process forked off the owner; the owner calls close()")
        for pipe in (self._stdin, self._stdout):
            try:
                pipe.close()  # unbuffered: a plain close() of this process's descriptor
            except OSError:
                pass

    def close(self) -> None:
        """Shut the child down and reap it: bounded, idempotent, leaves no descriptor open."""
        if os.getpid() != self._pid:
            self.release_copy()
            return
        with self._cond:
            if self._closing:
                return
            self._closing = True
        final: Dict[int, Dict[str, Any]] = {}
        if self._ended is None:
            try:
                final = self.request("shutdown", None, [], budget=self._timeout)
            except (OSError, TimeoutError):
                pass  # the child is gone or stuck: it is killed below
        deadline = time.monotonic() + self._timeout
        with self._cond:
            self._final = final
            self._ended = self._ended or "the scripted peer is closed"
            self._cond.notify_all()
            # Claim the pipe for good, once a caller still reading has left it (it gets its reply,
            # or the end of the stream when the child exits, or its deadline).
            if not self._cond.wait_for(lambda: not self._reading, max(0.0, deadline - time.monotonic())):
                self._process.kill()
                self._cond.wait_for(lambda: not self._reading)
            self._reading = True
        try:
            self._stdin.close()  # end of stdin: the child exits if it has not already
        except OSError:
            pass
        try:
            while self._read_line(deadline) is not None:  # to its end: the child closed stdout
                pass
            self._process.kill()  # the deadline passed first
        except ConnectionError:
            pass
        try:
            self._process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._stdout.close()
