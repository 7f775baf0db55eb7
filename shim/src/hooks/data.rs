//! Moving bytes: `recv`, `recvfrom`, `recvmsg`, `recvmmsg`, `read`, `readv`, `send`,
//! `sendto`, `sendmsg`, `sendmmsg`, `write`, `writev`, and the fortified `__recv_chk`,
//! `__recvfrom_chk` and `__read_chk`.
//!
//! `read` and `write` run for every file a program touches, so the fast path is what
//! matters here: the guard, one table load, the real call.
//!
//! # GCB for UDP
//!
//! Reads of a `Managed` UDP socket (registered, or brokered as a sender) and the
//! sends that name a destination on a GCB-mode UDP socket (`WatchedUdp` too) go
//! to [`crate::gcb::udp`] through `managed`; `send`, `write` and `writev` carry no
//! destination and stay on the fast path (a failed one is looked at: a lost UDP
//! channel's `ECONNREFUSED` is not the application's).
//!
//! # The fortified entry points
//!
//! Programs built with `_FORTIFY_SOURCE` call `__recv_chk(fd, buf, len, buflen,
//! flags)` where the source says `recv`, with `buflen` the compiler's idea of the
//! buffer size. Two things must hold: the overflow check must stay (a shim must not
//! weaken a hardened binary), and a managed fd must get the same treatment as
//! through `recv` (libc's `__recv_chk` calls its internal `recv`, which would bypass
//! the shim). So: an fd the shim does not manage goes to libc's own `__*_chk`, which
//! is exactly the behaviour without the shim; a managed one is checked here with
//! glibc's condition (`len > buflen` ends in `__chk_fail`) and then takes the path
//! of the plain call.

use libc::{c_int, c_uint, c_void, iovec, mmsghdr, msghdr, size_t, sockaddr, socklen_t, ssize_t, timespec};

use super::fortify;
use crate::fdtable;
use crate::{detour, managed, real};

hook! {
    fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t {
        detour_or_real!(detour::managed_only(fd) => recv(fd, buf, len, flags))
    }
}

hook! {
    fn recvfrom(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int, addr: *mut sockaddr, addrlen: *mut socklen_t) -> ssize_t {
        detour_or_real!(detour::managed_only(fd) => recvfrom(fd, buf, len, flags, addr, addrlen))
    }
}

hook! {
    /// A listener received over a unix socket (`SCM_RIGHTS`) is taken on
    /// (`gcb::received`): looked at only when the message has control data.
    fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
        let n = detour_or_real!(detour::managed_only(fd) => recvmsg(fd, msg, flags));
        if n >= 0 && crate::gcb::received::may_carry_fds(msg) && crate::gcb::mode::enabled() {
            // Received: the message is the program's whatever happens here.
            crate::guard::bookkeep(|| crate::gcb::received::on_received(msg));
        }
        n
    }
}

hook! {
    fn recvmmsg(fd: c_int, msgvec: *mut mmsghdr, vlen: c_uint, flags: c_int, timeout: *mut timespec) -> c_int {
        detour_or_real!(detour::managed_only(fd) => recvmmsg(fd, msgvec, vlen, flags, timeout))
    }
}

hook! {
    fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
        detour_or_real!(detour::managed_only(fd) => read(fd, buf, count))
    }
}

hook! {
    fn readv(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t {
        detour_or_real!(detour::managed_only(fd) => readv(fd, iov, iovcnt))
    }
}

hook! {
    fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t {
        detour_or_real!(detour::managed_only(fd) => send(fd, buf, len, flags))
    }
}

hook! {
    fn sendto(fd: c_int, buf: *const c_void, len: size_t, flags: c_int, addr: *const sockaddr, addrlen: socklen_t) -> ssize_t {
        detour_or_real!(detour::send_to(fd) => sendto(fd, buf, len, flags, addr, addrlen))
    }
}

hook! {
    /// A listener sent to another process (`SCM_RIGHTS`) is shared from then on.
    fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
        let n = detour_or_real!(detour::send_to(fd) => sendmsg(fd, msg, flags));
        if n >= 0 && fdtable::any_managed() && crate::gcb::received::may_carry_fds(msg) && crate::gcb::mode::enabled() {
            // Sent, and not to be sent again.
            crate::guard::bookkeep(|| crate::gcb::received::on_sent(msg));
        }
        n
    }
}

hook! {
    fn sendmmsg(fd: c_int, msgvec: *mut mmsghdr, vlen: c_uint, flags: c_int) -> c_int {
        detour_or_real!(detour::send_to(fd) => sendmmsg(fd, msgvec, vlen, flags))
    }
}

hook! {
    fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
        detour_or_real!(detour::managed_only(fd) => write(fd, buf, count))
    }
}

hook! {
    fn writev(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t {
        detour_or_real!(detour::managed_only(fd) => writev(fd, iov, iovcnt))
    }
}

hook! {
    fn __recv_chk(fd: c_int, buf: *mut c_void, len: size_t, buflen: size_t, flags: c_int) -> ssize_t {
        if detour::managed_only(fd).is_err() {
            return real::__recv_chk(fd, buf, len, buflen, flags);
        }
        fortify(len <= buflen);
        managed::recv(fd, buf, len, flags)
    }
}

hook! {
    fn __recvfrom_chk(fd: c_int, buf: *mut c_void, len: size_t, buflen: size_t, flags: c_int, addr: *mut sockaddr, addrlen: *mut socklen_t) -> ssize_t {
        if detour::managed_only(fd).is_err() {
            return real::__recvfrom_chk(fd, buf, len, buflen, flags, addr, addrlen);
        }
        fortify(len <= buflen);
        managed::recvfrom(fd, buf, len, flags, addr, addrlen)
    }
}

hook! {
    fn __read_chk(fd: c_int, buf: *mut c_void, nbytes: size_t, buflen: size_t) -> ssize_t {
        if detour::managed_only(fd).is_err() {
            return real::__read_chk(fd, buf, nbytes, buflen);
        }
        fortify(nbytes <= buflen);
        managed::read(fd, buf, nbytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdtable::Kind;

    #[test]
    fn recv_chk_on_a_managed_fd_checks_then_takes_the_recv_path() {
        let mut sv = [0; 2];
        // SAFETY: socketpair writes two fds into `sv`.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) }, 0);
        let (a, b) = (sv[0], sv[1]);
        fdtable::set(b, Kind::Managed);
        crate::init::ensure();
        let mut buf = [0u8; 8];
        // SAFETY: the buffers are live and as long as stated (or longer).
        unsafe {
            assert_eq!(real::write(a, b"hello".as_ptr().cast(), 5), 5);
            assert_eq!(__recv_chk(b, buf.as_mut_ptr().cast(), 8, 8, 0), 5);
            assert_eq!(&buf[..5], b"hello");
            // Over-long: glibc's verdict, SIGABRT, in a child (with its stderr quiet).
            let pid = libc::fork();
            if pid == 0 {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                libc::dup2(null, 2);
                __recv_chk(b, buf.as_mut_ptr().cast(), 16, 8, 0);
                libc::_exit(0);
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT, "status {status:#x}");
            fdtable::set(b, Kind::Plain);
            real::close(a);
            real::close(b);
        }
    }
}
