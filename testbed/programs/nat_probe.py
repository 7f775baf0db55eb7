"""Plain-socket probes of a test-bed gateway's NAT kind (testbed/tests/nat_kinds.rs).

    nat_probe.py listen tcp|udp PORT COUNT [TIMEOUT_S] [--abort]
        Prints "LISTEN proto PORT", then "PEER ip:port" for each of COUNT
        connections accepted (or datagrams received), as the receiver sees
        the sender: the sender's public mapping when it is behind NAT. With
        --abort, each accepted connection is closed with a RST (SO_LINGER 0).
    nat_probe.py fanout tcp|udp LOCAL_PORT DEST... [--timeout S]
        One socket per DEST, all bound to LOCAL_PORT (SO_REUSEADDR and
        SO_REUSEPORT, as a hole puncher binds), each connected (TCP) or sent
        one datagram (UDP); prints "SENT DEST" (or "FAILED DEST ERROR") for
        each, then holds the sockets until stdin closes, so the mappings stay
        while the receivers report.
    nat_probe.py connect tcp|udp LOCAL_PORT DEST TIMEOUT_S
        One connect (TCP) or one datagram on a connected socket and a wait for
        an answer or an error (UDP); prints "RESULT connected|refused|timeout|
        answered|error:ERRNO".
    nat_probe.py pending tcp|udp LOCAL_PORT DEST
        Starts a non-blocking connect (TCP) or sends one datagram on a connected
        socket (UDP), prints "STARTED", then answers each stdin line "state"
        with "STATE in-progress|connected|refused|error:ERRNO" (TCP) or
        "STATE nothing|refused|answered|error:ERRNO" (UDP), looking without
        waiting. Exits when stdin closes.

LOCAL_PORT 0 lets the kernel choose. Every wait is bounded: the holding
commands give up after HOLD_S even if stdin stays open.
"""

import errno
import select
import socket
import struct
import sys
import time

HOLD_S = 120.0


def stdin_lines():
    """Lines of stdin until it closes or HOLD_S have passed."""
    deadline = time.monotonic() + HOLD_S
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sys.stdin], [], [], left)[0]:
            return
        line = sys.stdin.readline()
        if not line:
            return
        yield line


def bound_socket(proto, port, reuse):
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    if reuse:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", port))
    return s


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def say(line):
    print(line, flush=True)


def listen(proto, port, count, timeout, abort):
    s = bound_socket(proto, port, True)
    if proto == "tcp":
        s.listen(16)
    s.settimeout(timeout)
    say(f"LISTEN {proto} {port}")
    for _ in range(count):
        if proto == "tcp":
            c, peer = s.accept()
            if abort:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        else:
            _, peer = s.recvfrom(2048)
        say(f"PEER {peer[0]}:{peer[1]}")
    return 0


def fanout(proto, port, dests, timeout):
    held = []
    for d in dests:
        s = bound_socket(proto, port, True)
        try:
            if proto == "tcp":
                s.settimeout(timeout)
                s.connect(addr(d))
            else:
                s.sendto(b"fanout", addr(d))
        except OSError as e:
            say(f"FAILED {d} {err_name(e.errno)}")
            continue
        held.append(s)
        say(f"SENT {d}")
    # Hold the sockets (and so the mappings) until the test is done with them.
    for _ in stdin_lines():
        pass
    return 0


def err_name(e):
    return "refused" if e == errno.ECONNREFUSED else f"error:{errno.errorcode.get(e, e)}"


def connect(proto, port, dest, timeout):
    s = bound_socket(proto, port, True)
    s.settimeout(timeout)
    try:
        s.connect(addr(dest))
        if proto == "udp":
            s.send(b"probe")
            s.recv(2048)
            say("RESULT answered")
            return 0
        say("RESULT connected")
    except socket.timeout:
        say("RESULT timeout")
    except OSError as e:
        say(f"RESULT {err_name(e.errno)}")
    return 0


def tcp_state(s):
    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        return err_name(err)
    _, w, _ = select.select([], [s], [], 0)
    return "connected" if w else "in-progress"


def udp_state(s):
    try:
        s.recv(2048, socket.MSG_DONTWAIT)
        return "answered"
    except BlockingIOError:
        return "nothing"
    except OSError as e:
        return err_name(e.errno)


def pending(proto, port, dest):
    s = bound_socket(proto, port, True)
    s.setblocking(False)
    # An error is reported once by the kernel: remember the first one seen.
    seen = None
    if proto == "tcp":
        e = s.connect_ex(addr(dest))
        if e not in (0, errno.EINPROGRESS):
            seen = err_name(e)
    else:
        s.connect(addr(dest))
        s.send(b"probe")
    say("STARTED")
    for line in stdin_lines():
        if line.strip() != "state":
            continue
        st = seen or (tcp_state(s) if proto == "tcp" else udp_state(s))
        if st not in ("in-progress", "nothing", "connected"):
            seen = st
        say(f"STATE {st}")
    return 0


def main():
    a = sys.argv[1:]
    if len(a) < 3:
        sys.exit(__doc__)
    cmd, proto = a[0], a[1]
    if proto not in ("tcp", "udp"):
        sys.exit(f"nat_probe: protocol must be tcp or udp, not {proto!r}")
    if cmd == "listen":
        abort = "--abort" in a
        a = [w for w in a if w != "--abort"]
        return listen(proto, int(a[2]), int(a[3]), float(a[4]) if len(a) > 4 else 30.0, abort)
    if cmd == "fanout":
        timeout = 10.0
        if "--timeout" in a:
            i = a.index("--timeout")
            timeout = float(a[i + 1])
            a = a[:i] + a[i + 2:]
        return fanout(proto, int(a[2]), a[3:], timeout)
    if cmd == "connect":
        return connect(proto, int(a[2]), a[3], float(a[4]))
    if cmd == "pending":
        return pending(proto, int(a[2]), a[3])
    sys.exit(f"nat_probe: unknown command {cmd!r}")


if __name__ == "__main__":
    sys.exit(main())
