import threading


def fail() -> None:
    raise RuntimeError("boom in a thread")


def test_raises_in_a_thread() -> None:
    thread = threading.Thread(target=fail)
    thread.start()
    thread.join(5)
