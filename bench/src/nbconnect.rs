//! Non-blocking connects (issue 12): the time a program's thread spends
//! inside `connect()` on a non-blocking socket, and the time until the
//! connection is established (writable, then `SO_ERROR` 0), without the shim
//! and on each brokered path under it.
//!
//! `c-tests/nb-connect` makes its connects one after another, each timed
//! alone and each echoed (64 bytes, checked), so a figure always belongs to a
//! connection that reached the intended server. They follow each other
//! without pause, as in the tables' blocks, so the broker runs without its
//! per-source-IP rate limit here (as in the broker part): realm A's gateway
//! IP carries the commands of three paths in a row (a1's `Connect`s, the
//! listener's answers), far above the default 200/s, and each dropped
//! request would be measured as a 50 ms retransmission instead of the
//! shim's cost. The paths:
//!
//! * `plain`: a1 → a plain server on pub, no shim: the baseline;
//! * `negcache`: the same under the shim, after the negative cache holds
//!   pub (a one-connect process fills the shared table just before each
//!   measured process, since an entry lasts 60 s);
//! * `direct`: a1 → a GCB listener on pub (the broker says `Direct`);
//! * `reversal`: pub → a GCB listener on a1;
//! * `relay`: b1 → the same listener on a1.
//!
//! The first connect of a process is kept apart (`first`): under the shim it
//! starts the responder thread and makes the gate, a one-time cost. As in the
//! tables, the paths take turns process by process, the order rotated each
//! block, so drift of the shared machine hits them alike.

use crate::ctx::{self, Ctx, Shim, BROKER_IP};
use crate::results::Results;
use crate::stats::{quantile, Stat};
use std::fmt::Write as _;
use std::time::Duration;
use testbed::{Proc, TestBed};

