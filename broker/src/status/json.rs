//! `query --json`: the status snapshot ([`View`]) as one JSON object,
//! bounded like the text. JSON is written by hand: the shapes are flat, and
//! a serializer dependency would buy nothing here.

use std::fmt::Write;
use std::time::Duration;

use super::render::{HolderView, View};

/// A JSON string literal.
fn js(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", u32::from(c));
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Seconds as a JSON number with millisecond precision.
fn jsecs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// Writes `"key":[items]`, cut at the budget; returns whether it was cut.
fn json_list<T>(
    o: &mut String,
    key: &str,
    items: &[T],
    budget: usize,
    mut item: impl FnMut(&T) -> String,
) -> bool {
    let _ = write!(o, "{}:[", js(key));
    let mut cut = false;
    for (n, it) in items.iter().enumerate() {
        if o.len() >= budget {
            cut = true;
            break;
        }
        if n > 0 {
            o.push(',');
        }
        o.push_str(&item(it));
    }
    o.push(']');
    cut
}

fn holder(h: &HolderView) -> String {
    format!(
        "{{\"pid\":{},\"program\":{},\"mgmt\":{},\"heartbeat_s\":{},\
         \"last_heartbeat_s\":{},\"age_s\":{}}}",
        h.pid,
        js(&h.program),
        js(&h.mgmt.to_string()),
        h.heartbeat_secs,
        jsecs(h.since_heartbeat),
        jsecs(h.age)
    )
}

/// One JSON object. Lists are cut at `budget` bytes; `"truncated": true`
/// then says so.
pub fn json(v: &View, budget: usize) -> String {
    let mut o = String::from("{");
    let _ = write!(
        o,
        "\"version\":{},\"uptime_s\":{},\"command\":{},\"rendezvous\":{},\"port_range\":{},\
         \"free_ports\":{},\"quarantined_ports\":{},\"limits\":{{\"max_registrations\":{},\
         \"max_relays\":{},\"rate_limit\":{}}},",
        js(v.version),
        jsecs(v.uptime),
        js(&v.command.to_string()),
        js(&v.rendezvous.to_string()),
        js(&v.port_range.to_string()),
        v.free_ports,
        v.quarantined_ports,
        v.max_registrations,
        v.max_relays,
        v.rate_limit
    );
    let mut cut = json_list(&mut o, "registrations", &v.registrations, budget, |r| {
        format!(
            "{{\"proto\":{},\"proxy\":{},\"local\":{},\"observed\":{},\"public\":{},\"realm\":{},\
             \"realm_named\":{},\"pid\":{},\"program\":{},\"age_s\":{},\"last_heartbeat_s\":{},\"heartbeat_s\":{},\
             \"data_path\":{},\"holders\":[{}]}}",
            js(&r.proto.to_string()),
            js(&r.proxy.to_string()),
            js(&r.local.to_string()),
            js(&r.observed.to_string()),
            r.public,
            js(&r.realm),
            r.realm_named,
            r.pid,
            js(&r.program),
            jsecs(r.age),
            jsecs(r.since_heartbeat),
            r.heartbeat_secs,
            r.data_path.map_or("null".to_string(), |p| js(&p.to_string())),
            r.holders.iter().map(holder).collect::<Vec<_>>().join(",")
        )
    });
    o.push(',');
    cut |= json_list(&mut o, "relays", &v.relays, budget, |r| {
        format!(
            "{{\"id\":{},\"connector\":{},\"listener\":{},\"proxy\":{},\"bytes_to_listener\":{},\
             \"bytes_to_connector\":{},\"age_s\":{}}}",
            r.id,
            js(&r.connector.to_string()),
            js(&r.listener.to_string()),
            js(&r.proxy.to_string()),
            r.bytes[0],
            r.bytes[1],
            jsecs(r.age)
        )
    });
    o.push(',');
    cut |= json_list(&mut o, "pending", &v.pending, budget, |p| {
        format!(
            "{{\"kind\":{},\"proxy\":{},\"peer\":{},\"age_s\":{},\"expires_in_s\":{},\
             \"connector_here\":{},\"listener_here\":{}}}",
            js(p.kind),
            js(&p.proxy.to_string()),
            js(&p.peer.to_string()),
            jsecs(p.age),
            jsecs(p.expires_in),
            p.connector_here,
            p.listener_here
        )
    });
    o.push(',');
    cut |= json_list(&mut o, "udp_rules", &v.udp_rules, budget, |r| {
        format!(
            "{{\"peer\":{},\"proxy\":{},\"age_s\":{},\"idle_s\":{},\"datagrams_to_client\":{},\
             \"bytes_to_client\":{},\"datagrams_to_peer\":{},\"bytes_to_peer\":{}}}",
            js(&r.peer.to_string()),
            js(&r.proxy.to_string()),
            jsecs(r.age),
            jsecs(r.idle),
            r.datagrams[0],
            r.bytes[0],
            r.datagrams[1],
            r.bytes[1]
        )
    });
    let counters: Vec<String> = v
        .counters
        .iter()
        .map(|(k, n)| format!("{}:{n}", js(k)))
        .collect();
    let _ = write!(
        o,
        ",\"bytes_relayed\":{{\"to_listener\":{},\"to_connector\":{}}},\"counters\":{{{}}},\"truncated\":{cut}}}",
        v.bytes_relayed[0],
        v.bytes_relayed[1],
        counters.join(",")
    );
    o
}
