//! The names the application sees (docs/design.md, "Identities"):
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

use crate::client::family;
use super::registry::{Names, Registry};
use super::udp::send;
use crate::fdtable::{self, Kind};
use crate::guard::ErrnoGuard;
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
    let (mut names, candidate, joining) =
        super::state::with(|reg| (names_of(reg, fd), managed && send::auto_bound_candidate(reg, fd), managed && joining(reg, fd)));
    if candidate {
        let _errno = ErrnoGuard::new();
        send::register_auto_bound(fd);
        names = super::state::with(|reg| names_of(reg, fd));
    } else if joining {
        names = wait_for_join(fd).unwrap_or(names);
    }
    reply(fd, addr, len, names.local, real::getsockname)
}

/// How long `getsockname` waits for a received listener's first
/// registration (about a broker round trip, unless the broker is away).
const JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether `fd` is a listener this process holds without knowing its proxy
/// address yet (received over `SCM_RIGHTS`, or by socket activation) and the
/// responder is still registering it.
fn joining(reg: &Registry, fd: c_int) -> bool {
    let Some(l) = reg.listener_id(fd).and_then(|id| reg.listener(id)) else { return false };
    l.proxy.is_none() && !l.joined && (l.mgmt.fd < 0 || l.mgmt.pending.values().any(|p| *p == super::registry::Purpose::Register))
}

/// Waits, bounded by [`JOIN_WAIT`], for the registration of `fd` the
/// responder is making: the program asks for the address it is known by,
/// which the broker is about to tell. The names once known.
fn wait_for_join(fd: c_int) -> Option<Names> {
    let end = std::time::Instant::now() + JOIN_WAIT;
    while std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(2));
        let (names, still) = super::state::with(|reg| (names_of(reg, fd), joining(reg, fd)));
        if names.local.is_some() || !still {
            return Some(names);
        }
    }
    None
}

/// # Safety
///
/// The C contract of `getpeername`.
pub unsafe fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if addr.is_null() || len.is_null() {
        return real::getpeername(fd, addr, len);
    }
    let names = super::state::with(|reg| names_of(reg, fd));
    reply(fd, addr, len, names.peer, real::getpeername)
}
