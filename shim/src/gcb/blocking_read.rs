//! Blocking reads on connections the shim names (`Named`: accepted from a
//! registered listener, or brokered by the connector), while the process holds a
//! registration: `read`, `readv`, `recv`, `recvfrom` and `recvmsg` (and, through
//! the hooks, `__read_chk`, `__recv_chk` and `__recvfrom_chk`). A server that sits
//! in a long `read` on a connection must still heartbeat and answer the broker
//! (DESIGN.md, "The asynchronous event handler").
//!
//! # The path
//!
//! 1. The real call with `MSG_DONTWAIT` added (`read` and `readv` become `recv`
//!    and `recvmsg`, the same thing on a socket). Data, end of file or an error
//!    other than `EAGAIN` is the answer, as is: one system call, as without the
//!    shim, whenever data is waiting.
//! 2. `EAGAIN` on a socket the application made non-blocking (`O_NONBLOCK`): the
//!    answer too (one `fcntl` more). Calls with `MSG_DONTWAIT`, `MSG_OOB` or
//!    `MSG_ERRQUEUE`, which never block, are the real call alone.
//! 3. Otherwise [`aeh::wait`] on `[fd POLLIN]`, the very wait `accept` and the
//!    interposed `poll` use: it waits on the management sockets too and runs the
//!    AEH when one is readable or a heartbeat is due. Once the fd is readable, back
//!    to 1. Trying again with `MSG_DONTWAIT` rather than blocking means a thread
//!    that loses the data to another thread reading the same socket waits in the
//!    AEH again instead of blocking outside it. No lock is held across the wait.
//!
//! # Semantics kept
//!
//! * `SO_RCVTIMEO` (read with `getsockopt` only once a call would block) bounds
//!   the wait from that moment; at the bound the call fails with `EAGAIN`, as the
//!   kernel's does.
//! * Signals: a handler that interrupts the wait makes the call fail with
//!   `EINTR`, unless every caught signal has `SA_RESTART`, in which case the wait
//!   goes on, as the kernel restarts the call ([`aeh::signal_restarts`], the rule
//!   `accept` follows; which signal it was is unknown, so one handler without the
//!   flag is enough for `EINTR`). With `SO_RCVTIMEO` set the answer is always
//!   `EINTR`: the kernel never restarts a socket receive that has a timeout
//!   (signal(7)).
//! * `MSG_PEEK` keeps its meaning (the `MSG_DONTWAIT` attempt peeks too).
//! * `MSG_WAITALL` on a blocking socket: the first attempt is a one-byte
//!   `MSG_PEEK | MSG_DONTWAIT` probe, since a non-blocking `MSG_WAITALL` would
//!   return a short count. Once something is there (data, end of file), the real
//!   call runs with the application's flags and may block again until every byte
//!   has arrived, without the AEH: the waiting for the *rest* of a message is not
//!   covered. An error the probe reports is returned as the answer (reporting it
//!   clears it in the kernel).
//! * `errno` after a successful call is the application's, not the `EAGAIN` of a
//!   first attempt.
//!
//! # Caveats
//!
//! * `SO_RCVLOWAT`: a `MSG_DONTWAIT` attempt returns what is queued even below
//!   the low-water mark, where a blocking call would wait for the mark.
//! * A reader that always finds data waiting never enters the wait, so it runs no
//!   AEH here; the AEH runs in the process's next call that would block.

use std::time::Instant;

use libc::{c_int, c_void, iovec, msghdr, pollfd, size_t, sockaddr, socklen_t, ssize_t};

use super::aeh::{self, Waited};
use super::sys;
use crate::fdtable::{self, Kind};
use crate::hook::{errno, set_errno};
use crate::real;

/// Flags that make a receive non-blocking by nature: the real call alone.
const NEVER_BLOCKS: c_int = libc::MSG_DONTWAIT | libc::MSG_OOB | libc::MSG_ERRQUEUE;

/// The kernel's limit on iovecs (`UIO_MAXIOV`); beyond it `readv` fails with
/// `EINVAL` and `recvmsg` with `EMSGSIZE`, so such calls go to the real `readv`.
const UIO_MAXIOV: c_int = 1024;

