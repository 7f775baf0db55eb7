//! `Register`, `Heartbeat` and `Unregister` through the core: a new
//! registration opens one proxy socket of its protocol, a holder again or
//! a process joining gets the same proxy, the port policy (desired,
//! required, held by another program) and every limit.

use proto::gcb::{ErrorCode, Message};
use proto::{Endpoint, Proto};

use super::harness::{a, limits, Bed, Proc};
use crate::engine::Opening;
use crate::registry::MAX_HOLDERS;

fn refusal(reply: Message) -> ErrorCode {
    match reply {
        Message::Error { code, .. } => code,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn a_new_registration_opens_one_proxy_socket_of_its_protocol() {
    let mut bed = Bed::new();
    let p = Proc::in_a(1);
    for proto in [Proto::Tcp, Proto::Udp] {
        let reply = bed.ask(p.mgmt, p.register(proto, 8080));
        let Message::RegisterOk {
            proxy,
            observed,
            udp_token,
        } = reply
        else {
            panic!("{reply:?}")
        };
        assert_eq!(observed, p.mgmt, "the client learns its NAT mapping");
        assert_eq!(udp_token.is_some(), proto == Proto::Udp);
        assert!(udp_token.is_none_or(|t| t.0 & 1 == 1), "never zero");
        let opened = Opening::Proxy(Endpoint::new(proto, proxy));
        assert_eq!(
            bed.host
                .open
                .values()
                .filter(|(w, at)| *w == opened && *at == proxy)
                .count(),
            1
        );
        assert!(super::harness::RANGE.contains(proxy.port()));
        // Again from the same holder: the same proxy, nothing opened.
        assert_eq!(bed.register(p, proto, 8080), proxy);
    }
    assert_eq!(bed.host.open.len(), 2);
    assert_eq!(bed.counter("registered"), 2);
    let local = Message::Register {
        proto: Proto::Tcp,
        local: a("0.0.0.0:80"),
        realm: None,
        desired_port: None,
        port_required: false,
        mgmt: p.info(),
    };
    assert_eq!(refusal(bed.ask(p.mgmt, local)), ErrorCode::BadRequest);
}

#[test]
fn another_process_holding_the_socket_joins_it() {
    let mut bed = Bed::new();
    let (parent, child) = (Proc::in_a(1), Proc::in_a(2));
    let reply = bed.ask(parent.mgmt, parent.register(Proto::Udp, 9000));
    let Message::RegisterOk {
        proxy, udp_token, ..
    } = reply
    else {
        panic!()
    };
    // Same NAT (public IP), same local address: the same socket.
    let joined = bed.ask(child.mgmt, child.register(Proto::Udp, 9000));
    assert!(
        matches!(joined, Message::RegisterOk { proxy: p, udp_token: t, .. } if p == proxy && t == udp_token)
    );
    assert_eq!(bed.host.open.len(), 1);
    assert_eq!(bed.counter("holders_joined"), 1);
    let ep = Endpoint::new(Proto::Udp, proxy);
    assert_eq!(bed.engine.registry.get(&ep).unwrap().holders().len(), 2);
    // The same local address behind another NAT is another socket.
    let other = Proc {
        own: parent.own,
        ..Proc::in_b(3)
    };
    assert_ne!(bed.register(other, Proto::Udp, 9000), proxy);
    // The first holder leaving keeps the registration for the other.
    assert_eq!(
        bed.ask(parent.mgmt, Message::Unregister { proxy: ep }),
        Message::Ack
    );
    assert!(bed.closed.is_empty());
    assert_eq!(bed.counter("holders_left"), 1);
    assert_eq!(
        bed.ask(child.mgmt, Message::Unregister { proxy: ep }),
        Message::Ack
    );
    assert_eq!(bed.closed.len(), 1, "gone with its last holder");
    assert_eq!(bed.counter("unregistered"), 1);
    let again = bed.ask(child.mgmt, Message::Unregister { proxy: ep });
    assert_eq!(refusal(again), ErrorCode::NotRegistered);
}

#[test]
fn a_registration_has_at_most_its_holders() {
    let mut bed = Bed::new();
    let proxy = bed.register(Proc::in_a(0), Proto::Tcp, 8080);
    for n in 1..MAX_HOLDERS as u16 {
        assert_eq!(bed.register(Proc::in_a(n), Proto::Tcp, 8080), proxy);
    }
    let late = Proc::in_a(MAX_HOLDERS as u16);
    let reply = bed.ask(late.mgmt, late.register(Proto::Tcp, 8080));
    assert_eq!(refusal(reply), ErrorCode::LimitReached);
    assert_eq!(bed.counter("refused"), 1);
}

#[test]
fn desired_and_required_ports() {
    let mut bed = Bed::new();
    let p = Proc::in_a(1);
    let want = |local, port, required| p.register_for(Proto::Tcp, local, Some(port), required);
    let port = |reply: Message| match reply {
        Message::RegisterOk { proxy, .. } => proxy.port(),
        other => panic!("{other:?}"),
    };
    // A desired port is taken if free, and replaced if not.
    assert_eq!(port(bed.ask(p.mgmt, want(8001, 20042, false))), 20042);
    assert_ne!(port(bed.ask(p.mgmt, want(8002, 20042, false))), 20042);
    // A required port is that port or a refusal (one the random choice
    // above did not take).
    let taken: Vec<u16> = bed.host.open.values().map(|(_, at)| at.port()).collect();
    let free = (20050..).find(|p| !taken.contains(p)).unwrap();
    bed.host.busy.insert(free);
    let busy = bed.ask(p.mgmt, want(8003, free, true));
    assert_eq!(refusal(busy), ErrorCode::PortUnavailable);
    bed.host.busy.clear();
    assert_eq!(port(bed.ask(p.mgmt, want(8003, free, true))), free);
    // One socket has one proxy address.
    let moved = bed.ask(p.mgmt, want(8003, free + 1, true));
    assert_eq!(refusal(moved), ErrorCode::PortUnavailable);
    let outside = bed.ask(p.mgmt, want(8004, 30000, true));
    assert_eq!(refusal(outside), ErrorCode::PortUnavailable);
}

#[test]
fn ports_other_programs_hold_are_skipped_and_a_broken_host_refuses() {
    let mut bed = Bed::new();
    // Fewer than the failed binds one search may take (64), wherever the
    // random probes land.
    bed.host.busy = (20000..20030).collect();
    let p = Proc::public(1);
    let proxy = bed.register(p, Proto::Tcp, 8080);
    assert!(proxy.port() >= 20030);
    bed.host.busy = (20000..20100).collect();
    let reply = bed.ask(p.mgmt, p.register(Proto::Tcp, 8081));
    assert_eq!(
        refusal(reply),
        ErrorCode::LimitReached,
        "no free proxy port"
    );
    bed.host.busy.clear();
    bed.host.broken = true;
    let reply = bed.ask(p.mgmt, p.register(Proto::Tcp, 8082));
    assert_eq!(refusal(reply), ErrorCode::Internal);
    assert_eq!(bed.counter("refused"), 2);
    assert_eq!(bed.host.open.len(), 1);
}

#[test]
fn the_registration_limit_refuses_new_sockets_not_holders() {
    let mut l = limits();
    l.max_registrations = 1;
    let mut bed = Bed::with(l);
    let p = Proc::in_a(1);
    let proxy = bed.register(p, Proto::Tcp, 8080);
    let reply = bed.ask(p.mgmt, p.register(Proto::Tcp, 8081));
    assert_eq!(refusal(reply), ErrorCode::LimitReached);
    assert_eq!(
        bed.register(Proc::in_a(2), Proto::Tcp, 8080),
        proxy,
        "a join is no new one"
    );
}

#[test]
fn heartbeats_name_back_what_the_sender_does_not_hold() {
    let mut bed = Bed::new();
    let p = Proc::in_a(1);
    let ep = Endpoint::new(Proto::Tcp, bed.register(p, Proto::Tcp, 8080));
    assert_eq!(bed.heartbeat(p, &[ep]), Message::HeartbeatAck);
    let unknown = Endpoint::new(Proto::Udp, a("203.0.113.10:20001"));
    assert_eq!(
        bed.heartbeat(p, &[ep, unknown]),
        Message::ReregisterRequest {
            unknown: vec![unknown]
        }
    );
    // The one holder's NAT mapping moved: it follows.
    let moved = Proc {
        mgmt: a("198.51.100.1:6001"),
        ..p
    };
    assert_eq!(bed.heartbeat(moved, &[ep]), Message::HeartbeatAck);
    let rec = bed.engine.registry.get(&ep).unwrap();
    assert_eq!(rec.holders()[0].mgmt, moved.mgmt);
    // Someone from another NAT is no holder.
    assert!(matches!(
        bed.heartbeat(Proc::in_b(2), &[ep]),
        Message::ReregisterRequest { .. }
    ));
}
