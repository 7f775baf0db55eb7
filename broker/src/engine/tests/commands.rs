//! The failed-command rule (issue 9) and ICMP errors, through the core: a
//! command goes to the longest-standing live holder; silence, a disowning
//! answer or a gone socket sends it once more to another holder; a refusal
//! for the socket's own reasons fails that connection alone, with the code
//! its connector is told; no failure ever ends the registration.

use std::net::SocketAddrV4;

use proto::gcb::{Decision, ErrorCode, Message, Role, Token};
use proto::{Endpoint, Proto};

use super::harness::{a, Bed, Fate, Proc};
use crate::icmp::{Report, ORIGIN_ICMP};
use std::time::Duration;

/// A listener with two holders (`first` registered first) and a public
/// connector's TCP reversal to it, whose command went to `first`.
struct Reversal {
    bed: Bed,
    first: Proc,
    second: Proc,
    connector: Proc,
    proxy: SocketAddrV4,
    token: Token,
}

fn reversal() -> Reversal {
    let mut bed = Bed::new();
    let (first, second, connector) = (Proc::in_a(1), Proc::in_a(2), Proc::public(3));
    let proxy = bed.register(first, Proto::Tcp, 8080);
    bed.register(second, Proto::Tcp, 8080);
    let Message::ConnectDecision(Decision::Reversal { token }) =
        bed.ask(connector.mgmt, connector.connect(Proto::Tcp, proxy))
    else {
        panic!()
    };
    assert!(
        bed.last_command(first.mgmt).is_some(),
        "the longest-standing holder"
    );
    assert!(bed.last_command(second.mgmt).is_none());
    Reversal {
        bed,
        first,
        second,
        connector,
        proxy,
        token,
    }
}

fn port_unreachable(at: SocketAddrV4) -> Report {
    Report {
        dest: Some(at),
        origin: ORIGIN_ICMP,
        icmp_type: 3,
        code: 3,
        offender: Some(*at.ip()),
    }
}

fn icmp(bed: &mut Bed, reports: &[Report]) {
    let now = bed.now;
    bed.engine.on_icmp(reports, now);
    bed.apply();
}

#[test]
fn a_silent_holder_s_command_goes_once_to_the_next() {
    let mut r = reversal();
    r.bed.advance(Duration::from_millis(2400));
    let (id, cmd) = r.bed.last_command(r.second.mgmt).expect("sent once more");
    assert!(matches!(cmd, Message::ReverseConnect { token, .. } if token == r.token));
    assert_eq!(r.bed.counter("commands_resent"), 1);
    r.bed.answer(r.second.mgmt, id, Message::Ack);
    assert_eq!(r.bed.engine.pairings.len(), 0);
    assert!(
        r.bed.last_command(r.connector.mgmt).is_none(),
        "nothing failed"
    );
    assert_eq!(r.bed.counter("commands_failed"), 0);
}

#[test]
fn when_the_next_is_silent_too_the_connection_alone_fails() {
    let mut r = reversal();
    r.bed.advance(Duration::from_secs(5));
    let (_, told) = r.bed.last_command(r.connector.mgmt).unwrap();
    assert_eq!(
        told,
        Message::ConnectFailed {
            token: r.token,
            code: ErrorCode::Timeout
        }
    );
    assert_eq!(r.bed.counter("commands_failed_timeout"), 1);
    let rec = r
        .bed
        .engine
        .registry
        .get(&Endpoint::new(Proto::Tcp, r.proxy));
    assert_eq!(
        rec.map(|r| r.holders().len()),
        Some(2),
        "a busy listener keeps its address"
    );
}

#[test]
fn a_holder_that_disowns_the_socket_leaves_and_the_next_is_asked() {
    let mut r = reversal();
    let (id, _) = r.bed.last_command(r.first.mgmt).unwrap();
    let gone = Message::error(ErrorCode::NotRegistered, "not mine");
    r.bed.answer(r.first.mgmt, id, gone);
    assert_eq!(r.bed.counter("holders_disowned"), 1);
    assert!(r.bed.last_command(r.second.mgmt).is_some());
    let rec = r
        .bed
        .engine
        .registry
        .get(&Endpoint::new(Proto::Tcp, r.proxy))
        .unwrap();
    assert_eq!(rec.holders().len(), 1);
}

