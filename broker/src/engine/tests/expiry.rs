//! Every expiry rule of the core, on its clock: holders and registrations
//! (with the port kept for its owner), pairings (what they hold handed
//! back), UDP rules and channels (idle, and kept by traffic), and commands
//! (retransmitted, then given up).

use std::time::Duration;

use proto::gcb::{Decision, ErrorCode, Message, Role};
use proto::{Endpoint, Proto};

use super::harness::{a, Bed, Fate, Proc};
use super::udp::{channel, keep, registered, to_peer};
use crate::engine::{UdpSend, PAIR_TIMEOUT};

const S: Duration = Duration::from_secs(1);

#[test]
fn a_registration_goes_with_its_last_holder_and_its_port_waits_for_it() {
    let mut bed = Bed::new();
    let p = Proc::in_a(1);
    let tcp = bed.register(p, Proto::Tcp, 8080);
    let udp = bed.register(p, Proto::Udp, 9000);
    bed.advance(29 * S);
    assert!(bed.closed.is_empty(), "not yet");
    bed.advance(2 * S);
    assert_eq!(bed.closed.len(), 2, "both proxy sockets closed");
    assert!(bed.host.open.is_empty());
    assert_eq!(
        (bed.counter("expired"), bed.counter("holders_expired")),
        (2, 2)
    );
    assert!(
        bed.engine.udp.table.get(&udp).is_none(),
        "its relay table entry too"
    );
    // Quarantined: another client asking for the port gets another one, the
    // owner coming back gets its own.
    let other = Proc::in_b(2);
    let want = |p: Proc, local| p.register_for(Proto::Tcp, local, Some(tcp.port()), false);
    let got = |m: Message| match m {
        Message::RegisterOk { proxy, .. } => proxy,
        other => panic!("{other:?}"),
    };
    assert_ne!(got(bed.ask(other.mgmt, want(other, 8080))), tcp);
    assert_eq!(got(bed.ask(p.mgmt, want(p, 8080))), tcp);
}

#[test]
fn heartbeats_keep_a_holder_and_a_silent_one_leaves_alone() {
    let mut bed = Bed::new();
    let (busy, silent) = (Proc::in_a(1), Proc::in_a(2));
    let proxy = bed.register(busy, Proto::Tcp, 8080);
    bed.register(silent, Proto::Tcp, 8080);
    let ep = Endpoint::new(Proto::Tcp, proxy);
    for _ in 0..4 {
        bed.advance(10 * S);
        assert_eq!(bed.heartbeat(busy, &[ep]), Message::HeartbeatAck);
    }
    let rec = bed
        .engine
        .registry
        .get(&ep)
        .expect("kept by its heartbeating holder");
    assert_eq!(rec.holders().len(), 1);
    assert_eq!(rec.holders()[0].mgmt, busy.mgmt);
    assert_eq!(
        (bed.counter("holders_expired"), bed.counter("expired")),
        (1, 0)
    );
    assert!(bed.closed.is_empty());
}

#[test]
fn a_slow_heartbeat_is_given_three_of_its_intervals() {
    let mut bed = Bed::new();
    let p = Proc::in_a(1);
    let slow = Message::Register {
        proto: Proto::Tcp,
        local: p.local(8080),
        realm: None,
        desired_port: None,
        port_required: false,
        mgmt: proto::gcb::MgmtInfo {
            heartbeat_secs: 20,
            ..p.info()
        },
    };
    assert!(matches!(bed.ask(p.mgmt, slow), Message::RegisterOk { .. }));
    bed.advance(59 * S);
    assert!(bed.closed.is_empty(), "the broker's 30 s would have cut it");
    bed.advance(2 * S);
    assert_eq!(bed.closed.len(), 1);
}

