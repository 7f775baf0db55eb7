//! What the shim knows about each UDP socket it manages, as plain data: the
//! receiver list (paper 4.2.2: for each address the application sends to, where
//! the datagrams really go), the reverse names of real sources, the peers the
//! broker relays for this socket, holes being made (their records are in
//! [`hole`](super::hole), their rules in [`hole_rules`](super::hole_rules)), a
//! channel's reopening, and the buffer of data datagrams read but not yet
//! delivered. No system calls: every rule here is
//! unit-tested; `udp::recv` and `udp::send` do the I/O.
//!
//! # Invariants
//!
//! 1. An fd maps to at most one socket; a socket has at least one fd (dups share
//!    it, so a datagram stashed through one fd is read through any).
//! 2. `reverse[real] == app` only while `receivers[app]` is `Route::Direct(real)`
//!    or a made hole: the reverse name never outlives its record.
//! 3. Every map is bounded ([`MAX_RECORDS`], [`MAX_STASH`]): a flood of new peers
//!    evicts the oldest record rather than growing without end.
//! 4. A socket has a [`Channel`] only while it is connected to it: datagrams
//!    from the channel's address are its peer's, whatever the other records say.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use libc::c_int;
use proto::gcb::Token;

pub use super::hole::{ConnectMisses, Heard, Hole, Punch, HOLE_ACK_TTL};

/// Records per map of one socket.
pub const MAX_RECORDS: usize = 4096;
/// Datagrams buffered per socket; beyond it the oldest is dropped, as a full
/// kernel receive queue would drop the newest.
pub const MAX_STASH: usize = 256;
/// How long a receiver-list record is trusted before the broker is asked again
/// (the periodic flush of paper 4.2.2).
pub const RECORD_TTL: Duration = Duration::from_secs(120);
/// How long a relayed peer counts as one after its last datagram: a little less
/// than the broker's default rule idle time, whose expiry makes it refuse.
pub const RELAY_PEER_TTL: Duration = Duration::from_secs(110);

/// Where datagrams the application addresses to a GCB address really go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To this real address (direct, same realm, or a hole the peer made).
    Direct(SocketAddrV4),
    /// Unchanged to the address the application named: a proxy socket that
    /// relays (decision `Relay`, or `Reversal` before its hole is open).
    AsNamed,
    /// Not a GCB address: straight out, unchanged.
    NotGcb,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    route: Route,
    since: Instant,
}

/// A data datagram with the sender the application is told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub from: SocketAddrV4,
    pub data: Vec<u8>,
}

/// The broker's channel of a socket connected to a relayed peer (proto
/// `UdpChannel`): the real socket is connected to `addr`, and what comes from
/// there is `peer`'s, without a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel {
    pub peer: SocketAddrV4,
    pub addr: SocketAddrV4,
    /// The token of the Dummies that keep it (and its NAT mapping) open.
    pub token: Token,
    /// Set while the broker has forgotten it (`channel::reopen_all`).
    pub reopen: Option<Reopen>,
}

/// The first retry of a refused reopen; each further one waits twice as
/// long, up to the heartbeat interval.
pub const FIRST_RETRY: Duration = Duration::from_millis(300);

/// A channel being asked for again: when next, and how many asks so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reopen {
    pub next_try: Instant,
    pub tries: u32,
}

impl Reopen {
    /// Due at once.
    pub fn now(now: Instant) -> Reopen {
        Reopen { next_try: now, tries: 0 }
    }

    /// An ask goes out at `now`: the next one (if this is refused or lost)
    /// after the backoff.
    pub fn asked(self, now: Instant, heartbeat: Duration) -> Reopen {
        let wait = FIRST_RETRY.saturating_mul(1u32 << self.tries.min(16)).min(heartbeat.max(FIRST_RETRY));
        Reopen { next_try: now + wait, tries: self.tries.saturating_add(1) }
    }
}

/// One managed UDP socket.
#[derive(Debug, Default)]
pub struct UdpSocket {
    /// Its registration, if it is registered (bound to a non-loopback address).
    pub listener: Option<super::super::registration::ListenerId>,
    /// `getpeername`: the GCB address a connected socket was connected to.
    pub connected_to: Option<SocketAddrV4>,
    /// Its channel, when it is connected to a relayed peer.
    pub channel: Option<Channel>,
    receivers: HashMap<SocketAddrV4, Record>,
    reverse: HashMap<SocketAddrV4, SocketAddrV4>,
    relay_peers: HashMap<SocketAddrV4, Instant>,
    /// Reversal connects waiting for the listener's Dummy: token → the GCB
    /// address it opens a hole to, whether to open it (a connected socket
    /// does not: the kernel would not let the direct replies in, so its Dummy
    /// is only kept from the application), and since when. Kept for
    /// [`HOLE_ACK_TTL`] after the first Dummy: the listener repeats its Dummy
    /// until it sees the ack, which its program may read only much later.
    awaiting: HashMap<Token, (SocketAddrV4, bool, Instant)>,
    pub holes: Vec<Hole>,
    stash: VecDeque<Datagram>,
}

