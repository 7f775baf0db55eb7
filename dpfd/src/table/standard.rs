//! The rules for mappings asked for in NAT-PMP (RFC 6886) or PCP MAP
//! (RFC 6887 §11.3), as dpfd interprets them. The requester's IP was
//! already checked to be the local address by the handler.
//!
//! * A mapping belongs to the protocol and, for PCP, the mapping nonce that
//!   made it: a request of the other protocol, or with another nonce, may
//!   not renew or delete it (NOT_AUTHORIZED). A DPF forward of the same
//!   local socket belongs to its shim client, whose management socket
//!   vouches for it, and is not touched either. (The other way round, a
//!   DPF request treats the host's leased mappings as its own, as it treats
//!   all of the host's forwards: see `rules.rs`.)
//! * A request for a local socket that is already mapped renews it: the
//!   address stays, whatever was suggested, and the lease is extended.
//! * Otherwise the suggested external port is taken if it is free and
//!   inside `--port-range` (on the suggested public IP, or the first public
//!   IP that has it free); failing that, any free address, unless
//!   PREFER_FAILURE asked for the suggestion or nothing. Unlike a DPF
//!   request, a suggestion never evicts another forward, not even one of
//!   the same host: a standard client cannot know what it would break.
//! * The per-host quota counts forwards of every kind.

use std::net::{Ipv4Addr, SocketAddrV4};

use proto::Proto;

use super::{Change, Forward, Key, Lease, Table, Via};

/// A mapping request of either protocol, lifetime already clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdRequest {
    pub proto: Proto,
    pub local: SocketAddrV4,
    pub via: Via,
    pub nonce: [u8; 12],
    /// Suggested public IP (`None`: no preference) and port (0: none).
    pub suggested_ip: Option<Ipv4Addr>,
    pub suggested_port: u16,
    pub prefer_failure: bool,
    /// Map on this public IP only: NAT-PMP tells clients one address.
    pub only_ip: Option<Ipv4Addr>,
    pub lifetime: u32,
}

/// Why a standard request was refused; the handler turns it into each
/// protocol's result code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdRefusal {
    /// The socket's mapping belongs to another protocol, nonce or client.
    NotAuthorized,
    /// The host holds its quota of forwards.
    Quota,
    /// No free public address.
    NoResources,
    /// PREFER_FAILURE, and the suggestion cannot be had.
    CannotProvide,
}

/// A granted mapping: its public address, lease, and the table change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdGrant {
    pub public: SocketAddrV4,
    pub renewed: bool,
    pub change: Option<Change>,
}

impl Table {
    fn owned_by(lease: Option<Lease>, via: Via, nonce: [u8; 12]) -> Result<Lease, StdRefusal> {
        match lease {
            Some(l) if l.via == via && l.nonce == nonce => Ok(l),
            _ => Err(StdRefusal::NotAuthorized),
        }
    }

    /// The suggested address, if it can be had.
    fn suggestion(&self, req: &StdRequest) -> Option<SocketAddrV4> {
        if req.suggested_port == 0 || !self.range.contains(req.suggested_port) {
            return None;
        }
        let ips: Vec<Ipv4Addr> = match req.only_ip.or(req.suggested_ip) {
            Some(ip) => vec![ip],
            None => self.public_ips.clone(),
        };
        ips.into_iter()
            .map(|ip| SocketAddrV4::new(ip, req.suggested_port))
            .find(|public| {
                self.in_range(*public)
                    && !self.by_public.contains_key(&Key {
                        proto: req.proto,
                        public: *public,
                    })
            })
    }

    /// The lowest free port on `ip`.
    fn allocate_on(&self, proto: Proto, ip: Ipv4Addr) -> Option<SocketAddrV4> {
        (self.range.lo..=self.range.hi)
            .map(|port| SocketAddrV4::new(ip, port))
            .find(|public| {
                !self.by_public.contains_key(&Key {
                    proto,
                    public: *public,
                })
            })
    }

    /// Creates or renews the mapping of `req.local` until `now + lifetime`.
    /// On error nothing has changed.
    pub fn std_map(&mut self, req: StdRequest, now: u64) -> Result<StdGrant, StdRefusal> {
        let expires = now + u64::from(req.lifetime);
        if let Some(cur) = self.by_local(req.proto, req.local).map(|e| e.fwd) {
            let lease = Self::owned_by(cur.lease, req.via, req.nonce)?;
            let new = Forward {
                lease: Some(Lease { expires, ..lease }),
                ..cur
            };
            let change = (new != cur).then_some(Change::Updated { old: cur, new });
            if let Some(c) = change {
                self.apply(c);
            }
            return Ok(StdGrant {
                public: cur.public,
                renewed: true,
                change,
            });
        }
        if self.host_count(*req.local.ip()) >= self.quota {
            return Err(StdRefusal::Quota);
        }
        let public = match self.suggestion(&req) {
            Some(p) => p,
            None if req.prefer_failure => return Err(StdRefusal::CannotProvide),
            None => match req.only_ip {
                Some(ip) => self.allocate_on(req.proto, ip),
                None => self.allocate(req.proto),
            }
            .ok_or(StdRefusal::NoResources)?,
        };
        let fwd = Forward {
            proto: req.proto,
            public,
            local: req.local,
            mgmt_port: 0,
            gen: self.next_gen,
            created: now,
            lease: Some(Lease {
                via: req.via,
                nonce: req.nonce,
                expires,
            }),
        };
        self.next_gen += 1;
        let change = Change::Added(fwd);
        self.apply(change);
        Ok(StdGrant {
            public,
            renewed: false,
            change: Some(change),
        })
    }

    /// Deletes the mapping of `local` if the requester owns it. A socket
    /// without a mapping is no error (the RFCs answer success).
    pub fn std_delete(
        &mut self,
        proto: Proto,
        local: SocketAddrV4,
        via: Via,
        nonce: [u8; 12],
    ) -> Result<Option<Change>, StdRefusal> {
        let Some(cur) = self.by_local(proto, local).map(|e| e.fwd) else {
            return Ok(None);
        };
        Self::owned_by(cur.lease, via, nonce)?;
        let change = Change::Removed(cur);
        self.apply(change);
        Ok(Some(change))
    }

    /// Deletes every mapping of `host` and `proto` that `via` and `nonce`
    /// own (NAT-PMP's and PCP's delete with internal port 0).
    pub fn std_delete_all(
        &mut self,
        proto: Proto,
        host: Ipv4Addr,
        via: Via,
        nonce: [u8; 12],
    ) -> Vec<Change> {
        let mine: Vec<Forward> = self
            .entries()
            .map(|e| e.fwd)
            .filter(|f| f.proto == proto && *f.local.ip() == host)
            .filter(|f| Self::owned_by(f.lease, via, nonce).is_ok())
            .collect();
        mine.into_iter()
            .map(|f| {
                let c = Change::Removed(f);
                self.apply(c);
                c
            })
            .collect()
    }
}
