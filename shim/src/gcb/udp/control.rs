//! The control side of a managed UDP socket: the Dummies that open and keep
//! NAT holes (paper 4.2.2), and the sorting of every datagram that arrives on
//! the application's socket into the application's data and the shim's
//! control traffic.
//!
//! * Data path: after `RegisterOk` and with every heartbeat, a `Dummy{udp_token}`
//!   goes from the application's socket to its own proxy address. The broker
//!   relays to the Dummy's source from then on, so a NAT mapping the gateway
//!   dropped (`conntrack -D`) is made again by the next heartbeat; it does not
//!   answer (an older broker's `DummyAck` is still taken as control).
//! * `MakeHole` (a public GCB peer is about to send): `Dummy{token}` from the
//!   application's socket to the peer, retried (bounded) until the peer is
//!   heard from directly: its next datagram comes through the hole, and is
//!   the application's. (An older peer's `DummyAck` says the same.)
//! * The connector's side of the same hole: a `Dummy{token}` for a reversal it
//!   awaits opens a direct path, and is not answered.
//! * A UDP hole punch (docs/hole-punching.md, "UDP"): both sides send a
//!   `Dummy` with their role's proof of the token ([`proof`]) to the other's
//!   mapping with backoff, the listener at once on `PunchHole`, the connector
//!   after [`PUNCH_HEAD_START`] (`send`); each answers the other's Dummy with
//!   a `DummyAck` of its own proof. Each side's first Dummy has a low TTL
//!   ([`ttl::low_ttl`](super::ttl::low_ttl)): it makes that side's own
//!   gateway's mapping and dies on the way, so where the gateways are hops
//!   apart neither side's Dummy reaches the far gateway before the far
//!   side's mapping is there; the second ones go after both first ones
//!   ([`LISTENER_REACH`]). The listener's proof from its mapping
//!   opens the connector's side; the listener's opens at the connector's ack
//!   or its data after its proof (`table::Punch::confirm`). The connector
//!   then tells the broker with one `Dummy{token}` to the proxy. These are answered because a punch needs both sides to hear
//!   each other, and they are few (bounded tries, one answer each).
//!
//! Why so few answers: every control datagram that reaches the application's
//! socket is one its program's `select` or `poll` may wake for, and a
//! blocking read after such a wake-up would then wait for the next real
//! datagram (as after a datagram the kernel drops for a bad checksum, see
//! select(2)). The responder sends the Dummies whatever the program does; only
//! what must come back to the program's socket does.
//! * A socket connected through a channel (`channel`): a `Dummy` to the
//!   channel at connect and with every heartbeat; what comes from the
//!   channel is its peer's, but for the `DummyAck`.
//!
//! Only datagrams whose token the socket expects are taken as control: anything
//! else, however it looks, is the application's.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use libc::c_int;
use proto::gcb::punch::PunchProof;
use proto::gcb::{self, Message, Role, Token, UdpRelayHeader};
use proto::Proto;

use super::super::registry::{Listener, ListenerId, Registry};
use crate::client::sys;
use super::table::{Heard, Hole, Punch};
use crate::client::seal;

/// Dummies sent for one `MakeHole` before the peer is left relayed.
const HOLE_TRIES: u8 = 5;
/// Between two Dummies of one hole.
const HOLE_RETRY: Duration = Duration::from_millis(300);
/// Dummies sent for one side of a punch, and the first wait between them
/// (doubled each time: 0.1, 0.2, 0.4, 0.8 s, as bounded as `MakeHole`'s).
pub const PUNCH_TRIES: u8 = 5;
pub const PUNCH_GAP: Duration = Duration::from_millis(100);
/// How long the connector lets the listener's first Dummy go ahead of its
/// own. The listener's leaves its gateway first, and is dropped (or
/// refused) at the connector's; had the connector's arrived first at a
/// gateway that answers strangers, it would confirm a conntrack entry there
/// that takes the listener's mapping from it for 30 s
/// (docs/nat-punching-notes.md). The relay carries the data meanwhile.
pub const PUNCH_HEAD_START: Duration = Duration::from_millis(200);
/// How long a listener that yields (`UdpSocket::listener_yields`: the last
/// punch to that connector's IP, listener first, went unanswered) holds its
/// first Dummy back, so that the connector's, at its head start, is the
/// first to reach a gateway.
pub const LISTENER_YIELD: Duration = Duration::from_millis(350);
/// When a listener that goes first sends its second Dummy, the first of its
/// own that can reach the connector: its first had a low TTL, and so had
/// the connector's at the head start, which must have made the connector's
/// mapping before this one arrives. The margin lets the listener hear of
/// the punch up to 0.2 s before the connector does (the connector's second
/// Dummy, 0.1 s after its first, lets it hear up to 0.3 s after).
pub const LISTENER_REACH: Duration = Duration::from_millis(400);

