//! The standbys' rules on real loopback connections, without a broker: what
//! a claim sends and when it refuses, what the listener's side takes as a
//! claim, and how long each side keeps one.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use proto::gcb::punch::{STANDBY_CLAIM, STANDBY_TAKEN};

use super::*;
use crate::client::family::Family;
use crate::client::sys::{self, Sock};
use crate::gcb::punch::Held;
use crate::gcb::registry::Registry;
use crate::real;

/// A connected loopback TCP pair: (the standby's end, the peer's end).
fn pair() -> (Sock, Sock) {
    let l = sys::socket(libc::SOCK_STREAM, true, true).unwrap();
    sys::bind(l.raw(), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
    assert_eq!(unsafe { real::listen(l.raw(), 1) }, 0);
    let at = sys::local_addr(l.raw()).unwrap();
    let c = sys::socket(libc::SOCK_STREAM, true, true).unwrap();
    let _ = sys::connect(c.raw(), at, Instant::now() + Duration::from_secs(5));
    sys::wait_fd(l.raw(), libc::POLLIN, Instant::now() + Duration::from_secs(5)).unwrap();
    let a = Sock::from_raw(unsafe { real::accept4(l.raw(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) });
    sys::wait_fd(c.raw(), libc::POLLOUT, Instant::now() + Duration::from_secs(5)).unwrap();
    (c, a)
}

const DEST: &str = "203.0.113.10:20001";

/// Keeps `conn` as the standby for [`DEST`]; its fd, now internal (moved high).
fn kept(reg: &mut Registry, conn: Sock, since: Instant) -> libc::c_int {
    outgoing::keep_for_tests(reg, DEST.parse().unwrap(), Held::adopt(conn), since)
}

fn send(fd: libc::c_int, bytes: &[u8]) {
    assert_eq!(unsafe { real::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) }, bytes.len() as isize);
}

#[test]
fn a_claim_sends_the_claim_first_and_hands_the_connection_over() {
    let mut reg = Registry::new();
    let (mine, peer) = pair();
    kept(&mut reg, mine, Instant::now());
    assert!(outgoing::claim(&mut reg, "203.0.113.10:20002".parse().unwrap(), Family::V4).is_none(), "another destination");
    assert!(outgoing::claim(&mut reg, DEST.parse().unwrap(), Family::Mapped).is_none(), "an AF_INET6 socket does not take an AF_INET standby");
    assert_eq!(reg.standby.outgoing.len(), 1, "left for a socket of its family");
    let conn = outgoing::claim(&mut reg, DEST.parse().unwrap(), Family::V4).expect("the kept standby");
    assert!(reg.standby.outgoing.is_empty(), "taken");
    send(conn.raw(), b"program");
    let mut buf = [0u8; STANDBY_CLAIM.len() + 7];
    sys::recv_exact(peer.raw(), &mut buf, Instant::now() + Duration::from_secs(5)).unwrap();
    assert_eq!(&buf[..STANDBY_CLAIM.len()], &STANDBY_CLAIM[..]);
    assert_eq!(&buf[STANDBY_CLAIM.len()..], b"program");
    assert!(outgoing::claim(&mut reg, DEST.parse().unwrap(), Family::V4).is_none(), "one claim per standby");
}

#[test]
fn a_standby_its_listener_closed_is_not_claimed() {
    let mut reg = Registry::new();
    let (mine, peer) = pair();
    let fd = kept(&mut reg, mine, Instant::now());
    drop(peer);
    sys::wait_fd(fd, libc::POLLIN, Instant::now() + Duration::from_secs(5)).unwrap();
    assert!(outgoing::claim(&mut reg, DEST.parse().unwrap(), Family::V4).is_none());
    assert!(reg.standby.outgoing.is_empty(), "dropped");
}

#[test]
fn the_responder_drops_a_kept_standby_when_its_peer_ends_or_it_is_old() {
    let mut reg = Registry::new();
    let now = Instant::now();
    let (mine, peer) = pair();
    let fd = kept(&mut reg, mine, now);
    assert!(outgoing::progress(&mut reg, fd, libc::POLLIN, now), "ours");
    assert_eq!(reg.standby.outgoing.len(), 1, "a spurious wake-up leaves it");
    drop(peer);
    sys::wait_fd(fd, libc::POLLIN, Instant::now() + Duration::from_secs(5)).unwrap();
    assert!(outgoing::progress(&mut reg, fd, libc::POLLIN, now));
    assert!(reg.standby.outgoing.is_empty(), "ended");

    let (mine, _peer) = pair();
    kept(&mut reg, mine, now);
    on_timers(&mut reg, now + KEEP_FOR - Duration::from_millis(1));
    assert_eq!(reg.standby.outgoing.len(), 1);
    assert_eq!(next_deadline(&reg), Some(now + KEEP_FOR));
    on_timers(&mut reg, now + KEEP_FOR);
    assert!(reg.standby.outgoing.is_empty(), "kept no longer than KEEP_FOR");
}

#[test]
fn the_listener_takes_exactly_the_claim_and_nothing_else() {
    let (mine, peer) = pair();
    assert!(matches!(conn::expect(mine.raw(), &STANDBY_CLAIM), conn::Said::NotYet), "nothing yet");
    let mut claim_and_data = STANDBY_CLAIM.to_vec();
    claim_and_data.extend_from_slice(b"data");
    send(peer.raw(), &claim_and_data);
    sys::wait_fd(mine.raw(), libc::POLLIN, Instant::now() + Duration::from_secs(5)).unwrap();
    assert!(matches!(conn::expect(mine.raw(), &STANDBY_CLAIM), conn::Said::Frame), "the claim");
    let mut buf = [0u8; 4];
    sys::recv_exact(mine.raw(), &mut buf, Instant::now() + Duration::from_secs(5)).unwrap();
    assert_eq!(&buf, b"data", "the program's bytes are left for it");

    // Part of a claim is a peer that broke off: polled, it would spin.
    let (mine, peer) = pair();
    send(peer.raw(), &STANDBY_CLAIM[..3]);
    sys::wait_fd(mine.raw(), libc::POLLIN, Instant::now() + Duration::from_secs(5)).unwrap();
    assert!(matches!(conn::expect(mine.raw(), &STANDBY_CLAIM), conn::Said::Other), "part of it");

    let (mine, peer) = pair();
    send(peer.raw(), b"GET / HTTP/1.0\r\n");
    sys::wait_fd(mine.raw(), libc::POLLIN, Instant::now() + Duration::from_secs(5)).unwrap();
    assert!(matches!(conn::expect(mine.raw(), &STANDBY_CLAIM), conn::Said::Other), "other bytes");
    let (mine, peer) = pair();
    drop(peer);
    sys::wait_fd(mine.raw(), libc::POLLIN, Instant::now() + Duration::from_secs(5)).unwrap();
    assert!(matches!(conn::expect(mine.raw(), &STANDBY_CLAIM), conn::Said::Other), "end of stream");
}

/// A claim whose connector has already closed its end (it stopped waiting
/// for the answer and brokers the connect instead) is not parked: the
/// listening program must not accept a connection nobody connected.
#[test]
fn a_claim_followed_by_the_end_of_the_stream_is_not_parked() {
    let mut reg = Registry::new();
    let (id, _) = reg.add_listener(crate::gcb::registration::tests::listener(&[9_000], -1));
    let (mine, peer) = pair();
    let peer_at: SocketAddrV4 = "198.51.100.10:4000".parse().unwrap();
    let now = Instant::now();
    let held = Held::adopt(mine);
    let fd = held.raw();
    incoming::hold(&mut reg, id, held, peer_at, DEST.parse().unwrap(), now);
    send(peer.raw(), &STANDBY_CLAIM);
    // SAFETY: the peer's end, ours to shut.
    unsafe { libc::shutdown(peer.raw(), libc::SHUT_WR) };
    sys::wait_fd(fd, libc::POLLIN, Instant::now() + Duration::from_secs(5)).unwrap();
    // The FIN follows the claim on loopback at once; wait for it, bounded.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !conn::ended_after_claim_for_tests(fd) {
        assert!(Instant::now() < deadline, "the end of the stream after the claim");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(incoming::progress(&mut reg, fd, now), "ours");
    assert!(reg.standby.incoming.held.is_empty(), "no longer held");
    assert_eq!(reg.parked.count_for(id), 0, "not parked for accept");
    let mut byte = [0u8; 8];
    let n = unsafe { real::recv(peer.raw(), byte.as_mut_ptr().cast(), byte.len(), 0) };
    assert!(n <= 0, "no answer: {n} bytes");
}

#[test]
fn a_claim_is_taken_refused_or_unanswered_by_its_deadline() {
    use outgoing::{await_answer, Answer};
    let soon = || Instant::now() + Duration::from_millis(300);
    let (mine, peer) = pair();
    send(peer.raw(), &STANDBY_TAKEN);
    send(peer.raw(), b"banner");
    assert_eq!(await_answer(mine.raw(), Instant::now(), soon()), Answer::Taken);
    let mut buf = [0u8; 6];
    sys::recv_exact(mine.raw(), &mut buf, Instant::now() + Duration::from_secs(5)).unwrap();
    assert_eq!(&buf, b"banner", "what the listening program sent after the answer is its program's");

    let (mine, peer) = pair();
    drop(peer);
    assert_eq!(await_answer(mine.raw(), Instant::now(), soon()), Answer::Refused, "closed: the connect may be brokered");

    let (mine, _peer) = pair();
    let start = Instant::now();
    assert_eq!(await_answer(mine.raw(), Instant::now(), soon()), Answer::Pending, "silent but acknowledged: the connect fails, never brokered");
    assert!(start.elapsed() >= Duration::from_millis(250), "waited for its deadline");
}

#[test]
fn a_waiting_standby_probes_its_path_and_a_program_gets_the_kernel_s_settings_back() {
    let (mine, _peer) = pair();
    let fd = mine.raw();
    let get = |level, name| sys::get_int_opt(fd, level, name).unwrap();
    let fresh = [get(libc::SOL_SOCKET, libc::SO_KEEPALIVE), get(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), get(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), get(libc::IPPROTO_TCP, libc::TCP_KEEPCNT)];
    let before = conn::watch_path(fd);
    assert_eq!(get(libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
    assert!(get(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE) * 1000 + get(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL) * get(libc::IPPROTO_TCP, libc::TCP_KEEPCNT) * 1000 < KEEP_FOR.as_millis() as i32, "a dead path is found while the connector still keeps it");
    assert!(!conn::unacked(fd), "nothing sent");
    conn::unwatch_path(fd, before);
    let now = [get(libc::SOL_SOCKET, libc::SO_KEEPALIVE), get(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), get(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), get(libc::IPPROTO_TCP, libc::TCP_KEEPCNT)];
    assert_eq!(now, fresh);
}

#[test]
fn a_destination_whose_standby_ended_unclaimed_gets_none_for_a_while() {
    let mut reg = Registry::new();
    let now = Instant::now();
    let dest: std::net::SocketAddrV4 = DEST.parse().unwrap();
    let (mine, peer) = pair();
    let fd = kept(&mut reg, mine, now);
    drop(peer);
    sys::wait_fd(fd, libc::POLLIN, Instant::now() + Duration::from_secs(5)).unwrap();
    assert!(outgoing::progress(&mut reg, fd, libc::POLLIN, now));
    assert!(reg.standby.outgoing.is_empty(), "ended");
    // A listener that closes what it is given (its limit, a full queue) would
    // otherwise cost a punch per connect for nothing.
    assert!(!outgoing::want(&mut reg, dest, crate::client::family::Family::V4, now + outgoing::REST_FOR / 2));
    assert!(reg.standby.outgoing.is_empty());
    assert!(outgoing::want(&mut reg, "203.0.113.10:20002".parse().unwrap(), crate::client::family::Family::V4, now), "other destinations are not affected");
    assert!(outgoing::want(&mut reg, dest, crate::client::family::Family::V4, now + outgoing::REST_FOR), "asked for again once it has rested");
    assert_eq!(reg.standby.outgoing.count_for(dest, crate::client::family::Family::V4), outgoing::PER_DESTINATION);
}
