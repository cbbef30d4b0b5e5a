"""The command line: ``duplexthreads chat`` and ``duplexthreads serve``, and what each flag means.

Parsing only; nothing here opens a socket. Usage errors leave through argparse's own exit
(status 2, usage on stderr), which ``main()`` turns into a return value.
"""

from __future__ import annotations

import argparse
import base64
import math
from typing import List, Optional, Sequence

from ..client import BACKENDS
from ..session import DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["EXIT_ABNORMAL", "EXIT_CONNECT", "EXIT_OK", "EXIT_USAGE", "header_lines", "parse"]

EXIT_OK = 0
EXIT_ABNORMAL = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3

#: The longest duration any option takes: a day. Larger ones overflow timestamps (1e10 s).
MAX_SECONDS = 86400.0

EXIT_CODES = """\
exit codes:
  0  the connection closed normally: 1000, 1001 or 1005 from the server, or our close, answered
  1  it closed abnormally: 1006 (no close frame), an error close code, a heartbeat timeout, an abort
  2  usage error
  3  could not connect: refused, DNS, TLS, timeout, or the handshake was rejected (HTTP status)
"""

CHAT_EPILOG = f"""\
Without URL, starts the embedded chat server on a free loopback port and joins it.

On a terminal, incoming messages print above the line being typed, and these commands work:
  /ping [payload]        send a ping and print the round trip
  /close [code [reason]] close with that code (1000 by default)
  /quit                  close normally and exit
  /help                  list the commands
  //text                 send "/text"
Ctrl-D closes normally; Ctrl-C closes normally, a second Ctrl-C aborts.

When stdin is not a terminal, each line is sent as it comes; at end of input the command keeps
listening until --wait seconds pass without a message, then closes. When stdout is not a
terminal, only the messages are printed, one per line (control characters escaped); status
lines go to stderr.

{EXIT_CODES}"""


def parse(argv: Optional[Sequence[str]], version: str) -> argparse.Namespace:
    """The parsed command line; raises SystemExit(2) with a message on a usage error."""
    parser = _parser(version)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage()
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: choose a command: chat or serve\n")
    if args.command == "chat":
        _check_chat(args, parser)
    return args


def _parser(version: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duplexthreads",
        description="WebSocket chat client and server, run as teams of threads.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"duplexthreads {version}")
    commands = parser.add_subparsers(dest="command", metavar="{chat,serve}")

    chat = commands.add_parser(
        "chat",
        help="talk to a WebSocket server (with no URL: start a chat server and join it)",
        description="Talk to a WebSocket server from the terminal or from a script.",
        epilog=CHAT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chat.add_argument("url", nargs="?", help="ws:// or wss:// URL (none: start a local chat server)")
    opening = chat.add_argument_group("connecting")
    opening.add_argument(
        "-H", "--header", action="append", default=[], metavar="'NAME: VALUE'", help="extra request header (repeatable)"
    )
    opening.add_argument(
        "-s", "--subprotocol", action="append", default=[], metavar="NAME", help="offer a subprotocol (repeatable)"
    )
    opening.add_argument("--origin", help="Origin header")
    opening.add_argument("--auth", metavar="USER:PASSWORD", help="HTTP basic authentication")
    opening.add_argument(
        "-k", "--insecure", action="store_true", help="do not verify the server's TLS certificate (unsafe)"
    )
    opening.add_argument("--cafile", help="trust the certificates in this PEM file for wss://")
    opening.add_argument(
        "--connect-timeout", type=_seconds, default=10.0, metavar="SECONDS", help="bound on opening (default 10)"
    )
    opening.add_argument(
        "--max-size",
        type=_max_size,
        default=DEFAULT_MAX_MESSAGE_SIZE,
        metavar="BYTES",
        help="largest message accepted, else the connection fails with 1009 (none or 0: no limit; default 1 MiB)",
    )
    opening.add_argument("--backend", choices=BACKENDS, default=BACKENDS[0], help="client library underneath")
    opening.add_argument(
        "--reconnect", action="store_true", help="reconnect, with backoff, when the connection ends abnormally"
    )
    liveness = chat.add_argument_group("liveness")
    liveness.add_argument(
        "--ping-interval",
        type=_seconds_or_off,
        default=20.0,
        metavar="SECONDS",
        help="seconds between heartbeat pings (0: off; default 20)",
    )
    liveness.add_argument(
        "--ping-timeout",
        type=_seconds_or_off,
        default=20.0,
        metavar="SECONDS",
        help="end the connection when the server is silent this long after a ping (0: off; default 20)",
    )
    liveness.add_argument("--show-ping-pong", action="store_true", help="print the pongs that arrive")
    scripting = chat.add_argument_group("scripting")
    scripting.add_argument(
        "-x",
        "--execute",
        action="append",
        default=[],
        metavar="MSG",
        help="send MSG (repeatable), wait for replies, close and exit; stdin is not read",
    )
    scripting.add_argument(
        "-w",
        "--wait",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="after the last line or -x message, close after this long without a message (default 1)",
    )
    scripting.add_argument("-1", "--one-message", action="store_true", help="exit after the first message received")
    scripting.add_argument("--binary", action="store_true", help="send lines as binary messages (UTF-8 bytes)")
    scripting.add_argument("--no-color", action="store_true", help="no colours, even on a terminal")

    serve = commands.add_parser(
        "serve",
        help="run the embedded chat server until Ctrl-C",
        description="Run the embedded chat server (one room) until Ctrl-C or SIGTERM.",
        epilog="exit codes: 0 stopped by Ctrl-C or SIGTERM, 2 usage error or the address is not available",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=0, help="port to listen on (default 0: any free port)")
    serve.add_argument("--redis", metavar="URL", help="share the room with other servers through this Redis")
    serve.add_argument("--channel", default="duplexthreads-chat", help="Redis channel of the room (with --redis)")
    return parser


def _check_chat(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    prefix = "chat: "
    if args.insecure and args.cafile:
        parser.error(prefix + "--insecure and --cafile contradict each other")
    if args.auth is not None and ":" not in args.auth:
        parser.error(prefix + "--auth takes USER:PASSWORD")
    if args.auth is not None:
        try:
            args.auth.encode("utf-8")
        except UnicodeEncodeError:  # bytes of the command line that are not UTF-8 (surrogate escapes)
            parser.error(prefix + "--auth must be UTF-8 text")
    for header in args.header:
        name, colon, _ = header.partition(":")
        if not colon or not name.strip():
            parser.error(prefix + f"--header takes 'Name: value', not {header!r}")
    if args.url is None and (args.insecure or args.cafile or args.reconnect):
        parser.error(prefix + "--insecure, --cafile and --reconnect need a URL")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"at most {MAX_SECONDS:g} seconds (a day), not {text!r}")
    return value


def _seconds_or_off(text: str) -> Optional[float]:
    if text.strip() == "off":
        return None
    try:
        if float(text) == 0:
            return None
    except ValueError:
        pass  # _seconds says what is wrong with it
    return _seconds(text)


def _max_size(text: str) -> Optional[int]:
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of bytes: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of bytes (0 or none: no limit), not {text!r}")
    return value or None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {value}")
    return value


def header_lines(args: argparse.Namespace) -> List[str]:
    """Every request header the flags ask for, as "Name: value" lines."""
    lines = [header.strip() for header in args.header]
    if args.origin is not None:
        lines.append(f"Origin: {args.origin}")
    if args.auth is not None:
        token = base64.b64encode(args.auth.encode("utf-8")).decode("ascii")
        lines.append(f"Authorization: Basic {token}")
    return lines
