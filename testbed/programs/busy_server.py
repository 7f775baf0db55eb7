"""A TCP and UDP echo server that is busy before it serves (issue 12).

It plays an ordinary program that listens, then spends a while without
making any socket call: asleep, computing, or waiting for a child. With
kernel TCP, connections made meanwhile complete through the listen backlog
and are served when the program gets to `accept`; datagrams wait in the
socket's buffer. Under the shim the same must hold.

    busy_server.py --port N [--proto tcp|udp|both] [--backlog B]
                   [--busy sleep|compute|waitpid|file] [--busy-s S]
                   [--go FILE] [--max-busy-s S]

Prints, one line each, flushed:
    PID <pid>
    LISTEN tcp|udp <getsockname>
    BUSY start=<unix time> kind=<kind>
    CHILD pid=<pid> asleep|awake at=<unix time>         (--busy waitpid)
    BUSY end=<unix time> took=<seconds>
    ACCEPT peer=<ip:port> bytes=<n> at=<unix time>     (per TCP connection)
    DGRAM from=<ip:port> bytes=<n> at=<unix time>      (per datagram)

`--busy file` sleeps in 50 ms steps until FILE (`--go`) exists, at most
`--max-busy-s`: busy until the test says so, still without a socket call.
After the busy period it serves forever: each TCP connection, on a thread of
its own, is read to its end and everything is echoed back; each datagram is
echoed to its sender.
"""

import argparse
import os
import selectors
import socket
import sys
import threading
import time


def say(line):
    # One write(2) per line: the serving threads and the main loop print at
    # once, and print() writes a line and its newline separately.
    os.write(1, (line + "\n").encode())


def busy(kind, seconds, go, max_s):
    """Spends the busy period without a single socket call."""
    start = time.time()
    say(f"BUSY start={start:.6f} kind={kind}")
    end = time.monotonic() + seconds
    if kind == "sleep":
        # Python 3.11+ sleeps in clock_nanosleep, which the shim does not hook.
        time.sleep(seconds)
    elif kind == "compute":
        x = 0
        while time.monotonic() < end:
            for i in range(20000):
                x += i * i
    elif kind == "waitpid":
        pid = os.fork()
        if pid == 0:
            say(f"CHILD pid={os.getpid()} asleep at={time.time():.6f}")
            time.sleep(seconds)
            say(f"CHILD pid={os.getpid()} awake at={time.time():.6f}")
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            say(f"ERROR child status {status}")
    elif kind == "file":
        deadline = time.monotonic() + max_s
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        raise SystemExit(f"unknown --busy {kind}")
    now = time.time()
    say(f"BUSY end={now:.6f} took={now - start:.3f}")


def serve_tcp(conn):
    """Reads one connection to its end and echoes all of it."""
    conn.setblocking(True)
    conn.settimeout(20)
    peer = conn.getpeername()
    got = bytearray()
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
        conn.sendall(got)
        conn.shutdown(socket.SHUT_WR)
        # Wait for the client to close so the echo is never cut by a reset.
        conn.recv(1)
    except OSError as e:
        say(f"CONNERROR peer={peer[0]}:{peer[1]} after={len(got)} error={e!r}")
    finally:
        conn.close()
    say(f"ACCEPT peer={peer[0]}:{peer[1]} bytes={len(got)} at={time.time():.6f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--proto", default="both", choices=["tcp", "udp", "both"])
    ap.add_argument("--backlog", type=int, default=128)
    ap.add_argument("--busy", default="sleep")
    ap.add_argument("--busy-s", type=float, default=10.0)
    ap.add_argument("--go", default="")
    ap.add_argument("--max-busy-s", type=float, default=120.0)
    a = ap.parse_args()

    say(f"PID {os.getpid()}")
    sel = selectors.DefaultSelector()
    if a.proto in ("tcp", "both"):
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("0.0.0.0", a.port))
        lst.listen(a.backlog)
        say("LISTEN tcp %s:%d" % lst.getsockname())
        sel.register(lst, selectors.EVENT_READ, "tcp")
    if a.proto in ("udp", "both"):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("0.0.0.0", a.port))
        say("LISTEN udp %s:%d" % udp.getsockname())
        sel.register(udp, selectors.EVENT_READ, "udp")

    busy(a.busy, a.busy_s, a.go, a.max_busy_s)

    while True:
        for key, _ in sel.select():
            if key.data == "tcp":
                conn, _ = key.fileobj.accept()
                # A thread each, so a client that never finishes cannot hold up the rest.
                threading.Thread(target=serve_tcp, args=(conn,), daemon=True).start()
            else:
                data, src = key.fileobj.recvfrom(65536)
                key.fileobj.sendto(data, src)
                say(f"DGRAM from={src[0]}:{src[1]} bytes={len(data)} at={time.time():.6f}")


if __name__ == "__main__":
    sys.exit(main())
