//! A measuring tool, not a test (an example, so `scripts/test` never runs it): TCP and UDP hole
//! punching between a1 (realm A) and b1 (realm B) with plain sockets, no broker
//! and no shim, for every pair of NAT kinds and several strategies, to choose
//! issue 13's punching strategy from facts. Results and their reading are in
//! `docs/nat-punching-notes.md`.
//!
//! One `testbed/programs/punch_probe.py` runs on each side for the whole run; this
//! driver sends both the same trial with a start time on the shared monotonic
//! clock (side A at T, side B at T + skew), each side dials the other's predicted
//! mapping (gateway address : the other's local port, right for `preserve`) from
//! a fixed local port, and the driver gathers both results. Every trial uses fresh
//! local ports, so no conntrack entry of an earlier trial is in the way.
//!
//! ```text
//! cargo run --release -p testbed --example punch_experiment
//! ```
//!
//! Environment (all optional):
//! * `PUNCH_PAIRS`: comma-separated `GA/GB[:TRIALS]` kinds, default the six pairs
//!   preserve/preserve, preserve/drop, drop/drop, preserve/invalid-drop,
//!   invalid-drop/invalid-drop, random/preserve;
//! * `PUNCH_TRIALS`: trials per strategy (default 30);
//! * `PUNCH_TCP`, `PUNCH_UDP`: comma-separated strategies (see [`Strategy::parse`];
//!   an empty value skips the protocol);
//! * `PUNCH_BOUND_MS`: how long one side tries (default 2000);
//! * `PUNCH_OUT`: a file to write the result table to (Markdown) as well;
//! * `PUNCH_EVENTS`: a directory; each strategy's conntrack events on both
//!   gateways (`conntrack -E -o timestamp`) and the packets conntrack called
//!   invalid there (`nft monitor trace`) are written there, to read what happened
//!   to the entries of failed or slow trials.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{ChildStdin, Stdio};
use std::time::Duration;

use testbed::{require_root, workspace_root, NatKind, NatKinds, Proc, TestBed};

const PAIRS: &str = "preserve/preserve,preserve/drop,drop/drop,preserve/invalid-drop,\
                     invalid-drop/invalid-drop,random/preserve";
const TCP: &str = "imm,d10,d50,imm+L,d10+L,imm@100us,imm@1ms,imm@10ms,imm+L@100us,imm+L@1ms,imm+L@10ms";
const UDP: &str = "u10,u50,u10@100us,u10@1ms,u10@10ms";
/// Time between sending a trial and its start, so both sides are ready at T even
/// on a loaded machine (`late_us` in the results says when they were not).
const LEAD_NS: u64 = 40_000_000;
/// Local ports of the trials: A from 20000, B from 40000, one more each trial.
const PORT_A: u32 = 20000;
const PORT_B: u32 = 40000;

/// One way of punching: what each side does, and side A's head start.
#[derive(Debug, Clone)]
struct Strategy {
    name: String,
    proto: &'static str,
    /// TCP: wait after a failed attempt before the next (0: at once).
    retry_us: u64,
    /// TCP: the wait is drawn uniformly from 0 to `retry_us` instead.
    jitter: bool,
    /// TCP: a listening socket on the same port while connecting.
    listen: bool,
    /// UDP: time between datagrams.
    interval_us: u64,
    /// Side A starts this long before side B.
    skew_us: u64,
}

