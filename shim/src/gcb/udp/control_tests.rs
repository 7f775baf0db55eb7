//! Tests of `udp::control`: sorting datagrams, answering and opening punches.

use super::*;
use crate::gcb::udp::table::Route;

fn a(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

#[test]
fn sorts_data_from_control() {
    let mut reg = Registry::new();
    let now = Instant::now();
    // An unregistered connector socket that awaits a reversal's Dummy.
    let sock = sys::socket(libc::SOCK_DGRAM, true, true).unwrap();
    sys::bind(sock.raw(), a("127.0.0.1:0")).unwrap();
    let fd = sock.raw();
    let proxy = a("203.0.113.10:20001");
    reg.udp.entry(fd).set_route(proxy, Route::AsNamed, now);
    reg.udp.entry(fd).await_dummy(Token(3), proxy, true, now);
    let peer = sys::socket(libc::SOCK_DGRAM, true, true).unwrap();
    sys::bind(peer.raw(), a("127.0.0.1:0")).unwrap();
    let src = sys::local_addr(peer.raw()).unwrap();

    assert_eq!(classify(&mut reg, fd, src, b"hello", now), Incoming::Data { from: src, offset: 0 });
    let forged = gcb::encode(&Message::Dummy { token: Token(4) }, 1).unwrap();
    assert_eq!(classify(&mut reg, fd, src, &forged, now), Incoming::Data { from: src, offset: 0 }, "not our token");
    let dummy = gcb::encode(&Message::Dummy { token: Token(3) }, 77).unwrap();
    assert_eq!(classify(&mut reg, fd, src, &dummy, now), Incoming::Consumed);
    let mut buf = [0u8; 64];
    let n = unsafe { libc::recv(peer.raw(), buf.as_mut_ptr().cast(), 64, libc::MSG_DONTWAIT) };
    assert_eq!(n, -1, "the Dummy is not answered: the program's next datagram tells the listener");
    assert_eq!(classify(&mut reg, fd, src, &dummy, now), Incoming::Consumed, "nor is a repeated one data");
    assert_eq!(reg.udp.get(fd).unwrap().route(proxy, now), Some(Route::Direct(src)));
    assert_eq!(classify(&mut reg, fd, src, b"x", now), Incoming::Data { from: proxy, offset: 0 }, "named as the proxy");
    reg.udp.remove(fd);
}

/// The next datagram on `fd` within a second, decoded.
fn control_on(fd: c_int) -> Message {
    let mut p = [libc::pollfd { fd, events: libc::POLLIN, revents: 0 }];
    assert_eq!(unsafe { libc::poll(p.as_mut_ptr(), 1, 1000) }, 1, "nothing arrived");
    let mut buf = [0u8; 256];
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    gcb::decode(&buf[..n as usize]).unwrap().1
}

#[test]
fn a_punch_answers_its_peer_opens_and_reports_once() {
    let mut reg = Registry::new();
    let now = Instant::now();
    let bound = || {
        let s = sys::socket(libc::SOCK_DGRAM, true, true).unwrap();
        sys::bind(s.raw(), a("127.0.0.1:0")).unwrap();
        let at = sys::local_addr(s.raw()).unwrap();
        (s, at)
    };
    // The connector's socket, the listener's (its mapping), the proxy.
    let ((sock, _), (listener, listener_at), (proxy_sock, proxy)) = (bound(), bound(), bound());
    let fd = sock.raw();
    let token = Token(3);
    let (mine, theirs) = (proof(token, Role::Connector), proof(token, Role::Listener));
    assert!(mine != theirs && mine != token && theirs != token);
    reg.udp.entry(fd).set_route(proxy, Route::AsNamed, now);
    let punch = Some(Punch { expect: theirs, report: Some((proxy, token)), gap: PUNCH_GAP, confirm: false, proven: false, yielded: false, ttl: None });
    let expires = now + super::super::table::HOLE_ACK_TTL;
    reg.udp.entry(fd).start_hole(Hole { token: mine, target: listener_at, peer: proxy, next_try: now, tries_left: 1, expires, punch });
    on_timers(&mut reg, now);
    assert_eq!(control_on(listener.raw()), Message::Dummy { token: mine }, "to the listener's mapping, with the connector's proof");

    let dummy = gcb::encode(&Message::Dummy { token: theirs }, 9).unwrap();
    let (stranger, stranger_at) = bound();
    assert_eq!(classify(&mut reg, fd, stranger_at, &dummy, now), Incoming::Consumed, "never the program's");
    assert_eq!(reg.udp.get(fd).unwrap().route(proxy, now), Some(Route::AsNamed), "a stranger opens nothing");
    let replay = gcb::encode(&Message::Dummy { token: mine }, 9).unwrap();
    assert_eq!(classify(&mut reg, fd, listener_at, &replay, now), Incoming::Consumed, "its own Dummy sent back");
    let raw = gcb::encode(&Message::DummyAck { token }, 9).unwrap();
    assert_eq!(classify(&mut reg, fd, listener_at, &raw, now), Incoming::Data { from: listener_at, offset: 0 }, "the raw token is nothing of the punch's");
    assert_eq!(classify(&mut reg, fd, listener_at, b"junk", now), Incoming::Data { from: listener_at, offset: 0 }, "not named as the peer");
    assert_eq!(reg.udp.get(fd).unwrap().route(proxy, now), Some(Route::AsNamed), "neither opens it");
    assert_eq!(classify(&mut reg, fd, listener_at, &dummy, now), Incoming::Consumed);
    assert_eq!(control_on(listener.raw()), Message::DummyAck { token: mine }, "answered with its own proof");
    assert_eq!(control_on(proxy_sock.raw()), Message::Dummy { token }, "the broker told, with the token");
    assert_eq!(reg.udp.get(fd).unwrap().route(proxy, now), Some(Route::Direct(listener_at)));
    assert_eq!(classify(&mut reg, fd, listener_at, b"echo", now), Incoming::Data { from: proxy, offset: 0 }, "named as the proxy");
    let ack = gcb::encode(&Message::DummyAck { token: theirs }, 10).unwrap();
    assert_eq!(classify(&mut reg, fd, listener_at, &ack, now), Incoming::Consumed);
    let mut buf = [0u8; 64];
    for s in [&stranger, &proxy_sock, &listener] {
        let n = unsafe { libc::recv(s.raw(), buf.as_mut_ptr().cast(), 64, libc::MSG_DONTWAIT) };
        assert_eq!(n, -1, "no answer to a stranger or a replay, one report only");
    }
    reg.udp.remove(fd);
}

#[test]
fn a_channel_another_process_reconnected_is_followed() {
    let mut reg = Registry::new();
    let now = Instant::now();
    let new_port = sys::socket(libc::SOCK_DGRAM, true, true).unwrap();
    sys::bind(new_port.raw(), a("127.0.0.1:0")).unwrap();
    let moved = sys::local_addr(new_port.raw()).unwrap();
    let sock = sys::socket(libc::SOCK_DGRAM, true, true).unwrap();
    sys::bind(sock.raw(), a("127.0.0.1:0")).unwrap();
    let fd = sock.raw();
    // This process knows the old port, being asked for again; the
    // socket is connected to the new one (by the other process).
    let (peer, old) = (a("203.0.113.20:5000"), a("203.0.113.10:20002"));
    let reopen = Some(super::super::table::Reopen::now(now));
    reg.udp.entry(fd).channel = Some(super::super::table::Channel { peer, addr: old, token: Token(1), reopen });
    let stranger = a("127.0.0.1:9");
    assert_eq!(classify(&mut reg, fd, stranger, b"x", now), Incoming::Data { from: stranger, offset: 0 }, "not where the socket is connected");
    assert_eq!(reg.udp.get(fd).unwrap().channel.unwrap().addr, old);

    sys::connect(fd, moved, now).unwrap();
    assert_eq!(classify(&mut reg, fd, moved, b"data", now), Incoming::Data { from: peer, offset: 0 }, "the peer's, through the channel");
    let ack = gcb::encode(&Message::DummyAck { token: Token(9) }, 5).unwrap();
    assert_eq!(classify(&mut reg, fd, moved, &ack, now), Incoming::Consumed, "the other process's Dummy answered");
    let c = reg.udp.get(fd).unwrap().channel.unwrap();
    assert_eq!((c.addr, c.token, c.reopen), (moved, Token(9), None), "followed, and no longer asked for");
    reg.udp.remove(fd);
}
