"""A chat server for the two-process backplane test, run as a child process:

    python backplane_chat_server.py REDIS_URL CHANNEL

One room: a Hub whose backplane is a RedisBackplane on CHANNEL. ``/ws`` joins the room, and
every message a client sends goes to everyone else in it, in this process and in the others.
``/stats`` answers the hub's stats as JSON. It prints ``PORT <n>`` once it serves; when its
stdin ends it closes the hub and the server and prints the final stats as one JSON line.
Logs (the backplane's included) go to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
from typing import Any, Callable, Dict, Iterable

from werkzeug.serving import make_server

import duplexthreads
from duplexthreads import Backoff, Hub, RedisBackplane


def stats_of(hub: Hub) -> Dict[str, Any]:
    stats = dataclasses.asdict(hub.stats)
    stats["members"] = len(hub)
    return stats


def main() -> None:
    url, channel = sys.argv[1], sys.argv[2]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("duplexthreads.backplane").setLevel(logging.INFO)
    # Quick reconnects: the test restarts Redis and waits for this process to come back.
    hub = Hub(backplane=RedisBackplane(url, channel, backoff=Backoff(initial=0.05, cap=0.5)))

    def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/stats":
            body = json.dumps(stats_of(hub)).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        conn = duplexthreads.accept(environ, ping_interval=None)
        hub.add(conn)
        for message in conn:
            hub.broadcast(message, exclude=conn)
        start_response("200 OK", [])
        return [b""]

    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, name="chat-server")
    serving.start()
    print(f"PORT {server.port}", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    hub.close()
    server.shutdown()
    serving.join()
    server.server_close()
    print(json.dumps(stats_of(hub)), flush=True)


if __name__ == "__main__":
    main()
