//! Every row of the decision table (`decide`), through `Connect` requests
//! to the core, for TCP and UDP: the decision, the command the listener is
//! sent, the pairing left waiting, and how the pairing completes; then the
//! refusals (not registered, the relay limit).

use std::net::SocketAddrV4;

use proto::gcb::{Decision, ErrorCode, Message, Role, Token};
use proto::Proto;

use super::harness::{a, Bed, Fate, Proc, BROKER};

fn decision(reply: Message) -> Decision {
    match reply {
        Message::ConnectDecision(d) => d,
        other => panic!("not a decision: {other:?}"),
    }
}

#[test]
fn row_1_a_public_listener_is_dialed_directly_by_anyone() {
    let mut bed = Bed::new();
    let listener = Proc::public(1);
    for proto in [Proto::Tcp, Proto::Udp] {
        let proxy = bed.register(listener, proto, 8080);
        for c in [Proc::public(2), Proc::in_a(3), Proc::in_b(4)] {
            let d = decision(bed.ask(c.mgmt, c.connect(proto, proxy)));
            assert_eq!(
                d,
                Decision::Direct {
                    addr: listener.local(8080)
                }
            );
        }
    }
    assert_eq!(bed.counter("decided_direct"), 6);
    assert!(bed.commands.is_empty(), "nobody is commanded");
    assert_eq!(bed.engine.pairings.len(), 0);
}

#[test]
fn row_2_the_same_realm_dials_the_local_address() {
    let mut bed = Bed::new();
    let listener = Proc::in_a(1);
    let proxy = bed.register(listener, Proto::Tcp, 8080);
    let same = decision(bed.ask(Proc::in_a(2).mgmt, Proc::in_a(2).connect(Proto::Tcp, proxy)));
    assert_eq!(
        same,
        Decision::SameRealm {
            addr: listener.local(8080)
        }
    );
    // A connector on the NAT gateway itself: public, and in the realm.
    let gateway = Proc {
        mgmt: a("198.51.100.1:6000"),
        own: "198.51.100.1".parse().unwrap(),
        pid: 9,
    };
    let d = decision(bed.ask(gateway.mgmt, gateway.connect(Proto::Tcp, proxy)));
    assert_eq!(
        d,
        Decision::SameRealm {
            addr: listener.local(8080)
        }
    );
    // Realms named alike match whatever the NATs.
    let named = Proc::in_b(3);
    let udp = match bed.ask(
        named.mgmt,
        Message::Register {
            proto: Proto::Udp,
            local: named.local(9000),
            realm: Some("lab".into()),
            desired_port: None,
            port_required: false,
            mgmt: named.info(),
        },
    ) {
        Message::RegisterOk { proxy, .. } => proxy,
        other => panic!("{other:?}"),
    };
    let c = Proc::in_a(4);
    let connect = Message::Connect {
        proto: Proto::Udp,
        target: udp,
        connector: c.local(40000),
        connector_id: None,
        realm: Some("lab".into()),
        features: proto::gcb::Features::NONE,
        asked_from_port: 0,
    };
    let d = decision(bed.ask(c.mgmt, connect));
    assert_eq!(
        d,
        Decision::SameRealm {
            addr: named.local(9000)
        }
    );
    assert_eq!(bed.counter("decided_same_realm"), 3);
    assert!(bed.commands.is_empty());
}

#[test]
fn row_3_a_private_listener_is_reversed_to_a_public_connector() {
    let mut bed = Bed::new();
    let (listener, c) = (Proc::in_a(1), Proc::public(2));
    let proxy = bed.register(listener, Proto::Tcp, 8080);
    let Decision::Reversal { token } = decision(bed.ask(c.mgmt, c.connect(Proto::Tcp, proxy)))
    else {
        panic!("not a reversal")
    };
    let (id, cmd) = bed
        .last_command(listener.mgmt)
        .expect("the listener is commanded");
    let connector = c.local(40000);
    assert_eq!(
        cmd,
        Message::ReverseConnect {
            token,
            connector,
            peer: connector,
            proxy,
        }
    );
    assert_eq!(
        bed.engine.pairings.get(token).map(|p| p.connector_cmd),
        Some(Some(c.mgmt))
    );
    // The listener dials; its Ack ends what the broker has to do.
    bed.answer(listener.mgmt, id, Message::Ack);
    assert_eq!(bed.engine.pairings.len(), 0);

    // UDP: the listener punches a hole towards the connector's identity.
    let udp = bed.register(listener, Proto::Udp, 9000);
    let id_addr = a("203.0.113.20:41000");
    let connect = Message::Connect {
        proto: Proto::Udp,
        target: udp,
        connector: c.local(40000),
        connector_id: Some(id_addr),
        realm: None,
        features: proto::gcb::Features::NONE,
        asked_from_port: 0,
    };
    let Decision::Reversal { token } = decision(bed.ask(c.mgmt, connect)) else {
        panic!("not a reversal")
    };
    let (_, cmd) = bed.last_command(listener.mgmt).unwrap();
    assert_eq!(
        cmd,
        Message::MakeHole {
            token,
            target: connector,
            peer: id_addr,
            proxy: udp,
        }
    );
    assert_eq!(bed.counter("decided_reversal"), 2);
}

