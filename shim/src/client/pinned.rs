//! `bind` to an address this process reports but does not have: a *pinned*
//! socket (both modes; the mode's own part is `gcb::reported` or
//! `dpf::reported`).
//!
//! Under the shim a program learns its address from `getsockname`: the broker's
//! proxy address (GCB) or the gateway's public one (DPF). Some programs then bind
//! a new socket to exactly that address: a restarted daemon that reads it back
//! from its address file or configuration (Condor's `NETWORK_INTERFACE`,
//! `redis-server --bind`, `socat ...,bind=IP`). The kernel refuses, since the
//! address is not local (EADDRNOTAVAIL). The shim looks only at that refusal,
//! so binds to local addresses cost nothing more than before:
//!
//! 1. the mode decides whether the IP is one it reports (its brokers' proxy IP,
//!    or dpfd's public IPs); if not, the application gets the kernel's
//!    EADDRNOTAVAIL untouched;
//! 2. the socket is bound to the real local address behind the reported one
//!    (docs/design.md, "Identities"): the host's IP towards the broker or dpfd, and an
//!    ephemeral port (the local port is invisible to the program: it only ever
//!    sees the reported address);
//! 3. the mode registers or forwards it at once, TCP included, asking for
//!    exactly the port the program gave (any port for port 0), so a refusal can
//!    fail the `bind` itself; `getsockname` then reports the address asked for;
//! 4. if that port cannot be had, or the daemon cannot be reached, the socket
//!    is replaced by a fresh unbound one ([`unbind`]), so the program may retry
//!    on the same fd as after any failed bind, and the call fails: EADDRINUSE
//!    when the port is taken (or outside the range), EADDRNOTAVAIL otherwise.

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::{c_int, sockaddr, socklen_t};

use crate::client::family::{self, Family};
use crate::client::sys::{self, Errno};
use crate::guard::{errno, set_errno};
use crate::real;

/// What the mode made of a bind to a non-local address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinned {
    /// Not an address this process reports: the kernel's answer stands.
    NotOurs,
    /// Bound, registered or forwarded, reported as asked.
    Done,
    /// Ours, but it cannot be had now: the bind fails with this errno.
    Failed(Errno),
}

