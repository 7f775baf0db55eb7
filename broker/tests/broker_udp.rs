//! End-to-end tests of `gcb-broker`'s UDP side on loopback: a fake client
//! (management socket plus an application UDP socket) built on the proto
//! crate, and plain UDP sockets as regular peers. Registration and the
//! data path (Dummy → DummyAck), relaying both ways through the one proxy
//! socket with the 12-byte header, refusals and their counters, rule
//! expiry and re-creation, the rule cap, and the Connect decisions.

mod support;

use std::net::SocketAddrV4;
use std::time::Duration;

use proto::gcb::{self, Decision, Message, Token, UdpRelayHeader, MAX_RELAY_PAYLOAD};
use proto::{Endpoint, Proto};
use support::udp::*;
use support::*;

fn size(i: usize) -> usize {
    match i % 100 {
        0 => i / 100,                    // tiny, the first one empty
        50 => MAX_RELAY_PAYLOAD - i % 7, // near the largest
        _ => (i * 97) % 1500,
    }
}

#[test]
fn register_dummy_and_relay_both_ways() {
    let mut b = Broker::start(&[]);
    let mut c = Client::register(&b, "127.0.0.1", None);
    assert!(b.in_range(c.proxy.port()), "{}", c.proxy);
    b.expect_line(&format!("registered udp {} of broker-test", v4(&c.app)));
    // A TCP registration may have the same port number.
    let tcp = c.mgmt.register(
        "127.0.0.1:7777",
        "127.0.0.1",
        None,
        Some(c.proxy.port()),
        10,
    );
    assert!(matches!(tcp, Message::RegisterOk { proxy, udp_token: None, .. } if proxy == c.proxy));
    // Registering the UDP socket again keeps the proxy and the token.
    let again = c.mgmt.register_proto(
        Proto::Udp,
        &v4(&c.app).to_string(),
        "127.0.0.1",
        None,
        None,
        10,
    );
    assert!(
        matches!(again, Message::RegisterOk { proxy, udp_token: Some(t), .. } if proxy == c.proxy && t == c.token)
    );

    // Before the client's Dummy the broker has nowhere to relay to.
    let peer = sock();
    peer.send_to(b"too early", c.proxy).unwrap();
    expect_counter(&b, "udp_no_path", 1);

    c.dummy(&b);
    b.expect_line(&format!("udp {}: data path is {}", c.proxy, v4(&c.app)));
    let hb = Message::Heartbeat {
        held: vec![Endpoint::new(Proto::Udp, c.proxy)],
    };
    assert_eq!(c.mgmt.request(&hb), Message::HeartbeatAck);
    c.dummy(&b); // with every heartbeat: same path

    // 1,000 datagrams of varying sizes, in bursts, arrive whole and in order.
    let mut sent = 0;
    while sent < 1000 {
        let burst: Vec<usize> = (sent..(sent + 8).min(1000)).collect();
        for &i in &burst {
            peer.send_to(&pattern(size(i), i as u8), c.proxy).unwrap();
        }
        for &i in &burst {
            let (from, payload) = c.recv_relayed();
            assert_eq!(from, v4(&peer));
            assert_eq!(payload.len(), size(i), "datagram {i}");
            assert_eq!(payload, pattern(size(i), i as u8), "datagram {i}");
        }
        sent += burst.len();
    }
    b.expect_line(&format!("udp rule created: {} <-> {}", v4(&peer), c.proxy));

    // Replies reach the peer from the proxy address, header stripped.
    for i in 0..50 {
        let data = pattern(size(i * 7 + 1), i as u8);
        c.send_to_peer(v4(&peer), &data);
        let (got, src) = recv(&peer, WAIT).expect("a reply");
        assert_eq!((src, got), (c.proxy, data));
    }

    // Never an open relay: a peer that has not sent gets nothing.
    let stranger = sock();
    c.send_to_peer(v4(&stranger), b"unsolicited");
    expect_counter(&b, "udp_refused", 1);
    assert!(recv(&stranger, QUIET).is_none());
    assert!(b.expect_line("refusing to relay").contains("WARN"));

    // Oversize from a peer; garbage (no header) from the client.
    peer.send_to(&vec![1u8; MAX_RELAY_PAYLOAD + 1], c.proxy)
        .unwrap();
    c.app.send_to(b"no header here", c.proxy).unwrap();
    // Dummy and DummyAck from a peer are not relayed to the client.
    peer.send_to(
        &gcb::encode(&Message::Dummy { token: Token(1) }, 1).unwrap(),
        c.proxy,
    )
    .unwrap();
    peer.send_to(
        &gcb::encode(&Message::DummyAck { token: c.token }, 1).unwrap(),
        c.proxy,
    )
    .unwrap();
    expect_counter(&b, "udp_oversize", 1);
    expect_counter(&b, "udp_malformed", 1);
    expect_counter(&b, "udp_dummies_dropped", 2);
    assert!(recv(&c.app, QUIET).is_none(), "nothing reached the client");
    // The peer did not get an ack for its forged Dummy either.
    assert!(recv(&peer, Duration::from_millis(50)).is_none());
    assert_eq!(counter(&b, "udp_relayed_to_client"), 1000);
    assert_eq!(counter(&b, "udp_relayed_to_peer"), 50);

    let (code, out, err) = b.query(false);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("udp {} local", c.proxy)), "{out}");
    assert!(out.contains(&format!("data path {}", v4(&c.app))), "{out}");
    assert!(out.contains("udp rules: 1"), "{out}");
    assert!(
        out.contains(&format!("{} <-> {}: 1000 datagrams", v4(&peer), c.proxy)),
        "{out}"
    );
    assert!(out.contains(" 50 ("), "{out}");
}