/// Whether a read of `kind` takes this module's path: a connection the shim
/// names, in a GCB process that holds a registration (DPF marks its UDP forwards
/// `Named` too; they keep their own path). Two more relaxed loads on top of the
/// hook's table load, for `Named` fds only.
#[inline]
pub fn applies(kind: Kind) -> bool {
    kind == Kind::Named && fdtable::any_managed() && super::enabled()
}

/// # Safety
///
/// The C contract of `recv`.
pub unsafe fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t {
    receive(fd, flags, |f| real::recv(fd, buf, len, f))
}

/// # Safety
///
/// The C contract of `recvfrom`.
pub unsafe fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    addrlen: *mut socklen_t,
) -> ssize_t {
    receive(fd, flags, |f| real::recvfrom(fd, buf, len, f, addr, addrlen))
}

/// # Safety
///
/// The C contract of `recvmsg`.
pub unsafe fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    receive(fd, flags, |f| real::recvmsg(fd, msg, f))
}

/// `read` on a socket: `recv` without flags.
///
/// # Safety
///
/// The C contract of `read`.
pub unsafe fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    let r = receive(fd, 0, |f| real::recv(fd, buf, count, f));
    if r < 0 && errno() == libc::ENOTSOCK {
        return real::read(fd, buf, count);
    }
    r
}

