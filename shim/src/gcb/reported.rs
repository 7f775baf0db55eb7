//! GCB's part of a `bind` to a reported address (`client::pinned` has the
//! steps): which IPs are a proxy IP of this process, and the registration that
//! asks for exactly the proxy port the program bound.
//!
//! A proxy IP is the IP of one of `GCB_INAGENT`'s brokers (a broker's command
//! port and proxy sockets share one IP), or one a broker answered in a
//! `RegisterOk` of this process (a broker whose `--public-ip` differs from the
//! address it was named by). The socket registers with that very broker,
//! whichever this process prefers, since the address belongs to it, from the
//! host's address towards that broker (the management socket's). TCP
//! registers at `bind` here, not at `listen`, so a port that cannot be had
//! fails the `bind`; a TCP socket pinned this way that connects instead of
//! listening ([`turns_active`]) gives its registration up and is brokered like
//! any other connector.

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::c_int;
use proto::gcb::{ErrorCode, Message};
use proto::rudp::RetryPolicy;
use proto::Proto;

use super::listener::{self, Registered};
use super::mgmt::{self, NoAnswer};
use crate::client::sys::{self, Errno};
use crate::client::pinned::{self, Pinned};
use crate::fdtable::{self, Kind};

/// The broker of `GCB_INAGENT` at `ip`: a broker's command port and its proxy
/// sockets share one IP, so a program binding that IP means that broker.
fn named_at(ip: Ipv4Addr, list: &[std::net::SocketAddr]) -> Option<SocketAddrV4> {
    list.iter().find_map(|b| match b {
        std::net::SocketAddr::V4(v4) if *v4.ip() == ip => Some(*v4),
        _ => None,
    })
}

/// The broker `ip` belongs to: one named in `GCB_INAGENT` at that IP, else the
/// broker that gave this process a proxy address on it (`learned`: proxy IP,
/// broker).
fn owner_of(ip: Ipv4Addr, named: Option<SocketAddrV4>, mut learned: impl Iterator<Item = (Ipv4Addr, SocketAddrV4)>) -> Option<SocketAddrV4> {
    named.or_else(|| learned.find(|(proxy_ip, _)| *proxy_ip == ip).map(|(_, broker)| broker))
}

/// Makes `fd`'s bind to `want` good if `want`'s IP is a proxy IP (module docs).
pub fn pin(fd: c_int, want: SocketAddrV4) -> Pinned {
    let (proto, watched) = match fdtable::kind(fd) {
        Kind::Watched => (Proto::Tcp, Kind::Watched),
        Kind::WatchedUdp => (Proto::Udp, Kind::WatchedUdp),
        _ => return Pinned::NotOurs,
    };
    // `GCB_INAGENT` as configured, not the broker set: making that costs
    // system calls, which a bind to a stranger's address must not pay.
    let named = match &crate::config::get().mode {
        crate::config::Mode::Gcb(list) => named_at(*want.ip(), list),
        _ => None,
    };
    // Proxy IPs are learned only from listeners, which are managed fds.
    if named.is_none() && !fdtable::any_managed() {
        return Pinned::NotOurs;
    }
    let broker = super::state::with(|reg| owner_of(*want.ip(), named, reg.listeners().filter_map(|(_, l)| l.proxy.map(|p| (*p.ip(), l.mgmt.broker)))));
    let Some(broker) = broker else { return Pinned::NotOurs };
    match register_at(fd, proto, watched, broker, want) {
        Ok(()) => Pinned::Done,
        Err(e) => {
            pinned::unbind(fd);
            fdtable::set(fd, watched);
            Pinned::Failed(e)
        }
    }
}

