//! dpfd at scale, driven by `gcb-bench dpf-driver` on a1 speaking DPF
//! directly (pipelined requests, so dpfd can batch its nftables changes):
//!
//! * forwards added and deleted per second, growing from 10 to 10,000 and back;
//! * recovery: dpfd is stopped, its nftables table removed as a reboot would,
//!   and restarted; the time until the kernel map holds all forwards again
//!   (and until its log says "recovered", if it says so);
//! * the kernel lookup: TCP connection time from pub through one DPF forward
//!   to a plain echo server on a1 with 10 forwards installed vs 10,000, in the
//!   order 10, 10k, 10k (after recovery), 10, so linear drift cancels.

use crate::broker_scale::{error_of, start_driver, step};
use crate::ctx::{self, Ctx, A1_IP, DPFD_PORT, GA_PRIVATE_IP, GA_PUBLIC_IP};
use crate::results::Results;
use crate::stats::{parse_echo, Stat};
use std::time::{Duration, Instant};
use testbed::{Proc, TestBed};

const ECHO_PORT: u16 = 7800;
const TABLE: &str = "gcbbench";
const MANY: usize = 10_000;

pub fn run(ctx: &Ctx, res: &mut Results) -> Result<(), String> {
    ctx.need(&ctx.paths.dpfd)?;
    let bed = TestBed::up()?;
    let scratch = ctx::scratch_dir(&bed, "dpfd")?;
    let mirror = format!("{scratch}/dpfd.mirror");
    let r = measure(ctx, &bed, &mirror, res);
    drop(bed);
    ctx::scratch_done(&scratch);
    r
}

