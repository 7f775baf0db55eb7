//! End-to-end tests of `gcb-broker`'s command port on loopback, with a fake
//! client built on the proto crate: registration, heartbeats, duplicates,
//! garbage, decisions, limits, expiry, restart and the status query.
//! Private clients are faked by reporting a management IP other than
//! 127.0.0.1, which the broker then sees as rewritten by NAT.

mod support;

use std::net::{SocketAddrV4, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use proto::gcb::{self, Decision, ErrorCode, Message};
use proto::header::{Family, Flags, Header};
use proto::{Endpoint, Proto};
use support::*;

fn connect(target: SocketAddrV4, connector: &str, realm: Option<&str>) -> Message {
    Message::Connect {
        proto: Proto::Tcp,
        target,
        connector: a(connector),
        connector_id: None,
        realm: realm.map(str::to_string),
        features: proto::gcb::Features::NONE,
        asked_from_port: 0,
    }
}

#[test]
fn register_heartbeat_duplicate_and_unregister() {
    let mut b = Broker::start(&[]);
    let mut m = Mgmt::new(b.addr);
    let proxy = m.register_ok("127.0.0.1:8080", "127.0.0.1");
    assert!(
        b.in_range(proxy.port()) && proxy.ip().is_loopback(),
        "{proxy}"
    );
    b.expect_line(&format!(
        "registered tcp 127.0.0.1:8080 of broker-test[{}]",
        std::process::id()
    ));
    // The proxy listener exists.
    TcpStream::connect_timeout(&proxy.into(), WAIT).expect("proxy listener accepts");

    // Registering the same socket again gives the same proxy.
    assert_eq!(m.register_ok("127.0.0.1:8080", "127.0.0.1"), proxy);

    let ep = Endpoint::new(Proto::Tcp, proxy);
    assert_eq!(
        m.request(&Message::Heartbeat { held: vec![ep] }),
        Message::HeartbeatAck
    );
    let stranger = Endpoint::new(Proto::Tcp, a("127.0.0.1:1"));
    assert_eq!(
        m.request(&Message::Heartbeat {
            held: vec![ep, stranger]
        }),
        Message::ReregisterRequest {
            unknown: vec![stranger]
        }
    );

    // A retransmission (same id) gets the very same bytes, executed once.
    let hb = Message::Heartbeat {
        held: vec![ep, stranger],
    };
    let (first, _) = m.request_with_id(&hb, 77);
    let (again, _) = m.request_with_id(&hb, 77);
    assert_eq!(first, again);

    // Only the owner may unregister.
    let mut other = Mgmt::new(b.addr);
    assert!(matches!(
        other.request(&Message::Unregister { proxy: ep }),
        Message::Error {
            code: ErrorCode::NotRegistered,
            ..
        }
    ));
    assert_eq!(m.request(&Message::Unregister { proxy: ep }), Message::Ack);
    b.expect_line(&format!("unregistered tcp {proxy}"));
    assert!(
        TcpStream::connect_timeout(&proxy.into(), WAIT).is_err(),
        "proxy closed"
    );
    assert_eq!(
        m.request(&Message::Heartbeat { held: vec![ep] }),
        Message::ReregisterRequest { unknown: vec![ep] }
    );
}

#[test]
fn garbage_is_counted_and_newer_versions_are_told() {
    let mut b = Broker::start(&[]);
    let m = Mgmt::new(b.addr);
    m.send_raw(b"hello, is this FTP?");
    m.send_raw(&[0x47, 0x43, 0x42, 0x31, 1]);
    // Both dropped, as the broker says once it has handled them; an answer
    // would be queued by now.
    b.expect_line("dropped 19 bytes");
    b.expect_line("dropped 5 bytes");
    assert!(
        m.recv(Duration::from_millis(300)).is_none(),
        "garbage gets no answer"
    );

    let mut newer = Header::new(Family::Gcb, 0x03, Flags::empty(), 4242);
    newer.version = 9;
    m.send_raw(&newer.to_bytes());
    let (id, reply, _) = m.recv(WAIT).expect("a version reply");
    assert_eq!(id, 4242);
    assert!(
        matches!(
            reply,
            Message::Error {
                code: ErrorCode::VersionMismatch,
                ..
            }
        ),
        "{reply:?}"
    );

    let (code, out, err) = b.query(true);
    assert_eq!(code, 0, "{err}");
    let v = testbed::json::parse(&out).unwrap();
    let counters = v.get("counters").unwrap();
    let n = |k: &str| {
        counters.get(k).and_then(|v| match v {
            testbed::json::Value::Num(n) => Some(*n),
            _ => None,
        })
    };
    assert_eq!(n("malformed"), Some(2.0));
    assert_eq!(n("version_mismatch"), Some(1.0));
}

#[test]
fn connect_decisions_follow_the_table() {
    let mut b = Broker::start(&[]);
    let mut public = Mgmt::new(b.addr);
    let public_proxy = public.register_ok("127.0.0.1:7001", "127.0.0.1");
    // On loopback every source IP is 127.0.0.1, so realms are named to
    // tell the private networks apart.
    let mut private = Mgmt::new(b.addr);
    let private_proxy = match private.register("10.9.9.9:7002", "10.9.9.9", Some("lab"), None, 10) {
        Message::RegisterOk { proxy, .. } => proxy,
        other => panic!("{other:?}"),
    };
    let mut c = Mgmt::new(b.addr);

    // Public listener: anyone dials its real address.
    let d = c.request(&connect(public_proxy, "10.1.1.1:5000", None));
    assert_eq!(
        d,
        Message::ConnectDecision(Decision::Direct {
            addr: a("127.0.0.1:7001")
        })
    );

    // Private listener, private connector in the same realm.
    let d = c.request(&connect(private_proxy, "10.1.1.1:5000", Some("lab")));
    assert_eq!(
        d,
        Message::ConnectDecision(Decision::SameRealm {
            addr: a("10.9.9.9:7002")
        })
    );

    // Private listener, public connector: reversal, and the listener is told.
    let d = c.request(&connect(private_proxy, "127.0.0.1:5001", None));
    let Message::ConnectDecision(Decision::Reversal { token }) = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        private.command(),
        Message::ReverseConnect {
            token,
            connector: a("127.0.0.1:5001"),
            peer: a("127.0.0.1:5001"),
            proxy: private_proxy
        }
    );
    b.expect_line("reversal");

    // Private listener, private connector in another realm: relay.
    let d = c.request(&connect(private_proxy, "10.1.1.1:5002", Some("elsewhere")));
    let Message::ConnectDecision(Decision::Relay { via, token }) = d else {
        panic!("{d:?}")
    };
    assert_eq!(via, b.addr, "the rendezvous is the command port's address");
    match private.command() {
        Message::RelayConnect {
            token: t,
            broker,
            peer,
            proxy,
        } => {
            assert_eq!((t, broker, proxy), (token, b.addr, private_proxy));
            assert_eq!(peer, a("127.0.0.1:5002"), "public IP, connector's port");
        }
        other => panic!("{other:?}"),
    }

    // Nothing registered there.
    let d = c.request(&connect(a("127.0.0.1:1"), "127.0.0.1:5003", None));
    assert_eq!(d, Message::ConnectDecision(Decision::NotRegistered));
    // A TCP registration is no UDP target (UDP decisions: broker_udp.rs).
    let udp = Message::Connect {
        proto: Proto::Udp,
        target: public_proxy,
        connector: a("127.0.0.1:5004"),
        connector_id: None,
        realm: None,
        features: proto::gcb::Features::NONE,
        asked_from_port: 0,
    };
    assert_eq!(
        c.request(&udp),
        Message::ConnectDecision(Decision::NotRegistered)
    );
}

