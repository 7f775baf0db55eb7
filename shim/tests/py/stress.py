"""Many threads doing socket calls at once, with forks in between, under the shim.

A deadlock in the shim (in the parent or in a forked child) shows up as a thread or
child that does not finish before its deadline; the script then exits non-zero.
"""
import os
import random
import select
import socket
import sys
import threading
import time

RUN_FOR = 4.0  # seconds of load
WORKERS = 12
errors = []
counts = {"tcp": 0, "pair": 0, "udp": 0, "fork": 0}
lock = threading.Lock()


def record(kind):
    with lock:
        counts[kind] += 1


def guarded(fn):
    def run(*args):
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - every failure is reported
            errors.append(f"{fn.__name__}: {e!r}")
    return run


srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(128)
addr = srv.getsockname()


@guarded
def acceptor():
    while True:
        try:
            conn, _ = srv.accept()
        except OSError:
            return  # listener closed at the end
        threading.Thread(target=guarded(echo), args=(conn,), daemon=True).start()


def echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


@guarded
def tcp_worker(deadline):
    while time.monotonic() < deadline:
        with socket.create_connection(addr, timeout=20) as c:
            msg = os.urandom(random.randint(1, 32768))
            c.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = c.recv(65536)
                assert chunk, "early EOF"
                got += chunk
            assert got == msg, "echo differs"
        record("tcp")


@guarded
def pair_worker(deadline):
    while time.monotonic() < deadline:
        a, b = socket.socketpair()
        d = os.dup(a.fileno())
        os.write(d, b"ping")
        p = select.poll()
        p.register(b, select.POLLIN)
        assert p.poll(20000), "poll timed out"
        assert select.select([b], [], [], 20)[0], "select timed out"
        assert b.recv(4) == b"ping"
        for s in (a, b):
            s.close()
        os.close(d)
        record("pair")


@guarded
def udp_worker(deadline):
    u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u1.bind(("127.0.0.1", 0))
    u2.settimeout(20)
    ep = select.epoll()
    ep.register(u1.fileno(), select.EPOLLIN)
    while time.monotonic() < deadline:
        u2.sendto(b"dgram", u1.getsockname())
        assert ep.poll(20), "epoll timed out"
        data, peer = u1.recvfrom(100)
        u1.sendto(data, peer)
        assert u2.recvfrom(100)[0] == b"dgram"
        record("udp")
    ep.close()
    u1.close()
    u2.close()


@guarded
def forker(deadline):
    while time.monotonic() < deadline:
        pid = os.fork()
        if pid == 0:
            # Only socket calls in the child of a multi-threaded parent: the shim
            # must not deadlock here whatever the other threads were doing.
            code = 1
            try:
                a, b = socket.socketpair()
                a.send(b"c")
                code = 0 if b.recv(1) == b"c" else 1
            finally:
                os._exit(code)
        limit = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0, f"child status {status}"
                break
            if time.monotonic() > limit:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise AssertionError("forked child hung")
            time.sleep(0.005)
        record("fork")
        time.sleep(0.02)


deadline = time.monotonic() + RUN_FOR
threading.Thread(target=acceptor, daemon=True).start()
workers = []
for i in range(WORKERS):
    target = (tcp_worker, pair_worker, udp_worker)[i % 3]
    workers.append(threading.Thread(target=target, args=(deadline,), daemon=True))
workers.append(threading.Thread(target=forker, args=(deadline,), daemon=True))
for t in workers:
    t.start()
for t in workers:
    t.join(max(0.0, deadline + 30 - time.monotonic()))
hung = [t.name for t in workers if t.is_alive()]
srv.close()
print(f"counts {counts}")
if hung or errors:
    print(f"FAIL hung={hung} errors={errors[:5]}", file=sys.stderr)
    os._exit(1)
if min(counts.values()) == 0:
    print(f"FAIL some kind of work never completed: {counts}", file=sys.stderr)
    os._exit(1)
print("done")