#[test]
fn the_data_path_follows_the_client() {
    let mut b = Broker::start(&[]);
    let c = Client::register(&b, "127.0.0.1", None);
    c.dummy(&b);
    // A wrong token from elsewhere changes nothing (and gets no ack).
    let dropped = counter(&b, "udp_dummies_dropped");
    let moved = sock();
    moved
        .send_to(
            &gcb::encode(
                &Message::Dummy {
                    token: Token(c.token.0 ^ 2),
                },
                5,
            )
            .unwrap(),
            c.proxy,
        )
        .unwrap();
    expect_counter(&b, "udp_dummies_dropped", dropped + 1);
    assert!(recv(&moved, QUIET).is_none());
    // The client's NAT mapping changed: its Dummy now comes from `moved`.
    c.dummy_from(&b, &moved, c.token);
    b.expect_line(&format!(
        "data path moved from {} to {}",
        v4(&c.app),
        v4(&moved)
    ));
    let peer = sock();
    peer.send_to(b"hello", c.proxy).unwrap();
    let (d, _) = recv(&moved, WAIT).expect("relayed to the new path");
    let (h, payload) = UdpRelayHeader::decode(&d).unwrap();
    assert_eq!((h.peer, payload), (v4(&peer), &b"hello"[..]));
    assert!(recv(&c.app, QUIET).is_none(), "the old path gets nothing");
    // The old path is now a stranger: what it sends is a peer's datagram.
    c.app.send_to(b"from the old path", c.proxy).unwrap();
    let (d, _) = recv(&moved, WAIT).unwrap();
    assert_eq!(UdpRelayHeader::decode(&d).unwrap().0.peer, v4(&c.app));
}

#[test]
fn idle_rules_expire_and_come_back_and_are_capped() {
    let mut b = Broker::start(&[
        "--udp-rule-idle-s",
        "1",
        "--udp-rules-per-registration",
        "2",
    ]);
    let c = Client::register(&b, "127.0.0.1", None);
    c.dummy(&b);
    let peers = [sock(), sock(), sock()];
    for p in &peers[..2] {
        p.send_to(b"hi", c.proxy).unwrap();
        assert_eq!(c.recv_relayed().0, v4(p));
    }
    // The third peer is over the cap: dropped, counted, warned.
    peers[2].send_to(b"hi", c.proxy).unwrap();
    assert!(b.expect_line("refusing new peer").contains("WARN"));
    expect_counter(&b, "udp_rule_cap", 1);
    assert!(recv(&c.app, QUIET).is_none());

    let p = &peers[0];
    b.expect_line(&format!("udp rule expired: {} <-> {}", v4(p), c.proxy));
    b.expect_line(&format!(
        "udp rule expired: {} <-> {}",
        v4(&peers[1]),
        c.proxy
    ));
    c.send_to_peer(v4(p), b"late");
    expect_counter(&b, "udp_refused", 1);
    assert!(
        recv(p, QUIET).is_none(),
        "the expired rule lets nothing out"
    );
    // The peer speaks again: the rule is made again, and the reply passes.
    p.send_to(b"again", c.proxy).unwrap();
    assert_eq!(c.recv_relayed(), (v4(p), b"again".to_vec()));
    c.send_to_peer(v4(p), b"welcome back");
    assert_eq!(recv(p, WAIT).unwrap(), (b"welcome back".to_vec(), c.proxy));
    assert_eq!(counter(&b, "udp_rules_created"), 3);
    assert!(counter(&b, "udp_rules_expired") >= 2);
}

