//! Broker scale, with a broker started for load: a port range big enough
//! for 10k proxy sockets, no per-source rate limit, and registrations that
//! outlive the test without heartbeats.
//!
//! 1. Registrations: `gcb-bench register` on a1 sends `Register` from 100
//!    management sockets; the rate to 1k and on to 10k, and the broker's RSS.
//! 2. Concurrent relays: an echo server on a1 under the shim, and
//!    `gcb-bench hold` on b1 opening 100, then 1,000 plain connections to its
//!    proxy address (so every one is relayed), every byte verified; RSS with
//!    all of them open.
//! 3. Brokered connects per second: echo-client under the shim, many runs
//!    in parallel, from pub (reversal) and from b1 (relay), taking turns with
//!    the same client, plain, through a static forward (the baseline).
//!
//! A fresh broker serves parts 1 and 2+3, so the 10k registrations of part 1
//! do not weigh on the RSS figures of part 2.

use crate::ctx::{self, Ctx, Shim, A1_IP, BROKER_IP, BROKER_PORT};
use crate::results::Results;
use std::io::Write;
use std::process::{ChildStdin, Stdio};
use std::time::Duration;
use testbed::{Proc, TestBed};

const ECHO_PORT: u16 = 7700;

pub fn run(ctx: &Ctx, res: &mut Results) -> Result<(), String> {
    ctx.need(&ctx.paths.broker)?;
    let bed = TestBed::up()?;
    let broker = start_broker(ctx, &bed)?;
    let pid = crate::procfs::exec_pid(broker.pid(), "gcb-broker");
    if let Some(r) = crate::procfs::rss_mb(pid) {
        res.num("broker.rss_mb_idle", r);
    }
    if let Err(e) = registrations(ctx, &bed, pid, res) {
        ctx::check_stop()?;
        res.error("broker.registrations", e);
    }
    drop(broker);

    ctx.need(&ctx.paths.libgcb)?;
    let broker = start_broker(ctx, &bed)?;
    let pid = crate::procfs::exec_pid(broker.pid(), "gcb-broker");
    let server = start_echo(ctx, &bed);
    let (_server, proxy) = match server {
        Ok(x) => x,
        Err(e) => {
            res.error("broker.relays", e.clone());
            res.error("broker.connects_per_s", e);
            return Ok(());
        }
    };
    for m in [100usize, 1000] {
        if let Err(e) = relays(ctx, &bed, pid, &proxy, m, res) {
            ctx::check_stop()?;
            res.error(&format!("broker.relays.c{m}"), e);
        }
    }
    connects(ctx, &bed, &proxy, res)?;
    drop(broker);
    rss_ratios(res);
    Ok(())
}

/// Every RSS figure as a ratio to the idle broker's.
fn rss_ratios(res: &mut Results) {
    let Some(idle) = res.get("broker.rss_mb_idle").filter(|v| *v > 0.0) else {
        return;
    };
    for key in [
        "registrations.r1k",
        "registrations.r10k",
        "relays.c100",
        "relays.c1000",
    ] {
        if let Some(v) = res.get(&format!("broker.{key}.rss_mb")) {
            res.num(&format!("broker.{key}.rss_ratio_to_idle"), v / idle);
        }
    }
}