#[test]
fn a_full_accept_queue_fails_the_connection_with_its_code_unretried() {
    let mut bed = Bed::new();
    let (first, second, c) = (Proc::in_a(1), Proc::in_a(2), Proc::in_b(3));
    let proxy = bed.register(first, Proto::Tcp, 8080);
    bed.register(second, Proto::Tcp, 8080);
    let Message::ConnectDecision(Decision::Relay { token, .. }) =
        bed.ask(c.mgmt, c.connect(Proto::Tcp, proxy))
    else {
        panic!()
    };
    // The listener's half came before its refusal did.
    let early = bed.hello(token, Role::Listener, a("198.51.100.1:34000"));
    let (id, _) = bed.last_command(first.mgmt).unwrap();
    bed.answer(
        first.mgmt,
        id,
        Message::error(ErrorCode::LimitReached, "backlog"),
    );
    assert!(
        bed.last_command(second.mgmt).is_none(),
        "every holder shares that socket"
    );
    let full = Fate::Rejected(ErrorCode::LimitReached);
    assert_eq!(bed.fates[&early], full, "told at once");
    assert_eq!(bed.engine.pairings.relaying(), 0, "its relay slot is free");
    let connector = bed.hello(token, Role::Connector, a("198.51.100.2:33000"));
    assert_eq!(bed.fates[&connector], full, "told why, not 'unknown token'");
    assert_eq!(bed.engine.pairings.len(), 0);
    assert_eq!(bed.counter("commands_failed_full"), 1);
}

#[test]
fn a_gone_socket_leaves_at_once_and_the_command_moves_on() {
    let mut r = reversal();
    icmp(&mut r.bed, &[port_unreachable(r.first.mgmt)]);
    assert_eq!(r.bed.counter("holders_gone"), 1);
    assert_eq!(r.bed.counter("icmp_port_unreachable"), 1);
    assert!(
        r.bed.last_command(r.second.mgmt).is_some(),
        "no wait for silence"
    );
    // The last holder gone too: the registration goes, the connector hears
    // NotRegistered (ECONNREFUSED).
    icmp(&mut r.bed, &[port_unreachable(r.second.mgmt)]);
    assert_eq!(r.bed.closed.len(), 1);
    let (_, told) = r.bed.last_command(r.connector.mgmt).unwrap();
    assert_eq!(
        told,
        Message::ConnectFailed {
            token: r.token,
            code: ErrorCode::NotRegistered
        }
    );
    assert_eq!(r.bed.counter("commands_failed_not_registered"), 1);
}

#[test]
fn icmp_errors_the_broker_cannot_trust_change_nothing() {
    let mut r = reversal();
    let not_commanded = port_unreachable(r.second.mgmt);
    let router = Report {
        offender: Some("192.0.2.254".parse().unwrap()),
        ..port_unreachable(r.first.mgmt)
    };
    let host_unreachable = Report {
        code: 1,
        ..port_unreachable(r.first.mgmt)
    };
    icmp(&mut r.bed, &[not_commanded, router, host_unreachable]);
    assert_eq!(
        (r.bed.counter("icmp_untrusted"), r.bed.counter("icmp_other")),
        (2, 1)
    );
    let rec = r
        .bed
        .engine
        .registry
        .get(&Endpoint::new(Proto::Tcp, r.proxy))
        .unwrap();
    assert_eq!(rec.holders().len(), 2);
    assert_eq!(r.bed.engine.pairings.len(), 1);
}

#[test]
fn answers_the_broker_asked_for_pass_the_rate_limit() {
    let mut limits = super::harness::limits();
    limits.rate_limit = 1;
    let mut bed = Bed::with(limits);
    let (listener, c) = (Proc::in_a(1), Proc::public(2));
    let proxy = bed.register(listener, Proto::Tcp, 8080);
    bed.ask(c.mgmt, c.connect(Proto::Tcp, proxy));
    // The listener's NAT has used its second already; its Ack still counts.
    assert!(bed
        .send(listener.mgmt, &Message::Heartbeat { held: vec![] })
        .is_none());
    let (id, _) = bed.last_command(listener.mgmt).unwrap();
    bed.answer(listener.mgmt, id, Message::Ack);
    assert_eq!(bed.engine.pairings.len(), 0, "acknowledged");
    assert_eq!(bed.counter("rate_limited"), 1);
    // An answer nobody asked for is charged and, once through, stray.
    bed.now += Duration::from_secs(1);
    bed.answer(listener.mgmt, id, Message::Ack);
    assert_eq!(bed.counter("stray_replies"), 1);
}
