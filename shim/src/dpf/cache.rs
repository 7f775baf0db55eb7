//! The answers `dpfd` gave to `Query` (see `query`), kept per (proto,
//! address) for [`TTL`] in the DPF state, at most [`CAPACITY`] of them.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use proto::Proto;

pub const TTL: Duration = Duration::from_secs(10);
pub const CAPACITY: usize = 1024;

/// Cached answers: `Some(local)` to dial instead, `None` to dial as is.
#[derive(Debug, Default)]
pub struct QueryCache {
    map: HashMap<(Proto, SocketAddrV4), (Option<SocketAddrV4>, Instant)>,
}

impl QueryCache {
    /// `Some(answer)` if cached and fresh at `now`.
    pub fn get(&self, proto: Proto, public: SocketAddrV4, now: Instant) -> Option<Option<SocketAddrV4>> {
        let (answer, expires) = self.map.get(&(proto, public))?;
        (now < *expires).then_some(*answer)
    }

    pub fn insert(&mut self, proto: Proto, public: SocketAddrV4, answer: Option<SocketAddrV4>, now: Instant) {
        if self.map.len() >= CAPACITY && !self.map.contains_key(&(proto, public)) {
            self.map.retain(|_, (_, exp)| *exp > now);
            if self.map.len() >= CAPACITY {
                // Still full of fresh entries: drop the one closest to expiring.
                if let Some(k) = self.map.iter().min_by_key(|(_, (_, exp))| *exp).map(|(k, _)| *k) {
                    self.map.remove(&k);
                }
            }
        }
        self.map.insert((proto, public), (answer, now + TTL));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn answers_expire_and_protos_are_apart() {
        let mut c = QueryCache::default();
        let t0 = Instant::now();
        c.insert(Proto::Tcp, a("203.0.113.1:40000"), Some(a("192.0.2.10:7000")), t0);
        c.insert(Proto::Udp, a("203.0.113.1:40000"), None, t0);
        assert_eq!(c.get(Proto::Tcp, a("203.0.113.1:40000"), t0), Some(Some(a("192.0.2.10:7000"))));
        assert_eq!(c.get(Proto::Udp, a("203.0.113.1:40000"), t0), Some(None), "negative answers are cached");
        assert_eq!(c.get(Proto::Tcp, a("203.0.113.1:40001"), t0), None);
        assert_eq!(c.get(Proto::Tcp, a("203.0.113.1:40000"), t0 + TTL), None, "expired");
    }

    #[test]
    fn cache_is_bounded() {
        let mut c = QueryCache::default();
        let t0 = Instant::now();
        for i in 0..(CAPACITY as u16 + 50) {
            c.insert(Proto::Tcp, SocketAddrV4::new([203, 0, 113, 1].into(), 1000 + i), None, t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(c.len(), CAPACITY);
        let last = SocketAddrV4::new([203, 0, 113, 1].into(), 1000 + CAPACITY as u16 + 49);
        assert!(c.get(Proto::Tcp, last, t0).is_some(), "the newest entry stays");
        assert!(c.get(Proto::Tcp, a("203.0.113.1:1000"), t0).is_none(), "the oldest went");
    }
}
