//! Hostile input on the broker's UDP command port: junk of every kind,
//! replays from the sender and from other sources, and a flood. Each test
//! checks that the broker drops and counts it under the right counter (and
//! no other), that its tables are exactly as before, and that it still
//! answers valid requests afterwards.

mod hostile_support;
mod support;

use std::net::{SocketAddrV4, UdpSocket};
use std::time::Duration;

use hostile_support::{
    assert_error, connect_msg, counters, expect_moved, expect_reversal, heartbeat, moved, settled,
    state,
};
use proto::gcb::{self, ErrorCode, Message, Token};
use proto::header::MAX_UDP_PAYLOAD;
use proto::{Endpoint, Proto};
use support::*;

/// How long to listen before concluding the broker sent nothing.
const QUIET: Duration = Duration::from_millis(300);

/// A socket on loopback address `ip`, aimed at the broker.
fn stranger(b: &Broker, ip: &str) -> Mgmt {
    let mut m = Mgmt::new(b.addr);
    m.sock = UdpSocket::bind(format!("{ip}:0")).unwrap();
    m
}

/// A broker with one private TCP listener and one UDP client registered.
fn populated() -> (Broker, Mgmt, SocketAddrV4, support::udp::Client) {
    let b = Broker::start(&["--rate-limit", "0"]);
    let mut m = Mgmt::new(b.addr);
    let proxy = m.register_ok("10.0.0.5:2525", "10.0.0.5");
    let c = support::udp::Client::register(&b, "10.0.0.6", None);
    c.dummy(&b);
    (b, m, proxy, c)
}

#[test]
fn junk_is_dropped_and_counted_by_class_and_changes_nothing() {
    let (b, mut m, proxy, _c) = populated();
    let before = (state(&b), counters(&b));

    let valid = gcb::encode(&heartbeat(proxy), 77).unwrap();
    let mut wrong_magic = valid.clone();
    wrong_magic[3] = b'9';
    let mut bad_flags = valid.clone();
    bad_flags[6] = 0x01; // the response bit on a request
    let mut unknown_kind = valid.clone();
    unknown_kind[5] = 0x7e;
    let mut trailing = valid.clone();
    trailing.resize(MAX_UDP_PAYLOAD, 0xAB);
    let junk: [(&[u8], &str); 9] = [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not_gcb"),
        (&wrong_magic, "not_gcb"),
        (&[0xAB; MAX_UDP_PAYLOAD], "not_gcb"),
        (&valid[..10], "truncated"),
        (&valid[..valid.len() - 1], "truncated"),
        (&trailing, "oversize"),
        (&bad_flags, "invalid"),
        (&unknown_kind, "invalid"),
        (&[], "truncated"),
    ];
    let attacker = stranger(&b, "127.0.0.2");
    for (bytes, class) in junk {
        // The test's own view of each class, so the table above is honest.
        let mut seen = proto::drops::DecodeDrops::default();
        seen.count(&gcb::decode(bytes).expect_err("junk does not decode"));
        let got = [
            ("not_gcb", seen.not_protocol),
            ("truncated", seen.truncated),
            ("oversize", seen.oversize),
            ("invalid", seen.invalid),
        ];
        assert!(got.contains(&(class, 1)), "{} bytes: {got:?}", bytes.len());
        attacker.send_raw(bytes);
    }
    expect_moved(
        &b,
        &before.1,
        &[
            ("malformed", 9),
            ("malformed_not_gcb", 3),
            ("malformed_truncated", 3),
            ("malformed_oversize", 1),
            ("malformed_invalid", 2),
        ],
    );
    // Counted, so handled: an answer would be queued by now.
    assert!(attacker.recv(QUIET).is_none(), "junk gets no answer");

    // Well-formed but not for the broker: a newer version is told so, a
    // client-bound request is refused, a stray reply is dropped silently.
    let counted = counters(&b);
    let mut newer = valid.clone();
    newer[4] = 2;
    attacker.send_raw(&newer);
    let (id, reply, _) = attacker.recv(WAIT).expect("a version reply");
    assert_eq!(id, 77);
    assert_error(&reply, ErrorCode::VersionMismatch);
    let dummy = gcb::encode(&Message::Dummy { token: Token(5) }, 78).unwrap();
    attacker.send_raw(&dummy);
    let (_, reply, _) = attacker.recv(WAIT).expect("an Unsupported reply");
    assert_error(&reply, ErrorCode::Unsupported);
    attacker.send_raw(&gcb::encode(&Message::Ack, 4242).unwrap());
    expect_moved(
        &b,
        &counted,
        &[
            ("version_mismatch", 1),
            ("unsupported", 1),
            ("stray_replies", 1),
        ],
    );
    assert!(attacker.recv(QUIET).is_none(), "a stray Ack gets no answer");

    assert_eq!(state(&b), before.0, "junk changed the broker's tables");
    assert_eq!(m.request(&heartbeat(proxy)), Message::HeartbeatAck);
}

