"""GCB client behaviours the C echo programs do not reach, step by step.

Run by tests/gcb_mock.rs under LD_PRELOAD=libgcb.so in GCB mode, in the NAT test
bed. Each step prints one line and, where the test must look at the broker
between steps, waits for a line on stdin.

  gcb_lifecycle.py close PORT         listener close, dup and fork bookkeeping
  gcb_lifecycle.py epoll-connect ADDR non-blocking connect after epoll registration
  gcb_lifecycle.py threads PORT N     N threads accepting on one listener at fd 1500,
                                      half in blocking accept, half in poll + accept
  gcb_lifecycle.py blocked-read PORT  a server blocked in read() on an accepted
                                      connection until a line on stdin releases the
                                      data; then EAGAIN from a non-blocking read and
                                      from SO_RCVTIMEO
"""
import os
import resource
import select
import socket
import struct
import sys
import threading
import time


def say(*words):
    print(*words, flush=True)


def step():
    if not sys.stdin.readline():
        sys.exit("stdin closed")


def listener(port, backlog=8):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(backlog)
    return s


def fmt(addr):
    return "%s:%d" % addr


def close_steps(port):
    s = listener(port)
    say("PROXY", fmt(s.getsockname()))
    step()
    d = os.dup(s.fileno())
    s.close()
    say("CLOSED-ORIGINAL", fmt(socket.socket(fileno=os.dup(d)).getsockname()))
    step()
    os.close(d)
    say("CLOSED-LAST")
    step()
    s2 = listener(port + 1)
    say("PROXY", fmt(s2.getsockname()))
    pid = os.fork()
    if pid == 0:
        s2.close()
        os._exit(0)
    os.waitpid(pid, 0)
    say("CHILD-CLOSED")
    step()
    s2.close()
    say("PARENT-CLOSED")
    step()


def epoll_connect(dest):
    host, port = dest.rsplit(":", 1)
    c = socket.socket()
    c.setblocking(False)
    ep = select.epoll()
    ep.register(c.fileno(), select.EPOLLOUT | select.EPOLLIN)
    rc = c.connect_ex((host, int(port)))
    say("CONNECT", rc)
    events = dict(ep.poll(5))
    if not events.get(c.fileno(), 0) & select.EPOLLOUT:
        sys.exit("epoll did not report the connected socket writable: %r" % events)
    say("SO_ERROR", c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    say("PEER", fmt(c.getpeername()))
    c.setblocking(True)
    c.settimeout(5)
    c.sendall(b"hello through the broker")
    got = b""
    while len(got) < 24:
        chunk = c.recv(64)
        if not chunk:
            break
        got += chunk
    say("ECHO", got.decode())


def echo(c):
    with c:
        while True:
            data = c.recv(65536)
            if not data:
                return
            c.sendall(data)


def threads(port, n):
    # An fd above FD_SETSIZE: poll and accept must not care.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    s = listener(port, 64)
    os.dup2(s.fileno(), 1500)
    s.close()
    high = socket.socket(fileno=1500)
    say("PROXY", fmt(high.getsockname()))
    lock = threading.Lock()

    # Every thread's accept is blocking (O_NONBLOCK belongs to the shared open
    # file, so one thread cannot have it otherwise); half of them poll first,
    # and may then block in accept when another thread took the connection.
    def serve(polling):
        while True:
            if polling:
                p = select.poll()
                p.register(1500, select.POLLIN)
                p.poll()
                c, peer = high.accept()
            else:
                c, peer = socket.socket(fileno=os.dup(1500)).accept()
            with lock:
                say("ACCEPT PEER", fmt(c.getpeername()))
            threading.Thread(target=echo, args=(c,), daemon=True).start()

    for i in range(n):
        threading.Thread(target=serve, args=(i % 2 == 1,), daemon=True).start()
    step()


def blocked_read(port):
    s = listener(port)
    say("PROXY", fmt(s.getsockname()))
    # A loopback connection to our own listener: the accepted end is a connection
    # the shim names, like any accepted from a registered listener.
    c = socket.create_connection(("127.0.0.1", port))
    a, _ = s.accept()
    fd = a.fileno()

    def feed():
        step()
        c.sendall(b"late data")

    threading.Thread(target=feed, daemon=True).start()
    say("READING")
    say("READ", os.read(fd, 100).decode())

    def eagain(what, call):
        try:
            got = call()
        except BlockingIOError:
            return
        sys.exit("%s returned %r instead of EAGAIN" % (what, got))

    a.setblocking(False)
    t0 = time.monotonic()
    eagain("non-blocking recv", lambda: a.recv(10))
    eagain("non-blocking read", lambda: os.read(fd, 10))
    say("NONBLOCK %.3f" % (time.monotonic() - t0))
    a.setblocking(True)
    eagain("recv with MSG_DONTWAIT", lambda: a.recv(10, socket.MSG_DONTWAIT))
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 1, 200000))
    t0 = time.monotonic()
    eagain("recv under SO_RCVTIMEO", lambda: a.recv(10))
    say("RCVTIMEO-RECV %.3f" % (time.monotonic() - t0))
    t0 = time.monotonic()
    eagain("read under SO_RCVTIMEO", lambda: os.read(fd, 10))
    say("RCVTIMEO-READ %.3f" % (time.monotonic() - t0))
    c.close()
    say("EOF", len(os.read(fd, 10)))


if __name__ == "__main__":
    {
        "close": lambda: close_steps(int(sys.argv[2])),
        "epoll-connect": lambda: epoll_connect(sys.argv[2]),
        "threads": lambda: threads(int(sys.argv[2]), int(sys.argv[3])),
        "blocked-read": lambda: blocked_read(int(sys.argv[2])),
    }[sys.argv[1]]()
    say("done")
