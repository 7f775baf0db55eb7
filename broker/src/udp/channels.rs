//! UDP channels: one per UDP socket a client `connect`ed to a peer the broker
//! relays for it (`UdpChannel`, proto docs).
//!
//! Why they exist: every datagram the broker relays to a registration comes
//! from its one proxy address, so a client socket connected to the proxy
//! would get all of them, and one connected to the peer itself none. A
//! channel is a socket of the broker's own on another port, dedicated to one
//! (registration, peer) pair: the client connects its socket there, and its
//! kernel then sorts as it does without NAT: the peer's datagrams (sent on
//! through the channel, without a header) reach the connected socket, every
//! other peer's (from the proxy, with a header) reach the registration's
//! unconnected sockets on the same port (iperf3's UDP server, SO_REUSEPORT).
//! What the client sends to the channel leaves the proxy socket for the peer,
//! so the peer still sees only the proxy address.
//!
//! This table holds the channels as plain data (the sockets are in the event
//! loop's slab, named by token), so it is tested without binding anything.
//!
//! # Invariants
//!
//! 1. `by_peer[(c.proxy, c.peer)] == addr` exactly for every channel `c` at
//!    `addr`: one channel per registration and peer.
//! 2. `expiry` holds exactly one `(deadline, addr)` per channel; idle expiry
//!    is lazy, as for relay rules (`rules`): an entry that falls due for a
//!    channel used since is re-indexed at its real deadline.
//! 3. A registration has at most [`PER_REGISTRATION`] channels.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use proto::gcb::Token;

use super::rules::DummyOutcome;

/// Channels of one registration: each is a connected socket in the client
/// and a port here, and a program rarely holds more than a few.
pub const PER_REGISTRATION: usize = 64;

/// One channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// The registration it belongs to, and whose socket sends to the peer.
    pub proxy: SocketAddrV4,
    pub peer: SocketAddrV4,
    /// The token of the client's Dummies on this channel.
    pub token: Token,
    /// The channel socket's token in the event loop.
    pub socket: mio::Token,
    /// The client's connected socket as seen from here; `None` until its
    /// first Dummy.
    pub data_path: Option<SocketAddrV4>,
    pub opened: Instant,
    pub last_used: Instant,
    deadline: Instant,
}

/// Why a channel could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The registration has [`PER_REGISTRATION`] channels.
    Full,
}

#[derive(Debug)]
pub struct Channels {
    by_addr: HashMap<SocketAddrV4, Channel>,
    /// Ordered, so one registration's channels are one range.
    by_peer: BTreeMap<(SocketAddrV4, SocketAddrV4), SocketAddrV4>,
    expiry: BTreeSet<(Instant, SocketAddrV4)>,
    idle: Duration,
}

