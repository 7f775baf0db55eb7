//! The connector's negative cache: IPs that turned out not to be brokered.
//!
//! A GCB connector asks `IP:command_port` before every connect to an address it
//! knows nothing about (DESIGN.md, "Non-GCB peers"). When the answer is "no broker
//! here" (ECONNREFUSED, a foreign reply, silence), the IP is remembered for
//! [`NegCache::TTL`] so only the first connect pays that round trip. Bounded: at
//! most [`NegCache::CAPACITY`] entries; when full, expired entries go first, then
//! the one closest to expiry.
//!
//! Behind the process's own cache sits one [`shared`] by every GCB process of the
//! user on the host, so a short-lived client does not pay the probe that another
//! one already paid; [`known_not_gcb`] and [`remember_not_gcb`] consult both.

pub mod shared;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct NegCache {
    ttl: Duration,
    capacity: usize,
    until: HashMap<Ipv4Addr, Instant>,
}

impl Default for NegCache {
    fn default() -> Self {
        NegCache::new(NegCache::TTL, NegCache::CAPACITY)
    }
}

impl NegCache {
    /// Long enough that a client looping over a plain server asks once a minute,
    /// short enough that a broker started later is found soon.
    pub const TTL: Duration = Duration::from_secs(60);
    pub const CAPACITY: usize = 1024;

    pub fn new(ttl: Duration, capacity: usize) -> NegCache {
        NegCache { ttl, capacity, until: HashMap::new() }
    }

    /// Whether `ip` is known not to be brokered at `now`.
    pub fn contains(&mut self, ip: Ipv4Addr, now: Instant) -> bool {
        match self.until.get(&ip) {
            Some(&t) if now < t => true,
            Some(_) => {
                self.until.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// Remembers that `ip` is not brokered, from `now` for the TTL.
    pub fn insert(&mut self, ip: Ipv4Addr, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        if self.until.len() >= self.capacity && !self.until.contains_key(&ip) {
            self.until.retain(|_, t| *t > now);
            if self.until.len() >= self.capacity {
                // O(n) in a rare case (more than CAPACITY non-GCB hosts a minute).
                if let Some(oldest) = self.until.iter().min_by_key(|(_, t)| **t).map(|(ip, _)| *ip) {
                    self.until.remove(&oldest);
                }
            }
        }
        self.until.insert(ip, now + self.ttl);
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

/// Whether `ip` is known not to be brokered, by this process (`local`, under the
/// registry lock) or by any process of this user in this network namespace.
pub fn known_not_gcb(local: bool, ip: Ipv4Addr) -> bool {
    local || shared::table().is_some_and(|t| t.contains(ip, shared::now_secs(), NegCache::TTL.as_secs()))
}

/// Tells the other processes that `ip` is not brokered (the caller records it in
/// its own cache too).
pub fn remember_not_gcb(ip: Ipv4Addr) {
    if let Some(t) = shared::table() {
        t.insert(ip, shared::now_secs(), NegCache::TTL.as_secs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, n)
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let t0 = Instant::now();
        let mut c = NegCache::new(Duration::from_secs(60), 10);
        assert!(!c.contains(ip(1), t0));
        c.insert(ip(1), t0);
        assert!(c.contains(ip(1), t0 + Duration::from_secs(59)));
        assert!(!c.contains(ip(1), t0 + Duration::from_secs(60)));
        assert!(c.is_empty(), "an expired entry is dropped when seen");
    }

    #[test]
    fn bounded_and_evicts_expired_then_oldest() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = NegCache::new(s(60), 3);
        c.insert(ip(1), t0);
        c.insert(ip(2), t0 + s(10));
        c.insert(ip(3), t0 + s(20));
        c.insert(ip(4), t0 + s(30)); // full: ip(1) expires first
        assert_eq!(c.len(), 3);
        assert!(!c.contains(ip(1), t0 + s(30)));
        c.insert(ip(5), t0 + s(75)); // ip(2) has expired by now
        assert!(!c.contains(ip(2), t0 + s(75)) && c.contains(ip(3), t0 + s(75)));
        c.insert(ip(3), t0 + s(76)); // refresh: no eviction
        assert_eq!(c.len(), 3);
        for n in 10..200 {
            c.insert(ip(n), t0 + s(80));
        }
        assert_eq!(c.len(), 3);
        let mut none = NegCache::new(s(60), 0);
        none.insert(ip(1), t0);
        assert!(!none.contains(ip(1), t0));
    }
}