impl Strategy {
    /// `imm` (retry at once), `dN` (retry after N ms), `jN` (after a random time of
    /// up to N ms), any of them with `+L` (a listener
    /// too); `uN` (UDP, a datagram every N ms); any of them with `@SKEW` (`100us`,
    /// `1ms`, ...), side A's head start.
    fn parse(spec: &str) -> Strategy {
        let (base, skew) = spec.split_once('@').unwrap_or((spec, "0us"));
        let skew_us = match (skew.strip_suffix("us"), skew.strip_suffix("ms")) {
            (Some(n), _) => n.parse().ok(),
            (_, Some(n)) => n.parse::<u64>().ok().map(|n| n * 1000),
            _ => None,
        };
        let skew_us = skew_us.unwrap_or_else(|| panic!("bad skew in {spec:?}"));
        let (core, listen) = base.strip_suffix("+L").map_or((base, false), |c| (c, true));
        let num = |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("bad strategy {spec:?}"));
        let (proto, retry_us, interval_us) = match core {
            "imm" => ("tcp", 0, 0),
            c if c.starts_with('d') || c.starts_with('j') => ("tcp", num(&c[1..]) * 1000, 0),
            c if c.starts_with('u') => ("udp", 0, num(&c[1..]) * 1000),
            _ => panic!("bad strategy {spec:?}"),
        };
        let jitter = core.starts_with('j');
        assert!(proto == "tcp" || !listen, "+L is for TCP: {spec:?}");
        Strategy { name: spec.to_string(), proto, retry_us, jitter, listen, interval_us, skew_us }
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// One side's `RESULT` line as key=value pairs.
type Outcome = BTreeMap<String, String>;

fn num(o: &Outcome, k: &str) -> u64 {
    o.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
}

struct Side {
    proc: Proc,
    stdin: ChildStdin,
    label: &'static str,
}

impl Side {
    fn start(bed: &TestBed, host: &str, label: &'static str) -> Side {
        let mut c = bed.cmd(host, testbed::python3());
        c.arg(workspace_root().join("testbed/programs/punch_probe.py")).arg(label).stdin(Stdio::piped());
        let mut proc = bed.spawn_cmd(c).expect("punch_probe.py");
        proc.wait_line("READY", Duration::from_secs(20)).expect("punch_probe.py ready");
        let stdin = proc.take_stdin().expect("stdin");
        Side { proc, stdin, label }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("send a trial");
    }

    fn result(&self, id: u32, within: Duration) -> Outcome {
        let rest = self.proc.wait_line(&format!("RESULT id={id} "), within).unwrap_or_else(|e| panic!("{}: {e}", self.label));
        rest.split_whitespace().filter_map(|w| w.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect()
    }
}

/// The drop counters of a gateway's kind, summed.
fn drops(bed: &TestBed, gw: &str) -> Option<u64> {
    let names: &[&str] = match bed.nat_kind(gw) {
        NatKind::Drop => &["unsolicited_drop"],
        NatKind::InvalidDrop => &["invalid_drop_input", "invalid_drop_forward"],
        _ => return None,
    };
    Some(names.iter().map(|n| bed.nft_counter(gw, n).unwrap_or_else(|e| panic!("{e}"))).sum())
}

/// Conntrack's statistics of a gateway (`conntrack -S`), summed over CPUs: the
/// ones that say a packet was judged invalid or lost a race for its entry.
fn ct_stats(bed: &TestBed, gw: &str) -> BTreeMap<String, u64> {
    let out = bed.run(gw, &["conntrack", "-S"], Duration::from_secs(10)).expect("conntrack -S");
    let mut sums = BTreeMap::new();
    for w in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Some((k, v)) = w.split_once('=') {
            if ["invalid", "insert_failed", "drop", "clash_resolve"].contains(&k) {
                *sums.entry(k.to_string()).or_insert(0) += v.parse::<u64>().unwrap_or(0);
            }
        }
    }
    sums
}

/// What grew between two [`ct_stats`], e.g. "invalid 3, insert_failed 1".
fn ct_grown(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    let v: Vec<String> = after
        .iter()
        .filter_map(|(k, a)| {
            let d = a - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| format!("{k} {d}"))
        })
        .collect();
    if v.is_empty() { "-".into() } else { v.join(", ") }
}

/// `conntrack -E` on both gateways while a strategy runs, and `nft monitor trace`
/// of the packets conntrack calls invalid, when `PUNCH_EVENTS` asks.
fn watch_events(bed: &TestBed, proto: &str) -> Vec<(String, Proc)> {
    if std::env::var_os("PUNCH_EVENTS").is_none() {
        return Vec::new();
    }
    // After conntrack (priority -200), so ct state is known; a table of its own, so
    // the gateway's rules and counters are untouched.
    let trace = "add table inet punchtrace; \
                 add chain inet punchtrace pre { type filter hook prerouting priority -150; }; \
                 add rule inet punchtrace pre ct state invalid meta nftrace set 1";
    let mut procs = Vec::new();
    for gw in ["ga", "gb"] {
        let out = bed.run(gw, &["nft", trace], Duration::from_secs(10)).expect("nft");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let events = ["stdbuf", "-oL", "conntrack", "-E", "-p", proto, "-o", "timestamp"];
        let invalid = ["stdbuf", "-oL", "nft", "monitor", "trace"];
        for (what, args) in [("events", &events[..]), ("invalid", &invalid[..])] {
            let p = bed.spawn(gw, args).unwrap_or_else(|e| panic!("{args:?} on {gw}: {e}"));
            procs.push((format!("{gw}-{what}"), p));
        }
    }
    // Neither tool gives a sign that it has subscribed; a measuring tool may wait.
    std::thread::sleep(Duration::from_millis(300));
    procs
}