/// Drops the oldest entry of `map` (by `age`) when it is full.
fn make_room<K: Copy + Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>, age: impl Fn(&V) -> Instant) -> Option<K> {
    if map.len() < MAX_RECORDS {
        return None;
    }
    let oldest = map.iter().min_by_key(|(_, v)| age(v)).map(|(k, _)| *k)?;
    map.remove(&oldest);
    Some(oldest)
}

impl UdpSocket {
    /// The route for `app`, if a live record exists.
    pub fn route(&self, app: SocketAddrV4, now: Instant) -> Option<Route> {
        let r = self.receivers.get(&app)?;
        (now.saturating_duration_since(r.since) < RECORD_TTL).then_some(r.route)
    }

    /// Records the broker's answer for `app`, replacing an older one.
    pub fn set_route(&mut self, app: SocketAddrV4, route: Route, now: Instant) {
        self.remove_route(app);
        if let Some(evicted) = make_room(&mut self.receivers, |r| r.since) {
            self.reverse.retain(|_, a| *a != evicted);
        }
        if let Route::Direct(real) = route {
            if real != app {
                self.reverse.insert(real, app);
            }
        }
        self.receivers.insert(app, Record { route, since: now });
    }

    /// Forgets `app`'s record (a network error, or a new answer).
    pub fn remove_route(&mut self, app: SocketAddrV4) {
        if let Some(Record { route: Route::Direct(real), .. }) = self.receivers.remove(&app) {
            if self.reverse.get(&real) == Some(&app) {
                self.reverse.remove(&real);
            }
        }
    }

    /// The name to report for a datagram from the real address `src`.
    pub fn name_of(&self, src: SocketAddrV4) -> SocketAddrV4 {
        match self.channel {
            Some(c) if c.addr == src => c.peer,
            _ => self.reverse.get(&src).copied().unwrap_or(src),
        }
    }

    /// Where a datagram to `app` goes when the socket has a channel for it.
    pub fn channel_to(&self, app: SocketAddrV4) -> Option<SocketAddrV4> {
        self.channel.filter(|c| c.peer == app).map(|c| c.addr)
    }

    /// A relayed datagram came from `peer` through this socket's proxy.
    pub fn note_relay_peer(&mut self, peer: SocketAddrV4, now: Instant) {
        if !self.relay_peers.contains_key(&peer) {
            make_room(&mut self.relay_peers, |t| *t);
        }
        self.relay_peers.insert(peer, now);
    }

    /// Whether replies to `peer` go back through the proxy with a header.
    pub fn is_relay_peer(&self, peer: SocketAddrV4, now: Instant) -> bool {
        self.relay_peers.get(&peer).is_some_and(|t| now.saturating_duration_since(*t) < RELAY_PEER_TTL)
    }

    /// A reversal connect to `app` waits for the listener's `Dummy{token}`;
    /// `open`: the hole is to be used (see `awaiting`).
    pub fn await_dummy(&mut self, token: Token, app: SocketAddrV4, open: bool, now: Instant) {
        if self.awaiting.len() >= MAX_RECORDS {
            self.awaiting.retain(|_, (_, _, since)| now.saturating_duration_since(*since) < HOLE_ACK_TTL);
        }
        if self.awaiting.len() >= MAX_RECORDS {
            self.awaiting.clear();
        }
        self.awaiting.insert(token, (app, open, now));
    }

    /// A `Dummy{token}` arrived from `src`: if its hole is to be used, the GCB
    /// address it was awaited for is now reached at `src`. Returns that address
    /// and whether the hole is used (the caller then acks, again for a
    /// repeated Dummy); `None` if no connect awaits this token (the Dummy is
    /// not ours).
    pub fn dummy_from(&mut self, token: Token, src: SocketAddrV4, now: Instant) -> Option<(SocketAddrV4, bool)> {
        let (app, open, since) = *self.awaiting.get(&token)?;
        if now.saturating_duration_since(since) >= HOLE_ACK_TTL {
            self.awaiting.remove(&token);
            return None;
        }
        if open {
            self.set_route(app, Route::Direct(src), now);
        }
        Some((app, open))
    }