fn connect(
    target: SocketAddrV4,
    connector: &str,
    id: Option<&str>,
    realm: Option<&str>,
) -> Message {
    Message::Connect {
        proto: Proto::Udp,
        target,
        connector: a(connector),
        connector_id: id.map(a),
        realm: realm.map(str::to_string),
        features: proto::gcb::Features::NONE,
        asked_from_port: 0,
    }
}

#[test]
fn connect_udp_decisions_follow_the_table() {
    let mut b = Broker::start(&[]);
    let public = Client::register(&b, "127.0.0.1", None);
    let mut private = Client::register(&b, "10.9.9.9", Some("lab"));
    let mut c = Mgmt::new(b.addr);

    let d = c.request(&connect(public.proxy, "10.1.1.1:5000", None, None));
    assert_eq!(
        d,
        Message::ConnectDecision(Decision::Direct {
            addr: v4(&public.app)
        })
    );

    let d = c.request(&connect(private.proxy, "10.1.1.1:5000", None, Some("lab")));
    assert_eq!(
        d,
        Message::ConnectDecision(Decision::SameRealm {
            addr: v4(&private.app)
        })
    );

    // Public connector: reversal, and the listener is asked to punch a hole.
    let d = c.request(&connect(
        private.proxy,
        "127.0.0.1:5001",
        Some("127.0.0.1:20001"),
        None,
    ));
    let Message::ConnectDecision(Decision::Reversal { token }) = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        private.mgmt.command(),
        Message::MakeHole {
            token,
            target: a("127.0.0.1:5001"),
            peer: a("127.0.0.1:20001"),
            proxy: private.proxy,
        }
    );
    b.expect_line("connect udp from");
    b.expect_line("MakeHole for");

    // Another realm: plain datagrams to the listener's proxy socket.
    let d = c.request(&connect(
        private.proxy,
        "10.1.1.1:5002",
        None,
        Some("elsewhere"),
    ));
    assert_eq!(
        d,
        Message::ConnectDecision(Decision::Relay {
            via: private.proxy,
            token: Token(0)
        })
    );
    let d = c.request(&connect(a("127.0.0.1:1"), "127.0.0.1:5003", None, None));
    assert_eq!(d, Message::ConnectDecision(Decision::NotRegistered));

    // Unregistering closes the proxy socket: nothing answers a Dummy.
    let ep = Endpoint::new(Proto::Udp, private.proxy);
    assert_eq!(
        private.mgmt.request(&Message::Unregister { proxy: ep }),
        Message::Ack
    );
    b.expect_line(&format!("unregistered udp {}", private.proxy));
    let bytes = gcb::encode(
        &Message::Dummy {
            token: private.token,
        },
        5,
    )
    .unwrap();
    private.app.send_to(&bytes, private.proxy).unwrap();
    assert!(recv(&private.app, QUIET).is_none());
}

/// `Register` of UDP `local` by process `pid`, asking for port `desired`.
fn register_as(
    m: &mut Mgmt,
    local: SocketAddrV4,
    pid: u32,
    desired: Option<u16>,
) -> (SocketAddrV4, Token) {
    let mgmt_local = SocketAddrV4::new([10, 0, 0, 12].into(), m.addr().port());
    let reply = m.request(&Message::Register {
        proto: Proto::Udp,
        local,
        realm: None,
        desired_port: desired,
        port_required: false,
        mgmt: gcb::MgmtInfo::new(mgmt_local, pid, 10, "reuseport"),
    });
    match reply {
        Message::RegisterOk {
            proxy,
            udp_token: Some(t),
            ..
        } => (proxy, t),
        other => panic!("register refused: {other:?}"),
    }
}

