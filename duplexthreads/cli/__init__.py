"""The ``duplexthreads`` command: ``chat`` (a WebSocket client for people and scripts) and
``serve`` (the embedded chat server). ``main()`` is the console script's entry point.

One module per part: ``_args`` the command line, ``_chat`` the client session, ``_stdin`` its
input side, ``_wakeup`` how a thread waiting on file descriptors is woken (by the connection's
end, by signals), ``_render`` what it prints, ``_serve`` the server.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional, Sequence

from ._args import EXIT_ABNORMAL, EXIT_CONNECT, EXIT_OK, EXIT_USAGE, parse

__all__ = ["EXIT_ABNORMAL", "EXIT_CONNECT", "EXIT_OK", "EXIT_USAGE", "main"]


#: The exit status of a command interrupted by Ctrl-C while it was starting up (128 + SIGINT).
EXIT_INTERRUPTED_STARTING = 130


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C while starting up (importing, parsing), before anything was said: leave quietly.
        return EXIT_INTERRUPTED_STARTING


def _main(argv: Optional[Sequence[str]]) -> int:
    from .. import __version__

    try:
        args = parse(argv, __version__)
    except SystemExit as exit:  # argparse: --help, --version (0) or a usage error (2)
        return exit.code if isinstance(exit.code, int) else EXIT_USAGE
    from ._render import LogToRenderer, Renderer

    renderer = Renderer.for_streams(no_color=getattr(args, "no_color", False))
    # The library's warnings (Redis unreachable, a server thread that failed): one line each.
    library_log = logging.getLogger("duplexthreads")
    handler = LogToRenderer(renderer)
    library_log.addHandler(handler)
    try:
        if args.command == "serve":
            from ._serve import run_serve

            return run_serve(args, renderer)
        from ._chat import run_chat

        return run_chat(args, renderer)
    except KeyboardInterrupt:
        # Ctrl-C before the command's own handlers were in place (while starting up).
        renderer.status("interrupted")
        return EXIT_ABNORMAL
    except Exception as exc:  # noqa: BLE001 - a bug of ours still gets one line, not a traceback
        renderer.error(f"unexpected {exc!r}")
        return EXIT_ABNORMAL
    finally:
        library_log.removeHandler(handler)
        _release_a_broken_stdout()


def _release_a_broken_stdout() -> None:
    """If whoever read stdout left (``| head -1``), point it at /dev/null: otherwise the
    interpreter's last flush would complain about the broken pipe on stderr."""
    if sys.stdout is None:  # closed with >&-: nothing to flush
        return
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
