"""Running the installed ``duplexthreads`` command in a child process, through pipes or a
pseudo-terminal, with a deadline on every wait and the child killed whatever happens."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Dict, List, Optional, Sequence

import pexpect

from ..timing import UNIT

#: The console script installed next to this interpreter; else the module, run by it.
_SCRIPT = shutil.which("duplexthreads", path=str(Path(sys.executable).parent))
COMMAND: List[str] = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "duplexthreads"]


def child_env(**extra: str) -> Dict[str, str]:
    """The environment of a child: no colour preferences, and a terminal prompt-toolkit
    knows. CPR off: pexpect does not answer cursor position requests, and prompt-toolkit
    would wait for the answer before warning."""
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env.update(TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    seconds: float


def run(args: Sequence[str], stdin: Optional[bytes] = b"", timeout: float = 15 * UNIT) -> Result:
    """Run the command to its end with ``stdin`` (None: /dev/null) through pipes."""
    started = time.monotonic()
    done = subprocess.run(
        [*COMMAND, *args],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        timeout=timeout,
        env=child_env(),
    )
    return Result(
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
        time.monotonic() - started,
    )


class Piped:
    """The command running with pipes on all three streams; its output read line by line."""

    def __init__(self, args: Sequence[str]) -> None:
        self.process = subprocess.Popen(
            [*COMMAND, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
        )
        self.lines: Dict[str, queue.Queue[Optional[str]]] = {"stdout": queue.Queue(), "stderr": queue.Queue()}
        self.seen: Dict[str, List[str]] = {"stdout": [], "stderr": []}
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._pump, args=(stream, self.lines[name]), name=f"test-cli-{name}")
            for name, stream in (("stdout", self.process.stdout), ("stderr", self.process.stderr))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _pump(stream: IO[bytes], lines: queue.Queue[Optional[str]]) -> None:
        for raw in iter(stream.readline, b""):
            lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        lines.put(None)

    def send(self, text: str) -> None:
        self.send_bytes(text.encode("utf-8"))

    def send_bytes(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def end_input(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    def expect(self, pattern: str, stream: str = "stdout", timeout: float = 10 * UNIT) -> re.Match[str]:
        """The first line from now on matching ``pattern``; AssertionError at the deadline or the end."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines[stream].get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} on {stream} within {timeout} s; saw {self.seen}") from None
            if line is None:
                self.lines[stream].put(None)  # stays at the end for the next look
                raise AssertionError(f"{stream} ended without {pattern!r}; saw {self.seen}")
            self.seen[stream].append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def wait(self, timeout: float = 10 * UNIT) -> int:
        return self.process.wait(timeout)

    def rest(self, stream: str) -> List[str]:
        """Every line not read yet, once the process has ended."""
        for reader in self._readers:
            reader.join(10 * UNIT)
        out = []
        while True:
            line = self.lines[stream].get_nowait()
            if line is None:
                self.lines[stream].put(None)
                return out
            self.seen[stream].append(line)
            out.append(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10 * UNIT)
        for reader in self._readers:
            reader.join(10 * UNIT)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                try:
                    stream.close()
                except BrokenPipeError:
                    pass

    def __enter__(self) -> Piped:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Terminal:
    """The command running on a pseudo-terminal (pexpect), as a person would use it."""

    def __init__(
        self,
        args: Sequence[str],
        timeout: float = 10 * UNIT,
        program: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        """The command with ``args``; or ``program`` with ``args`` (a shell running it, say).
        ``env``: the child's whole environment (default: :func:`child_env`)."""
        self.ended_at: Optional[float] = None
        self.child = pexpect.spawn(
            program or COMMAND[0],
            list(args) if program else [*COMMAND[1:], *args],
            env=child_env() if env is None else env,
            encoding="utf-8",
            codec_errors="replace",
            timeout=timeout,
            dimensions=(24, 120),
        )

    def expect(self, pattern: str, timeout: float = 10 * UNIT) -> None:
        self.child.expect(pattern, timeout=timeout)

    def prompt(self) -> None:
        """Wait for the prompt to be drawn (the '>' of the line being typed)."""
        self.child.expect(">", timeout=10 * UNIT)

    def type(self, text: str) -> None:
        self.child.send(text)

    def end(self, timeout: float = 10 * UNIT) -> int:
        """Wait for the command to exit; its exit status. ``ended_at``: when its output ended."""
        self.child.expect(pexpect.EOF, timeout=timeout)
        self.ended_at = time.monotonic()
        self.child.close()
        status = self.child.exitstatus
        assert status is not None, f"killed by signal {self.child.signalstatus}"
        return int(status)

    @property
    def output(self) -> str:
        """What it printed before the last match (with the match)."""
        before = self.child.before if isinstance(self.child.before, str) else ""
        after = self.child.after if isinstance(self.child.after, str) else ""
        return before + after

    def close(self) -> None:
        if self.child.isalive():
            self.child.kill(signal.SIGKILL)
        self.child.close(force=True)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
