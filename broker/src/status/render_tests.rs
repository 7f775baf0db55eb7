//! Unit tests of the status renderings: content, valid JSON (checked with
//! the testbed's strict parser), escaping, and the byte budget.

use std::net::SocketAddrV4;
use std::time::Duration;

use proto::Proto;
use testbed::json::{self, Value};

use super::*;
use crate::values::PortRange;

fn a(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn view(registrations: usize) -> View {
    let reg = |n: usize| RegView {
        proto: Proto::Tcp,
        proxy: SocketAddrV4::new([203, 0, 113, 1].into(), 20000 + n as u16),
        local: a("10.0.0.5:8080"),
        observed: a("198.51.100.1:40000"),
        public: false,
        realm: "lab \\ \"one\"".into(),
        realm_named: true,
        pid: 42,
        program: "condor_\u{1}schedd".into(),
        age: Duration::from_secs(3725),
        since_heartbeat: Duration::from_millis(1500),
        heartbeat_secs: 10,
        data_path: None,
        holders: vec![
            HolderView {
                mgmt: a("198.51.100.1:40000"),
                pid: 42,
                program: "condor_\u{1}schedd".into(),
                heartbeat_secs: 10,
                age: Duration::from_secs(3725),
                since_heartbeat: Duration::from_millis(1500),
            },
            HolderView {
                mgmt: a("198.51.100.1:40001"),
                pid: 43,
                program: "condor_shadow".into(),
                heartbeat_secs: 10,
                age: Duration::from_secs(5),
                since_heartbeat: Duration::from_secs(4),
            },
        ],
    };
    View {
        head: Head {
            version: "0.1.0",
            uptime: Duration::from_secs(61),
            command: "203.0.113.1:65432".parse().unwrap(),
            rendezvous: a("203.0.113.1:65432"),
            port_range: PortRange {
                lo: 20000,
                hi: 29999,
            },
            free_ports: 9999,
            quarantined_ports: 0,
            limits: LimitsView {
                max_registrations: 100,
                max_relays: 10,
                rate_limit: 0,
            },
        },
        registrations: (0..registrations).map(reg).collect(),
        relays: vec![RelayView {
            id: 3,
            connector: a("198.51.100.2:5555"),
            listener: a("198.51.100.1:6666"),
            proxy: a("203.0.113.1:20000"),
            bytes_to_listener: 1 << 20,
            bytes_to_connector: 7,
            age: Duration::from_secs(2),
        }],
        pending: vec![PendingView {
            kind: "regular",
            proxy: a("203.0.113.1:20000"),
            peer: a("198.51.100.3:7777"),
            age: Duration::from_secs(1),
            expires_in: Duration::from_secs(9),
            connector_here: true,
            listener_here: false,
        }],
        udp_rules: vec![UdpRuleView {
            peer: a("198.51.100.4:9000"),
            proxy: a("203.0.113.1:20001"),
            age: Duration::from_secs(5),
            idle: Duration::from_secs(1),
            datagrams_to_client: 3,
            bytes_to_client: 300,
            datagrams_to_peer: 2,
            bytes_to_peer: 20,
        }],
        punch_blocked: vec![BlockedView {
            proto: Proto::Udp,
            realms: ["198.51.100.1".parse().unwrap(), "198.51.100.2".parse().unwrap()],
            expires_in: Duration::from_secs(599),
        }],
        bytes_relayed: Relayed {
            to_listener: 1 << 20,
            to_connector: 7,
        },
        counters: vec![("received", 12), ("malformed", 1)],
    }
}

#[test]
fn text_names_every_part() {
    let mut v = view(1);
    let mut udp = v.registrations[0].clone();
    udp.proto = Proto::Udp;
    udp.data_path = Some(a("198.51.100.1:40001"));
    v.registrations.push(udp);
    let t = text(&v, 1 << 20);
    for needle in [
        "gcb-broker 0.1.0, up 1m01s",
        "proxy ports 20000-29999: 9999 free",
        "rate off",
        "registrations: 2",
        "tcp 203.0.113.1:20000 local 10.0.0.5:8080 observed 198.51.100.1:40000 private realm \"lab \\ \"one\"\"",
        "age 1h02m05s heartbeat 1.5s ago (every 10s)",
        "#3 198.51.100.2:5555 -> 203.0.113.1:20000 (listener 198.51.100.1:6666) 1048576 bytes -> 7 bytes <-",
        "regular for 203.0.113.1:20000 peer 198.51.100.3:7777: connector here",
        "(every 10s) data path 198.51.100.1:40001",
        "\n    holder condor_\u{1}schedd[42] mgmt 198.51.100.1:40000 heartbeat 1.5s ago (every 10s), joined 1h02m05s ago\n",
        "\n    holder condor_shadow[43] mgmt 198.51.100.1:40001 heartbeat 4.0s ago (every 10s), joined 5.0s ago\n",
        "udp rules: 1",
        "198.51.100.4:9000 <-> 203.0.113.1:20001: 3 datagrams (300 bytes) to the client, 2 (20 bytes) back",
        "punch blocked: 1\n  udp 198.51.100.1 <-> 198.51.100.2: relayed at once for 9m59s more\n",
        "refused and malformed: malformed 1",
        "counters: received 12, malformed 1",
    ] {
        assert!(t.contains(needle), "{needle:?} not in:\n{t}");
    }
}

#[test]
fn json_is_valid_and_complete() {
    let out = json(&view(2), 1 << 20);
    let v = json::parse(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let regs = v.get("registrations").and_then(Value::as_array).unwrap();
    assert_eq!(regs.len(), 2);
    assert_eq!(
        regs[0].get("proxy").and_then(Value::as_str),
        Some("203.0.113.1:20000")
    );
    assert_eq!(
        regs[0].get("realm").and_then(Value::as_str),
        Some("lab \\ \"one\"")
    );
    assert_eq!(
        regs[0].get("program").and_then(Value::as_str),
        Some("condor_\u{1}schedd")
    );
    assert_eq!(regs[0].get("public").and_then(Value::as_bool), Some(false));
    assert_eq!(v.get("truncated").and_then(Value::as_bool), Some(false));
    assert_eq!(v.get("relays").and_then(Value::as_array).unwrap().len(), 1);
    assert_eq!(v.get("pending").and_then(Value::as_array).unwrap().len(), 1);
    let rules = v.get("udp_rules").and_then(Value::as_array).unwrap();
    assert_eq!(
        rules[0].get("peer").and_then(Value::as_str),
        Some("198.51.100.4:9000")
    );
    assert!(rules[0].get("bytes_to_peer").is_some());
    assert!(regs[0].get("data_path").is_some());
    let holders = regs[0].get("holders").and_then(Value::as_array).unwrap();
    assert_eq!(holders.len(), 2);
    let field = |i: usize, k: &str| holders[i].get(k).cloned();
    assert_eq!(field(1, "pid"), Some(Value::Num(43.0)));
    assert_eq!(
        field(1, "program"),
        Some(Value::Str("condor_shadow".into()))
    );
    assert_eq!(
        field(1, "mgmt"),
        Some(Value::Str("198.51.100.1:40001".into()))
    );
    assert_eq!(field(1, "last_heartbeat_s"), Some(Value::Num(4.0)));
    assert_eq!(field(0, "heartbeat_s"), Some(Value::Num(10.0)));
    assert_eq!(field(0, "age_s"), Some(Value::Num(3725.0)));
    let blocked = v.get("punch_blocked").and_then(Value::as_array).unwrap();
    assert_eq!(blocked[0].get("proto").and_then(Value::as_str), Some("udp"));
    let realms = blocked[0].get("realms").and_then(Value::as_array).unwrap();
    assert_eq!(realms[1].as_str(), Some("198.51.100.2"));
    assert_eq!(blocked[0].get("expires_in_s"), Some(&Value::Num(599.0)));
    assert!(v.get("counters").and_then(|c| c.get("malformed")).is_some());
    assert!(v.get("limits").and_then(|l| l.get("max_relays")).is_some());
}

#[test]
fn budget_cuts_lists_and_says_so() {
    let v = view(1000);
    let out = json(&v, 8192);
    assert!(out.len() < 8192 + 1024, "{} bytes", out.len());
    let parsed = json::parse(&out).unwrap();
    assert_eq!(parsed.get("truncated").and_then(Value::as_bool), Some(true));
    let shown = parsed
        .get("registrations")
        .and_then(Value::as_array)
        .unwrap()
        .len();
    assert!(shown > 0 && shown < 1000);
    let t = text(&v, 8192);
    assert!(t.len() < 8192 + 1024);
    assert!(t.contains("more not shown"), "{t}");
    assert!(t.contains("counters:"), "the counters always come out");
}

/// The JSON as the hand-written renderer wrote it before serde took over
/// (`golden/`): byte for byte, escapes and number style included, and
/// fields added since (`punch_blocked`) only added, never moved.
#[test]
fn json_is_byte_for_byte_what_it_was() {
    let mut v = view(2);
    v.registrations[1].proto = Proto::Udp;
    v.registrations[1].data_path = Some(a("198.51.100.1:40001"));
    v.registrations[0].realm_named = false;
    v.registrations[0].program = "tab\there \"q\" \\ \u{7f} é \u{1f}".into();
    assert_eq!(json(&v, 1 << 20), include_str!("golden/full.json"));
    let mut empty = view(0);
    empty.relays.clear();
    empty.pending.clear();
    empty.udp_rules.clear();
    empty.punch_blocked.clear();
    empty.counters.clear();
    assert_eq!(json(&empty, 1 << 20), include_str!("golden/empty.json"));
    // Backspace and form feed too, which serde_json would shorten.
    let mut odd = view(1);
    odd.registrations[0].program = "\u{8}\u{c}".into();
    assert!(json(&odd, 1 << 20).contains(r#""program":"\u0008\u000c""#));
}
