//! Retransmission of one request/response exchange (RFC 6887 §8.1.1), and
//! the small random source its jitter needs.
//!
//! The first retransmission time is `RT = (1 + RAND) * IRT`, each later one
//! `RT = (1 + RAND) * min(2 * RTprev, MRT)`, with RAND uniform in
//! [-0.1, +0.1]. The RFC lets MRC (most transmissions) and MRD (longest
//! exchange) be zero, meaning unbounded; a client inside an application
//! must never wait forever, so [`Retry`] gives both a bound, and an
//! exchange can also end at a hard deadline (a mapping's expiry, for its
//! renewal). It gives up one RT after its last transmission, so the last
//! request has as long as the others to be answered.

use std::time::{Duration, Instant};

/// The retransmission parameters of one kind of exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// IRT: the wait after the first transmission.
    pub initial: Duration,
    /// MRT: the longest wait between two transmissions.
    pub max_interval: Duration,
    /// MRC: most transmissions; 0 for no count bound.
    pub max_attempts: u32,
    /// MRD: the longest exchange; zero for no time bound (then
    /// `max_attempts` must bound it, or a hard deadline must).
    pub max_duration: Duration,
}

impl Retry {
    /// RFC 6887's IRT and MRT with a 30 s bound on the whole exchange:
    /// transmissions at about 0, 3, 9 and 21 s.
    pub const PCP: Retry = Retry {
        initial: Duration::from_secs(3),
        max_interval: Duration::from_secs(1024),
        max_attempts: 0,
        max_duration: Duration::from_secs(30),
    };
    /// RFC 6886 §3.1: 250 ms doubling, nine transmissions; bounded at 30 s
    /// here like PCP (the RFC's nine would take 64 s).
    pub const NATPMP: Retry = Retry {
        initial: Duration::from_millis(250),
        max_interval: Duration::from_secs(64),
        max_attempts: 9,
        max_duration: Duration::from_secs(30),
    };
}

/// xorshift64*: plenty for timing jitter, and deterministic from a seed so
/// tests can replay a schedule.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `d` scaled by a factor uniform in [lo, hi).
    pub fn scale(&mut self, d: Duration, lo: f64, hi: f64) -> Duration {
        d.mul_f64(lo + (hi - lo) * self.unit())
    }
}

/// One exchange's retransmission state.
#[derive(Debug, Clone)]
pub struct Exchange {
    retry: Retry,
    give_up: Option<Instant>,
    sent: u32,
    rt: Duration,
    next: Instant,
}

impl Exchange {
    /// An exchange whose first transmission is due at once; `hard` ends it
    /// early (e.g. at the expiry of the mapping being renewed).
    pub fn new(retry: Retry, now: Instant, hard: Option<Instant>) -> Exchange {
        let bound = (!retry.max_duration.is_zero()).then(|| now + retry.max_duration);
        let give_up = match (bound, hard) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Exchange {
            retry,
            give_up,
            sent: 0,
            rt: Duration::ZERO,
            next: now,
        }
    }

    /// When this exchange next needs attention: a transmission or giving up.
    pub fn deadline(&self) -> Instant {
        self.give_up.map_or(self.next, |g| g.min(self.next))
    }

    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// What is due at `now`: a (re)transmission, nothing yet, or giving up.
    pub fn fire(&mut self, now: Instant, rng: &mut Rng) -> Fire {
        if self.give_up.is_some_and(|g| now >= g) {
            return Fire::GiveUp;
        }
        if now < self.next {
            return Fire::Wait;
        }
        let r = &self.retry;
        if r.max_attempts > 0 && self.sent >= r.max_attempts {
            return Fire::GiveUp;
        }
        let base = match self.sent {
            0 => r.initial,
            _ => (self.rt * 2).min(r.max_interval),
        };
        self.rt = rng.scale(base, 0.9, 1.1);
        self.sent += 1;
        self.next = now + self.rt;
        Fire::Send
    }
}

/// The outcome of [`Exchange::fire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fire {
    Send,
    Wait,
    GiveUp,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn pcp_schedule_doubles_with_jitter_and_stops_at_its_bound() {
        let t0 = Instant::now();
        let mut ex = Exchange::new(Retry::PCP, t0, None);
        let mut rng = Rng::new(7);
        let mut sends = Vec::new();
        let mut now = t0;
        for _ in 0..20 {
            now = ex.deadline();
            if ex.fire(now, &mut rng) == Fire::GiveUp {
                break;
            }
            sends.push(now - t0);
        }
        assert_eq!(sends.len(), 4, "{sends:?}");
        assert_jittered_doubling(&sends, Retry::PCP.initial);
        assert_eq!(now - t0, Retry::PCP.max_duration, "gives up at MRD");
    }

    /// Checks send times against §8.1.1: the first wait within 10% of
    /// IRT, each next one within 10% of twice the one before.
    pub(crate) fn assert_jittered_doubling(sends: &[Duration], irt: Duration) {
        let gaps: Vec<f64> = sends
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect();
        let irt = irt.as_secs_f64();
        assert!((gaps[0] - irt).abs() <= irt * 0.1 + 1e-9, "{gaps:?}");
        for g in gaps.windows(2) {
            let ratio = g[1] / g[0];
            assert!((1.8 - 1e-9..=2.2 + 1e-9).contains(&ratio), "{gaps:?}");
        }
    }

    #[test]
    fn count_bound_and_hard_deadline() {
        let t0 = Instant::now();
        let retry = Retry {
            max_attempts: 2,
            max_duration: Duration::ZERO,
            ..Retry::NATPMP
        };
        let mut ex = Exchange::new(retry, t0, None);
        let mut rng = Rng::new(1);
        assert_eq!(ex.fire(t0, &mut rng), Fire::Send);
        assert_eq!(ex.fire(t0, &mut rng), Fire::Wait, "not due yet");
        assert_eq!(ex.fire(ex.deadline(), &mut rng), Fire::Send);
        assert_eq!(
            ex.fire(ex.deadline(), &mut rng),
            Fire::GiveUp,
            "MRC reached"
        );

        let hard = t0 + Duration::from_secs(5);
        let mut ex = Exchange::new(Retry::PCP, t0, Some(hard));
        assert_eq!(ex.fire(t0, &mut rng), Fire::Send);
        assert_eq!(ex.fire(ex.deadline(), &mut rng), Fire::Send);
        assert_eq!(ex.deadline(), hard);
        assert_eq!(ex.fire(hard, &mut rng), Fire::GiveUp);
    }

    #[test]
    fn rng_scale_stays_in_range() {
        let mut rng = Rng::new(0);
        for _ in 0..1000 {
            let d = rng.scale(Duration::from_secs(10), 0.5, 0.625);
            assert!(d >= Duration::from_secs(5) && d < Duration::from_millis(6250));
        }
    }
}
