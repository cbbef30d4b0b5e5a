"""``duplexthreads serve``: the embedded chat server in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import ipaddress

from ..chat_server import serve
from ._args import EXIT_OK, EXIT_USAGE
from ._render import Renderer, escape
from ._wakeup import Signal, Wakeup

__all__ = ["run_serve"]


def run_serve(args: argparse.Namespace, renderer: Renderer) -> int:
    """Serve until SIGINT, SIGTERM or SIGHUP; the exit status."""
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
            except (OSError, ValueError) as exc:  # the port is taken, the address is not this machine's, or none
                host = escape(args.host) or "''"
                renderer.error(f"cannot listen on {host}:{args.port}: {escape(str(exc))}")
                return EXIT_USAGE
            try:
                if not _loopback(args.host):
                    renderer.warning(
                        f"listening on {escape(args.host)}: the room is reachable from the network,"
                        " and anyone who reaches it can join (no authentication)"
                    )
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


def _loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.1, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface
