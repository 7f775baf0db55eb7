//! The UDP relay table (paper 4.2.2, "relay rules"): per registered UDP
//! socket, its `udp_token`, its *data path* (the NAT mapping of the client's
//! application socket, learned from `Dummy{udp_token}`), and one rule per
//! remote peer that sent to the proxy socket recently.
//!
//! A rule is what lets the client answer: the broker forwards a client's
//! datagram only to a peer with a live rule on that registration, so the
//! broker is never an open relay. Rules are created by the peer's traffic
//! (inbound), refreshed by traffic either way (as a NAT mapping is), capped
//! per registration, and expire after an idle time; a later datagram from
//! the same peer simply creates the rule again.
//!
//! Idle expiry is lazy: the deadline index holds each rule's deadline as of
//! when it was last indexed; when an entry falls due, a rule that saw
//! traffic since is re-indexed at its real deadline instead of expiring.
//! So a datagram costs a hash lookup, never an index update.
//!
//! Like the registry, the table holds no sockets, so it is tested without
//! binding anything.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use proto::gcb::Token;

/// Direction index into a rule's counts: from the peer to the client.
pub const TO_CLIENT: usize = 0;
/// Direction index: from the client to the peer.
pub const TO_PEER: usize = 1;

/// One peer allowed to exchange datagrams with one registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub created: Instant,
    pub last_used: Instant,
    /// Datagrams and payload bytes, indexed by [`TO_CLIENT`] / [`TO_PEER`].
    pub datagrams: [u64; 2],
    pub bytes: [u64; 2],
    /// The deadline this rule is indexed under (see the module docs).
    deadline: Instant,
}

/// The UDP state of one registration.
#[derive(Debug, Clone)]
pub struct Reg {
    pub udp_token: Token,
    /// Where the client's application socket is seen from here; relayed
    /// datagrams go there. `None` until the first valid `Dummy`.
    pub data_path: Option<SocketAddrV4>,
    rules: HashMap<SocketAddrV4, Rule>,
}

impl Reg {
    pub fn rules(&self) -> impl Iterator<Item = (&SocketAddrV4, &Rule)> {
        self.rules.iter()
    }
}

/// What a `Dummy` arriving at a proxy socket did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DummyOutcome {
    /// Not this registration's token (or no such registration): ignored.
    Refused,
    /// The first data path of the registration.
    Learned,
    /// The data path as known; nothing changed.
    Same,
    /// The data path moved from this address (NAT state lost or the
    /// masquerade address changed).
    Moved(SocketAddrV4),
}

/// What an inbound datagram from a peer did to the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// The peer had a rule; counted.
    Existing,
    /// A rule was created for the peer; counted.
    Created,
    /// The registration is at its rule cap: dropped.
    Full,
    /// No such registration.
    Unknown,
}

/// Every UDP registration's relay state, keyed by proxy address.
#[derive(Debug)]
pub struct UdpTable {
    regs: HashMap<SocketAddrV4, Reg>,
    /// `(deadline, proxy, peer)` for every rule.
    expiry: BTreeSet<(Instant, SocketAddrV4, SocketAddrV4)>,
    idle: Duration,
    cap: usize,
}

impl UdpTable {
    pub fn new(idle: Duration, cap: usize) -> Self {
        UdpTable {
            regs: HashMap::new(),
            expiry: BTreeSet::new(),
            idle,
            cap,
        }
    }

    /// Applies new limits (SIGHUP). Rules beyond a lowered cap stay until
    /// they expire; a changed idle time re-indexes every rule.
    pub fn set_limits(&mut self, idle: Duration, cap: usize) {
        self.cap = cap;
        if idle == self.idle {
            return;
        }
        self.idle = idle;
        self.expiry.clear();
        for (proxy, reg) in &mut self.regs {
            for (peer, rule) in &mut reg.rules {
                rule.deadline = rule.last_used + idle;
                self.expiry.insert((rule.deadline, *proxy, *peer));
            }
        }
    }

    /// Adds a registration; a known one keeps its token and state.
    pub fn add(&mut self, proxy: SocketAddrV4, udp_token: Token) -> Token {
        self.regs
            .entry(proxy)
            .or_insert(Reg {
                udp_token,
                data_path: None,
                rules: HashMap::new(),
            })
            .udp_token
    }

    /// Removes a registration and all its rules.
    pub fn remove(&mut self, proxy: &SocketAddrV4) -> Option<Reg> {
        let reg = self.regs.remove(proxy)?;
        for (peer, rule) in &reg.rules {
            self.expiry.remove(&(rule.deadline, *proxy, *peer));
        }
        Some(reg)
    }

