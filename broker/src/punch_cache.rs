//! The hole-punching outcome cache (docs/hole-punching.md, "The outcome
//! cache"): per unordered pair of public IPs, the pairs of realms whose last
//! punch failed, so the next connection between them goes to the relay at
//! once instead of spending a punch budget that will fail again.
//!
//! A failure (a side's timeout, a failed check, a local error, a missing
//! report, an unpredictable mapping) blocks the pair for the retry time; a
//! success clears it. The table is bounded: past its capacity the entry
//! used least recently goes, so a flood of pairs costs memory once and
//! never blocks more than it should (a forgotten pair is only tried again).
//! Not kept across restarts.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Entries kept at most: a few hundred kilobytes.
pub const CAPACITY: usize = 4096;

/// An unordered pair of public IPs, smaller first.
type Pair = (Ipv4Addr, Ipv4Addr);

fn pair(a: Ipv4Addr, b: Ipv4Addr) -> Pair {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Punching between the pair is blocked until then.
    until: Instant,
    /// Its place in the recency order.
    stamp: u64,
}

#[derive(Debug)]
pub struct OutcomeCache {
    entries: HashMap<Pair, Entry>,
    /// Recency: stamp → pair, the oldest first.
    order: BTreeMap<u64, Pair>,
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

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn touch(&mut self, key: Pair) {
        self.next_stamp += 1;
        let stamp = self.next_stamp;
        if let Some(e) = self.entries.get_mut(&key) {
            self.order.remove(&e.stamp);
            e.stamp = stamp;
            self.order.insert(stamp, key);
        }
    }

    fn remove(&mut self, key: Pair) {
        if let Some(e) = self.entries.remove(&key) {
            self.order.remove(&e.stamp);
        }
    }

    /// Whether punching between `a` and `b` is blocked at `now`. An entry
    /// past its time is dropped; a live one counts as used.
    pub fn blocked(&mut self, a: Ipv4Addr, b: Ipv4Addr, now: Instant) -> bool {
        let key = pair(a, b);
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

    /// A punch between `a` and `b` failed: block the pair for `retry`.
    pub fn failed(&mut self, a: Ipv4Addr, b: Ipv4Addr, retry: Duration, now: Instant) {
        let key = pair(a, b);
        self.remove(key);
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.entries.remove(&oldest);
        }
        self.next_stamp += 1;
        let stamp = self.next_stamp;
        self.entries.insert(key, Entry { until: now + retry, stamp });
        self.order.insert(stamp, key);
    }

    /// A punch between `a` and `b` succeeded: the pair may punch again.
    pub fn succeeded(&mut self, a: Ipv4Addr, b: Ipv4Addr) {
        self.remove(pair(a, b));
    }

    /// The blocked pairs and how long each stays blocked.
    #[cfg(test)]
    pub fn blocked_pairs(&self, now: Instant) -> Vec<(Ipv4Addr, Ipv4Addr, Duration)> {
        let mut out: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, e)| now < e.until)
            .map(|(k, e)| (k.0, k.1, e.until - now))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 51, 100, n)
    }

    const RETRY: Duration = Duration::from_secs(600);

    #[test]
    fn a_failure_blocks_the_pair_both_ways_until_the_retry_time() {
        let t = Instant::now();
        let mut c = OutcomeCache::default();
        assert!(!c.blocked(ip(1), ip(2), t));
        c.failed(ip(1), ip(2), RETRY, t);
        assert!(c.blocked(ip(1), ip(2), t));
        assert!(c.blocked(ip(2), ip(1), t + Duration::from_secs(599)), "unordered");
        assert!(!c.blocked(ip(1), ip(3), t), "other pairs are not touched");
        assert!(!c.blocked(ip(1), ip(2), t + RETRY), "tried again after the retry time");
        assert_eq!(c.len(), 0, "the stale entry went");
    }

    #[test]
    fn a_success_clears_the_pair() {
        let t = Instant::now();
        let mut c = OutcomeCache::default();
        c.failed(ip(1), ip(2), RETRY, t);
        c.succeeded(ip(2), ip(1));
        assert!(!c.blocked(ip(1), ip(2), t));
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn a_later_failure_restarts_the_time() {
        let t = Instant::now();
        let mut c = OutcomeCache::default();
        c.failed(ip(1), ip(2), RETRY, t);
        c.failed(ip(1), ip(2), RETRY, t + Duration::from_secs(500));
        assert!(c.blocked(ip(1), ip(2), t + Duration::from_secs(1000)));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn past_capacity_the_least_recently_used_pair_goes() {
        let t = Instant::now();
        let mut c = OutcomeCache::new(3);
        c.failed(ip(1), ip(2), RETRY, t);
        c.failed(ip(1), ip(3), RETRY, t);
        c.failed(ip(1), ip(4), RETRY, t);
        // Using the oldest makes the second the least recently used.
        assert!(c.blocked(ip(1), ip(2), t));
        c.failed(ip(1), ip(5), RETRY, t);
        assert_eq!(c.len(), 3);
        assert!(!c.blocked(ip(1), ip(3), t), "evicted");
        for n in [2, 4, 5] {
            assert!(c.blocked(ip(1), ip(n), t), "{n} kept");
        }
        assert_eq!(c.blocked_pairs(t).len(), 3);
    }

    #[test]
    fn the_table_never_grows_past_its_capacity() {
        let t = Instant::now();
        let mut c = OutcomeCache::new(64);
        for a in 0..=255u8 {
            c.failed(ip(a), Ipv4Addr::new(192, 0, 2, a), RETRY, t);
            assert!(c.len() <= 64);
            assert_eq!(c.order.len(), c.entries.len());
        }
    }
}