fn save_events(bed: &TestBed, s: &Strategy, procs: Vec<(String, Proc)>) {
    let Some(dir) = std::env::var_os("PUNCH_EVENTS") else { return };
    std::thread::sleep(Duration::from_millis(300));
    for (what, p) in procs {
        p.terminate();
        let name = format!("{}-{}-{}-{what}.txt", bed.nat_kind("ga"), bed.nat_kind("gb"), s.name.replace('@', "_"));
        let path = std::path::Path::new(&dir).join(name);
        std::fs::write(&path, p.stdout_seen().join("\n") + "\n").unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    for gw in ["ga", "gb"] {
        let _ = bed.run(gw, &["nft", "delete", "table", "inet", "punchtrace"], Duration::from_secs(10));
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

/// Runs `trials` trials of one strategy and returns its table row.
fn run_strategy(bed: &TestBed, sides: &mut [Side; 2], s: &Strategy, trials: u32, bound_ms: u64, next_id: &mut u32) -> String {
    let before = (drops(bed, "ga"), drops(bed, "gb"));
    let ct_before = (ct_stats(bed, "ga"), ct_stats(bed, "gb"));
    let events = watch_events(bed, s.proto);
    let (mut ok, mut one_each, mut times, mut attempts) = (0, 0, Vec::new(), Vec::new());
    let (mut vias, mut errors, mut skews) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
    for _ in 0..trials {
        let id = *next_id;
        *next_id += 1;
        let (pa, pb) = (PORT_A + id, PORT_B + id);
        assert!(pb <= 65535, "out of fresh ports: too many trials for one bed");
        let t = monotonic_ns() + LEAD_NS;
        let common = format!(
            "proto={} bound_ms={bound_ms} retry_us={} jitter={} listen={} interval_us={}",
            s.proto, s.retry_us, s.jitter as u8, s.listen as u8, s.interval_us
        );
        sides[0].send(&format!("TRIAL id={id} {common} lport={pa} peer=203.0.113.2:{pb} start_ns={t} other=B"));
        let tb = t + s.skew_us * 1000;
        sides[1].send(&format!("TRIAL id={id} {common} lport={pb} peer=203.0.113.1:{pa} start_ns={tb} other=A"));
        let within = Duration::from_millis(bound_ms + 10_000);
        let (a, b) = (sides[0].result(id, within), sides[1].result(id, within));
        // How far apart the two really started, in µs (a side scheduled late on a
        // busy machine shifts it).
        skews.push(s.skew_us as i64 + num(&b, "late_us") as i64 - num(&a, "late_us") as i64);
        for o in [&a, &b] {
            for e in o["errors"].split(',').filter(|e| *e != "-") {
                let (n, c) = e.split_once(':').unwrap_or((e, "1"));
                *errors.entry(n.to_string()).or_insert(0) += c.parse::<u64>().unwrap_or(1);
            }
        }
        attempts.push(num(&a, "attempts") + num(&b, "attempts"));
        // UDP: the first datagram must come from the peer's predicted mapping; one
        // from another port means a gateway remapped (counted, and not a success).
        let moved = s.proto == "udp"
            && (a.get("src").is_some_and(|v| *v != format!("203.0.113.2:{pb}"))
                || b.get("src").is_some_and(|v| *v != format!("203.0.113.1:{pa}")));
        if moved {
            *errors.entry("src-moved".to_string()).or_insert(0) += 1;
        }
        if num(&a, "ok") == 1 && num(&b, "ok") == 1 && !moved {
            ok += 1;
            // Both established, counted from side A's start.
            times.push(num(&a, "t_us").max(num(&b, "t_us") + s.skew_us));
            if num(&a, "extra") == 0 && num(&b, "extra") == 0 {
                one_each += 1;
            }
            let via = |o: &Outcome| o["via"].chars().next().unwrap_or('?');
            *vias.entry(format!("{}/{}", via(&a), via(&b))).or_insert(0) += 1;
        }
    }
    times.sort_unstable();
    attempts.sort_unstable();
    skews.sort_unstable();
    let skew = format!("{} [{}..{}]", skews[skews.len() / 2], skews[0], skews[skews.len() - 1]);
    save_events(bed, s, events);
    let after = (drops(bed, "ga"), drops(bed, "gb"));
    let ct = format!("{} / {}", ct_grown(&ct_before.0, &ct_stats(bed, "ga")), ct_grown(&ct_before.1, &ct_stats(bed, "gb")));
    let delta = |b: Option<u64>, a: Option<u64>| a.zip(b).map_or("-".to_string(), |(a, b)| (a - b).to_string());
    let join = |m: &BTreeMap<String, u64>| {
        let v: Vec<String> = m.iter().map(|(k, n)| format!("{k} {n}")).collect();
        if v.is_empty() { "-".into() } else { v.join(", ") }
    };
    let timing = if times.is_empty() {
        "- | - | -".to_string()
    } else {
        format!("{} | {} | {}", ms(percentile(&times, 0.5)), ms(percentile(&times, 0.9)), ms(*times.last().unwrap()))
    };
    format!(
        "| {}/{} | {} | {} | {ok}/{trials} | {timing} | {}/{} | {one_each} | {} | {}/{} | {ct} | {} | {skew} |",
        bed.nat_kind("ga"),
        bed.nat_kind("gb"),
        s.proto,
        s.name,
        percentile(&attempts, 0.5),
        attempts.last().unwrap_or(&0),
        join(&vias.into_iter().map(|(k, v)| (k, v as u64)).collect()),
        delta(before.0, after.0),
        delta(before.1, after.1),
        join(&errors),
    )
}

const HEADER: &str = "| GA/GB | proto | strategy | ok | p50 ms | p90 ms | max ms | attempts p50/max | one each | via A/B | drops GA/GB | conntrack -S GA / GB | errors (both sides) | real skew µs p50 [min..max] |\n\
                      | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |";

fn main() {
    require_root();
    let trials: u32 = env_or("PUNCH_TRIALS", "30").parse().expect("PUNCH_TRIALS");
    assert!(trials > 0, "PUNCH_TRIALS must be at least 1");
    let bound_ms: u64 = env_or("PUNCH_BOUND_MS", "2000").parse().expect("PUNCH_BOUND_MS");
    let strategies: Vec<Strategy> = [env_or("PUNCH_TCP", TCP), env_or("PUNCH_UDP", UDP)]
        .iter()
        .flat_map(|l| l.split(',').filter(|s| !s.is_empty()).map(Strategy::parse).collect::<Vec<_>>())
        .collect();
    let mut rows = vec![HEADER.to_string()];
    println!("{HEADER}");
    for pair in env_or("PUNCH_PAIRS", PAIRS).split(',').filter(|p| !p.is_empty()) {
        let (kinds, n) = pair.split_once(':').map_or((pair, trials), |(k, n)| (k, n.parse().expect("trials")));
        assert!(n > 0, "{pair}: at least one trial");
        let (a, b) = kinds.split_once('/').unwrap_or_else(|| panic!("bad pair {pair:?}"));
        let nat = NatKinds::new(a.trim().parse().unwrap(), b.trim().parse().unwrap());
        let bed = TestBed::up_with_nat(nat).expect("test bed");
        let mut sides = [Side::start(&bed, "a1", "A"), Side::start(&bed, "b1", "B")];
        let mut next_id = 0;
        for s in &strategies {
            let row = run_strategy(&bed, &mut sides, s, n, bound_ms, &mut next_id);
            println!("{row}");
            rows.push(row);
        }
        drop(sides);
        bed.down().expect("tear down");
    }
    if let Ok(path) = std::env::var("PUNCH_OUT") {
        std::fs::write(&path, rows.join("\n") + "\n").unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}
