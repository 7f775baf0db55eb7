//! `pool-demo watch`: the live table of the pool's exchanges and the summary.
//!
//! Members print what they did (`ANNOUNCE`, `RESULT`, `DONE`); the shim logs, in
//! each member's own `GCB_LOG_FILE`, how it carried out each brokered connect
//! (`gcb: connect tcp DEST via PATH ... in N us`, `gcb: dpfd forwards tcp DEST
//! to LOCAL; ...`). The watcher joins the two by (member, protocol, destination).
//! A connect the shim did not broker leaves no line; its path then follows from
//! the destination: a proxy address on the broker (the broker relays it, as for
//! any plain client), a gateway forward made by dpfd, or plain routing and NAT.
//!
//! Whether a failure counts against the run: every TCP exchange should work.
//! A UDP exchange to a private address in another realm can only work when the
//! shim registers UDP sockets with the broker (the listener then advertises a
//! proxy address); a build without that still shows the failure, labelled, but
//! does not fail the run for it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::wire::{field, fields, Ad, Mode};

/// Where the broker hands out proxy addresses: its public IP and port range.
/// Both are needed, since on loopback every member shares the broker's IP.
#[derive(Debug, Clone)]
pub struct Proxies {
    pub ip: Ipv4Addr,
    pub ports: std::ops::RangeInclusive<u16>,
}

impl Proxies {
    pub fn parse(ip: &str, ports: &str) -> Option<Proxies> {
        let (lo, hi) = ports.split_once('-')?;
        let (lo, hi) = (lo.parse().ok()?, hi.parse().ok()?);
        (lo <= hi).then_some(Proxies { ip: ip.parse().ok()?, ports: lo..=hi })
    }

    fn holds(proxies: Option<&Proxies>, a: SocketAddrV4) -> bool {
        proxies.is_some_and(|p| *a.ip() == p.ip && p.ports.contains(&a.port()))
    }
}

/// One exchange as a member reported it, with what the shim said about it.
#[derive(Debug, Clone)]
pub struct Row {
    pub from: String,
    pub to: String,
    pub proto: String,
    pub kind: String,
    pub dest: SocketAddrV4,
    /// Time to connect (TCP) or to the first good answer (UDP), and bytes verified.
    pub outcome: Result<(u64, u64), String>,
    pub path: String,
    /// `Err(why)` when this build is not expected to manage the exchange.
    pub expected: Result<(), &'static str>,
}

pub const NO_UDP_GCB: &str = "need GCB for UDP (the listener advertised its private address: this shim did not register its UDP socket)";

/// Parses a `RESULT` line; `None` if it is not one.
pub fn parse_result(line: &str) -> Option<Row> {
    if !line.starts_with("RESULT ") {
        return None;
    }
    let f = fields(line);
    let outcome = match field(&f, "status")? {
        "ok" => Ok((field(&f, "time_us")?.parse().ok()?, field(&f, "bytes")?.parse().ok()?)),
        _ => Err(field(&f, "why").unwrap_or("no reason given").to_string()),
    };
    Some(Row {
        from: field(&f, "from")?.into(),
        to: field(&f, "to")?.into(),
        proto: field(&f, "proto")?.into(),
        kind: field(&f, "kind")?.into(),
        dest: field(&f, "dest")?.parse().ok()?,
        outcome,
        path: String::new(),
        expected: Ok(()),
    })
}

/// The path a member's connection to `dest` took, from its shim log.
pub fn classify(proto: &str, dest: SocketAddrV4, shim_log: &str, dest_ad: Option<&Ad>, proxies: Option<&Proxies>) -> String {
    let decided = format!(" {proto} {dest} via ");
    let forwarded = format!("gcb: dpfd forwards {proto} {dest} to ");
    for line in shim_log.lines().rev() {
        if let Some(at) = line.find(&decided) {
            let rest = &line[at + decided.len()..];
            return rest.split(' ').next().unwrap_or("?").to_string();
        }
        if line.starts_with(&forwarded) {
            return "dpf-local".into();
        }
    }
    if Proxies::holds(proxies, dest) {
        "proxy".into()
    } else if dest_ad.is_some_and(|a| a.mode == Mode::Dpf) {
        "dpf-forward".into()
    } else {
        "plain".into()
    }
}

/// Whether this build should manage an exchange from `from` to `dest` (module docs).
pub fn expected(proto: &str, from: Option<&Ad>, dest: Option<&Ad>, proxies: Option<&Proxies>) -> Result<(), &'static str> {
    let (Some(from), Some(dest)) = (from, dest) else { return Ok(()) };
    let reachable = proto == "tcp"
        || dest.realm == "public"
        || dest.realm == from.realm
        || dest.mode == Mode::Dpf
        || Proxies::holds(proxies, dest.udp);
    if reachable {
        Ok(())
    } else {
        Err(NO_UDP_GCB)
    }
}

pub const HEADER: &str = "  from     to       proto kind   path         time       bytes   result";

