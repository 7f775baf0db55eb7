//! The registration table: one record per registered listening socket
//! (paper 4.2.2, "client socket records"), and the proxy ports behind them.
//!
//! Invariants (each mutating method keeps all of them; `check` in the tests
//! verifies them after every step):
//! 1. `records` owns the records, keyed by proxy endpoint; a record's key is
//!    its `proxy`.
//! 2. `by_mgmt[m]` is exactly the set of proxies whose record has management
//!    address `m`; no set is empty.
//! 3. `by_identity[(proto, mgmt, local)]` names the one record with that
//!    identity: a client registering the same socket again finds it there.
//! 4. `expiry` holds exactly one `(deadline, proxy)` per record, its
//!    deadline being last heartbeat + [`Registry::timeout_for`].
//! 5. Every record's proxy port is in use in the pool of its protocol; a
//!    removed record's port goes into quarantine (see `ports`).
//!
//! The table holds no sockets: a record names its proxy socket by the mio
//! token the event loop registered it under, so the table can be tested
//! without binding anything, and removal hands the token back for the
//! caller to close the socket.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use mio::Token;
use proto::{Endpoint, Proto};

use crate::decide::Realm;
use crate::ports::{Owner, PortPool, QUARANTINE};
use crate::values::PortRange;

/// What the broker knows about the client behind a registration; all of it
/// may change when the client registers again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The management socket as seen from here (its NAT mapping): where
    /// asynchronous commands go.
    pub mgmt: SocketAddrV4,
    /// The management socket's address as the client sees it.
    pub mgmt_local: SocketAddrV4,
    pub public: bool,
    pub realm: Realm,
    pub pid: u32,
    pub program: String,
    pub heartbeat_secs: u16,
}

/// What a `Register` is to the records ([`Registry::find_for_register`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The same socket registering again: this record is renewed.
    Again(Endpoint),
    /// The port asked for has this address registered by another live
    /// process (`pid`): the claimant gets a registration of its own.
    HeldByOther { proxy: Endpoint, pid: u32 },
    /// Nothing of the claimant's: a new registration.
    New,
}

#[derive(Debug, Clone)]
pub struct Record {
    pub proxy: Endpoint,
    /// The registered socket's own address; same-realm peers dial it.
    pub local: SocketAddrV4,
    pub client: Client,
    pub registered: Instant,
    pub last_heartbeat: Instant,
    /// The proxy socket's token in the event loop.
    pub token: Token,
    deadline: Instant,
}

impl Record {
    fn owner(&self) -> Owner {
        Owner {
            local: self.local,
            ip: *self.client.mgmt.ip(),
        }
    }
}

/// What a heartbeat did to one held endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    Refreshed,
    /// Refreshed, and the client's NAT mapping changed from this address.
    Moved(SocketAddrV4),
    /// Not registered, or not to this client.
    Unknown,
}

type Identity = (Proto, SocketAddrV4, SocketAddrV4);

#[derive(Debug)]
pub struct Registry {
    records: HashMap<Endpoint, Record>,
    by_mgmt: HashMap<SocketAddrV4, BTreeSet<Endpoint>>,
    by_identity: HashMap<Identity, Endpoint>,
    expiry: BTreeSet<(Instant, Endpoint)>,
    tcp: PortPool,
    udp: PortPool,
    public_ip: Ipv4Addr,
    timeout: Duration,
}