/// The proof a side of `role` puts in its punch's Dummies and acks instead of
/// the token: a stranger who catches one cannot make the other side's
/// (docs/hole-punching.md, step 4 for TCP, the same proof).
pub fn proof(token: Token, role: Role) -> Token {
    Token(u64::from_be_bytes(PunchProof::of(token, role).0))
}


fn send_control(fd: c_int, msg: &Message, request_id: u64, to: SocketAddrV4) {
    send_control_ttl(fd, msg, request_id, to, None);
}

/// [`send_control`] with TTL `ttl` for this one datagram ([`ttl::send`](super::ttl::send)).
fn send_control_ttl(fd: c_int, msg: &Message, request_id: u64, to: SocketAddrV4, ttl: Option<u8>) {
    let Ok(bytes) = seal::gcb_encode(msg, request_id) else { return };
    match (super::ttl::send(fd, &bytes, to, ttl), ttl) {
        (Err(e), _) => log!(Debug, "{:?} to {to} not sent: {}", msg.kind(), std::io::Error::from_raw_os_error(e)),
        (Ok(_), Some(t)) => log!(Debug, "udp punch to {to}: its first Dummy sent with TTL {t}"),
        (Ok(_), None) => {}
    }
}

/// A `Dummy{token}` from `fd` to `to`: opens or keeps a path (no reply awaited).
pub fn send_dummy(fd: c_int, token: Token, to: SocketAddrV4) {
    send_control(fd, &Message::Dummy { token }, sys::random_u64(), to);
}

/// The fd of listener `l` that keeps its data path and makes its holes: an
/// unconnected socket's, since a connected one's kernel would not let the
/// proxy's (or a peer's) datagrams in. Several sockets share a registration
/// when they are bound to one address (`udp::bind`).
fn data_fd(reg: &Registry, l: &Listener) -> Option<c_int> {
    let unconnected = |fd: &c_int| reg.udp.get(*fd).is_some_and(|s| s.connected_to.is_none());
    l.fds.iter().copied().find(unconnected).or(l.fds.first().copied())
}

/// Sends the Dummies of registered UDP socket `id` (nothing for TCP, or
/// before the broker has answered): its data path's, and each channel's.
pub fn open_data_path(reg: &Registry, id: ListenerId) {
    let Some(l) = reg.listener(id).filter(|l| l.proto == Proto::Udp) else { return };
    if let (Some(proxy), Some(token), Some(fd)) = (l.proxy, l.udp_token, data_fd(reg, l)) {
        send_dummy(fd, token, proxy);
    }
    for &fd in &l.fds {
        // A channel being asked for again is gone at the broker.
        if let Some(c) = reg.udp.get(fd).and_then(|s| s.channel).filter(|c| c.reopen.is_none()) {
            send_dummy(fd, c.token, c.addr);
        }
    }
}

