//! The sockets of a punch (`session`, `early`): each an internal fd while
//! the shim holds it, and all bound to one port with `SO_REUSEADDR` and
//! `SO_REUSEPORT`, so the port the broker saw is the one the peer dials.

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::c_int;

use crate::client::family::Family;
use crate::client::sys::{self, Errno, Sock};
use crate::real;

/// An internal fd the session holds: released when dropped.
#[derive(Debug)]
pub struct Held(c_int);

impl Held {
    pub(crate) fn adopt(s: Sock) -> Held {
        Held(crate::internal::adopt(s.into_raw()))
    }

    pub fn raw(&self) -> c_int {
        self.0
    }

    /// The socket, no longer internal, with the reuse options cleared: what
    /// goes on the program's fd.
    pub fn into_sock(self) -> Sock {
        let fd = self.0;
        std::mem::forget(self);
        let _ = sys::set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 0);
        let _ = sys::set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 0);
        crate::fdtable::set(fd, crate::fdtable::Kind::Plain);
        Sock::from_raw(fd)
    }

    /// The program `dup2`ed onto this fd and the shim moved it to `new`
    /// (`Registry::replace_internal_fd`); false if it is not `old`.
    pub fn renumber(&mut self, old: c_int, new: c_int) -> bool {
        let ours = self.0 == old;
        if ours {
            self.0 = new;
        }
        ours
    }

    /// The fd, still internal, for a caller that keeps it so (a parked
    /// connection); reuse options cleared.
    pub fn into_internal(self) -> c_int {
        let fd = self.0;
        std::mem::forget(self);
        let _ = sys::set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 0);
        let _ = sys::set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 0);
        fd
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        crate::internal::release(self.0);
    }
}

/// A non-blocking socket of `fam` with `SO_REUSEADDR` and `SO_REUSEPORT`, bound
/// to `port` on every address.
pub(super) fn reusable(fam: Family, port: u16) -> Result<Sock, Errno> {
    let s = sys::socket_of(fam, libc::SOCK_STREAM, true, true)?;
    sys::set_int_opt(s.raw(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    sys::set_int_opt(s.raw(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    sys::bind_as(s.raw(), fam, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
    Ok(s)
}

/// A rendezvous connection to the broker's `via`, started from a reusable
/// port of the kernel's choosing, with TCP Fast Open asked for (best effort:
/// a kernel without it makes the connection as always); and whether the
/// kernel deferred the SYN to the first write, which then carries the hello
/// (it has the broker's cookie).
pub(super) fn rendezvous(fam: Family, via: SocketAddrV4) -> Result<(Sock, bool), Errno> {
    let s = reusable(fam, 0)?;
    let _ = sys::set_int_opt(s.raw(), libc::IPPROTO_TCP, libc::TCP_FASTOPEN_CONNECT, 1);
    let deferred = sys::connect_start(s.raw(), fam, via)?;
    Ok((s, deferred))
}

/// Sends `bytes` whole on non-blocking `fd`: a frame this small always fits
/// a connection's send buffer when it is the first thing sent, or follows
/// only other frames.
pub(super) fn send_whole(fd: c_int, bytes: &[u8]) -> Result<(), Errno> {
    // SAFETY: a live buffer of the given length.
    let n = unsafe { real::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    match n {
        n if n == bytes.len() as isize => Ok(()),
        n if n < 0 => Err(crate::guard::errno()),
        _ => Err(libc::EIO),
    }
}

