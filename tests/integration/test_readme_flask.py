"""README.rst's "A chat room in Flask" example, run exactly as printed under Werkzeug and Gunicorn.

The code block is taken from the README's text, written to a module file and served: a change
to the README that breaks the example, or drops it, fails here.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
import threading
from pathlib import Path
from types import ModuleType
from typing import Iterator, List

import pytest
from werkzeug.serving import make_server

import duplexthreads

from ..timing import UNIT
from .test_gunicorn import Gunicorn, chat, chat_and_leave, http_get, join_room

pytestmark = pytest.mark.timeout(30 * UNIT)

README = Path(__file__).resolve().parents[2] / "README.rst"
TITLE = "A chat room in Flask"

# An upgrade request that Flask routes to the view and accept() refuses (no key, no version).
BROKEN_UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade"}

# The characters RST section titles are underlined with in README.rst.
UNDERLINES = "=-~^*"


def is_title(lines: List[str], index: int) -> bool:
    """Whether ``lines[index]`` is a section title: text underlined by a line of one RST
    underline character at least as long."""
    if index + 1 >= len(lines) or not lines[index].strip():
        return False
    underline = lines[index + 1]
    return len(underline) >= len(lines[index]) and len(set(underline)) == 1 and underline[0] in UNDERLINES


def readme_example(title: str) -> str:
    """The first ``.. code-block:: python`` in README.rst's section ``title``, dedented."""
    lines = README.read_text(encoding="utf-8").splitlines()
    starts = [index for index, line in enumerate(lines) if line == title and is_title(lines, index)]
    assert len(starts) == 1, f"README.rst has {len(starts)} sections titled {title!r}"
    end = next((index for index in range(starts[0] + 2, len(lines)) if is_title(lines, index)), len(lines))
    section = lines[starts[0] + 2 : end]
    directive = next((index for index, line in enumerate(section) if line.strip() == ".. code-block:: python"), None)
    assert directive is not None, f"no '.. code-block:: python' in README.rst's {title!r}"
    block: List[str] = []
    for line in section[directive + 1 :]:
        if line.strip() and not line.startswith(" "):
            break  # the first unindented line ends the literal block
        block.append(line)
    code = textwrap.dedent("\n".join(block)).strip("\n") + "\n"
    assert code.strip(), f"the code block in README.rst's {title!r} is empty"
    return code


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """The example as the README says to save it: app.py, in a directory of its own."""
    path = tmp_path / "app.py"
    path.write_text(readme_example(TITLE), encoding="utf-8")
    return path


@pytest.fixture
def example_module(example: Path) -> Iterator[ModuleType]:
    """The example imported in this process, under a name of its own."""
    name = "readme_flask_chat"
    spec = importlib.util.spec_from_file_location(name, example)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Flask(__name__) looks its module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


def the_hub(module: ModuleType) -> duplexthreads.Hub:
    hubs = [value for value in vars(module).values() if isinstance(value, duplexthreads.Hub)]
    assert len(hubs) == 1, hubs
    return hubs[0]


def check_refusals(port: int) -> None:
    # Flask answers a plain request to a WebSocket route itself (Werkzeug's WebsocketMismatch).
    assert http_get(port, "/chat")[0] == 400
    status, body = http_get(port, "/chat", BROKEN_UPGRADE)
    assert status == 400 and body.startswith(b"not a valid WebSocket upgrade request"), body


def test_the_example_is_there() -> None:
    code = readme_example(TITLE)
    assert "duplexthreads.accept(request.environ)" in code
    assert '@app.route("/chat", websocket=True)' in code


def test_under_werkzeug(example_module: ModuleType) -> None:
    server = make_server("127.0.0.1", 0, example_module.app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, args=(0.05,), name="test-werkzeug")
    serving.start()
    try:
        clients = join_room(server.port, ["ann", "bob", "cyd"])
        # The server's side of the three, to see them end in this process.
        members = list(the_hub(example_module))
        try:
            assert len(members) == 3
            chat(clients, 20)
            for client in clients.values():
                client.close(status=1000)
        finally:
            for client in clients.values():
                client.shutdown()
        for member in members:
            report = member.wait(10 * UNIT)
            assert (report.close_code, report.error) == (1000, None)
        check_refusals(server.port)
    finally:
        server.shutdown()
        serving.join(10 * UNIT)
        server.server_close()
    assert not serving.is_alive()


def test_under_gunicorn(example: Path) -> None:
    # As the README runs it, but with fewer threads than its 100.
    with Gunicorn("app:app", "--threads", "8", pythonpath=example.parent, cwd=example.parent) as server:
        chat_and_leave(server.port, ["ann", "bob", "cyd"], 20)
        check_refusals(server.port)
    assert "[ERROR]" not in server.log_text() and "Traceback" not in server.log_text()
