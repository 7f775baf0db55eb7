//! Sending the shim's own datagrams (Dummies, acks, control messages) from a
//! program's UDP socket, and one of them with a TTL of its own: a UDP punch's
//! first Dummy, whose low TTL makes the sender's own gateway's mapping toward
//! the peer and runs out before the far gateway (docs/hole-punching.md,
//! "UDP"). The TTL rides in that one datagram's ancillary data (`IP_TTL` as a
//! control message, Linux 3.13 on), so the socket's option is never set:
//! the program's sends, from any thread and at any moment, keep theirs, and
//! there is nothing to restore.

use std::net::SocketAddrV4;

use libc::{c_int, c_void};

use crate::client::sys;
use crate::guard::{errno, ErrnoGuard};
use crate::real;

/// Sends `bytes` from `fd` to `to` with TTL `ttl`, without blocking; the
/// errno on failure (EINVAL from a kernel without the control message). The
/// caller's errno is left as it was.
pub fn send_with_ttl(fd: c_int, bytes: &[u8], to: SocketAddrV4, ttl: u8) -> Result<usize, sys::Errno> {
    let _errno = ErrnoGuard::new();
    let mut sin = sys::to_sockaddr(to);
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut c_void, iov_len: bytes.len() };
    // Room for one control message of an int, aligned as cmsghdr wants.
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<c_int>() as u32) } as usize;
    debug_assert!(space <= std::mem::size_of_val(&control));
    // SAFETY: an all-zero msghdr is a valid empty one; the fields set below
    // point at live buffers of the stated lengths for the whole call.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut sin as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::IPPROTO_IP;
        (*cmsg).cmsg_type = libc::IP_TTL;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>(), c_int::from(ttl));
        real::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

/// Sends `bytes` from `fd` to `to` without blocking; the errno on failure.
pub fn send_from(fd: c_int, bytes: &[u8], to: SocketAddrV4) -> Result<usize, sys::Errno> {
    let sin = sys::to_sockaddr(to);
    // SAFETY: a live buffer and address of the given lengths.
    let n = unsafe {
        real::sendto(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

/// The TTL of a punch's first Dummy (`GCB_PUNCH_TTL`), `None` when off.
pub fn low_ttl() -> Option<u8> {
    Some(crate::config::get().punch_ttl).filter(|t| *t != 0)
}

/// Sends `bytes` from `fd` to `to`, with TTL `ttl` when there is one. A
/// kernel that does not take the TTL as a control message gets the datagram
/// as usual: what a punch did before low TTLs. Any other error is the send's
/// own (a full buffer, a firewall) and is returned: sent again at full TTL it
/// could reach the far gateway first, which the low TTL is there to prevent.
pub fn send(fd: c_int, bytes: &[u8], to: SocketAddrV4, ttl: Option<u8>) -> Result<usize, sys::Errno> {
    match ttl {
        Some(t) => send_with_ttl(fd, bytes, to, t).or_else(|e| {
            if e != libc::EINVAL && e != libc::ENOPROTOOPT {
                return Err(e);
            }
            log!(Debug, "a datagram to {to} with TTL {t} not taken ({}); sent as usual", std::io::Error::from_raw_os_error(e));
            send_from(fd, bytes, to)
        }),
        None => send_from(fd, bytes, to),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::set_errno;
    use super::super::connected::tests::bound;

    /// The next datagram on `fd` within a second, and the TTL it came with.
    fn received(fd: c_int) -> (Vec<u8>, c_int) {
        let on: c_int = 1;
        // SAFETY: an int option of the right size.
        unsafe { libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_RECVTTL, (&on as *const c_int).cast(), 4) };
        let mut p = [libc::pollfd { fd, events: libc::POLLIN, revents: 0 }];
        assert_eq!(unsafe { libc::poll(p.as_mut_ptr(), 1, 1000) }, 1, "nothing arrived");
        let mut buf = [0u8; 64];
        let mut control = [0u64; 8];
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: live buffers of the stated lengths.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            let n = libc::recvmsg(fd, &mut msg, 0);
            assert!(n >= 0);
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            assert!(!cmsg.is_null() && (*cmsg).cmsg_type == libc::IP_TTL, "no TTL reported");
            (buf[..n as usize].to_vec(), std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>()))
        }
    }

    #[test]
    fn one_datagram_gets_the_ttl_and_the_socket_keeps_its_own() {
        let ((sender, _), (receiver, to)) = (bound(), bound());
        let ttl_of_socket = || {
            let mut v: c_int = 0;
            let mut l = 4 as libc::socklen_t;
            // SAFETY: an int option of the right size.
            unsafe { libc::getsockopt(sender.raw(), libc::IPPROTO_IP, libc::IP_TTL, (&mut v as *mut c_int).cast(), &mut l) };
            v
        };
        let before = ttl_of_socket();
        set_errno(libc::EAGAIN);
        assert_eq!(send_with_ttl(sender.raw(), b"low", to, 2), Ok(3));
        assert_eq!(errno(), libc::EAGAIN, "the caller's errno is kept");
        assert_eq!(received(receiver.raw()), (b"low".to_vec(), 2));
        assert_eq!(ttl_of_socket(), before, "the socket's option untouched");
        assert_eq!(send_from(sender.raw(), b"next", to), Ok(4));
        assert_eq!(received(receiver.raw()), (b"next".to_vec(), before), "the next datagram has the socket's TTL");
        set_errno(0);
        assert_eq!(send_with_ttl(sender.raw(), b"x", to, 0), Err(libc::EINVAL), "the kernel refuses TTL 0");
        assert_eq!(errno(), 0);
    }
}
