//! Several brokers in `GCB_INAGENT`: which one a process registers with, and
//! failover when it stops answering.
//!
//! * **Spread.** Each process prefers the broker at `hash(host name, pid) mod n`
//!   of the IPv4 brokers listed, so the processes of a pool spread over the list
//!   without talking to each other, and a given process always makes the same
//!   choice. `listen` tries the brokers in ring order from the preferred one and
//!   keeps the first that answers; brokers known to be dead go last.
//! * **Failover.** A listener whose broker has not answered anything (a reply,
//!   a command) for [`silence_limit`] — three heartbeat intervals, the broker's
//!   own default expiry — moves to the next broker of the ring that is not known
//!   dead: its management socket is connected to the new broker and it registers
//!   there, asking for the same port number. `getsockname` then reports the new
//!   proxy address, and one warning names the move. With a single broker there is
//!   nowhere to go, so the listener keeps heartbeating the one it has, which
//!   re-registers it once it is back (`ReregisterRequest`).
//!
//! The consequence for advertised addresses: a proxy address belongs to one
//! broker. After a failover, a peer that learned the old address (from an ad, a
//! config file, a previous `getsockname`) reaches nothing there and must learn the
//! new one; Condor daemons re-send their ads to the collector periodically, which
//! is that lookup. Calls made after the new `RegisterOk` — `getsockname` on the
//! listener and on connections accepted from then on — see the new address;
//! values the application already copied do not change.
//!
//! The set is pure bookkeeping ([`Brokers`]); `mgmt::fail_over` moves a
//! listener to the next broker, the one place that touches a socket, under
//! the registry lock and without blocking.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::config::{self, Mode};

/// How long a broker that went silent is tried only after the others.
const DEAD_HOLD_INTERVALS: u32 = 10;

/// Silence after which a listener leaves its broker: the broker's default
/// heartbeat timeout is three of the shim's intervals, so by then the broker has
/// dropped the registration anyway.
pub fn silence_limit(interval: Duration) -> Duration {
    interval.saturating_mul(3)
}

/// The IPv4 brokers of `GCB_INAGENT`, in the order given, and which are dead.
#[derive(Debug, Default)]
pub struct Brokers {
    list: Vec<SocketAddrV4>,
    /// Index of this process's preferred broker.
    preferred: usize,
    /// Per broker of `list`: tried last until then.
    dead_until: Vec<Option<Instant>>,
}

impl Brokers {
    /// The set, read from the configuration on first use.
    pub fn loaded(&mut self) -> &mut Brokers {
        if self.is_empty() {
            *self = Brokers::from_config();
        }
        self
    }

    /// `seed` picks the preferred broker; the same seed, the same broker.
    pub fn new(list: Vec<SocketAddrV4>, seed: u64) -> Brokers {
        let preferred = if list.is_empty() { 0 } else { (seed % list.len() as u64) as usize };
        let dead_until = vec![None; list.len()];
        Brokers { list, preferred, dead_until }
    }

