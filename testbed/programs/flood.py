"""Bad input for a listener under the shim (issue 12, "Bad input").

    flood.py connect IP:PORT COUNT PARALLEL HOLD_S DEADLINE_S
        COUNT non-blocking connects, at most PARALLEL alive at once. Each one
        is classified: refused (connect failed with ECONNREFUSED), failed
        (another connect error), reset or closed by the other side (RST or
        EOF) within HOLD_S of connecting, data (the other side spoke), or
        open (still connected, silent, after HOLD_S: then closed here).
        Connects unanswered for HOLD_S are connect-timeout; whatever is
        still pending at DEADLINE_S is unfinished. Prints
        `FLOOD n= started= connected= refused= failed= reset= closed= data=
        open= connect_timeout= unfinished= max_call_us= max_verdict_ms=`.
    flood.py datagrams IP:PORT COUNT
        COUNT malformed datagrams to IP:PORT from one socket: empty, random,
        GCB and DPF headers cut short, of another version, or with reserved
        flag bits set.
    flood.py spoof SRC_IP:SRC_PORT IP:PORT COUNT
        The same, sent from a raw socket with a forged source address (for
        example the broker's command port, which a NAT lets through to a
        client's management socket).
    flood.py doorbells IP:PORT COUNT
        COUNT TCP connections from sources in 127.71.0.0/16 (where the shim's
        doorbells come from) to IP:PORT carrying garbage: random bytes,
        records that start like a doorbell (`GCBD`, version 1, each kind)
        with a random rest, a record cut short, or nothing. Prints
        `DOORBELLS n= connected= errors=`.
"""

import errno
import os
import random
import selectors
import socket
import struct
import sys
import time


def addr(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


def garbage(rng):
    """A datagram no GCB or DPF decoder can accept: empty, random, a header
    cut short, or a header of another version or with reserved flag bits.
    (Well-formed messages are left out on purpose: forged as the broker's,
    one could be a real command, which is not what this test is about.)"""
    kind = rng.randrange(5)
    if kind == 0:
        return b""
    if kind == 1:
        return os.urandom(rng.choice([1, 3, 14, 64, 500, 1400]))
    head = rng.choice([b"GCB1", b"DPF1"])
    if kind == 2:
        return (head + os.urandom(11))[: rng.randrange(5, 15)]
    version, flags = (rng.choice([0, 2, 255]), rng.randrange(4)) if kind == 3 else (1, 0x80 | rng.randrange(128))
    body = os.urandom(8 + rng.choice([0, 4, 12, 30, 200]))
    return head + bytes([version, rng.randrange(256), flags]) + body


def doorbell_garbage(rng):
    kind = rng.randrange(4)
    if kind == 0:
        return b""
    if kind == 1:
        return os.urandom(rng.choice([1, 41, 42, 43, 300]))
    record = b"GCBD" + bytes([1, rng.randrange(1, 5), 0, 0]) + os.urandom(34)
    return record if kind == 2 else record[: rng.randrange(1, 42)]


def flood(target, count, parallel, hold_s, deadline_s):
    dest = addr(target)
    sel = selectors.DefaultSelector()
    verdicts = dict.fromkeys(
        ["refused", "failed", "reset", "closed", "data", "open", "connect_timeout"], 0)
    live = {}  # fd -> [sock, state, since]
    started = connected = 0
    max_call = max_verdict = 0.0
    end = time.monotonic() + deadline_s

    def verdict(fd, name):
        nonlocal max_verdict
        sock, _, since = live.pop(fd)
        max_verdict = max(max_verdict, time.monotonic() - since)
        verdicts[name] += 1
        sel.unregister(sock)
        sock.close()

    while (started < count or live) and time.monotonic() < end:
        while started < count and len(live) < parallel:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            t0 = time.perf_counter()
            err = s.connect_ex(dest)
            max_call = max(max_call, time.perf_counter() - t0)
            started += 1
            if err not in (0, errno.EINPROGRESS):
                verdicts["refused" if err == errno.ECONNREFUSED else "failed"] += 1
                s.close()
                continue
            live[s.fileno()] = [s, "connecting", time.monotonic()]
            sel.register(s, selectors.EVENT_WRITE)
        for key, _ in sel.select(timeout=0.05):
            fd = key.fd
            if fd not in live:
                continue
            sock, state, _ = live[fd]
            if state == "connecting":
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    verdict(fd, "refused" if err == errno.ECONNREFUSED else "failed")
                    continue
                connected += 1
                live[fd][1:] = ["held", time.monotonic()]
                sel.modify(sock, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(4096)
                verdict(fd, "data" if data else "closed")
            except ConnectionResetError:
                verdict(fd, "reset")
            except OSError:
                verdict(fd, "failed")
        now = time.monotonic()
        for fd, (_, state, since) in list(live.items()):
            if now - since > hold_s:
                verdict(fd, "open" if state == "held" else "connect_timeout")
    words = " ".join(f"{k}={v}" for k, v in verdicts.items())
    print(f"FLOOD n={count} started={started} connected={connected} {words} unfinished={len(live)} "
          f"max_call_us={max_call * 1e6:.0f} max_verdict_ms={max_verdict * 1e3:.0f}", flush=True)


def datagrams(target, count):
    rng = random.Random(12)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(count):
        s.sendto(garbage(rng), addr(target))
    print(f"DATAGRAMS n={count}", flush=True)


def spoof(source, target, count):
    rng = random.Random(13)
    (sip, sport), (dip, dport) = addr(source), addr(target)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for _ in range(count):
        payload = garbage(rng)
        udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), rng.randrange(65536), 0, 64, 17, 0,
                         socket.inet_aton(sip), socket.inet_aton(dip))
        s.sendto(ip + udp, (dip, 0))
    print(f"SPOOFED n={count}", flush=True)


def doorbells(target, count):
    rng = random.Random(14)
    ok = errors = 0
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.bind((f"127.71.{rng.randrange(256)}.{rng.randrange(1, 255)}", 0))
            s.connect(addr(target))
            ok += 1
            s.sendall(doorbell_garbage(rng))
            if i % 2:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            errors += 1
        finally:
            s.close()
    print(f"DOORBELLS n={count} connected={ok} errors={errors}", flush=True)


def main():
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "connect":
        flood(rest[0], int(rest[1]), int(rest[2]), float(rest[3]), float(rest[4]))
    elif cmd == "datagrams":
        datagrams(rest[0], int(rest[1]))
    elif cmd == "spoof":
        spoof(rest[0], rest[1], int(rest[2]))
    elif cmd == "doorbells":
        doorbells(rest[0], int(rest[1]))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
