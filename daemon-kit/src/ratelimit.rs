//! Per-source rate limiting: one token bucket per key (typically a source
//! IP), refilled at `rate` tokens per second up to a burst of `rate` tokens,
//! so a well-behaved source may send a second's worth of requests at once
//! and then `rate` per second.
//!
//! Memory is bounded: at most `max_keys` buckets are kept. A bucket that has
//! refilled completely carries no information (a new bucket would be full
//! too), so those are pruned when the table is full. If every bucket is
//! still busy, the new source is let through untracked: a flood from more
//! distinct sources than the table holds cannot be stopped per source
//! anyway, and failing closed would let such a flood lock out legitimate
//! clients.
//!
//! [`SourceGate`] is what a daemon puts in front of its command port: the
//! buckets plus one throttled warning line, so both daemons drop and report
//! an over-eager source the same way.

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::Hash;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::throttle::Throttle;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by `K`.
#[derive(Debug)]
pub struct RateLimiter<K> {
    /// Tokens per second and burst size; 0 turns limiting off.
    rate: u32,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
    /// Pruning scans every bucket, so it runs at most once per second.
    last_prune: Option<Instant>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(rate: u32, max_keys: usize) -> Self {
        RateLimiter {
            rate,
            max_keys,
            buckets: HashMap::new(),
            last_prune: None,
        }
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Changes the rate (e.g. on reload). Existing buckets keep their level,
    /// capped at the new burst on their next refill.
    pub fn set_rate(&mut self, rate: u32) {
        self.rate = rate;
        if rate == 0 {
            self.buckets.clear();
        }
    }

    /// Sources currently tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Takes one token for `key` at `now`: true if the request may proceed.
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let rate = f64::from(self.rate);
        if let Some(b) = self.buckets.get_mut(key) {
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens = (b.tokens + elapsed * rate).min(rate);
            b.last = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                return true;
            }
            return false;
        }
        if self.buckets.len() >= self.max_keys {
            self.prune(now);
            if self.buckets.len() >= self.max_keys {
                return true;
            }
        }
        self.buckets.insert(
            key.clone(),
            Bucket {
                tokens: rate - 1.0,
                last: now,
            },
        );
        true
    }

    /// Drops the buckets that have refilled completely by `now`.
    pub fn prune(&mut self, now: Instant) {
        if self
            .last_prune
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_prune = Some(now);
        let rate = f64::from(self.rate);
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens + elapsed * rate < rate
        });
    }
}

/// At most one rate-limit warning per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// A command port's per-source limit: `rate` requests per second from one
/// source (0: no limit), the excess dropped with a throttled warning that
/// names the source.
#[derive(Debug)]
pub struct SourceGate<K> {
    limiter: RateLimiter<K>,
    warnings: Throttle,
    /// What the port takes, for the warning: "commands", "requests".
    what: &'static str,
}

impl<K: Hash + Eq + Clone + Display> SourceGate<K> {
    pub fn new(rate: u32, max_sources: usize, what: &'static str) -> Self {
        SourceGate {
            limiter: RateLimiter::new(rate, max_sources),
            warnings: Throttle::new(WARN_INTERVAL),
            what,
        }
    }

    pub fn rate(&self) -> u32 {
        self.limiter.rate()
    }

    /// A new rate, from a reload.
    pub fn set_rate(&mut self, rate: u32) {
        self.limiter.set_rate(rate);
    }

    /// Whether a datagram from `source` at `now` may be handled; false:
    /// drop it (the caller counts it).
    pub fn admit(&mut self, source: &K, now: Instant) -> bool {
        if self.limiter.allow(source, now) {
            return true;
        }
        if let Some(more) = self.warnings.hit(now) {
            warn!(
                "rate limit: {source} sends more than {} {}/s; dropping the excess \
                 ({more} more dropped since the last such line)",
                self.limiter.rate(),
                self.what
            );
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_admits_the_burst_per_source_then_drops() {
        let t0 = Instant::now();
        let mut g = SourceGate::new(3, 16, "requests");
        let admitted = (0..10).filter(|_| g.admit(&"192.0.2.10", t0)).count();
        assert_eq!(admitted, 3);
        assert!(g.admit(&"192.0.2.11", t0), "per source");
        g.set_rate(0);
        assert!(
            (0..10).all(|_| g.admit(&"192.0.2.10", t0)),
            "0 turns it off"
        );
        assert_eq!(g.rate(), 0);
    }

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(10, 100);
        let allowed = (0..25).filter(|_| l.allow(&1u32, t0)).count();
        assert_eq!(allowed, 10, "one second's worth at once");
        assert!(!l.allow(&1, t0 + Duration::from_millis(50)));
        assert!(l.allow(&1, t0 + Duration::from_millis(100)), "refilled one");
        assert!(l.allow(&2, t0), "other sources are not affected");
        let later = t0 + Duration::from_secs(60);
        let allowed = (0..25).filter(|_| l.allow(&1, later)).count();
        assert_eq!(allowed, 10, "the bucket never holds more than the burst");
    }

    #[test]
    fn zero_rate_is_off_and_set_rate_applies() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(0, 4);
        assert!((0..1000).all(|_| l.allow(&1u8, t0)));
        assert_eq!(l.tracked(), 0);
        l.set_rate(1);
        assert!(l.allow(&1, t0));
        assert!(!l.allow(&1, t0));
        l.set_rate(0);
        assert!(l.allow(&1, t0));
    }

    #[test]
    fn table_is_bounded_and_idle_buckets_are_pruned() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(2, 3);
        for k in 0..3u8 {
            assert!(l.allow(&k, t0));
        }
        assert_eq!(l.tracked(), 3);
        // Full of busy buckets: a new source passes but is not tracked.
        assert!(l.allow(&9, t0));
        assert_eq!(l.tracked(), 3);
        // A second later every bucket has refilled and can go.
        let t1 = t0 + Duration::from_secs(2);
        assert!(l.allow(&9, t1));
        assert_eq!(l.tracked(), 1);
    }
}
