//! What the GCB client knows about this process's sockets: the paper's "pool of
//! records of listening sockets" (4.2.1), the names it reports for brokered
//! connections, and its caches. Pure data: no system calls, so every rule here is
//! unit-tested; the modules around it do the I/O and keep the fd table in step.
//!
//! # Invariants
//!
//! 1. An fd maps to at most one [`Entry`]. `Entry::Listener(id)` for fd `f` holds
//!    exactly when `f` is in `listeners[id].fds`.
//! 2. A listener record has at least one fd: removing its last fd removes the
//!    record and hands it back ([`Removed::Last`]), so the caller can close its
//!    management socket and, unless [`Listener::shared`], unregister it.
//! 3. Each listener has its own management socket; no two records share one.
//! 4. Outside this module, the fd table agrees: an fd with a listener entry is
//!    `Managed`, one with a `Named` entry is `Named`, a management fd is `Internal`.
//!    Callers change both under the registry lock.
//!
//! `check` verifies 1 to 3 and runs after every operation in the tests.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddrV4;
use std::time::Instant;

use libc::c_int;
use proto::rudp::{ReplyCache, Requester};

use super::doorbell::PendingBell;
use super::interest::Interest;
use super::negcache::NegCache;

pub type ListenerId = u64;

/// What an outstanding request on a management socket was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Register,
    Heartbeat,
    /// Asking again for the channel of UDP socket `fd` to `peer` (`udp::channel`).
    Channel { fd: c_int, peer: SocketAddrV4 },
}

/// A listener's management socket: a UDP socket connected to the broker.
#[derive(Debug)]
pub struct Mgmt {
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
    /// Shared secret of this listener's doorbells, so only the shim's own records
    /// are acted on (any local process can connect from 127.71.0.0/16).
    pub secret: u64,
    /// Another process holds the socket too (fork, exec): closing it here must
    /// not unregister it.
    pub shared: bool,
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

/// The names the shim reports for a socket instead of the kernel's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Names {
    /// `getsockname`: a registered listener's proxy address.
    pub local: Option<SocketAddrV4>,
    /// `getpeername`: the original peer of a brokered connection, or the proxy
    /// address a connector dialed.
    pub peer: Option<SocketAddrV4>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Listener(ListenerId),
    Named(Names),
}

/// What removing an fd left behind.
#[derive(Debug)]
pub enum Removed {
    /// The fd was not in the registry.
    Nothing,
    /// A named connection's record is gone.
    Named,
    /// One fd of a listener that other fds still name.
    Alias,
    /// The listener's last fd: the record, for the caller to wind up.
    Last(Box<Listener>),
}

