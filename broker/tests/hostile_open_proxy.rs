//! The broker is never an open proxy or a reflector: it brokers and relays
//! only to registered listeners, sends a client's datagrams only to peers
//! that reached that client first, and answers only the source of a
//! request, whatever addresses the request names.

mod hostile_support;
mod support;

use std::net::{SocketAddrV4, UdpSocket};

use hostile_support::{connect_msg, counters, expect_moved, expect_reversal, heartbeat, state};
use proto::gcb::{self, Decision, Message, MgmtInfo, Token};
use proto::header::MAX_UDP_PAYLOAD;
use proto::Proto;
use support::udp::{recv, sock, v4, Client, QUIET};
use support::*;

#[test]
fn connect_to_anything_but_a_registered_proxy_is_not_registered() {
    let b = Broker::start(&[]);
    let mut listener = Mgmt::new(b.addr);
    let proxy = listener.register_ok("10.0.0.5:2525", "10.0.0.5");
    let free_in_range = (b.range.0..=b.range.1)
        .map(|p| SocketAddrV4::new(*proxy.ip(), p))
        .find(|a| *a != proxy)
        .unwrap();
    let before = (state(&b), counters(&b));

    let mut connector = Mgmt::new(b.addr);
    let targets = [
        (Proto::Tcp, a("203.0.113.99:80")),
        (Proto::Tcp, b.addr),
        (Proto::Tcp, free_in_range),
        (Proto::Tcp, a("10.0.0.5:2525")), // the listener's real address
        (Proto::Udp, proxy),              // registered, but for TCP
    ];
    for (proto, target) in targets {
        let reply = connector.request(&Message::Connect {
            proto,
            target,
            connector: connector.addr(),
            connector_id: None,
            realm: None,
            features: proto::gcb::Features::NONE,
            asked_from_port: 0,
        });
        assert_eq!(
            reply,
            Message::ConnectDecision(Decision::NotRegistered),
            "{proto} {target}"
        );
    }
    assert!(listener.recv(QUIET).is_none(), "the listener was commanded");
    expect_moved(
        &b,
        &before.1,
        &[("connects", 5), ("decided_not_registered", 5)],
    );
    assert_eq!(state(&b), before.0);
}

#[test]
fn a_client_cannot_send_through_its_proxy_to_peers_that_never_wrote() {
    let b = Broker::start(&[]);
    let c = Client::register(&b, "10.0.0.6", None);
    c.dummy(&b);
    let bystander = sock();
    let command_port = b.addr;
    let before = (state(&b), counters(&b));

    // The client names a bystander, the broker's own command port, its own
    // proxy and its own socket: none of them has written to the proxy.
    for target in [v4(&bystander), command_port, c.proxy, v4(&c.app)] {
        c.send_to_peer(target, b"unsolicited");
    }
    // A header cut short, and a header with no payload behind it.
    c.app.send_to(&[0u8; 5], c.proxy).unwrap();
    c.send_to_peer(v4(&bystander), b"");
    // A peer's datagram too large to relay behind a header.
    let peer = sock();
    peer.send_to(&vec![7u8; MAX_UDP_PAYLOAD], c.proxy).unwrap();
    // A Dummy with a wrong token from a stranger does not move the path.
    let wrong = gcb::encode(
        &Message::Dummy {
            token: Token(c.token.0 ^ 1),
        },
        3,
    )
    .unwrap();
    peer.send_to(&wrong, c.proxy).unwrap();

    expect_moved(
        &b,
        &before.1,
        &[
            ("udp_refused", 5),
            ("udp_malformed", 1),
            ("udp_oversize", 1),
            ("udp_dummies_dropped", 1),
        ],
    );
    assert!(
        recv(&bystander, QUIET).is_none(),
        "the bystander got a datagram"
    );
    assert!(recv(&peer, QUIET).is_none(), "the stranger got an answer");
    assert!(recv(&c.app, QUIET).is_none(), "junk reached the client");
    assert_eq!(state(&b), before.0);

    // Once the peer has written, replies to it go through.
    peer.send_to(b"hello", c.proxy).unwrap();
    assert_eq!(c.recv_relayed(), (v4(&peer), b"hello".to_vec()));
    c.send_to_peer(v4(&peer), b"welcome");
    assert_eq!(
        recv(&peer, support::WAIT),
        Some((b"welcome".to_vec(), c.proxy))
    );
    assert!(recv(&bystander, QUIET).is_none());
}

#[test]
fn a_registration_naming_a_third_party_never_sends_it_anything() {
    let b = Broker::start(&[]);
    let victim = UdpSocket::bind("127.0.0.3:0").unwrap();
    let victim_addr = v4(&victim);
    let mut m = Mgmt::new(b.addr);
    let reply = m.request(&Message::Register {
        proto: Proto::Tcp,
        local: a("10.0.0.5:2525"),
        realm: Some("lab".into()),
        desired_port: None,
        port_required: false,
        mgmt: MgmtInfo::new(victim_addr, 1, 10, "reflector"),
    });
    let Message::RegisterOk {
        proxy, observed, ..
    } = reply
    else {
        panic!("{reply:?}")
    };
    assert_eq!(
        observed,
        m.addr(),
        "the broker knows the client by its source"
    );

    // A public connector: the broker commands the listener, at the
    // request's source, never at the address the request named.
    let mut connector = Mgmt::new(b.addr);
    let decision = connector.request(&connect_msg(proxy, connector.addr()));
    expect_reversal(&decision, &mut m);
    assert_eq!(m.request(&heartbeat(proxy)), Message::HeartbeatAck);
    assert!(
        recv(&victim, QUIET).is_none(),
        "the third party got a datagram"
    );
    // The status names the source as the client's address, not the victim.
    let tables = state(&b);
    assert!(
        tables.contains(&format!("observed=Str(\"{}\")", m.addr())),
        "{tables}"
    );
    assert!(!tables.contains(&victim_addr.to_string()), "{tables}");
}