impl Channels {
    pub fn new(idle: Duration) -> Self {
        Channels {
            by_addr: HashMap::new(),
            by_peer: BTreeMap::new(),
            expiry: BTreeSet::new(),
            idle,
        }
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn get(&self, addr: &SocketAddrV4) -> Option<&Channel> {
        self.by_addr.get(addr)
    }

    /// The channel of `peer` on registration `proxy`, by its address.
    pub fn for_peer(&self, proxy: &SocketAddrV4, peer: &SocketAddrV4) -> Option<SocketAddrV4> {
        self.by_peer.get(&(*proxy, *peer)).copied()
    }

    /// Whether a channel may be added to `proxy`; the caller then binds its
    /// socket and calls [`insert`](Self::insert).
    pub fn room(&self, proxy: &SocketAddrV4) -> Result<(), Refusal> {
        if self.of(proxy).len() >= PER_REGISTRATION {
            Err(Refusal::Full)
        } else {
            Ok(())
        }
    }

    /// Adds a channel at `addr` (checked with [`room`](Self::room), and
    /// with no channel yet for its peer).
    pub fn insert(
        &mut self,
        addr: SocketAddrV4,
        proxy: SocketAddrV4,
        peer: SocketAddrV4,
        token: Token,
        socket: mio::Token,
        now: Instant,
    ) -> &Channel {
        debug_assert!(self.for_peer(&proxy, &peer).is_none());
        let deadline = now + self.idle;
        self.expiry.insert((deadline, addr));
        self.by_peer.insert((proxy, peer), addr);
        let c = Channel {
            proxy,
            peer,
            token,
            socket,
            data_path: None,
            opened: now,
            last_used: now,
            deadline,
        };
        self.by_addr.insert(addr, c);
        &self.by_addr[&addr]
    }

    /// Traffic on the channel keeps it.
    pub fn touch(&mut self, addr: &SocketAddrV4, now: Instant) {
        if let Some(c) = self.by_addr.get_mut(addr) {
            c.last_used = now;
        }
    }

    /// A `Dummy{token}` from `from` at the channel `addr`: with the right
    /// token, `from` becomes (or stays) its data path.
    pub fn dummy(
        &mut self,
        addr: &SocketAddrV4,
        from: SocketAddrV4,
        token: Token,
        now: Instant,
    ) -> DummyOutcome {
        let Some(c) = self.by_addr.get_mut(addr) else {
            return DummyOutcome::Refused;
        };
        if c.token != token {
            return DummyOutcome::Refused;
        }
        c.last_used = now;
        match c.data_path.replace(from) {
            None => DummyOutcome::Learned,
            Some(old) if old == from => DummyOutcome::Same,
            Some(old) => DummyOutcome::Moved(old),
        }
    }

    /// Removes the channel at `addr`.
    pub fn remove(&mut self, addr: &SocketAddrV4) -> Option<Channel> {
        let c = self.by_addr.remove(addr)?;
        self.by_peer.remove(&(c.proxy, c.peer));
        self.expiry.remove(&(c.deadline, *addr));
        Some(c)
    }

    /// The addresses of every channel of registration `proxy`.
    pub fn of(&self, proxy: &SocketAddrV4) -> Vec<SocketAddrV4> {
        let lo = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        let hi = SocketAddrV4::new(Ipv4Addr::BROADCAST, u16::MAX);
        self.by_peer
            .range((*proxy, lo)..=(*proxy, hi))
            .map(|(_, a)| *a)
            .collect()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.expiry.first().map(|e| e.0)
    }

    /// A new idle time (SIGHUP) applies from each channel's next use.
    pub fn set_idle(&mut self, idle: Duration) {
        self.idle = idle;
    }

    /// Removes and returns the channels idle for the idle time at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<(SocketAddrV4, Channel)> {
        let mut out = Vec::new();
        while let Some(&(deadline, addr)) = self.expiry.first() {
            if deadline > now {
                break;
            }
            self.expiry.pop_first();
            let Some(c) = self.by_addr.get_mut(&addr) else {
                continue;
            };
            let due = c.last_used + self.idle;
            if due > now {
                c.deadline = due;
                self.expiry.insert((due, addr));
            } else if let Some(c) = self.remove(&addr) {
                out.push((addr, c));
            }
        }
        out
    }