#[test]
fn row_4_another_realm_is_relayed_tcp_by_a_pairing_udp_by_the_proxy() {
    let mut bed = Bed::new();
    let (listener, c) = (Proc::in_a(1), Proc::in_b(2));
    let proxy = bed.register(listener, Proto::Tcp, 8080);
    let d = decision(bed.ask(c.mgmt, c.connect(Proto::Tcp, proxy)));
    let Decision::Relay { via, token } = d else {
        panic!("not a relay: {d:?}")
    };
    assert_eq!(
        via,
        a(BROKER),
        "the rendezvous is the command port's address"
    );
    // Until its rendezvous connection arrives, the connector is best known
    // by its public IP and its own port.
    let guess = SocketAddrV4::new(*c.mgmt.ip(), 40000);
    let (id, cmd) = bed.last_command(listener.mgmt).unwrap();
    assert_eq!(
        cmd,
        Message::RelayConnect {
            token,
            broker: via,
            peer: guess,
            proxy,
        }
    );
    bed.answer(listener.mgmt, id, Message::Ack);
    assert_eq!(
        bed.engine.pairings.relaying(),
        1,
        "an Ack does not end a relay"
    );
    let from_c = a("198.51.100.2:33000");
    let sc = bed.hello(token, Role::Connector, from_c);
    assert!(bed.relays.is_empty(), "waits for the listener");
    let sl = bed.hello(token, Role::Listener, a("198.51.100.1:34000"));
    let r = &bed.relays[0];
    assert!(r.gcb && r.token == token && r.proxy == proxy);
    assert_eq!((r.connector.stream, r.listener.stream), (sc, sl));
    assert_eq!(
        r.connector_id, from_c,
        "the listener learns the real address"
    );
    assert_eq!(bed.fates.len(), 2);
    assert_eq!((bed.engine.relays, bed.counter("relays_opened")), (1, 1));

    // UDP needs no pairing: the connector sends to the proxy socket.
    let udp = bed.register(listener, Proto::Udp, 9000);
    let before = bed.commands.len();
    let d = decision(bed.ask(c.mgmt, c.connect(Proto::Udp, udp)));
    assert_eq!(
        d,
        Decision::Relay {
            via: udp,
            token: Token(0)
        }
    );
    assert_eq!(bed.commands.len(), before, "no command for a UDP relay");
    assert_eq!(bed.counter("decided_relay"), 2);
}

#[test]
fn a_target_nobody_registered_is_not_registered() {
    let mut bed = Bed::new();
    let c = Proc::public(2);
    let d = decision(bed.ask(c.mgmt, c.connect(Proto::Tcp, a("203.0.113.10:20005"))));
    assert_eq!(d, Decision::NotRegistered);
    // A UDP registration is not a TCP one.
    let proxy = bed.register(Proc::in_a(1), Proto::Udp, 9000);
    let d = decision(bed.ask(c.mgmt, c.connect(Proto::Tcp, proxy)));
    assert_eq!(d, Decision::NotRegistered);
    assert_eq!(bed.counter("decided_not_registered"), 2);
    assert_eq!(bed.counter("connects"), 2);
}

