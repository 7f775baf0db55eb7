//! Relay throughput: one bulk TCP stream from realm B (b1) to realm A (a1),
//!
//! * direct, through a static forward on GA (the baseline);
//! * through the GCB relay: the sink runs under the shim and is registered
//!   with the broker; the sender is a plain program dialing the proxy
//!   address, so the broker relays (docs/design.md, "Non-GCB peers");
//! * through socat on the broker host, forwarding to the static forward —
//!   the obvious hand-made alternative to the broker's relay.
//!
//! The three take turns, transfer by transfer. Besides Gbit/s we report the
//! relaying process's CPU seconds per GB, from /proc/PID/stat before and
//! after (socat's per-connection children count once it has reaped them).

use crate::ctx::{self, Ctx, BROKER_IP, BROKER_PORT, GA_PUBLIC_IP};
use crate::results::Results;
use crate::stats::Stat;
use std::time::{Duration, Instant};
use testbed::{Proc, TestBed};

const DIRECT_PORT: u16 = 7600;
const SOCAT_PORT: u16 = 7601;
const GCB_PORT: u16 = 7602;

struct Way {
    key: &'static str,
    dial: Result<String, String>,
    /// The relaying process whose CPU time we charge (none for direct).
    cpu_pid: Option<u32>,
    gbps: Vec<f64>,
    cpu_per_gb: Vec<f64>,
}

pub fn run(ctx: &Ctx, res: &mut Results) -> Result<(), String> {
    let bytes: u64 = ctx.pick(256 << 20, 1 << 30);
    let reps = ctx.pick(3, 5);
    res.int("relay.bytes_per_transfer", bytes as i64);
    res.int("relay.transfers_each", reps as i64);
    let bed = TestBed::up()?;
    let mut keep: Vec<Proc> = Vec::new();

    // Direct: a plain sink behind a static forward.
    ctx::static_forward(&bed, "tcp", DIRECT_PORT)?;
    let sink = start_sink(ctx, &bed, ctx::Shim::None, DIRECT_PORT)?;
    keep.push(sink.0);
    let direct = Way {
        key: "direct",
        dial: Ok(format!("{GA_PUBLIC_IP}:{DIRECT_PORT}")),
        cpu_pid: None,
        gbps: vec![],
        cpu_per_gb: vec![],
    };

    let mut socat = Way {
        key: "socat_relay",
        dial: Err(String::new()),
        cpu_pid: None,
        gbps: vec![],
        cpu_per_gb: vec![],
    };
    match start_socat(&bed) {
        Ok(p) => {
            socat.cpu_pid = Some(crate::procfs::exec_pid(p.pid(), "socat"));
            socat.dial = Ok(format!("{BROKER_IP}:{SOCAT_PORT}"));
            keep.push(p);
        }
        Err(e) => socat.dial = Err(e),
    }

    let mut gcb = Way {
        key: "gcb_relay",
        dial: Err(String::new()),
        cpu_pid: None,
        gbps: vec![],
        cpu_per_gb: vec![],
    };
    match start_gcb(ctx, &bed) {
        Ok((broker, sink, addr)) => {
            gcb.cpu_pid = Some(crate::procfs::exec_pid(broker.pid(), "gcb-broker"));
            gcb.dial = Ok(addr);
            keep.push(broker);
            keep.push(sink);
        }
        Err(e) => gcb.dial = Err(e),
    }

    let mut ways = [direct, gcb, socat];
    for rep in 0..reps {
        for k in 0..ways.len() {
            ctx::check_stop()?;
            let n = ways.len();
            let w = &mut ways[(k + rep) % n];
            let Ok(dial) = w.dial.clone() else { continue };
            eprintln!("bench: relay: {} transfer {}/{reps}", w.key, rep + 1);
            if let Err(e) = transfer(ctx, &bed, w, &dial, bytes) {
                w.dial = Err(e);
            }
        }
    }

    for w in &ways {
        let gbps_key = format!("relay.{}_gbps", w.key);
        match (&w.dial, Stat::of(&w.gbps)) {
            (Ok(_), Some(s)) => {
                res.num(&gbps_key, s.mean);
                res.num(&format!("relay.{}_gbps_sd", w.key), s.sd);
            }
            (Err(e), _) => res.error(&gbps_key, e.clone()),
            (Ok(_), None) => res.error(&gbps_key, "no transfer ran"),
        }
        if w.cpu_pid.is_some() {
            let short = w.key.trim_end_matches("_relay");
            let cpu_key = format!("relay.{short}_cpu_s_per_gb");
            match Stat::of(&w.cpu_per_gb) {
                Some(s) if w.dial.is_ok() => res.num(&cpu_key, s.mean),
                _ => res.error(
                    &cpu_key,
                    w.dial
                        .clone()
                        .err()
                        .unwrap_or_else(|| "no transfer ran".into()),
                ),
            }
        }
    }
    if let Some(d) = res.get("relay.direct_gbps") {
        for k in ["gcb_relay", "socat_relay"] {
            if let Some(v) = res.get(&format!("relay.{k}_gbps")) {
                res.num(&format!("relay.{k}_ratio_to_direct"), v / d);
            }
        }
    }
    if let (Some(g), Some(s)) = (
        res.get("relay.gcb_cpu_s_per_gb"),
        res.get("relay.socat_cpu_s_per_gb"),
    ) {
        if s > 0.0 {
            res.num("relay.gcb_cpu_ratio_to_socat", g / s);
        }
    }
    drop(keep);
    Ok(())
}

