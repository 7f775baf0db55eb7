//! Standby connections as the registry holds them (`standby` drives them):
//! the connector's kept and being made, and the listener's held until
//! claimed. Plain data and its bookkeeping.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use libc::c_int;

use super::connects::Asking;
use crate::client::exchange::Exchange;
use crate::client::family::Family;
use crate::gcb::punch::{Held, Session};
use crate::gcb::registration::ListenerId;

/// This process's standbys, both sides.
#[derive(Default)]
pub struct Standbys {
    pub outgoing: Outgoing,
    pub incoming: Incoming,
}

impl std::fmt::Debug for Standbys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Standbys({} outgoing, {} incoming)", self.outgoing.len(), self.incoming.held.len())
    }
}

impl Standbys {
    /// A forked child's copies: closed, the parent's connections untouched.
    pub fn forget_in_child(&mut self) {
        *self = Standbys::default();
        self.outgoing.note();
    }

    /// An internal fd moved (the program `dup2`ed onto it); false if not ours.
    pub fn moved(&mut self, old: c_int, new: c_int) -> bool {
        let making = self.outgoing.making.iter_mut().any(|m| match &mut m.stage {
            MakingStage::Punching(s) => s.renumber(old, new),
            _ => false,
        });
        making || self.outgoing.kept.iter_mut().any(|k| k.conn.renumber(old, new)) || self.incoming.held.iter_mut().any(|w| w.conn.renumber(old, new))
    }
}

/// Destinations resting at once, at most.
const MAX_RESTING: usize = 16;

/// How many standbys the connector keeps, as last noted under the lock: a
/// connect with none to take asks no lock (`any_kept`).
static KEPT: AtomicUsize = AtomicUsize::new(0);

/// Whether this process may keep a standby (a hint, read without the lock).
pub fn any_kept() -> bool {
    KEPT.load(Ordering::Relaxed) > 0
}

/// The connector's standbys: kept ones and those being made, a few per
/// destination and socket family (`standby::outgoing::PER_DESTINATION`).
#[derive(Default)]
pub struct Outgoing {
    pub kept: Vec<Kept>,
    pub making: Vec<Making>,
    /// Destinations whose last standby ended unclaimed (its listener closed
    /// it, or it could not be made), with the time until which none is
    /// asked for: a listener that holds no more (its limit, a full queue) or
    /// a pair that cannot punch would otherwise cost a punch per connect for
    /// nothing.
    pub resting: Vec<(SocketAddrV4, Instant)>,
}

impl Outgoing {
    /// Standbys kept and being made.
    pub fn len(&self) -> usize {
        self.kept.len() + self.making.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes how many are kept (`any_kept`); after every change to `kept`.
    pub fn note(&self) {
        KEPT.store(self.kept.len(), Ordering::Relaxed);
    }

    /// Asks for no standby for `dest` until `until`; the list is bounded,
    /// the entry that ends first going when it is full.
    pub fn rest(&mut self, dest: SocketAddrV4, until: Instant) {
        self.resting.retain(|(d, _)| *d != dest);
        if self.resting.len() >= MAX_RESTING {
            if let Some(i) = self.resting.iter().enumerate().min_by_key(|(_, (_, t))| *t).map(|(i, _)| i) {
                self.resting.swap_remove(i);
            }
        }
        self.resting.push((dest, until));
    }

    /// Whether `dest` rests at `now` (see `resting`).
    pub fn resting(&self, dest: SocketAddrV4, now: Instant) -> bool {
        self.resting.iter().any(|(d, until)| *d == dest && now < *until)
    }

    /// Standbys for `dest` and sockets of `family`, kept or being made.
    pub fn count_for(&self, dest: SocketAddrV4, family: Family) -> usize {
        self.kept.iter().filter(|k| k.dest == dest && k.family == family).count()
            + self.making.iter().filter(|m| m.dest == dest && m.family == family).count()
    }
}

/// The keepalive settings a standby had before the side turned its probes
/// on (`standby::conn::watch_path`), given back when a program gets it.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive(pub [Option<c_int>; 4]);

/// A standby ready for the next connect to `dest` from a socket of
/// `family`: it goes on the program's fd, so its domain must be the fd's.
pub struct Kept {
    pub dest: SocketAddrV4,
    pub family: Family,
    pub conn: Held,
    pub keepalive: Keepalive,
    pub since: Instant,
}

/// A standby being made for `dest`.
pub struct Making {
    pub dest: SocketAddrV4,
    pub family: Family,
    pub(crate) stage: MakingStage,
    pub deadline: Instant,
}

pub(crate) enum MakingStage {
    /// Asked for by a connect; the responder sends the `Connect`, so the
    /// connecting thread makes no system call for it.
    Wanted,
    Asking(Box<Asking>, Exchange),
    Punching(Box<Session>),
    /// Only while a step has taken the stage out; never left in the list.
    Taken,
}

/// The listener's standbys.
#[derive(Default)]
pub struct Incoming {
    pub held: Vec<Waiting>,
}

/// A standby held for `listener`, from `peer` to `proxy`.
pub struct Waiting {
    pub listener: ListenerId,
    pub conn: Held,
    pub keepalive: Keepalive,
    pub peer: SocketAddrV4,
    pub proxy: SocketAddrV4,
    pub since: Instant,
}
