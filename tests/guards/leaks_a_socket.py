import socket


def test_leaks_a_socket() -> None:
    sock = socket.socket()
    del sock  # never closed: the garbage collector warns, and the warning is an error