#[derive(Debug)]
pub struct Registry {
    listeners: BTreeMap<ListenerId, Listener>,
    fds: HashMap<c_int, Entry>,
    next_id: ListenerId,
    /// Epoll registrations of watched sockets (see `interest`).
    pub interest: Interest,
    /// Connect targets with no broker (see `negcache`).
    pub negative: NegCache,
    /// Replies to the broker's commands, for its retransmissions (rudp).
    pub replies: ReplyCache<SocketAddrV4>,
    /// Nonces of the broker's sealed commands, checked after `replies`.
    pub guard: proto::auth::ReplayGuard,
    /// Doorbells waiting for room in their listener's accept queue (`doorbell`).
    pub bells: Vec<PendingBell>,
    /// Connections dialed ahead for rung doorbells (`predial`).
    pub ahead: Vec<super::predial::Ahead>,
    /// Acks of connection commands, sent once the connection is under way
    /// (`mgmt::send_acks_due`): management fd and sealed datagram.
    pub acks_due: Vec<(c_int, Vec<u8>)>,
    /// Proxy addresses of closed listeners, for re-listens (see `released`).
    pub released: super::released::Released,
    /// The fork generation this registry was last used in (see `lock`).
    pub generation: u32,
    /// `GCB_INAGENT`'s brokers, which one this process prefers, which are dead
    /// (see `brokers`); empty until first used.
    pub brokers: super::brokers::Brokers,
    /// Managed UDP sockets: receiver lists, relay peers, buffers (see `udp`).
    pub udp: super::udp::table::UdpTable,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            listeners: BTreeMap::new(),
            fds: HashMap::new(),
            next_id: 1,
            interest: Interest::default(),
            negative: NegCache::default(),
            replies: ReplyCache::new(ReplyCache::<SocketAddrV4>::DEFAULT_TTL, 256, 64 * 1024),
            guard: crate::client::seal::new_guard(),
            bells: Vec::new(),
            ahead: Vec::new(),
            acks_due: Vec::new(),
            released: Default::default(),
            generation: 0,
            brokers: Default::default(),
            udp: Default::default(),
        }
    }

    /// Adds a listener under every fd in `listener.fds`; an fd that named
    /// something else before is taken from it first.
    pub fn add_listener(&mut self, listener: Listener) -> (ListenerId, Vec<Removed>) {
        let removed = listener.fds.iter().map(|&fd| self.remove_fd(fd)).collect();
        let id = self.next_id;
        self.next_id += 1;
        for &fd in &listener.fds {
            self.fds.insert(fd, Entry::Listener(id));
        }
        self.listeners.insert(id, listener);
        (id, removed)
    }

    pub fn listener_id(&self, fd: c_int) -> Option<ListenerId> {
        match self.fds.get(&fd)? {
            Entry::Listener(id) => Some(*id),
            Entry::Named(_) => None,
        }
    }

    pub fn listener(&self, id: ListenerId) -> Option<&Listener> {
        self.listeners.get(&id)
    }

    pub fn listener_mut(&mut self, id: ListenerId) -> Option<&mut Listener> {
        self.listeners.get_mut(&id)
    }

    pub fn listeners(&self) -> impl Iterator<Item = (ListenerId, &Listener)> {
        self.listeners.iter().map(|(id, l)| (*id, l))
    }

    /// The proxy address of a registered socket of the other protocol on the
    /// same local port: a program that serves TCP and UDP on one port (iperf3,
    /// Condor's daemons) is told one port number, so the second registration
    /// asks the broker for the first one's.
    pub fn twin_proxy(&self, proto: proto::Proto, local: SocketAddrV4) -> Option<SocketAddrV4> {
        self.listeners
            .values()
            .filter(|l| l.proto != proto && l.reg_local.port() == local.port())
            .find(|l| l.reg_local.ip() == local.ip() || l.local.ip().is_unspecified() || local.ip().is_unspecified())
            .and_then(|l| l.proxy)
    }

    pub fn listeners_mut(&mut self) -> impl Iterator<Item = (ListenerId, &mut Listener)> {
        self.listeners.iter_mut().map(|(id, l)| (*id, l))
    }

    pub fn by_mgmt_fd(&self, mgmt_fd: c_int) -> Option<ListenerId> {
        self.listeners.iter().find(|(_, l)| l.mgmt.fd == mgmt_fd).map(|(id, _)| *id)
    }

    /// Every management fd, for the AEH's poll set.
    pub fn mgmt_fds(&self) -> Vec<c_int> {
        self.listeners.values().map(|l| l.mgmt.fd).collect()
    }

    /// The names to report for `fd`, if the shim reports any: a listener's proxy
    /// address once registered, or a named connection's record.
    pub fn names(&self, fd: c_int) -> Option<Names> {
        match self.fds.get(&fd)? {
            Entry::Listener(id) => Some(Names { local: self.listeners.get(id)?.proxy, peer: None }),
            Entry::Named(n) => Some(*n),
        }
    }

    /// Records names for `fd`, replacing whatever it named before.
    pub fn set_names(&mut self, fd: c_int, names: Names) -> Removed {
        let removed = self.remove_fd(fd);
        self.fds.insert(fd, Entry::Named(names));
        removed
    }

    /// `new` is a duplicate of `old` (dup, dup2, dup3, F_DUPFD): it names the same
    /// listener or carries the same names. Returns false if `old` has no entry.
    /// Whatever `new` named before must have been removed by the caller.
    pub fn alias(&mut self, old: c_int, new: c_int) -> bool {
        if old == new {
            return self.fds.contains_key(&old);
        }
        let Some(entry) = self.fds.get(&old).copied() else { return false };
        if let Entry::Listener(id) = entry {
            let Some(l) = self.listeners.get_mut(&id) else { return false };
            if !l.fds.contains(&new) {
                l.fds.push(new);
            }
        }
        self.remove_fd(new);
        self.fds.insert(new, entry);
        true
    }

    /// `fd`, a new socket, shares listener `id`'s registration (UDP sockets
    /// bound to one address); false if there is no such listener.
    pub fn add_fd(&mut self, id: ListenerId, fd: c_int) -> bool {
        if !self.listeners.contains_key(&id) {
            return false;
        }
        self.remove_fd(fd);
        let Some(l) = self.listeners.get_mut(&id) else { return false };
        l.fds.push(fd);
        self.fds.insert(fd, Entry::Listener(id));
        true
    }

    /// Forgets `fd` (closed, or replaced by a dup2 onto it).
    pub fn remove_fd(&mut self, fd: c_int) -> Removed {
        match self.fds.remove(&fd) {
            None => Removed::Nothing,
            Some(Entry::Named(_)) => Removed::Named,
            Some(Entry::Listener(id)) => {
                let Some(l) = self.listeners.get_mut(&id) else { return Removed::Nothing };
                l.fds.retain(|&f| f != fd);
                if !l.fds.is_empty() {
                    return Removed::Alias;
                }
                match self.listeners.remove(&id) {
                    Some(l) => Removed::Last(Box::new(l)),
                    None => Removed::Nothing,
                }
            }
        }
    }

    /// Called as the process forks: from now on every listener is shared.
    pub fn mark_all_shared(&mut self) {
        for l in self.listeners.values_mut() {
            l.shared = true;
        }
    }

    /// An internal fd of the client (a management socket, a doorbell or a
    /// connection dialed ahead) moved to another number (the application
    /// `dup2`ed onto it); false if not ours.
    pub fn replace_internal_fd(&mut self, old: c_int, new: c_int) -> bool {
        if let Some(l) = self.listeners.values_mut().find(|l| l.mgmt.fd == old) {
            l.mgmt.fd = new;
            return true;
        }
        if let Some(a) = self.ahead.iter_mut().find(|a| a.fd == old) {
            a.fd = new;
            return true;
        }
        match self.bells.iter_mut().find(|b| b.fd == old) {
            Some(b) => {
                b.fd = new;
                true
            }
            None => false,
        }
    }

    /// Checks the invariants of the module docs; a description of the first broken one.
    pub fn check(&self) -> Result<(), String> {
        for (&fd, entry) in &self.fds {
            if let Entry::Listener(id) = entry {
                let l = self.listeners.get(id).ok_or(format!("fd {fd} names missing listener {id}"))?;
                if !l.fds.contains(&fd) {
                    return Err(format!("fd {fd} names listener {id}, which does not list it"));
                }
            }
        }
        let mut mgmt = std::collections::HashSet::new();
        for (id, l) in &self.listeners {
            if l.fds.is_empty() {
                return Err(format!("listener {id} has no fd"));
            }
            for fd in &l.fds {
                if self.fds.get(fd) != Some(&Entry::Listener(*id)) {
                    return Err(format!("listener {id} lists fd {fd}, which names something else"));
                }
            }
            if !mgmt.insert(l.mgmt.fd) {
                return Err(format!("management fd {} is shared", l.mgmt.fd));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::rudp::RetryPolicy;

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn listener(fds: &[c_int], mgmt_fd: c_int) -> Listener {
        Listener {
            fds: fds.to_vec(),
            local: addr("0.0.0.0:7000"),
            reg_local: addr("192.0.2.10:7000"),
            proxy: None,
            secret: 9,
            shared: false,
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
    fn listener_lifecycle_with_dups() {
        let mut r = Registry::new();
        let (id, _) = r.add_listener(listener(&[5], 900));
        r.check().unwrap();
        assert_eq!(r.listener_id(5), Some(id));
        assert_eq!(r.names(5), Some(Names::default()), "unregistered: no proxy to report");
        r.listener_mut(id).unwrap().proxy = Some(addr("203.0.113.10:20001"));
        assert_eq!(r.names(5).unwrap().local, Some(addr("203.0.113.10:20001")));
        assert!(r.alias(5, 6));
        assert!(r.alias(6, 7));
        r.check().unwrap();
        assert_eq!(r.listener(id).unwrap().fds, vec![5, 6, 7]);
        assert_eq!(r.by_mgmt_fd(900), Some(id));
        assert!(matches!(r.remove_fd(5), Removed::Alias));
        assert!(matches!(r.remove_fd(7), Removed::Alias));
        r.check().unwrap();
        match r.remove_fd(6) {
            Removed::Last(l) => assert_eq!(l.mgmt.fd, 900),
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.remove_fd(6), Removed::Nothing));
        assert!(r.mgmt_fds().is_empty());
        r.check().unwrap();
    }

    #[test]
    fn names_replace_and_dup_onto_a_listener_fd() {
        let mut r = Registry::new();
        let (id, _) = r.add_listener(listener(&[5], 900));
        let n = Names { local: Some(addr("203.0.113.10:20001")), peer: Some(addr("198.51.100.9:5555")) };
        assert!(matches!(r.set_names(8, n), Removed::Nothing));
        assert_eq!(r.names(8), Some(n));
        assert!(!r.alias(3, 4), "nothing to copy");
        // dup2(8, 5): the caller removes 5 first (its listener's last fd), then aliases.
        assert!(matches!(r.remove_fd(5), Removed::Last(_)));
        assert!(r.alias(8, 5));
        assert_eq!(r.names(5), Some(n));
        assert!(r.listener(id).is_none());
        r.check().unwrap();
        // set_names on a listener fd takes it from the listener.
        let (id2, _) = r.add_listener(listener(&[10, 11], 901));
        assert!(matches!(r.set_names(10, n), Removed::Alias));
        assert_eq!(r.listener(id2).unwrap().fds, vec![11]);
        r.check().unwrap();
    }

    #[test]
    fn add_listener_takes_fds_from_old_entries_and_fork_shares() {
        let mut r = Registry::new();
        r.set_names(5, Names::default());
        let (a, removed) = r.add_listener(listener(&[5], 900));
        assert!(matches!(removed[..], [Removed::Named]));
        let (b, _) = r.add_listener(listener(&[6], 901));
        assert_ne!(a, b);
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
    fn a_second_socket_joins_a_registration_until_the_last_goes() {
        let mut r = Registry::new();
        let (id, _) = r.add_listener(listener(&[5], 900));
        assert!(r.add_fd(id, 8));
        assert!(!r.add_fd(id + 1, 9), "no such listener");
        r.check().unwrap();
        assert_eq!(r.listener_id(8), Some(id));
        assert!(matches!(r.remove_fd(5), Removed::Alias), "the first socket closed: still registered");
        assert!(matches!(r.remove_fd(8), Removed::Last(_)));
        r.check().unwrap();
    }

    #[test]
    fn doorbell_target_is_loopback_for_wildcard_binds() {
        let mut l = listener(&[5], 900);
        assert_eq!(l.doorbell_target(), addr("127.0.0.1:7000"));
        l.local = addr("192.0.2.10:7000");
        assert_eq!(l.doorbell_target(), addr("192.0.2.10:7000"));
    }
}
