//! DPF's part of a `bind` to a reported address (`client::pinned` has the
//! steps): which IPs are dpfd's public ones, and the forward from exactly the
//! address the program bound.
//!
//! Which IPs are dpfd's is `public`'s to say: a bind to an IP not known yet
//! asks dpfd (`Info`) each time until it has answered once, so a process
//! restarted with an advertised address pays that one exchange, and a program
//! binding some other foreign address by mistake pays it once too.
//!
//! The socket is bound to this host's IP towards dpfd (the address behind the
//! public one) and forwarded at `bind`, TCP included (a TCP socket is otherwise
//! forwarded at `listen`), so a public port that cannot be had fails the
//! `bind`. `listen` finds the forward made and asks for nothing more; a socket
//! that connects instead loses its forward, as any forwarded socket does.
//!
//! Through a standard gateway (`pcp`) the same, with the gateway in dpfd's
//! place: its public address comes from NAT-PMP's public-address request
//! (`pcp::map::ask_public`), and the MAP suggests the address bound with
//! PREFER_FAILURE.

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::c_int;
use proto::rudp::RetryPolicy;

use super::ask::NotForwarded;
use super::forward;
use super::public::KNOWN;
use crate::client::pinned::{self, Pinned};

/// Whether `ip` is one of dpfd's public IPs, asking dpfd if this process does
/// not know yet. `false` when dpfd cannot be asked.
fn is_public(ip: Ipv4Addr) -> bool {
    if let Some(known) = KNOWN.is_public(ip) {
        return known;
    }
    let asked = if super::mode::standard() { super::pcp::map::ask_public() } else { super::public::ask(RetryPolicy::default()) };
    match asked {
        Ok(()) => KNOWN.is_public(ip) == Some(true),
        Err(why) => {
            let who = if super::mode::standard() { "the gateway" } else { "dpfd" };
            log!(Warn, "{who} did not say its public addresses ({why}); a bind to {ip} fails as the kernel says");
            false
        }
    }
}

/// Makes `fd`'s bind to `want` good if `want`'s IP is one of dpfd's (module docs).
pub fn pin(fd: c_int, want: SocketAddrV4) -> Pinned {
    let Some(proto) = super::ops::proto_of(fd) else { return Pinned::NotOurs };
    if !is_public(*want.ip()) {
        return Pinned::NotOurs;
    }
    // The local address behind the public one: this host's IP towards dpfd
    // (or the gateway), the one it forwards to.
    let Some(dpfd) = super::mode::server().or_else(super::pcp::wire::gateway) else { return Pinned::NotOurs };
    let towards = match crate::client::exchange::open(dpfd) {
        Ok((_, towards)) => towards,
        Err(e) => return Pinned::Failed(if crate::client::sys::out_of_resources(e) { e } else { libc::EADDRNOTAVAIL }),
    };
    if let Err(e) = pinned::bind_local(fd, *towards.ip()) {
        return Pinned::Failed(e);
    }
    match forward::request(fd, proto, Some(want)) {
        Ok(_) => Pinned::Done,
        Err(why) => {
            pinned::unbind(fd);
            Pinned::Failed(match why {
                NotForwarded::PortUnavailable => pinned::refusal_errno(true),
                NotForwarded::Other(e) => e,
            })
        }
    }
}
