//! What the GCB client knows about this process's sockets: the paper's "pool of
//! records of listening sockets" (4.2.1) in an fd-keyed table shared with DPF
//! (`client::records`), the names it reports for brokered connections, and its
//! caches; and, in its child modules, the records of the work the responder
//! has in hand for them (doorbells, dials and punches, parked connections,
//! the program's non-blocking connects). Pure data: no system calls but
//! closing the client's own fds when their work is dropped, so every rule
//! here is unit-tested; the modules around it do the I/O and keep the fd
//! table in step. It imports none of them: they all take the registry.
//!
//! # Invariants
//!
//! 1. to 3. Those of `client::records`: an fd holds at most one listener or
//!    names entry; a listener has at least one fd (its last fd's removal hands
//!    it back as [`Removed::Last`], for the caller to close its management socket
//!    and, unless [`Listener::shared`], unregister it); no two listeners share a
//!    management socket.
//! 4. Outside this module, the fd table agrees: an fd with a listener entry is
//!    `Managed`, one with a `Named` entry is `Named`, a management fd is `Internal`.
//!    Callers change both under the registry lock.
//!
//! `check` verifies 1 to 3 and runs after every operation in the tests.

use std::net::SocketAddrV4;

use libc::c_int;
use proto::rudp::ReplyCache;

use super::interest::Interest;
use crate::client::records::{self, FdRecords};

pub mod bells;
pub mod connects;
pub mod parking;
pub mod serving;
pub mod standby;

pub use super::registration::{Listener, ListenerId, Mgmt, Purpose};
pub use crate::client::records::Names;

/// What removing an fd left behind; `Last` carries the listener to wind up.
pub type Removed = records::Removed<Listener>;

