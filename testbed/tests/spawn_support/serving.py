"""What the Python servers next to this file share: output lines that
processes sharing one stdout cannot interleave, a socket's name, a TCP
listener, and an accept loop that echoes each connection."""
import os
import socket


def say(*words):
    # One write(2) per line: parents and children share this stdout.
    os.write(1, (" ".join(str(w) for w in words) + "\n").encode())


def name(s):
    return "%s:%d" % s.getsockname()[:2]


def tcp_listener(port):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(64)
    return ls


def serve(ls, alive=None):
    """Echoes one connection at a time and prints 'SERVED PID' after each;
    with `alive`, checks it twice a second and returns once it is false."""
    if alive is not None:
        ls.settimeout(0.5)
    while alive is None or alive():
        try:
            conn, _ = ls.accept()
        except socket.timeout:
            continue
        with conn:
            conn.settimeout(30)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass
        say("SERVED", os.getpid())
