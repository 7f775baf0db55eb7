//! The status snapshot as data ([`View`]) and its two renderings: lines for
//! a person (`gcb-broker query`) and one JSON object (`query --json`).
//!
//! Both are bounded by a byte budget: lists are cut when the budget is
//! spent, and the output says so (`truncated`), so a broker with 100 000
//! registrations answers with what fits instead of building an unbounded
//! string. JSON is written by hand: the shapes are flat, and a serializer
//! dependency would buy nothing here.

use std::fmt::Write;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use proto::Proto;

use crate::values::PortRange;

#[derive(Debug, Clone)]
pub struct RegView {
    pub proto: Proto,
    pub proxy: SocketAddrV4,
    pub local: SocketAddrV4,
    pub observed: SocketAddrV4,
    pub public: bool,
    /// The realm's name (`GCB_REALM`), or the client's public IP.
    pub realm: String,
    /// Whether the realm was named by the client rather than guessed.
    pub realm_named: bool,
    pub pid: u32,
    pub program: String,
    pub age: Duration,
    pub since_heartbeat: Duration,
    pub heartbeat_secs: u16,
    /// UDP: where relayed datagrams go (learned from `Dummy`), if known yet.
    pub data_path: Option<SocketAddrV4>,
}

/// One UDP relay rule: a peer allowed to talk to a UDP registration.
#[derive(Debug, Clone)]
pub struct UdpRuleView {
    pub peer: SocketAddrV4,
    pub proxy: SocketAddrV4,
    pub age: Duration,
    pub idle: Duration,
    /// Peer → client, client → peer.
    pub datagrams: [u64; 2],
    pub bytes: [u64; 2],
}

#[derive(Debug, Clone)]
pub struct RelayView {
    pub id: u64,
    pub connector: SocketAddrV4,
    pub listener: SocketAddrV4,
    pub proxy: SocketAddrV4,
    /// Connector → listener, listener → connector.
    pub bytes: [u64; 2],
    pub age: Duration,
}

#[derive(Debug, Clone)]
pub struct PendingView {
    pub kind: &'static str,
    pub proxy: SocketAddrV4,
    pub peer: SocketAddrV4,
    pub age: Duration,
    pub expires_in: Duration,
    pub connector_here: bool,
    pub listener_here: bool,
}

/// Everything a status reply shows, taken at one moment.
#[derive(Debug, Clone)]
pub struct View {
    pub version: &'static str,
    pub uptime: Duration,
    pub command: SocketAddr,
    pub rendezvous: SocketAddrV4,
    pub port_range: PortRange,
    pub free_ports: usize,
    pub quarantined_ports: usize,
    pub max_registrations: u32,
    pub max_relays: u32,
    pub rate_limit: u32,
    pub registrations: Vec<RegView>,
    pub relays: Vec<RelayView>,
    pub pending: Vec<PendingView>,
    pub udp_rules: Vec<UdpRuleView>,
    pub bytes_relayed: [u64; 2],
    pub counters: Vec<(&'static str, u64)>,
}

/// Writes list items while they fit the budget; returns how many did.
fn bounded<T>(
    out: &mut String,
    budget: usize,
    items: &[T],
    mut item: impl FnMut(&mut String, &T),
) -> usize {
    for (n, it) in items.iter().enumerate() {
        if out.len() >= budget {
            return n;
        }
        item(out, it);
    }
    items.len()
}

fn secs(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{:.1}s", d.as_secs_f64()),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60),
    }
}

