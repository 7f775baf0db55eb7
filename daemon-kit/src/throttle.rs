//! Throttling for log lines about recurring conditions (a limit reached, a
//! source being rate-limited): the first occurrence is logged at once, later
//! ones at most once per interval, with the number that were not logged in
//! between. A flood then costs a few lines a minute, not one per packet,
//! and the operator still learns how much was happening.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Throttle {
    interval: Duration,
    next: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Throttle {
            interval,
            next: None,
            suppressed: 0,
        }
    }

    /// Records one occurrence at `now`. Returns `Some(n)` when a line should
    /// be logged now, `n` being how many occurrences since the last line were
    /// not logged; `None` when this one is to be counted silently.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.next {
            Some(next) if now < next => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.next = Some(now + self.interval);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_at_once_then_once_per_interval_with_a_count() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.hit(t0), Some(0));
        assert_eq!(t.hit(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.hit(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.hit(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(t.hit(t0 + Duration::from_secs(11)), None);
        assert_eq!(t.hit(t0 + Duration::from_secs(60)), Some(1));
    }
}
