//! Telling from a gateway's epoch whether it lost its mappings since its
//! previous message (RFC 6887 §8.5, RFC 6886 §3.6).
//!
//! Every response carries the seconds since the gateway's mapping state
//! began. Between two messages that count must advance about as much as
//! the client's own clock did; if it went back, or moved too little or too
//! much, the gateway restarted (or lost its state some other way) and the
//! client must create its mappings again.

use std::time::Instant;

use super::Via;

/// The previous epoch seen and when, per gateway.
#[derive(Debug, Clone, Default)]
pub struct Epoch {
    last: Option<(Instant, u32)>,
}

impl Epoch {
    /// Records `epoch`, received at `now`; returns true if it shows the
    /// gateway lost state since the previous one. The first one seen shows
    /// nothing.
    pub fn observe(&mut self, via: Via, epoch: u32, now: Instant) -> bool {
        let prev = self.last.replace((now, epoch));
        let Some((then, prev_epoch)) = prev else {
            return false;
        };
        let client = now.saturating_duration_since(then).as_secs();
        lost(via, client, u64::from(prev_epoch), u64::from(epoch))
    }

    /// Forgets the history, e.g. when talking to a new gateway.
    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// The two RFCs' rules, with `client` the whole seconds elapsed on the
/// client between the messages whose epochs are `prev` and `cur`.
pub fn lost(via: Via, client: u64, prev: u64, cur: u64) -> bool {
    match via {
        // §8.5: going back by more than a second is invalid; otherwise the
        // two elapsed times must agree within 2 s plus 1/16 (clock drift).
        Via::Pcp => {
            if cur + 1 < prev {
                return true;
            }
            let server = cur.saturating_sub(prev);
            client + 2 < server - server / 16 || server + 2 < client - client / 16
        }
        // §3.6: a conservative estimate of the epoch now is the previous
        // one plus 7/8 of the client's elapsed time; more than 2 s below
        // it means a reboot.
        Via::NatPmp => cur + 2 < prev + client * 7 / 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pcp_rule() {
        assert!(!lost(Via::Pcp, 100, 1000, 1100));
        assert!(
            !lost(Via::Pcp, 0, 1000, 999),
            "back by one second is allowed"
        );
        assert!(lost(Via::Pcp, 0, 1000, 998));
        assert!(lost(Via::Pcp, 100, 1000, 3), "restarted");
        assert!(lost(Via::Pcp, 10, 1000, 1100), "jumped ahead");
        assert!(!lost(Via::Pcp, 1600, 0, 1510), "drift within 1/16");
        assert!(lost(Via::Pcp, 1600, 0, 1400));
    }

    #[test]
    fn natpmp_rule() {
        assert!(!lost(Via::NatPmp, 100, 1000, 1100));
        assert!(!lost(Via::NatPmp, 100, 1000, 1086), "7/8 of 100 s, less 2");
        assert!(lost(Via::NatPmp, 100, 1000, 1084));
        assert!(lost(Via::NatPmp, 10, 1000, 5));
        assert!(!lost(Via::NatPmp, 10, 1000, 5000), "ahead is not a reboot");
    }

    #[test]
    fn tracker_compares_consecutive_messages() {
        let t0 = Instant::now();
        let mut e = Epoch::default();
        assert!(!e.observe(Via::Pcp, 500, t0));
        assert!(!e.observe(Via::Pcp, 530, t0 + Duration::from_secs(30)));
        assert!(e.observe(Via::Pcp, 2, t0 + Duration::from_secs(40)));
        assert!(
            !e.observe(Via::Pcp, 12, t0 + Duration::from_secs(50)),
            "the new epoch is the reference now"
        );
        e.reset();
        assert!(!e.observe(Via::Pcp, 0, t0));
    }
}