    pub fn get(&self, proxy: &SocketAddrV4) -> Option<&Reg> {
        self.regs.get(proxy)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&SocketAddrV4, &Reg)> {
        self.regs.iter()
    }

    pub fn data_path(&self, proxy: &SocketAddrV4) -> Option<SocketAddrV4> {
        self.regs.get(proxy)?.data_path
    }

    /// Rules of all registrations.
    pub fn rules_len(&self) -> usize {
        self.expiry.len()
    }

    /// A `Dummy{token}` from `from` at `proxy`: with the right token, `from`
    /// becomes (or stays) the data path.
    pub fn dummy(
        &mut self,
        proxy: &SocketAddrV4,
        from: SocketAddrV4,
        token: Token,
    ) -> DummyOutcome {
        let Some(reg) = self.regs.get_mut(proxy) else {
            return DummyOutcome::Refused;
        };
        if reg.udp_token != token {
            return DummyOutcome::Refused;
        }
        match reg.data_path.replace(from) {
            None => DummyOutcome::Learned,
            Some(old) if old == from => DummyOutcome::Same,
            Some(old) => DummyOutcome::Moved(old),
        }
    }

    /// A datagram of `len` payload bytes from `peer` at `proxy`: finds or
    /// creates the peer's rule and counts the datagram on it.
    pub fn inbound(
        &mut self,
        proxy: &SocketAddrV4,
        peer: SocketAddrV4,
        len: usize,
        now: Instant,
    ) -> Inbound {
        let Some(reg) = self.regs.get_mut(proxy) else {
            return Inbound::Unknown;
        };
        let (rule, outcome) = match reg.rules.get_mut(&peer) {
            Some(rule) => (rule, Inbound::Existing),
            None => {
                if reg.rules.len() >= self.cap {
                    return Inbound::Full;
                }
                let deadline = now + self.idle;
                self.expiry.insert((deadline, *proxy, peer));
                let rule = Rule {
                    created: now,
                    last_used: now,
                    datagrams: [0; 2],
                    bytes: [0; 2],
                    deadline,
                };
                (reg.rules.entry(peer).or_insert(rule), Inbound::Created)
            }
        };
        count(rule, TO_CLIENT, len, now);
        outcome
    }

    /// A datagram of `len` payload bytes from the client at `proxy` to
    /// `peer`: allowed, and counted, only if the peer has a live rule.
    pub fn outbound(
        &mut self,
        proxy: &SocketAddrV4,
        peer: &SocketAddrV4,
        len: usize,
        now: Instant,
    ) -> bool {
        let idle = self.idle;
        let Some(rule) = self.regs.get_mut(proxy).and_then(|r| r.rules.get_mut(peer)) else {
            return false;
        };
        // Idle past its time but not swept yet (sweeps run once per loop
        // turn): as good as gone.
        if rule.last_used + idle <= now {
            return false;
        }
        count(rule, TO_PEER, len, now);
        true
    }

    /// Whether `peer` has a rule on `proxy` that is not idle past its time.
    pub fn has_live_rule(&self, proxy: &SocketAddrV4, peer: &SocketAddrV4, now: Instant) -> bool {
        self.regs
            .get(proxy)
            .and_then(|r| r.rules.get(peer))
            .is_some_and(|rule| rule.last_used + self.idle > now)
    }

    /// When the next index entry falls due (possibly only to be re-indexed).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.expiry.first().map(|e| e.0)
    }

    /// Removes and returns the rules idle for the idle time at `now`, as
    /// `(proxy, peer, rule)`.
    pub fn expire(&mut self, now: Instant) -> Vec<(SocketAddrV4, SocketAddrV4, Rule)> {
        let mut out = Vec::new();
        while let Some(&(deadline, proxy, peer)) = self.expiry.first() {
            if deadline > now {
                break;
            }
            self.expiry.pop_first();
            let Some(reg) = self.regs.get_mut(&proxy) else {
                continue; // unreachable: removal cleans the index
            };
            let Some(rule) = reg.rules.get_mut(&peer) else {
                continue;
            };
            let due = rule.last_used + self.idle;
            if due > now {
                rule.deadline = due;
                self.expiry.insert((due, proxy, peer));
            } else if let Some(rule) = reg.rules.remove(&peer) {
                out.push((proxy, peer, rule));
            }
        }
        out
    }
}

fn count(rule: &mut Rule, dir: usize, len: usize, now: Instant) {
    rule.datagrams[dir] += 1;
    rule.bytes[dir] += len as u64;
    rule.last_used = now;
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
