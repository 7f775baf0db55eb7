//! UDP hole punching in the core (`engine::punch_udp`): a capable pair is
//! told `PunchUdp` / `PunchHole` with both mappings, the connector's
//! mapping is its registered socket's data path when it has one, each
//! reason not to punch leaves the relay as before, and only the
//! connector's own report counts as direct.

use std::net::SocketAddrV4;

use proto::gcb::{Decision, Features, Message, Token};
use proto::Proto;

use super::harness::{a, Bed, Proc};
use super::udp::dummy;
use crate::config::Punch;
use crate::engine::punch_udp::FRESH;
use crate::engine::UdpSend;

/// Where the listener's application socket is seen, through realm A's NAT.
const L_PATH: &str = "198.51.100.1:7000";

struct Setup {
    bed: Bed,
    listener: Proc,
    connector: Proc,
    proxy: SocketAddrV4,
}

/// A listener in realm A with a UDP socket registered offering `features`,
/// its data path known; a connector in realm B.
fn setup(punch: Punch, features: Features) -> Setup {
    let mut l = super::harness::limits();
    l.punch = punch;
    let mut bed = Bed::with(l);
    let (listener, connector) = (Proc::in_a(1), Proc::in_b(2));
    let mut msg = listener.register(Proto::Udp, 9000);
    if let Message::Register { mgmt, .. } = &mut msg {
        mgmt.features = features;
    }
    let Message::RegisterOk {
        proxy,
        udp_token: Some(token),
        ..
    } = bed.ask(listener.mgmt, msg)
    else {
        panic!("no udp registration")
    };
    assert_eq!(
        bed.udp_in(proxy, a(L_PATH), &dummy(token)).0,
        UdpSend::Nothing
    );
    Setup {
        bed,
        listener,
        connector,
        proxy,
    }
}

/// A UDP `Connect` from the connector's socket at port 40000, offering
/// `features`, sent from its management port (kept by its NAT).
fn connect(p: &Proc, target: SocketAddrV4, features: Features, asked_from_port: u16) -> Message {
    let mut m = p.connect(Proto::Udp, target);
    if let Message::Connect {
        features: f,
        asked_from_port: port,
        ..
    } = &mut m
    {
        *f = features;
        *port = asked_from_port;
    }
    m
}

impl Setup {
    fn decide(&mut self, msg: Message) -> Decision {
        match self.bed.ask(self.connector.mgmt, msg) {
            Message::ConnectDecision(d) => d,
            other => panic!("not a decision: {other:?}"),
        }
    }

    fn punching(&self) -> Message {
        connect(
            &self.connector,
            self.proxy,
            Features::PUNCH_UDP,
            self.connector.mgmt.port(),
        )
    }
}

#[test]
fn a_capable_pair_is_punched_with_both_mappings() {
    let mut s = setup(Punch::default(), Features::PUNCH_UDP);
    let d = s.decide(s.punching());
    let Decision::PunchUdp {
        via,
        token,
        listener_at,
    } = d
    else {
        panic!("not punched: {d:?}")
    };
    assert_eq!(
        (via, listener_at),
        (s.proxy, a(L_PATH)),
        "the relay as a Relay's, the listener's data path"
    );
    // Unregistered, the connector is its public IP and its socket's port
    // (its NAT kept the Connect's port).
    let mapping = SocketAddrV4::new(*s.connector.mgmt.ip(), 40000);
    let (id, cmd) = s
        .bed
        .last_command(s.listener.mgmt)
        .expect("the listener is commanded");
    assert_eq!(
        cmd,
        Message::PunchHole {
            token,
            target: mapping,
            peer: mapping,
            proxy: s.proxy
        }
    );
    s.bed.answer(s.listener.mgmt, id, Message::Ack);
    assert!(
        s.bed.engine.pairings.get(token).is_none(),
        "nothing more to wait for after the Ack"
    );
    assert_eq!(
        (
            s.bed.counter("udp_punch_attempts"),
            s.bed.counter("decided_relay")
        ),
        (1, 0)
    );
    assert_eq!(s.bed.engine.gauges(s.bed.now).punches, 0, "no TCP meeting");

    // The relay works meanwhile: the connector's datagram reaches the listener.
    let (send, _) = s.bed.udp_in(s.proxy, mapping, b"first");
    assert!(
        matches!(send, UdpSend::Relay { to, .. } if to == a(L_PATH)),
        "{send:?}"
    );

    // Only the connector's report of its direct path counts, once.
    let report = dummy(token);
    let stranger = a("203.0.113.99:4000");
    assert_eq!(s.bed.udp_in(s.proxy, stranger, &report).0, UdpSend::Nothing);
    assert_eq!(
        s.bed.counter("udp_punch_direct"),
        0,
        "not from the connector's mapping"
    );
    assert_eq!(s.bed.udp_in(s.proxy, mapping, &report).0, UdpSend::Nothing);
    assert_eq!(s.bed.udp_in(s.proxy, mapping, &report).0, UdpSend::Nothing);
    assert_eq!(s.bed.counter("udp_punch_direct"), 1);
    assert_eq!(
        s.bed.engine.udp.table.data_path(&s.proxy),
        Some(a(L_PATH)),
        "the report moves no data path"
    );
}