/// The broker for load; if this build refuses the extra flags, the plain
/// command line of issue 6 (and the figures may then hit its defaults).
fn start_broker(ctx: &Ctx, bed: &TestBed) -> Result<Proc, String> {
    let listen = format!("{BROKER_IP}:{BROKER_PORT}");
    let base = [
        "--listen",
        listen.as_str(),
        "--public-ip",
        BROKER_IP,
        "--port-range",
        "20000-39999",
    ];
    let extra = [
        "--rate-limit",
        "0",
        "--heartbeat-timeout-s",
        "3600",
        "--max-registrations",
        "100000",
        "--max-relays",
        "100000",
    ];
    let mut last = String::new();
    for with_extra in [true, false] {
        let mut c = bed.cmd("broker", &ctx.paths.broker);
        c.args(base);
        if with_extra {
            c.args(extra);
        }
        let p = bed.spawn_cmd(c)?;
        match ctx::expect_alive(&p, "gcb-broker", Duration::from_millis(500)) {
            Ok(()) => return Ok(p),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A driver subcommand with its stdin piped, once it printed `READY`.
pub fn start_driver(
    bed: &TestBed,
    host: &str,
    ctx: &Ctx,
    args: &[&str],
) -> Result<(Proc, ChildStdin), String> {
    let mut c = bed.cmd(host, &ctx.paths.bench);
    c.args(args).stdin(Stdio::piped());
    let mut p = bed.spawn_cmd(c)?;
    let stdin = p.take_stdin().ok_or("no stdin pipe")?;
    ctx::wait_line(&p, "READY", Duration::from_secs(10))?;
    Ok((p, stdin))
}

/// Send one command line to a driver and wait for its answer line.
pub fn step(
    p: &Proc,
    stdin: &mut ChildStdin,
    cmd: &str,
    answer: &str,
    timeout: Duration,
) -> Result<String, String> {
    writeln!(stdin, "{cmd}")
        .and_then(|_| stdin.flush())
        .map_err(|e| format!("driver: {e}"))?;
    ctx::wait_line(p, answer, timeout + Duration::from_secs(5))
        .map(|rest| format!("{answer}{rest}"))
}

/// The reason at the end of a `... error=REASON` line.
pub fn error_of(line: &str) -> String {
    line.split_once(" error=")
        .map(|(_, e)| e.to_string())
        .unwrap_or_default()
}

fn registrations(ctx: &Ctx, bed: &TestBed, pid: u32, res: &mut Results) -> Result<(), String> {
    let broker = format!("{BROKER_IP}:{BROKER_PORT}");
    let (p, mut stdin) = start_driver(
        bed,
        "a1",
        ctx,
        &[
            "register",
            "--broker",
            &broker,
            "--local-ip",
            A1_IP,
            "--sockets",
            "100",
            "--window",
            "8",
        ],
    )?;
    // One registration first: a broker that does not answer is n/a at once.
    let probe = step(&p, &mut stdin, "reg 1 3", "REG ", Duration::from_secs(3))?;
    if ctx::field(&probe, "ok").as_deref() != Some("1") {
        return Err(format!(
            "the broker did not accept a Register: {}",
            error_of(&probe)
        ));
    }
    let mut total = 1;
    for (target, key) in [(1_000usize, "1k"), (10_000, "10k")] {
        ctx::check_stop()?;
        eprintln!("bench: broker: registering up to {target}");
        let n = target - total;
        let line = step(
            &p,
            &mut stdin,
            &format!("reg {n} {}", 10 + n / 200),
            "REG ",
            Duration::from_secs(10 + n as u64 / 200),
        )?;
        let ok = ctx::field_f64(&line, "ok").unwrap_or(0.0);
        let secs = ctx::field_f64(&line, "secs").unwrap_or(f64::NAN);
        total += ok as usize;
        let base = format!("broker.registrations.r{key}");
        res.int(&format!("{base}.registered"), total as i64);
        res.num(&format!("{base}.per_s"), ok / secs);
        if let Some(r) = crate::procfs::rss_mb(pid) {
            res.num(&format!("{base}.rss_mb"), r);
        }
        if ok < n as f64 {
            res.text(
                &format!("{base}.failures"),
                format!("{} failed: {}", n as f64 - ok, error_of(&line)),
            );
        }
    }
    let _ = writeln!(stdin, "quit");
    Ok(())
}

/// The echo server on a1 under the shim, and the proxy address it reports.
fn start_echo(ctx: &Ctx, bed: &TestBed) -> Result<(Proc, String), String> {
    let port = ECHO_PORT.to_string();
    let args = ["--proto", "tcp", "--port", &port, "--mode", "epoll"];
    let p = bed.spawn_cmd(ctx::prog(
        ctx,
        bed,
        "a1",
        Shim::Gcb,
        &ctx.paths.echo_server,
        &args,
    ))?;
    let addr = ctx::wait_line(&p, "LISTEN tcp ", Duration::from_secs(10))
        .map_err(|e| format!("echo-server: {e}"))?;
    let addr = addr.trim().to_string();
    if !addr.starts_with(&format!("{BROKER_IP}:")) {
        return Err(format!("the server's socket was not registered: it reports {addr}, not a proxy address on {BROKER_IP}"));
    }
    Ok((p, addr))
}

fn relays(
    ctx: &Ctx,
    bed: &TestBed,
    pid: u32,
    proxy: &str,
    m: usize,
    res: &mut Results,
) -> Result<(), String> {
    eprintln!("bench: broker: {m} concurrent relays");
    let mut c = bed.cmd("b1", &ctx.paths.bench);
    c.args([
        "hold",
        "--connect",
        proxy,
        "--conns",
        &m.to_string(),
        "--bytes",
        "4096",
    ])
    .stdin(Stdio::piped());
    let mut p = bed.spawn_cmd(c)?;
    let mut stdin = p.take_stdin().ok_or("no stdin pipe")?;
    let held = ctx::wait_line(&p, "HELD ", Duration::from_secs(60 + m as u64 / 10))?;
    let rss = crate::procfs::rss_mb(pid);
    let _ = writeln!(stdin, "close");
    let _ = ctx::wait_line(&p, "DONE", Duration::from_secs(30));
    let base = format!("broker.relays.c{m}");
    let verified = ctx::field_f64(&held, "verified").unwrap_or(0.0);
    res.int(&format!("{base}.connections"), m as i64);
    res.int(&format!("{base}.verified"), verified as i64);
    res.num(
        &format!("{base}.setup_and_verify_s"),
        ctx::field_f64(&held, "secs").unwrap_or(f64::NAN),
    );
    if let Some(r) = rss {
        res.num(&format!("{base}.rss_mb"), r);
    }
    if verified < m as f64 {
        let why = ctx::field(&held, "error")
            .unwrap_or_default()
            .replace('_', " ");
        res.text(
            &format!("{base}.failures"),
            format!("{} of {m} not verified: {why}", m as f64 - verified),
        );
    }
    Ok(())
}

fn connects(ctx: &Ctx, bed: &TestBed, proxy: &str, res: &mut Results) -> Result<(), String> {
    let (runs, blocks) = (ctx.pick(50, 250), ctx.pick(2, 4));
    let parallel = 8;
    // The baseline: the same clients, plain, to a plain server behind a
    // static forward (the paper's "regular").
    let plain_port = ECHO_PORT + 1;
    let regular = ctx::static_forward(bed, "tcp", plain_port).and_then(|_| {
        let port = plain_port.to_string();
        let args = [
            ctx.paths.echo_server.to_str().unwrap_or_default(),
            "--proto",
            "tcp",
            "--port",
            &port,
            "--mode",
            "epoll",
        ];
        bed.spawn_server("a1", &args, "LISTEN tcp ", Duration::from_secs(10))
    });
    let regular_dial = format!("{}:{plain_port}", ctx::GA_PUBLIC_IP);
    let ways = [
        ("regular", "pub", Shim::None, regular_dial.as_str()),
        ("reversal", "pub", Shim::Gcb, proxy),
        ("relay", "b1", Shim::Gcb, proxy),
    ];
    let mut tally = [(0.0f64, 0.0f64); 3];
    let mut errs: [Option<String>; 3] = [regular.as_ref().err().cloned(), None, None];
    for b in 0..blocks {
        for (k, (name, host, shim, dial)) in ways.iter().enumerate() {
            ctx::check_stop()?;
            if errs[k].is_some() {
                continue;
            }
            eprintln!("bench: broker: {name} connects, block {}/{blocks}", b + 1);
            let args = [
                "--proto",
                "tcp",
                "--connect",
                dial,
                "--bytes",
                "16",
                "--rounds",
                "1",
                "--runs",
                &runs.to_string(),
                "--parallel",
                &parallel.to_string(),
                "--timeout-ms",
                "5000",
            ];
            let mut cmd = ctx::prog(ctx, bed, host, *shim, &ctx.paths.echo_client, &args);
            if *name == "relay" {
                // This figure is the relay's rate: a client that offered hole
                // punching would have the broker punch between the realms
                // (measured under "Hole punching").
                cmd.env("GCB_PUNCH", "0");
            }
            match ctx::run_in(bed, cmd, Duration::from_secs(60 + runs as u64)) {
                Ok(fin) => {
                    let ok = fin.stdout.iter().filter(|l| l.starts_with("RUN ")).count() as f64;
                    if ok == 0.0 {
                        errs[k] = Some(format!("echo-client: {}", fin.why()));
                    }
                    tally[k].0 += ok;
                    tally[k].1 += fin.secs;
                }
                Err(e) => errs[k] = Some(e),
            }
        }
    }
    for (k, (name, ..)) in ways.iter().enumerate() {
        let key = format!("broker.connects_per_s.{name}");
        match &errs[k] {
            Some(e) => res.error(&key, e.clone()),
            // Wall time of the client processes, startup included: a slight
            // underestimate of the rate, the same for every way.
            None => res.num(&key, tally[k].0 / tally[k].1),
        }
    }
    if let Some(base) = res.get("broker.connects_per_s.regular") {
        for name in ["reversal", "relay"] {
            if let Some(v) = res.get(&format!("broker.connects_per_s.{name}")) {
                res.num(
                    &format!("broker.connects_per_s.{name}_ratio_to_regular"),
                    v / base,
                );
            }
        }
    }
    res.int("broker.connects_per_s.parallel_clients", parallel);
    drop(regular);
    Ok(())
}