/// (key, label, client host, shim, server index into `SERVERS`).
type PathSpec = (&'static str, &'static str, &'static str, Shim, usize);

const PATHS: [PathSpec; 5] = [
    (
        "plain",
        "plain connect, no shim (baseline): a1 → pub",
        "a1",
        Shim::None,
        0,
    ),
    (
        "negcache",
        "shim, non-GCB host in the negative cache: a1 → pub",
        "a1",
        Shim::Gcb,
        0,
    ),
    (
        "direct",
        "shim, public GCB listener (direct): a1 → pub",
        "a1",
        Shim::Gcb,
        1,
    ),
    (
        "reversal",
        "shim, private listener (reversal): pub → a1",
        "pub",
        Shim::Gcb,
        2,
    ),
    (
        "relay",
        "shim, private listener, other realm (relay): b1 → a1",
        "b1",
        Shim::Gcb,
        2,
    ),
];

/// (host, shim, port) of the echo servers the paths dial.
const SERVERS: [(&str, Shim, u16); 3] = [
    ("pub", Shim::None, 7600),
    ("pub", Shim::Gcb, 7601),
    ("a1", Shim::Gcb, 7602),
];
const PUB_IP: &str = "203.0.113.20";
const ECHO_BYTES: &str = "64";
/// Bound on each connection inside nb-connect.
const CONN_TIMEOUT_MS: &str = "5000";

/// What one path measured, pooled over its processes.
#[derive(Default)]
struct Samples {
    call_us: Vec<f64>,
    est_us: Vec<f64>,
    first_call_us: Vec<f64>,
    first_est_us: Vec<f64>,
    einprogress: usize,
    immediate: usize,
    failed: usize,
    processes: usize,
    err: Option<String>,
}

pub fn run(ctx: &Ctx, res: &mut Results) -> Result<(), String> {
    let client = ctx.paths.nb_connect.clone();
    let per_process: usize = ctx.pick(100, 200);
    let blocks: usize = ctx.pick(5, 20);
    res.int("meta.nbconnect.connects_per_process", per_process as i64);
    res.int("meta.nbconnect.processes_per_path", blocks as i64);
    res.text(
        "meta.nbconnect.method",
        format!("c-tests nb-connect: one connect at a time from a non-blocking socket, {ECHO_BYTES} bytes echoed on each, broker without rate limit; call = inside connect(), est = until writable with SO_ERROR 0; the first connect of each process apart"),
    );
    ctx.need(&client)?;
    ctx.need(&ctx.paths.libgcb)?;
    let bed = TestBed::up()?;
    let broker = crate::tables::start_broker_with(ctx, &bed, &["--rate-limit", "0"])?;
    let mut servers: Vec<Proc> = Vec::new();
    for (host, shim, port) in SERVERS {
        let port = port.to_string();
        let args = ["--proto", "tcp", "--port", &port, "--mode", "epoll"];
        let cmd = ctx::prog(ctx, &bed, host, shim, &ctx.paths.echo_server, &args);
        servers.push(bed.spawn_cmd(cmd)?);
    }
    let dial: Vec<Result<String, String>> = servers
        .iter()
        .zip(SERVERS)
        .map(|(p, (_, shim, port))| address(p, shim, port))
        .collect();

    let mut got: Vec<Samples> = PATHS.iter().map(|_| Samples::default()).collect();
    for (i, (_, _, _, _, server)) in PATHS.iter().enumerate() {
        if let Err(e) = &dial[*server] {
            got[i].err = Some(e.clone());
        }
    }
    for b in 0..blocks {
        ctx::check_stop()?;
        eprintln!("bench: nbconnect: block {}/{blocks}", b + 1);
        for k in 0..PATHS.len() {
            let i = (k + b) % PATHS.len();
            let (key, _, host, shim, server) = PATHS[i];
            if got[i].err.is_some() {
                continue;
            }
            let to = dial[server].clone().unwrap_or_default();
            if key == "negcache" {
                if let Err(e) = warm_negcache(ctx, &bed, &client, &to, res) {
                    got[i].err = Some(e);
                    continue;
                }
            }
            let n = per_process.to_string();
            let args = [
                "--connect",
                &to,
                "--count",
                &n,
                "--bytes",
                ECHO_BYTES,
                "--timeout-ms",
                CONN_TIMEOUT_MS,
            ];
            let mut cmd = ctx::prog(ctx, &bed, host, shim, &client, &args);
            if key == "relay" {
                // The relay path, as named: hole punching is measured apart
                // (the `punch` part).
                cmd.env("GCB_PUNCH", "0");
            }
            let limit = Duration::from_secs(60 + per_process as u64 / 10);
            match ctx::run_in(&bed, cmd, limit) {
                Ok(fin) => take(&mut got[i], &fin),
                Err(e) => {
                    ctx::check_stop()?;
                    got[i].err = Some(format!("nb-connect: {e}"));
                }
            }
        }
    }
    for (i, (key, ..)) in PATHS.iter().enumerate() {
        record(res, key, &got[i]);
    }
    record_ratios(res);
    drop(servers);
    drop(broker);
    drop(bed);
    Ok(())
}

/// The address a path dials: the plain server's public address, or the proxy
/// address a GCB server reports (checked to be on the broker, so a socket the
/// shim failed to register is reported rather than measured).
fn address(p: &Proc, shim: Shim, port: u16) -> Result<String, String> {
    let line = ctx::wait_line(p, "LISTEN tcp ", Duration::from_secs(10))
        .map_err(|e| format!("echo-server did not listen: {e}"))?;
    if shim == Shim::None {
        return Ok(format!("{PUB_IP}:{port}"));
    }
    let a = line.trim().to_string();
    match a.rsplit_once(':') {
        Some((ip, _)) if ip == BROKER_IP => Ok(a),
        _ => Err(format!(
            "the server's socket was not registered: it reports {a}, not a proxy address on {BROKER_IP}"
        )),
    }
}

/// One connect under the shim, so the shared negative cache holds the plain
/// server's IP when the measured process starts; its time (the probe
/// included) is kept as what the cache saves.
fn warm_negcache(
    ctx: &Ctx,
    bed: &TestBed,
    client: &std::path::Path,
    to: &str,
    res: &mut Results,
) -> Result<(), String> {
    let args = [
        "--connect",
        to,
        "--count",
        "1",
        "--bytes",
        ECHO_BYTES,
        "--timeout-ms",
        CONN_TIMEOUT_MS,
    ];
    let cmd = ctx::prog(ctx, bed, "a1", Shim::Gcb, client, &args);
    let fin = ctx::run_in(bed, cmd, Duration::from_secs(30))?;
    let est = fin.stdout.iter().find_map(|l| {
        l.strip_prefix("RUN ")
            .and_then(|_| ctx::field_f64(l, "est_us"))
    });
    match est {
        Some(us) if fin.success => {
            let key = "nbconnect.negcache.probe_est_us";
            res.num(key, res.get(key).map_or(us, |m: f64| m.max(us)));
            Ok(())
        }
        _ => Err(format!(
            "the negative-cache warm-up connect failed: {}",
            fin.why()
        )),
    }
}

/// Pool one nb-connect process's lines into `s`; a process that measured
/// nothing stops its path, with the reason.
fn take(s: &mut Samples, fin: &ctx::Finished) {
    s.processes += 1;
    let mut runs = 0;
    let mut first_failure = None;
    for line in &fin.stdout {
        if line.starts_with("FAILED ") {
            s.failed += 1;
            first_failure.get_or_insert(line.as_str());
            continue;
        }
        let Some(rest) = line.strip_prefix("RUN ") else {
            continue;
        };
        let (Some(call_ns), Some(est)) = (
            ctx::field_f64(line, "call_ns"),
            ctx::field_f64(line, "est_us"),
        ) else {
            continue;
        };
        runs += 1;
        match ctx::field(line, "returned").as_deref() {
            Some("EINPROGRESS") => s.einprogress += 1,
            Some("0") => s.immediate += 1,
            _ => {}
        }
        if rest.starts_with("0 ") {
            s.first_call_us.push(call_ns / 1e3);
            s.first_est_us.push(est);
        } else {
            s.call_us.push(call_ns / 1e3);
            s.est_us.push(est);
        }
    }
    if runs == 0 {
        let why = first_failure.map_or_else(|| fin.why(), str::to_string);
        s.err = Some(format!("nb-connect measured nothing: {why}"));
    }
}

fn dist(res: &mut Results, path: &str, xs: &[f64]) {
    let Some(st) = Stat::of(xs) else { return };
    res.num(&format!("{path}.mean"), st.mean);
    for (name, q) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
        if let Some(v) = quantile(xs, q) {
            res.num(&format!("{path}.{name}"), v);
        }
    }
}