#[test]
fn limits_refuse_with_a_warning() {
    let mut b = Broker::start(&["--max-registrations", "1"]);
    let mut m = Mgmt::new(b.addr);
    m.register_ok("127.0.0.1:9001", "127.0.0.1");
    let refused = m.register("127.0.0.1:9002", "127.0.0.1", None, None, 10);
    assert!(
        matches!(
            refused,
            Message::Error {
                code: ErrorCode::LimitReached,
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(b
        .expect_line("registration limit of 1 reached")
        .contains("WARN"));
}

#[test]
fn rate_limit_drops_the_excess_and_warns() {
    let mut b = Broker::start(&["--rate-limit", "5"]);
    let m = Mgmt::new(b.addr);
    for id in 0..40u64 {
        m.send_raw(&gcb::encode(&Message::Heartbeat { held: vec![] }, id).unwrap());
    }
    let mut answered = 0;
    while m.recv(Duration::from_millis(300)).is_some() {
        answered += 1;
    }
    assert!((5..=8).contains(&answered), "{answered} answered");
    assert!(b
        .expect_line("rate limit: 127.0.0.1 sends more than 5 commands/s")
        .contains("WARN"));
    // The status query from this host is not rate-limited.
    let (code, out, err) = b.query(false);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rate_limited "), "{out}");
}

#[test]
fn expiry_closes_the_proxy() {
    let mut b = Broker::start(&["--heartbeat-timeout-s", "1"]);
    let mut m = Mgmt::new(b.addr);
    let proxy = match m.register("127.0.0.1:9100", "127.0.0.1", None, None, 0) {
        Message::RegisterOk { proxy, .. } => proxy,
        other => panic!("{other:?}"),
    };
    let line = b.expect_line(&format!("expired tcp {proxy}"));
    assert!(line.contains("INFO"), "{line}");
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect_timeout(&proxy.into(), WAIT).is_ok() {
        assert!(Instant::now() < deadline, "proxy still open");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn restart_gives_the_old_port_back_on_reregister() {
    let (port, range) = (free_port(), range());
    let b = Broker::start_on(port, range, &[]);
    let mut m = Mgmt::new(b.addr);
    let proxy = m.register_ok("10.0.0.7:8000", "10.0.0.7");
    drop(b);
    let _b = Broker::start_on(port, range, &[]);
    let ep = Endpoint::new(Proto::Tcp, proxy);
    assert_eq!(
        m.request(&Message::Heartbeat { held: vec![ep] }),
        Message::ReregisterRequest { unknown: vec![ep] }
    );
    match m.register("10.0.0.7:8000", "10.0.0.7", None, Some(proxy.port()), 10) {
        Message::RegisterOk { proxy: again, .. } => assert_eq!(again, proxy),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        m.request(&Message::Heartbeat { held: vec![ep] }),
        Message::HeartbeatAck
    );
}

/// A `Register` that requires its port gets that port or `PortUnavailable`,
/// never another one; after the holder is gone, a restarted program (another
/// local socket, same public IP) gets it back from the quarantine.
#[test]
fn a_required_port_is_granted_exactly_or_refused() {
    let mut b = Broker::start(&[]);
    let required = |m: &mut Mgmt, local: &str, port: u16| {
        let mgmt_local = SocketAddrV4::new([127, 0, 0, 1].into(), m.addr().port());
        m.request(&Message::Register {
            proto: Proto::Tcp,
            local: a(local),
            realm: None,
            desired_port: Some(port),
            port_required: true,
            mgmt: gcb::MgmtInfo::new(mgmt_local, 1, 10, "required-test"),
        })
    };
    let mut first = Mgmt::new(b.addr);
    let port = first.register_ok("127.0.0.1:7100", "127.0.0.1").port();
    // Taken by a live registration: refused, not moved elsewhere.
    let mut second = Mgmt::new(b.addr);
    assert!(matches!(
        required(&mut second, "127.0.0.1:7200", port),
        Message::Error { code: ErrorCode::PortUnavailable, .. }
    ));
    b.expect_line(&format!("requires proxy port {port}"));
    assert!(!b.in_range(1));
    assert!(matches!(
        required(&mut second, "127.0.0.1:7200", 1),
        Message::Error { code: ErrorCode::PortUnavailable, .. }
    ));
    let ep = Endpoint::new(Proto::Tcp, SocketAddrV4::new(*b.addr.ip(), port));
    assert_eq!(first.request(&Message::Unregister { proxy: ep }), Message::Ack);
    match required(&mut second, "127.0.0.1:7200", port) {
        Message::RegisterOk { proxy, .. } => assert_eq!(proxy.port(), port),
        other => panic!("{other:?}"),
    }
    // The same socket asking again keeps it; asking for another port while
    // registered on this one is refused.
    assert!(matches!(required(&mut second, "127.0.0.1:7200", port), Message::RegisterOk { .. }));
    assert!(matches!(
        required(&mut second, "127.0.0.1:7200", if b.in_range(port + 1) { port + 1 } else { port - 1 }),
        Message::Error { code: ErrorCode::PortUnavailable, .. }
    ));
}

#[test]
fn query_prints_registrations_in_text_and_json() {
    let b = Broker::start(&[]);
    let mut m = Mgmt::new(b.addr);
    let proxy = m.register_ok("10.0.0.8:2222", "10.0.0.8");
    let (code, out, err) = b.query(false);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains(&proxy.to_string()))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("local 10.0.0.8:2222") && line.contains("private realm 127.0.0.1"),
        "{line}"
    );
    assert!(line.contains(&format!("observed {}", m.addr())), "{line}");
    assert!(
        out.contains("registrations: 1") && out.contains("counters: received"),
        "{out}"
    );

    let (code, out, err) = b.query(true);
    assert_eq!(code, 0, "{err}");
    let v = testbed::json::parse(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let regs = v.get("registrations").and_then(|r| r.as_array()).unwrap();
    assert_eq!(regs.len(), 1);
    assert_eq!(
        regs[0].get("proxy").and_then(|p| p.as_str()),
        Some(proxy.to_string().as_str())
    );
    assert_eq!(regs[0].get("public").and_then(|p| p.as_bool()), Some(false));

    // No broker there: one line, exit 1.
    let stopped = b.addr;
    drop(b);
    let out = std::process::Command::new(BIN)
        .args(["query", &stopped.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("gcb-broker: query: "), "{err}");
}

#[test]
fn query_pages_a_large_status() {
    let b = Broker::start_on(free_port(), (26000, 26499), &["--rate-limit", "0"]);
    let mut m = Mgmt::new(b.addr);
    let proxies: Vec<SocketAddrV4> = (0..400)
        .map(|i| m.register_ok(&format!("10.0.{}.{}:80", i / 200, i % 200 + 1), "10.0.0.1"))
        .collect();
    let (code, out, err) = b.query(false);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.len() > proto::gcb::MAX_STATUS_CHUNK,
        "one page only: {} bytes",
        out.len()
    );
    assert!(out.contains("registrations: 400"));
    for p in &proxies {
        assert!(out.contains(&format!("tcp {p} ")), "{p} missing");
    }
    let (code, out, err) = b.query(true);
    assert_eq!(code, 0, "{err}");
    let v = testbed::json::parse(&out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        v.get("registrations")
            .and_then(|r| r.as_array())
            .map(<[_]>::len),
        Some(400)
    );
}