/// dpfd for load: 12,000 public ports for 10,010 forwards, all requested by
/// one host. Returns it with the arguments that worked, for the restart.
fn start_dpfd(ctx: &Ctx, bed: &TestBed, mirror: &str) -> Result<(Proc, Vec<String>), String> {
    let base = [
        "--listen",
        GA_PRIVATE_IP,
        "--public-ip",
        GA_PUBLIC_IP,
        "--port-range",
        "30000-41999",
        "--mirror",
        mirror,
        "--nft-table",
        TABLE,
    ];
    let mut last = String::new();
    // One host asks for everything, as fast as dpfd answers: no quota and
    // no rate limit in the way. Older dpfds that do not know a flag get
    // the line without it.
    let unlimited = ["--per-host-quota", "20000", "--rate-limit", "0"];
    for extra in [&unlimited[..], &unlimited[..2], &[][..]] {
        let args: Vec<String> = base.iter().chain(extra).map(|s| s.to_string()).collect();
        let p = spawn_dpfd(ctx, bed, &args)?;
        match ctx::expect_alive(&p, "dpfd", Duration::from_millis(500)) {
            Ok(()) => return Ok((p, args)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn spawn_dpfd(ctx: &Ctx, bed: &TestBed, args: &[String]) -> Result<Proc, String> {
    let mut c = bed.cmd("ga", &ctx.paths.dpfd);
    c.args(args);
    bed.spawn_cmd(c)
}

fn measure(ctx: &Ctx, bed: &TestBed, mirror: &str, res: &mut Results) -> Result<(), String> {
    let (mut dpfd, dpfd_args) = start_dpfd(ctx, bed, mirror)?;
    let port = ECHO_PORT.to_string();
    let (_server, _) = bed.spawn_server(
        "a1",
        &[
            ctx.paths.echo_server.to_str().unwrap_or_default(),
            "--proto",
            "tcp",
            "--port",
            &port,
            "--mode",
            "epoll",
        ],
        "LISTEN tcp ",
        Duration::from_secs(10),
    )?;
    let target = format!("{GA_PRIVATE_IP}:{DPFD_PORT}");
    let (driver, mut stdin) = start_driver(
        bed,
        "a1",
        ctx,
        &[
            "dpf-driver",
            "--dpfd",
            &target,
            "--local-ip",
            A1_IP,
            "--sockets",
            "4",
            "--window",
            "64",
        ],
    )?;

    // The echo server's forward first; no answer means dpfd is n/a here.
    let fwd = step(
        &driver,
        &mut stdin,
        &format!("fwd {ECHO_PORT} 3"),
        "FWD",
        Duration::from_secs(3),
    )?;
    let public = match fwd.strip_prefix("FWD ") {
        Some(a) => a.trim().to_string(),
        None => {
            return Err(format!(
                "dpfd did not forward: {}",
                fwd.trim_start_matches("FWD-FAILED").trim()
            ))
        }
    };
    let few = 10;
    change(&driver, &mut stdin, "add", few - 1, None)?;

    let runs = ctx.pick(100, 500);
    let (mut at_few, mut at_many) = (Vec::new(), Vec::new());
    conn_times(ctx, bed, &public, runs, &mut at_few)?;

    eprintln!("bench: dpfd: adding {} forwards", MANY - few);
    let add = change(&driver, &mut stdin, "add", MANY - few, Some(&mut *res))?;
    res.num("dpfd.add_per_s", add);
    let t_count = Instant::now();
    let before = kernel_forwards(bed);
    res.int("dpfd.kernel_forwards_before_restart", before as i64);
    // One listing of the kernel map: the resolution of the recovery time.
    res.num("dpfd.kernel_listing_s", t_count.elapsed().as_secs_f64());
    conn_times(ctx, bed, &public, runs, &mut at_many)?;

    eprintln!("bench: dpfd: restart and recovery of {before} forwards");
    match recover(ctx, bed, &mut dpfd, &dpfd_args, before, res) {
        Ok(()) => conn_times(ctx, bed, &public, runs, &mut at_many)?,
        Err(e) => {
            ctx::check_stop()?;
            res.error("dpfd.recovery_kernel_s", e);
        }
    }

    eprintln!("bench: dpfd: deleting {} forwards", MANY - few);
    match change(&driver, &mut stdin, "del", MANY - few, Some(&mut *res)) {
        Ok(del) => res.num("dpfd.delete_per_s", del),
        Err(e) => res.error("dpfd.delete_per_s", e),
    }
    conn_times(ctx, bed, &public, runs, &mut at_few)?;

    for (key, xs) in [
        ("conn_us_10_forwards", &at_few),
        ("conn_us_10000_forwards", &at_many),
    ] {
        match Stat::of(xs) {
            Some(s) => {
                res.num(&format!("dpfd.{key}.mean"), s.mean);
                res.num(&format!("dpfd.{key}.sd"), s.sd);
                res.int(&format!("dpfd.{key}.runs"), s.n as i64);
            }
            None => res.error(&format!("dpfd.{key}"), "no run succeeded"),
        }
    }
    if let (Some(a), Some(b)) = (
        res.get("dpfd.conn_us_10_forwards.mean"),
        res.get("dpfd.conn_us_10000_forwards.mean"),
    ) {
        res.num("dpfd.lookup_ratio_10000_to_10", b / a);
    }
    let _ = std::io::Write::write_all(&mut stdin, b"quit\n");
    Ok(())
}

/// Add or delete `n` forwards in one pipelined step; the rate in changes/s.
/// Partial failures are noted in `res` (when given) but still give a rate.
fn change(
    driver: &Proc,
    stdin: &mut std::process::ChildStdin,
    verb: &str,
    n: usize,
    res: Option<&mut Results>,
) -> Result<f64, String> {
    let timeout = 10 + n as u64 / 200;
    let line = step(
        driver,
        stdin,
        &format!("{verb} {n} {timeout}"),
        &format!("{} ", verb.to_uppercase()),
        Duration::from_secs(timeout),
    )?;
    let ok = ctx::field_f64(&line, "ok").unwrap_or(0.0);
    let secs = ctx::field_f64(&line, "secs").unwrap_or(f64::NAN);
    if ok == 0.0 && n > 0 {
        return Err(format!("dpfd refused every {verb}: {}", error_of(&line)));
    }
    if ok < n as f64 {
        if let Some(res) = res {
            res.text(
                &format!("dpfd.{verb}_failures"),
                format!("{} of {n} failed: {}", n as f64 - ok, error_of(&line)),
            );
        }
    }
    Ok(ok / secs)
}

/// TCP connection times (µs) from pub through the DPF forward.
fn conn_times(
    ctx: &Ctx,
    bed: &TestBed,
    public: &str,
    runs: usize,
    into: &mut Vec<f64>,
) -> Result<(), String> {
    ctx::check_stop()?;
    let args = [
        "--proto",
        "tcp",
        "--connect",
        public,
        "--bytes",
        "16",
        "--rounds",
        "1",
        "--runs",
        &runs.to_string(),
    ];
    let fin = ctx::run_in(
        bed,
        bed_cmd(ctx, bed, &args),
        Duration::from_secs(60 + runs as u64),
    )?;
    let r = parse_echo(&fin.stdout);
    if r.conn_us.is_empty() {
        return Err(format!(
            "echo-client through the DPF forward: {}",
            r.failure.unwrap_or_else(|| fin.why())
        ));
    }
    into.extend(r.conn_us);
    Ok(())
}

fn bed_cmd(ctx: &Ctx, bed: &TestBed, args: &[&str]) -> std::process::Command {
    ctx::prog(
        ctx,
        bed,
        "pub",
        ctx::Shim::None,
        &ctx.paths.echo_client,
        args,
    )
}

/// Stop dpfd, drop its kernel state as a reboot would, start it again and
/// time the way back to `want` forwards in the kernel.
fn recover(
    ctx: &Ctx,
    bed: &TestBed,
    dpfd: &mut Proc,
    args: &[String],
    want: usize,
    res: &mut Results,
) -> Result<(), String> {
    dpfd.terminate();
    let _ = ctx::sh(bed, "ga", &["nft", "delete", "table", "ip", TABLE]);
    if want == 0 {
        return Err("no forwards in the kernel before the restart".into());
    }
    // The clock starts at the spawn; no start-up grace, it would count.
    let t0 = Instant::now();
    *dpfd = spawn_dpfd(ctx, bed, args)?;
    let (mut t_log, mut t_kernel, mut seen) = (None, None, 0);
    while t0.elapsed() < Duration::from_secs(30) && (t_kernel.is_none() || t_log.is_none()) {
        ctx::check_stop()?;
        if let Some(st) = dpfd.try_wait() {
            return Err(format!(
                "dpfd exited on restart ({st}): {}",
                ctx::last_line(&dpfd.stderr_text())
            ));
        }
        if t_log.is_none() && dpfd.stderr_text().to_lowercase().contains("recovered") {
            t_log = Some(t0.elapsed().as_secs_f64());
        }
        if t_kernel.is_none() {
            seen = kernel_forwards(bed);
            if seen >= want {
                t_kernel = Some(t0.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    res.int("dpfd.recovered_forwards", seen as i64);
    match t_log {
        Some(t) => res.num("dpfd.recovery_log_s", t),
        None => res.error(
            "dpfd.recovery_log_s",
            "dpfd logged no line containing \"recovered\" within 30 s",
        ),
    }
    match t_kernel {
        Some(t) => {
            res.num("dpfd.recovery_kernel_s", t);
            Ok(())
        }
        None => Err(format!(
            "only {seen} of {want} forwards back in the kernel after 30 s"
        )),
    }
}

/// Forwards in dpfd's nftables table: the elements of its maps (docs/design.md,
/// "DPF tables": one DNAT rule per protocol backed by a map), or its rules if it has no map.
fn kernel_forwards(bed: &TestBed) -> usize {
    let Ok(out) = ctx::sh(bed, "ga", &["nft", "-j", "list", "table", "ip", TABLE]) else {
        return 0;
    };
    let Ok(v) = testbed::json::parse(&out) else {
        return 0;
    };
    let items = v.get("nftables").and_then(|n| n.as_array()).unwrap_or(&[]);
    let count = |kind: &str| -> (usize, usize) {
        let objs: Vec<_> = items.iter().filter_map(|i| i.get(kind)).collect();
        let elems = objs
            .iter()
            .filter_map(|m| m.get("elem").and_then(|e| e.as_array()))
            .map(|e| e.len())
            .sum();
        (objs.len(), elems)
    };
    let (maps, elems) = count("map");
    if maps > 0 {
        elems
    } else {
        count("rule").0
    }
}