pub fn render_row(r: &Row) -> String {
    let (time, bytes, result) = match &r.outcome {
        Ok((us, b)) => (format_us(*us), b.to_string(), "ok".to_string()),
        Err(why) => {
            let note = if r.expected.is_err() { " [needs GCB for UDP]" } else { "" };
            ("-".into(), "-".into(), format!("FAILED: {why}{note}"))
        }
    };
    format!("  {:<8} {:<8} {:<5} {:<6} {:<12} {:>9}  {:>7}   {result}", r.from, r.to, r.proto, r.kind, r.path, time, bytes)
}

fn format_us(us: u64) -> String {
    if us < 10_000 {
        format!("{:.2} ms", us as f64 / 1000.0)
    } else {
        format!("{:.1} ms", us as f64 / 1000.0)
    }
}

/// The closing summary, and whether the run is good.
pub fn summary(rows: &[Row], unfinished: &[String]) -> (String, bool) {
    let ok = rows.iter().filter(|r| r.outcome.is_ok()).count();
    let failed: Vec<&Row> = rows.iter().filter(|r| r.outcome.is_err()).collect();
    let excused = failed.iter().filter(|r| r.expected.is_err()).count();
    let unexpected = failed.len() - excused;
    let mut s = format!("summary: {} exchanges, {ok} ok, {} failed\n", rows.len(), failed.len());
    if excused > 0 {
        s += &format!("  {excused} failed that {NO_UDP_GCB}\n");
    }
    s += &format!("  {unexpected} failed that should have worked\n");
    let mut by_path: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    for r in rows {
        if let Ok((us, _)) = r.outcome {
            by_path.entry((r.path.as_str(), r.proto.as_str())).or_default().push(us);
        }
    }
    s += "paths that worked (time: connect for TCP, first answer for UDP):\n";
    for ((path, proto), times) in &by_path {
        let mean = times.iter().sum::<u64>() / times.len() as u64;
        let max = times.iter().max().copied().unwrap_or(0);
        s += &format!("  {path:<12} {proto:<4} {:>3} ok   mean {:>9}   max {:>9}\n", times.len(), format_us(mean), format_us(max));
    }
    for m in unfinished {
        s += &format!("  member {m} did not finish in time\n");
    }
    let good = unexpected == 0 && unfinished.is_empty() && !rows.is_empty();
    s += if good { "pool: every exchange that this build should manage worked\n" } else { "pool: FAILED\n" };
    (s, good)
}