/// The reply to `MakeHole` (or, with `punch`, `PunchHole`) for listener
/// `id`; the first Dummy goes out at once.
#[allow(clippy::too_many_arguments)]
pub fn make_hole(
    reg: &mut Registry,
    id: ListenerId,
    token: Token,
    target: SocketAddrV4,
    peer: SocketAddrV4,
    proxy: SocketAddrV4,
    punch: bool,
    now: Instant,
) -> Message {
    let Some(l) = reg.listener(id) else { return Message::error(gcb::ErrorCode::NotRegistered, "no such socket here") };
    if l.proto != Proto::Udp || l.proxy != Some(proxy) {
        return Message::error(gcb::ErrorCode::NotRegistered, "no such UDP socket here");
    }
    let Some(fd) = data_fd(reg, l) else { return Message::error(gcb::ErrorCode::NotRegistered, "socket closed") };
    log!(Debug, "{} from udp {proxy} to {target} for {peer}", if punch { "punching a hole" } else { "making a hole" });
    let expires = now + super::table::HOLE_ACK_TTL;
    let yields = punch && reg.udp.listener_yields(fd, *target.ip());
    let mut hole = match punch {
        true if yields => {
            log!(Debug, "udp punch to {target}: the last one to {} went unanswered, so the connector's Dummy goes first", target.ip());
            let punch = Punch { expect: proof(token, Role::Connector), report: None, gap: PUNCH_GAP, confirm: true, proven: false, yielded: true, ttl: super::ttl::low_ttl() };
            Hole { token: proof(token, Role::Listener), target, peer, next_try: now + LISTENER_YIELD, tries_left: PUNCH_TRIES, expires, punch: Some(punch) }
        }
        true => {
            // The first goes now, below.
            let punch = Punch { expect: proof(token, Role::Connector), report: None, gap: PUNCH_GAP * 2, confirm: true, proven: false, yielded: false, ttl: super::ttl::low_ttl() };
            Hole { token: proof(token, Role::Listener), target, peer, next_try: now + LISTENER_REACH, tries_left: PUNCH_TRIES - 1, expires, punch: Some(punch) }
        }
        false => Hole { token, target, peer, next_try: now + HOLE_RETRY, tries_left: HOLE_TRIES - 1, expires, punch: None },
    };
    // A punch's first Dummy, whenever it goes, carries the punch's TTL.
    let first_ttl = if yields { None } else { hole.punch.as_mut().and_then(|p| p.ttl.take()) };
    reg.udp.entry(fd).start_hole(hole);
    if !yields {
        send_control_ttl(fd, &Message::Dummy { token: hole.token }, sys::random_u64(), target, first_ttl);
    }
    Message::Ack
}

/// Retries the Dummies of holes not yet acknowledged.
pub fn on_timers(reg: &mut Registry, now: Instant) {
    for (fd, s) in reg.udp.sockets_mut() {
        for (token, target, ttl) in s.due_holes(now, HOLE_RETRY) {
            send_control_ttl(fd, &Message::Dummy { token }, sys::random_u64(), target, ttl);
            if s.holes.iter().any(|h| h.token == token && h.punch.is_some() && h.tries_left == 0) {
                log!(Info, "udp punch to {target}: its last Dummy sent, none answered so far");
            }
        }
    }
}

pub fn next_deadline(reg: &Registry) -> Option<Instant> {
    reg.udp.sockets().filter_map(|s| s.next_hole_deadline()).min()
}

/// What a datagram that arrived on a managed UDP socket is.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// The application's: `bytes[offset..]`, reported as sent by `from`.
    Data { from: SocketAddrV4, offset: usize },
    /// The shim's (a Dummy, an ack, or a broken relay datagram): not delivered.
    Consumed,
}

