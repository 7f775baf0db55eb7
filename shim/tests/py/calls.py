"""The interposed calls one by one, through Python and ctypes, under the shim.

Run by tests/passthrough.rs with LD_PRELOAD=libgcb.so and GCB_TEST_HOOKS set to the
comma-separated hook names. With GCB_LOG_FILE set, also checks that the shim's log
fd is protected from close, close_range, closefrom and dup2.
"""
import ctypes
import errno
import fcntl
import os
import platform
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile

# The global scope, as a C program sees it: the preloaded shim's symbols first.
libc = ctypes.CDLL(None, use_errno=True)
c_int, c_uint, c_size_t, c_void_p = ctypes.c_int, ctypes.c_uint, ctypes.c_size_t, ctypes.c_void_p
EPOLL_CTL_ADD, EPOLL_CTL_DEL = 1, 2  # <sys/epoll.h>; the select module does not export them


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_errno(code, fn, *args):
    try:
        fn(*args)
    except OSError as e:
        check(e.errno == code, f"{getattr(fn, '__name__', fn)}: errno {e.errno}, want {code}")
    else:
        raise AssertionError(f"{getattr(fn, '__name__', fn)} did not fail")


def c_call(name, *args, want_errno=None):
    """Calls libc's `name` through the global scope; checks errno on failure."""
    ctypes.set_errno(0)
    r = libc[name](*args)
    e = ctypes.get_errno()
    if want_errno is not None:
        check(r == -1 and e == want_errno, f"{name}: returned {r} errno {e}, want -1/{want_errno}")
    return r


def wait_ok(pid, what, signo=None):
    _, status = os.waitpid(pid, 0)
    if signo is None:
        check(os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"{what}: child status {status:#x}")
    else:
        check(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signo, f"{what}: child status {status:#x}")


