//! The records of the holes a managed UDP socket makes or punches (paper
//! 4.2.2, and docs/hole-punching.md, "UDP"), as plain data held by
//! [`table`](super::table): a `MakeHole`'s Dummies until the peer's ack, one
//! side of a punch (proofs, backoff, which side opens when), and the
//! destinations whose punch missed. The rules that drive them are methods of
//! the socket's record, in [`hole_rules`](super::hole_rules). No system
//! calls; `control` does the I/O.
use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use proto::gcb::Token;

/// A hole this socket is making after `MakeHole`: Dummies to `target` until
/// its `DummyAck`; then `peer` is reached at the ack's source. Or one side of
/// a UDP hole punch (`punch`, docs/hole-punching.md, "UDP").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hole {
    pub token: Token,
    pub target: SocketAddrV4,
    pub peer: SocketAddrV4,
    pub next_try: Instant,
    pub tries_left: u8,
    /// Out of tries, the hole is still known until then: its ack may wait in
    /// the socket until the program reads (the responder sends the Dummies
    /// whatever the program does; only the program's reads take the acks),
    /// and must not reach the program as data.
    pub expires: Instant,
    pub punch: Option<Punch>,
}

/// What a punch's hole has beyond a `MakeHole`'s: the hole's `token` is this
/// side's proof (what its Dummies and answers carry, never the token itself),
/// only `target` showing the other side's proof opens it (data does not: a
/// stranger at the target's address has it too), each of its Dummies is
/// answered, and its Dummies back off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Punch {
    /// The proof the other side shows (`proto::gcb::punch::PunchProof` of
    /// its role, as a token).
    pub expect: Token,
    /// Where the direct path, once open, is reported, and the token it is
    /// reported with (the connector's: one `Dummy{token}` to the listener's
    /// proxy, which the broker counts).
    pub report: Option<(SocketAddrV4, Token)>,
    /// The wait after the next Dummy; doubled after each.
    pub gap: Duration,
    /// The listener's side: the peer's proof alone does not open the path;
    /// the peer's word that its side is open does (its `DummyAck`, or data
    /// straight from it once its proof came). A connector whose `connect`
    /// gave up waiting went to the relay, and a connected socket there could
    /// not hear datagrams sent to it direct.
    pub confirm: bool,
    /// `confirm`, and the peer's proof came from the target in a `Dummy`.
    pub proven: bool,
    /// The listener's side let the connector's first Dummy go ahead of its
    /// own ([`UdpTable::listener_yields`](super::table::UdpTable::listener_yields)).
    pub yielded: bool,
    /// The TTL of this side's next Dummy while it is the first: low, so it
    /// makes this side's own gateway's mapping toward the target and runs
    /// out before the far gateway (`GCB_PUNCH_TTL`); `None` once it is sent,
    /// or when low TTLs are off.
    pub ttl: Option<u8>,
}

/// A `Dummy` or `DummyAck` of a punch's token, as [`UdpSocket::punch_heard`](super::table::UdpSocket::punch_heard)
/// found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    /// The other side's proof from the punch's target: answered (a Dummy,
    /// with `answer`), and the path is open.
    pub from_target: bool,
    /// This side's proof, which answers.
    pub answer: Token,
    /// A `DummyAck` of the peer's opened this side, which does not confirm
    /// (the connector's): it tells the peer so, with an ack of its own.
    pub announce: bool,
    /// This one opened it: the hole, as it was made.
    pub opened: Option<Hole>,
}

/// How long a hole's ack is recognised after the hole was asked for.
pub const HOLE_ACK_TTL: Duration = Duration::from_secs(120);


/// The destinations whose last punch for a connected socket went unanswered,
/// and when (`connected`): a `connect` to one goes to the relay at once for a
/// minute, instead of making every connect to a server that cannot be
/// punched wait for the punch again. A minute, not the broker's ten for a
/// TCP pair: the listener changes its order after a miss, so the next punch
/// may well answer (`UdpTable::listener_yields`), and a miss costs a
/// blocking `connect` 0.7 s once a minute at most.
#[derive(Debug, Default)]
pub struct ConnectMisses {
    at: HashMap<SocketAddrV4, Instant>,
}

impl ConnectMisses {
    pub const REMEMBERED: Duration = Duration::from_secs(60);
    /// Bound on the records: the oldest goes first.
    const MAX: usize = 256;

    pub fn note(&mut self, dest: SocketAddrV4, now: Instant) {
        if self.at.len() >= Self::MAX && !self.at.contains_key(&dest) {
            if let Some(oldest) = self.at.iter().min_by_key(|(_, t)| **t).map(|(d, _)| *d) {
                self.at.remove(&oldest);
            }
        }
        self.at.insert(dest, now);
    }

    pub fn forget(&mut self, dest: SocketAddrV4) {
        self.at.remove(&dest);
    }

    pub fn recent(&self, dest: SocketAddrV4, now: Instant) -> bool {
        self.at.get(&dest).is_some_and(|t| now.saturating_duration_since(*t) < Self::REMEMBERED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn dest(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), port)
    }

    #[test]
    fn a_miss_is_remembered_for_a_while_forgotten_on_success_and_bounded() {
        let t0 = Instant::now();
        let mut m = ConnectMisses::default();
        assert!(!m.recent(dest(1), t0));
        m.note(dest(1), t0);
        assert!(m.recent(dest(1), t0 + ConnectMisses::REMEMBERED - Duration::from_millis(1)));
        assert!(!m.recent(dest(1), t0 + ConnectMisses::REMEMBERED), "tried again after a while");
        assert!(!m.recent(dest(2), t0), "per destination");
        m.forget(dest(1));
        assert!(!m.recent(dest(1), t0), "a punch that answered clears it");
        for p in 0..(ConnectMisses::MAX as u16 + 10) {
            m.note(dest(100 + p), t0 + Duration::from_millis(u64::from(p)));
        }
        assert_eq!(m.at.len(), ConnectMisses::MAX);
        assert!(!m.recent(dest(100), t0 + Duration::from_secs(1)), "the oldest went first");
        assert!(m.recent(dest(100 + ConnectMisses::MAX as u16 + 9), t0 + Duration::from_secs(1)));
    }
}
