//! End-to-end tests of registrations held by several processes, and of what
//! a command the listener does not answer costs: that connection, never the
//! registration. Fake clients over real UDP on loopback; a private listener
//! is faked by reporting a management IP other than 127.0.0.1 and a realm.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use proto::gcb::{Decision, ErrorCode, Frame, Message, Role, StreamHello, StreamPeer, Token};
use proto::{Endpoint, Proto};
use support::udp::counter;
use support::*;

/// The listening socket every holder of these tests shares.
const LOCAL: &str = "10.9.9.9:7002";

/// Registers `LOCAL` as a private listener in realm "lab", heartbeat 1 s.
fn register(m: &mut Mgmt) -> SocketAddrV4 {
    match m.register(LOCAL, "10.9.9.9", Some("lab"), None, 1) {
        Message::RegisterOk { proxy, .. } => proxy,
        other => panic!("{other:?}"),
    }
}

fn heartbeat(proxy: SocketAddrV4) -> Message {
    Message::Heartbeat {
        held: vec![Endpoint::new(Proto::Tcp, proxy)],
    }
}

/// A public connector's `Connect`: the broker decides a reversal.
fn reversal(c: &mut Mgmt, proxy: SocketAddrV4, connector: &str) -> Token {
    let d = c.request(&Message::Connect {
        proto: Proto::Tcp,
        target: proxy,
        connector: a(connector),
        connector_id: None,
        realm: None,
        features: proto::gcb::Features::NONE,
        asked_from_port: 0,
    });
    match d {
        Message::ConnectDecision(Decision::Reversal { token }) => token,
        other => panic!("{other:?}"),
    }
}

/// The token of a command, if it is one for a connection.
fn token_of(m: &Message) -> Option<Token> {
    match m {
        Message::ReverseConnect { token, .. } | Message::RelayConnect { token, .. } => Some(*token),
        _ => None,
    }
}

/// The command for `token` (skipping retransmissions of earlier ones),
/// not answered: its request id and the command.
fn command_for(m: &mut Mgmt, token: Token, within: Duration) -> (u64, Message) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (id, cmd) = m.take_command(left);
        if token_of(&cmd) == Some(token) {
            return (id, cmd);
        }
    }
}

/// Heartbeats `m` every 200 ms until `done` says something arrived.
fn heartbeat_until<T>(
    m: &mut Mgmt,
    proxy: SocketAddrV4,
    within: Duration,
    mut done: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        assert_eq!(m.request(&heartbeat(proxy)), Message::HeartbeatAck);
        if let Some(t) = done() {
            return t;
        }
        assert!(Instant::now() < deadline, "nothing within {within:?}");
    }
}

#[test]
fn a_registration_survives_an_unanswered_reverse_connect_while_its_holder_heartbeats() {
    let mut b = Broker::start(&[]);
    let mut l = Mgmt::new(b.addr);
    let proxy = register(&mut l);
    let mut c = Mgmt::new(b.addr);
    let token = reversal(&mut c, proxy, "127.0.0.1:5001");
    // The listener is busy: it gets the command (and its retransmissions)
    // and answers nothing, but heartbeats.
    let (_, cmd) = command_for(&mut l, token, WAIT);
    assert!(matches!(cmd, Message::ReverseConnect { proxy: p, .. } if p == proxy));
    let started = Instant::now();
    // The connector is told, on the socket its Connect came from, that the
    // listener stayed silent; it acknowledges.
    let (id, failed, _) = heartbeat_until(&mut l, proxy, Duration::from_secs(15), || {
        c.recv(Duration::from_millis(200))
            .filter(|(_, m, _)| !m.is_response())
    });
    assert_eq!(
        failed,
        Message::ConnectFailed {
            token,
            code: ErrorCode::Timeout
        }
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "after the retransmissions"
    );
    c.answer(id, &Message::Ack);
    b.expect_line(&format!(
        "ReverseConnect to listener {} for {proxy} failed: no answer within 3s; \
         that connection fails (Timeout), the registration stays",
        l.addr()
    ));
    // Still registered, same address, and the next connect is brokered.
    assert_eq!(l.request(&heartbeat(proxy)), Message::HeartbeatAck);
    assert_eq!(register(&mut l), proxy);
    let again = reversal(&mut c, proxy, "127.0.0.1:5002");
    let (id, cmd) = command_for(&mut l, again, WAIT);
    assert!(
        matches!(cmd, Message::ReverseConnect { connector, .. } if connector == a("127.0.0.1:5002"))
    );
    l.answer(id, &Message::Ack);
    for (name, want) in [
        ("commands_failed", 1),
        ("commands_failed_timeout", 1),
        ("commands_resent", 0),
        ("expired", 0),
        ("unregistered", 0),
        ("holders_expired", 0),
        ("registered", 1),
    ] {
        assert_eq!(counter(&b, name), want, "{name}");
    }
}

