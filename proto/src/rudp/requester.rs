//! The sending side of the reliable layer: request ids, outstanding requests
//! and their retransmission timers.
//!
//! Invariants, checked by the property tests:
//! * a request is transmitted at most `max_tries` times in all;
//! * each request's deadlines strictly increase, and none lies past
//!   `first send + total`;
//! * every request ends exactly once: completed by `on_response`, cancelled,
//!   or reported as `GaveUp`; after that its id is forgotten, so a late or
//!   duplicate reply is ignored;
//! * at most `max_outstanding` requests are tracked.

use super::RetryPolicy;
use crate::wire::EncodeError;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Pending<P> {
    peer: P,
    bytes: Vec<u8>,
    policy: RetryPolicy,
    tries: u32,
    first_sent: Instant,
    deadline: Instant,
    rto: Duration,
}

/// Why [`Requester::send`] did not start a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// `max_outstanding` requests are already in flight.
    Full,
    /// The message could not be encoded.
    Encode(EncodeError),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Full => write!(f, "too many outstanding requests"),
            SendError::Encode(e) => write!(f, "cannot encode request: {e}"),
        }
    }
}

impl std::error::Error for SendError {}

/// What a timer expiry asks the caller to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timeout<P> {
    /// Send `bytes` to `peer` again.
    Retransmit { id: u64, peer: P, bytes: Vec<u8> },
    /// No reply in time: the request failed; the id is forgotten.
    GaveUp { id: u64, peer: P },
}

/// A request whose reply arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed<P> {
    pub id: u64,
    pub peer: P,
    /// Transmissions made; 1 means the reply answered the first send.
    pub tries: u32,
    /// Time from the first send to the reply. A round-trip sample only when
    /// `tries == 1` (Karn's rule: with retransmissions the reply's request is
    /// ambiguous).
    pub elapsed: Duration,
}

/// Tracks outstanding requests to one or many peers (`P` is the caller's
/// peer identifier, typically a `SocketAddrV4`).
#[derive(Debug)]
pub struct Requester<P> {
    policy: RetryPolicy,
    max_outstanding: usize,
    next_id: u64,
    pending: HashMap<u64, Pending<P>>,
    /// Deadline index: the earliest is first, ties broken by id.
    timers: BTreeSet<(Instant, u64)>,
}

impl<P: Clone + PartialEq> Requester<P> {
    /// `first_id` should be random-ish (the caller's choice of entropy), so a
    /// restarted process does not reuse the ids of its previous life while
    /// the peer still caches their replies; ids then increase by one.
    pub fn new(policy: RetryPolicy, first_id: u64, max_outstanding: usize) -> Self {
        Self {
            policy: policy.sanitized(),
            max_outstanding,
            next_id: first_id,
            pending: HashMap::new(),
            timers: BTreeSet::new(),
        }
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// Requests in flight.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.pending.contains_key(&id)
    }

    /// Starts a request to `peer` with the default policy. `encode` is given
    /// the request id to put in the header and returns the datagram; the
    /// returned bytes are for the caller to send now.
    pub fn send(
        &mut self,
        peer: P,
        now: Instant,
        encode: impl FnOnce(u64) -> Result<Vec<u8>, EncodeError>,
    ) -> Result<(u64, &[u8]), SendError> {
        let policy = self.policy;
        self.send_with(peer, policy, now, encode)
    }

    /// Like [`send`](Self::send) with a policy for this request only (e.g.
    /// [`RetryPolicy::probe`]).
    pub fn send_with(
        &mut self,
        peer: P,
        policy: RetryPolicy,
        now: Instant,
        encode: impl FnOnce(u64) -> Result<Vec<u8>, EncodeError>,
    ) -> Result<(u64, &[u8]), SendError> {
        if self.pending.len() >= self.max_outstanding {
            return Err(SendError::Full);
        }
        let id = self.allocate_id();
        let bytes = encode(id).map_err(SendError::Encode)?;
        let policy = policy.sanitized();
        let deadline = now + policy.initial_rto.min(policy.total);
        let pending = Pending {
            peer,
            bytes,
            policy,
            tries: 1,
            first_sent: now,
            deadline,
            rto: policy.initial_rto,
        };
        self.timers.insert((deadline, id));
        let bytes = &self.pending.entry(id).or_insert(pending).bytes;
        Ok((id, bytes))
    }

    /// The next id not in flight. The loop ends within `pending.len() + 1`
    /// steps, and in practice at once: ids only collide after 2^64 requests.
    fn allocate_id(&mut self) -> u64 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.pending.contains_key(&id) {
                return id;
            }
        }
    }

    /// When [`poll_timeout`](Self::poll_timeout) next has work, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|&(t, _)| t)
    }

    /// Handles every timer due at `now`, earliest first. A late call
    /// retransmits each request once, not once per missed timer.
    pub fn poll_timeout(&mut self, now: Instant) -> Vec<Timeout<P>> {
        let mut out = Vec::new();
        while let Some(&(deadline, id)) = self.timers.first() {
            if deadline > now {
                break;
            }
            self.timers.pop_first();
            let Some(p) = self.pending.get_mut(&id) else {
                continue;
            };
            let end = p.first_sent + p.policy.total;
            if p.tries >= p.policy.max_tries || now >= end {
                let peer = p.peer.clone();
                self.pending.remove(&id);
                out.push(Timeout::GaveUp { id, peer });
                continue;
            }
            p.tries += 1;
            p.rto = (p.rto * 2).min(p.policy.max_rto);
            // `now < end`, and `now >= deadline`, so this strictly increases.
            p.deadline = (now + p.rto).min(end);
            self.timers.insert((p.deadline, id));
            out.push(Timeout::Retransmit {
                id,
                peer: p.peer.clone(),
                bytes: p.bytes.clone(),
            });
        }
        out
    }

    /// A reply with request id `id` arrived from `from`. Returns the finished
    /// request, or `None` if no such request is in flight to that peer (late,
    /// duplicate, or spoofed replies), which the caller drops.
    pub fn on_response(&mut self, id: u64, from: &P, now: Instant) -> Option<Completed<P>> {
        if self.pending.get(&id)?.peer != *from {
            return None;
        }
        let p = self.pending.remove(&id)?;
        self.timers.remove(&(p.deadline, id));
        Some(Completed {
            id,
            peer: p.peer,
            tries: p.tries,
            elapsed: now.saturating_duration_since(p.first_sent),
        })
    }

    /// Abandons a request without reporting it (e.g. its socket was closed).
    pub fn cancel(&mut self, id: u64) -> bool {
        match self.pending.remove(&id) {
            Some(p) => {
                self.timers.remove(&(p.deadline, id));
                true
            }
            None => false,
        }
    }

    /// Abandons every request to `peer` (e.g. it was found not to speak the
    /// protocol); returns their ids in increasing order.
    pub fn cancel_peer(&mut self, peer: &P) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.peer == *peer)
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        for id in &ids {
            self.cancel(*id);
        }
        ids
    }

    /// Current deadline of a request, for tests and diagnostics.
    pub fn deadline_of(&self, id: u64) -> Option<Instant> {
        self.pending.get(&id).map(|p| p.deadline)
    }
}
