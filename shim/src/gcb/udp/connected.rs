//! `connect` of a UDP socket to a peer the broker punches a hole to
//! (decision `PunchUdp`, docs/hole-punching.md, "UDP": connected sockets).
//!
//! A connected socket's kernel takes datagrams from the one address it is
//! connected to. Connected to the listener's proxy (the relay), it could
//! never hear the listener's Dummies, which come from the listener's NAT
//! mapping; connected to that mapping before the punch answered, it would
//! send the program's datagrams into a hole that may never open. So the
//! connect waits, at most [`CONNECT_WAIT`], with the socket still
//! unconnected, reading it itself while the responder sends the punch's
//! Dummies: once the listener's proof comes from its mapping, the real
//! socket is connected to that mapping, and everything after is the
//! kernel's fast path (`send`, `write`, `read`, and the errors a connected
//! socket gets, such as ECONNREFUSED when the peer's port is closed).
//! Reads name the mapping's datagrams as the address the program connected
//! to, and `getpeername` gives that address. Otherwise the punch is given up
//! and the socket is connected to the proxy, the relay, as before.
//!
//! While it waits, a datagram that is not the peer's over the opened path
//! is dropped: a connected socket would not have taken it, and before the
//! punch answered, a datagram from the mapping's address is as likely a
//! stranger's as the peer's (only the proof tells them apart). The peer's
//! data after the path opened is kept for the program's first read.
//!
//! The wait is the price of a direct path: about the connector's second
//! Dummy on a path that punches (0.3 s), [`CONNECT_WAIT`] on one that does
//! not. Only a
//! blocking socket pays it ([`may_wait`]): a UDP `connect` has no EINPROGRESS
//! to give, and an event loop must not stall in one, so a non-blocking socket
//! asks the broker without offering UDP punching and goes to the relay at once,
//! as before punching. And a destination whose punch went unanswered is not
//! punched again for [`REMEMBERED`](super::table::ConnectMisses::REMEMBERED): its next connects go to the
//! relay at once.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use libc::{c_int, pollfd, socklen_t};
use proto::gcb::Token;

use crate::client::sys;
use super::control::{self, Incoming};
use super::table::{Datagram, Route};
use crate::real;

/// How long a `connect` waits for the punch to answer: the connector's
/// first two Dummies (0.2 s, with a low TTL, and 0.3 s), the listener's
/// second (0.4 s), or, when the listener yields, its second (0.45 s: its
/// first, at 0.35 s, has a low TTL too, `control::LISTENER_YIELD`), with
/// room for a loaded machine.
pub const CONNECT_WAIT: Duration = Duration::from_millis(700);

/// Whether a `connect` of `fd` to `dest` may wait for a punch (module docs):
/// the socket blocks, and `dest`'s last punch was not missed lately.
pub fn may_wait(fd: c_int, dest: SocketAddrV4) -> bool {
    let blocking = sys::get_fl(fd).is_ok_and(|fl| fl & libc::O_NONBLOCK == 0);
    blocking && !super::super::state::with(|reg| reg.udp.connect_misses.recent(dest, Instant::now()))
}

