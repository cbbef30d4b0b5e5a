"""``duplexthreads serve``: the embedded chat server in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse

from ..chat_server import serve
from ._args import EXIT_OK, EXIT_USAGE
from ._render import Renderer, escape
from ._wakeup import Signal, Wakeup

__all__ = ["run_serve"]


def run_serve(args: argparse.Namespace, renderer: Renderer) -> int:
    """Serve until SIGINT or SIGTERM; the exit status."""
    backplane = None
    if args.redis is not None:
        import duplexthreads

        # Looked up, not imported: the backplane needs the redis extra, and only --redis needs it.
        RedisBackplane = getattr(duplexthreads, "RedisBackplane", None)
        if RedisBackplane is None:
            renderer.error("--redis is not available in this version of duplexthreads")
            return EXIT_USAGE
        try:
            backplane = RedisBackplane(args.redis, channel=args.channel)
        except (ValueError, TypeError, OSError, ImportError) as exc:
            renderer.error(f"--redis {args.redis}: {escape(str(exc))}")
            return EXIT_USAGE
    wakeup = Wakeup()
    try:
        with wakeup.on_signals():
            try:
                server = serve(args.host, args.port, backplane=backplane)
            except OSError as exc:  # the port is taken, or the address is not one of this machine's
                renderer.error(f"cannot listen on {args.host}:{args.port}: {escape(str(exc))}")
                return EXIT_USAGE
            try:
                room = f", room shared through {args.redis}" if args.redis else ""
                renderer.status(f"chat server on {server.url}{room} - join with: duplexthreads chat {server.url}")
                renderer.status("Ctrl-C stops it")
                while wakeup.wait(None) is not Signal.INTERRUPT:
                    pass
            finally:
                server.close()
    finally:
        wakeup.close()
    renderer.status("chat server stopped")
    return EXIT_OK
