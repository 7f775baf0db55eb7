//! The registration table: one record per registered listening socket
//! (paper 4.2.2, "client socket records"), the processes that hold it, and
//! the proxy ports behind them.
//!
//! A registration belongs to a socket, not to a process. Every process that
//! holds the socket (the one that made it, its forked children, an exec'd
//! image, a process handed it over `SCM_RIGHTS` or by socket activation)
//! registers it from a management socket of its own and becomes a *holder*:
//! same protocol, same public source IP, same local address is the same
//! socket, and the `Register` joins the record instead of making a second
//! one. Each holder heartbeats for itself and expires on its own deadline;
//! the record goes when its last holder unregisters or expires. Commands go
//! to the longest-standing live holder ([`Record::commanded`]); a command that
//! fails changes nothing but the holder that disowned it
//! ([`Registry::command_failed`]); a holder whose management socket is
//! gone (an ICMP port unreachable, see `icmp`) leaves every record it holds
//! ([`Registry::remove_mgmt`]). The record types are in `record`.
//!
//! Invariants (each mutating method keeps all of them; `check` in the tests
//! verifies them after every step):
//! 1. `records` owns the records, keyed by proxy endpoint; a record's key is
//!    its `proxy`.
//! 2. Every record has between 1 and [`MAX_HOLDERS`] holders, with distinct
//!    management addresses, all on the record's public IP `ip`.
//! 3. `by_socket[(proto, ip, local)]` names the one record of that socket:
//!    there is never a second registration of a socket seen from one IP.
//! 4. `expiry` holds exactly one `(deadline, proxy, mgmt)` per holder, its
//!    deadline being its last heartbeat + [`Registry::timeout_for`] its
//!    heartbeat interval.
//! 5. Every record's proxy port is in use in the pool of its protocol; a
//!    removed record's port goes into quarantine (see `ports`).
//! 6. A record's `former` holders are at most `record::FORMER` distinct
//!    addresses, none of them a holder's.
//! 7. `by_mgmt[mgmt]` is exactly the set of records with a holder at
//!    `mgmt`, and has no empty sets: what goes when that socket is gone
//!    ([`Registry::remove_mgmt`]).
//!
//! The table holds no sockets: a record names its proxy socket by the mio
//! token the event loop registered it under, so the table can be tested
//! without binding anything, and removal hands the token back for the
//! caller to close the socket.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use mio::Token;
use proto::{Endpoint, Proto};

use crate::ports::{PortPool, QUARANTINE};
use crate::values::PortRange;

mod record;

pub use record::{Claim, Client, Full, Holder, Record, Refresh, Removed, MAX_HOLDERS};

type Socket = (Proto, Ipv4Addr, SocketAddrV4);

/// [`Registry::timeout_for`] with the broker's timeout given.
fn timeout_for(timeout: Duration, heartbeat_secs: u16) -> Duration {
    timeout.max(Duration::from_secs(u64::from(heartbeat_secs) * 3))
}

#[derive(Debug)]
pub struct Registry {
    records: HashMap<Endpoint, Record>,
    by_socket: HashMap<Socket, Endpoint>,
    by_mgmt: HashMap<SocketAddrV4, BTreeSet<Endpoint>>,
    expiry: BTreeSet<(Instant, Endpoint, SocketAddrV4)>,
    tcp: PortPool,
    udp: PortPool,
    timeout: Duration,
}