fn record(res: &mut Results, key: &str, s: &Samples) {
    let base = format!("nbconnect.{key}");
    if s.call_us.is_empty() && s.first_call_us.is_empty() {
        res.error(
            &base,
            s.err
                .clone()
                .unwrap_or_else(|| "no connect succeeded".into()),
        );
        return;
    }
    dist(res, &format!("{base}.call_us"), &s.call_us);
    dist(res, &format!("{base}.est_us"), &s.est_us);
    dist(res, &format!("{base}.first.call_us"), &s.first_call_us);
    dist(res, &format!("{base}.first.est_us"), &s.first_est_us);
    res.int(
        &format!("{base}.connects"),
        (s.call_us.len() + s.first_call_us.len()) as i64,
    );
    res.int(&format!("{base}.processes"), s.processes as i64);
    res.int(
        &format!("{base}.returned_einprogress"),
        s.einprogress as i64,
    );
    res.int(&format!("{base}.returned_0"), s.immediate as i64);
    res.int(&format!("{base}.failed"), s.failed as i64);
    if let Some(e) = &s.err {
        res.text(&format!("{base}.stopped_early"), e.clone());
    }
}

/// Each path's means as ratios to the plain baseline's, steady state and first.
fn record_ratios(res: &mut Results) {
    for (key, ..) in PATHS {
        for group in ["", "first."] {
            for m in ["call", "est"] {
                let at = |k: &str| res.get(&format!("nbconnect.{k}.{group}{m}_us.mean"));
                if let (Some(b), Some(v)) = (at("plain"), at(key)) {
                    if b > 0.0 {
                        res.num(&format!("nbconnect.{key}.{group}{m}_ratio"), v / b);
                    }
                }
            }
        }
    }
}

/// The part's section of report.md.
pub fn md(res: &Results) -> String {
    let per = res
        .get("meta.nbconnect.connects_per_process")
        .unwrap_or(0.0);
    let procs = res.get("meta.nbconnect.processes_per_path").unwrap_or(0.0);
    let mut s = String::new();
    let _ = writeln!(s, "\n## Non-blocking connect ({procs:.0} processes per path, {per:.0} connects each, one at a time, each echoed)\n");
    s.push_str("*Call*: time inside `connect()` (returns EINPROGRESS); *established*: until writable with `SO_ERROR` 0. µs; ratios of the means to the plain baseline. The first connect of each process is apart, below.\n\n");
    s.push_str("| path | call mean | p50 | p99 | max | ratio | established mean | p50 | p99 | max | ratio |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (key, label, ..) in PATHS {
        let base = format!("nbconnect.{key}");
        if res.get(&format!("{base}.call_us.mean")).is_none() {
            let why = res
                .why_missing(&base)
                .unwrap_or("not measured")
                .replace('|', "\\|");
            let _ = writeln!(
                s,
                "| {label} | n/a ({}) |||||||||| ",
                why.lines().next().unwrap_or("")
            );
            continue;
        }
        let _ = write!(s, "| {label} |");
        for m in ["call", "est"] {
            for q in ["mean", "p50", "p99", "max"] {
                let _ = write!(s, " {} |", us(res.get(&format!("{base}.{m}_us.{q}"))));
            }
            let _ = write!(s, " {} |", ratio(res.get(&format!("{base}.{m}_ratio"))));
        }
        s.push('\n');
    }
    let mut first = String::new();
    for (key, label, ..) in PATHS {
        let base = format!("nbconnect.{key}.first");
        if res.get(&format!("{base}.call_us.mean")).is_none() {
            continue;
        }
        let _ = write!(first, "| {label} |");
        for m in ["call", "est"] {
            for q in ["mean", "max"] {
                let _ = write!(first, " {} |", us(res.get(&format!("{base}.{m}_us.{q}"))));
            }
            let _ = write!(first, " {} |", ratio(res.get(&format!("{base}.{m}_ratio"))));
        }
        first.push('\n');
    }
    if !first.is_empty() {
        s.push_str("\nFirst connect of a process (starts the shim's responder thread and makes its gate):\n\n");
        s.push_str("| path | call mean | max | ratio | established mean | max | ratio |\n|---|---:|---:|---:|---:|---:|---:|\n");
        s.push_str(&first);
    }
    if let Some(p) = res.get("nbconnect.negcache.probe_est_us") {
        let _ = writeln!(s, "\nBefore the negative cache holds pub (the warm-up processes' one connect, a first connect that also probes pub for a broker): established in up to {p:.0} µs.");
    }
    s
}

fn us(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "n/a".into(),
    }
}

fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |r| format!("{r:.2}×"))
}
