//! The rules of a managed UDP socket's holes (paper 4.2.2, and
//! docs/hole-punching.md, "UDP"), as methods of its record
//! ([`UdpSocket`]) over the records of [`hole`](super::hole): a `MakeHole`'s
//! Dummies until the peer's ack, one side of a punch (proofs, backoff, which
//! side opens when). Pure: no system calls, unit-tested with the table;
//! `control` does the I/O.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use proto::gcb::Token;

use super::table::{Heard, Hole, Route, UdpSocket};

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
    /// on a side that confirms ([`Punch::confirm`](super::hole::Punch::confirm)), where only an ack does;
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


    /// Gives up the punch whose proof is `mine` (a connected socket that
    /// went to the relay: it would not hear the direct path).
    pub fn cancel_punch(&mut self, mine: Token) {
        self.holes.retain(|h| !(h.punch.is_some() && h.token == mine));
    }

    /// Holes whose next Dummy is due: their tokens, targets, and the TTL
    /// the Dummy goes with when it is a punch's first ([`Punch::ttl`](super::hole::Punch::ttl)).
    /// Each try is counted; a hole out of tries sends no more (the peer
    /// stays relayed) and is dropped when it expires.
    pub fn due_holes(&mut self, now: Instant, every: Duration) -> Vec<(Token, SocketAddrV4, Option<u8>)> {
        let mut due = Vec::new();
        self.holes.retain_mut(|h| {
            if h.tries_left == 0 {
                return now < h.expires;
            }
            if now < h.next_try {
                return true;
            }
            h.tries_left -= 1;
            let ttl = h.punch.as_mut().and_then(|p| p.ttl.take());
            h.next_try = now
                + match &mut h.punch {
                    Some(p) => {
                        let gap = p.gap;
                        p.gap = gap * 2;
                        gap
                    }
                    None => every,
                };
            due.push((h.token, h.target, ttl));
            true
        });
        due
    }

    pub fn next_hole_deadline(&self) -> Option<Instant> {
        self.holes.iter().map(|h| if h.tries_left == 0 { h.expires } else { h.next_try }).min()
    }
}
