"""Servers that run children, for testbed/tests/children.rs; run unmodified
under the shim. Plain sockets and the standard library only.

  children.py serve TCP_PORT UDP_PORT
      A TCP echo listener on 0.0.0.0:TCP_PORT and a UDP echo socket on
      0.0.0.0:UDP_PORT, each served by a thread of its own in its blocking
      call ('SERVED PID' after each TCP connection). Prints 'NAME tcp ADDR'
      and 'NAME udp ADDR' (getsockname). Then reads step names on stdin, one
      a line, runs each to its end on the main thread and prints
      'STEP NAME ok ms=N tcp=ADDR udp=ADDR DETAIL' (the names again, so a
      changed address shows) or 'STEP NAME failed WHY'. Steps: subprocess,
      system, popen (Python's), c-popen (glibc's), posix_spawn, mp-fork,
      mp-spawn, mp-forkserver.

  children.py prefork PORT N
      Listens on 0.0.0.0:PORT, prints 'NAME tcp ADDR', forks N children that
      each accept on the inherited listener and echo, one connection at a
      time, printing 'SERVED PID' per connection; the parent never accepts.
      It prints 'CHILD PID' for each child, then waits for a line on stdin,
      prints 'EXITING' and exits normally with the listener still open. A
      child exits 0 on SIGTERM after closing its copy of the listener.

Pre-fork children outlive their parent; the test bed's teardown stops them
with everything else in its namespaces.
"""
import ctypes
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from serving import name, say, serve as serve_tcp, tcp_listener


def double(conn, x):
    """What each multiprocessing child runs: a trivial function, its answer
    sent back so the parent knows it really ran there."""
    conn.send((os.getpid(), 2 * x))
    conn.close()


def run_mp(method):
    ctx = multiprocessing.get_context(method)
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=double, args=(w, 21))
    p.start()
    w.close()
    if not r.poll(60):
        raise RuntimeError("no answer from the child within 60 s")
    pid, got = r.recv()
    p.join(60)
    if got != 42 or pid == os.getpid() or p.exitcode != 0:
        raise RuntimeError(f"child {pid} answered {got}, exit code {p.exitcode}")
    return f"child={pid} answer={got}"


def run_step(step):
    if step == "subprocess":
        # CPython's _posixsubprocess: vfork, then close_range on the fds.
        rc = subprocess.run(["true"]).returncode
        if rc != 0:
            raise RuntimeError(f"true exited {rc}")
        return "rc=0"
    if step == "system":
        st = os.system("true")
        if st != 0:
            raise RuntimeError(f"system returned {st}")
        return "status=0"
    if step == "popen":
        # Python's os.popen is subprocess underneath.
        out = os.popen("echo x").read()
        if out != "x\n":
            raise RuntimeError(f"popen read {out!r}")
        return "read=x"
    if step == "c-popen":
        # glibc's popen (posix_spawn underneath), through ctypes.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.popen.restype = ctypes.c_void_p
        libc.popen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.fgets.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
        libc.pclose.argtypes = [ctypes.c_void_p]
        f = libc.popen(b"echo x", b"r")
        if not f:
            raise RuntimeError(f"popen: errno {ctypes.get_errno()}")
        buf = ctypes.create_string_buffer(16)
        libc.fgets(buf, 16, f)
        st = libc.pclose(f)
        if buf.value != b"x\n" or st != 0:
            raise RuntimeError(f"popen read {buf.value!r}, pclose {st}")
        return "read=x"
    if step == "posix_spawn":
        # glibc's posix_spawn itself (os.posix_spawn calls it): CLONE_VM and
        # CLONE_VFORK, the child closing the listeners before its exec.
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 7"], dict(os.environ),
                             file_actions=[(os.POSIX_SPAWN_CLOSE, fd) for fd in LISTENER_FDS])
        _, st = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(st) != 7:
            raise RuntimeError(f"sh exited {st}")
        return f"child={pid} rc=7"
    if step.startswith("mp-"):
        return run_mp(step[3:])
    raise RuntimeError(f"unknown step {step}")


LISTENER_FDS = []


def echo_udp(us):
    while True:
        data, peer = us.recvfrom(65536)
        us.sendto(data, peer)


def serve(tcp_port, udp_port):
    ls = tcp_listener(tcp_port)
    us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    us.bind(("0.0.0.0", udp_port))
    LISTENER_FDS.extend([ls.fileno(), us.fileno()])
    say("NAME tcp", name(ls))
    say("NAME udp", name(us))
    # A thread per socket, each in its blocking call, and the children run
    # from the main thread meanwhile, as a daemon's control loop would.
    threading.Thread(target=serve_tcp, args=(ls,), daemon=True).start()
    threading.Thread(target=echo_udp, args=(us,), daemon=True).start()
    for line in sys.stdin:
        step = line.strip()
        start = time.monotonic()
        try:
            detail = run_step(step)
        except Exception as e:  # reported, not fatal: the test decides
            say("STEP", step, "failed", repr(e).replace("\n", " "))
            continue
        ms = round((time.monotonic() - start) * 1000)
        say("STEP", step, "ok", f"ms={ms}", f"tcp={name(ls)}", f"udp={name(us)}", detail)


def prefork_child(ls):
    def stop(*_):
        ls.close()
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    serve_tcp(ls)


def prefork(port, n):
    ls = tcp_listener(port)
    say("NAME tcp", name(ls))
    children = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            prefork_child(ls)
        children.append(pid)
    for pid in children:
        say("CHILD", pid)
    sys.stdin.readline()
    say("EXITING")
    # A normal interpreter exit, the listener still open: finalisation closes it.
    sys.exit(0)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1] == "prefork":
        prefork(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(f"usage: see {sys.argv[0]}'s docstring")
