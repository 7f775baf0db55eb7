//! End-to-end tests of a client whose UDP socket is gone (its process was
//! killed): the broker's next command to it draws an ICMP port unreachable,
//! which loopback sends for a closed UDP port as a host or its NAT would,
//! and the broker acts on it at once instead of waiting out its
//! retransmissions. Fake clients over real UDP on loopback; a private
//! listener is faked by reporting a management IP other than 127.0.0.1.

mod support;

use std::io::Read;
use std::net::{SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use proto::gcb::{self, Decision, ErrorCode, Message, Token};
use proto::{Endpoint, Proto};
use support::udp::{counter, expect_counter};
use support::*;

/// The listening socket every holder of these tests shares.
const LOCAL: &str = "10.9.9.9:7002";

/// Below the 2.35 s the broker's retransmissions of a command take to give
/// up, so the other path cannot pass for this one, and with the rest as
/// slack for a loaded machine (the ICMP path itself takes milliseconds).
const AT_ONCE: Duration = Duration::from_millis(1800);

/// Registers `LOCAL` as a private listener in realm "lab", heartbeat 1 s.
fn register(m: &mut Mgmt) -> SocketAddrV4 {
    match m.register(LOCAL, "10.9.9.9", Some("lab"), None, 1) {
        Message::RegisterOk { proxy, .. } => proxy,
        other => panic!("{other:?}"),
    }
}

/// A public connector's `Connect`: the broker decides a reversal, or says
/// nothing is registered.
fn connect(c: &mut Mgmt, proxy: SocketAddrV4) -> Decision {
    match c.request(&Message::Connect {
        proto: Proto::Tcp,
        target: proxy,
        connector: a("127.0.0.1:5001"),
        connector_id: None,
        realm: None,
        features: proto::gcb::Features::NONE,
        asked_from_port: 0,
    }) {
        Message::ConnectDecision(d) => d,
        other => panic!("{other:?}"),
    }
}

fn reversal(c: &mut Mgmt, proxy: SocketAddrV4) -> Token {
    match connect(c, proxy) {
        Decision::Reversal { token } => token,
        other => panic!("{other:?}"),
    }
}

/// The management addresses holding the one registration.
fn holders(b: &Broker) -> Vec<String> {
    let regs = b.registrations();
    assert_eq!(regs.len(), 1, "{regs:?}");
    let holders = regs[0].get("holders").and_then(|h| h.as_array());
    let mgmt = |h: &testbed::json::Value| h.get("mgmt")?.as_str().map(str::to_string);
    holders.unwrap().iter().filter_map(mgmt).collect()
}

/// The holder's process dies (its socket closes); a reversal's connector is
/// told `NotRegistered` at once, and the registration is gone.
#[test]
fn a_reversal_to_a_dead_holder_fails_at_once_and_the_registration_goes() {
    let mut b = Broker::start(&[]);
    let mut l = Mgmt::new(b.addr);
    let proxy = register(&mut l);
    let dead = l.addr();
    drop(l);
    let mut c = Mgmt::new(b.addr);
    let asked = Instant::now();
    // The decision comes although the command, sent just before it, has
    // bounced (which makes the socket's next send fail once; the broker
    // sends again).
    let token = reversal(&mut c, proxy);
    let (id, failed, _) = c.recv(AT_ONCE).expect("ConnectFailed at once");
    let took = asked.elapsed();
    eprintln!("connector told after {took:?}");
    assert_eq!(
        failed,
        Message::ConnectFailed {
            token,
            code: ErrorCode::NotRegistered
        }
    );
    c.answer(id, &Message::Ack);
    // Removed before the connector was told.
    assert!(b.registrations().is_empty());
    assert_eq!(connect(&mut c, proxy), Decision::NotRegistered);
    b.expect_line(&format!(
        "unregistered tcp {proxy} of broker-test[{}] (local {LOCAL}, mgmt {dead}): \
         its socket is gone (ICMP port unreachable)",
        std::process::id()
    ));
    b.expect_line(&format!(
        "ReverseConnect to listener {dead} for {proxy} failed: its socket is gone \
         (ICMP port unreachable); that connection fails (NotRegistered)"
    ));
    for (name, want) in [
        ("icmp_port_unreachable", 1),
        ("holders_gone", 1),
        ("unregistered", 1),
        ("commands_failed_not_registered", 1),
        ("commands_failed_timeout", 0),
        ("commands_resent", 0),
        ("expired", 0),
        ("send_errors", 0),
    ] {
        assert_eq!(counter(&b, name), want, "{name}");
    }
    let (code, text, err) = b.query(false);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("holders_gone 1"), "{text}");
}