/// `gcb-bench sink` on a1; returns it and the address it reports.
pub(crate) fn start_sink(
    ctx: &Ctx,
    bed: &TestBed,
    shim: ctx::Shim,
    port: u16,
) -> Result<(Proc, String), String> {
    let port_s = port.to_string();
    let cmd = ctx::prog(
        ctx,
        bed,
        "a1",
        shim,
        &ctx.paths.bench,
        &["sink", "--port", &port_s],
    );
    let p = bed.spawn_cmd(cmd)?;
    let addr = ctx::wait_line(&p, "LISTEN tcp ", Duration::from_secs(10))
        .map_err(|e| format!("sink: {e}"))?;
    Ok((p, addr.trim().to_string()))
}

fn start_socat(bed: &TestBed) -> Result<Proc, String> {
    if !testbed::have_command("socat") {
        return Err("socat is not installed (scripts/bench installs it)".into());
    }
    let listen = format!("TCP-LISTEN:{SOCAT_PORT},fork,reuseaddr");
    let to = format!("TCP:{GA_PUBLIC_IP}:{DIRECT_PORT}");
    let p = bed.spawn("broker", &["socat", &listen, &to])?;
    // socat prints nothing when ready; wait until the port is listening.
    let filter = format!("sport = :{SOCAT_PORT}");
    for _ in 0..100 {
        ctx::expect_alive(&p, "socat", Duration::from_millis(30))?;
        if ctx::sh(bed, "broker", &["ss", "-Hltn", &filter]).is_ok_and(|o| !o.trim().is_empty()) {
            return Ok(p);
        }
    }
    Err("socat did not listen within 3 s".into())
}

/// The broker with issue 6's command line, and a sink registered with it.
fn start_gcb(ctx: &Ctx, bed: &TestBed) -> Result<(Proc, Proc, String), String> {
    ctx.need(&ctx.paths.broker)?;
    ctx.need(&ctx.paths.libgcb)?;
    let listen = format!("{BROKER_IP}:{BROKER_PORT}");
    let broker = bed.spawn(
        "broker",
        &[
            ctx.paths.broker.to_str().unwrap_or_default(),
            "--listen",
            &listen,
            "--public-ip",
            BROKER_IP,
            "--port-range",
            "20000-20999",
        ],
    )?;
    ctx::expect_alive(&broker, "gcb-broker", Duration::from_millis(500))?;
    let (sink, addr) = start_sink(ctx, bed, ctx::Shim::Gcb, GCB_PORT)?;
    if !addr.starts_with(&format!("{BROKER_IP}:")) {
        return Err(format!("the sink's socket was not registered: it reports {addr}, not a proxy address on {BROKER_IP}"));
    }
    Ok((broker, sink, addr))
}

fn transfer(ctx: &Ctx, bed: &TestBed, w: &mut Way, dial: &str, bytes: u64) -> Result<(), String> {
    let cpu0 = w.cpu_pid.and_then(crate::procfs::cpu_secs);
    let cmd = ctx::prog(
        ctx,
        bed,
        "b1",
        ctx::Shim::None,
        &ctx.paths.bench,
        &["source", "--connect", dial, "--bytes", &bytes.to_string()],
    );
    // Even at 100 Mbit/s a GiB takes 90 s; anything slower is broken.
    let fin = ctx::run_in(bed, cmd, Duration::from_secs(30 + bytes / 12_000_000))?;
    let line = fin.stdout.iter().find(|l| l.starts_with("SENT ")).cloned();
    let Some(line) = line.filter(|_| fin.success) else {
        return Err(format!("source: {}", fin.why()));
    };
    let gbps = ctx::field_f64(&line, "gbps").ok_or_else(|| format!("bad line {line:?}"))?;
    w.gbps.push(gbps);
    if let (Some(pid), Some(c0)) = (w.cpu_pid, cpu0) {
        wait_children_reaped(pid, Duration::from_secs(3));
        if let Some(c1) = crate::procfs::cpu_secs(pid) {
            w.cpu_per_gb.push((c1 - c0) / (bytes as f64 / 1e9));
        }
    }
    Ok(())
}

/// socat forks a child per connection; its CPU time reaches the parent's
/// cutime/cstime only once the child is reaped.
fn wait_children_reaped(pid: u32, bound: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < bound {
        let kids =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if kids.trim().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
