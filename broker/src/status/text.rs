//! The status snapshot ([`View`]) as lines for a person (`gcb-broker
//! query`); `json` has the other rendering.
//!
//! Both are bounded by a byte budget: lists are cut when the budget is
//! spent, and the output says so (`... N more not shown`, `truncated`), so
//! a broker with 100 000 registrations answers with what fits instead of
//! building an unbounded string.

use std::fmt::Write;
use std::time::Duration;

use proto::Proto;

use super::view::View;

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
    let h = &v.head;
    let rate = match h.limits.rate_limit {
        0 => "off".to_string(),
        n => format!("{n}/s per source IP"),
    };
    let _ = writeln!(o, "gcb-broker {}, up {}", h.version, secs(h.uptime));
    let _ = writeln!(
        o,
        "command udp {}, rendezvous tcp {}",
        h.command, h.rendezvous
    );
    let _ = writeln!(
        o,
        "proxy ports {}: {} free, {} quarantined",
        h.port_range, h.free_ports, h.quarantined_ports
    );
    let _ = writeln!(
        o,
        "limits: {} registrations, {} relays, rate {rate}",
        h.limits.max_registrations, h.limits.max_relays
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
            r.bytes_to_listener,
            r.bytes_to_connector,
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
            r.datagrams_to_client,
            r.bytes_to_client,
            r.datagrams_to_peer,
            r.bytes_to_peer,
            secs(r.age),
            secs(r.idle)
        );
    });
    more(&mut o, v.udp_rules.len() - shown);
    let _ = writeln!(o, "\npunch blocked: {}", v.punch_blocked.len());
    let shown = bounded(&mut o, budget, &v.punch_blocked, |o, b| {
        let _ = writeln!(
            o,
            "  {} {} <-> {}: relayed at once for {} more",
            b.proto,
            b.realms[0],
            b.realms[1],
            secs(b.expires_in)
        );
    });
    more(&mut o, v.punch_blocked.len() - shown);
    let _ = writeln!(
        o,
        "\nbytes relayed: {} connector -> listener, {} back",
        v.bytes_relayed.to_listener, v.bytes_relayed.to_connector
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