    /// This process's set: `GCB_INAGENT`'s IPv4 brokers, spread by host and pid.
    pub fn from_config() -> Brokers {
        let list = match &config::get().mode {
            Mode::Gcb(all) => all
                .iter()
                .filter_map(|b| match b {
                    SocketAddr::V4(v4) => Some(*v4),
                    SocketAddr::V6(_) => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() } as u32;
        Brokers::new(list, spread_seed(&host_name(), pid))
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn index(&self, b: SocketAddrV4) -> Option<usize> {
        self.list.iter().position(|x| *x == b)
    }

    fn dead(&self, i: usize, now: Instant) -> bool {
        self.dead_until[i].is_some_and(|t| now < t)
    }

    /// Every broker in the order to try: the ring from `start`, live ones first.
    fn ring_from(&self, start: usize, now: Instant) -> Vec<SocketAddrV4> {
        let n = self.list.len();
        let ring = (0..n).map(|k| (start + k) % n);
        let (live, dead): (Vec<usize>, Vec<usize>) = ring.partition(|&i| !self.dead(i, now));
        live.into_iter().chain(dead).map(|i| self.list[i]).collect()
    }

    /// The brokers a new registration tries, best first.
    pub fn candidates(&self, now: Instant) -> Vec<SocketAddrV4> {
        self.ring_from(self.preferred, now)
    }

    /// The broker a listener leaving `failed` goes to; `None` when there is no
    /// other (a single broker, or `failed` is not one of ours).
    pub fn after(&self, failed: SocketAddrV4, now: Instant) -> Option<SocketAddrV4> {
        let i = self.index(failed)?;
        self.ring_from((i + 1) % self.list.len(), now).into_iter().find(|b| *b != failed)
    }

    /// `b` did not answer: try it last for a while.
    pub fn mark_dead(&mut self, b: SocketAddrV4, now: Instant, interval: Duration) {
        if let Some(i) = self.index(b) {
            self.dead_until[i] = Some(now + interval.saturating_mul(DEAD_HOLD_INTERVALS));
        }
    }

    /// `b` answered.
    pub fn mark_alive(&mut self, b: SocketAddrV4) {
        if let Some(i) = self.index(b) {
            self.dead_until[i] = None;
        }
    }
}

/// FNV-1a of the host name and pid, then a xor-shift-multiply finaliser:
/// stable across runs and platforms, unlike std's randomly keyed hasher.
///
/// The finaliser matters: FNV-1a's lowest bit is only the parity of its input
/// bytes' lowest bits, so `fnv % 2` put every process whose pid differed by an
/// even number on the same broker (seen in CI: twelve servers started by a
/// script, all on one of two brokers).
pub fn spread_seed(host: &[u8], pid: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.iter().chain(pid.to_le_bytes().iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn host_name() -> Vec<u8> {
    let mut buf = [0u8; 256];
    // SAFETY: a buffer of the stated length; glibc NUL-terminates on success.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Vec::new();
    }
    buf.iter().take_while(|b| **b != 0).copied().collect()
}


#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn three() -> Vec<SocketAddrV4> {
        vec![addr("203.0.113.10:65432"), addr("203.0.113.11:65432"), addr("203.0.113.12:65432")]
    }

    #[test]
    fn the_seed_spreads_and_is_stable() {
        let mut seen = [0usize; 3];
        for pid in 1000..1300 {
            let b = Brokers::new(three(), spread_seed(b"node17", pid));
            seen[b.preferred] += 1;
            assert_eq!(b.preferred, Brokers::new(three(), spread_seed(b"node17", pid)).preferred);
        }
        assert!(seen.iter().all(|&n| n > 50), "300 processes over 3 brokers: {seen:?}");
        assert_ne!(spread_seed(b"a", 1), spread_seed(b"b", 1));
    }

    #[test]
    fn pids_a_script_starts_spread_over_two_brokers() {
        // A shell that forks a wrapper per server hands out pids two or three
        // apart: every such sequence must use both brokers.
        let two = || vec![addr("203.0.113.10:65432"), addr("203.0.113.11:65432")];
        for step in 1..=4u32 {
            let mut seen = [0usize; 2];
            for k in 0..40 {
                seen[Brokers::new(two(), spread_seed(b"gcb-test", 4000 + step * k)).preferred] += 1;
            }
            assert!(seen.iter().all(|&n| n >= 8), "pids {step} apart: {seen:?}");
        }
    }

    #[test]
    fn candidates_start_at_the_preferred_and_put_the_dead_last() {
        let now = Instant::now();
        let l = three();
        let mut b = Brokers::new(l.clone(), 1);
        assert_eq!(b.candidates(now), vec![l[1], l[2], l[0]]);
        b.mark_dead(l[1], now, Duration::from_secs(2));
        assert_eq!(b.candidates(now), vec![l[2], l[0], l[1]]);
        assert_eq!(b.candidates(now + Duration::from_secs(21)), vec![l[1], l[2], l[0]], "the mark expires");
        b.mark_alive(l[1]);
        assert_eq!(b.candidates(now), vec![l[1], l[2], l[0]]);
    }

    #[test]
    fn failover_goes_round_the_ring_skipping_the_dead() {
        let now = Instant::now();
        let l = three();
        let mut b = Brokers::new(l.clone(), 0);
        assert_eq!(b.after(l[0], now), Some(l[1]));
        b.mark_dead(l[1], now, Duration::from_secs(2));
        assert_eq!(b.after(l[0], now), Some(l[2]));
        b.mark_dead(l[2], now, Duration::from_secs(2));
        assert_eq!(b.after(l[0], now), Some(l[1]), "all others dead: the next one anyway");
        assert_eq!(b.after(addr("192.0.2.1:65432"), now), None, "not ours");
        let single = Brokers::new(vec![l[0]], 7);
        assert_eq!(single.after(l[0], now), None, "a single broker has no alternative");
        assert!(Brokers::default().candidates(now).is_empty());
    }

    #[test]
    fn silence_limit_is_three_intervals() {
        assert_eq!(silence_limit(Duration::from_secs(2)), Duration::from_secs(6));
    }
}