/// Binds `fd` to this host's IP towards `broker` and registers it there,
/// requiring `want`'s port; one log line either way.
fn register_at(fd: c_int, proto: Proto, watched: Kind, broker: SocketAddrV4, want: SocketAddrV4) -> Result<(), Errno> {
    let (sock, mgmt_local) = crate::client::exchange::open(broker).map_err(|e| {
        log!(Warn, "cannot bind {proto} to {want}: cannot reach its broker {broker}: {}", std::io::Error::from_raw_os_error(e));
        if crate::client::sys::out_of_resources(e) { e } else { libc::EADDRNOTAVAIL }
    })?;
    pinned::bind_local(fd, *mgmt_local.ip())?;
    let local = sys::local_addr(fd)?;
    let reg_local = local;
    let msg = mgmt::pinned_register_message(proto, reg_local, mgmt_local, want.port());
    let (proxy, udp_token) = match mgmt::exchange(sock.raw(), broker, RetryPolicy::default(), &msg) {
        Ok(Message::RegisterOk { proxy, udp_token, .. }) => (proxy, udp_token),
        Ok(Message::Error { code, detail }) => {
            let taken = code == ErrorCode::PortUnavailable;
            let why = if taken { "the broker has that port in use or outside its range" } else { "the broker refused" };
            log!(Warn, "cannot bind {proto} to {want}: {why} ({code:?} {detail})");
            return Err(pinned::refusal_errno(taken));
        }
        Ok(other) => {
            log!(Warn, "cannot bind {proto} to {want}: {broker} answered {:?}, not as a GCB broker", other.kind());
            return Err(libc::EADDRNOTAVAIL);
        }
        Err(e) => {
            let why = if e == NoAnswer::NotProtocol { "not a GCB broker".to_string() } else { e.describe() };
            log!(Warn, "cannot bind {proto} to {want}: its broker {broker} is unreachable ({why})");
            return Err(libc::EADDRNOTAVAIL);
        }
    };
    super::state::with(|reg| reg.brokers.loaded().mark_alive(broker));
    let registered = Registered { sock, broker, mgmt_local, reg_local, proxy: Some(proxy), udp_token };
    if !listener::adopt(fd, proto, watched, local, registered, listener::UNKNOWN_BACKLOG) {
        return Err(libc::EBADF);
    }
    if !pinned::matches(want, proxy) {
        // A broker known by another IP than its proxy IP, asked for port 0.
        log!(Warn, "cannot bind {proto} to {want}: its broker {broker} registers on {proxy}");
        super::fdops::forget(fd);
        return Err(libc::EADDRNOTAVAIL);
    }
    log!(Info, "registered {proto} {reg_local} as {proxy}, the address the program bound");
    Ok(())
}

/// `connect` on a managed TCP socket: true (and the registration given up,
/// the fd a connector candidate again) if it was registered at `bind` to its
/// reported address and never listened. Condor binds its outgoing sockets to
/// its `NETWORK_INTERFACE` address too, and those must be brokered.
pub fn turns_active(fd: c_int) -> bool {
    let _errno = crate::guard::ErrnoGuard::new();
    if fdtable::kind(fd) != Kind::Managed || !super::state::with(|reg| reg.listener_id(fd).is_some() && reg.udp.get(fd).is_none()) {
        return false;
    }
    if sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) != Ok(0) {
        return false;
    }
    log!(Debug, "fd {fd}, bound to its reported address, connects: its registration goes");
    super::fdops::forget(fd);
    fdtable::set(fd, Kind::Watched);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn a_proxy_ip_belongs_to_the_broker_named_at_it() {
        let list: Vec<std::net::SocketAddr> = vec!["203.0.113.10:65432".parse().unwrap(), "203.0.113.11:7000".parse().unwrap(), "[2001:db8::1]:65432".parse().unwrap()];
        assert_eq!(named_at("203.0.113.11".parse().unwrap(), &list), Some(a("203.0.113.11:7000")));
        assert_eq!(named_at("203.0.113.12".parse().unwrap(), &list), None);
    }

    #[test]
    fn a_named_broker_wins_then_the_proxy_ips_learned() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let learned = [(ip("198.51.100.7"), a("10.1.1.1:65432")), (ip("203.0.113.10"), a("10.1.1.2:65432"))];
        let named = Some(a("203.0.113.10:65432"));
        assert_eq!(owner_of(ip("203.0.113.10"), named, learned.into_iter()), named);
        assert_eq!(owner_of(ip("198.51.100.7"), None, learned.into_iter()), Some(a("10.1.1.1:65432")));
        assert_eq!(owner_of(ip("192.0.2.99"), None, learned.into_iter()), None, "an unknown IP stays the kernel's business");
    }
}
