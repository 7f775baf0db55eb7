//! The status snapshot as data ([`View`]) and its two renderings: lines for
//! a person (`gcb-broker query`, here) and one JSON object (`query --json`,
//! in `json`).
//!
//! Both are bounded by a byte budget: lists are cut when the budget is
//! spent, and the output says so (`truncated`), so a broker with 100 000
//! registrations answers with what fits instead of building an unbounded
//! string.

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
    /// Every process holding the socket, the freshest first; `observed`,
    /// `pid`, `program` and the heartbeat fields above are the first one's.
    pub holders: Vec<HolderView>,
}

/// One process holding a registered socket.
#[derive(Debug, Clone)]
pub struct HolderView {
    /// Its management socket as seen from here (the client's own idea of
    /// its address is not shown: it is a claim, never used).
    pub mgmt: SocketAddrV4,
    pub pid: u32,
    pub program: String,
    pub heartbeat_secs: u16,
    /// Since it joined.
    pub age: Duration,
    pub since_heartbeat: Duration,
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
pub(super) fn bounded<T>(
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
        for h in &r.holders {
            let _ = writeln!(
                o,
                "    holder {}[{}] mgmt {} heartbeat {} ago (every {}s), joined {} ago",
                h.program,
                h.pid,
                h.mgmt,
                secs(h.since_heartbeat),
                h.heartbeat_secs,
                secs(h.age)
            );
        }
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

pub use super::json::json;

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
