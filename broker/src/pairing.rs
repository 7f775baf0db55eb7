//! Pending pairings: the tokens the broker has handed out and is waiting on,
//! with the halves of each brokered connection that have arrived so far.
//!
//! Four kinds (the expected arrivals at the rendezvous in brackets):
//! * `Reversal` [none]: the listener dials the connector itself; the entry
//!   only lives until the listener acknowledges `ReverseConnect`, so a
//!   failure can be logged against the decision;
//! * `Relay` [connector, listener]: a GCB connector and the listener both
//!   dial the rendezvous with `StreamHello`;
//! * `Punch` [connector, listener]: both dial the rendezvous with
//!   `PunchHello` (docs/hole-punching.md); once both are here the core's
//!   punch meeting takes over (`engine::punch`);
//! * `Regular` [listener]: a non-GCB connector dialed the proxy socket; its
//!   accepted connection is parked here from the start, unread.
//!
//! Each entry has a deadline; expired entries are handed back so the caller
//! can close what they hold. A relay whose listener failed its command
//! before the connector's half arrived stays until then, marked `failed`
//! and holding no half (the core hands back a listener half already there),
//! so the connector is told why rather than that its token is unknown. Each
//! role can arrive once; a second arrival of a role, a role the kind does
//! not expect, a hello of the other family (a `StreamHello` for a punch, a
//! `PunchHello` for a relay), or an unknown token is rejected. The table is generic over
//! the stream type: the core keeps the ids of streams the event loop holds
//! (`engine::StreamId`).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddrV4;
use std::time::Instant;

use proto::gcb::punch::Arrival;
use proto::gcb::{ErrorCode, Role, Token};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Reversal,
    Relay,
    Regular,
    Punch,
}

impl Kind {
    fn expects(self, role: Role) -> bool {
        match self {
            Kind::Reversal => false,
            Kind::Relay | Kind::Punch => true,
            Kind::Regular => role == Role::Listener,
        }
    }

    /// Whether the pairing becomes a relay through the broker.
    pub fn relays(self) -> bool {
        self != Kind::Reversal
    }
}

/// One side of a brokered connection that has reached the broker.
#[derive(Debug)]
pub struct Half<S> {
    pub stream: S,
    /// The side's address as this broker sees it.
    pub addr: SocketAddrV4,
    /// A punch's side: how it arrived (its `PunchHello`'s local address,
    /// the connection's round trip).
    pub punch: Option<Arrival>,
}

impl<S> Half<S> {
    /// A side that said `StreamHello`, or a regular connector.
    pub fn plain(stream: S, addr: SocketAddrV4) -> Self {
        Half { stream, addr, punch: None }
    }
}

#[derive(Debug)]
pub struct Pending<S> {
    pub kind: Kind,
    /// The listener's proxy address.
    pub proxy: SocketAddrV4,
    /// The listener's management address (where the command went).
    pub listener_mgmt: SocketAddrV4,
    /// How the listener is to know the connector: its registered identity
    /// when it gave one, else its address as seen (or best guessed).
    pub peer: SocketAddrV4,
    /// The connector's own registered address, if any: it beats the
    /// address its rendezvous connection comes from.
    pub connector_id: Option<SocketAddrV4>,
    /// Where a TCP reversal's `Connect` came from: the connector waits there
    /// for `ConnectFailed` should the listener not dial.
    pub connector_cmd: Option<SocketAddrV4>,
    /// The listener failed its command with this code: the connection
    /// will not be made, and an arriving half is rejected with the code.
    pub failed: Option<ErrorCode>,
    /// A punch whose connector opened its rendezvous beside its `Connect`
    /// and commits on its own check (`Features::PUNCH_EARLY`); and whether
    /// the listener's shims can follow it (they offered the feature too).
    pub early: bool,
    pub listener_follows: bool,
    pub created: Instant,
    pub deadline: Instant,
    pub connector: Option<Half<S>>,
    pub listener: Option<Half<S>>,
}

impl<S> Pending<S> {
    pub fn new(
        kind: Kind,
        proxy: SocketAddrV4,
        listener_mgmt: SocketAddrV4,
        peer: SocketAddrV4,
        now: Instant,
        deadline: Instant,
    ) -> Self {
        Pending {
            kind,
            proxy,
            listener_mgmt,
            peer,
            connector_id: None,
            connector_cmd: None,
            failed: None,
            early: false,
            listener_follows: false,
            created: now,
            deadline,
            connector: None,
            listener: None,
        }
    }