#[test]
fn a_registered_connector_socket_is_known_by_its_data_path() {
    let mut s = setup(Punch::default(), Features::PUNCH_UDP);
    let Message::RegisterOk {
        proxy: own,
        udp_token: Some(t),
        ..
    } = s
        .bed
        .ask(s.connector.mgmt, s.connector.register(Proto::Udp, 40000))
    else {
        panic!("no registration")
    };
    // Its NAT gave the socket another port than its own.
    let observed = a("198.51.100.2:61000");
    s.bed.udp_in(own, observed, &dummy(t));
    let mut msg = s.punching();
    if let Message::Connect { connector_id, .. } = &mut msg {
        *connector_id = Some(own);
    }
    assert!(matches!(s.decide(msg), Decision::PunchUdp { .. }));
    let (_, cmd) = s.bed.last_command(s.listener.mgmt).unwrap();
    assert!(
        matches!(cmd, Message::PunchHole { target, peer, .. } if target == observed && peer == observed),
        "{cmd:?}"
    );
}

#[test]
fn each_reason_not_to_punch_leaves_the_relay() {
    let relayed = |d: &Decision, proxy| matches!(d, Decision::Relay { via, token: Token(0) } if *via == proxy);
    // The listener's shim does not offer it.
    let mut s = setup(Punch::default(), Features::PUNCH_TCP);
    let d = s.decide(s.punching());
    assert!(relayed(&d, s.proxy), "{d:?}");
    assert_eq!(s.bed.counter("punch_skipped_not_capable"), 1);
    // Nor the connector's.
    let mut s = setup(Punch::default(), Features::PUNCH_UDP);
    let d = s.decide(connect(
        &s.connector,
        s.proxy,
        Features::PUNCH_TCP,
        s.connector.mgmt.port(),
    ));
    assert!(relayed(&d, s.proxy), "{d:?}");
    // Turned off.
    let mut s = setup(
        Punch {
            enabled: false,
            ..Punch::default()
        },
        Features::PUNCH_UDP,
    );
    let d = s.decide(s.punching());
    assert!(relayed(&d, s.proxy), "{d:?}");
    assert_eq!(s.bed.counter("punch_skipped_disabled"), 1);
    // The connector's NAT did not keep its port: unpredictable, and cached.
    let mut s = setup(Punch::default(), Features::PUNCH_UDP);
    let d = s.decide(connect(&s.connector, s.proxy, Features::PUNCH_UDP, 1234));
    assert!(relayed(&d, s.proxy), "{d:?}");
    assert_eq!(s.bed.counter("punch_skipped_unpredictable_mapping"), 1);
    let d = s.decide(s.punching());
    assert!(relayed(&d, s.proxy), "{d:?}");
    assert_eq!(s.bed.counter("punch_skipped_cached_failure"), 1);
    // A connector that did not say its port: its mapping cannot be known.
    let mut s = setup(Punch::default(), Features::PUNCH_UDP);
    let d = s.decide(connect(&s.connector, s.proxy, Features::PUNCH_UDP, 0));
    assert!(relayed(&d, s.proxy), "{d:?}");
    assert_eq!(
        (
            s.bed.counter("udp_punch_attempts"),
            s.bed.counter("decided_relay")
        ),
        (0, 1)
    );
    assert!(
        s.bed.last_command(s.listener.mgmt).is_none(),
        "no command for a relay"
    );
}

#[test]
fn a_fresh_listeners_mapping_is_guessed_and_a_stale_ones_never() {
    let mut bed = Bed::new();
    let (listener, connector) = (Proc::in_a(1), Proc::in_b(2));
    let mut msg = listener.register(Proto::Udp, 9000);
    if let Message::Register { mgmt, .. } = &mut msg {
        mgmt.features = Features::PUNCH_UDP;
    }
    let Message::RegisterOk { proxy, .. } = bed.ask(listener.mgmt, msg) else {
        panic!()
    };
    let ask = |bed: &mut Bed| {
        bed.ask(
            connector.mgmt,
            connect(
                &connector,
                proxy,
                Features::PUNCH_UDP,
                connector.mgmt.port(),
            ),
        )
    };
    // Its first Dummy may still be on its way: its NAT is taken to keep
    // the socket's port.
    let d = ask(&mut bed);
    let guessed = SocketAddrV4::new(*listener.mgmt.ip(), 9000);
    assert!(
        matches!(d, Message::ConnectDecision(Decision::PunchUdp { listener_at, .. }) if listener_at == guessed),
        "{d:?}"
    );
    bed.advance(FRESH);
    let d = ask(&mut bed);
    assert!(
        matches!(d, Message::ConnectDecision(Decision::Relay { via, .. }) if via == proxy),
        "no Dummy within a second: {d:?}"
    );
    assert_eq!(bed.counter("udp_punch_attempts"), 1);
}
