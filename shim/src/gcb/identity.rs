//! The names the application sees (DESIGN.md, "Identities"):
//!
//! * `getsockname` on a registered listener: its proxy address;
//! * `getsockname` on a connection accepted from it: the proxy address too, the
//!   address the peer dialed;
//! * `getpeername` on a relayed or reversed connection the listener accepted: the
//!   original peer from the broker's command or `StreamPeer`;
//! * `getpeername` on a connector's brokered socket: the proxy address the
//!   application dialed, its peer's identity.
//!
//! * `getsockname` on a registered UDP socket: its proxy address;
//! * `getpeername` on a UDP socket connected to a GCB address: that address.
//!
//! On an AF_INET6 socket the names are v4-mapped (see `family`). Everything
//! else is the kernel's answer. The names live in the registry
//! ([`Names`](super::registry::Names)), recorded by `accept` and `connect`.

use libc::{c_int, sockaddr, socklen_t};

use std::net::SocketAddrV4;

use super::family;
use super::registry::{Names, Registry};
use super::udp::send;
use crate::fdtable::{self, Kind};
use crate::hook::ErrnoGuard;
use crate::real;

type NameFn = unsafe fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;

/// The names to report for `fd`; a connected UDP socket reports the GCB
/// address it was connected to as its peer.
fn names_of(reg: &Registry, fd: c_int) -> Names {
    let udp_peer = reg.udp.get(fd).and_then(|s| s.connected_to);
    reg.names(fd).map_or(Names { local: None, peer: udp_peer }, |n| Names { peer: n.peer.or(udp_peer), ..n })
}

/// Copies `name` out if the shim reports one, else asks the kernel.
unsafe fn reply(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, name: Option<SocketAddrV4>, real_fn: NameFn) -> c_int {
    match name {
        Some(name) => {
            family::copy_out(name, family::of(fd), addr, len);
            0
        }
        None => real_fn(fd, addr, len),
    }
}

/// # Safety
///
/// The C contract of `getsockname`.
pub unsafe fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // Bad pointers get the kernel's EFAULT.
    if addr.is_null() || len.is_null() {
        return real::getsockname(fd, addr, len);
    }
    // Only a managed UDP socket can be a never-bound one that should register;
    // accepted and brokered TCP connections (`Named`) skip that question. One
    // lock answers both it and the names; only a socket that registers now
    // (once in its life) looks its names up again.
    let managed = fdtable::kind(fd) == Kind::Managed;
    let (mut names, candidate) = super::with(|reg| (names_of(reg, fd), managed && send::auto_bound_candidate(reg, fd)));
    if candidate {
        let _errno = ErrnoGuard::new();
        send::register_auto_bound(fd);
        names = super::with(|reg| names_of(reg, fd));
    }
    reply(fd, addr, len, names.local, real::getsockname)
}

/// # Safety
///
/// The C contract of `getpeername`.
pub unsafe fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if addr.is_null() || len.is_null() {
        return real::getpeername(fd, addr, len);
    }
    let names = super::with(|reg| names_of(reg, fd));
    reply(fd, addr, len, names.peer, real::getpeername)
}
