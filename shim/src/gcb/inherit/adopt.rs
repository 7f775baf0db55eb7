//! The new image's side of an `exec` hand-over: at init, the sockets named
//! in `GCB_INHERITED` are checked and taken over as shared registrations.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::Instant;

use libc::c_int;

use super::super::mgmt;
use super::super::registry::{Listener, Mgmt};
use super::super::sys;
use super::super::udp::channel::Reopen;
use super::super::udp::table::Channel;
use super::{parse, publish, Entry, VAR};
use crate::fdtable::{self, Kind};
use crate::real;

/// At init in a new image: takes over the listeners `GCB_INHERITED` names.
pub fn adopt() {
    let Some(value) = std::env::var_os(VAR) else { return };
    let entries = parse(&value.to_string_lossy());
    let mut groups: BTreeMap<c_int, Vec<Entry>> = BTreeMap::new();
    for e in entries {
        groups.entry(e.mgmt).or_default().push(e);
    }
    for (mgmt_fd, entries) in groups {
        let Some((broker, mgmt_local)) = valid_mgmt(mgmt_fd) else { continue };
        let first = entries[0];
        let proto = if first.udp_token.is_some() { proto::Proto::Udp } else { proto::Proto::Tcp };
        let valid = |e: &&Entry| e.udp_token.is_some() == (proto == proto::Proto::Udp) && valid_socket(e, proto);
        let fds: Vec<c_int> = entries.iter().filter(valid).map(|e| e.fd).collect();
        if fds.is_empty() {
            // Ours, handed over for a listener that is gone: nobody else uses it.
            // SAFETY: a UDP socket no one in this image knows.
            unsafe { real::close(mgmt_fd) };
            continue;
        }
        let reg_local =
            if first.local.ip().is_unspecified() { SocketAddrV4::new(*mgmt_local.ip(), first.local.port()) } else { first.local };
        let listener = Listener {
            fds: fds.clone(),
            local: first.local,
            reg_local,
            proxy: first.proxy,
            secret: first.secret,
            shared: true,
            mgmt: Mgmt {
                fd: crate::internal::adopt(mgmt_fd),
                broker,
                local: mgmt_local,
                requester: mgmt::new_requester(proto::rudp::RetryPolicy::default()),
                pending: Default::default(),
                // Heartbeat at once: it also tells whether the broker still knows us.
                next_heartbeat: Instant::now(),
                heard: Instant::now(),
            },
            proto,
            udp_token: first.udp_token.filter(|&t| t != 0).map(proto::gcb::Token),
        };
        super::super::with(|reg| {
            for &fd in &fds {
                fdtable::set(fd, Kind::Managed);
            }
            let (id, _) = reg.add_listener(listener);
            if proto == proto::Proto::Udp {
                for e in entries.iter().filter(|e| fds.contains(&e.fd)) {
                    let s = reg.udp.entry(e.fd);
                    s.listener = Some(id);
                    if let Some(c) = e.channel.filter(|c| sys::peer_addr(e.fd) == Ok(c.addr)) {
                        s.connected_to = Some(c.peer);
                        s.channel = Some(inherited_channel(c));
                    }
                }
                super::super::udp::control::open_data_path(reg, id);
            }
            publish(reg);
        });
        log!(Debug, "inherited {proto} socket {fds:?} ({reg_local} as {:?}) with management fd {mgmt_fd}", first.proxy);
    }
}

/// A channel handed over: kept as it was, or, while the parent was asking
/// for it again (token 0), asked for again here (the socket is connected to
/// the peer meanwhile, as `udp::channel::open` leaves it).
fn inherited_channel(c: super::ChannelEntry) -> Channel {
    let reopen = (c.token == 0).then(|| Reopen::now(Instant::now()));
    Channel { peer: c.peer, addr: c.addr, token: proto::gcb::Token(c.token), reopen }
}

fn valid_mgmt(fd: c_int) -> Option<(SocketAddrV4, SocketAddrV4)> {
    (sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE).ok()? == libc::SOCK_DGRAM).then_some(())?;
    Some((sys::peer_addr(fd).ok()?, sys::local_addr(fd).ok()?))
}

/// A listening TCP socket, or a UDP socket, bound to the entry's address.
fn valid_socket(e: &Entry, proto: proto::Proto) -> bool {
    let kind = match proto {
        proto::Proto::Tcp => {
            sys::get_int_opt(e.fd, libc::SOL_SOCKET, libc::SO_TYPE) == Ok(libc::SOCK_STREAM)
                && sys::get_int_opt(e.fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Ok(1)
        }
        proto::Proto::Udp => sys::get_int_opt(e.fd, libc::SOL_SOCKET, libc::SO_TYPE) == Ok(libc::SOCK_DGRAM),
    };
    // A connected UDP socket bound to 0.0.0.0 reports the address the
    // kernel chose towards its peer.
    let bound_there = |got: SocketAddrV4| got == e.local || (e.local.ip().is_unspecified() && got.port() == e.local.port());
    kind && sys::local_addr(e.fd).is_ok_and(bound_there)
}
