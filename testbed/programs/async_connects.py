"""Many non-blocking connects from one asyncio event loop (issue 12, "Event
loops").

    async_connects.py --target IP:PORT [--target ...] [--count 100]
                      [--bytes 4096] [--refused IP:PORT ...] [--timeout-s 60]

Runs a selector event loop (epoll) with a 10 ms periodic timer and starts
`--count` connections at once, round-robin over the targets. Each socket is
made non-blocking and connected the way asyncio's own `sock_connect` does it
(`connect_ex`, wait for writable, `SO_ERROR`), so the `connect` call itself
can be timed; the connection then becomes an asyncio stream that sends
`--bytes` random bytes, shuts its write side and must get every byte back.
Each `--refused` address gets one connect that must fail with ECONNREFUSED
through `SO_ERROR`, the call itself having returned EINPROGRESS.

For every `connect` call it records the wall time, the thread's CPU time and
whether the thread slept (a voluntary context switch, getrusage). A call that
took 1 ms or more is `blocked` if it slept, `busy` if it used 1 ms of CPU
without sleeping (the kernel charges the packets it processes in softirq for
every socket to whichever thread is in a system call then), else
`preempted`; `slept` counts the calls that slept at all.

Prints, flushed:
    CALLS n=N einprogress=N immediate=N max_us=X p50_us=X blocked=N max_blocked_us=X
          busy=N max_busy_cpu_us=X preempted=N slept=N returned=NAME:N,...  (one line)
    SLOWCALL addr=IP:PORT us=X kind=blocked|busy|preempted vcsw=N cpu_us=X returned=ERRNO  (as it happens)
    TIMER ticks=N max_gap_ms=X
    TARGET addr=IP:PORT ok=N of=N max_complete_ms=X
    REFUSED addr=IP:PORT returned=NAME so_error=NAME ms=X
    ECHO ok=N bad=N
    DONE ok | ERROR ...
"""

import argparse
import asyncio
import errno
import os
import resource
import socket
import statistics
import sys
import time

SLOW_NS = 1_000_000


class Calls:
    def __init__(self):
        self.wall = []
        self.blocked = []
        self.busy_cpu = []
        self.preempted = 0
        self.slept = 0
        self.returned = {}

    def timed_connect(self, s, addr):
        """connect_ex, timed; a slow call is reported at once (`SLOWCALL`)."""
        r0 = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        err = s.connect_ex(addr)
        t1 = time.perf_counter_ns()
        c1 = time.thread_time_ns()
        r1 = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
        took, cpu = t1 - t0, c1 - c0
        self.wall.append(took)
        self.slept += r1 > r0
        if took >= SLOW_NS:
            if r1 > r0:
                kind = "blocked"
                self.blocked.append(took)
            elif cpu >= SLOW_NS:
                kind = "busy"
                self.busy_cpu.append(cpu)
            else:
                kind = "preempted"
                self.preempted += 1
            print(
                f"SLOWCALL addr={addr[0]}:{addr[1]} us={took / 1e3:.0f} kind={kind} "
                f"vcsw={r1 - r0} cpu_us={cpu / 1e3:.0f} returned={err}",
                flush=True,
            )
        name = errno.errorcode.get(err, str(err)) if err else "0"
        self.returned[name] = self.returned.get(name, 0) + 1
        return err

    def line(self):
        w = self.wall or [0]
        return (
            f"CALLS n={len(self.wall)} einprogress={self.returned.get('EINPROGRESS', 0)} "
            f"immediate={self.returned.get('0', 0)} max_us={max(w) / 1e3:.1f} "
            f"p50_us={statistics.median(w) / 1e3:.1f} blocked={len(self.blocked)} "
            f"max_blocked_us={max(self.blocked or [0]) / 1e3:.1f} busy={len(self.busy_cpu)} "
            f"max_busy_cpu_us={max(self.busy_cpu or [0]) / 1e3:.1f} preempted={self.preempted} "
            f"slept={self.slept} "
            f"returned={','.join(f'{k}:{v}' for k, v in sorted(self.returned.items()))}"
        )


