//! The mapping table: dpfd's in-memory representation of its forwards (the
//! first of the paper's three representations, section 3.2.2), with the
//! client information that owns each one, the reuse rules, public address
//! allocation and the per-host quota. Pure data: no I/O, no clock.
//!
//! Invariants, kept by every method (and checked by `check` in tests):
//! 1. `by_public` holds each forward once, keyed by (proto, public);
//!    `by_local` is its exact inverse on (proto, local): one local socket
//!    has at most one public address per protocol, and vice versa.
//! 2. `per_host[ip]` is the number of forwards whose local IP is `ip`
//!    (both protocols), with no zero entries.
//! 3. `used[proto]` is the number of forwards of that protocol.
//! 4. Every public address of a forward *created by a request* is one of the
//!    public IPs and inside the port range; replayed forwards are filtered
//!    against the configuration before they are loaded.
//! 5. `gen` is unique per created mapping and below `next_gen`. A reuse that
//!    only changes client information keeps the gen; the mirror file uses
//!    gens to match a delete record with the add it cancels.
//! 6. `expiry` holds (expiry, key) for exactly the forwards with a lease.
//!
//! Forwards come in two kinds. A DPF forward belongs to a shim client and
//! lives as long as its management socket answers the probe. A *leased*
//! one was asked for in NAT-PMP or PCP, has no management socket (port 0)
//! and lives until its lease expires unless renewed.
//!
//! The request rules (reuse, allocation, quota, who may delete what) are
//! in `rules.rs`, those of the standard protocols in `standard.rs`; this
//! file holds the types and the primitives that keep the indexes in step.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};

use proto::Proto;

use crate::values::PortRange;

/// A forward's identity in the kernel map: protocol and public address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub proto: Proto,
    pub public: SocketAddrV4,
}

/// One forward with the client information that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub proto: Proto,
    pub public: SocketAddrV4,
    pub local: SocketAddrV4,
    /// The client's passive management socket is `local.ip():mgmt_port`.
    pub mgmt_port: u16,
    pub gen: u64,
    /// Unix seconds at creation, persisted so ages survive a restart.
    pub created: u64,
    /// Set for a mapping made through NAT-PMP or PCP.
    pub lease: Option<Lease>,
}

/// Which standard protocol made a leased mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    Pcp,
    NatPmp,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Pcp => "pcp",
            Via::NatPmp => "natpmp",
        }
    }
}

/// What makes a mapping of the standard protocols: who may renew or delete
/// it (the protocol and, for PCP, the mapping nonce), and when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub via: Via,
    /// PCP's mapping nonce; all zero for NAT-PMP, which has none.
    pub nonce: [u8; 12],
    /// Unix seconds.
    pub expires: u64,
}

impl Forward {
    pub fn key(&self) -> Key {
        Key {
            proto: self.proto,
            public: self.public,
        }
    }

    /// Where the probe connects.
    pub fn mgmt(&self) -> SocketAddrV4 {
        SocketAddrV4::new(*self.local.ip(), self.mgmt_port)
    }

    /// The protocol that made it: `dpf`, `pcp` or `natpmp`.
    pub fn via_name(&self) -> &'static str {
        self.lease.map_or("dpf", |l| l.via.name())
    }
}

/// The outcome of the last probe of a forward, for status and the
/// consecutive-timeout rule. Never persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProbeInfo {
    pub last: Option<ProbeResult>,
    /// Consecutive timeouts; reset by any answer.
    pub timeouts: u32,
}

/// What one probe of a management socket found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeResult {
    Ok,
    Refused,
    Unreachable,
    Timeout,
    /// A local failure (e.g. out of file descriptors): says nothing about
    /// the client, so it never deletes.
    Error,
}

impl ProbeResult {
    pub fn name(self) -> &'static str {
        match self {
            ProbeResult::Ok => "ok",
            ProbeResult::Refused => "refused",
            ProbeResult::Unreachable => "unreachable",
            ProbeResult::Timeout => "timeout",
            ProbeResult::Error => "error",
        }
    }
}

/// A forward in the table with its probe state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub fwd: Forward,
    pub probe: ProbeInfo,
}

/// One elementary change of the table, kept so a failed batch can be undone
/// and so the engine knows which mirror records and kernel keys it touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added(Forward),
    Removed(Forward),
    Updated { old: Forward, new: Forward },
}

/// How a `Forward` request was satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardKind {
    Reused,
    Updated,
    Added,
    Moved,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardOutcome {
    pub public: SocketAddrV4,
    pub kind: ForwardKind,
    pub changes: Vec<Change>,
}

/// What a client asks for; the requester's IP was already checked to be
/// `local.ip()` by the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardRequest {
    pub proto: Proto,
    pub local: SocketAddrV4,
    pub mgmt_port: u16,
    pub desired: Option<SocketAddrV4>,
}

fn proto_index(p: Proto) -> usize {
    match p {
        Proto::Tcp => 0,
        Proto::Udp => 1,
    }
}

pub struct Table {
    public_ips: Vec<Ipv4Addr>,
    range: PortRange,
    quota: u32,
    by_public: HashMap<Key, Entry>,
    by_local: HashMap<(Proto, SocketAddrV4), SocketAddrV4>,
    per_host: HashMap<Ipv4Addr, u32>,
    used: [u64; 2],
    /// Next allocation slot per protocol: slots interleave the public IPs so
    /// consecutive allocations spread across them.
    cursor: [u64; 2],
    next_gen: u64,
    expiry: BTreeSet<(u64, Key)>,
}