/// Waits for the punch whose proof is `mine` to open `fd`'s path to `dest`:
/// the real address to connect the socket to, or `None` (given up; the
/// caller connects it to the relay).
pub fn await_punch(fd: c_int, dest: SocketAddrV4, mine: Token) -> Option<SocketAddrV4> {
    let start = Instant::now();
    let deadline = start + CONNECT_WAIT;
    if sys::peer_addr(fd).is_ok() {
        // Connected before: the old association would keep the punch out.
        // The new `connect` replaces it anyway; it just goes first.
        dissolve(fd);
    }
    let mut buf = vec![0u8; 65_536];
    let opened = loop {
        drain(fd, dest, &mut buf);
        let direct = super::super::state::with(|reg| match reg.udp.get(fd)?.route(dest, Instant::now()) {
            Some(Route::Direct(real)) => Some(real),
            _ => None,
        });
        if direct.is_some() {
            break direct;
        }
        let now = Instant::now();
        if now >= deadline {
            break None;
        }
        let left = deadline - now;
        let ts = libc::timespec { tv_sec: left.as_secs() as libc::time_t, tv_nsec: left.subsec_nanos() as libc::c_long };
        let mut p = [pollfd { fd, events: libc::POLLIN, revents: 0 }];
        // SAFETY: one live pollfd, a valid timespec, no signal mask. An
        // interruption or an error only ends this wait sooner or later,
        // never later than the deadline.
        unsafe { real::ppoll(p.as_mut_ptr(), 1, &ts, std::ptr::null()) };
    };
    match opened {
        Some(real) => {
            super::super::state::with(|reg| reg.udp.connect_misses.forget(dest));
            log!(Debug, "udp connect to {dest}: punched in {} us, connected to {real}", start.elapsed().as_micros());
        }
        None => {
            super::super::state::with(|reg| {
                if let Some(s) = reg.udp.get_mut(fd) {
                    s.cancel_punch(mine);
                }
                reg.udp.connect_misses.note(dest, Instant::now());
            });
            log!(Info, "udp connect to {dest}: the punch did not answer within {} ms; connected through the relay", CONNECT_WAIT.as_millis());
        }
    }
    opened
}

/// Reads what is queued on `fd` (without waiting): the shim's control
/// traffic acts (the punch opens), the peer's data over the opened path
/// is kept for the program, anything else is dropped (module docs).
fn drain(fd: c_int, dest: SocketAddrV4, buf: &mut [u8]) {
    // Bounded: a flood cannot keep the connect here past its deadline by much.
    for _ in 0..256 {
        let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut sl = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
        // SAFETY: live buffers of the stated lengths.
        let n = unsafe { real::recvfrom(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT, (&mut st as *mut libc::sockaddr_storage).cast(), &mut sl) };
        if n < 0 {
            return;
        }
        let n = n as usize;
        // SAFETY: the kernel filled `sl` bytes of the storage.
        let src = unsafe { sys::from_sockaddr((&st as *const libc::sockaddr_storage).cast(), sl) }.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        let now = Instant::now();
        super::super::state::with(|reg| match control::classify(reg, fd, src, &buf[..n], now) {
            Incoming::Data { from, offset } if from == dest => reg.udp.entry(fd).stash(Datagram { from, data: buf[offset..n].to_vec() }),
            Incoming::Data { .. } => log!(Debug, "udp connect to {dest}: a datagram from {src} dropped while the punch runs"),
            Incoming::Consumed => {}
        });
    }
}

