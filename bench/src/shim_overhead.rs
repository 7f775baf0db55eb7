//! The shim's fast path: what `LD_PRELOAD=libgcb.so` costs a socket the shim
//! does not manage (docs/design.md, "Interposition hygiene": no extra system call).
//!
//! `gcb-bench pingpong` does small round trips over loopback TCP and over a
//! socketpair, run as a child so the preload applies to it, in three ways:
//! plain, preloaded with no configuration, and preloaded with GCB switched on
//! (`GCB_INAGENT`) — the loopback socket must stay unmanaged even then. The
//! three take turns, repetition by repetition, with the order rotated, and it
//! all runs inside a test-bed namespace so a shim that did contact the broker
//! address could only reach the bed.

use crate::ctx::{self, Ctx, BROKER_IP};
use crate::results::Results;
use crate::stats::{median, Stat};
use std::time::Duration;
use testbed::TestBed;

const MODES: [&str; 3] = ["plain", "preload", "gcb_env"];
const TRANSPORTS: [(&str, &str); 2] = [("tcp", "tcp_loopback"), ("unix", "unix_socketpair")];

pub fn run(ctx: &Ctx, res: &mut Results) -> Result<(), String> {
    let messages: u64 = ctx.pick(20_000, 1_000_000);
    let reps = ctx.pick(7, 5);
    res.int("shim_overhead.messages", messages as i64);
    res.int("shim_overhead.repetitions", reps as i64);
    res.int("shim_overhead.message_bytes", 8);
    if let Err(e) = ctx.need(&ctx.paths.libgcb) {
        res.error("shim_overhead", e);
        return Ok(());
    }
    let bed = TestBed::up()?;
    for (transport, key) in TRANSPORTS {
        let mut ns: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
        let mut errs: Vec<Option<String>> = vec![None; MODES.len()];
        for rep in 0..reps {
            eprintln!("bench: shim: {key} repetition {}/{reps}", rep + 1);
            for k in 0..MODES.len() {
                ctx::check_stop()?;
                let m = (k + rep) % MODES.len();
                if errs[m].is_some() {
                    continue;
                }
                match once(ctx, &bed, MODES[m], transport, messages) {
                    Ok(x) => ns[m].push(x),
                    Err(e) => errs[m] = Some(e),
                }
            }
        }
        let base = format!("shim_overhead.{key}");
        for (m, mode) in MODES.iter().enumerate() {
            match (&errs[m], Stat::of(&ns[m])) {
                (None, Some(s)) => {
                    res.num(&format!("{base}.{mode}_ns"), s.mean);
                    res.num(&format!("{base}.{mode}_ns_sd"), s.sd);
                    res.num(
                        &format!("{base}.{mode}_ns_median"),
                        median(&ns[m]).unwrap_or(f64::NAN),
                    );
                }
                (Some(e), _) => res.error(&format!("{base}.{mode}_ns"), e.clone()),
                (None, None) => res.error(&format!("{base}.{mode}_ns"), "no repetition ran"),
            }
        }
        // Ratios of the medians: one repetition disturbed by the rest of the
        // machine must not decide a 2% question. The means are beside them.
        if let Some(plain) = res.get(&format!("{base}.plain_ns_median")) {
            for mode in ["preload", "gcb_env"] {
                if let Some(v) = res.get(&format!("{base}.{mode}_ns_median")) {
                    res.num(&format!("{base}.{mode}_ratio"), v / plain);
                }
            }
        }
    }
    Ok(())
}

/// One child run: nanoseconds per round trip.
fn once(
    ctx: &Ctx,
    bed: &TestBed,
    mode: &str,
    transport: &str,
    messages: u64,
) -> Result<f64, String> {
    // `env` sets the preload for the program it execs, not for `ip` or itself.
    let mut c = bed.cmd("pub", "env");
    c.arg("-u")
        .arg("LD_PRELOAD")
        .arg("-u")
        .arg("GCB_INAGENT")
        .arg("-u")
        .arg("DPF_INAGENT");
    if mode != "plain" {
        c.arg(format!("LD_PRELOAD={}", ctx.paths.libgcb.display()));
    }
    if mode == "gcb_env" {
        c.arg(format!("GCB_INAGENT={BROKER_IP}"));
    }
    c.arg(&ctx.paths.bench).args([
        "pingpong",
        "--messages",
        &messages.to_string(),
        "--transport",
        transport,
    ]);
    // Generous: 1M round trips take 10-30 s on a slow machine.
    let limit = Duration::from_secs(60 + messages / 10_000);
    let fin = ctx::run_in(bed, c, limit)?;
    let line = fin
        .stdout
        .iter()
        .find(|l| l.starts_with("PINGPONG "))
        .ok_or_else(|| format!("pingpong {mode}: {}", fin.why()))?;
    ctx::field_f64(line, "ns_per_rt").ok_or_else(|| format!("bad line {line:?}"))
}
