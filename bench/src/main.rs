//! gcb-bench: the benchmark behind `scripts/bench` (issue 6).
//!
//! Run without a subcommand (or with `run`) it reproduces the paper's Tables
//! 1-3 on the NAT test bed and measures more: the time inside a non-blocking
//! `connect` (issue 12), relay throughput, the shim's fast-path overhead,
//! broker scale, dpfd, what serving `/metrics` costs the daemons, the
//! time to map a port (PCP, NAT-PMP), and TCP hole punching (issue 13). Every figure goes to
//! `target/bench/results.json` with its ratio to a baseline measured in the
//! same run; the tables also go to `tables.md` and `tables.png`, and all of
//! it to `report.md` and stdout. Benchmarks report: a timing never fails the
//! bench, and a part that cannot run (not built, not implemented yet) is
//! reported as n/a with its reason.
//!
//! `results.json` holds, under `meta`, how the run was made; under `tables`,
//! `{pattern: {configuration: {tcp|udp: {conn_us: {mean, sd}, data_us:
//! {mean, sd}, runs}}}}` (keys that do not apply are absent); under
//! `table_ratios` the same cells as ratios to `regular` (`conn`, `data`);
//! under `table_ratios_vs_f261631` the GCB cells' conn ratios over those of
//! the reference run (`reference`);
//! then `nbconnect` (`{path: {call_us|est_us|first.call_us|first.est_us:
//! {mean, p50, p99, max}, call_ratio, est_ratio, ...}}`), `shim_overhead`,
//! `relay`, `broker`, `dpfd`, `portmap`, `punch` (`table3`, `throughput`,
//! `matrix`), the verdicts on issue 6's
//! `targets`, and last `errors`, shaped like the figures, with the reason for
//! every figure that is missing.
//!
//! The other subcommands are helpers the bench starts inside the test bed
//! (see `tools` and `drivers`).

mod broker_scale;
mod chart;
mod ctx;
mod dpfd;
mod drivers;
mod portmap;
mod metrics_cpu;
mod nbconnect;
mod paper;
mod procfs;
mod punch;
mod punch_matrix;
mod punch_md;
mod reference;
mod relay;
mod report;
mod results;
mod rpc;
mod shim_overhead;
mod stats;
mod tables;
mod tables_md;
mod targets;
mod tools;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Instant;

const USAGE: &str = "\
usage: gcb-bench [run] [--quick] [--only tables|nbconnect|relay|shim|broker|dpfd|metrics|portmap|punch[,...]] [--out DIR]
       gcb-bench pingpong --messages N [--transport tcp|unix]
       gcb-bench sink --port P
       gcb-bench source --connect IP:PORT --bytes N
       gcb-bench hold --connect IP:PORT --conns M --bytes K
       gcb-bench register --broker IP:PORT --local-ip IP [--sockets S] [--window W]
       gcb-bench dpf-driver --dpfd IP:PORT --local-ip IP [--sockets S] [--window W]
       gcb-bench map-driver --gateway IP --local-ip IP [--via pcp|dpf] [--count N]
Needs root for `run` (network namespaces). Normally started by scripts/bench.";

/// The parts of a run, in the order they run: the cheapest first, so a quick
/// look at the first lines of output is already informative.
pub const PARTS: [&str; 9] = ["shim", "tables", "nbconnect", "relay", "broker", "dpfd", "metrics", "portmap", "punch"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (sub, rest) = match args.first().map(String::as_str) {
        Some(s) if !s.starts_with('-') => (s.to_string(), &args[1..]),
        _ => ("run".to_string(), &args[..]),
    };
    let code = match parse_flags(rest).and_then(|f| dispatch(&sub, &f)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gcb-bench {sub}: {e}");
            2
        }
    };
    std::process::exit(code);
}

/// `--key value` pairs and bare `--flag`s (value "").
fn parse_flags(args: &[String]) -> Result<HashMap<String, String>, String> {
    let mut m = HashMap::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "-h" || a == "--help" {
            m.insert("help".to_string(), String::new());
            i += 1;
            continue;
        }
        let key = a
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {a:?}\n{USAGE}"))?;
        if let Some((k, v)) = key.split_once('=') {
            m.insert(k.to_string(), v.to_string());
            i += 1;
        } else if i + 1 < args.len() && !args[i + 1].starts_with("--") {
            m.insert(key.to_string(), args[i + 1].clone());
            i += 2;
        } else {
            m.insert(key.to_string(), String::new());
            i += 1;
        }
    }
    Ok(m)
}