impl Registry {
    pub fn new(range: PortRange, timeout: Duration) -> Self {
        Registry {
            records: HashMap::new(),
            by_socket: HashMap::new(),
            by_mgmt: HashMap::new(),
            expiry: BTreeSet::new(),
            tcp: PortPool::new(range, QUARANTINE),
            udp: PortPool::new(range, QUARANTINE),
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

    /// A holder is dropped after the broker's timeout, or after three of its
    /// own heartbeat intervals if that is longer: a client that announced a
    /// slow heartbeat must not be expired between two of them.
    pub fn timeout_for(&self, heartbeat_secs: u16) -> Duration {
        timeout_for(self.timeout, heartbeat_secs)
    }

    /// What a `Register` of `local` from `mgmt` is to the records. The
    /// desired port plays no part: a socket has one registration per public
    /// IP, and whether a required port matches it is the caller's question.
    pub fn find_for_register(
        &self,
        proto: Proto,
        mgmt: SocketAddrV4,
        local: SocketAddrV4,
    ) -> Claim {
        let Some(ep) = self.by_socket.get(&(proto, *mgmt.ip(), local)) else {
            return Claim::New;
        };
        match self.records.get(ep).and_then(|r| r.holder(mgmt)) {
            Some(_) => Claim::Again(*ep),
            None => Claim::Join(*ep),
        }
    }

    /// Notes that the holder at `mgmt` holds `proxy` (invariant 7).
    fn index(&mut self, mgmt: SocketAddrV4, proxy: Endpoint) {
        self.by_mgmt.entry(mgmt).or_default().insert(proxy);
    }

    /// Notes that the holder at `mgmt` left `proxy`.
    fn unindex(&mut self, mgmt: SocketAddrV4, proxy: &Endpoint) {
        if let Entry::Occupied(mut e) = self.by_mgmt.entry(mgmt) {
            e.get_mut().remove(proxy);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    fn new_holder(&self, client: Client, now: Instant) -> Holder {
        Holder {
            deadline: now + self.timeout_for(client.heartbeat_secs),
            mgmt: client.mgmt,
            mgmt_local: client.mgmt_local,
            pid: client.pid,
            program: client.program,
            heartbeat_secs: client.heartbeat_secs,
            features: client.features,
            joined: now,
            last_heartbeat: now,
        }
    }

    /// Adds a record for a port allocated from [`pool_mut`](Self::pool_mut),
    /// held by `client`. The caller has found the socket [`Claim::New`].
    pub fn insert(
        &mut self,
        proxy: Endpoint,
        local: SocketAddrV4,
        client: Client,
        token: Token,
        now: Instant,
    ) -> &Record {
        let ip = *client.mgmt.ip();
        debug_assert!(!self.by_socket.contains_key(&(proxy.proto, ip, local)));
        self.by_socket.insert((proxy.proto, ip, local), proxy);
        let (public, realm) = (client.public, client.realm.clone());
        let holder = self.new_holder(client, now);
        self.expiry.insert((holder.deadline, proxy, holder.mgmt));
        self.index(holder.mgmt, proxy);
        let record = Record {
            proxy,
            local,
            ip,
            public,
            realm,
            registered: now,
            token,
            holders: vec![holder],
            former: Vec::new(),
        };
        self.records.insert(proxy, record);
        &self.records[&proxy]
    }

    /// A holder's repeated `Register`: its details may have changed (pid
    /// after an exec, realm); the registration counts as a heartbeat.
    pub fn renew(&mut self, proxy: &Endpoint, client: Client, now: Instant) -> Option<&Record> {
        let timeout = self.timeout_for(client.heartbeat_secs);
        let r = self.records.get_mut(proxy)?;
        let h = r.holders.iter_mut().find(|h| h.mgmt == client.mgmt)?;
        self.expiry.remove(&(h.deadline, *proxy, h.mgmt));
        h.mgmt_local = client.mgmt_local;
        h.pid = client.pid;
        h.program = client.program;
        h.heartbeat_secs = client.heartbeat_secs;
        h.features = client.features;
        h.last_heartbeat = now;
        h.deadline = now + timeout;
        self.expiry.insert((h.deadline, *proxy, h.mgmt));
        (r.public, r.realm) = (client.public, client.realm);
        Some(r)
    }

    /// Another process holding the socket of `proxy` joins it. Holders it
    /// supersedes leave and are returned: the same management socket behind
    /// a new NAT mapping (same `mgmt_local`), and holders silent for two of
    /// their heartbeat intervals, whose record the claimant takes over as
    /// one silent owner's always went to whoever claimed it. Refused,
    /// changing nothing, when the record has [`MAX_HOLDERS`] others.
    pub fn join(
        &mut self,
        proxy: &Endpoint,
        client: Client,
        now: Instant,
    ) -> Result<Vec<Holder>, Full> {
        let Some(r) = self.records.get(proxy) else {
            return Err(Full);
        };
        debug_assert!(r.ip == *client.mgmt.ip() && r.holder(client.mgmt).is_none());
        let superseded = |h: &Holder| h.mgmt_local == client.mgmt_local || !h.live(now);
        let staying = r.holders.iter().filter(|h| !superseded(h)).count();
        if staying >= MAX_HOLDERS {
            return Err(Full);
        }
        let holder = self.new_holder(client.clone(), now);
        let Some(r) = self.records.get_mut(proxy) else {
            return Err(Full);
        };
        let (gone, kept): (Vec<Holder>, Vec<Holder>) = std::mem::take(&mut r.holders)
            .into_iter()
            .partition(superseded);
        r.holders = kept;
        for h in &gone {
            self.expiry.remove(&(h.deadline, *proxy, h.mgmt));
            r.forget(h.mgmt);
        }
        self.expiry.insert((holder.deadline, *proxy, holder.mgmt));
        r.former.retain(|m| *m != holder.mgmt);
        let mgmt = holder.mgmt;
        r.holders.push(holder);
        (r.public, r.realm) = (client.public, client.realm);
        for h in &gone {
            self.unindex(h.mgmt, proxy);
        }
        self.index(mgmt, *proxy);
        Ok(gone)
    }

    /// A heartbeat from `from` holding `proxy`. It refreshes the holder at
    /// `from` alone. From another port of the record's IP, it is the same
    /// process after its NAT forgot the mapping when the record has one
    /// holder, which then follows it to its new address; with several, it
    /// cannot be told which, and the client registers again to join. So
    /// does a former holder: it left, and the one holder left is another.
    pub fn refresh(&mut self, proxy: &Endpoint, from: SocketAddrV4, now: Instant) -> Refresh {
        let Some(r) = self.records.get_mut(proxy) else {
            return Refresh::Unknown;
        };
        let i = match r.holders.iter().position(|h| h.mgmt == from) {
            Some(i) => i,
            None if r.holders.len() == 1 && r.ip == *from.ip() && !r.former.contains(&from) => 0,
            None => return Refresh::Unknown,
        };
        let h = &mut r.holders[i];
        self.expiry.remove(&(h.deadline, *proxy, h.mgmt));
        let old = std::mem::replace(&mut h.mgmt, from);
        h.last_heartbeat = now;
        h.deadline = now + timeout_for(self.timeout, h.heartbeat_secs);
        self.expiry.insert((h.deadline, *proxy, h.mgmt));
        if old == from {
            return Refresh::Refreshed;
        }
        self.unindex(old, proxy);
        self.index(from, *proxy);
        Refresh::Moved(old)
    }

    /// The holder at `mgmt` leaves `proxy` (it unregistered, expired, said
    /// it does not hold the socket, or its socket is gone); the record goes
    /// with its last holder. `None` if `mgmt` holds no such record.
    pub fn remove_holder(
        &mut self,
        proxy: &Endpoint,
        mgmt: SocketAddrV4,
        now: Instant,
    ) -> Option<Removed> {
        let r = self.records.get_mut(proxy)?;
        let i = r.holders.iter().position(|h| h.mgmt == mgmt)?;
        // The last holder stays in the record it goes with.
        let last = r.holders.len() == 1;
        let h = if last {
            r.holders[i].clone()
        } else {
            r.holders.remove(i)
        };
        if !last {
            r.forget(h.mgmt);
        }
        self.expiry.remove(&(h.deadline, *proxy, h.mgmt));
        self.unindex(mgmt, proxy);
        if !last {
            return Some(Removed::Holder(h));
        }
        let r = self.records.remove(proxy)?;
        self.by_socket.remove(&(proxy.proto, r.ip, r.local));
        let owner = r.owner();
        self.pool_mut(proxy.proto)
            .release(proxy.addr.port(), owner, now);
        Some(Removed::Record(r))
    }

    /// A command for `proxy` failed at the holder `at`. That holder leaves
    /// if it said it does not hold the socket (`disowned`), and what that
    /// did is returned; nothing else changes, whatever the failure, since a
    /// registration lives by its holders' heartbeats alone. The second value
    /// is where the command may go once more: the next holder in line
    /// ([`Record::commanded_other`]).
    pub fn command_failed(
        &mut self,
        proxy: &Endpoint,
        at: SocketAddrV4,
        disowned: bool,
        now: Instant,
    ) -> (Option<Removed>, Option<SocketAddrV4>) {
        let removed = if disowned {
            self.remove_holder(proxy, at, now)
        } else {
            None
        };
        let next = self
            .get(proxy)
            .and_then(|r| r.commanded_other(at, now))
            .map(|h| h.mgmt);
        (removed, next)
    }

    /// The socket at `mgmt` is gone (its process died): every holder at
    /// that address leaves, each registration going with its last holder,
    /// in the order of their proxy endpoints.
    pub fn remove_mgmt(&mut self, mgmt: SocketAddrV4, now: Instant) -> Vec<(Endpoint, Removed)> {
        let held = self.by_mgmt.get(&mgmt).cloned().unwrap_or_default();
        held.into_iter()
            .filter_map(|ep| Some((ep, self.remove_holder(&ep, mgmt, now)?)))
            .collect()
    }

    /// When the next holder would expire.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.expiry.first().map(|(t, ..)| *t)
    }

    /// Removes every holder whose deadline has passed, in deadline order,
    /// and with the last holder of a record the record.
    pub fn expire(&mut self, now: Instant) -> Vec<(Endpoint, Removed)> {
        let mut out = Vec::new();
        while let Some(&(deadline, proxy, mgmt)) = self.expiry.first() {
            if deadline > now {
                break;
            }
            match self.remove_holder(&proxy, mgmt, now) {
                Some(removed) => out.push((proxy, removed)),
                // Unreachable by invariant 4; never loop on it.
                None => {
                    self.expiry.pop_first();
                }
            }
        }
        out
    }

    /// Applies a new broker timeout (SIGHUP) to every holder's deadline.
    pub fn set_timeout(&mut self, timeout: Duration) {
        if timeout == self.timeout {
            return;
        }
        self.timeout = timeout;
        self.expiry.clear();
        for (proxy, r) in &mut self.records {
            for h in &mut r.holders {
                h.deadline = h.last_heartbeat + timeout_for(timeout, h.heartbeat_secs);
                self.expiry.insert((h.deadline, *proxy, h.mgmt));
            }
        }
    }
}

#[cfg(test)]
mod tests;
