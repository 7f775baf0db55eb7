//! The reliable request/response layer over UDP (the paper's "Reliable UDP"),
//! as two sans-I/O state machines that only see bytes, request ids and times.
//!
//! * [`Requester`], on the sending side, numbers requests, keeps each one
//!   until its reply arrives, and says when to retransmit (exponential
//!   backoff) and when to give up. The caller sends the bytes, feeds replies
//!   to [`Requester::on_response`], and sleeps until
//!   [`Requester::next_deadline`] before calling [`Requester::poll_timeout`].
//! * [`ReplyCache`], on the answering side, remembers the encoded reply to
//!   each (peer, request id) for a while, so a retransmitted request gets the
//!   same reply again without being executed twice. That makes every handler
//!   idempotent from the requester's point of view: a `ReverseConnect` is
//!   dialed once, a `Forward` installs one rule.
//!
//! Both sides run in the broker, dpfd and the shim alike (the broker is the
//! requester for its asynchronous commands to clients). Request ids are
//! chosen by each requester on its own, which is why the cache is keyed by
//! the peer's address too.
//!
//! For a reply to be found on every retransmission, the cache's time to live
//! must exceed the longest [`RetryPolicy::total`] any requester uses;
//! [`ReplyCache::DEFAULT_TTL`] and [`RetryPolicy::default`] satisfy that.

mod reply_cache;
mod requester;

pub use reply_cache::ReplyCache;
pub use requester::{Completed, Requester, SendError, Timeout};

use std::time::Duration;

/// When to retransmit a request and when to give up on it.
///
/// A request is sent at t0 and retransmitted each time its timer fires; the
/// timer starts at `initial_rto` and doubles after each transmission, up to
/// `max_rto`. It is abandoned after `max_tries` transmissions have each had
/// their full timeout, or at `t0 + total`, whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial_rto: Duration,
    pub max_rto: Duration,
    /// Transmissions in all, the first one included.
    pub max_tries: u32,
    pub total: Duration,
}

impl Default for RetryPolicy {
    /// Commands: sends at 0, 50, 150, 350, 750, 1550 ms; gives up at 2350 ms.
    fn default() -> Self {
        RetryPolicy {
            initial_rto: Duration::from_millis(50),
            max_rto: Duration::from_millis(800),
            max_tries: 6,
            total: Duration::from_secs(3),
        }
    }
}

impl RetryPolicy {
    /// For a connector's first `Connect` to an address that may not be
    /// brokered at all: three sends within 350 ms, so a non-GCB destination
    /// costs little before the direct connect (docs/design.md, "Non-GCB peers").
    pub const fn probe() -> Self {
        RetryPolicy {
            initial_rto: Duration::from_millis(50),
            max_rto: Duration::from_millis(200),
            max_tries: 3,
            total: Duration::from_millis(350),
        }
    }

    /// The policy with its degenerate values repaired: a zero timeout would
    /// make retransmissions back to back, zero tries would send nothing, and
    /// durations are capped at an hour so deadline arithmetic on `Instant`
    /// cannot overflow.
    pub fn sanitized(self) -> Self {
        const CAP: Duration = Duration::from_secs(3600);
        let initial_rto = self.initial_rto.clamp(Duration::from_millis(1), CAP);
        RetryPolicy {
            initial_rto,
            max_rto: self.max_rto.clamp(initial_rto, CAP),
            max_tries: self.max_tries.max(1),
            total: self.total.clamp(initial_rto, CAP),
        }
    }
}

#[cfg(test)]
mod tests;