fn get<T: std::str::FromStr>(f: &HashMap<String, String>, key: &str) -> Result<T, String> {
    let v = f.get(key).ok_or_else(|| format!("--{key} is required"))?;
    v.parse().map_err(|_| format!("bad --{key} {v:?}"))
}

fn get_or<T: std::str::FromStr>(
    f: &HashMap<String, String>,
    key: &str,
    default: T,
) -> Result<T, String> {
    match f.get(key) {
        None => Ok(default),
        Some(_) => get(f, key),
    }
}

fn dispatch(sub: &str, f: &HashMap<String, String>) -> Result<i32, String> {
    if f.contains_key("help") {
        println!("{USAGE}");
        return Ok(0);
    }
    let done = |r: Result<(), String>| r.map(|_| 0);
    match sub {
        "run" => run(f),
        "pingpong" => done(tools::pingpong(
            get(f, "messages")?,
            &get_or(f, "transport", "tcp".to_string())?,
        )),
        "sink" => done(tools::sink(get(f, "port")?)),
        "source" => done(tools::source(
            get::<SocketAddr>(f, "connect")?,
            get(f, "bytes")?,
        )),
        "hold" => done(tools::hold(
            get(f, "connect")?,
            get(f, "conns")?,
            get(f, "bytes")?,
        )),
        "register" => done(drivers::register(
            get(f, "broker")?,
            get::<Ipv4Addr>(f, "local-ip")?,
            get_or(f, "sockets", 100)?,
            get_or(f, "window", 8)?,
        )),
        "map-driver" => done(portmap::map_driver(
            get(f, "gateway")?,
            get::<Ipv4Addr>(f, "local-ip")?,
            f.get("via").map(String::as_str).unwrap_or("pcp"),
            get_or(f, "count", 20)?,
        )),
        "dpf-driver" => done(drivers::dpf_driver(
            get(f, "dpfd")?,
            get::<Ipv4Addr>(f, "local-ip")?,
            get_or(f, "sockets", 4)?,
            get_or(f, "window", 64)?,
        )),
        s => Err(format!("unknown subcommand {s:?}\n{USAGE}")),
    }
}

fn run(f: &HashMap<String, String>) -> Result<i32, String> {
    if !testbed::is_root() {
        return Err(
            "needs root (network namespaces and nftables); run scripts/bench as root".into(),
        );
    }
    let quick = f.contains_key("quick");
    let only: Vec<String> = match f.get("only") {
        Some(v) => v
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        None => PARTS.iter().map(|s| s.to_string()).collect(),
    };
    if let Some(bad) = only.iter().find(|p| !PARTS.contains(&p.as_str())) {
        return Err(format!(
            "unknown part {bad:?} for --only (parts: {})",
            PARTS.join(", ")
        ));
    }
    let out_dir = f
        .get("out")
        .map(PathBuf::from)
        .unwrap_or_else(|| testbed::target_dir().join("bench"));
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;

    ctx::install_signal_handlers();
    ctx::raise_fd_limit();
    let ctx = ctx::Ctx::new(quick, out_dir)?;
    let t0 = Instant::now();
    let mut res = results::Results::default();
    report::meta(&mut res, quick, &only);

    for part in PARTS.iter().filter(|p| only.iter().any(|o| o == *p)) {
        let tp = Instant::now();
        eprintln!("bench: == {part} ==");
        let r = match *part {
            "shim" => shim_overhead::run(&ctx, &mut res),
            "tables" => tables::run(&ctx, &mut res),
            "nbconnect" => nbconnect::run(&ctx, &mut res),
            "relay" => relay::run(&ctx, &mut res),
            "broker" => broker_scale::run(&ctx, &mut res),
            "metrics" => metrics_cpu::run(&ctx, &mut res),
            "portmap" => portmap::run(&ctx, &mut res),
            "punch" => punch::run(&ctx, &mut res),
            _ => dpfd::run(&ctx, &mut res),
        };
        res.num(&format!("meta.seconds.{part}"), tp.elapsed().as_secs_f64());
        if let Err(e) = r {
            if ctx::stopped() {
                eprintln!("bench: interrupted; the test bed was removed, no results written");
                return Ok(130);
            }
            let key = if *part == "shim" {
                "shim_overhead"
            } else {
                part
            };
            eprintln!("bench: {part}: {e}");
            res.error(key, e);
        }
    }
    res.num("meta.seconds.total", t0.elapsed().as_secs_f64());
    let ran_tables = only.iter().any(|p| p == "tables");
    reference::compare(&mut res);
    let verdicts = targets::evaluate(&mut res, &only);
    report::write_all(&ctx, &res, &verdicts, ran_tables)?;
    Ok(0)
}