#[test]
fn replays_are_answered_from_the_cache_or_refused_to_strangers() {
    let (b, _, _, _c) = populated();
    // A private listener in a named realm: a public connector gets a reversal.
    let mut m = Mgmt::new(b.addr);
    let proxy = match m.register("10.0.0.7:2525", "10.0.0.7", Some("lab"), None, 10) {
        Message::RegisterOk { proxy, .. } => proxy,
        other => panic!("{other:?}"),
    };

    // A Connect that makes the broker command the listener, sent twice with
    // the same id: one decision, one command, the same reply bytes.
    let connector = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = match connector.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    let mut conn = Mgmt::new(b.addr);
    conn.sock = connector;
    let connect = connect_msg(proxy, me);
    let before = counters(&b);
    let (first, decision) = conn.request_with_id(&connect, 900);
    expect_reversal(&decision, &mut m);
    let (again, _) = conn.request_with_id(&connect, 900);
    assert_eq!(
        again, first,
        "a replay gets the cached reply, not a second token"
    );
    expect_moved(
        &b,
        &before,
        &[("connects", 1), ("decided_reversal", 1), ("duplicates", 1)],
    );
    assert!(m.recv(QUIET).is_none(), "the listener is commanded once");

    // The listener's own Heartbeat and an Unregister it might send,
    // replayed from another host and from another port of its host: not
    // theirs to refresh or remove.
    let tables = state(&b);
    let before = counters(&b);
    let hb = gcb::encode(&heartbeat(proxy), 901).unwrap();
    let unregister = gcb::encode(
        &Message::Unregister {
            proxy: Endpoint::new(Proto::Tcp, proxy),
        },
        902,
    )
    .unwrap();
    for ip in ["127.0.0.2", "127.0.0.1"] {
        let other = stranger(&b, ip);
        other.send_raw(&unregister);
        let (_, reply, _) = other.recv(WAIT).expect("an Unregister reply");
        assert_error(&reply, ErrorCode::NotRegistered);
    }
    let far = stranger(&b, "127.0.0.2");
    far.send_raw(&hb);
    let (_, reply, _) = far.recv(WAIT).expect("a Heartbeat reply");
    assert_eq!(
        reply,
        Message::ReregisterRequest {
            unknown: vec![Endpoint::new(Proto::Tcp, proxy)]
        }
    );
    assert_eq!(
        state(&b),
        tables,
        "replays from strangers changed the tables"
    );
    assert_eq!(moved(&before, &counters(&b)), Default::default());

    // The owner still holds its registration and may end it.
    assert_eq!(m.request(&heartbeat(proxy)), Message::HeartbeatAck);
    let unregister = Message::Unregister {
        proxy: Endpoint::new(Proto::Tcp, proxy),
    };
    assert_eq!(m.request(&unregister), Message::Ack);
}

#[test]
fn a_flood_is_rate_limited_and_others_are_still_served() {
    let b = Broker::start(&[]); // the default limit, 200 commands/s per IP
    let mut m = Mgmt::new(b.addr);
    let proxy = m.register_ok("10.0.0.5:2525", "10.0.0.5");
    let before = (state(&b), counters(&b));

    let flood = stranger(&b, "127.0.0.3");
    let sent = 20_000u64;
    for i in 0..sent {
        // A full socket buffer (the broker is behind) only loses datagrams.
        let _ = flood.sock.send_to(b"\x00flood\x00", b.addr);
        if i % 1000 == 999 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // Another host is served during the aftermath.
    let mut other = stranger(&b, "127.0.0.4");
    assert_eq!(
        other.request(&heartbeat(proxy)),
        Message::ReregisterRequest {
            unknown: vec![Endpoint::new(Proto::Tcp, proxy)]
        }
    );

    // Every flood datagram that arrived is either rate-limited or dropped
    // as junk, and nothing else moved.
    let settled = settled(&b);
    let got = moved(&before.1, &settled);
    let n = |k: &str| got.get(k).copied().unwrap_or(0);
    let keys: Vec<&str> = got.keys().map(String::as_str).collect();
    for k in &keys {
        assert!(
            ["malformed", "malformed_not_gcb", "rate_limited"].contains(k),
            "{k} moved during a flood of junk: {got:?}"
        );
    }
    assert_eq!(n("malformed"), n("malformed_not_gcb"));
    assert!(
        n("rate_limited") > 0,
        "a flood of {sent} datagrams was not limited: {got:?}"
    );
    assert!(n("malformed") + n("rate_limited") <= sent);
    assert_eq!(state(&b), before.0, "the flood changed the broker's tables");
    assert_eq!(m.request(&heartbeat(proxy)), Message::HeartbeatAck);
}
