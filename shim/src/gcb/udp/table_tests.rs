//! Tests of `udp::table`: the records of a managed UDP socket.

use super::*;

fn a(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

#[test]
fn routes_name_their_sources_and_expire() {
    let now = Instant::now();
    let mut s = UdpSocket::default();
    let proxy = a("203.0.113.10:20001");
    assert_eq!(s.route(proxy, now), None);
    s.set_route(proxy, Route::Direct(a("192.0.2.10:9000")), now);
    assert_eq!(s.route(proxy, now), Some(Route::Direct(a("192.0.2.10:9000"))));
    assert_eq!(s.name_of(a("192.0.2.10:9000")), proxy, "the reply is reported from the address sent to");
    assert_eq!(s.name_of(a("192.0.2.99:1")), a("192.0.2.99:1"));
    assert_eq!(s.route(proxy, now + RECORD_TTL), None, "flushed after the TTL");
    // A new answer replaces the old one and its reverse name.
    s.set_route(proxy, Route::AsNamed, now);
    assert_eq!(s.name_of(a("192.0.2.10:9000")), a("192.0.2.10:9000"));
    s.set_route(proxy, Route::Direct(a("192.0.2.10:9000")), now);
    s.remove_route(proxy);
    assert_eq!(s.route(proxy, now), None);
    assert_eq!(s.name_of(a("192.0.2.10:9000")), a("192.0.2.10:9000"), "reverse name gone with its record");
}

#[test]
fn reversal_dummy_and_makehole_ack_open_direct_paths() {
    let now = Instant::now();
    let mut s = UdpSocket::default();
    let proxy = a("203.0.113.10:20001");
    s.set_route(proxy, Route::AsNamed, now);
    s.await_dummy(Token(6), proxy, false, now);
    assert_eq!(s.dummy_from(Token(6), a("203.0.113.1:4000"), now), Some((proxy, false)));
    assert_eq!(s.route(proxy, now), Some(Route::AsNamed), "a connected socket's hole is not used");
    s.await_dummy(Token(7), proxy, true, now);
    assert_eq!(s.dummy_from(Token(8), a("203.0.113.1:4000"), now), None, "unknown token: not ours");
    assert_eq!(s.dummy_from(Token(7), a("203.0.113.1:4000"), now), Some((proxy, true)));
    assert_eq!(s.route(proxy, now), Some(Route::Direct(a("203.0.113.1:4000"))));
    assert_eq!(s.name_of(a("203.0.113.1:4000")), proxy);
    assert_eq!(s.dummy_from(Token(7), a("203.0.113.1:4000"), now), Some((proxy, true)), "a repeated Dummy is still ours");
    assert_eq!(s.dummy_from(Token(7), a("203.0.113.1:4000"), now + HOLE_ACK_TTL), None, "until it is old");

    let peer = a("203.0.113.20:5000");
    s.start_hole(Hole { token: Token(9), target: peer, peer, next_try: now, tries_left: 2, expires: now + HOLE_ACK_TTL, punch: None });
    assert_eq!(s.due_holes(now, Duration::from_secs(1)), vec![(Token(9), peer, None)]);
    assert!(s.due_holes(now, Duration::from_secs(1)).is_empty(), "not due again yet");
    assert_eq!(s.next_hole_deadline(), Some(now + Duration::from_secs(1)));
    assert_eq!(s.hole_acked(Token(9), peer, now), Some(peer));
    assert_eq!(s.route(peer, now), Some(Route::Direct(peer)));
    assert!(s.due_holes(now + Duration::from_secs(5), Duration::ZERO).is_empty(), "made: no more Dummies");
    assert_eq!(s.hole_acked(Token(9), peer, now), Some(peer), "a later ack is the hole's too");
    s.holes.clear();
    // Out of tries: no more Dummies, its ack still recognised, then dropped.
    let expires = now + Duration::from_secs(5);
    s.start_hole(Hole { token: Token(10), target: peer, peer, next_try: now, tries_left: 1, expires, punch: None });
    assert_eq!(s.due_holes(now, Duration::ZERO).len(), 1);
    assert!(s.due_holes(now, Duration::ZERO).is_empty());
    assert_eq!(s.next_hole_deadline(), Some(expires));
    assert!(s.due_holes(expires, Duration::ZERO).is_empty());
    assert!(s.holes.is_empty(), "expired");
    s.start_hole(Hole { token: Token(11), target: peer, peer, next_try: now, tries_left: 0, expires, punch: None });
    assert_eq!(s.hole_acked(Token(11), peer, now), Some(peer), "a late ack is still the hole's");
    // Made by the peer's first datagram straight from its mapping.
    s.holes.clear();
    let mapping = a("203.0.113.20:6000");
    s.start_hole(Hole { token: Token(12), target: mapping, peer, next_try: now, tries_left: 3, expires, punch: None });
    assert_eq!(s.hole_heard(a("203.0.113.20:6001"), now), None, "another source");
    assert_eq!(s.hole_heard(mapping, now).map(|h| h.peer), Some(peer));
    assert_eq!(s.route(peer, now), Some(Route::Direct(mapping)));
    assert!(s.due_holes(now, Duration::ZERO).is_empty(), "no more Dummies");
    assert_eq!(s.hole_heard(mapping, now), None, "made once");
}

#[test]
fn a_channel_names_its_peer_and_carries_its_datagrams() {
    let mut s = UdpSocket::default();
    let (peer, addr) = (a("203.0.113.20:5000"), a("203.0.113.10:21001"));
    assert_eq!(s.channel_to(peer), None);
    s.channel = Some(Channel { peer, addr, token: Token(3), reopen: None });
    assert_eq!(s.channel_to(peer), Some(addr));
    assert_eq!(s.channel_to(a("203.0.113.20:5001")), None, "only its own peer");
    assert_eq!(s.name_of(addr), peer, "its datagrams are the peer's");
    assert_eq!(s.name_of(a("203.0.113.10:21000")), a("203.0.113.10:21000"));
}

#[test]
fn relay_peers_expire_and_are_bounded() {
    let now = Instant::now();
    let mut s = UdpSocket::default();
    let p = a("203.0.113.20:5000");
    s.note_relay_peer(p, now);
    assert!(s.is_relay_peer(p, now));
    assert!(!s.is_relay_peer(p, now + RELAY_PEER_TTL));
    for i in 0..MAX_RECORDS as u32 + 10 {
        s.note_relay_peer(SocketAddrV4::new(i.into(), 1), now + Duration::from_millis(u64::from(i) + 1));
    }
    assert!(s.relay_peers.len() <= MAX_RECORDS);
    assert!(!s.is_relay_peer(p, now + Duration::from_millis(1)), "the oldest went first");
}

#[test]
fn stash_keeps_order_peeks_and_is_bounded() {
    let mut s = UdpSocket::default();
    let d = |i: u8| Datagram { from: a("198.51.100.10:1"), data: vec![i] };
    s.stash(d(1));
    s.stash(d(2));
    let first = s.peek_stashed().unwrap();
    assert_eq!(first, d(1));
    assert_eq!(s.take_stashed(), Some(first));
    assert_eq!(s.take_stashed(), Some(d(2)));
    assert!(!s.has_stashed());
    for i in 0..MAX_STASH + 3 {
        s.stash(d(i as u8));
    }
    assert_eq!(s.take_stashed(), Some(d(3)), "the oldest three dropped");
}

#[test]
fn table_shares_sockets_between_dups() {
    let mut t = UdpTable::default();
    t.entry(5).set_route(a("1.2.3.4:5"), Route::NotGcb, Instant::now());
    assert!(t.alias(5, 9));
    assert!(!t.alias(6, 7));
    assert!(t.get(9).unwrap().route(a("1.2.3.4:5"), Instant::now()).is_some());
    assert!(t.remove(5).is_none(), "still open through the dup");
    assert!(t.get(9).is_some());
    assert_eq!(t.sockets_mut().count(), 1);
    assert!(t.remove(9).is_some(), "the last fd takes the socket");
    assert!(t.is_empty() && t.sockets().count() == 0);
}

#[test]
fn a_punch_opens_only_from_its_target_and_backs_off() {
    let now = Instant::now();
    let mut s = UdpSocket::default();
    // The connector's side: the proxy it sends to, the listener's mapping;
    // its proof is 5, the listener's 50, the token (reported) 1.
    let (proxy, listener_at) = (a("203.0.113.10:20001"), a("198.51.100.1:7000"));
    s.set_route(proxy, Route::AsNamed, now);
    let punch = Some(Punch { expect: Token(50), report: Some((proxy, Token(1))), gap: Duration::from_millis(100), confirm: false, proven: false, yielded: false, ttl: Some(2) });
    let first = now + Duration::from_millis(200);
    s.start_hole(Hole { token: Token(5), target: listener_at, peer: proxy, next_try: first, tries_left: 3, expires: now + HOLE_ACK_TTL, punch });
    assert!(s.due_holes(now, Duration::ZERO).is_empty(), "the head start");
    let ms = Duration::from_millis;
    let mut at = first;
    for (gap, ttl) in [(100, Some(2)), (200, None)] {
        assert_eq!(s.due_holes(at, Duration::ZERO), vec![(Token(5), listener_at, ttl)], "its own proof goes out, the first with a low TTL");
        assert_eq!(s.next_hole_deadline(), Some(at + ms(gap)), "doubling");
        at += ms(gap);
    }
    // Neither a MakeHole's ack rule, nor a stranger, nor its own proof sent
    // back from the target (a stranger there who caught a Dummy), nor data
    // from the target opens it.
    assert_eq!(s.hole_acked(Token(50), listener_at, now), None, "not a MakeHole's");
    assert_eq!(s.punch_heard(Token(6), listener_at, false, now), None, "not our punch");
    assert_eq!(s.punch_heard(Token(1), listener_at, true, now), None, "the raw token is no proof");
    let stranger = a("203.0.113.66:7000");
    let nothing = Some(Heard { from_target: false, answer: Token(5), opened: None, announce: false });
    assert_eq!(s.punch_heard(Token(50), stranger, true, now), nothing);
    assert_eq!(s.punch_heard(Token(5), listener_at, false, now), nothing, "a replay of its own proof");
    assert_eq!(s.hole_heard(listener_at, now), None, "data from the mapping proves nothing");
    assert_eq!(s.name_of(listener_at), listener_at, "nor is it named as the peer");
    assert_eq!(s.route(proxy, now), Some(Route::AsNamed), "still relayed");
    assert_eq!(s.hole_heard(stranger, now), None);

    let heard = s.punch_heard(Token(50), listener_at, false, now).unwrap();
    assert!(heard.from_target && heard.answer == Token(5) && !heard.announce, "the listener's Dummy opens the connector, and is answered");
    assert_eq!(heard.opened.map(|h| (h.peer, h.punch.unwrap().report)), Some((proxy, Some((proxy, Token(1))))), "opened once, reported");
    assert_eq!(s.route(proxy, now), Some(Route::Direct(listener_at)));
    assert_eq!(s.name_of(listener_at), proxy, "the listener's datagrams are named as the proxy");
    assert_eq!(s.punch_heard(Token(50), listener_at, true, now), Some(Heard { from_target: true, answer: Token(5), opened: None, announce: false }), "a repeat is still ours, opens nothing");
    assert!(s.due_holes(at, Duration::ZERO).is_empty(), "no more Dummies once open");
}

#[test]
fn a_cancelled_punch_sends_and_opens_nothing() {
    let now = Instant::now();
    let mut s = UdpSocket::default();
    let mapping = a("198.51.100.2:40000");
    let punch = Some(Punch { expect: Token(70), report: None, gap: Duration::from_millis(200), confirm: true, proven: false, yielded: false, ttl: None });
    s.start_hole(Hole { token: Token(7), target: mapping, peer: mapping, next_try: now, tries_left: 4, expires: now + HOLE_ACK_TTL, punch });
    s.cancel_punch(Token(70));
    assert_eq!(s.holes.len(), 1, "only by its own proof");
    s.cancel_punch(Token(7));
    assert!(s.due_holes(now, Duration::ZERO).is_empty());
    assert_eq!(s.punch_heard(Token(70), mapping, true, now), None, "not ours any more");
    assert_eq!(s.route(mapping, now), None);
}

#[test]
fn a_connector_opened_by_an_ack_announces_it() {
    let now = Instant::now();
    let mut s = UdpSocket::default();
    let (proxy, listener_at) = (a("203.0.113.10:20001"), a("198.51.100.1:7000"));
    let punch = Some(Punch { expect: Token(50), report: None, gap: Duration::from_millis(100), confirm: false, proven: false, yielded: false, ttl: None });
    s.start_hole(Hole { token: Token(5), target: listener_at, peer: proxy, next_try: now, tries_left: 3, expires: now + HOLE_ACK_TTL, punch });
    let heard = s.punch_heard(Token(50), listener_at, true, now).unwrap();
    assert!(heard.opened.is_some() && heard.announce, "opened by the listener's ack: the listener is told");
    assert!(!s.punch_heard(Token(50), listener_at, true, now).unwrap().announce, "once");
}

#[test]
fn a_listeners_punch_opens_at_the_connectors_word() {
    let now = Instant::now();
    // The listener's side: the connector is named by its mapping.
    let mapping = a("198.51.100.2:40000");
    let fresh = || {
        let mut s = UdpSocket::default();
        let punch = Some(Punch { expect: Token(70), report: None, gap: Duration::from_millis(200), confirm: true, proven: false, yielded: false, ttl: None });
        s.start_hole(Hole { token: Token(7), target: mapping, peer: mapping, next_try: now, tries_left: 4, expires: now + HOLE_ACK_TTL, punch });
        s
    };
    // The connector's Dummy proves it, but it may still give up waiting.
    let mut s = fresh();
    assert_eq!(s.hole_heard(mapping, now), None, "data before its proof opens nothing");
    let heard = s.punch_heard(Token(70), mapping, false, now).unwrap();
    assert_eq!(heard, Heard { from_target: true, answer: Token(7), opened: None, announce: false }, "answered, not opened");
    assert_eq!(s.route(mapping, now), None, "still relayed");
    let made = s.hole_heard(mapping, now).expect("its data straight from its mapping, after its proof");
    assert_eq!((made.peer, made.punch.unwrap().report), (mapping, None));
    assert_eq!(s.route(mapping, now), Some(Route::Direct(mapping)));
    assert_eq!(s.punch_heard(Token(70), mapping, false, now).map(|h| h.opened), Some(None), "its Dummies still answered");

    // Its ack says it is open.
    let mut s = fresh();
    let heard = s.punch_heard(Token(70), mapping, true, now).unwrap();
    assert!(heard.opened.is_some() && !heard.announce);
    assert_eq!(s.route(mapping, now), Some(Route::Direct(mapping)));
}

#[test]
fn a_listener_yields_after_an_unanswered_punch_and_keeps_what_worked() {
    let now = Instant::now();
    let ip = "198.51.100.2".parse().unwrap();
    let hole = |token: u64, target: &str, yielded: bool| {
        let punch = Some(Punch { expect: Token(token * 10), report: None, gap: Duration::from_millis(100), confirm: true, proven: false, yielded, ttl: None });
        Hole { token: Token(token), target: a(target), peer: a(target), next_try: now, tries_left: 1, expires: now + HOLE_ACK_TTL, punch }
    };
    let mut t = UdpTable::default();
    assert!(!t.listener_yields(3, ip), "the listener first, at first");
    t.entry(3).start_hole(hole(1, "198.51.100.2:40000", false));
    assert!(!t.listener_yields(3, ip), "one still running tells nothing");
    assert_eq!(t.entry(3).due_holes(now, Duration::ZERO).len(), 1, "its last Dummy");
    assert!(t.listener_yields(3, ip), "unanswered: the connector first next time");
    assert!(!t.listener_yields(3, "198.51.100.3".parse().unwrap()), "per connector IP");

    t.entry(3).start_hole(hole(2, "198.51.100.2:40001", true));
    t.entry(3).punch_heard(Token(20), a("198.51.100.2:40001"), true, now).expect("ours").opened.expect("opened");
    assert!(t.listener_yields(3, ip), "that worked: kept");
    t.entry(3).start_hole(hole(3, "198.51.100.2:40002", true));
    t.entry(3).due_holes(now, Duration::ZERO);
    assert!(!t.listener_yields(3, ip), "unanswered again: the listener first again");

    // A new socket (iperf3's server binds one per test) knows what the
    // closed one learnt.
    t.entry(3).start_hole(hole(4, "198.51.100.2:40003", false));
    t.entry(3).due_holes(now, Duration::ZERO);
    assert!(t.listener_yields(3, ip));
    assert!(!t.listener_yields(4, ip), "another live socket's is its own");
    assert!(t.remove(3).is_some());
    assert!(t.listener_yields(4, ip) && t.listener_yields(5, ip), "kept past the socket's close");
}
