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

use super::registry::Names;
use super::family;
use crate::real;

type NameFn = unsafe fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;

unsafe fn answer(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, pick: fn(Names) -> Option<std::net::SocketAddrV4>, real_fn: NameFn) -> c_int {
    // Bad pointers get the kernel's EFAULT.
    if addr.is_null() || len.is_null() {
        return real_fn(fd, addr, len);
    }
    let names = super::with(|reg| {
        // A connected UDP socket reports the GCB address it was connected to.
        let udp_peer = reg.udp.get(fd).and_then(|s| s.connected_to);
        reg.names(fd).map_or(Names { local: None, peer: udp_peer }, |n| Names { peer: n.peer.or(udp_peer), ..n })
    });
    match pick(names) {
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
    // Only a managed UDP socket can be a never-bound one that should register;
    // accepted and brokered TCP connections (`Named`) skip the registry lookup.
    if !addr.is_null() && !len.is_null() && crate::fdtable::kind(fd) == crate::fdtable::Kind::Managed {
        let _errno = crate::hook::ErrnoGuard::new();
        super::udp::send::register_if_auto_bound(fd);
    }
    answer(fd, addr, len, |n| n.local, real::getsockname)
}

/// # Safety
///
/// The C contract of `getpeername`.
pub unsafe fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    answer(fd, addr, len, |n| n.peer, real::getpeername)
}