/// Sorts the datagram `bytes` that arrived on `fd` from `src`, acting on
/// control traffic (answering a Dummy, recording an opened hole).
pub fn classify(reg: &mut Registry, fd: c_int, src: SocketAddrV4, bytes: &[u8], now: Instant) -> Incoming {
    let listener = reg.udp.get(fd).and_then(|s| s.listener).and_then(|id| reg.listener(id));
    let (proxy, data_token) = listener.map_or((None, None), |l| (l.proxy, l.udp_token));
    let Some(sock) = reg.udp.get_mut(fd) else { return Incoming::Data { from: src, offset: 0 } };
    if let Some(c) = sock.channel.as_mut().filter(|c| c.addr != src) {
        follow_moved_channel(fd, c, src);
    }
    if let Some(c) = sock.channel.as_mut().filter(|c| c.addr == src) {
        return match seal::gcb_decode(bytes) {
            Ok((_, Message::DummyAck { token })) if token == c.token => Incoming::Consumed,
            // Being asked for again, yet heard from: another process sharing
            // the socket got it back (`follow_moved_channel`), and this ack of
            // its Dummy tells the token, so this process stops asking. (Token 0
            // is a socket connected to the peer itself until it has one.)
            Ok((_, Message::DummyAck { token })) if c.reopen.is_some() && c.token != Token(0) => {
                c.token = token;
                c.reopen = None;
                Incoming::Consumed
            }
            _ => Incoming::Data { from: c.peer, offset: 0 },
        };
    }
    if proxy == Some(src) {
        if let Ok((_, Message::DummyAck { token })) = seal::gcb_decode(bytes) {
            if Some(token) == data_token {
                return Incoming::Consumed;
            }
        }
        return match UdpRelayHeader::decode(bytes) {
            Ok((h, _)) => {
                sock.note_relay_peer(h.peer, now);
                Incoming::Data { from: h.peer, offset: gcb::RELAY_HEADER_LEN }
            }
            Err(e) => {
                log!(Debug, "a datagram from our own proxy {src} without a relay header dropped: {e:?}");
                Incoming::Consumed
            }
        };
    }
    let decoded = seal::gcb_decode(bytes);
    if let Ok((_, m @ (Message::Dummy { token } | Message::DummyAck { token }))) = &decoded {
        if let Some(heard) = sock.punch_heard(*token, src, matches!(m, Message::DummyAck { .. }), now) {
            punched(fd, src, heard, matches!(m, Message::Dummy { .. }));
            return Incoming::Consumed;
        }
    }
    match decoded {
        Ok((_, Message::Dummy { token })) => {
            if let Some((app, open)) = sock.dummy_from(token, src, now) {
                // A socket connected to the proxy keeps it as the path, and
                // the listener keeps relaying.
                if open {
                    log!(Debug, "hole to {app} open: it is reached at {src}");
                }
                return Incoming::Consumed;
            }
        }
        Ok((_, Message::DummyAck { token })) => {
            if let Some(peer) = sock.hole_acked(token, src, now) {
                log!(Debug, "hole to {peer} made: it is reached at {src}");
                return Incoming::Consumed;
            }
        }
        _ => {}
    }
    if let Some(hole) = sock.hole_heard(src, now) {
        match hole.punch {
            Some(_) => opened(fd, &hole, src),
            None => log!(Debug, "hole to {} made: it is heard from {src}", hole.peer),
        }
    }
    Incoming::Data { from: sock.name_of(src), offset: 0 }
}

/// A punch's `Dummy` (`dummy`) or `DummyAck` came from `src`: the peer's
/// Dummy is answered with this side's proof, and the path may open; a side
/// opened by the peer's ack says so with an ack (`Punch::confirm`).
fn punched(fd: c_int, src: SocketAddrV4, heard: Heard, dummy: bool) {
    if !heard.from_target {
        log!(Debug, "udp: a punch's {} from {src}, not its peer's proof from its mapping, ignored", if dummy { "Dummy" } else { "DummyAck" });
        return;
    }
    if dummy || heard.announce {
        send_control(fd, &Message::DummyAck { token: heard.answer }, sys::random_u64(), src);
    }
    if let Some(hole) = heard.opened {
        opened(fd, &hole, src);
    }
}

/// A punched path to `hole.peer` opened at `src`: logged, and reported to
/// the broker by the connector.
fn opened(fd: c_int, hole: &Hole, src: SocketAddrV4) {
    log!(Info, "udp to {}: via punched, reached at {src}", hole.peer);
    if let Some((report, token)) = hole.punch.and_then(|p| p.report) {
        send_dummy(fd, token, report);
    }
}

/// A datagram from `src` on a socket whose channel `c` is elsewhere. A
/// connected socket hears only its peer, so when the real socket is now
/// connected to `src`, another process sharing it (fork, exec) reconnected
/// it to the channel's new port (a reopen after the broker forgot the old
/// one): `c` follows. One `getpeername`, only on this rare path.
fn follow_moved_channel(fd: c_int, c: &mut super::table::Channel, src: SocketAddrV4) {
    if sys::peer_addr(fd) == Ok(src) {
        log!(Debug, "udp: the channel for {} moved from {} to {src} (reopened by another process sharing the socket)", c.peer, c.addr);
        c.addr = src;
    }
}

#[cfg(test)]
#[path = "control_tests.rs"]
mod tests;