def in_child(fn, what, signo=None, quiet=False):
    """Runs fn in a forked child; it passes by returning (exit 0)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if quiet:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
            fn()
            code = 0
        except BaseException as e:  # noqa: BLE001 - report anything, then exit
            print(f"child {what}: {e!r}", file=sys.stderr)
        os._exit(code)
    wait_ok(pid, what, signo)


class DlInfo(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", c_void_p), ("sname", ctypes.c_char_p), ("saddr", c_void_p)]


def symbols_resolve_to_shim():
    names = os.environ["GCB_TEST_HOOKS"].split(",")
    for name in names:
        addr = ctypes.cast(libc[name], c_void_p).value
        info = DlInfo()
        check(libc.dladdr(c_void_p(addr), ctypes.byref(info)) != 0, f"dladdr {name}")
        check(info.fname.endswith(b"/libgcb.so"), f"{name} resolves to {info.fname!r}, not the shim")
    print(f"ok {len(names)} hooks resolve to libgcb.so")


def errno_is_the_real_calls():
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    expect_errno(errno.EBADF, os.close, r)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    c = socket.socket()
    expect_errno(errno.ECONNREFUSED, c.connect, ("127.0.0.1", port))
    c.close()
    a, b = socket.socketpair()
    a.setblocking(False)
    expect_errno(errno.EAGAIN, a.recv, 10)
    c_call("close", -1, want_errno=errno.EBADF)
    c_call("dup2", -1, 5, want_errno=errno.EBADF)
    c_call("fcntl", -1, fcntl.F_GETFD, 0, want_errno=errno.EBADF)
    c_call("listen", -1, 1, want_errno=errno.EBADF)
    c_call("epoll_ctl", a.fileno(), EPOLL_CTL_DEL, b.fileno(), None, want_errno=errno.EINVAL)
    c_call("close_range", 10, 5, 0, want_errno=errno.EINVAL)
    pr, pw = os.pipe()
    c_call("getsockopt", pr, socket.SOL_SOCKET, socket.SO_TYPE, None, None, want_errno=errno.ENOTSOCK)
    # A successful call leaves errno alone, as libc does.
    os.write(pw, b"x")
    buf = ctypes.create_string_buffer(4)
    ctypes.set_errno(1234)
    check(libc.read(pr, buf, 4) == 1 and ctypes.get_errno() == 1234, "errno changed by a successful read")
    # A failed exec returns with the real errno.
    argv = (ctypes.c_char_p * 2)(b"x", None)
    c_call("execve", b"/nonexistent/gcb", argv, argv, want_errno=errno.ENOENT)
    c_call("execv", b"/nonexistent/gcb", argv, want_errno=errno.ENOENT)
    for fd in (pr, pw):
        os.close(fd)
    a.close()
    b.close()
    print("ok errno")


class PollFd(ctypes.Structure):
    _fields_ = [("fd", c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short)]


class Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


class EpollEvent(ctypes.Structure):
    # Packed on x86_64 only, as in <sys/epoll.h>.
    _pack_ = 1 if platform.machine() == "x86_64" else 8
    _fields_ = [("events", ctypes.c_uint32), ("data", ctypes.c_uint64)]


def readiness():
    a, b = socket.socketpair()
    check(select.select([a], [], [], 0)[0] == [], "select: nothing yet")
    b.send(b"x")
    check(select.select([a], [], [], 5)[0] == [a], "select")
    p = select.poll()
    p.register(a, select.POLLIN)
    check(p.poll(5000) == [(a.fileno(), select.POLLIN)], "poll")
    ep = select.epoll()
    ep.register(a.fileno(), select.EPOLLIN | select.EPOLLET)
    check(ep.poll(5) == [(a.fileno(), select.EPOLLIN)], "epoll edge")
    check(ep.poll(0) == [], "epoll edge fires once")
    ep.close()

    fds = (PollFd * 1)(PollFd(a.fileno(), select.POLLIN, 0))
    ts = Timespec(5, 0)
    check(libc.ppoll(fds, 1, ctypes.byref(ts), None) == 1, "ppoll")
    check(libc.__poll_chk(fds, 1, 5000, ctypes.sizeof(fds)) == 1, "__poll_chk")
    check(libc.__ppoll_chk(fds, 1, ctypes.byref(ts), None, ctypes.sizeof(fds)) == 1, "__ppoll_chk")
    fdset = (ctypes.c_ulong * 16)()
    fdset[a.fileno() // 64] |= 1 << (a.fileno() % 64)
    check(libc.pselect(a.fileno() + 1, fdset, None, None, ctypes.byref(ts), None) == 1, "pselect")

    for epfd in (libc.epoll_create(1), libc.epoll_create1(select.EPOLL_CLOEXEC)):
        check(epfd >= 0, "epoll_create")
        ev = EpollEvent(select.EPOLLIN, 77)
        check(libc.epoll_ctl(epfd, EPOLL_CTL_ADD, a.fileno(), ctypes.byref(ev)) == 0, "epoll_ctl")
        out = (EpollEvent * 4)()
        check(libc.epoll_wait(epfd, out, 4, 5000) == 1 and out[0].data == 77, "epoll_wait")
        check(libc.epoll_pwait(epfd, out, 4, 5000, None) == 1, "epoll_pwait")
        check(libc.epoll_pwait2(epfd, out, 4, ctypes.byref(ts), None) == 1, "epoll_pwait2")
        os.close(epfd)
    a.close()
    b.close()
    print("ok select poll ppoll pselect epoll")


class IoVec(ctypes.Structure):
    _fields_ = [("base", c_void_p), ("len", c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(IoVec)),
        ("iovlen", c_size_t), ("control", c_void_p), ("controllen", c_size_t), ("flags", c_int),
    ]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", c_uint)]


def data_calls():
    a, b = socket.socketpair()
    os.write(a.fileno(), b"write")
    check(os.read(b.fileno(), 100) == b"write", "write/read")
    os.writev(a.fileno(), [b"wri", b"tev"])
    bufs = [bytearray(3), bytearray(10)]
    check(os.readv(b.fileno(), bufs) == 6 and bytes(bufs[0] + bufs[1][:3]) == b"writev", "readv")
    buf = ctypes.create_string_buffer(64)
    a.send(b"chk")
    check(libc.__recv_chk(b.fileno(), buf, 64, 64, 0) == 3 and buf.raw[:3] == b"chk", "__recv_chk")
    a.send(b"chk2")
    check(libc.__recvfrom_chk(b.fileno(), buf, 64, 64, 0, None, None) == 4, "__recvfrom_chk")
    a.send(b"chk3")
    check(libc.__read_chk(b.fileno(), buf, 64, 64) == 4 and buf.raw[:4] == b"chk3", "__read_chk")
    check(libc.send(a.fileno(), b"s", 1, 0) == 1 and libc.recv(b.fileno(), buf, 64, 0) == 1, "send/recv")
    a.close()
    b.close()

    u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u1.bind(("127.0.0.1", 0))
    u2.bind(("127.0.0.1", 0))
    u1.connect(u2.getsockname())
    u2.connect(u1.getsockname())
    payloads = [b"first", b"second"]
    keep = [ctypes.create_string_buffer(p, len(p)) for p in payloads]
    iovs = [IoVec(ctypes.cast(k, c_void_p), len(p)) for k, p in zip(keep, payloads)]
    msgs = (MMsgHdr * 2)()
    for i, iov in enumerate(iovs):
        msgs[i].hdr.iov = ctypes.pointer(iov)
        msgs[i].hdr.iovlen = 1
    check(libc.sendmmsg(u1.fileno(), msgs, 2, 0) == 2, "sendmmsg")
    rbufs = [ctypes.create_string_buffer(32) for _ in range(2)]
    riovs = [IoVec(ctypes.cast(r, c_void_p), 32) for r in rbufs]
    rmsgs = (MMsgHdr * 2)()
    for i, iov in enumerate(riovs):
        rmsgs[i].hdr.iov = ctypes.pointer(iov)
        rmsgs[i].hdr.iovlen = 1
    ts = Timespec(5, 0)
    check(libc.recvmmsg(u2.fileno(), rmsgs, 2, 0, ctypes.byref(ts)) == 2, "recvmmsg")
    got = [rbufs[i].raw[: rmsgs[i].len] for i in range(2)]
    check(got == payloads, f"recvmmsg got {got}")
    u1.close()
    u2.close()
    print("ok read write readv writev send recv _chk sendmmsg recvmmsg")


def fortify_still_fails():
    """Over-long lengths end in __chk_fail (SIGABRT), as without the shim."""
    def over(call):
        def run():
            a, b = socket.socketpair()
            a.send(b"0123456789abcdef")
            call(b.fileno(), ctypes.create_string_buffer(4))
        return run

    in_child(over(lambda fd, buf: libc.__recv_chk(fd, buf, 16, 4, 0)), "__recv_chk", signal.SIGABRT, quiet=True)
    in_child(over(lambda fd, buf: libc.__read_chk(fd, buf, 16, 4)), "__read_chk", signal.SIGABRT, quiet=True)
    fds = (PollFd * 1)(PollFd(0, select.POLLIN, 0))
    in_child(lambda: libc.__poll_chk(fds, 2, 0, ctypes.sizeof(fds)), "__poll_chk", signal.SIGABRT, quiet=True)
    print("ok fortify checks abort")


def fd_calls():
    a, b = socket.socketpair()
    d = os.dup(a.fileno())
    os.write(d, b"dup")
    check(b.recv(10) == b"dup", "dup")
    os.dup2(a.fileno(), 200)
    os.write(200, b"dup2")
    check(b.recv(10) == b"dup2", "dup2")
    check(libc.dup3(a.fileno(), 201, os.O_CLOEXEC) == 201, "dup3")
    check(fcntl.fcntl(201, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, "dup3 O_CLOEXEC")
    high = fcntl.fcntl(a.fileno(), fcntl.F_DUPFD, 300)
    check(high >= 300, f"F_DUPFD 300 gave {high}")
    fl = fcntl.fcntl(a.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(a.fileno(), fcntl.F_SETFL, fl | os.O_NONBLOCK)
    check(not os.get_blocking(a.fileno()), "F_SETFL O_NONBLOCK")
    check(libc.fcntl64(a.fileno(), fcntl.F_GETFL, 0) & os.O_NONBLOCK, "fcntl64")
    with tempfile.TemporaryFile() as f:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # F_SETLK with a struct flock pointer
        query = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)
        reply = fcntl.fcntl(f, fcntl.F_GETLK, query)
        check(struct.unpack("hhqqi", reply)[0] == fcntl.F_UNLCK, "F_GETLK writes the struct back")
    for fd in (d, 200, 201, high):
        os.close(fd)
    pipes = [os.pipe() for _ in range(4)]
    lo, hi = min(min(p) for p in pipes), max(max(p) for p in pipes)
    os.closerange(lo, hi + 1)
    c_call("close_range", lo, hi, 0)
    for fd in range(lo, hi + 1):
        expect_errno(errno.EBADF, os.fstat, fd)
    a.close()
    b.close()
    print("ok dup dup2 dup3 fcntl fcntl64 closerange")


def processes():
    def child_sockets():
        a, b = socket.socketpair()
        a.send(b"child")
        check(b.recv(5) == b"child", "socket in a forked child")

    in_child(child_sockets, "fork")
    out = subprocess.run(["/bin/sh", "-c", "echo $((40 + 2))"], capture_output=True, timeout=30)
    check(out.returncode == 0 and out.stdout == b"42\n", f"subprocess: {out}")
    for how in ("execv", "execve", "execvp", "execvpe"):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.dup2(w, 1)
            argv = (ctypes.c_char_p * 3)(b"echo", how.encode(), None)
            env = (ctypes.c_char_p * 2)(b"PATH=/usr/bin:/bin", None)
            if how == "execv":
                libc.execv(b"/bin/echo", argv)
            elif how == "execve":
                libc.execve(b"/bin/echo", argv, env)
            elif how == "execvp":
                libc.execvp(b"echo", argv)
            else:
                libc.execvpe(b"echo", argv, env)
            os._exit(127)
        os.close(w)
        got = os.read(r, 100)
        os.close(r)
        wait_ok(pid, how)
        check(got == how.encode() + b"\n", f"{how} printed {got!r}")
    print("ok fork subprocess execv execve execvp execvpe")


def log_fds(path):
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == path:
                found.append(int(name))
        except OSError:
            pass
    return found


def internal_fd_protected(path):
    fds = log_fds(path)
    check(len(fds) == 1, f"one log fd expected, found {fds}")
    lfd = fds[0]
    check(lfd >= 100, f"log fd {lfd} is not at a high number")
    check(fcntl.fcntl(lfd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, "log fd is CLOEXEC")
    expect_errno(errno.EBADF, os.close, lfd)
    check(log_fds(path) == [lfd], "close() closed the log fd")

    def range_closes():
        os.closerange(3, 65536)
        check(log_fds(path) == [lfd], "closerange closed the log fd")
        c_call("close_range", 3, ctypes.c_uint(0xFFFFFFFF), 0)
        check(log_fds(path) == [lfd], "close_range closed the log fd")
        libc.closefrom(3)
        check(log_fds(path) == [lfd], "closefrom closed the log fd")

    in_child(range_closes, "range closes")
    r, w = os.pipe()
    os.dup2(r, lfd)
    moved = log_fds(path)
    check(len(moved) == 1 and moved[0] != lfd, f"log fd not moved out of the way: {moved}")
    check(os.readlink(f"/proc/self/fd/{lfd}").startswith("pipe:"), "dup2 did not land")
    os.close(lfd)
    os.close(r)
    os.close(w)
    with open(path) as f:
        text = f.read()
    check(f"gcb: debug: internal fd {lfd} moved to {moved[0]}:" in text, "no debug line about the move")
    print("ok log fd protected")


symbols_resolve_to_shim()
errno_is_the_real_calls()
readiness()
data_calls()
fortify_still_fails()
fd_calls()
processes()
# After vfork-based subprocess and exec children: the parent's guard must be free,
# or the protection below would silently pass through.
if os.environ.get("GCB_LOG_FILE"):
    internal_fd_protected(os.environ["GCB_LOG_FILE"])
print("done")