/// The UDP registrations in `query --json`: proxy, and each holder's pid
/// and management address, the freshest first.
fn udp_registrations(b: &Broker) -> Vec<(String, Vec<(u64, String)>)> {
    let regs = b.registrations();
    let s = |v: &testbed::json::Value, k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let n = |v: &testbed::json::Value, k: &str| match v.get(k) {
        Some(testbed::json::Value::Num(n)) => *n as u64,
        other => panic!("{k} {other:?}"),
    };
    let mut got: Vec<(String, Vec<(u64, String)>)> = regs
        .iter()
        .filter(|r| r.get("proto").and_then(|p| p.as_str()) == Some("udp"))
        .map(|r| {
            let holders = r
                .get("holders")
                .and_then(|h| h.as_array())
                .expect("holders");
            let holders = holders
                .iter()
                .map(|h| (n(h, "pid"), s(h, "mgmt")))
                .collect();
            // The registration's own fields are its freshest holder's.
            let first: &Vec<(u64, String)> = &holders;
            assert_eq!(Some(&(n(r, "pid"), s(r, "observed"))), first.first());
            (s(r, "proxy"), holders)
        })
        .collect();
    got.sort();
    got
}

/// Two processes holding one UDP socket (a forked child, or a program
/// handed it) share its registration: the same proxy address and token,
/// each heartbeating for itself, and one leaving leaves it to the other.
#[test]
fn two_processes_on_one_address_share_one_registration() {
    let mut b = Broker::start(&[]);
    let local = v4(&sock());
    let (mut first, mut second) = (Mgmt::new(b.addr), Mgmt::new(b.addr));
    let (p, t1) = register_as(&mut first, local, 100, None);
    // The second asks for the first one's port (as a child that inherited
    // it does); one handed the socket would ask for none.
    let (q, t2) = register_as(&mut second, local, 200, Some(p.port()));
    assert_eq!((q, t2), (p, t1), "one socket, one registration");
    b.expect_line(&format!(
        "udp {local} of reuseport[200] (mgmt {}) joins {p}: 2 holders",
        second.addr()
    ));
    let holders = |a: &[(u64, &Mgmt)]| {
        vec![(
            p.to_string(),
            a.iter()
                .map(|(pid, m)| (*pid, m.addr().to_string()))
                .collect::<Vec<_>>(),
        )]
    };
    assert_eq!(
        udp_registrations(&b),
        holders(&[(200, &second), (100, &first)])
    );
    // Heartbeats and registering again, in turn: both stay holders, the
    // one heard from last first.
    let heartbeat = Message::Heartbeat {
        held: vec![Endpoint::new(Proto::Udp, p)],
    };
    for _ in 0..3 {
        assert_eq!(second.request(&heartbeat), Message::HeartbeatAck);
        assert_eq!(register_as(&mut second, local, 200, None), (p, t1));
        assert_eq!(register_as(&mut first, local, 100, Some(p.port())), (p, t1));
        assert_eq!(first.request(&heartbeat), Message::HeartbeatAck);
    }
    assert_eq!(
        udp_registrations(&b),
        holders(&[(100, &first), (200, &second)])
    );
    // One closing leaves the other, with the same address.
    let bye = Message::Unregister {
        proxy: Endpoint::new(Proto::Udp, p),
    };
    assert_eq!(first.request(&bye), Message::Ack);
    b.expect_line(&format!(
        "udp {p}: holder reuseport[100] (mgmt {}) unregistered; 1 holders left",
        first.addr()
    ));
    assert_eq!(udp_registrations(&b), holders(&[(200, &second)]));
    assert_eq!(
        first.request(&heartbeat),
        Message::ReregisterRequest {
            unknown: vec![Endpoint::new(Proto::Udp, p)]
        },
        "no holder any more"
    );
    assert_eq!(second.request(&heartbeat), Message::HeartbeatAck);
    assert_eq!(second.request(&bye), Message::Ack);
    b.expect_line(&format!("unregistered udp {p}"));
    assert!(udp_registrations(&b).is_empty());
}
