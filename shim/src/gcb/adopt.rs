//! The new image's side of an `exec` hand-over: at init, the sockets named
//! in `GCB_INHERITED` are checked and held again, and the responder joins
//! their registrations from this image's own management sockets.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::Instant;

use libc::c_int;

use super::registry::{Listener, Mgmt};
use crate::client::sys;
use super::udp::table::Reopen;
use super::udp::table::Channel;
use super::{listener, mgmt};
use super::inherit::publish;
use crate::client::inherit::{parse, ChannelEntry, Entry, VAR};
use crate::fdtable::{self, Kind};

/// At init in a new image: takes over the listeners `GCB_INHERITED` names.
pub fn adopt() {
    let Some(value) = std::env::var_os(VAR) else { return };
    // One registration per protocol and local address; its fds are the dups.
    let mut groups: BTreeMap<(bool, SocketAddrV4), Vec<Entry>> = BTreeMap::new();
    for e in parse(&value.to_string_lossy()) {
        groups.entry((e.udp_token.is_some(), e.local)).or_default().push(e);
    }
    let mut any = false;
    for ((udp, local), entries) in groups {
        let proto = if udp { proto::Proto::Udp } else { proto::Proto::Tcp };
        let fds: Vec<c_int> = entries.iter().filter(|e| valid_socket(e, proto)).map(|e| e.fd).collect();
        let Some(&first_fd) = fds.first() else { continue };
        let first = entries[0];
        let backlog = match first.backlog {
            0 => listener::UNKNOWN_BACKLOG,
            n => n as usize,
        };
        let broker = broker_for(first.proxy);
        let l = held(fds.clone(), local, first.proxy, proto, crate::client::family::of(first_fd), backlog, broker);
        let udp_token = first.udp_token.filter(|&t| t != 0).map(proto::gcb::Token);
        super::state::with(|reg| {
            for &fd in &fds {
                fdtable::set(fd, Kind::Managed);
            }
            let (id, _) = reg.add_listener(Listener { udp_token, ..l });
            if proto == proto::Proto::Udp {
                for e in entries.iter().filter(|e| fds.contains(&e.fd)) {
                    let s = reg.udp.entry(e.fd);
                    s.listener = Some(id);
                    if let Some(c) = e.channel.filter(|c| sys::peer_addr(e.fd) == Ok(c.addr)) {
                        s.connected_to = Some(c.peer);
                        s.channel = Some(inherited_channel(c));
                    }
                }
            }
            publish(reg);
        });
        log!(Debug, "inherited {proto} socket {fds:?} ({local} as {:?})", first.proxy);
        any = true;
    }
    if any {
        super::state::ensure_responder();
    }
}

/// The record of a listener this process holds without having registered it
/// (inherited across `exec`, received over `SCM_RIGHTS`, handed over by
/// socket activation): shared, with no management socket yet. The responder
/// opens one and registers from it (`mgmt_events::on_timers`), which joins the
/// registration another holder made, or makes it.
pub fn held(
    fds: Vec<c_int>,
    local: SocketAddrV4,
    proxy: Option<SocketAddrV4>,
    proto: proto::Proto,
    family: crate::client::family::Family,
    backlog: usize,
    broker: Option<SocketAddrV4>,
) -> Listener {
    let now = Instant::now();
    Listener {
        fds,
        local,
        reg_local: local,
        proxy,
        joined: false,
        lost: false,
        shared: true,
        family,
        backlog,
        mgmt: Mgmt {
            fd: -1,
            broker: broker.unwrap_or(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0)),
            local: SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
            requester: mgmt::new_requester(proto::rudp::RetryPolicy::default()),
            pending: Default::default(),
            next_heartbeat: now,
            heard: now,
        },
        proto,
        udp_token: None,
    }
}

/// The broker to register a held listener with: the one its proxy address
/// is on, else this process's preferred one. Takes the registry lock.
pub fn broker_for(proxy: Option<SocketAddrV4>) -> Option<SocketAddrV4> {
    let named = proxy.and_then(|p| super::ask::our_broker(*p.ip())).and_then(|b| match b {
        std::net::SocketAddr::V4(v4) => Some(v4),
        std::net::SocketAddr::V6(_) => None,
    });
    named.or_else(|| super::state::with(|reg| reg.brokers.loaded().candidates(Instant::now()).into_iter().next()))
}

/// A channel handed over: kept as it was, or, while the parent was asking
/// for it again (token 0), asked for again here (the socket is connected to
/// the peer meanwhile, as `udp::channel::open` leaves it).
fn inherited_channel(c: ChannelEntry) -> Channel {
    let reopen = (c.token == 0).then(|| Reopen::now(Instant::now()));
    Channel { peer: c.peer, addr: c.addr, token: proto::gcb::Token(c.token), reopen }
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