#[test]
fn the_relay_limit_counts_waiting_pairings_and_running_relays() {
    let mut limits = super::harness::limits();
    limits.max_relays = 1;
    let mut bed = Bed::with(limits);
    let (listener, c) = (Proc::in_a(1), Proc::in_b(2));
    let proxy = bed.register(listener, Proto::Tcp, 8080);
    let Decision::Relay { token, .. } = decision(bed.ask(c.mgmt, c.connect(Proto::Tcp, proxy)))
    else {
        panic!()
    };
    let full = |bed: &mut Bed| match bed.ask(c.mgmt, c.connect(Proto::Tcp, proxy)) {
        Message::Error { code, .. } => code == ErrorCode::LimitReached,
        _ => false,
    };
    assert!(full(&mut bed), "a waiting pairing takes the slot");
    let regular = bed.regular(proxy, a("198.51.100.9:7000"));
    assert_eq!(
        bed.fates[&regular],
        Fate::Aborted,
        "so does it for a regular connector"
    );
    bed.hello(token, Role::Connector, a("198.51.100.2:33000"));
    bed.hello(token, Role::Listener, a("198.51.100.1:34000"));
    assert!(full(&mut bed), "and so does the running relay");
    bed.engine.relay_ended([10, 20]);
    assert!(!full(&mut bed), "until it ends");
    assert_eq!(bed.engine.counters.bytes_closed, [10, 20]);
    assert_eq!(bed.counter("refused"), 3);
}

#[test]
fn a_pair_completing_past_a_lowered_limit_is_refused_both_ways() {
    let mut bed = Bed::new();
    let (listener, c) = (Proc::in_a(1), Proc::in_b(2));
    let proxy = bed.register(listener, Proto::Tcp, 8080);
    let mut tokens = Vec::new();
    for _ in 0..2 {
        match decision(bed.ask(c.mgmt, c.connect(Proto::Tcp, proxy))) {
            Decision::Relay { token, .. } => tokens.push(token),
            other => panic!("{other:?}"),
        }
    }
    let mut config = bed.engine.config().clone();
    config.limits.max_relays = 1;
    bed.engine.reconfigure(config, None);
    let mut streams = Vec::new();
    for t in &tokens {
        streams.push(bed.hello(*t, Role::Connector, a("198.51.100.2:33000")));
        streams.push(bed.hello(*t, Role::Listener, a("198.51.100.1:34000")));
    }
    assert_eq!(bed.relays.len(), 1);
    let refused = Fate::Rejected(ErrorCode::LimitReached);
    assert_eq!(
        (bed.fates[&streams[2]], bed.fates[&streams[3]]),
        (refused, refused)
    );
    assert_eq!(bed.engine.relays, 1);
}

#[test]
fn a_regular_connector_is_parked_until_the_listener_comes() {
    let mut bed = Bed::new();
    let listener = Proc::in_a(1);
    let proxy = bed.register(listener, Proto::Tcp, 8080);
    let from = a("198.51.100.9:7000");
    let parked = bed.regular(proxy, from);
    assert!(bed.fates.is_empty(), "parked, unread");
    let (_, cmd) = bed.last_command(listener.mgmt).unwrap();
    let Message::RelayConnect {
        token,
        broker,
        peer,
        proxy: p,
    } = cmd
    else {
        panic!("{cmd:?}")
    };
    assert_eq!((broker, peer, p), (a(BROKER), from, proxy));
    let l = bed.hello(token, Role::Listener, a("198.51.100.1:34000"));
    let r = &bed.relays[0];
    assert!(!r.gcb, "a regular connector is told nothing");
    assert_eq!(
        (r.connector.stream, r.listener.stream, r.connector_id),
        (parked, l, from)
    );
    // A connection to a proxy address nobody holds any more is reset.
    let stray = bed.regular(a("203.0.113.10:30000"), from);
    assert_eq!(bed.fates[&stray], Fate::Aborted);
    assert_eq!(bed.counter("regular_accepted"), 2);
}

#[test]
fn hellos_the_pairing_does_not_expect_are_rejected() {
    let mut bed = Bed::new();
    let unknown = bed.hello(Token(77), Role::Connector, a("198.51.100.2:1"));
    assert_eq!(bed.fates[&unknown], Fate::Rejected(ErrorCode::UnknownToken));
    let (listener, c) = (Proc::in_a(1), Proc::in_b(2));
    let proxy = bed.register(listener, Proto::Tcp, 8080);
    let Decision::Relay { token, .. } = decision(bed.ask(c.mgmt, c.connect(Proto::Tcp, proxy)))
    else {
        panic!()
    };
    bed.hello(token, Role::Connector, a("198.51.100.2:2"));
    let twice = bed.hello(token, Role::Connector, a("198.51.100.2:3"));
    assert_eq!(bed.fates[&twice], Fate::Rejected(ErrorCode::UnknownToken));
    assert_eq!(bed.counter("rendezvous_rejected"), 2);
}
