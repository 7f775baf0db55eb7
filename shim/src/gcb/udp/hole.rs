//! The holes a managed UDP socket makes or punches (paper 4.2.2, and
//! docs/hole-punching.md, "UDP"), as plain data like the rest of
//! [`table`](super::table): a `MakeHole`'s Dummies until the peer's ack, one
//! side of a punch (proofs, backoff, which side opens when, and the order a
//! listener's next punch takes). No system calls; `control` does the I/O.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use proto::gcb::Token;

use super::table::{Route, UdpSocket};

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
    /// own ([`UdpSocket::listener_yields`]).
    pub yielded: bool,
}

/// A `Dummy` or `DummyAck` of a punch's token, as [`UdpSocket::punch_heard`]
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

impl UdpSocket {
    /// Starts making a hole after `MakeHole`; the caller sends the first Dummy.
    pub fn start_hole(&mut self, hole: Hole) {
        self.holes.retain(|h| h.token != hole.token);
        if self.holes.len() >= 64 {
            self.holes.remove(0);
        }
        self.holes.push(hole);
    }

    /// A `DummyAck{token}` came from `src`: the hole is made, and its peer is
    /// reached at (and reported for) `src`. `None` if no hole had this token.
    /// The hole stays known, sending nothing more, until it expires: the peer
    /// acks each Dummy that reached it, and the later acks are not data.
    /// A punch's hole is not in this list: only its target opens it
    /// ([`Self::punch_heard`]).
    pub fn hole_acked(&mut self, token: Token, src: SocketAddrV4, now: Instant) -> Option<SocketAddrV4> {
        let i = self.holes.iter().position(|h| h.token == token && h.punch.is_none())?;
        self.made(i, src, now);
        Some(self.holes[i].peer)
    }

    /// Marks hole `i` made, its peer reached at `src`: the hole if this
    /// made it, `None` if it was made before.
    fn made(&mut self, i: usize, src: SocketAddrV4, now: Instant) -> Option<Hole> {
        let hole = &mut self.holes[i];
        let first = hole.tries_left != 0 || hole.next_try != hole.expires;
        hole.tries_left = 0;
        hole.next_try = hole.expires;
        let hole = *hole;
        if first {
            self.set_route(hole.peer, Route::Direct(src), now);
        }
        first.then_some(hole)
    }

    /// A datagram came straight from `src`: if a hole being made targets it,
    /// the hole is made (the peer is reached at `src`): that hole.
    /// A punch's hole is opened by data only on the side that confirms, once
    /// the peer's proof came ([`Self::punch_heard`]).
    pub fn hole_heard(&mut self, src: SocketAddrV4, now: Instant) -> Option<Hole> {
        let opens = |h: &Hole| h.punch.map_or(true, |p| p.confirm && p.proven);
        let i = self.holes.iter().position(|h| h.target == src && opens(h) && (h.tries_left != 0 || h.next_try != h.expires))?;
        self.made(i, src, now)
    }

    /// A `Dummy` or (`ack`) `DummyAck` with `token` came from `src`: `None`
    /// if no punch of this socket has the token (not ours). Only the other
    /// side's proof from the punch's target counts, and opens the path but
    /// on a side that confirms ([`Punch::confirm`]), where only an ack does;
    /// this side's own proof (a stranger who caught a Dummy sending it back)
    /// or either from anywhere else is taken and does nothing more.
    pub fn punch_heard(&mut self, token: Token, src: SocketAddrV4, ack: bool, now: Instant) -> Option<Heard> {
        let i = self.holes.iter().position(|h| h.punch.is_some_and(|p| p.expect == token) || (h.punch.is_some() && h.token == token))?;
        let (answer, target) = (self.holes[i].token, self.holes[i].target);
        let nothing = Heard { from_target: false, answer, opened: None, announce: false };
        if target != src || token == answer {
            return Some(nothing);
        }
        let Some(p) = self.holes[i].punch.as_mut() else { return Some(nothing) };
        let confirm = p.confirm;
        if confirm && !ack {
            p.proven = true;
            return Some(Heard { from_target: true, ..nothing });
        }
        let opened = self.made(i, src, now);
        Some(Heard { from_target: true, answer, announce: ack && !confirm && opened.is_some(), opened })
    }

    /// The last of this socket's listener punches to a connector at `ip`
    /// that is over: whether the listener yielded, and whether it was
    /// answered ([`UdpTable::listener_yields`]).
    pub(super) fn last_punch_to(&self, ip: Ipv4Addr) -> Option<(bool, bool)> {
        let over = |h: &&Hole| h.punch.is_some_and(|p| p.confirm) && *h.target.ip() == ip && h.tries_left == 0;
        let h = self.holes.iter().rev().find(over)?;
        Some((h.punch.is_some_and(|p| p.yielded), h.next_try == h.expires))
    }

    /// Gives up the punch whose proof is `mine` (a connected socket that
    /// went to the relay: it would not hear the direct path).
    pub fn cancel_punch(&mut self, mine: Token) {
        self.holes.retain(|h| !(h.punch.is_some() && h.token == mine));
    }

    /// Holes whose next Dummy is due: their targets and tokens. Each try is
    /// counted; a hole out of tries sends no more (the peer stays relayed)
    /// and is dropped when it expires.
    pub fn due_holes(&mut self, now: Instant, every: Duration) -> Vec<(Token, SocketAddrV4)> {
        let mut due = Vec::new();
        self.holes.retain_mut(|h| {
            if h.tries_left == 0 {
                return now < h.expires;
            }
            if now < h.next_try {
                return true;
            }
            h.tries_left -= 1;
            h.next_try = now
                + match &mut h.punch {
                    Some(p) => {
                        let gap = p.gap;
                        p.gap = gap * 2;
                        gap
                    }
                    None => every,
                };
            due.push((h.token, h.target));
            true
        });
        due
    }

    pub fn next_hole_deadline(&self) -> Option<Instant> {
        self.holes.iter().map(|h| if h.tries_left == 0 { h.expires } else { h.next_try }).min()
    }
}
