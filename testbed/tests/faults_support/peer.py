"""A plain-socket test peer for the fault tests, run unmodified under the shim.

  peer.py server PORT      listen on 0.0.0.0:PORT; print 'NAME ip:port' (getsockname)
                           at start and whenever it changes (a broker failover);
                           echo every connection on a thread of its own and print
                           'ACCEPT ip:port' and 'END ip:port reason bytes=N'
  peer.py stream IP:PORT   connect, then echo 4 KiB blocks in a loop, checking every
                           byte; print 'CONNECTED', 'PROGRESS bytes=N' now and then,
                           and 'END reason bytes=N' when the connection ends
                           (reason: eof, an errno name, timeout or corrupt)
  peer.py many N           listen on N sockets on kernel-chosen ports and wait in
                           select; print 'REGISTERED k' whenever the number whose
                           getsockname is not 0.0.0.0 (registered) changes
  peer.py exhaust IP:PORT  lower RLIMIT_NOFILE to 64, fill the table, report what a
                           socket, a brokered connect and a listen get ('WHAT ok' or
                           'WHAT ERRNO'), close fds, listen and connect again

Every wait is bounded (socket timeouts), so a hang shows up as 'timeout'.
"""
import errno
import os
import resource
import select
import socket
import sys
import threading
import time


OUT = threading.Lock()


def say(*words):
    # One write per line under a lock: threads must not interleave lines.
    line = " ".join(str(w) for w in words) + "\n"
    with OUT:
        sys.stdout.write(line)
        sys.stdout.flush()


def reason_of(e):
    if isinstance(e, socket.timeout):
        return "timeout"
    return errno.errorcode.get(e.errno, str(e.errno))


def pattern(n, offset):
    return bytes(((offset + i) * 7 + 13) & 0xFF for i in range(n))


def serve_one(conn, peer):
    total = 0
    conn.settimeout(120)
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                say("END", peer, "eof", f"bytes={total}")
                return
            conn.sendall(data)
            total += len(data)
    except OSError as e:
        say("END", peer, reason_of(e), f"bytes={total}")
    finally:
        conn.close()


def server(port):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(64)
    ls.settimeout(0.2)
    name = None
    while True:
        now = "%s:%d" % ls.getsockname()
        if now != name:
            name = now
            say("NAME", name)
        try:
            conn, addr = ls.accept()
        except socket.timeout:
            continue
        peer = "%s:%d" % addr
        say("ACCEPT", peer)
        threading.Thread(target=serve_one, args=(conn, peer), daemon=True).start()


def stream(dest):
    ip, port = dest.rsplit(":", 1)
    s = socket.create_connection((ip, int(port)), timeout=30)
    s.settimeout(30)
    say("CONNECTED")
    total, last = 0, 0
    try:
        while True:
            block = pattern(4096, total)
            s.sendall(block)
            got = b""
            while len(got) < len(block):
                more = s.recv(len(block) - len(got))
                if not more:
                    say("END eof", f"bytes={total}")
                    return
                got += more
            if got != block:
                say("END corrupt", f"bytes={total}")
                return
            total += len(block)
            if total - last >= 256 * 1024:
                last = total
                say("PROGRESS", f"bytes={total}")
            time.sleep(0.002)
    except OSError as e:
        say("END", reason_of(e), f"bytes={total}")


def attempt(what, f):
    try:
        r = f()
        say(what, "ok")
        return r
    except OSError as e:
        say(what, reason_of(e))
        return None


def exhaust(dest):
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    held = []
    for _ in range(200):
        try:
            held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as e:
            say("FILLED", reason_of(e))
            break
    attempt("SOCKET", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    ip, port = dest.rsplit(":", 1)
    # One free slot: the application's socket gets it, the shim's own sockets cannot.
    os.close(held.pop())
    c = attempt("SOCKET-FOR-CONNECT", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    c.settimeout(30)
    attempt("CONNECT-EXHAUSTED", lambda: c.connect((ip, int(port))))
    c.close()
    ls = attempt("SOCKET-FOR-LISTEN", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    ls.bind(("0.0.0.0", 0))
    attempt("LISTEN-EXHAUSTED", lambda: ls.listen(8))
    for fd in held[:32]:
        os.close(fd)
    del held[:32]
    attempt("LISTEN-AGAIN", lambda: ls.listen(8))
    say("NAME", "%s:%d" % ls.getsockname())
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.settimeout(30)
    attempt("CONNECT-AFTER", lambda: c.connect((ip, int(port))))
    try:
        c.sendall(b"after exhaustion")
        got = b""
        while len(got) < 16:
            more = c.recv(16 - len(got))
            if not more:
                break
            got += more
        say("ECHO", got.decode(errors="replace"))
    except OSError as e:
        say("ECHO", reason_of(e))
    say("DONE")


def many(n):
    listeners = []
    for _ in range(int(n)):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("0.0.0.0", 0))
        s.listen(8)
        listeners.append(s)
    say("OPENED", len(listeners))
    last = None
    while True:
        # Waiting in select runs the shim's heartbeats and registration retries.
        select.select(listeners, [], [], 0.5)
        registered = sum(1 for s in listeners if s.getsockname()[0] != "0.0.0.0")
        if registered != last:
            last = registered
            say("REGISTERED", registered)


if __name__ == "__main__":
    {"server": lambda a: server(int(a)), "stream": stream, "exhaust": exhaust, "many": many}[sys.argv[1]](sys.argv[2])