/// Dissolves `fd`'s association (`connect` to `AF_UNSPEC`).
fn dissolve(fd: c_int) {
    // SAFETY: all-zero is a valid sockaddr; AF_UNSPEC is 0.
    let unspec: libc::sockaddr = unsafe { std::mem::zeroed() };
    // SAFETY: a live sockaddr of the given length.
    unsafe { real::connect(fd, &unspec, std::mem::size_of::<libc::sockaddr>() as socklen_t) };
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::gcb::udp::control::proof;
    use crate::gcb::udp::table::{Hole, Punch, HOLE_ACK_TTL};
    use proto::gcb::{self, Message, Role};

    /// A UDP socket on a loopback port of its own, and its address.
    pub(in crate::gcb::udp) fn bound() -> (sys::Sock, SocketAddrV4) {
        let s = sys::socket(libc::SOCK_DGRAM, true, true).unwrap();
        sys::bind(s.raw(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let at = sys::local_addr(s.raw()).unwrap();
        (s, at)
    }

    fn send(from: &sys::Sock, bytes: &[u8], to: SocketAddrV4) {
        crate::gcb::udp::ttl::send_from(from.raw(), bytes, to).unwrap();
    }

    /// The connector's socket with a punch to `listener_at` for `proxy`
    /// whose Dummies the test sends itself (none due).
    fn punching(fd: c_int, proxy: SocketAddrV4, listener_at: SocketAddrV4, token: Token) {
        let now = Instant::now();
        let punch = Punch { expect: proof(token, Role::Listener), report: None, gap: Duration::from_secs(60), confirm: false, proven: false, yielded: false, ttl: None };
        super::super::super::state::with(|reg| {
            let s = reg.udp.entry(fd);
            s.set_route(proxy, Route::AsNamed, now);
            s.start_hole(Hole { token: proof(token, Role::Connector), target: listener_at, peer: proxy, next_try: now + HOLE_ACK_TTL, tries_left: 1, expires: now + HOLE_ACK_TTL, punch: Some(punch) });
        });
    }

    #[test]
    fn a_connect_takes_the_path_the_listeners_proof_opens_and_only_the_peers_data() {
        let ((sock, at), (listener, listener_at), (stranger, _)) = (bound(), bound(), bound());
        let fd = sock.raw();
        let proxy: SocketAddrV4 = "127.0.0.1:9".parse().unwrap();
        let token = Token(42);
        punching(fd, proxy, listener_at, token);
        let theirs = gcb::encode(&Message::Dummy { token: proof(token, Role::Listener) }, 1).unwrap();
        send(&stranger, b"junk", at);
        send(&listener, b"before", at);
        send(&stranger, &theirs, at);
        send(&listener, &theirs, at);
        send(&listener, b"after", at);
        assert_eq!(await_punch(fd, proxy, proof(token, Role::Connector)), Some(listener_at));
        let stashed = super::super::super::state::with(|reg| {
            let s = reg.udp.get_mut(fd).unwrap();
            let all: Vec<Datagram> = std::iter::from_fn(|| s.take_stashed()).collect();
            all
        });
        assert_eq!(stashed, vec![Datagram { from: proxy, data: b"after".to_vec() }], "only the peer's, over the opened path");
        let mut buf = [0u8; 64];
        let n = unsafe { libc::recv(listener.raw(), buf.as_mut_ptr().cast(), 64, libc::MSG_DONTWAIT) };
        assert!(n > 0, "the listener's Dummy answered");
        assert_eq!(gcb::decode(&buf[..n as usize]).unwrap().1, Message::DummyAck { token: proof(token, Role::Connector) });
        super::super::super::state::with(|reg| reg.udp.remove(fd));
    }

    #[test]
    fn only_a_blocking_socket_to_a_destination_not_missed_lately_may_wait() {
        let (sock, _) = bound();
        let fd = sock.raw();
        let dest: SocketAddrV4 = "127.0.0.1:19".parse().unwrap();
        sys::set_nonblock(fd, true).unwrap();
        assert!(!may_wait(fd, dest), "a non-blocking socket goes to the relay at once");
        sys::set_nonblock(fd, false).unwrap();
        assert!(may_wait(fd, dest));
        super::super::super::state::with(|reg| reg.udp.connect_misses.note(dest, Instant::now()));
        assert!(!may_wait(fd, dest), "a destination missed lately is not waited for");
        super::super::super::state::with(|reg| reg.udp.connect_misses.forget(dest));
    }

    #[test]
    fn an_unanswered_punch_is_given_up_within_the_wait() {
        let ((sock, at), (listener, listener_at)) = (bound(), bound());
        let fd = sock.raw();
        let proxy: SocketAddrV4 = "127.0.0.1:9".parse().unwrap();
        let token = Token(43);
        punching(fd, proxy, listener_at, token);
        // Its own proof sent back proves nothing.
        send(&listener, &gcb::encode(&Message::Dummy { token: proof(token, Role::Connector) }, 1).unwrap(), at);
        let t0 = Instant::now();
        assert_eq!(await_punch(fd, proxy, proof(token, Role::Connector)), None);
        let waited = t0.elapsed();
        assert!(waited >= CONNECT_WAIT && waited < CONNECT_WAIT + Duration::from_secs(2), "{waited:?}");
        let left = super::super::super::state::with(|reg| reg.udp.get(fd).map(|s| s.holes.len()));
        assert_eq!(left, Some(0), "the punch is given up");
        super::super::super::state::with(|reg| reg.udp.remove(fd));
    }
}