#[derive(Debug)]
pub struct Registry {
    /// Listener records by id and what each fd holds (see `client::records`).
    listeners: FdRecords<Listener>,
    /// Epoll registrations of watched sockets (see `interest`).
    pub interest: Interest,
    /// Replies to the broker's commands, for its retransmissions (rudp).
    pub replies: ReplyCache<SocketAddrV4>,
    /// Nonces of the broker's sealed commands, checked after `replies`.
    pub guard: proto::auth::ReplayGuard,
    /// Doorbells rung and not yet answered (`doorbell`).
    pub bells: Vec<bells::PendingBell>,
    /// Connections being dialed for the broker's commands (`serve`).
    pub serving: Vec<serving::Serving>,
    /// Hole punches under way for the broker's `PunchConnect` (`serve_punch`).
    pub punching: Vec<serving::Punching>,
    /// Connections established and waiting for `accept` (`park`).
    pub parked: parking::Parking,
    /// The program's non-blocking connects being brokered (`connecting`).
    pub connects: connects::Connects,
    /// Acks of connection commands, sent once the connection is under way
    /// (`mgmt_events::send_acks_due`): management fd and sealed datagram.
    pub acks_due: Vec<(c_int, Vec<u8>)>,
    /// Proxy addresses of closed listeners, for re-listens (see `released`).
    pub released: crate::client::released::Released,
    /// The fork generation this registry was last used in (see `lock`).
    pub generation: u32,
    /// `GCB_INAGENT`'s brokers, which one this process prefers, which are dead
    /// (see `brokers`); empty until first used.
    pub brokers: super::brokers::Brokers,
    /// Managed UDP sockets: receiver lists, relay peers, buffers (see `udp`).
    pub udp: super::udp::table::UdpTable,
    /// The connector's listener for reversed connections, between connects
    /// (see `reversal_listener`).
    pub spare_listener: super::reversal_listener::Spare,
    /// Destinations not worth an early rendezvous (`punch::early`).
    pub not_early: super::punch::NotEarly,
    /// Standby connections, both sides (see `standby`).
    pub standby: standby::Standbys,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            listeners: FdRecords::default(),
            interest: Interest::for_registry(),
            replies: ReplyCache::new(ReplyCache::<SocketAddrV4>::DEFAULT_TTL, 256, 64 * 1024),
            guard: crate::client::seal::new_guard(),
            bells: Vec::new(),
            serving: Vec::new(),
            punching: Vec::new(),
            parked: Default::default(),
            connects: Default::default(),
            acks_due: Vec::new(),
            released: Default::default(),
            generation: 0,
            brokers: Default::default(),
            udp: Default::default(),
            spare_listener: None,
            not_early: Default::default(),
            standby: Default::default(),
        }
    }

    /// Adds a listener under every fd in `listener.fds`; an fd that named
    /// something else before is taken from it first.
    pub fn add_listener(&mut self, listener: Listener) -> (ListenerId, Vec<Removed>) {
        self.listeners.add(listener)
    }

    pub fn listener_id(&self, fd: c_int) -> Option<ListenerId> {
        self.listeners.id_of(fd)
    }

    pub fn listener(&self, id: ListenerId) -> Option<&Listener> {
        self.listeners.get(id)
    }

    pub fn listener_mut(&mut self, id: ListenerId) -> Option<&mut Listener> {
        self.listeners.get_mut(id)
    }

    pub fn listeners(&self) -> impl Iterator<Item = (ListenerId, &Listener)> {
        self.listeners.iter()
    }

    pub fn listeners_mut(&mut self) -> impl Iterator<Item = (ListenerId, &mut Listener)> {
        self.listeners.iter_mut()
    }

    /// The proxy address of a registered socket of the other protocol on the
    /// same local port: a program that serves TCP and UDP on one port (iperf3,
    /// Condor's daemons) is told one port number, so the second registration
    /// asks the broker for the first one's.
    pub fn twin_proxy(&self, proto: proto::Proto, local: SocketAddrV4) -> Option<SocketAddrV4> {
        self.listeners()
            .map(|(_, l)| l)
            .filter(|l| l.proto != proto && l.reg_local.port() == local.port())
            .find(|l| l.reg_local.ip() == local.ip() || l.local.ip().is_unspecified() || local.ip().is_unspecified())
            .and_then(|l| l.proxy)
    }

    pub fn by_mgmt_fd(&self, mgmt_fd: c_int) -> Option<ListenerId> {
        self.listeners().find(|(_, l)| l.mgmt.fd == mgmt_fd).map(|(id, _)| id)
    }

    /// Every management fd, for the AEH's poll set.
    pub fn mgmt_fds(&self) -> Vec<c_int> {
        self.listeners.mgmt_fds()
    }

    /// The names to report for `fd`, if the shim reports any: a listener's proxy
    /// address once registered, or a named connection's record.
    pub fn names(&self, fd: c_int) -> Option<Names> {
        self.listeners.names(fd)
    }

    /// Records names for `fd`, replacing whatever it named before.
    pub fn set_names(&mut self, fd: c_int, names: Names) -> Removed {
        self.listeners.set_names(fd, names)
    }

    /// `new` is a duplicate of `old` (see `FdRecords::alias`); false if `old`
    /// has no entry.
    pub fn alias(&mut self, old: c_int, new: c_int) -> bool {
        self.listeners.alias(old, new)
    }

    /// `fd`, a new socket, shares listener `id`'s registration (UDP sockets
    /// bound to one address); false if there is no such listener.
    pub fn add_fd(&mut self, id: ListenerId, fd: c_int) -> bool {
        self.listeners.add_fd(id, fd)
    }

    /// Forgets `fd` (closed, or replaced by a dup2 onto it).
    pub fn remove_fd(&mut self, fd: c_int) -> Removed {
        self.listeners.remove_fd(fd)
    }

    /// Whether listener `id` may take one more connection: dials and punches
    /// under way and connections parked for it stay below its backlog, as
    /// the kernel's queue does.
    pub fn room_for(&self, id: ListenerId) -> bool {
        let Some(l) = self.listener(id) else { return false };
        let dialing = self.serving.iter().filter(|s| s.job.listener == id).count();
        let punching = self.punching.iter().filter(|p| p.job.listener == id).count();
        dialing + punching + self.parked.count_for(id) < l.backlog
    }

    /// Called as the process forks: from now on every listener is shared.
    pub fn mark_all_shared(&mut self) {
        self.listeners_mut().for_each(|(_, l)| l.shared = true);
    }

    /// An internal fd of the client (a management socket, a doorbell or a
    /// connection being dialed) moved to another number (the application
    /// `dup2`ed onto it); false if not ours.
    pub fn replace_internal_fd(&mut self, old: c_int, new: c_int) -> bool {
        if let Some((_, l)) = self.listeners_mut().find(|(_, l)| l.mgmt.fd == old) {
            l.mgmt.fd = new;
            return true;
        }
        if super::reversal_listener::moved(&mut self.spare_listener, old, new) {
            return true;
        }
        if let Some(s) = self.serving.iter_mut().find(|s| s.fd == old) {
            s.fd = new;
            return true;
        }
        if self.punching.iter_mut().any(|p| p.session.renumber(old, new)) {
            return true;
        }
        self.parked.moved(old, new) || self.connects.moved(old, new) || bells::moved(&mut self.bells, old, new) || self.standby.moved(old, new)
    }

    /// Checks invariants 1 to 3 of the module docs; a description of the first broken one.
    pub fn check(&self) -> Result<(), String> {
        self.listeners.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcb::registration::tests::{addr, listener};

    #[test]
    fn listener_lifecycle_with_dups() {
        let mut r = Registry::new();
        let (id, _) = r.add_listener(listener(&[5], 900));
        assert_eq!(r.listener_id(5), Some(id));
        assert_eq!(r.names(5), Some(Names::default()), "unregistered: no proxy to report");
        r.listener_mut(id).unwrap().proxy = Some(addr("203.0.113.10:20001"));
        assert_eq!(r.names(5).unwrap().local, Some(addr("203.0.113.10:20001")));
        assert!(r.alias(5, 6));
        assert_eq!(r.by_mgmt_fd(900), Some(id));
        assert!(matches!(r.remove_fd(5), Removed::Alias));
        assert!(matches!(r.remove_fd(6), Removed::Last(l) if l.mgmt.fd == 900));
        assert!(r.mgmt_fds().is_empty());
        r.check().unwrap();
    }

    #[test]
    fn fork_shares_and_internal_fds_move() {
        let mut r = Registry::new();
        r.add_listener(listener(&[5], 900));
        let (b, _) = r.add_listener(listener(&[6], 901));
        r.mark_all_shared();
        assert!(r.listeners().all(|(_, l)| l.shared));
        assert!(r.replace_internal_fd(901, 950));
        assert!(!r.replace_internal_fd(901, 951));
        assert_eq!(r.by_mgmt_fd(950), Some(b));
        r.check().unwrap();
        r.listener_mut(b).unwrap().mgmt.fd = 900;
        assert!(r.check().unwrap_err().contains("shared"));
    }

    #[test]
    fn the_twin_of_a_port_is_the_other_protocol_on_it() {
        let mut r = Registry::new();
        let (id, _) = r.add_listener(listener(&[5], 900));
        let at = addr("192.0.2.10:7000");
        assert_eq!(r.twin_proxy(proto::Proto::Udp, at), None, "not registered yet");
        r.listener_mut(id).unwrap().proxy = Some(addr("203.0.113.10:20001"));
        assert_eq!(r.twin_proxy(proto::Proto::Udp, at), Some(addr("203.0.113.10:20001")));
        assert_eq!(r.twin_proxy(proto::Proto::Tcp, at), None, "same protocol");
        assert_eq!(r.twin_proxy(proto::Proto::Udp, addr("192.0.2.10:7001")), None, "other port");
    }
}