#[test]
fn pairings_expire_and_hand_back_what_they_hold() {
    let mut bed = Bed::new();
    let (listener, c) = (Proc::in_a(1), Proc::in_b(2));
    let proxy = bed.register(listener, Proto::Tcp, 8080);
    // A relay whose listener acknowledged but never came.
    let Message::ConnectDecision(Decision::Relay { token, .. }) =
        bed.ask(c.mgmt, c.connect(Proto::Tcp, proxy))
    else {
        panic!()
    };
    let (id, _) = bed.last_command(listener.mgmt).unwrap();
    bed.answer(listener.mgmt, id, Message::Ack);
    let connector = bed.hello(token, Role::Connector, a("198.51.100.2:33000"));
    // A regular connector likewise.
    let parked = bed.regular(proxy, a("198.51.100.9:7000"));
    let (id, _) = bed.last_command(listener.mgmt).unwrap();
    bed.answer(listener.mgmt, id, Message::Ack);
    bed.advance(PAIR_TIMEOUT - S);
    assert!(bed.fates.is_empty(), "still waiting");
    bed.advance(2 * S);
    assert_eq!(
        bed.fates[&connector],
        Fate::Rejected(ErrorCode::UnknownToken)
    );
    assert_eq!(
        bed.fates[&parked],
        Fate::Aborted,
        "reset, never a clean end"
    );
    assert_eq!(bed.counter("pairings_expired"), 2);
    assert_eq!(bed.engine.pairings.len(), 0);
    // A listener coming now is too late.
    let late = bed.hello(token, Role::Listener, a("198.51.100.1:34000"));
    assert_eq!(bed.fates[&late], Fate::Rejected(ErrorCode::UnknownToken));
}

#[test]
fn udp_rules_expire_when_idle_and_traffic_either_way_keeps_them() {
    let mut bed = Bed::new();
    let u = registered(&mut bed);
    let (kept, idle) = (a("203.0.113.20:6000"), a("203.0.113.20:6001"));
    bed.udp_in(u.proxy, kept, b"hi");
    bed.udp_in(u.proxy, idle, b"hi");
    keep(&mut bed, &u, 100 * S);
    // The client's answer counts as traffic.
    assert_ne!(
        bed.udp_in(u.proxy, u.path, &to_peer(kept, b"x")).0,
        UdpSend::Nothing
    );
    keep(&mut bed, &u, 30 * S);
    assert_eq!(bed.counter("udp_rules_expired"), 1);
    assert_eq!(
        bed.udp_in(u.proxy, u.path, &to_peer(idle, b"x")).0,
        UdpSend::Nothing
    );
    assert_ne!(
        bed.udp_in(u.proxy, u.path, &to_peer(kept, b"x")).0,
        UdpSend::Nothing
    );
    keep(&mut bed, &u, 121 * S);
    assert_eq!(bed.engine.udp.table.rules_len(), 0);
    // A later datagram from the peer simply makes the rule again.
    bed.udp_in(u.proxy, idle, b"again");
    assert_ne!(
        bed.udp_in(u.proxy, u.path, &to_peer(idle, b"x")).0,
        UdpSend::Nothing
    );
}

#[test]
fn channels_close_when_idle() {
    let mut bed = Bed::new();
    let u = registered(&mut bed);
    let peer = a("203.0.113.20:6000");
    bed.udp_in(u.proxy, peer, b"hi");
    let Message::UdpChannelOk { channel: at, .. } = channel(&mut bed, &u, peer, u.token) else {
        panic!()
    };
    assert_eq!(bed.open_at(at).len(), 1);
    keep(&mut bed, &u, 121 * S);
    assert!(bed.open_at(at).is_empty(), "its socket closed");
    assert_eq!(bed.counter("udp_channels_closed"), 1);
    assert_eq!(
        bed.engine.registry.pool(Proto::Udp).in_use(),
        1,
        "its port back"
    );
}

#[test]
fn commands_are_retransmitted_then_given_up_and_only_that_connection_fails() {
    let mut bed = Bed::new();
    let (listener, c) = (Proc::in_a(1), Proc::public(2));
    let proxy = bed.register(listener, Proto::Tcp, 8080);
    let Message::ConnectDecision(Decision::Reversal { token }) =
        bed.ask(c.mgmt, c.connect(Proto::Tcp, proxy))
    else {
        panic!()
    };
    bed.advance(2 * S);
    let sent = bed
        .commands
        .iter()
        .filter(|(to, ..)| *to == listener.mgmt)
        .count();
    assert_eq!(sent, 6, "sent at 0, 50, 150, 350, 750 and 1550 ms");
    bed.advance(S);
    // Given up: the connector is told, the registration stays.
    let (_, told) = bed.last_command(c.mgmt).expect("the connector is told");
    assert_eq!(
        told,
        Message::ConnectFailed {
            token,
            code: ErrorCode::Timeout
        }
    );
    assert_eq!(bed.counter("commands_failed_timeout"), 1);
    assert_eq!(bed.engine.pairings.len(), 0);
    assert!(bed.closed.is_empty());
    // ConnectFailed to a connector that does not answer ends quietly.
    bed.advance(5 * S);
    assert_eq!(bed.engine.asyncs.len(), 0);
    assert_eq!(bed.counter("commands_failed"), 1);
}
