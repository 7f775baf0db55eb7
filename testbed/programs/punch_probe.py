"""One side of a TCP or UDP hole punch, for measuring (issue 13): no broker, no shim.

    punch_probe.py SIDE          (SIDE is a label, e.g. A or B)

Prints "READY", then runs the trials it reads from stdin, one a line, and
answers each with one line when it is over:

    TRIAL id=N proto=tcp|udp lport=P peer=IP:PORT start_ns=T bound_ms=M
          [retry_us=R] [jitter=0|1] [listen=0|1] [interval_us=I] [other=LABEL]
    RESULT id=N ok=0|1 via=connect|accept|udp t_us=.. attempts=.. late_us=..
           token=ok|bad|none extra=.. errors=NAME:COUNT,.. [heard_us=..] [src=IP:PORT]

start_ns is a CLOCK_MONOTONIC time (shared by every namespace of the machine):
the side prepares its sockets, spins until then, and starts; late_us says how
late it really started. Times are from start_ns. The trial gives up at
start_ns + bound_ms.

TCP: a socket bound to lport (SO_REUSEADDR and SO_REUSEPORT, as a puncher
binds) connects non-blockingly to peer. When the attempt fails (RST, ICMP), a
new socket on the same port tries again after retry_us (0: at once; with
jitter=1, after a time drawn uniformly from 0 to retry_us instead). With
listen=1 a listening socket shares lport the whole time, so a SYN that
arrives between attempts is accepted instead of reset by this host's stack.
The first established connection wins; both sides then exchange a token
("LABEL id") to show it joins the two of them, and extra counts connections
accepted after it.

UDP: a socket bound to lport sends "LABEL id HEARD" to peer every interval_us
(HEARD is 1 once it has heard the other side), until it has heard the other
and knows the other has heard it. heard_us is when the first datagram from
the other arrived, t_us when both knew; src is where that first datagram came
from, which must be the peer's predicted mapping.
"""

import errno
import random
import select
import socket
import sys
import time

SPIN_NS = 2_000_000  # spin (rather than sleep) the last 2 ms before a start


def now():
    return time.monotonic_ns()


def wait_until(t_ns):
    left = t_ns - now()
    if left > SPIN_NS:
        time.sleep((left - SPIN_NS) / 1e9)
    while now() < t_ns:
        pass


def bound(kind, port):
    s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", port))
    s.setblocking(False)
    return s


def name(e):
    return errno.errorcode.get(e, str(e))


class Trial:
    def __init__(self, fields, side):
        self.f = fields
        self.id = fields["id"]
        self.lport = int(fields["lport"])
        host, port = fields["peer"].rsplit(":", 1)
        self.peer = (host, int(port))
        self.start = int(fields["start_ns"])
        self.deadline = self.start + int(fields["bound_ms"]) * 1_000_000
        self.retry = int(fields.get("retry_us", "0")) * 1000
        self.jitter = fields.get("jitter", "0") == "1"
        self.listen = fields.get("listen", "0") == "1"
        self.interval = int(fields.get("interval_us", "10000")) * 1000
        self.me = side
        self.other = fields.get("other", "?")
        self.errors = {}

    def error(self, e):
        self.errors[name(e)] = self.errors.get(name(e), 0) + 1

    def next_try(self):
        """When to try again after a failed attempt."""
        wait = random.randint(0, self.retry) if self.jitter else self.retry
        return now() + wait

    def us(self, t):
        return (t - self.start) // 1000


def token_exchange(conn, t):
    """Each side sends its label and the trial id and reads the other's."""
    conn.setblocking(True)
    conn.settimeout(1.0)
    try:
        conn.sendall(f"{t.me} {t.id}\n".encode())
        got = b""
        while not got.endswith(b"\n") and len(got) < 64:
            chunk = conn.recv(64)
            if not chunk:
                break
            got += chunk
    except OSError:
        return "none"
    return "ok" if got.decode(errors="replace").strip() == f"{t.other} {t.id}" else "bad"


