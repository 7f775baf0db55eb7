//! The gate: where the application's socket waits while the responder
//! brokers its non-blocking connect (`connecting`), and the refuser, which
//! gives a failed connect the kernel's own failure.
//!
//! A non-blocking `connect` must return EINPROGRESS and leave a socket that
//! is neither readable nor writable, says EALREADY to a second `connect` and
//! EAGAIN to a send, until the connection is there: a TCP socket in SYN_SENT.
//! The shim gets one without the network by connecting the application's
//! socket to a loopback listener of its own whose accept queue is full: the
//! kernel drops a SYN it has no room for (it does not refuse it), so the
//! socket stays in SYN_SENT, retransmitting to loopback at 1, 3, 7, ... s,
//! until the shim puts the real connection on its fd number. The queue is
//! filled once, by one connection nobody ever accepts (`listen(fd, 0)` has
//! room for one).
//!
//! The refuser is a loopback TCP socket bound but never listening: a
//! connection to it is refused at once, leaving a socket whose `SO_ERROR` is
//! ECONNREFUSED and which polls writable with an error, as any refused
//! non-blocking connect.
//!
//! One gate per process (a forked child shares its parent's, which works the
//! same), made on first use; if this kernel answered the gate's SYNs after
//! all, the gate is not used and non-blocking connects are brokered inside
//! the call instead.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use once_cell::race::OnceBox;

use crate::client::family::{self, Family};
use crate::client::sys::{self, Errno, Sock};
use crate::real;

/// The gate and the refuser, or why there are none.
struct Gate {
    /// `None` when the gate cannot hold a connection pending here.
    at: Option<SocketAddrV4>,
    refuser: Option<SocketAddrV4>,
}

static GATE: OnceBox<Gate> = OnceBox::new();

fn gate() -> &'static Gate {
    GATE.get_or_init(|| Box::new(Gate { at: open_gate().ok().flatten(), refuser: open_refuser().ok() }))
}

/// Where a connecting placeholder waits; `None` if this process has no gate.
pub fn at() -> Option<SocketAddrV4> {
    gate().at
}

/// A loopback listener with a full accept queue, checked to hold a
/// connection pending. Its fds are internal and stay open for the process.
fn open_gate() -> Result<Option<SocketAddrV4>, Errno> {
    let listener = sys::socket(libc::SOCK_STREAM, true, true)?;
    sys::bind(listener.raw(), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    // SAFETY: our socket.
    if unsafe { real::listen(listener.raw(), 0) } < 0 {
        return Err(crate::guard::errno());
    }
    let at = sys::local_addr(listener.raw())?;
    let filler = sys::socket(libc::SOCK_STREAM, true, true)?;
    sys::connect(filler.raw(), at, Instant::now() + std::time::Duration::from_millis(500))?;
    // With the queue full, a connect to the gate must stay pending.
    let probe = sys::socket(libc::SOCK_STREAM, true, true)?;
    sys::connect_start(probe.raw(), Family::V4, at)?;
    let mut p = [libc::pollfd { fd: probe.raw(), events: libc::POLLOUT, revents: 0 }];
    // SAFETY: one live pollfd; no wait.
    let ready = unsafe { real::poll(p.as_mut_ptr(), 1, 0) };
    crate::internal::adopt(listener.into_raw());
    crate::internal::adopt(filler.into_raw());
    if ready != 0 {
        log!(Warn, "this kernel completed a connection to a full accept queue; non-blocking brokered connects wait inside the call");
        return Ok(None);
    }
    Ok(Some(at))
}

fn open_refuser() -> Result<SocketAddrV4, Errno> {
    let s = sys::socket(libc::SOCK_STREAM, true, true)?;
    sys::bind(s.raw(), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    let at = sys::local_addr(s.raw())?;
    crate::internal::adopt(s.into_raw());
    Ok(at)
}

/// A non-blocking socket of `fam` whose connect was refused: writable with
/// `SO_ERROR` ECONNREFUSED pending, as a refused connect leaves it.
pub fn refused(fam: Family) -> Result<Sock, Errno> {
    let to = gate().refuser.ok_or(libc::ENOBUFS)?;
    let s = sys::socket_of(fam, libc::SOCK_STREAM, true, true)?;
    let raw = family::encode(to, fam);
    // SAFETY: a valid address of the stated length.
    unsafe { real::connect(s.raw(), raw.ptr(), raw.len()) };
    // The reset comes back over loopback at once; bounded anyway.
    sys::wait_fd(s.raw(), libc::POLLOUT, Instant::now() + std::time::Duration::from_secs(1))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_holds_and_the_refuser_refuses() {
        let at = at().expect("this kernel drops SYNs to a full queue");
        let s = sys::socket(libc::SOCK_STREAM, true, true).unwrap();
        assert_eq!(sys::connect_start(s.raw(), Family::V4, at), Ok(false));
        assert_eq!(sys::wait_fd(s.raw(), libc::POLLOUT, Instant::now() + std::time::Duration::from_millis(200)), Err(libc::ETIMEDOUT), "pending");
        // SAFETY: our socket; a second connect on a pending one.
        let again = unsafe { real::connect(s.raw(), family::encode(at, Family::V4).ptr(), family::encode(at, Family::V4).len()) };
        assert_eq!((again, crate::guard::errno()), (-1, libc::EALREADY));
        let r = refused(Family::V4).unwrap();
        assert_eq!(sys::get_int_opt(r.raw(), libc::SOL_SOCKET, libc::SO_ERROR), Ok(libc::ECONNREFUSED));
    }
}