    fn complete(&self) -> bool {
        self.kind.relays() && self.connector.is_some() && self.listener.is_some()
    }
}

/// What became of an arriving half.
#[derive(Debug)]
pub enum Arrived<S> {
    /// Both halves are here; the entry left the table.
    Paired(Token, Pending<S>),
    /// Stored; waiting for the other half.
    Waiting,
    /// Not accepted; the half is handed back with the reason.
    Rejected(Half<S>, ErrorCode),
}

#[derive(Debug)]
pub struct Pairings<S> {
    entries: HashMap<Token, Pending<S>>,
    deadlines: BTreeSet<(Instant, Token)>,
}

impl<S> Default for Pairings<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Pairings<S> {
    pub fn new() -> Self {
        Pairings {
            entries: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Pending pairings that will become relays: they count against
    /// `--max-relays` with the running relays, so the limit cannot be
    /// overrun by many pairings completing at once.
    pub fn relaying(&self) -> usize {
        self.entries
            .values()
            .filter(|p| p.kind.relays() && p.failed.is_none())
            .count()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Token, &Pending<S>)> {
        self.entries.iter()
    }

    pub fn get(&self, token: Token) -> Option<&Pending<S>> {
        self.entries.get(&token)
    }

    /// For what the deadline index does not depend on (where the command
    /// went, whether it failed).
    pub fn get_mut(&mut self, token: Token) -> Option<&mut Pending<S>> {
        self.entries.get_mut(&token)
    }

    /// Adds an entry. Tokens are 64 random bits, so a collision means a
    /// broken random source; the existing entry is kept and false returned.
    pub fn insert(&mut self, token: Token, pending: Pending<S>) -> bool {
        if self.entries.contains_key(&token) {
            return false;
        }
        self.deadlines.insert((pending.deadline, token));
        self.entries.insert(token, pending);
        true
    }

    /// Removes an entry (the listener refused or never answered).
    pub fn cancel(&mut self, token: Token) -> Option<Pending<S>> {
        let p = self.entries.remove(&token)?;
        self.deadlines.remove(&(p.deadline, token));
        Some(p)
    }

    /// A half said hello with `token` in `role`.
    pub fn arrive(&mut self, token: Token, role: Role, half: Half<S>, now: Instant) -> Arrived<S> {
        let Some(p) = self.entries.get_mut(&token) else {
            return Arrived::Rejected(half, ErrorCode::UnknownToken);
        };
        let family = (p.kind == Kind::Punch) == half.punch.is_some();
        if p.deadline <= now || !p.kind.expects(role) || !family {
            return Arrived::Rejected(half, ErrorCode::UnknownToken);
        }
        if let Some(code) = p.failed {
            // Kept for the connector alone; a listener arriving late (the
            // holder the broker gave up on) is told the same.
            if role == Role::Connector {
                self.cancel(token);
            }
            return Arrived::Rejected(half, code);
        }
        let slot = match role {
            Role::Connector => &mut p.connector,
            Role::Listener => &mut p.listener,
        };
        if slot.is_some() {
            return Arrived::Rejected(half, ErrorCode::UnknownToken);
        }
        *slot = Some(half);
        if !p.complete() {
            return Arrived::Waiting;
        }
        match self.cancel(token) {
            Some(p) => Arrived::Paired(token, p),
            None => Arrived::Waiting,
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// Removes and returns every entry whose deadline has passed.
    pub fn expire(&mut self, now: Instant) -> Vec<(Token, Pending<S>)> {
        let mut out = Vec::new();
        while let Some(&(deadline, token)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(p) = self.entries.remove(&token) {
                out.push((token, p));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn half(n: u8) -> Half<u8> {
        Half::plain(n, SocketAddrV4::new([198, 51, 100, n].into(), 4000))
    }

    fn entry(kind: Kind, now: Instant) -> Pending<u8> {
        let proxy = a("203.0.113.1:20000");
        Pending::new(
            kind,
            proxy,
            a("198.51.100.1:5000"),
            a("198.51.100.2:6000"),
            now,
            now + Duration::from_secs(10),
        )
    }

    #[test]
    fn relay_pairs_connector_and_listener_in_either_order() {
        let t = Instant::now();
        let mut p = Pairings::new();
        assert!(p.insert(Token(1), entry(Kind::Relay, t)));
        assert!(p.insert(Token(2), entry(Kind::Relay, t)));
        assert!(
            !p.insert(Token(1), entry(Kind::Relay, t)),
            "collision kept the first"
        );
        assert_eq!(p.relaying(), 2);
        assert!(matches!(
            p.arrive(Token(1), Role::Listener, half(1), t),
            Arrived::Waiting
        ));
        match p.arrive(Token(1), Role::Connector, half(2), t) {
            Arrived::Paired(Token(1), e) => {
                assert_eq!(e.listener.unwrap().stream, 1);
                assert_eq!(e.connector.unwrap().stream, 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            p.arrive(Token(2), Role::Connector, half(3), t),
            Arrived::Waiting
        ));
        assert!(matches!(
            p.arrive(Token(2), Role::Listener, half(4), t),
            Arrived::Paired(..)
        ));
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn unknown_duplicate_unexpected_and_late_arrivals_are_rejected() {
        let t = Instant::now();
        let mut p = Pairings::new();
        let reject = |a: Arrived<u8>| matches!(a, Arrived::Rejected(_, ErrorCode::UnknownToken));
        assert!(reject(p.arrive(Token(9), Role::Listener, half(1), t)));
        p.insert(Token(1), entry(Kind::Relay, t));
        assert!(matches!(
            p.arrive(Token(1), Role::Listener, half(1), t),
            Arrived::Waiting
        ));
        assert!(
            reject(p.arrive(Token(1), Role::Listener, half(2), t)),
            "role twice"
        );
        p.insert(Token(2), entry(Kind::Reversal, t));
        assert!(
            reject(p.arrive(Token(2), Role::Listener, half(3), t)),
            "reversal meets nobody here"
        );
        p.insert(Token(3), entry(Kind::Regular, t));
        assert!(
            reject(p.arrive(Token(3), Role::Connector, half(4), t)),
            "regular has its connector"
        );
        p.insert(Token(4), entry(Kind::Relay, t));
        let late = t + Duration::from_secs(10);
        assert!(reject(p.arrive(Token(4), Role::Listener, half(5), late)));
        assert_eq!(p.relaying(), 3);
    }

    #[test]
    fn a_failed_relay_tells_its_connector_why_once() {
        let t = Instant::now();
        let mut p = Pairings::new();
        p.insert(Token(1), entry(Kind::Relay, t));
        p.get_mut(Token(1)).unwrap().failed = Some(ErrorCode::Timeout);
        assert_eq!(p.relaying(), 0, "it will never relay");
        assert!(matches!(
            p.arrive(Token(1), Role::Listener, half(3), t),
            Arrived::Rejected(_, ErrorCode::Timeout)
        ));
        assert!(matches!(
            p.arrive(Token(1), Role::Connector, half(1), t),
            Arrived::Rejected(_, ErrorCode::Timeout)
        ));
        assert_eq!(p.len(), 0, "told once, then gone");
        assert!(matches!(
            p.arrive(Token(1), Role::Connector, half(2), t),
            Arrived::Rejected(_, ErrorCode::UnknownToken)
        ));
    }

    #[test]
    fn regular_pairs_with_the_listener_alone() {
        let t = Instant::now();
        let mut p = Pairings::new();
        let mut e = entry(Kind::Regular, t);
        e.connector = Some(half(7));
        p.insert(Token(5), e);
        match p.arrive(Token(5), Role::Listener, half(8), t) {
            Arrived::Paired(_, e) => assert_eq!(e.connector.unwrap().stream, 7),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn expiry_and_cancel_hand_entries_back() {
        let t = Instant::now();
        let mut p = Pairings::new();
        p.insert(Token(1), entry(Kind::Relay, t));
        let mut later = entry(Kind::Regular, t + Duration::from_secs(5));
        later.connector = Some(half(3));
        p.insert(Token(2), later);
        p.insert(Token(3), entry(Kind::Reversal, t));
        assert_eq!(p.next_deadline(), Some(t + Duration::from_secs(10)));
        assert!(p.cancel(Token(3)).is_some());
        assert!(p.cancel(Token(3)).is_none());
        let gone = p.expire(t + Duration::from_secs(10));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, Token(1));
        let gone = p.expire(t + Duration::from_secs(15));
        assert_eq!(gone[0].1.connector.as_ref().unwrap().stream, 3);
        assert_eq!((p.len(), p.next_deadline()), (0, None));
    }
}