    /// Buffers a data datagram for the application, in arrival order.
    pub fn stash(&mut self, d: Datagram) {
        if self.stash.len() >= MAX_STASH {
            self.stash.pop_front();
        }
        self.stash.push_back(d);
    }

    pub fn take_stashed(&mut self) -> Option<Datagram> {
        self.stash.pop_front()
    }

    /// The datagram the next read would take, left in place (`MSG_PEEK`).
    pub fn peek_stashed(&self) -> Option<Datagram> {
        self.stash.front().cloned()
    }

    pub fn has_stashed(&self) -> bool {
        !self.stash.is_empty()
    }
    /// The last of this socket's listener punches to a connector at `ip`
    /// that is over: whether the listener yielded, and whether it was
    /// answered ([`UdpTable::listener_yields`]).
    fn last_punch_to(&self, ip: Ipv4Addr) -> Option<(bool, bool)> {
        let over = |h: &&Hole| h.punch.is_some_and(|p| p.confirm) && *h.target.ip() == ip && h.tries_left == 0;
        let h = self.holes.iter().rev().find(over)?;
        Some((h.punch.is_some_and(|p| p.yielded), h.next_try == h.expires))
    }
}

/// Every managed UDP socket of the process, by fd.
#[derive(Debug, Default)]
pub struct UdpTable {
    socks: HashMap<u64, UdpSocket>,
    fds: HashMap<c_int, u64>,
    next: u64,
    /// The last punch that was over of closed sockets, by connector IP
    /// (`UdpSocket::last_punch_to`): iperf3's server binds a new socket for
    /// each test.
    punched: HashMap<Ipv4Addr, (bool, bool)>,
    /// Destinations a connected socket's punch did not reach (`connected`).
    pub connect_misses: ConnectMisses,
}

impl UdpTable {
    /// Whether the listener's next punch from `fd` to a connector at `ip`
    /// lets the connector's first Dummy go ahead of its own: the order of
    /// the last punch to that IP that is over (the socket's own, else a
    /// closed one's), flipped if it went unanswered; the listener first by
    /// default. Which side's first Dummy must arrive first depends on the
    /// gateways (docs/nat-punching-notes.md: a gateway that answers
    /// strangers must not be the first one reached), which neither side can
    /// see; the outcome can.
    pub fn listener_yields(&self, fd: c_int, ip: Ipv4Addr) -> bool {
        let last = self.get(fd).and_then(|s| s.last_punch_to(ip)).or_else(|| self.punched.get(&ip).copied());
        last.is_some_and(|(yielded, answered)| yielded == answered)
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    pub fn get(&self, fd: c_int) -> Option<&UdpSocket> {
        self.socks.get(self.fds.get(&fd)?)
    }

    pub fn get_mut(&mut self, fd: c_int) -> Option<&mut UdpSocket> {
        self.socks.get_mut(self.fds.get(&fd)?)
    }

    /// The socket of `fd`, made if new.
    pub fn entry(&mut self, fd: c_int) -> &mut UdpSocket {
        let id = match self.fds.get(&fd) {
            Some(id) => *id,
            None => {
                self.next += 1;
                self.fds.insert(fd, self.next);
                self.next
            }
        };
        self.socks.entry(id).or_default()
    }

    /// `new` is a dup of `old`: the same socket. False if `old` is unknown.
    pub fn alias(&mut self, old: c_int, new: c_int) -> bool {
        let Some(&id) = self.fds.get(&old) else { return false };
        self.remove(new);
        self.fds.insert(new, id);
        true
    }

    /// Forgets `fd`; the socket goes with its last fd, and is returned then.
    pub fn remove(&mut self, fd: c_int) -> Option<UdpSocket> {
        let id = self.fds.remove(&fd)?;
        if self.fds.values().any(|&i| i == id) {
            return None;
        }
        let s = self.socks.remove(&id)?;
        for h in &s.holes {
            if let Some(last) = s.last_punch_to(*h.target.ip()) {
                if self.punched.len() >= MAX_RECORDS {
                    self.punched.clear();
                }
                self.punched.insert(*h.target.ip(), last);
            }
        }
        Some(s)
    }

    /// The fds and sockets, one fd per socket (for timers).
    pub fn sockets_mut(&mut self) -> impl Iterator<Item = (c_int, &mut UdpSocket)> {
        let mut firsts: HashMap<u64, c_int> = HashMap::new();
        for (&fd, &id) in &self.fds {
            firsts.entry(id).and_modify(|f| *f = (*f).min(fd)).or_insert(fd);
        }
        self.socks.iter_mut().filter_map(move |(id, s)| Some((*firsts.get(id)?, s)))
    }

    pub fn sockets(&self) -> impl Iterator<Item = &UdpSocket> {
        self.socks.values()
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