def tcp(t):
    lst = None
    if t.listen:
        lst = bound(socket.SOCK_STREAM, t.lport)
        lst.listen(8)
    wait_until(t.start)
    late = now() - t.start
    s, conn, via, attempts, next_try = None, None, "none", 0, t.start
    while conn is None and now() < t.deadline:
        if s is None and now() >= next_try:
            s = bound(socket.SOCK_STREAM, t.lport)
            attempts += 1
            e = s.connect_ex(t.peer)
            if e not in (0, errno.EINPROGRESS):
                t.error(e)
                s.close()
                s, next_try = None, t.next_try()
                continue
        until = t.deadline if s is not None else min(next_try, t.deadline)
        r, w, _ = select.select([lst] if lst else [], [s] if s else [], [], max(0, until - now()) / 1e9)
        if r:
            try:
                conn, _ = lst.accept()
                via = "accept"
            except BlockingIOError:
                pass
            except OSError as e:
                t.error(e.errno)
        if w and conn is None:
            e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if e == 0:
                conn, s, via = s, None, "connect"
            else:
                t.error(e)
                s.close()
                s, next_try = None, t.next_try()
    done = now()
    if s is not None:
        s.close()
    token, extra = "none", 0
    if conn is not None:
        token = token_exchange(conn, t)
        while lst is not None:
            try:
                lst.accept()[0].close()
                extra += 1
            except OSError:
                break
        conn.close()
    if lst is not None:
        lst.close()
    return {"ok": int(conn is not None and token == "ok"), "via": via, "t_us": t.us(done),
            "attempts": attempts, "late_us": late // 1000, "token": token, "extra": extra}


def udp(t):
    s = bound(socket.SOCK_DGRAM, t.lport)
    wait_until(t.start)
    late = now() - t.start
    heard_at, src, peer_heard, sent, next_send = None, None, False, 0, t.start
    while now() < t.deadline and not (heard_at and peer_heard):
        if now() >= next_send:
            try:
                s.sendto(f"{t.me} {t.id} {int(heard_at is not None)}".encode(), t.peer)
            except OSError as e:
                t.error(e.errno)
            sent += 1
            next_send += t.interval
        r, _, _ = select.select([s], [], [], max(0, min(next_send, t.deadline) - now()) / 1e9)
        if not r:
            continue
        try:
            data, frm = s.recvfrom(256)
        except OSError as e:
            t.error(e.errno)
            continue
        words = data.decode(errors="replace").split()
        if len(words) != 3 or words[:2] != [t.other, t.id]:
            continue
        if heard_at is None:
            heard_at, src = now(), frm
        peer_heard = peer_heard or words[2] == "1"
    done = now()
    if heard_at is not None:
        # The other may still wait to learn that it was heard.
        s.sendto(f"{t.me} {t.id} 1".encode(), t.peer)
    s.close()
    ok = heard_at is not None and peer_heard
    out = {"ok": int(ok), "via": "udp", "t_us": t.us(done), "attempts": sent, "late_us": late // 1000,
           "token": "ok" if ok else "none", "extra": 0}
    if heard_at is not None:
        out["heard_us"] = t.us(heard_at)
        out["src"] = f"{src[0]}:{src[1]}"
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    side = sys.argv[1]
    print("READY", flush=True)
    # Bounded by the driver: it closes stdin (or kills us) when the run is over.
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "TRIAL":
            continue
        fields = dict(w.split("=", 1) for w in words[1:])
        t = Trial(fields, side)
        try:
            res = tcp(t) if fields["proto"] == "tcp" else udp(t)
        except OSError as e:
            t.error(e.errno)
            res = {"ok": 0, "via": "none", "t_us": 0, "attempts": 0, "late_us": 0, "token": "none", "extra": 0}
        res["errors"] = ",".join(f"{k}:{v}" for k, v in sorted(t.errors.items())) or "-"
        print("RESULT id=" + t.id + " " + " ".join(f"{k}={v}" for k, v in res.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
