//! The answering side of the reliable layer: a bounded cache of encoded
//! replies keyed by (peer, request id), so retransmitted requests are
//! answered again without being executed again.
//!
//! Invariants, checked by the property tests:
//! * at most `max_entries` entries and at most `max_bytes` reply bytes are
//!   held, whatever the input; a reply larger than `max_bytes` is not cached;
//! * eviction is oldest-first: entries leave in insertion order, either when
//!   older than `ttl` or to make room. With one `ttl` for all, insertion
//!   order is expiry order, so a queue suffices and every operation is
//!   amortised O(1);
//! * an entry, once stored, is never replaced: the first reply is the reply.
//!
//! A flood of distinct requests can push entries out before their `ttl`;
//! the requester then sees its retransmission executed again, which is why
//! the caps must be generous relative to the expected request rate.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Entry {
    reply: Vec<u8>,
    stored: Instant,
}

/// Duplicate-request cache of one responder.
#[derive(Debug)]
pub struct ReplyCache<P> {
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    entries: HashMap<(P, u64), Entry>,
    /// Keys in insertion order; the same keys as `entries`.
    order: VecDeque<(P, u64)>,
    bytes: usize,
}

impl<P: Clone + Eq + Hash> ReplyCache<P> {
    /// Longer than [`RetryPolicy::default`](super::RetryPolicy)'s total of 3 s
    /// with room for clock skew between the two ends' timers.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

    pub fn new(ttl: Duration, max_entries: usize, max_bytes: usize) -> Self {
        Self {
            ttl,
            max_entries,
            max_bytes,
            entries: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reply bytes currently held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The stored reply to request `id` from `peer`, if it is still cached.
    /// A hit means: send these bytes again and do not handle the request.
    pub fn lookup(&mut self, peer: &P, id: u64, now: Instant) -> Option<&[u8]> {
        self.expire(now);
        self.entries
            .get(&(peer.clone(), id))
            .map(|e| e.reply.as_slice())
    }

    /// Remembers the reply to request `id` from `peer`. Returns false if it
    /// was not stored: an entry for the key exists already (the first reply
    /// stays), or the reply alone exceeds the byte cap.
    pub fn insert(&mut self, peer: P, id: u64, reply: Vec<u8>, now: Instant) -> bool {
        self.expire(now);
        let key = (peer, id);
        if self.entries.contains_key(&key) || reply.len() > self.max_bytes || self.max_entries == 0
        {
            return false;
        }
        while self.entries.len() >= self.max_entries || self.bytes + reply.len() > self.max_bytes {
            if !self.evict_oldest() {
                break;
            }
        }
        self.bytes += reply.len();
        self.order.push_back(key.clone());
        self.entries.insert(key, Entry { reply, stored: now });
        true
    }

    /// Drops entries older than the time to live.
    pub fn expire(&mut self, now: Instant) {
        while let Some(key) = self.order.front() {
            let stored = self.entries.get(key).map(|e| e.stored);
            match stored {
                Some(t) if now.saturating_duration_since(t) < self.ttl => break,
                _ => {
                    self.evict_oldest();
                }
            }
        }
    }

    fn evict_oldest(&mut self) -> bool {
        let Some(key) = self.order.pop_front() else {
            return false;
        };
        if let Some(e) = self.entries.remove(&key) {
            self.bytes -= e.reply.len();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_gets_same_reply_until_ttl() {
        let t0 = Instant::now();
        let mut c = ReplyCache::new(Duration::from_secs(10), 10, 1000);
        assert!(c.lookup(&1u8, 5, t0).is_none());
        assert!(c.insert(1u8, 5, b"reply".to_vec(), t0));
        assert!(!c.insert(1u8, 5, b"other".to_vec(), t0));
        assert_eq!(
            c.lookup(&1u8, 5, t0 + Duration::from_secs(9)),
            Some(&b"reply"[..])
        );
        assert!(c.lookup(&2u8, 5, t0).is_none(), "keyed by peer too");
        assert!(c.lookup(&1u8, 5, t0 + Duration::from_secs(10)).is_none());
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }

    #[test]
    fn caps_evict_oldest_first() {
        let t0 = Instant::now();
        let mut c = ReplyCache::new(Duration::from_secs(10), 2, 10);
        assert!(c.insert('a', 1, vec![0; 4], t0));
        assert!(c.insert('b', 1, vec![0; 4], t0));
        assert!(c.insert('c', 1, vec![0; 4], t0)); // entry cap: 'a' goes
        assert!(c.lookup(&'a', 1, t0).is_none());
        assert!(c.insert('d', 1, vec![0; 8], t0)); // byte cap: 'b' and 'c' go
        assert_eq!((c.len(), c.bytes()), (1, 8));
        assert!(
            !c.insert('e', 1, vec![0; 11], t0),
            "larger than the whole cache"
        );
        assert!(c.lookup(&'d', 1, t0).is_some());
    }
}
