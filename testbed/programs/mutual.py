"""A peer that calls its peer before it answers (issue 12, "Mutual connects").

    mutual.py NAME PEER DIR PORT BYTES [BIND_IP]

Listens on BIND_IP:PORT (default 0.0.0.0), writes the address getsockname reports (under the
shim: the advertised one) to DIR/NAME.addr, waits for DIR/PEER.addr, and
then, before any `accept`, makes a blocking `connect` to it (bounded by
SO_SNDTIMEO, timed inside this process). Only once both connects returned
(DIR/NAME.connected and DIR/PEER.connected) it accepts the peer's
connection. On the connection it dialed it sends BYTES of the stream
(NAME, "dial") and expects the stream (PEER, "answer"); on the one it
accepted it sends (NAME, "answer") and expects (PEER, "dial"). Both
directions of both connections run at once; every byte is checked.

Prints, flushed: `ADDR ip:port`, `CONNECT us=N at=T`, `ACCEPT peer=ip:port`,
`DIAL ok bytes=N` / `ANSWER ok bytes=N` (or `... bad ...`), then `DONE ok`
or `ERROR ...`. After `DONE` it stays a minute, listener open, so that the
test can look at the registrations; exit status 0 only when everything
arrived intact.
"""

import hashlib
import os
import socket
import struct
import sys
import threading
import time

WAIT_S = 60


def stream(name, role, size):
    """Bytes nobody could guess without running this function."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(f"{name}/{role}/{i}".encode()).digest()
        i += 1
    return bytes(out[:size])


def exchange(conn, send, expect, label, results):
    errors = []

    def sender():
        try:
            conn.sendall(send)
            conn.shutdown(socket.SHUT_WR)
        except OSError as e:
            errors.append(f"send: {e!r}")

    t = threading.Thread(target=sender)
    t.start()
    got = bytearray()
    try:
        while len(got) <= len(expect):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
    except OSError as e:
        errors.append(f"recv after {len(got)} bytes: {e!r}")
    t.join(WAIT_S)
    if errors:
        results[label] = f"{label} bad {'; '.join(errors)}"
    elif bytes(got) != expect:
        n = min(len(got), len(expect))
        first = next((i for i in range(n) if got[i] != expect[i]), n)
        results[label] = f"{label} bad got={len(got)} expected={len(expect)} first_difference_at={first}"
    else:
        results[label] = f"{label} ok bytes={len(got)}"


def main():
    name, peer, folder, port, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((sys.argv[6] if len(sys.argv) > 6 else "0.0.0.0", port))
    lst.listen(16)
    addr = "%s:%d" % lst.getsockname()
    print(f"ADDR {addr}", flush=True)
    mine = os.path.join(folder, f"{name}.addr")
    with open(mine + ".tmp", "w") as f:
        f.write(addr)
    os.rename(mine + ".tmp", mine)

    theirs = os.path.join(folder, f"{peer}.addr")
    deadline = time.monotonic() + WAIT_S
    while not os.path.exists(theirs):
        if time.monotonic() > deadline:
            print(f"ERROR no {theirs} within {WAIT_S} s", flush=True)
            return 1
        time.sleep(0.01)
    host, pport = open(theirs).read().strip().rsplit(":", 1)

    timeout = struct.pack("ll", 10, 0)
    out = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
    out.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", WAIT_S, 0))
    t0 = time.perf_counter()
    try:
        out.connect((host, int(pport)))
    except OSError as e:
        took = (time.perf_counter() - t0) * 1e6
        print(f"ERROR connect to {host}:{pport}: {e!r} after us={took:.0f}", flush=True)
        return 1
    took = (time.perf_counter() - t0) * 1e6
    print(f"CONNECT us={took:.0f} at={time.time():.6f}", flush=True)

    # A barrier: neither accepts before both connects returned, so neither
    # connect can have been completed by the other program's accept.
    done = os.path.join(folder, f"{name}.connected")
    open(done, "w").close()
    theirs_done = os.path.join(folder, f"{peer}.connected")
    deadline = time.monotonic() + 15
    while not os.path.exists(theirs_done):
        if time.monotonic() > deadline:
            print(f"ERROR {peer} did not connect within 15 s", flush=True)
            return 1
        time.sleep(0.01)

    lst.settimeout(WAIT_S)
    try:
        conn, who = lst.accept()
    except OSError as e:
        print(f"ERROR accept: {e!r}", flush=True)
        return 1
    conn.settimeout(WAIT_S)
    print(f"ACCEPT peer={who[0]}:{who[1]}", flush=True)

    results = {}
    threads = [
        threading.Thread(target=exchange, args=(out, stream(name, "dial", size), stream(peer, "answer", size), "DIAL", results)),
        threading.Thread(target=exchange, args=(conn, stream(name, "answer", size), stream(peer, "dial", size), "ANSWER", results)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * WAIT_S)
    ok = True
    for label in ("DIAL", "ANSWER"):
        line = results.get(label, f"{label} bad unfinished")
        ok = ok and " ok " in line
        print(line, flush=True)
    print("DONE ok" if ok else "ERROR some bytes did not arrive", flush=True)
    # Stay, holding the listener, while the test looks at the broker's state.
    time.sleep(WAIT_S)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
