import os


def test_leaks_an_fd() -> None:
    pipe = os.pipe()
    os.close(pipe[1])  # the read end, pipe[0], is never closed: the leak check names it