/// 1 holder, then 2 (joined), then the silent one expires on its own while
/// the other heartbeats; commands go to the one heard from last, and one
/// unanswered goes once more to the other.
#[test]
fn two_holders_join_and_commands_go_to_the_longest_standing_live_one() {
    let mut b = Broker::start(&["--heartbeat-timeout-s", "8"]);
    let (mut first, mut second) = (Mgmt::new(b.addr), Mgmt::new(b.addr));
    let proxy = register(&mut first);
    assert_eq!(register(&mut second), proxy, "the same socket: joined");
    b.expect_line(&format!(
        "tcp {LOCAL} of broker-test[{}] (mgmt {}) joins {proxy}: 2 holders",
        std::process::id(),
        second.addr()
    ));
    // The first, the longest-standing live holder, gets the command; it has
    // hung (no answer, no heartbeats), so after the retransmissions the
    // command goes once more to the second, which answers.
    let mut c = Mgmt::new(b.addr);
    let token = reversal(&mut c, proxy, "127.0.0.1:5001");
    let (_, cmd) = command_for(&mut first, token, WAIT);
    assert!(token_of(&cmd) == Some(token));
    let (id, resent) = command_for(&mut second, token, Duration::from_secs(10));
    assert_eq!(resent, cmd, "the same command");
    second.answer(id, &Message::Ack);
    b.expect_line(&format!(
        "ReverseConnect for {proxy} failed at holder {}: no answer within 3s; sent once more to holder {}",
        first.addr(),
        second.addr()
    ));
    // The second heartbeats, the first stays silent: it expires alone, and
    // the registration stays with the second.
    let holders = || {
        let regs = b.registrations();
        let holders = regs[0].get("holders").and_then(|h| h.as_array());
        let mgmt = |h: &testbed::json::Value| h.get("mgmt")?.as_str().map(str::to_string);
        holders.unwrap().iter().filter_map(mgmt).collect::<Vec<_>>()
    };
    let left = heartbeat_until(&mut second, proxy, Duration::from_secs(20), || {
        thread::sleep(Duration::from_millis(200));
        Some(holders()).filter(|h| h.len() == 1)
    });
    assert_eq!(left, [second.addr().to_string()]);
    b.expect_line(&format!(
        "tcp {proxy}: holder broker-test[{}] (mgmt {}) expired",
        std::process::id(),
        first.addr()
    ));
    // Commands go to the second at once now.
    let token = reversal(&mut c, proxy, "127.0.0.1:5002");
    let (id, _) = command_for(&mut second, token, WAIT);
    second.answer(id, &Message::Ack);
    // The expired one learns it and would join again.
    assert_eq!(
        first.request(&heartbeat(proxy)),
        Message::ReregisterRequest {
            unknown: vec![Endpoint::new(Proto::Tcp, proxy)]
        }
    );
    for (name, want) in [
        ("holders_joined", 1),
        ("holders_expired", 1),
        ("commands_resent", 1),
        ("commands_failed", 0),
        ("expired", 0),
    ] {
        assert_eq!(counter(&b, name), want, "{name}");
    }
}

#[test]
fn unregister_by_one_holder_keeps_the_registration_for_the_other() {
    let mut b = Broker::start(&[]);
    let (mut first, mut second) = (Mgmt::new(b.addr), Mgmt::new(b.addr));
    let proxy = register(&mut first);
    assert_eq!(register(&mut second), proxy);
    let bye = Message::Unregister {
        proxy: Endpoint::new(Proto::Tcp, proxy),
    };
    assert_eq!(first.request(&bye), Message::Ack);
    b.expect_line(&format!(
        "tcp {proxy}: holder broker-test[{}] (mgmt {}) unregistered; 1 holders left",
        std::process::id(),
        first.addr()
    ));
    // The proxy still takes connections, and the other holder serves them.
    let mut client = TcpStream::connect_timeout(&proxy.into(), WAIT).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let (mut server, peer, _) = listener_side(&mut second, proxy);
    assert_eq!(peer, local_v4(&client));
    client.write_all(b"ping").unwrap();
    server.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = [0u8; 4];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    // The one that left is no holder: its heartbeat is not the other's.
    assert_eq!(
        first.request(&heartbeat(proxy)),
        Message::ReregisterRequest {
            unknown: vec![Endpoint::new(Proto::Tcp, proxy)]
        }
    );
    assert_eq!(second.request(&heartbeat(proxy)), Message::HeartbeatAck);
    // The last one leaving ends it.
    assert_eq!(second.request(&bye), Message::Ack);
    b.expect_line(&format!("unregistered tcp {proxy}"));
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect_timeout(&proxy.into(), WAIT).is_ok() {
        assert!(Instant::now() < deadline, "proxy still open");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        (counter(&b, "unregistered"), counter(&b, "holders_left")),
        (1, 2)
    );
}

