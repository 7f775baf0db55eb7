//! The hole-punching outcome cache (docs/hole-punching.md, "The outcome
//! cache"): per protocol and unordered pair of public IPs, the pairs of
//! realms whose last punch of that protocol failed, so the next connection
//! of that protocol between them goes to the relay at once instead of
//! spending a punch that will fail again.
//!
//! TCP and UDP are kept apart because they fail apart: a gateway that
//! resets a stranger's SYN may still let a stranger's datagram die quietly,
//! and the other way round (the tables in the doc), so a failed TCP punch
//! says nothing about a UDP one between the same realms.
//!
//! A failure blocks the (protocol, pair) for the retry time; a success of
//! that protocol clears it when its punch was decided after the failure (see
//! [`OutcomeCache::succeeded`]). What counts as a failure is the caller's
//! (`engine::punch`, `engine::punch_udp`). The table is bounded over both
//! protocols together: past its capacity the entry used least recently
//! goes, so a flood of pairs costs memory once and never blocks more than
//! it should (a forgotten pair is only tried again). Not kept across
//! restarts.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use proto::Proto;

/// Entries kept at most, both protocols together: a few hundred kilobytes.
pub const CAPACITY: usize = 4096;

/// A protocol and an unordered pair of public IPs, smaller first.
type Key = (Proto, Ipv4Addr, Ipv4Addr);

fn key(proto: Proto, a: Ipv4Addr, b: Ipv4Addr) -> Key {
    if a <= b {
        (proto, a, b)
    } else {
        (proto, b, a)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// When the failure that blocks the pair was recorded.
    since: Instant,
    /// Punching between the pair is blocked until then.
    until: Instant,
    /// Its place in the recency order.
    stamp: u64,
}

/// One blocked (protocol, pair), as the status lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Blocked {
    pub proto: Proto,
    /// The pair's public IPs, smaller first.
    pub ips: [Ipv4Addr; 2],
    /// How long it stays blocked.
    pub left: Duration,
}

#[derive(Debug)]
pub struct OutcomeCache {
    entries: HashMap<Key, Entry>,
    /// Recency: stamp → key, the oldest first.
    order: BTreeMap<u64, Key>,
    next_stamp: u64,
    capacity: usize,
}

impl Default for OutcomeCache {
    fn default() -> Self {
        Self::new(CAPACITY)
    }
}

impl OutcomeCache {
    pub fn new(capacity: usize) -> Self {
        OutcomeCache {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
            capacity: capacity.max(1),
        }
    }

    /// Entries held, stale ones included (they go when next looked at).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn touch(&mut self, key: Key) {
        self.next_stamp += 1;
        let stamp = self.next_stamp;
        if let Some(e) = self.entries.get_mut(&key) {
            self.order.remove(&e.stamp);
            e.stamp = stamp;
            self.order.insert(stamp, key);
        }
    }

    fn remove(&mut self, key: Key) {
        if let Some(e) = self.entries.remove(&key) {
            self.order.remove(&e.stamp);
        }
    }

    /// Whether punching `proto` between `a` and `b` is blocked at `now`. An
    /// entry past its time is dropped; a live one counts as used.
    pub fn blocked(&mut self, proto: Proto, a: Ipv4Addr, b: Ipv4Addr, now: Instant) -> bool {
        let key = key(proto, a, b);
        match self.entries.get(&key) {
            Some(e) if now < e.until => {
                self.touch(key);
                true
            }
            Some(_) => {
                self.remove(key);
                false
            }
            None => false,
        }
    }

    /// A `proto` punch between `a` and `b` failed: block that protocol
    /// between the pair for `retry`.
    pub fn failed(&mut self, proto: Proto, a: Ipv4Addr, b: Ipv4Addr, retry: Duration, now: Instant) {
        let key = key(proto, a, b);
        self.remove(key);
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.entries.remove(&oldest);
        }
        self.next_stamp += 1;
        let stamp = self.next_stamp;
        self.entries.insert(key, Entry { since: now, until: now + retry, stamp });
        self.order.insert(stamp, key);
    }

    /// Whatever blocks `proto` between `a` and `b` is gone: the pair may punch
    /// that protocol again.
    pub fn clear(&mut self, proto: Proto, a: Ipv4Addr, b: Ipv4Addr) {
        self.remove(key(proto, a, b));
    }

    /// A `proto` punch between `a` and `b`, decided at `decided`, succeeded:
    /// the pair may punch that protocol again, unless a failure was recorded
    /// after that decision. Connects between two realms come in bursts, so
    /// punches overlap; one that was already under way when another failed
    /// says nothing about the next, and letting it lift the block made a pair
    /// that fails one punch in three swing back to punching after every
    /// success, each failure costing a connect the whole budget.
    pub fn succeeded(&mut self, proto: Proto, a: Ipv4Addr, b: Ipv4Addr, decided: Instant) {
        let key = key(proto, a, b);
        if self.entries.get(&key).is_some_and(|e| e.since <= decided) {
            self.remove(key);
        }
    }

    /// How many pairs are blocked at `now`: TCP, UDP. Stale entries not yet
    /// dropped are not counted, so the gauge says what a connect would meet.
    pub fn blocked_counts(&self, now: Instant) -> [usize; 2] {
        let mut n = [0; 2];
        for ((proto, ..), e) in &self.entries {
            if now < e.until {
                n[usize::from(*proto == Proto::Udp)] += 1;
            }
        }
        n
    }

    /// The blocked (protocol, pair)s at `now`, by protocol and pair.
    pub fn blocked_list(&self, now: Instant) -> Vec<Blocked> {
        let mut out: Vec<Blocked> = self
            .entries
            .iter()
            .filter(|(_, e)| now < e.until)
            .map(|(&(proto, a, b), e)| Blocked {
                proto,
                ips: [a, b],
                left: e.until - now,
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
#[path = "punch_cache_tests.rs"]
mod tests;
