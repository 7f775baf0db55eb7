//! A GCB listener's record: the paper's "record of a listening socket" (4.2.1),
//! with the management socket that registers it with the broker and keeps it
//! alive. The registry ([`super::registry`]) keeps these in its fd-keyed table.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::Instant;

use libc::c_int;
use proto::rudp::Requester;

use crate::client::records::{Names, Record, RecordId};

pub type ListenerId = RecordId;

/// What an outstanding request on a management socket was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Register,
    Heartbeat,
    /// Asking again for the channel of UDP socket `fd` to `peer` (`udp::channel`).
    Channel { fd: c_int, peer: SocketAddrV4 },
}

/// A listener's management socket: a UDP socket connected to the broker,
/// this process's own (every process holding a listener is a holder of its
/// registration, with a socket of its own: `docs/gcb-client-design.md`).
#[derive(Debug)]
pub struct Mgmt {
    /// -1 until this process has opened one (a forked child, a new image, a
    /// process that received the listener): the responder opens it and joins.
    pub fd: c_int,
    pub broker: SocketAddrV4,
    /// Its own address (`getsockname` after `connect`), sent as `mgmt_local`.
    pub local: SocketAddrV4,
    pub requester: Requester<SocketAddrV4>,
    pub pending: HashMap<u64, Purpose>,
    pub next_heartbeat: Instant,
    /// When the broker last said anything on this socket (or the socket was
    /// pointed at it): the clock of failover (`brokers`).
    pub heard: Instant,
}

/// A listening socket registered (or being registered) with the broker.
#[derive(Debug)]
pub struct Listener {
    /// The application's fds for this socket: several after `dup`, and for
    /// UDP, the fds of every socket bound to `local` (`udp::bind`).
    pub fds: Vec<c_int>,
    /// The socket's real bound address; may be 0.0.0.0.
    pub local: SocketAddrV4,
    /// The address told to the broker as `Register.local` (0.0.0.0 replaced by
    /// the management socket's IP); peers in the same realm dial it.
    pub reg_local: SocketAddrV4,
    /// The proxy address, once the broker has answered `RegisterOk`.
    pub proxy: Option<SocketAddrV4>,
    /// This process's management socket has had its `RegisterOk`: it is a
    /// holder and heartbeats; until then it registers (and so joins).
    pub joined: bool,
    /// The broker forgot the registration (a restart): the next `RegisterOk`
    /// is a registration again, logged as one.
    pub lost: bool,
    /// Another process holds the socket too (fork, exec, `SCM_RIGHTS`):
    /// closing it here must not unregister it.
    pub shared: bool,
    /// The socket's family, which the connections parked for it take.
    pub family: crate::client::family::Family,
    /// Connections that may wait for `accept` at once, dialing or parked
    /// (`Registry::room_for`): the listen backlog as the kernel caps it.
    pub backlog: usize,
    pub mgmt: Mgmt,
    /// TCP (a listening socket) or UDP (a bound datagram socket, see `udp`).
    pub proto: proto::Proto,
    /// UDP: the token of the Dummies that keep the data path open (`RegisterOk`).
    pub udp_token: Option<proto::gcb::Token>,
}

impl Listener {
    /// Where doorbells for this listener go: its own address, loopback for a
    /// wildcard bind.
    pub fn doorbell_target(&self) -> SocketAddrV4 {
        if self.local.ip().is_unspecified() {
            SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, self.local.port())
        } else {
            self.local
        }
    }
}

impl Record for Listener {
    fn fds(&self) -> &Vec<c_int> {
        &self.fds
    }
    fn fds_mut(&mut self) -> &mut Vec<c_int> {
        &mut self.fds
    }
    fn mgmt_fd(&self) -> c_int {
        self.mgmt.fd
    }
    /// A listener's proxy address, once registered.
    fn names(&self) -> Names {
        Names { local: self.proxy, peer: None }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proto::rudp::RetryPolicy;

    pub(crate) fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    /// A TCP listener on 0.0.0.0:7000 held by `fds`, with management socket `mgmt_fd`.
    pub(crate) fn listener(fds: &[c_int], mgmt_fd: c_int) -> Listener {
        Listener {
            fds: fds.to_vec(),
            local: addr("0.0.0.0:7000"),
            reg_local: addr("192.0.2.10:7000"),
            proxy: None,
            joined: true,
            lost: false,
            shared: false,
            family: crate::client::family::Family::V4,
            backlog: 16,
            mgmt: Mgmt {
                fd: mgmt_fd,
                broker: addr("203.0.113.10:65432"),
                local: addr("192.0.2.10:40000"),
                requester: Requester::new(RetryPolicy::default(), 1, 4),
                pending: HashMap::new(),
                next_heartbeat: Instant::now(),
                heard: Instant::now(),
            },
            proto: proto::Proto::Tcp,
            udp_token: None,
        }
    }

    #[test]
    fn doorbell_target_is_loopback_for_wildcard_binds() {
        let mut l = listener(&[5], 900);
        assert_eq!(l.doorbell_target(), addr("127.0.0.1:7000"));
        l.local = addr("192.0.2.10:7000");
        assert_eq!(l.doorbell_target(), addr("192.0.2.10:7000"));
    }

    #[test]
    fn a_listener_reports_its_proxy_once_registered() {
        let mut l = listener(&[5], 900);
        assert_eq!(Record::names(&l), Names::default());
        l.proxy = Some(addr("203.0.113.10:20001"));
        assert_eq!(Record::names(&l).local, l.proxy);
    }
}