/// Lines for a person. `budget` bounds the lists; the header and counters
/// always come out.
pub fn text(v: &View, budget: usize) -> String {
    let mut o = String::new();
    let rate = match v.rate_limit {
        0 => "off".to_string(),
        n => format!("{n}/s per source IP"),
    };
    let _ = writeln!(o, "gcb-broker {}, up {}", v.version, secs(v.uptime));
    let _ = writeln!(
        o,
        "command udp {}, rendezvous tcp {}",
        v.command, v.rendezvous
    );
    let _ = writeln!(
        o,
        "proxy ports {}: {} free, {} quarantined",
        v.port_range, v.free_ports, v.quarantined_ports
    );
    let _ = writeln!(
        o,
        "limits: {} registrations, {} relays, rate {rate}",
        v.max_registrations, v.max_relays
    );
    let _ = writeln!(o, "\nregistrations: {}", v.registrations.len());
    let shown = bounded(&mut o, budget, &v.registrations, |o, r| {
        let place = if r.public { "public" } else { "private" };
        let realm = if r.realm_named {
            format!("\"{}\"", r.realm)
        } else {
            r.realm.clone()
        };
        let path = match (r.proto, r.data_path) {
            (Proto::Udp, Some(p)) => format!(" data path {p}"),
            (Proto::Udp, None) => " data path unknown".to_string(),
            (Proto::Tcp, _) => String::new(),
        };
        let _ = writeln!(
            o,
            "  {} {} local {} observed {} {place} realm {} {}[{}] age {} heartbeat {} ago (every {}s){path}",
            r.proto,
            r.proxy,
            r.local,
            r.observed,
            realm,
            r.program,
            r.pid,
            secs(r.age),
            secs(r.since_heartbeat),
            r.heartbeat_secs
        );
    });
    more(&mut o, v.registrations.len() - shown);
    let _ = writeln!(o, "\nrelays: {}", v.relays.len());
    let shown = bounded(&mut o, budget, &v.relays, |o, r| {
        let _ = writeln!(
            o,
            "  #{} {} -> {} (listener {}) {} bytes -> {} bytes <- age {}",
            r.id,
            r.connector,
            r.proxy,
            r.listener,
            r.bytes[0],
            r.bytes[1],
            secs(r.age)
        );
    });
    more(&mut o, v.relays.len() - shown);
    let _ = writeln!(o, "\npending pairings: {}", v.pending.len());
    let shown = bounded(&mut o, budget, &v.pending, |o, p| {
        let here = match (p.connector_here, p.listener_here) {
            (true, true) => "both sides here",
            (true, false) => "connector here",
            (false, true) => "listener here",
            (false, false) => "nobody here yet",
        };
        let _ = writeln!(
            o,
            "  {} for {} peer {}: {here}, age {}, expires in {}",
            p.kind,
            p.proxy,
            p.peer,
            secs(p.age),
            secs(p.expires_in)
        );
    });
    more(&mut o, v.pending.len() - shown);
    let _ = writeln!(o, "\nudp rules: {}", v.udp_rules.len());
    let shown = bounded(&mut o, budget, &v.udp_rules, |o, r| {
        let _ = writeln!(
            o,
            "  {} <-> {}: {} datagrams ({} bytes) to the client, {} ({} bytes) back, age {}, idle {}",
            r.peer,
            r.proxy,
            r.datagrams[0],
            r.bytes[0],
            r.datagrams[1],
            r.bytes[1],
            secs(r.age),
            secs(r.idle)
        );
    });
    more(&mut o, v.udp_rules.len() - shown);
    let _ = writeln!(
        o,
        "\nbytes relayed: {} connector -> listener, {} back",
        v.bytes_relayed[0], v.bytes_relayed[1]
    );
    let dropped: Vec<String> = REFUSALS
        .iter()
        .filter_map(|name| v.counters.iter().find(|(k, _)| k == name))
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if !dropped.is_empty() {
        let _ = writeln!(o, "refused and malformed: {}", dropped.join(", "));
    }
    let counters: Vec<String> = v.counters.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(o, "counters: {}", counters.join(", "));
    o
}

/// The counters of input the broker refused or could not read, repeated on
/// a line of their own in the text: what an operator looks at first when
/// clients complain. Totals only; `counters:` has the split by class.
const REFUSALS: [&str; 16] = [
    "malformed",
    "version_mismatch",
    "rate_limited",
    "unsupported",
    "refused",
    "bad_hellos",
    "rendezvous_rejected",
    "udp_refused",
    "udp_rule_cap",
    "udp_malformed",
    "udp_oversize",
    "udp_dummies_dropped",
    "auth_missing",
    "auth_bad_mac",
    "auth_stale",
    "auth_replayed",
];

fn more(o: &mut String, left: usize) {
    if left > 0 {
        let _ = writeln!(o, "  ... {left} more not shown");
    }
}

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
             \"data_path\":{}}}",
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
            r.data_path.map_or("null".to_string(), |p| js(&p.to_string()))
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

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
