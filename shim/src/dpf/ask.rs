//! What asking for a forward takes and gives, whoever is asked (`dpfd` in
//! `forward`, a standard gateway in `pcp::map`): the public address to ask
//! for, why none was had, and the fd-table kind a forwarded socket takes.

use std::net::SocketAddrV4;

use proto::Proto;

use crate::client::sys::Errno;
use crate::fdtable::Kind;

/// Why a forward was not made: dpfd refused it (`Exists`, `PortOutOfRange`
/// and `Quota` mean the public port cannot be had), or no forward was asked
/// for or could be (with the errno that says why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotForwarded {
    PortUnavailable,
    Other(Errno),
}

/// The public address to ask for `proto` `local`, if any: the pinned one (any
/// port for port 0). A re-listen on the same local address keeps the address
/// clients know; a program serving TCP and UDP on one port (iperf3, DNS) is
/// reached on one public port for both, so the second socket asks for the
/// first one's port.
pub fn desired(proto: Proto, local: SocketAddrV4, pinned: Option<SocketAddrV4>) -> Option<SocketAddrV4> {
    match pinned {
        Some(p) => (p.port() != 0).then_some(p),
        None => super::state::with(|st| {
            let sibling = st.forwards().find(|f| f.local == local && f.proto != proto).map(|f| f.public);
            st.released.take((proto, local)).or(sibling)
        }),
    }
}

/// The fd-table kind of a forwarded socket: a TCP listener is `Managed` (its
/// `accept` names what it returns), a UDP socket `Named` (its data stays on the
/// fast path; only names, dups and close leave it).
pub fn kind_of(proto: Proto) -> Kind {
    match proto {
        Proto::Tcp => Kind::Managed,
        Proto::Udp => Kind::Named,
    }
}