impl Registry {
    pub fn new(public_ip: Ipv4Addr, range: PortRange, timeout: Duration) -> Self {
        Registry {
            records: HashMap::new(),
            by_mgmt: HashMap::new(),
            by_identity: HashMap::new(),
            expiry: BTreeSet::new(),
            tcp: PortPool::new(range, QUARANTINE),
            udp: PortPool::new(range, QUARANTINE),
            public_ip,
            timeout,
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn get(&self, proxy: &Endpoint) -> Option<&Record> {
        self.records.get(proxy)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    pub fn pool(&self, proto: Proto) -> &PortPool {
        match proto {
            Proto::Tcp => &self.tcp,
            Proto::Udp => &self.udp,
        }
    }

    pub fn pool_mut(&mut self, proto: Proto) -> &mut PortPool {
        match proto {
            Proto::Tcp => &mut self.tcp,
            Proto::Udp => &mut self.udp,
        }
    }

    /// A client is dropped after the broker's timeout, or after three of its
    /// own heartbeat intervals if that is longer: a client that announced a
    /// slow heartbeat must not be expired between two of them.
    pub fn timeout_for(&self, client: &Client) -> Duration {
        self.timeout
            .max(Duration::from_secs(u64::from(client.heartbeat_secs) * 3))
    }

    /// What a `Register` is to the existing records: the same socket from
    /// the same management address; or, when the client asks for a port, the
    /// record on that port for the same socket from the same public IP and
    /// the same process (its NAT mapping changed, so it lost its
    /// registration's address but not its identity). Another process with
    /// that address (two programs bound to one port with SO_REUSEPORT) never
    /// takes a live record over: it is [`Claim::HeldByOther`], and registers
    /// on its own. An owner silent for two of its heartbeat intervals is not
    /// live, and its record goes to whoever claims it.
    pub fn find_for_register(
        &self,
        proto: Proto,
        mgmt: SocketAddrV4,
        local: SocketAddrV4,
        desired: Option<u16>,
        pid: u32,
        now: Instant,
    ) -> Claim {
        if let Some(ep) = self.by_identity.get(&(proto, mgmt, local)) {
            return Claim::Again(*ep);
        }
        let Some(desired) = desired else {
            return Claim::New;
        };
        let ep = Endpoint::new(proto, SocketAddrV4::new(self.public_ip, desired));
        let Some(r) = self.records.get(&ep) else {
            return Claim::New;
        };
        if r.local != local || r.client.mgmt.ip() != mgmt.ip() {
            return Claim::New;
        }
        let silent = now.saturating_duration_since(r.last_heartbeat);
        let live = silent < Duration::from_secs(u64::from(r.client.heartbeat_secs.max(1)) * 2);
        if r.client.pid != pid && live {
            return Claim::HeldByOther {
                proxy: ep,
                pid: r.client.pid,
            };
        }
        Claim::Again(ep)
    }

    /// Adds a record for a port allocated from [`pool_mut`](Self::pool_mut).
    /// The caller has checked that the identity is new.
    pub fn insert(
        &mut self,
        proxy: Endpoint,
        local: SocketAddrV4,
        client: Client,
        token: Token,
        now: Instant,
    ) -> &Record {
        let deadline = now + self.timeout_for(&client);
        let identity = (proxy.proto, client.mgmt, local);
        debug_assert!(!self.by_identity.contains_key(&identity));
        self.by_identity.insert(identity, proxy);
        self.by_mgmt.entry(client.mgmt).or_default().insert(proxy);
        self.expiry.insert((deadline, proxy));
        let record = Record {
            proxy,
            local,
            client,
            registered: now,
            last_heartbeat: now,
            token,
            deadline,
        };
        self.records.insert(proxy, record);
        &self.records[&proxy]
    }

    /// Detaches a record from every index; the caller re-attaches it.
    fn unindex(&mut self, proxy: &Endpoint) -> Option<Record> {
        let r = self.records.remove(proxy)?;
        self.by_identity
            .remove(&(proxy.proto, r.client.mgmt, r.local));
        if let Some(set) = self.by_mgmt.get_mut(&r.client.mgmt) {
            set.remove(proxy);
            if set.is_empty() {
                self.by_mgmt.remove(&r.client.mgmt);
            }
        }
        self.expiry.remove(&(r.deadline, *proxy));
        Some(r)
    }

    fn reindex(&mut self, mut r: Record) {
        r.deadline = r.last_heartbeat + self.timeout_for(&r.client);
        let proxy = r.proxy;
        self.by_identity
            .insert((proxy.proto, r.client.mgmt, r.local), proxy);
        self.by_mgmt.entry(r.client.mgmt).or_default().insert(proxy);
        self.expiry.insert((r.deadline, proxy));
        self.records.insert(proxy, r);
    }

    /// A repeated `Register`: the client's details may have changed (a new
    /// NAT mapping, pid, realm); the registration counts as a heartbeat.
    pub fn renew(&mut self, proxy: &Endpoint, client: Client, now: Instant) -> Option<&Record> {
        let mut r = self.unindex(proxy)?;
        r.client = client;
        r.last_heartbeat = now;
        self.reindex(r);
        self.records.get(proxy)
    }

    /// A heartbeat from `from` holding `proxy`. The heartbeat counts for the
    /// record's own management address, and for another port on the same
    /// public IP, which is the same client after its NAT forgot the mapping:
    /// the record then follows the client to its new address.
    pub fn refresh(&mut self, proxy: &Endpoint, from: SocketAddrV4, now: Instant) -> Refresh {
        let Some(r) = self.records.get(proxy) else {
            return Refresh::Unknown;
        };
        let old = r.client.mgmt;
        if old.ip() != from.ip() {
            return Refresh::Unknown;
        }
        let Some(mut r) = self.unindex(proxy) else {
            return Refresh::Unknown;
        };
        r.client.mgmt = from;
        r.last_heartbeat = now;
        self.reindex(r);
        if old == from {
            Refresh::Refreshed
        } else {
            Refresh::Moved(old)
        }
    }

    /// Removes a record; its port is quarantined for its owner.
    pub fn remove(&mut self, proxy: &Endpoint, now: Instant) -> Option<Record> {
        let r = self.unindex(proxy)?;
        let owner = r.owner();
        self.pool_mut(proxy.proto)
            .release(proxy.addr.port(), owner, now);
        Some(r)
    }

    /// When the next registration would expire.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.expiry.first().map(|(t, _)| *t)
    }

    /// Removes and returns every record whose deadline has passed.
    pub fn expire(&mut self, now: Instant) -> Vec<Record> {
        let mut out = Vec::new();
        while let Some(&(deadline, proxy)) = self.expiry.first() {
            if deadline > now {
                break;
            }
            match self.remove(&proxy, now) {
                Some(r) => out.push(r),
                // Unreachable by invariant 4; never loop on it.
                None => {
                    self.expiry.pop_first();
                }
            }
        }
        out
    }

    /// Applies a new broker timeout (SIGHUP) to every record's deadline.
    pub fn set_timeout(&mut self, timeout: Duration) {
        if timeout == self.timeout {
            return;
        }
        self.timeout = timeout;
        let proxies: Vec<Endpoint> = self.records.keys().copied().collect();
        for proxy in proxies {
            if let Some(r) = self.unindex(&proxy) {
                self.reindex(r);
            }
        }
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
