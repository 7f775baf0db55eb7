//! The rules by which requests change the mapping table: public address
//! allocation, the per-host quota, who may delete what, and the reuse of
//! rules.
//!
//! Reuse rules (paper 3.2.2), as interpreted here: a *rule* is the kernel's
//! public → local mapping, and *client information* is the management port.
//! * same public, same local, same mgmt: nothing changes (`Reused`);
//! * same public, same local, new mgmt: table and mirror change, the kernel
//!   element already maps there and is left alone (`Updated`);
//! * a desired public held by another local socket of the same host: that
//!   forward is replaced, because the host owns it (it could `Delete` it
//!   anyway); held by another host: `Exists`, and the probe frees it once its
//!   client is gone. A local socket that already has a forward and asks for
//!   a different desired public is moved there (`Moved`): the kernel
//!   element changes. The paper's "same public, different client info"
//!   case therefore changes the kernel exactly when the local address does.

use std::net::{Ipv4Addr, SocketAddrV4};

use proto::dpf::{ErrorCode, MappingKey};
use proto::Proto;

use super::{
    proto_index, Change, Forward, ForwardKind, ForwardOutcome, ForwardRequest, Key, Table,
};

impl Table {
    /// Slot `i` of the allocation order: IPs interleaved, ports ascending.
    fn slot(&self, i: u64) -> SocketAddrV4 {
        let n = self.public_ips.len() as u64;
        let ip = self.public_ips[(i % n) as usize];
        // i / n < range.len() ≤ 65535, so the sum stays a port number.
        let port = self.range.lo + (i / n) as u16;
        SocketAddrV4::new(ip, port)
    }

    /// The next free public address after the protocol's cursor. Scanning
    /// from a moving cursor, rather than taking the lowest free port, avoids
    /// handing a just-freed address to a new client while old peers may
    /// still dial it.
    pub(super) fn allocate(&mut self, proto: Proto) -> Option<SocketAddrV4> {
        let cap = self.capacity();
        let p = proto_index(proto);
        if self.used[p] >= cap {
            return None;
        }
        for i in 0..cap {
            let idx = (self.cursor[p] + i) % cap;
            let public = self.slot(idx);
            if !self.by_public.contains_key(&Key { proto, public }) {
                self.cursor[p] = (idx + 1) % cap;
                return Some(public);
            }
        }
        None
    }

    /// Handles a `Forward` request by the reuse rules in the module docs.
    /// On error nothing has changed.
    pub fn forward(&mut self, req: ForwardRequest, now: u64) -> Result<ForwardOutcome, ErrorCode> {
        let ForwardRequest {
            proto,
            local,
            mgmt_port,
            desired,
        } = req;
        if let Some(d) = desired {
            if !self.in_range(d) {
                return Err(ErrorCode::PortOutOfRange);
            }
        }
        let mine = self.by_local(proto, local).map(|e| e.fwd);
        // (A leased forward has mgmt port 0, which no request has, so
        // "same public, same local" below turns it into a DPF forward.)
        let target = desired.or(mine.map(|f| f.public));

        // Same public and same local: reuse, touching at most the mgmt port.
        if let Some(cur) = mine.filter(|f| Some(f.public) == target) {
            if cur.mgmt_port == mgmt_port {
                return Ok(self.outcome(cur.public, ForwardKind::Reused, Vec::new()));
            }
            // A host's own NAT-PMP or PCP mapping becomes a DPF forward.
            let new = Forward {
                mgmt_port,
                lease: None,
                ..cur
            };
            let change = Change::Updated { old: cur, new };
            self.apply(change);
            return Ok(self.outcome(cur.public, ForwardKind::Updated, vec![change]));
        }

        // What has to go: a same-host holder of the desired address, and
        // this socket's previous forward if it is moving.
        let holder = target
            .and_then(|public| self.by_public.get(&Key { proto, public }))
            .map(|e| e.fwd);
        if let Some(h) = holder {
            if h.local.ip() != local.ip() {
                return Err(ErrorCode::Exists);
            }
        }
        let evicted: Vec<Forward> = holder.into_iter().chain(mine).collect();
        let count = self.host_count(*local.ip()) - evicted.len() as u32;
        if count >= self.quota {
            return Err(ErrorCode::Quota);
        }
        let mut changes: Vec<Change> = evicted.into_iter().map(Change::Removed).collect();
        for c in &changes {
            self.apply(*c);
        }
        let public = match target {
            Some(t) => t,
            None => match self.allocate(proto) {
                Some(p) => p,
                None => {
                    // Nothing was evicted without a target, but stay exact.
                    for c in changes.iter().rev() {
                        self.undo(*c);
                    }
                    return Err(ErrorCode::Quota);
                }
            },
        };
        let fwd = Forward {
            proto,
            public,
            local,
            mgmt_port,
            gen: self.next_gen,
            created: now,
            lease: None,
        };
        self.next_gen += 1;
        let added = Change::Added(fwd);
        self.apply(added);
        changes.push(added);
        let kind = if mine.is_some() {
            ForwardKind::Moved
        } else {
            ForwardKind::Added
        };
        Ok(self.outcome(public, kind, changes))
    }

    fn outcome(
        &self,
        public: SocketAddrV4,
        kind: ForwardKind,
        changes: Vec<Change>,
    ) -> ForwardOutcome {
        ForwardOutcome {
            public,
            kind,
            changes,
        }
    }

    /// Handles a `Delete` request from `requester`: only a host's own
    /// forwards can be deleted by it.
    pub fn delete(
        &mut self,
        proto: Proto,
        key: MappingKey,
        requester: Ipv4Addr,
    ) -> Result<Change, ErrorCode> {
        let fwd = match key {
            MappingKey::Local(local) => {
                if *local.ip() != requester {
                    return Err(ErrorCode::NotLocal);
                }
                self.by_local(proto, local).ok_or(ErrorCode::NotFound)?.fwd
            }
            MappingKey::Public(public) => {
                let f = self
                    .get(&Key { proto, public })
                    .ok_or(ErrorCode::NotFound)?
                    .fwd;
                if *f.local.ip() != requester {
                    return Err(ErrorCode::NotLocal);
                }
                f
            }
        };
        let change = Change::Removed(fwd);
        self.apply(change);
        Ok(change)
    }

    /// Removes the forward at `key` if it is still generation `gen` (a probe
    /// result for a forward that was replaced meanwhile must not delete the
    /// new one).
    pub fn remove_if(&mut self, key: Key, gen: u64) -> Option<Change> {
        let fwd = self.get(&key).filter(|e| e.fwd.gen == gen)?.fwd;
        let change = Change::Removed(fwd);
        self.apply(change);
        Some(change)
    }
}