/// Follows the members' files under `dir` until all are done or `timeout`;
/// prints rows as they appear, then the summary. Returns the exit status.
pub fn watch(dir: &Path, members: &[String], proxies: Option<&Proxies>, timeout: Duration) -> i32 {
    let end = Instant::now() + timeout;
    let mut consumed: BTreeMap<&str, usize> = BTreeMap::new();
    let mut ads: BTreeMap<String, Ad> = BTreeMap::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut rows = Vec::new();
    println!("{HEADER}");
    loop {
        let mut fresh = Vec::new();
        for m in members {
            let text = std::fs::read_to_string(dir.join(format!("{m}.out"))).unwrap_or_default();
            // Only whole lines; a member may be mid-write.
            let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            let seen = consumed.entry(m).or_default();
            for line in whole.lines().skip(*seen) {
                fresh.push((m.clone(), line.to_string()));
            }
            *seen = whole.lines().count();
        }
        for (m, line) in &fresh {
            if line.starts_with("ANNOUNCE ") {
                if let Some(ad) = Ad::parse(line) {
                    ads.insert(ad.name.clone(), ad);
                }
            } else if line.starts_with("DONE ") {
                done.insert(m.clone());
            } else if line.starts_with("NOTE ") {
                println!("  note from {m}: {}", field(&fields(line), "why").unwrap_or(line));
            }
        }
        for (m, line) in &fresh {
            let Some(mut row) = parse_result(line) else { continue };
            let log = std::fs::read_to_string(dir.join(format!("{m}.shim.log"))).unwrap_or_default();
            row.path = classify(&row.proto, row.dest, &log, ads.get(&row.to), proxies);
            row.expected = expected(&row.proto, ads.get(&row.from), ads.get(&row.to), proxies);
            println!("{}", render_row(&row));
            rows.push(row);
        }
        if done.len() == members.len() || Instant::now() >= end {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let unfinished: Vec<String> = members.iter().filter(|m| !done.contains(*m)).cloned().collect();
    let (text, good) = summary(&rows, &unfinished);
    print!("\n{text}");
    i32::from(!good)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ad(name: &str, realm: &str, mode: Mode, udp: &str) -> Ad {
        Ad { name: name.into(), realm: realm.into(), mode, tcp: udp.parse().unwrap(), udp: udp.parse().unwrap() }
    }

    fn broker() -> Proxies {
        Proxies::parse("203.0.113.10", "20000-20999").unwrap()
    }

    #[test]
    fn results_parse_both_ways() {
        let r = parse_result("RESULT from=a1 to=b1 proto=tcp kind=echo dest=203.0.113.10:20001 status=ok time_us=1500 bytes=131072").unwrap();
        assert_eq!((r.from.as_str(), r.to.as_str(), r.outcome.clone()), ("a1", "b1", Ok((1500, 131072))));
        let r = parse_result("RESULT from=pub to=b1 proto=udp kind=echo dest=198.51.100.10:5000 status=failed why=no answer after 6 datagrams").unwrap();
        assert_eq!(r.outcome, Err("no answer after 6 datagrams".into()));
        assert!(parse_result("ANNOUNCE name=x").is_none());
        assert!(parse_result("RESULT from=a1 to=b1 proto=tcp kind=echo dest=nowhere status=ok time_us=1 bytes=1").is_none());
    }

    #[test]
    fn the_shim_line_names_the_path() {
        let dest: SocketAddrV4 = "203.0.113.10:20001".parse().unwrap();
        let log = "gcb: registered tcp 192.0.2.10:9618 as 203.0.113.10:20000\n\
                   gcb: connect tcp 203.0.113.10:20002 via reversal in 900 us\n\
                   gcb: connect tcp 203.0.113.10:20001 via relay at 203.0.113.10:65432 in 2100 us\n";
        assert_eq!(classify("tcp", dest, log, None, Some(&broker())), "relay");
        assert_eq!(classify("tcp", "203.0.113.10:20002".parse().unwrap(), log, None, Some(&broker())), "reversal");
        assert_eq!(classify("udp", dest, log, None, Some(&broker())), "proxy", "no line for udp: a proxy address");
        let outside: SocketAddrV4 = "203.0.113.10:9618".parse().unwrap();
        assert_eq!(classify("udp", outside, log, None, Some(&broker())), "plain", "the broker's IP outside its port range");
        assert!(Proxies::parse("203.0.113.10", "2-1").is_none() && Proxies::parse("x", "1-2").is_none());
        let dpf = "gcb: dpfd forwards tcp 203.0.113.1:40000 to 192.0.2.11:4000; connecting there directly\n";
        let a2 = ad("a2dpf", "A", Mode::Dpf, "203.0.113.1:40000");
        assert_eq!(classify("tcp", a2.tcp, dpf, Some(&a2), Some(&broker())), "dpf-local");
        assert_eq!(classify("tcp", a2.tcp, "", Some(&a2), Some(&broker())), "dpf-forward");
        assert_eq!(classify("tcp", "203.0.113.20:7".parse().unwrap(), "", None, Some(&broker())), "plain");
    }

    #[test]
    fn udp_into_another_realm_needs_gcb_for_udp() {
        let a1 = ad("a1", "A", Mode::Gcb, "192.0.2.10:5000");
        let a2 = ad("a2", "A", Mode::Gcb, "192.0.2.11:5000");
        let b1 = ad("b1", "B", Mode::Gcb, "198.51.100.10:5000");
        let b1_registered = ad("b1", "B", Mode::Gcb, "203.0.113.10:20005");
        let pubw = ad("pub", "public", Mode::Gcb, "203.0.113.20:5000");
        assert_eq!(expected("udp", Some(&a1), Some(&b1), Some(&broker())), Err(NO_UDP_GCB));
        assert_eq!(expected("udp", Some(&pubw), Some(&a1), Some(&broker())), Err(NO_UDP_GCB));
        assert_eq!(expected("tcp", Some(&a1), Some(&b1), Some(&broker())), Ok(()));
        assert_eq!(expected("udp", Some(&a1), Some(&a2), Some(&broker())), Ok(()), "same realm");
        assert_eq!(expected("udp", Some(&b1), Some(&pubw), Some(&broker())), Ok(()), "public");
        assert_eq!(expected("udp", Some(&a1), Some(&b1_registered), Some(&broker())), Ok(()), "a proxy address");
    }

    #[test]
    fn summary_counts_and_judges() {
        let mut ok = parse_result("RESULT from=a1 to=b1 proto=tcp kind=echo dest=203.0.113.10:1 status=ok time_us=2000 bytes=10").unwrap();
        ok.path = "relay".into();
        let mut excused = parse_result("RESULT from=a1 to=b1 proto=udp kind=echo dest=198.51.100.10:1 status=failed why=no answer").unwrap();
        excused.expected = Err(NO_UDP_GCB);
        let (text, good) = summary(&[ok.clone(), excused.clone()], &[]);
        assert!(good, "{text}");
        assert!(text.contains("2 exchanges, 1 ok, 1 failed"), "{text}");
        assert!(text.contains("0 failed that should have worked"), "{text}");
        assert!(text.contains("relay        tcp    1 ok"), "{text}");
        assert!(render_row(&excused).contains("FAILED: no answer [needs GCB for UDP]"));
        let mut bad = excused.clone();
        bad.expected = Ok(());
        let (text, good) = summary(&[ok.clone(), bad], &[]);
        assert!(!good && text.contains("1 failed that should have worked") && text.ends_with("pool: FAILED\n"), "{text}");
        let (_, good) = summary(&[ok], &["b1".into()]);
        assert!(!good, "an unfinished member fails the run");
        assert!(!summary(&[], &[]).1, "nothing ran: not good");
    }
}