    /// Checks the invariants of the module docs.
    #[cfg(test)]
    fn check(&self) -> Result<(), String> {
        for (addr, c) in &self.by_addr {
            if self.by_peer.get(&(c.proxy, c.peer)) != Some(addr) {
                return Err(format!("{addr} is not indexed by its peer"));
            }
            if !self.expiry.contains(&(c.deadline, *addr)) {
                return Err(format!("{addr} has no expiry entry"));
            }
        }
        if self.by_peer.len() != self.by_addr.len() || self.expiry.len() != self.by_addr.len() {
            return Err("stale index entries".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    const IDLE: Duration = Duration::from_secs(60);

    #[test]
    fn one_channel_per_peer_found_both_ways_and_removed() {
        let now = Instant::now();
        let mut t = Channels::new(IDLE);
        let (proxy, peer, ch) = (
            a("203.0.113.10:21000"),
            a("203.0.113.20:5000"),
            a("203.0.113.10:21001"),
        );
        assert_eq!(t.room(&proxy), Ok(()));
        t.insert(ch, proxy, peer, Token(7), mio::Token(3), now);
        t.check().unwrap();
        assert_eq!(t.for_peer(&proxy, &peer), Some(ch));
        assert_eq!(
            t.for_peer(&a("203.0.113.10:21002"), &peer),
            None,
            "another registration's peer"
        );
        assert_eq!(t.get(&ch).unwrap().socket, mio::Token(3));
        assert_eq!(t.of(&proxy), vec![ch]);
        assert_eq!(t.remove(&ch).unwrap().peer, peer);
        assert_eq!(t.for_peer(&proxy, &peer), None);
        assert_eq!(t.len(), 0);
        t.check().unwrap();
    }

    #[test]
    fn dummies_learn_and_move_the_data_path_with_the_right_token_only() {
        let now = Instant::now();
        let mut t = Channels::new(IDLE);
        let ch = a("203.0.113.10:21001");
        t.insert(
            ch,
            a("203.0.113.10:21000"),
            a("203.0.113.20:5000"),
            Token(7),
            mio::Token(3),
            now,
        );
        assert_eq!(
            t.dummy(&ch, a("203.0.113.1:4000"), Token(8), now),
            DummyOutcome::Refused
        );
        assert_eq!(t.get(&ch).unwrap().data_path, None);
        assert_eq!(
            t.dummy(&ch, a("203.0.113.1:4000"), Token(7), now),
            DummyOutcome::Learned
        );
        assert_eq!(
            t.dummy(&ch, a("203.0.113.1:4000"), Token(7), now),
            DummyOutcome::Same
        );
        assert_eq!(
            t.dummy(&ch, a("203.0.113.1:4001"), Token(7), now),
            DummyOutcome::Moved(a("203.0.113.1:4000"))
        );
        assert_eq!(
            t.dummy(
                &a("203.0.113.10:29999"),
                a("203.0.113.1:4001"),
                Token(7),
                now
            ),
            DummyOutcome::Refused
        );
    }

    #[test]
    fn idle_channels_expire_and_used_ones_are_kept() {
        let now = Instant::now();
        let mut t = Channels::new(IDLE);
        let proxy = a("203.0.113.10:21000");
        let (busy, quiet) = (a("203.0.113.10:21001"), a("203.0.113.10:21002"));
        t.insert(
            busy,
            proxy,
            a("203.0.113.20:5000"),
            Token(1),
            mio::Token(1),
            now,
        );
        t.insert(
            quiet,
            proxy,
            a("203.0.113.20:5001"),
            Token(2),
            mio::Token(2),
            now,
        );
        t.touch(&busy, now + IDLE / 2);
        let gone = t.expire(now + IDLE);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, quiet);
        t.check().unwrap();
        assert_eq!(
            t.next_deadline(),
            Some(now + IDLE / 2 + IDLE),
            "re-indexed at its real deadline"
        );
        assert!(t.expire(now + IDLE + IDLE / 4).is_empty());
        assert_eq!(t.expire(now + 2 * IDLE).len(), 1);
        t.check().unwrap();
    }

    #[test]
    fn a_registration_holds_a_bounded_number() {
        let now = Instant::now();
        let mut t = Channels::new(IDLE);
        let proxy = a("203.0.113.10:21000");
        for i in 0..PER_REGISTRATION as u16 {
            assert_eq!(t.room(&proxy), Ok(()));
            t.insert(
                SocketAddrV4::new(*proxy.ip(), 22000 + i),
                proxy,
                SocketAddrV4::new(*proxy.ip(), 30000 + i),
                Token(1),
                mio::Token(1),
                now,
            );
        }
        assert_eq!(t.room(&proxy), Err(Refusal::Full));
        assert_eq!(t.room(&a("203.0.113.10:21005")), Ok(()), "per registration");
        t.check().unwrap();
    }
}