/// With two holders, the one commands go to dies: the command goes to the
/// other at once, and the registration stays with it.
#[test]
fn the_command_moves_at_once_to_the_holder_left() {
    let mut b = Broker::start(&[]);
    let (mut first, mut second) = (Mgmt::new(b.addr), Mgmt::new(b.addr));
    let proxy = register(&mut first);
    assert_eq!(register(&mut second), proxy, "joined");
    // The first, the longest-standing holder, is the one commands go to; it dies.
    let dead = first.addr();
    drop(first);
    let mut c = Mgmt::new(b.addr);
    let asked = Instant::now();
    let token = reversal(&mut c, proxy);
    let (id, cmd) = second.take_command(AT_ONCE);
    eprintln!("the other holder commanded after {:?}", asked.elapsed());
    assert!(
        matches!(cmd, Message::ReverseConnect { token: t, proxy: p, .. } if t == token && p == proxy),
        "{cmd:?}"
    );
    second.answer(id, &Message::Ack);
    assert_eq!(holders(&b), [second.addr().to_string()]);
    b.expect_line(&format!(
        "tcp {proxy}: holder broker-test[{}] (mgmt {dead}) its socket is gone \
         (ICMP port unreachable); 1 holders left",
        std::process::id()
    ));
    b.expect_line(&format!(
        "ReverseConnect for {proxy} failed at holder {dead}: its socket is gone \
         (ICMP port unreachable); sent once more to holder {}",
        second.addr()
    ));
    assert_eq!(
        second.request(&Message::Heartbeat {
            held: vec![Endpoint::new(Proto::Tcp, proxy)]
        }),
        Message::HeartbeatAck
    );
    for (name, want) in [
        ("holders_gone", 1),
        ("commands_resent", 1),
        ("commands_failed", 0),
        ("unregistered", 0),
    ] {
        assert_eq!(counter(&b, name), want, "{name}");
    }
}

/// A plain connector of a dead listener is reset at once (the broker's
/// `RelayConnect` to the listener bounced).
#[test]
fn a_plain_connector_of_a_dead_listener_is_reset_at_once() {
    let b = Broker::start(&[]);
    let mut l = Mgmt::new(b.addr);
    let proxy = register(&mut l);
    drop(l);
    let asked = Instant::now();
    // The reset may come before the connect call returns.
    let got = TcpStream::connect_timeout(&proxy.into(), WAIT).and_then(|mut plain| {
        plain.set_read_timeout(Some(WAIT))?;
        plain.read(&mut [0u8; 1])
    });
    let got = got.map_err(|e| e.kind());
    eprintln!("plain connector reset after {:?}", asked.elapsed());
    assert_eq!(got, Err(std::io::ErrorKind::ConnectionReset));
    assert!(asked.elapsed() < AT_ONCE, "{:?}", asked.elapsed());
    expect_counter(&b, "holders_gone", 1);
    assert!(b.registrations().is_empty());
}

/// A `ConnectFailed` to a connector that has gone is not sent again.
#[test]
fn a_connector_gone_is_not_told_again() {
    let mut b = Broker::start(&[]);
    let mut l = Mgmt::new(b.addr);
    let proxy = register(&mut l);
    let mut c = Mgmt::new(b.addr);
    reversal(&mut c, proxy);
    let gone = c.addr();
    drop(c);
    let (id, _) = l.take_command(WAIT);
    l.answer(id, &Message::error(ErrorCode::LimitReached, "queue full"));
    b.expect_line(&format!(
        "connector {gone} not told that {proxy} will not dial: its socket is gone"
    ));
    assert_eq!(counter(&b, "icmp_port_unreachable"), 1);
    // The listener was not at fault: it keeps its registration.
    assert_eq!(holders(&b), [l.addr().to_string()]);
    assert_eq!(counter(&b, "holders_gone"), 0);
}

/// A port unreachable for an address no command is in flight to changes
/// nothing, even the address of a holder: here a holder's request whose
/// sender closed its socket before the reply came.
#[test]
fn a_bounce_of_a_reply_is_not_believed() {
    let b = Broker::start(&[]);
    let request = Message::Connect {
        proto: Proto::Tcp,
        target: a("127.0.0.1:9"),
        connector: a("127.0.0.1:5001"),
        connector_id: None,
        realm: None,
        features: proto::gcb::Features::NONE,
        asked_from_port: 0,
    };
    // The reply may outrun the close: another holder tries, until one
    // bounces (slow heartbeats, so no holder replaces a silent one).
    let mut closed = Vec::new();
    let deadline = Instant::now() + WAIT;
    while counter(&b, "icmp_untrusted") == 0 {
        assert!(
            Instant::now() < deadline && closed.len() < 40,
            "no reply bounced"
        );
        let mut m = Mgmt::new(b.addr);
        let got = m.register(LOCAL, "10.9.9.9", Some("lab"), None, 60);
        assert!(matches!(got, Message::RegisterOk { .. }), "{got:?}");
        m.send_raw(&gcb::encode(&request, 1).unwrap());
        closed.push(m.addr().to_string());
        drop(m);
    }
    let mut got = holders(&b);
    got.sort();
    closed.sort();
    assert_eq!(got, closed, "all still hold it");
    assert_eq!(
        (
            counter(&b, "holders_gone"),
            counter(&b, "icmp_port_unreachable")
        ),
        (0, 0)
    );
}