/// The address of a failed `bind` worth a second look: IPv4 (or v4-mapped), a
/// unicast address that is not loopback. `None` for anything else.
///
/// # Safety
///
/// `addr` is null or points to `len` readable bytes.
pub unsafe fn candidate(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddrV4> {
    let want = family::decode(addr, len)?;
    let ip = want.ip();
    let special = ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast();
    (!special).then_some(want)
}

/// The result of a `bind` that the real one refused with EADDRNOTAVAIL
/// (still in `errno`), once the mode has made `pinned` of it (step 1 and 3,
/// `managed::bind`). `saved` is `errno` from before the call, given back on
/// success.
pub fn answer(pinned: Pinned, saved: c_int) -> c_int {
    match pinned {
        Pinned::NotOurs => -1,
        Pinned::Done => {
            set_errno(saved);
            0
        }
        Pinned::Failed(e) => {
            set_errno(e);
            -1
        }
    }
}

/// Step 2: binds `fd` to `ip` (the local address behind the reported one),
/// spelt for its family, and an ephemeral port. A v6-only AF_INET6 socket
/// cannot hold IPv4 at all: EADDRNOTAVAIL, as the kernel said.
pub fn bind_local(fd: c_int, ip: Ipv4Addr) -> Result<(), Errno> {
    let fam = family::of(fd);
    if fam == Family::Mapped && family::v6only(fd) {
        return Err(libc::EADDRNOTAVAIL);
    }
    let raw = family::encode(SocketAddrV4::new(ip, 0), fam);
    // SAFETY: a socket address of the stated length.
    if unsafe { real::bind(fd, raw.ptr(), raw.len()) } < 0 {
        return Err(errno());
    }
    Ok(())
}

/// Whether the address a daemon gave is the one the program bound: the same IP,
/// and the same port unless the program let the port be chosen.
pub fn matches(asked: SocketAddrV4, got: SocketAddrV4) -> bool {
    got.ip() == asked.ip() && (asked.port() == 0 || got.port() == asked.port())
}

/// Step 4: puts a fresh, unbound socket of `fd`'s family and type on `fd`'s
/// number, with its O_NONBLOCK, FD_CLOEXEC, common options and the address
/// reuse options a program sets before `bind`. Best effort: if
/// it cannot, the socket stays bound (a retried bind then gets EINVAL).
pub fn unbind(fd: c_int) {
    let fresh = || -> Result<(), Errno> {
        let ty = sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
        let nonblocking = sys::is_nonblocking(fd);
        // SAFETY: F_GETFD takes no argument.
        let fd_flags = unsafe { real::fcntl(fd, libc::F_GETFD, 0) };
        let cloexec = fd_flags >= 0 && fd_flags & libc::FD_CLOEXEC != 0;
        let s = sys::socket_of(family::of(fd), ty, true, nonblocking)?;
        sys::copy_options(fd, s.raw());
        // What a program sets before `bind`, off on a fresh socket.
        for name in [libc::SO_REUSEADDR, libc::SO_REUSEPORT, libc::SO_BROADCAST] {
            if let Ok(v @ 1..) = sys::get_int_opt(fd, libc::SOL_SOCKET, name) {
                let _ = sys::set_int_opt(s.raw(), libc::SOL_SOCKET, name, v);
            }
        }
        // SAFETY: both fds are valid; `fd` is replaced atomically.
        if unsafe { real::dup3(s.raw(), fd, if cloexec { libc::O_CLOEXEC } else { 0 }) } < 0 {
            return Err(errno());
        }
        Ok(())
    };
    if let Err(e) = fresh() {
        log!(Warn, "fd {fd} stays bound after its failed bind: {}", std::io::Error::from_raw_os_error(e));
    }
}

/// The errno for a daemon's refusal: the port is taken (or not the daemon's
/// to give), or the address cannot be had for another reason.
pub fn refusal_errno(port_unavailable: bool) -> Errno {
    if port_unavailable {
        libc::EADDRINUSE
    } else {
        libc::EADDRNOTAVAIL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn only_unicast_ipv4_away_from_loopback_is_a_candidate() {
        for (s, want) in [("203.0.113.10:20500", true), ("0.0.0.0:80", false), ("127.0.0.2:80", false), ("224.0.0.1:80", false), ("255.255.255.255:9", false)] {
            let raw = family::encode(a(s), Family::V4);
            assert_eq!(unsafe { candidate(raw.ptr(), raw.len()) }.is_some(), want, "{s}");
        }
        let mapped = family::encode(a("203.0.113.10:0"), Family::Mapped);
        assert_eq!(unsafe { candidate(mapped.ptr(), mapped.len()) }, Some(a("203.0.113.10:0")));
    }

    #[test]
    fn a_daemon_answer_matches_the_ip_and_any_given_port() {
        assert!(matches(a("203.0.113.10:20500"), a("203.0.113.10:20500")));
        assert!(!matches(a("203.0.113.10:20500"), a("203.0.113.10:20501")));
        assert!(matches(a("203.0.113.10:0"), a("203.0.113.10:20501")));
        assert!(!matches(a("203.0.113.10:0"), a("203.0.113.11:20501")));
    }

    /// After a failed pin the fd holds a fresh socket: unbound, with the
    /// application's flags and options, so a retried bind works.
    #[test]
    fn unbind_leaves_a_fresh_socket_with_the_same_flags_and_options() {
        for (fam, ty) in [(Family::V4, libc::SOCK_STREAM), (Family::Mapped, libc::SOCK_DGRAM)] {
            let s = sys::socket_of(fam, ty, false, true).unwrap();
            let fd = s.raw();
            sys::set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).unwrap();
            bind_local(fd, Ipv4Addr::LOCALHOST).unwrap();
            assert_ne!(sys::local_addr(fd).unwrap().port(), 0, "{fam:?}: bound");
            unbind(fd);
            assert_eq!(sys::local_addr(fd).unwrap().port(), 0, "{fam:?}: unbound again");
            assert_eq!(family::of(fd), fam);
            assert_eq!(sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE), Ok(ty));
            assert_eq!(sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR), Ok(1));
            assert!(sys::is_nonblocking(fd));
            let fd_flags = unsafe { real::fcntl(fd, libc::F_GETFD, 0) };
            assert_eq!(fd_flags & libc::FD_CLOEXEC, 0, "{fam:?}: not close-on-exec, as made");
            bind_local(fd, Ipv4Addr::LOCALHOST).unwrap();
        }
    }

    #[test]
    fn a_v6only_socket_cannot_be_pinned_to_ipv4() {
        let s = sys::socket_of(Family::Mapped, libc::SOCK_STREAM, true, false).unwrap();
        sys::set_int_opt(s.raw(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1).unwrap();
        assert_eq!(bind_local(s.raw(), Ipv4Addr::LOCALHOST), Err(libc::EADDRNOTAVAIL));
    }
}