/// A relayed GCB connector and a plain connector of a listener that stays
/// silent: each connection fails (rejected with `Timeout`, reset); the
/// registration does not.
#[test]
fn relayed_and_plain_connectors_of_a_silent_listener_fail_alone() {
    let mut b = Broker::start(&[]);
    let mut l = Mgmt::new(b.addr);
    let proxy = register(&mut l);
    let mut plain = TcpStream::connect_timeout(&proxy.into(), WAIT).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut c = Mgmt::new(b.addr);
    let d = c.request(&Message::Connect {
        proto: Proto::Tcp,
        target: proxy,
        connector: a("10.1.1.1:5002"),
        connector_id: None,
        realm: Some("elsewhere".into()),
        features: proto::gcb::Features::NONE,
        asked_from_port: 0,
    });
    let Message::ConnectDecision(Decision::Relay { via, token }) = d else {
        panic!("{d:?}")
    };
    let gcb = thread::spawn(move || {
        let mut s = TcpStream::connect_timeout(&via.into(), WAIT).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(
            &StreamHello {
                token,
                role: Role::Connector,
            }
            .to_bytes(),
        )
        .unwrap();
        let mut buf = [0u8; StreamPeer::LEN];
        s.read_exact(&mut buf).unwrap();
        StreamPeer::decode(&buf).unwrap()
    });
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 1];
        plain.read(&mut buf).map_err(|e| e.kind())
    });
    // Two RelayConnects (one per connection), never answered; heartbeats go on.
    let mut tokens = Vec::new();
    while tokens.len() < 2 {
        let (_, cmd) = l.take_command(WAIT);
        assert!(matches!(cmd, Message::RelayConnect { .. }), "{cmd:?}");
        let t = token_of(&cmd).unwrap();
        if !tokens.contains(&t) {
            tokens.push(t);
        }
    }
    assert!(tokens.contains(&token));
    heartbeat_until(&mut l, proxy, Duration::from_secs(15), || {
        thread::sleep(Duration::from_millis(200));
        (gcb.is_finished() && reader.is_finished()).then_some(())
    });
    assert_eq!(
        gcb.join().unwrap(),
        StreamPeer::Rejected {
            code: ErrorCode::Timeout
        }
    );
    assert_eq!(
        reader.join().unwrap(),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    b.expect_line("RelayConnect to listener");
    b.expect_line("that connection fails (Timeout), the registration stays");
    assert_eq!(l.request(&heartbeat(proxy)), Message::HeartbeatAck);
    assert_eq!(
        (
            counter(&b, "commands_failed_timeout"),
            counter(&b, "expired")
        ),
        (2, 0)
    );
}

/// A holder that says it does not hold the socket leaves, and the command
/// goes to the other; a refusal for the socket's own reason (its queue is
/// full) reaches the connector as it is, and nothing else changes.
#[test]
fn a_disowning_holder_leaves_and_a_refusal_reaches_the_connector() {
    let mut b = Broker::start(&[]);
    let (mut first, mut second) = (Mgmt::new(b.addr), Mgmt::new(b.addr));
    let proxy = register(&mut first);
    assert_eq!(register(&mut second), proxy);
    let mut c = Mgmt::new(b.addr);
    let token = reversal(&mut c, proxy, "127.0.0.1:5001");
    // The first holder, commanded first, no longer holds the socket; the
    // command goes to the second, whose queue is full.
    let (id, _) = command_for(&mut first, token, WAIT);
    first.answer(
        id,
        &Message::error(ErrorCode::NotRegistered, "no such listener here"),
    );
    let (id, _) = command_for(&mut second, token, WAIT);
    second.answer(
        id,
        &Message::error(ErrorCode::LimitReached, "the accept queue is full"),
    );
    let (id, failed, _) = c.recv(WAIT).expect("ConnectFailed");
    assert_eq!(
        failed,
        Message::ConnectFailed {
            token,
            code: ErrorCode::LimitReached
        }
    );
    c.answer(id, &Message::Ack);
    b.expect_line(&format!(
        "tcp {proxy}: holder broker-test[{}] (mgmt {}) does not hold it any more; 1 holders left",
        std::process::id(),
        first.addr()
    ));
    assert_eq!(second.request(&heartbeat(proxy)), Message::HeartbeatAck);
    for (name, want) in [
        ("holders_disowned", 1),
        ("commands_resent", 1),
        ("commands_failed_full", 1),
        ("commands_failed", 1),
        ("unregistered", 0),
    ] {
        assert_eq!(counter(&b, name), want, "{name}");
    }
}
