//! The records of the registration table (`registry`): a registered
//! socket, the processes holding it, and what the table's operations
//! answer.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use mio::Token;
use proto::gcb::Features;
use proto::Endpoint;

use crate::decide::Realm;
use crate::ports::Owner;

/// Holders one registration may have: a pre-fork server's workers each
/// hold the listener; past this a `Register` is refused (the socket keeps
/// working through the holders it has, since any of them can take a
/// connection for all).
pub const MAX_HOLDERS: usize = 64;

/// Former holders a record remembers.
pub const FORMER: usize = 8;

/// What a `Register` says about the process sending it.
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
    /// What its shim offered beyond the paper's protocol.
    pub features: Features,
}

/// One process holding a registered socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub mgmt: SocketAddrV4,
    pub mgmt_local: SocketAddrV4,
    pub pid: u32,
    pub program: String,
    pub heartbeat_secs: u16,
    /// What its shim offered: commands it would not understand are never
    /// sent to it.
    pub features: Features,
    pub joined: Instant,
    pub last_heartbeat: Instant,
    pub(super) deadline: Instant,
}

impl Holder {
    /// Heard from within two of its heartbeat intervals.
    pub(super) fn live(&self, now: Instant) -> bool {
        let silent = now.saturating_duration_since(self.last_heartbeat);
        silent < Duration::from_secs(u64::from(self.heartbeat_secs.max(1)) * 2)
    }
}

/// What a `Register` is to the records ([`Registry::find_for_register`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A holder registering again: its entry is renewed.
    Again(Endpoint),
    /// Another holder of a registered socket: it joins the record.
    Join(Endpoint),
    /// A socket nobody registered: a new registration.
    New,
}

/// Why a holder could not join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

#[derive(Debug, Clone)]
pub struct Record {
    pub proxy: Endpoint,
    /// The registered socket's own address; same-realm peers dial it.
    pub local: SocketAddrV4,
    /// The public IP every holder's requests come from.
    pub ip: Ipv4Addr,
    /// Where the socket sits, as the latest `Register` showed it.
    pub public: bool,
    pub realm: Realm,
    pub registered: Instant,
    /// The proxy socket's token in the event loop.
    pub token: Token,
    /// In the order they joined; never empty.
    pub(super) holders: Vec<Holder>,
    /// Management addresses of the latest holders that left while the
    /// record stayed, at most [`FORMER`], the latest last: a heartbeat from
    /// one is no NAT remapping of the holder left (`Registry::refresh`).
    pub(super) former: Vec<SocketAddrV4>,
}

impl Record {
    /// Remembers that the holder at `mgmt` left.
    pub(super) fn forget(&mut self, mgmt: SocketAddrV4) {
        self.former.retain(|m| *m != mgmt);
        if self.former.len() == FORMER {
            self.former.remove(0);
        }
        self.former.push(mgmt);
    }

    pub(super) fn owner(&self) -> Owner {
        Owner {
            local: self.local,
            ip: self.ip,
        }
    }

    pub fn holders(&self) -> &[Holder] {
        &self.holders
    }

    /// Whether every holder offered `features`: a command that needs them
    /// may then go to whichever holder the failed-command rule picks.
    pub fn all_offer(&self, features: Features) -> bool {
        self.holders.iter().all(|h| h.features.contains(features))
    }

    pub fn holder(&self, mgmt: SocketAddrV4) -> Option<&Holder> {
        self.holders.iter().find(|h| h.mgmt == mgmt)
    }

    /// The holder heard from last (the latest joined on a tie): whom `query`
    /// shows first.
    pub fn freshest(&self) -> &Holder {
        self.freshest_but(None)
            .unwrap_or_else(|| unreachable!("a record has a holder (invariant 2)"))
    }

    /// Where a command goes: the longest-standing holder among the live ones
    /// (heard from within two of their heartbeat intervals), else the holder
    /// heard from last. The process that registered first is the one that
    /// stays: a pre-fork server's master, the parent of workers that come and
    /// go, a daemon that forks children for a moment (`subprocess`, a
    /// `waitpid` on a helper); a connection parked with a child dies with it.
    /// When the first one goes, its heartbeats stop, or its socket is seen
    /// gone (`icmp`), and the next in line takes over.
    pub fn commanded(&self, now: Instant) -> &Holder {
        self.commanded_but(None, now)
            .unwrap_or_else(|| unreachable!("a record has a holder (invariant 2)"))
    }

    /// As [`commanded`](Self::commanded), other than `mgmt`: where a command
    /// goes once more after `mgmt` failed it.
    pub fn commanded_other(&self, mgmt: SocketAddrV4, now: Instant) -> Option<&Holder> {
        self.commanded_but(Some(mgmt), now)
    }

    fn commanded_but(&self, but: Option<SocketAddrV4>, now: Instant) -> Option<&Holder> {
        let others = || self.holders.iter().enumerate().filter(move |(_, h)| Some(h.mgmt) != but);
        others()
            .filter(|(_, h)| h.live(now))
            .min_by_key(|(i, h)| (h.joined, *i))
            .map(|(_, h)| h)
            .or_else(|| self.freshest_but(but))
    }

    fn freshest_but(&self, but: Option<SocketAddrV4>) -> Option<&Holder> {
        self.holders
            .iter()
            .enumerate()
            .filter(|(_, h)| Some(h.mgmt) != but)
            .max_by_key(|(i, h)| (h.last_heartbeat, *i))
            .map(|(_, h)| h)
    }
}

/// What a heartbeat did to one held endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    Refreshed,
    /// Refreshed, and the holder's NAT mapping changed from this address.
    Moved(SocketAddrV4),
    /// Not registered, or not held by this management address: the client
    /// registers again (and joins, if the socket is registered).
    Unknown,
}

/// What taking a holder out of a record did.
#[derive(Debug, Clone)]
pub enum Removed {
    /// The holder left; others still hold the record.
    Holder(Holder),
    /// That was the last holder: the record is gone (its holder inside),
    /// its port quarantined, and the caller closes its proxy socket.
    Record(Record),
}