impl Table {
    pub fn new(public_ips: Vec<Ipv4Addr>, range: PortRange, quota: u32) -> Table {
        assert!(!public_ips.is_empty(), "config guarantees a public IP");
        Table {
            public_ips,
            range,
            quota,
            by_public: HashMap::new(),
            by_local: HashMap::new(),
            per_host: HashMap::new(),
            used: [0; 2],
            cursor: [0; 2],
            next_gen: 1,
            expiry: BTreeSet::new(),
        }
    }

    /// The quota is live on SIGHUP; existing forwards above it are kept.
    pub fn set_quota(&mut self, quota: u32) {
        self.quota = quota;
    }

    pub fn len(&self) -> usize {
        self.by_public.len()
    }

    pub fn get(&self, key: &Key) -> Option<&Entry> {
        self.by_public.get(key)
    }

    pub fn get_mut(&mut self, key: &Key) -> Option<&mut Entry> {
        self.by_public.get_mut(key)
    }

    pub fn by_local(&self, proto: Proto, local: SocketAddrV4) -> Option<&Entry> {
        let public = self.by_local.get(&(proto, local))?;
        self.by_public.get(&Key {
            proto,
            public: *public,
        })
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.by_public.values()
    }

    pub fn host_count(&self, ip: Ipv4Addr) -> u32 {
        self.per_host.get(&ip).copied().unwrap_or(0)
    }

    /// Forwards of `proto`.
    pub fn forwards(&self, proto: Proto) -> u64 {
        self.used[proto_index(proto)]
    }

    /// Public addresses of `proto` not in use.
    pub fn free_ports(&self, proto: Proto) -> u64 {
        self.capacity() - self.used[proto_index(proto)]
    }

    fn capacity(&self) -> u64 {
        self.public_ips.len() as u64 * u64::from(self.range.len())
    }

    /// Whether `public` is an address this table may hand out.
    /// The addresses forwards are made from (`--public-ip`).
    pub fn public_ips(&self) -> &[Ipv4Addr] {
        &self.public_ips
    }

    pub fn in_range(&self, public: SocketAddrV4) -> bool {
        self.public_ips.contains(public.ip()) && self.range.contains(public.port())
    }

    /// Loads a forward from the mirror file without the request rules; the
    /// caller resolves conflicts first. Keeps gens ahead of what was loaded.
    pub fn load(&mut self, fwd: Forward) {
        self.next_gen = self.next_gen.max(fwd.gen + 1);
        self.apply(Change::Added(fwd));
    }

    /// Applies one change; the primitive every mutation goes through, so
    /// the indexes cannot drift apart.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Added(f) => self.insert(f),
            Change::Removed(f) => self.remove(&f),
            Change::Updated { old, new } => {
                self.remove(&old);
                self.insert(new);
            }
        }
    }

    /// Reverts a change made by `apply`.
    pub fn undo(&mut self, change: Change) {
        self.apply(match change {
            Change::Added(f) => Change::Removed(f),
            Change::Removed(f) => Change::Added(f),
            Change::Updated { old, new } => Change::Updated { old: new, new: old },
        });
    }

    fn insert(&mut self, f: Forward) {
        let old = self.by_public.insert(
            f.key(),
            Entry {
                fwd: f,
                probe: ProbeInfo::default(),
            },
        );
        debug_assert!(old.is_none(), "insert over {old:?}");
        self.by_local.insert((f.proto, f.local), f.public);
        if let Some(l) = f.lease {
            self.expiry.insert((l.expires, f.key()));
        }
        *self.per_host.entry(*f.local.ip()).or_insert(0) += 1;
        self.used[proto_index(f.proto)] += 1;
    }

    fn remove(&mut self, f: &Forward) {
        if self.by_public.remove(&f.key()).is_none() {
            debug_assert!(false, "remove of absent {f:?}");
            return;
        }
        self.by_local.remove(&(f.proto, f.local));
        if let Some(l) = f.lease {
            self.expiry.remove(&(l.expires, f.key()));
        }
        if let Some(n) = self.per_host.get_mut(f.local.ip()) {
            *n -= 1;
            if *n == 0 {
                self.per_host.remove(f.local.ip());
            }
        }
        self.used[proto_index(f.proto)] -= 1;
    }

    /// The earliest lease expiry, Unix seconds.
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiry.first().map(|(at, _)| *at)
    }

    /// Leased forwards whose lease ended at or before `now`.
    pub fn expired(&self, now: u64) -> Vec<Forward> {
        self.expiry
            .iter()
            .take_while(|(at, _)| *at <= now)
            .filter_map(|(_, k)| self.by_public.get(k).map(|e| e.fwd))
            .collect()
    }

    /// Asserts the invariants in the module docs; for tests.
    #[cfg(test)]
    pub fn check(&self) {
        assert_eq!(self.by_public.len(), self.by_local.len());
        let leased: BTreeSet<(u64, Key)> = self
            .by_public
            .values()
            .filter_map(|e| e.fwd.lease.map(|l| (l.expires, e.fwd.key())))
            .collect();
        assert_eq!(leased, self.expiry);
        let mut hosts: HashMap<Ipv4Addr, u32> = HashMap::new();
        let mut used = [0u64; 2];
        for (k, e) in &self.by_public {
            assert_eq!(*k, e.fwd.key());
            assert_eq!(self.by_local.get(&(k.proto, e.fwd.local)), Some(&k.public));
            assert!(e.fwd.gen < self.next_gen);
            *hosts.entry(*e.fwd.local.ip()).or_insert(0) += 1;
            used[proto_index(k.proto)] += 1;
        }
        assert_eq!(hosts, self.per_host);
        assert_eq!(used, self.used);
    }
}

mod rules;
pub mod standard;
#[cfg(test)]
mod standard_tests;
#[cfg(test)]
mod tests;
