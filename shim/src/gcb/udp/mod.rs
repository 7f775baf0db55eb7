//! The GCB client for UDP (paper 4.2.1 and 4.2.2, docs/design.md, "GCB for
//! UDP"; the broker side is `broker/src/udp`).
//!
//! * Every AF_INET UDP socket made while GCB is on starts `WatchedUdp`: its
//!   `bind`, `connect`, `sendto`, `sendmsg` and `sendmmsg` are looked at, its
//!   reads are not (one table load, as for any fd).
//! * `bind` to a non-loopback address registers the socket
//!   ([`listener::register`](super::listener::register), proto UDP): it becomes
//!   `Managed`, `getsockname` reports the proxy address, and the data path is
//!   opened and kept with Dummies ([`control`]).
//! * A socket never bound that has sent to a GCB address registers when the
//!   application asks its address (`send::register_auto_bound`).
//! * Sending to a GCB address asks the broker once and records the answer in
//!   the socket's receiver list ([`send`], [`table`]); the socket becomes
//!   `Managed` so replies are named after the address sent to.
//! * Every read of a `Managed` UDP socket goes through [`recv`]: relay headers
//!   stripped, senders named, control traffic consumed, data buffered in order.
//! * A socket connected to a peer the broker punches to waits, bounded, for
//!   the punched path ([`connected`]).
//! * A socket bound to the address of a registered one joins its registration
//!   ([`bind`]); one connected to a relayed peer gets a broker [`channel`].
//!
//! Everything else, including all UDP of a process without `GCB_INAGENT` and
//! sockets bound to loopback, stays on the fast path.

pub mod channel;
pub mod connected;
pub mod control;
pub mod hole;
pub mod hole_rules;
pub mod recv;
pub mod send;
pub mod table;
pub mod ttl;

use libc::{c_int, sockaddr, socklen_t};
use proto::Proto;

use crate::fdtable::{self, Kind};
use crate::real;

/// Whether `fd` is a UDP socket this client manages (`Managed` and known to
/// the UDP table; a `Managed` TCP listener is not).
pub fn manages(fd: c_int) -> bool {
    fdtable::kind(fd) == Kind::Managed && super::mode::enabled() && super::state::with(|reg| reg.udp.get(fd).is_some())
}

/// Whether sends and connects on `fd` take [`send`].
pub fn sends_through(fd: c_int) -> bool {
    fdtable::kind(fd) == Kind::WatchedUdp || manages(fd)
}

/// `bind` of a GCB-mode socket: a UDP socket bound to a non-loopback address
/// registers with the broker. The bind's own result is what the caller gets.
///
/// # Safety
///
/// The C contract of `bind`.
pub unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let r = real::bind(fd, addr, len);
    if r == 0 && fdtable::kind(fd) == Kind::WatchedUdp {
        // Bound whatever happens next (`hook`, rule 4).
        crate::guard::bookkeep(|| {
            if !join_registered(fd) {
                // The bind itself succeeded; a socket that could not register (no
                // descriptor for its management socket) works unbrokered, as logged.
                let _ = super::listener::register(fd, Proto::Udp, Kind::WatchedUdp, 0);
            }
        });
    }
    r
}

/// A socket bound to the very address of a registered UDP socket of this
/// process (SO_REUSEADDR / SO_REUSEPORT: iperf3's UDP server binds a new one
/// for the next client after connecting the first) joins that registration
/// rather than registering again: peers know one proxy address, and the
/// kernel tells the sockets' datagrams apart (a connected one gets its peer's
/// through its [`channel`]). The registration lasts until the last of them
/// is closed.
fn join_registered(fd: c_int) -> bool {
    // Loopback never registers: no twin to find, and no lock to take.
    let Some(local) = crate::client::sys::local_addr(fd).ok().filter(|a| super::listener::registrable(*a.ip())) else { return false };
    super::state::with(|reg| {
        let twin = reg.listeners().find(|(_, l)| l.proto == Proto::Udp && l.local == local).map(|(id, _)| id);
        let Some(id) = twin.filter(|&id| reg.add_fd(id, fd)) else { return false };
        reg.udp.entry(fd).listener = Some(id);
        fdtable::replace(fd, Kind::WatchedUdp, Kind::Managed);
        super::inherit::publish(reg);
        log!(Debug, "udp {local}: another socket bound there shares its registration");
        true
    })
}