async def writable(loop, s, timeout):
    fut = loop.create_future()
    fd = s.fileno()

    def ready():
        loop.remove_writer(fd)
        if not fut.done():
            fut.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await asyncio.wait_for(fut, timeout)
    finally:
        loop.remove_writer(fd)


async def connect(loop, calls, addr, timeout):
    """Returns (socket, None) once connected, or (None, why)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    err = calls.timed_connect(s, addr)
    if err not in (0, errno.EINPROGRESS):
        s.close()
        return None, f"connect returned {errno.errorcode.get(err, err)}"
    if err == errno.EINPROGRESS:
        try:
            await writable(loop, s, timeout)
        except asyncio.TimeoutError:
            s.close()
            return None, f"not writable within {timeout} s"
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            s.close()
            return None, f"SO_ERROR {errno.errorcode.get(err, err)}"
    return s, None


async def echo(loop, calls, addr, size, timeout, started):
    s, why = await connect(loop, calls, addr, timeout)
    if s is None:
        return False, why, 0.0
    complete_ms = (time.perf_counter() - started) * 1e3
    reader, writer = await asyncio.open_connection(sock=s)
    data = os.urandom(size)
    writer.write(data)
    await writer.drain()
    writer.write_eof()
    got = bytearray()
    try:
        while len(got) <= size:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                break
            got += chunk
    except (OSError, asyncio.TimeoutError) as e:
        writer.close()
        return False, f"after {len(got)} bytes: {e!r}", complete_ms
    writer.close()
    if bytes(got) != data:
        return False, f"echo differs: got {len(got)} of {size}", complete_ms
    return True, None, complete_ms


async def refused(loop, calls, addr, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    t0 = time.perf_counter()
    err = calls.timed_connect(s, addr)
    returned = errno.errorcode.get(err, str(err)) if err else "0"
    so_error = "none"
    if err == errno.EINPROGRESS:
        try:
            await writable(loop, s, timeout)
            e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            so_error = errno.errorcode.get(e, str(e)) if e else "0"
        except asyncio.TimeoutError:
            so_error = "not-writable"
    s.close()
    ms = (time.perf_counter() - t0) * 1e3
    return f"REFUSED addr={addr[0]}:{addr[1]} returned={returned} so_error={so_error} ms={ms:.0f}"


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", action="append", default=[])
    ap.add_argument("--refused", action="append", default=[])
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--bytes", type=int, default=4096)
    ap.add_argument("--timeout-s", type=float, default=60)
    a = ap.parse_args()
    addr = lambda s: (s.rsplit(":", 1)[0], int(s.rsplit(":", 1)[1]))
    loop = asyncio.get_running_loop()
    calls = Calls()

    ticks, gaps, stop = [0], [0.0], asyncio.Event()

    async def ticker():
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps[0] = max(gaps[0], now - last)
            ticks[0] += 1
            last = now

    timer = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    targets = [a.target[i % len(a.target)] for i in range(a.count)]
    jobs = [echo(loop, calls, addr(t), a.bytes, a.timeout_s, started) for t in targets]
    jobs += [refused(loop, calls, addr(t), a.timeout_s) for t in a.refused]
    results = await asyncio.gather(*jobs)
    stop.set()
    await timer

    print(calls.line(), flush=True)
    print(f"TIMER ticks={ticks[0]} max_gap_ms={gaps[0] * 1e3:.1f}", flush=True)
    bad = []
    for t in a.target:
        mine = [r for r, tt in zip(results, targets) if tt == t]
        ok = sum(1 for r in mine if r[0])
        worst = max((r[2] for r in mine), default=0.0)
        print(f"TARGET addr={t} ok={ok} of={len(mine)} max_complete_ms={worst:.0f}", flush=True)
        bad += [f"{t}: {r[1]}" for r in mine if not r[0]]
    for line in results[len(targets):]:
        print(line, flush=True)
    print(f"ECHO ok={a.count - len(bad)} bad={len(bad)}", flush=True)
    for b in bad[:20]:
        print(f"FAILED {b}", flush=True)
    print("DONE ok" if not bad else f"ERROR {len(bad)} connections failed", flush=True)
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
