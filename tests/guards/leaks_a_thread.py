import threading

_never = threading.Event()


def test_leaks_a_thread() -> None:
    threading.Thread(target=_never.wait, name="forgotten-worker", daemon=True).start()
