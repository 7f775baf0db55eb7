//! What the broker's hostile-input tests share: the broker's state as the
//! status query shows it, with the clocks left out so two snapshots compare
//! equal when nothing changed, and counter deltas checked exactly (every
//! counter that moved, by how much), so junk is shown to land in its own
//! counter and nowhere else.

#![allow(dead_code)] // each test binary uses a different part

use daemon_kit::testing::counters;
use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::Duration;
use testbed::json::{self, Value};

use proto::gcb::{Decision, Message};
use proto::{Endpoint, Proto};

use crate::support::{Broker, Mgmt, WAIT};

fn query_json(b: &Broker) -> Value {
    let (code, out, err) = b.query(true);
    assert_eq!(code, 0, "query failed: {err}");
    json::parse(&out).unwrap_or_else(|e| panic!("query --json: {e}: {out}"))
}

/// Every counter of the broker.
pub fn counters(b: &Broker) -> BTreeMap<String, u64> {
    let v = query_json(b);
    let obj = v
        .get("counters")
        .and_then(Value::as_object)
        .expect("counters");
    obj.iter()
        .map(|(k, v)| match v {
            Value::Num(n) => (k.clone(), *n as u64),
            other => panic!("counter {k}: {other:?}"),
        })
        .collect()
}

/// The broker's tables without ages and idle times: registrations, relays,
/// pending pairings, UDP rules and the port pool.
pub fn state(b: &Broker) -> String {
    const CLOCKS: [&str; 5] = [
        "age_s",
        "last_heartbeat_s",
        "idle_s",
        "expires_in_s",
        "uptime_s",
    ];
    fn strip(v: &Value) -> String {
        match v {
            Value::Obj(m) => {
                let fields: Vec<String> = m
                    .iter()
                    .filter(|(k, _)| !CLOCKS.contains(&k.as_str()))
                    .map(|(k, v)| format!("{k}={}", strip(v)))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }
            Value::Arr(items) => {
                let items: Vec<String> = items.iter().map(strip).collect();
                format!("[{}]", items.join(","))
            }
            other => format!("{other:?}"),
        }
    }
    let v = query_json(b);
    [
        "registrations",
        "relays",
        "pending",
        "udp_rules",
        "free_ports",
        "quarantined_ports",
    ]
    .iter()
    .map(|k| format!("{k}: {}", strip(v.get(k).unwrap_or(&Value::Null))))
    .collect::<Vec<_>>()
    .join("\n")
}

/// Counters that moved since `before`, by how much; `received` is left out,
/// since the status queries themselves arrive on the command port.
pub fn moved(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    let mut got = counters::moved(before, after);
    got.remove("received");
    got
}

/// Waits (bounded) until exactly the counters in `want` have moved by
/// exactly those amounts since `before`, and no other.
pub fn expect_moved(b: &Broker, before: &BTreeMap<String, u64>, want: &[(&str, u64)]) {
    expect_moved_within(b, before, want, WAIT);
}

/// [`expect_moved`] for events that take longer than [`WAIT`].
pub fn expect_moved_within(
    b: &Broker,
    before: &BTreeMap<String, u64>,
    want: &[(&str, u64)],
    within: Duration,
) {
    let mut before = before.clone();
    before.remove("received");
    counters::expect_moved(&before, want, within, || {
        let mut now = counters(b);
        now.remove("received");
        now
    });
}

/// The counters once the broker has worked through a flood.
pub fn settled(b: &Broker) -> BTreeMap<String, u64> {
    counters::settled(|| counters(b))
}

/// Asserts that `reply` is an error reply with `code`.
pub fn assert_error(reply: &proto::gcb::Message, code: proto::gcb::ErrorCode) {
    match reply {
        proto::gcb::Message::Error { code: got, .. } if *got == code => {}
        other => panic!("want Error{{{code:?}}}, got {other:?}"),
    }
}

/// A TCP `Connect` to `target` by a connector that reports `connector`.
pub fn connect_msg(target: SocketAddrV4, connector: SocketAddrV4) -> Message {
    Message::Connect {
        proto: Proto::Tcp,
        target,
        connector,
        connector_id: None,
        realm: None,
        features: proto::gcb::Features::NONE,
        asked_from_port: 0,
    }
}

/// Asserts a reversal was decided and the listener was commanded (once
/// taken here, and acknowledged).
pub fn expect_reversal(decision: &Message, listener: &mut Mgmt) {
    assert!(
        matches!(
            decision,
            Message::ConnectDecision(Decision::Reversal { .. })
        ),
        "{decision:?}"
    );
    assert!(matches!(listener.command(), Message::ReverseConnect { .. }));
}

/// A heartbeat for one TCP proxy.
pub fn heartbeat(proxy: SocketAddrV4) -> Message {
    Message::Heartbeat {
        held: vec![Endpoint::new(Proto::Tcp, proxy)],
    }
}
