"""One echo exchange with a server, timed, every byte checked (issue 12).

    echo_peer.py tcp IP:PORT BYTES [TIMEOUT_S]
    echo_peer.py udp IP:PORT BYTES [TIMEOUT_S]

TCP: a blocking `connect` (bounded by SO_SNDTIMEO, as the shim honours it),
timed inside this process; then BYTES random bytes, the write side shut, and
everything read back until the server closes. UDP: one datagram of BYTES
random bytes to IP:PORT and one answer awaited (SO_RCVTIMEO); the answer
must come from IP:PORT.

Prints, flushed, one line each:
    CONNECT us=<microseconds in connect> at=<unix time when it returned>
    SENT at=<unix time>                 (udp)
    PEER <getpeername>                  (tcp)
    ECHO ok bytes=<n> at=<unix time>
or `ECHO bad ...` / `ERROR ...` and exit status 1.
"""

import os
import socket
import struct
import sys
import time


def timeval(seconds):
    return struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))


def check(sent, got):
    if got == sent:
        return None
    n = min(len(sent), len(got))
    first = next((i for i in range(n) if sent[i] != got[i]), n)
    return f"ECHO bad sent={len(sent)} got={len(got)} first_difference_at={first}"


def tcp(host, port, size, timeout):
    data = os.urandom(size)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval(timeout))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(timeout))
    t0 = time.perf_counter()
    try:
        s.connect((host, port))
    except OSError as e:
        took = (time.perf_counter() - t0) * 1e6
        print(f"ERROR connect {e.errno} {os.strerror(e.errno or 0)} us={took:.0f}", flush=True)
        return 1
    took = (time.perf_counter() - t0) * 1e6
    print(f"CONNECT us={took:.0f} at={time.time():.6f}", flush=True)
    peer = s.getpeername()
    print(f"PEER {peer[0]}:{peer[1]}", flush=True)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    got = bytearray()
    try:
        while len(got) <= size:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except OSError as e:
        print(f"ERROR recv after {len(got)} bytes: {e!r}", flush=True)
        return 1
    bad = check(data, bytes(got))
    if bad:
        print(bad, flush=True)
        return 1
    print(f"ECHO ok bytes={len(got)} at={time.time():.6f}", flush=True)
    return 0


def udp(host, port, size, timeout):
    data = os.urandom(size)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(timeout))
    s.sendto(data, (host, port))
    print(f"SENT at={time.time():.6f}", flush=True)
    try:
        got, src = s.recvfrom(65536)
    except OSError as e:
        print(f"ERROR recvfrom: {e!r}", flush=True)
        return 1
    if src != (host, port):
        print(f"ECHO bad from={src[0]}:{src[1]} expected {host}:{port}", flush=True)
        return 1
    bad = check(data, got)
    if bad:
        print(bad, flush=True)
        return 1
    print(f"ECHO ok bytes={len(got)} at={time.time():.6f}", flush=True)
    return 0


def main():
    proto, addr, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 40.0
    host, port = addr.rsplit(":", 1)
    return (tcp if proto == "tcp" else udp)(host, int(port), size, timeout)


if __name__ == "__main__":
    sys.exit(main())
