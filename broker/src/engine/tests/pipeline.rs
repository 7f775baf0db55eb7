//! The command port's checks, through the core: what is dropped and
//! counted, what is answered without being executed (a newer version, a
//! retransmission), the rate limit, who may ask for the status, and
//! requests sealed with a secret.

use std::time::Duration;

use proto::gcb::{self, ErrorCode, Message, StatusFormat};
use proto::Proto;
use testbed::json::{self, Value};

use super::harness::{a, Bed, Proc};
use crate::values::load_secret;

#[test]
fn garbage_is_counted_and_a_newer_version_is_told_why() {
    let mut bed = Bed::new();
    let from = a("198.51.100.7:4000");
    assert!(bed.datagram(from, 1, b"hello").is_none());
    assert_eq!(bed.counter("malformed_not_gcb"), 1);
    let mut newer = gcb::encode(&Message::Heartbeat { held: vec![] }, 9).unwrap();
    newer[4] = proto::header::VERSION + 1;
    let reply = bed.datagram(from, 9, &newer).expect("answered");
    assert!(matches!(
        reply,
        Message::Error {
            code: ErrorCode::VersionMismatch,
            ..
        }
    ));
    let broker_bound = Message::Ack;
    bed.engine.on_command_datagram(
        &gcb::encode(
            &Message::MakeHole {
                token: gcb::Token(1),
                target: from,
                peer: from,
                proxy: from,
            },
            3,
        )
        .unwrap(),
        from.into(),
        bed.now,
        &mut bed.host,
    );
    bed.apply();
    let reply = bed.replies.last().map(|r| r.2.clone());
    assert!(matches!(
        reply,
        Some(Message::Error {
            code: ErrorCode::Unsupported,
            ..
        })
    ));
    bed.answer(from, 77, broker_bound);
    assert_eq!(bed.counter("stray_replies"), 1);
    let v6 = "[2001:db8::1]:4000".parse().unwrap();
    bed.engine
        .on_command_datagram(b"GCB1", v6, bed.now, &mut bed.host);
    assert_eq!(bed.counter("malformed"), 2);
    assert_eq!(bed.counter("received"), 5);
}

#[test]
fn a_retransmitted_request_gets_the_same_reply_and_runs_once() {
    let mut bed = Bed::new();
    let (listener, c) = (Proc::in_a(1), Proc::public(2));
    let proxy = bed.register(listener, Proto::Tcp, 8080);
    let bytes = gcb::encode(&c.connect(Proto::Tcp, proxy), 500).unwrap();
    let first = bed.datagram(c.mgmt, 500, &bytes).unwrap();
    let again = bed.datagram(c.mgmt, 500, &bytes).unwrap();
    assert_eq!(first, again);
    assert_eq!((bed.counter("connects"), bed.counter("duplicates")), (1, 1));
    let commands = bed
        .commands
        .iter()
        .filter(|(to, ..)| *to == listener.mgmt)
        .count();
    assert_eq!(commands, 1, "one token, one command");
}

#[test]
fn the_rate_limit_drops_a_source_past_its_rate() {
    let mut limits = super::harness::limits();
    limits.rate_limit = 2;
    let mut bed = Bed::with(limits);
    let p = Proc::in_b(1);
    let hb = Message::Heartbeat { held: vec![] };
    assert!(bed.send(p.mgmt, &hb).is_some());
    assert!(bed.send(p.mgmt, &hb).is_some());
    assert!(bed.send(p.mgmt, &hb).is_none(), "dropped without an answer");
    assert!(bed.send(Proc::in_a(1).mgmt, &hb).is_some(), "per source IP");
    bed.now += Duration::from_secs(1);
    assert!(bed.send(p.mgmt, &hb).is_some(), "refilled");
    assert_eq!(bed.counter("rate_limited"), 1);
    let mut config = bed.engine.config().clone();
    config.limits.rate_limit = 0;
    bed.engine.reconfigure(config, None);
    for _ in 0..10 {
        assert!(bed.send(p.mgmt, &hb).is_some(), "off after a reload");
    }
}

fn status(format: StatusFormat) -> Message {
    Message::StatusRequest {
        snapshot: 0,
        page: 0,
        format,
    }
}

#[test]
fn the_status_is_for_this_host_and_allowed_networks_only() {
    let mut limits = super::harness::limits();
    limits.rate_limit = 1;
    let mut bed = Bed::with(limits);
    bed.register(Proc::in_a(1), Proto::Udp, 9000);
    let stranger = a("198.51.100.50:1");
    let refused = bed.ask(stranger, status(StatusFormat::Text));
    assert!(matches!(
        refused,
        Message::Error {
            code: ErrorCode::Unauthorized,
            ..
        }
    ));
    bed.host.own.push("192.0.2.77".parse().unwrap());
    for from in [a("127.0.0.1:1"), a("203.0.113.10:2"), a("192.0.2.77:3")] {
        // Trusted sources are not rate-limited: pages come back to back.
        for _ in 0..3 {
            let reply = bed.ask(from, status(StatusFormat::Json));
            let Message::StatusReply {
                pages: 1, chunk, ..
            } = reply
            else {
                panic!("{reply:?}")
            };
            let doc = json::parse(&chunk).unwrap();
            let regs = doc.get("registrations").and_then(Value::as_array).unwrap();
            assert_eq!(regs[0].get("proto").and_then(Value::as_str), Some("udp"));
            assert_eq!(regs[0].get("data_path"), Some(&Value::Null));
        }
    }
    let mut config = bed.engine.config().clone();
    config.limits.status_allow = "198.51.100.0/24".parse().unwrap();
    bed.engine.reconfigure(config, None);
    let text = bed.ask(stranger, status(StatusFormat::Text));
    assert!(
        matches!(&text, Message::StatusReply { chunk, .. } if chunk.contains("registrations: 1"))
    );
}

#[test]
fn with_a_secret_only_sealed_requests_are_heard() {
    let path = std::env::temp_dir().join(format!("gcb-engine-secret-{}", std::process::id()));
    std::fs::write(&path, "k3y\n").unwrap();
    let (secret, _) = load_secret(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let mut bed = Bed::new();
    let config = bed.engine.config().clone();
    bed.engine.reconfigure(config, Some(secret.clone()));
    let p = Proc::in_a(1);
    let plain = gcb::encode(&p.register(Proto::Tcp, 8080), 5).unwrap();
    assert!(
        bed.datagram(p.mgmt, 5, &plain).is_none(),
        "dropped unanswered"
    );
    assert_eq!(bed.counter("auth_missing"), 1);
    assert!(bed.host.open.is_empty());
    let mut client = daemon_kit::auth::authenticator(&secret);
    let sealed =
        daemon_kit::auth::seal(Some(&client), gcb::encode(&p.register(Proto::Tcp, 8080), 6));
    bed.datagram(p.mgmt, 6, &sealed.unwrap());
    assert_eq!(bed.host.open.len(), 1, "registered");
    let (to, reply) = bed.sealed.last().expect("the reply went out sealed");
    assert_eq!(*to, p.mgmt);
    let opened = client
        .open(reply, daemon_kit::auth::unix_ms())
        .expect("with the key");
    assert!(matches!(
        gcb::decode(&opened).unwrap().1,
        Message::RegisterOk { .. }
    ));
}