/// `readv` on a socket: `recvmsg` without flags over the same iovecs.
///
/// # Safety
///
/// The C contract of `readv`.
pub unsafe fn readv(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t {
    if !(0..=UIO_MAXIOV).contains(&iovcnt) {
        return real::readv(fd, iov, iovcnt);
    }
    // SAFETY: all-zero is a valid msghdr (no name, no control).
    let mut msg: msghdr = std::mem::zeroed();
    msg.msg_iov = iov.cast_mut();
    msg.msg_iovlen = iovcnt as _;
    let r = receive(fd, 0, |f| real::recvmsg(fd, &mut msg, f));
    if r < 0 && errno() == libc::ENOTSOCK {
        return real::readv(fd, iov, iovcnt);
    }
    r
}

fn would_block(e: c_int) -> bool {
    e == libc::EAGAIN || e == libc::EWOULDBLOCK
}

fn fail(e: c_int) -> ssize_t {
    set_errno(e);
    -1
}

/// The path of the module documentation. `call(flags)` is the real receive with
/// the application's arguments and `flags`.
unsafe fn receive(fd: c_int, flags: c_int, mut call: impl FnMut(c_int) -> ssize_t) -> ssize_t {
    if flags & NEVER_BLOCKS != 0 {
        return call(flags);
    }
    let saved = errno();
    let waitall = flags & libc::MSG_WAITALL != 0;
    // The SO_RCVTIMEO bound, looked up on the first would-block only.
    let mut bound: Option<Option<Instant>> = None;
    loop {
        let r = if waitall { probe(fd) } else { call(flags | libc::MSG_DONTWAIT) };
        if r >= 0 {
            set_errno(saved);
            return if waitall { call(flags) } else { r };
        }
        if !would_block(errno()) {
            return r;
        }
        let deadline = match bound {
            Some(deadline) => deadline,
            None => {
                if sys::is_nonblocking(fd) {
                    return fail(libc::EAGAIN);
                }
                let deadline = sys::receive_timeout(fd).map(|t| Instant::now() + t);
                bound = Some(deadline);
                deadline
            }
        };
        let mut p = [pollfd { fd, events: libc::POLLIN, revents: 0 }];
        match aeh::wait(&mut p, deadline, std::ptr::null(), None) {
            // Only a deadline ends a wait with nothing ready: SO_RCVTIMEO expired.
            Waited::Ready(0) => return fail(libc::EAGAIN),
            // Readable (or hung up, or closed under us): the next attempt says.
            Waited::Ready(_) | Waited::Job(_) => {}
            Waited::Failed(libc::EINTR) if deadline.is_none() && aeh::signal_restarts() => {}
            Waited::Failed(libc::EINTR) => return fail(libc::EINTR),
            // The wait itself failed (ENOMEM, say): the real call, as without the shim.
            Waited::Failed(_) => {
                set_errno(saved);
                return call(flags);
            }
        }
    }
}

/// Whether anything is there to read, without taking it: 1 (data), 0 (end of
/// file) or -1 with `errno` (`EAGAIN`: nothing yet).
unsafe fn probe(fd: c_int) -> ssize_t {
    let mut byte = 0u8;
    real::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;
    use super::*;

    fn pair() -> (c_int, c_int) {
        let mut sv = [0; 2];
        // SAFETY: socketpair writes two fds into `sv`.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) }, 0);
        (sv[0], sv[1])
    }

    fn close(fds: &[c_int]) {
        for &fd in fds {
            // SAFETY: fds the test owns.
            unsafe { libc::close(fd) };
        }
    }

    fn send_later(fd: c_int, after: Duration, bytes: &'static [u8]) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            std::thread::sleep(after);
            // SAFETY: a live buffer.
            assert_eq!(unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), 0) }, bytes.len() as ssize_t);
        })
    }

    #[test]
    fn waits_for_data_and_keeps_errno_on_success() {
        let (a, b) = pair();
        let t = send_later(a, Duration::from_millis(50), b"hello");
        let mut buf = [0u8; 16];
        set_errno(libc::ENOENT);
        // SAFETY: a live buffer of the stated length.
        let n = unsafe { read(b, buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(n, 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(errno(), libc::ENOENT, "the first attempt's EAGAIN does not leak");
        t.join().unwrap();
        close(&[a]);
        // SAFETY: as above; a closed peer is end of file.
        assert_eq!(unsafe { recv(b, buf.as_mut_ptr().cast(), buf.len(), 0) }, 0);
        close(&[b]);
    }

    #[test]
    fn peek_waitall_and_readv_keep_their_meaning() {
        let (a, b) = pair();
        let t = send_later(a, Duration::from_millis(30), b"abc");
        let mut buf = [0u8; 6];
        // SAFETY: live buffers of the stated lengths throughout.
        unsafe {
            assert_eq!(recv(b, buf.as_mut_ptr().cast(), 3, libc::MSG_PEEK), 3);
            t.join().unwrap();
            let t = send_later(a, Duration::from_millis(50), b"def");
            assert_eq!(recv(b, buf.as_mut_ptr().cast(), 6, libc::MSG_WAITALL), 6, "the peeked bytes and the rest");
            assert_eq!(&buf, b"abcdef");
            t.join().unwrap();
            let t = send_later(a, Duration::from_millis(30), b"xyz");
            let (mut x, mut y) = ([0u8; 1], [0u8; 4]);
            let iov = [
                iovec { iov_base: x.as_mut_ptr().cast(), iov_len: 1 },
                iovec { iov_base: y.as_mut_ptr().cast(), iov_len: 4 },
            ];
            assert_eq!(readv(b, iov.as_ptr(), 2), 3);
            assert_eq!((&x, &y[..2]), (b"x", &b"yz"[..]));
            t.join().unwrap();
        }
        close(&[a, b]);
    }

    #[test]
    fn nonblocking_and_timeouts_answer_eagain() {
        let (a, b) = pair();
        let mut buf = [0u8; 4];
        // SAFETY: live buffers and option values of the stated lengths.
        unsafe {
            let t0 = Instant::now();
            assert_eq!(recv(b, buf.as_mut_ptr().cast(), 4, libc::MSG_DONTWAIT), -1);
            assert_eq!(errno(), libc::EAGAIN);
            sys::set_nonblock(b, true).unwrap();
            assert_eq!(read(b, buf.as_mut_ptr().cast(), 4), -1);
            assert_eq!(errno(), libc::EAGAIN);
            assert!(t0.elapsed() < Duration::from_millis(50));
            sys::set_nonblock(b, false).unwrap();
            let tv = libc::timeval { tv_sec: 0, tv_usec: 150_000 };
            let len = size_of::<libc::timeval>() as socklen_t;
            assert_eq!(libc::setsockopt(b, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), len), 0);
            let t0 = Instant::now();
            assert_eq!(recvfrom(b, buf.as_mut_ptr().cast(), 4, 0, std::ptr::null_mut(), std::ptr::null_mut()), -1);
            assert_eq!(errno(), libc::EAGAIN);
            let took = t0.elapsed();
            assert!(took >= Duration::from_millis(150) && took < Duration::from_millis(400), "{took:?}");
        }
        close(&[a, b]);
    }
}
