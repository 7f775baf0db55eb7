//! Receiving on a managed UDP socket: `recv`, `recvfrom`, `recvmsg`, `recvmmsg`,
//! `read` and `readv` all take [`next`], which hands out the application's
//! datagrams in arrival order and keeps the shim's own traffic away from it.
//!
//! [`next`] takes the buffer first (datagrams read while the shim was doing
//! something else, or peeked), then reads the socket with `MSG_DONTWAIT` into a
//! buffer of its own and sorts each datagram ([`control::classify`]): relayed
//! ones lose their header and are reported from their original sender, replies
//! over a direct path are reported from the GCB address the application sent
//! to, Dummies and acks are consumed. When nothing is there, a blocking call
//! waits for the socket in `ppoll` (the responder answers the broker
//! meanwhile).
//!
//! Semantics kept: `MSG_DONTWAIT` and `O_NONBLOCK` give `EAGAIN`; `SO_RCVTIMEO`
//! bounds the wait (`EAGAIN` at the bound); `MSG_PEEK` leaves the datagram to
//! the next read: a datagram still in the kernel is peeked there, not moved
//! into the buffer, because after `fork` the buffer is per process while the
//! kernel queue is shared (`socat UDP-RECVFROM,fork` peeks in the parent and
//! reads in the child; a buffered copy would be delivered twice); `MSG_TRUNC` returns the datagram's
//! real length, and a short buffer truncates as the kernel does (with
//! `MSG_TRUNC` in `msg_flags`); signals interrupt as in `blocking_read`; errors
//! the kernel queued (ECONNREFUSED on a connected socket) are returned, but
//! for one that names a broker channel's closed port (`channel::absorbs`).
//! `MSG_OOB` and `MSG_ERRQUEUE` go to the real call.
//!
//! Known differences: ancillary data (`msg_control`) is not delivered
//! (`msg_controllen` is 0); a readiness wake-up for a datagram that turns out
//! to be control traffic is followed by `EAGAIN` on a non-blocking read, as
//! after a datagram the kernel drops for a bad checksum.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use libc::{c_int, c_uint, c_void, iovec, mmsghdr, msghdr, pollfd, size_t, sockaddr, socklen_t, ssize_t, timespec};

use crate::client::family;
use crate::client::sys;
use super::control::{self, Incoming};
use super::table::Datagram;
use crate::guard::{errno, set_errno};
use crate::real;

/// Larger than any UDP payload, so the kernel never truncates what the shim reads.
const READ_BUF: usize = 65_536;

/// Flags whose receive the shim does not touch.
const REAL_ONLY: c_int = libc::MSG_OOB | libc::MSG_ERRQUEUE;

/// The next application datagram on `fd`, honouring `flags`' `MSG_DONTWAIT`
/// and `MSG_PEEK`; the errno the call fails with otherwise.
pub fn next(fd: c_int, flags: c_int) -> Result<Datagram, c_int> {
    let peek = flags & libc::MSG_PEEK != 0;
    // Not zeroed: the kernel writes what is read, and only that is looked at.
    // (Zeroing 64 KiB cost more than the datagram on the short ones.)
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUF);
    let mut bound: Option<Option<Instant>> = None;
    loop {
        let stashed = super::super::state::with(|reg| {
            reg.udp.get_mut(fd).and_then(|s| if peek { s.peek_stashed() } else { s.take_stashed() })
        });
        if let Some(d) = stashed {
            return Ok(d);
        }
        let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut sl = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
        let rflags = libc::MSG_DONTWAIT | if peek { libc::MSG_PEEK } else { 0 };
        buf.clear();
        // SAFETY: live buffers of the stated lengths (the vector's capacity).
        let n = unsafe {
            real::recvfrom(fd, buf.as_mut_ptr().cast(), READ_BUF, rflags, (&mut st as *mut libc::sockaddr_storage).cast(), &mut sl)
        };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: the kernel initialised the first `n <= READ_BUF` bytes.
            unsafe { buf.set_len(n) };
            // SAFETY: the kernel filled `sl` bytes of the storage.
            let src = unsafe { sys::from_sockaddr((&st as *const libc::sockaddr_storage).cast(), sl) };
            let src = src.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
            let now = Instant::now();
            match super::super::state::with(|reg| control::classify(reg, fd, src, &buf[..n], now)) {
                Incoming::Data { from, offset } => return Ok(Datagram { from, data: buf[offset..n].to_vec() }),
                Incoming::Consumed => {
                    if peek {
                        // The shim's own datagram was only peeked: take it off
                        // the queue so the application's next one surfaces.
                        // SAFETY: a live buffer of the stated length.
                        unsafe { real::recvfrom(fd, buf.as_mut_ptr().cast(), READ_BUF, libc::MSG_DONTWAIT, std::ptr::null_mut(), std::ptr::null_mut()) };
                    }
                    continue;
                }
            }
        }
        let e = errno();
        if super::channel::absorbs(fd, e) {
            continue;
        }
        if e != libc::EAGAIN && e != libc::EINTR {
            return Err(e);
        }
        if flags & libc::MSG_DONTWAIT != 0 {
            return Err(libc::EAGAIN);
        }
        let deadline = match bound {
            Some(d) => d,
            None => {
                if sys::is_nonblocking(fd) {
                    return Err(libc::EAGAIN);
                }
                let d = sys::receive_timeout(fd).map(|t| Instant::now() + t);
                bound = Some(d);
                d
            }
        };
        let mut p = [pollfd { fd, events: libc::POLLIN, revents: 0 }];
        let now = Instant::now();
        let ts = deadline.map(|d| {
            let left = d.saturating_duration_since(now);
            libc::timespec { tv_sec: left.as_secs() as libc::time_t, tv_nsec: left.subsec_nanos() as libc::c_long }
        });
        let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: one live pollfd; a valid timespec or null; no signal mask.
        match unsafe { real::ppoll(p.as_mut_ptr(), 1, ts_ptr, std::ptr::null()) } {
            0 => return Err(libc::EAGAIN),
            n if n > 0 => {}
            _ => match errno() {
                libc::EINTR if deadline.is_none() && sys::signal_restarts() => {}
                e => return Err(e),
            },
        }
    }
}

/// Copies `data` into the iovecs; the bytes copied.
unsafe fn scatter(data: &[u8], iov: *const iovec, iovcnt: usize) -> usize {
    let mut done = 0;
    for i in 0..iovcnt {
        let v = &*iov.add(i);
        if done == data.len() {
            break;
        }
        let n = v.iov_len.min(data.len() - done);
        if n > 0 {
            std::ptr::copy_nonoverlapping(data.as_ptr().add(done), v.iov_base.cast::<u8>(), n);
        }
        done += n;
    }
    done
}

/// The call's return value for a datagram of `len` bytes of which `copied` fit.
fn result(len: usize, copied: usize, flags: c_int) -> ssize_t {
    (if flags & libc::MSG_TRUNC != 0 { len } else { copied }) as ssize_t
}

fn fail(e: c_int) -> ssize_t {
    set_errno(e);
    -1
}

/// # Safety
///
/// The C contract of `recvfrom`.
pub unsafe fn recvfrom(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int, addr: *mut sockaddr, addrlen: *mut socklen_t) -> ssize_t {
    if flags & REAL_ONLY != 0 {
        return real::recvfrom(fd, buf, len, flags, addr, addrlen);
    }
    let saved = errno();
    match next(fd, flags) {
        Ok(d) => {
            let iov = iovec { iov_base: buf, iov_len: len };
            let copied = scatter(&d.data, &iov, 1);
            if !d.from.ip().is_unspecified() || d.from.port() != 0 {
                family::copy_out(d.from, family::of(fd), addr, addrlen);
            } else if !addrlen.is_null() {
                *addrlen = 0;
            }
            set_errno(saved);
            result(d.data.len(), copied, flags)
        }
        Err(e) => fail(e),
    }
}

/// # Safety
///
/// The C contract of `recv`.
pub unsafe fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t {
    recvfrom(fd, buf, len, flags, std::ptr::null_mut(), std::ptr::null_mut())
}

/// # Safety
///
/// The C contract of `read`.
pub unsafe fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    recv(fd, buf, count, 0)
}

/// # Safety
///
/// The C contract of `recvmsg`.
pub unsafe fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    if flags & REAL_ONLY != 0 || msg.is_null() {
        return real::recvmsg(fd, msg, flags);
    }
    let saved = errno();
    match next(fd, flags) {
        Ok(d) => {
            let m = &mut *msg;
            let copied = scatter(&d.data, m.msg_iov, m.msg_iovlen);
            let mut namelen = m.msg_namelen;
            family::copy_out(d.from, family::of(fd), m.msg_name.cast(), &mut namelen);
            if !m.msg_name.is_null() {
                m.msg_namelen = namelen;
            }
            m.msg_controllen = 0;
            m.msg_flags = if copied < d.data.len() { libc::MSG_TRUNC } else { 0 };
            set_errno(saved);
            result(d.data.len(), copied, flags)
        }
        Err(e) => fail(e),
    }
}

/// # Safety
///
/// The C contract of `readv`.
pub unsafe fn readv(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t {
    if iovcnt < 0 {
        return real::readv(fd, iov, iovcnt);
    }
    let mut m: msghdr = std::mem::zeroed();
    m.msg_iov = iov.cast_mut();
    m.msg_iovlen = iovcnt as _;
    recvmsg(fd, &mut m, 0)
}

/// `recvmmsg`: the first datagram as the call's flags say; the rest without
/// waiting under `MSG_WAITFORONE`, else waiting until `vlen` datagrams or the
/// timeout (checked after each datagram, as the kernel does).
///
/// # Safety
///
/// The C contract of `recvmmsg`.
pub unsafe fn recvmmsg(fd: c_int, vec: *mut mmsghdr, vlen: c_uint, flags: c_int, timeout: *mut timespec) -> c_int {
    if flags & REAL_ONLY != 0 || vec.is_null() {
        return real::recvmmsg(fd, vec, vlen, flags, timeout);
    }
    let end = if timeout.is_null() {
        None
    } else {
        let t = &*timeout;
        Some(Instant::now() + std::time::Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.clamp(0, 999_999_999) as u32))
    };
    let base = flags & !libc::MSG_WAITFORONE;
    let saved = errno();
    let mut got = 0;
    for i in 0..vlen as usize {
        let f = if i > 0 && flags & libc::MSG_WAITFORONE != 0 { base | libc::MSG_DONTWAIT } else { base };
        let e = &mut *vec.add(i);
        let n = recvmsg(fd, &mut e.msg_hdr, f);
        if n < 0 {
            if got == 0 {
                return -1;
            }
            // The error waits for the next call, as the kernel keeps it.
            set_errno(saved);
            break;
        }
        e.msg_len = n as c_uint;
        got += 1;
        if end.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    got
}
