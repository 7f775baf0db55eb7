//! The NAT-kind matrix of TCP hole punching (issue 13): for each pair of
//! gateway kinds (GA, GB) a bed of its own, the broker with `--punch-retry-s
//! 0` so that no failure is cached and every connect tries, and N connects
//! from the echo client on b1 to the echo server on a1, both under the shim.
//!
//! Per pair: how many connects were punched (the client's shim names each
//! connect's path), the shim's time to a punched connect and to a relayed
//! one (the fallback: a punch that failed within the budget, or the relay at
//! once when a mapping is unpredictable), and the broker's punch counters,
//! which say why each attempt ended as it did.
//!
//! The quick run covers the six pairs of the plain-socket experiment in
//! docs/nat-punching-notes.md; the full run every ordered pair of the four
//! kinds.

use crate::ctx::{self, Ctx};
use crate::punch::{gcb_server, paths, punch_counters, shimmed, Path};
use crate::results::Results;
use crate::stats::{parse_echo, quantile};
use crate::tables::start_broker_with;
use std::time::Duration;
use testbed::{NatKind, NatKinds, TestBed};

const PORT: u16 = 7720;

/// The pairs docs/nat-punching-notes.md measured with plain sockets.
const NOTES_PAIRS: [(NatKind, NatKind); 6] = [
    (NatKind::Preserve, NatKind::Preserve),
    (NatKind::Preserve, NatKind::Drop),
    (NatKind::Drop, NatKind::Drop),
    (NatKind::Preserve, NatKind::InvalidDrop),
    (NatKind::InvalidDrop, NatKind::InvalidDrop),
    (NatKind::Random, NatKind::Preserve),
];

/// The pairs of this run, the notes' six first.
pub fn pairs(quick: bool) -> Vec<(NatKind, NatKind)> {
    let mut v = NOTES_PAIRS.to_vec();
    if !quick {
        for a in NatKind::ALL {
            for b in NatKind::ALL {
                if !v.contains(&(a, b)) {
                    v.push((a, b));
                }
            }
        }
    }
    v
}

/// The results key of a pair: `GA/GB`.
pub fn key(a: NatKind, b: NatKind) -> String {
    format!("{a}/{b}")
}

pub fn run(ctx: &Ctx, res: &mut Results) -> Result<(), String> {
    let n = ctx.pick(10, 40);
    res.int("meta.punch.matrix_connects", n as i64);
    for (a, b) in pairs(ctx.quick) {
        ctx::check_stop()?;
        let path = format!("punch.matrix.{}", key(a, b));
        eprintln!("bench: punch: matrix GA {a} / GB {b}, {n} connects");
        if let Err(e) = pair(ctx, NatKinds::new(a, b), n, &path, res) {
            ctx::check_stop()?;
            res.error(&path, e);
        }
    }
    Ok(())
}

fn pair(ctx: &Ctx, nat: NatKinds, n: usize, path: &str, res: &mut Results) -> Result<(), String> {
    let bed = TestBed::up_with_nat(nat)?;
    let _broker = start_broker_with(ctx, &bed, &["--punch-retry-s", "0"])?;
    let (_server, dial) = gcb_server(ctx, &bed, PORT)?;
    let (runs, bytes, rounds) = (n.to_string(), crate::tables::TCP_BYTES.to_string(), crate::tables::TCP_ROUNDS.to_string());
    let args = ["--proto", "tcp", "--connect", &dial, "--bytes", &bytes, "--rounds", &rounds, "--runs", &runs, "--timeout-ms", "5000"];
    let cmd = shimmed(ctx, &bed, "b1", &ctx.paths.echo_client, &args, &[]);
    // A fallback waits out the broker's budget (500 ms by default): a second each is ample.
    let fin = ctx::run_in(&bed, cmd, Duration::from_secs(30 + 2 * n as u64))?;
    let ok = parse_echo(&fin.stdout);
    let ways = paths(&fin.stderr, &dial);
    let punched: Vec<f64> = ways.iter().filter_map(|w| if let Path::Punched(us) = w { Some(*us) } else { None }).collect();
    let relayed: Vec<f64> = ways.iter().filter_map(|w| if let Path::Relayed(us) = w { Some(*us) } else { None }).collect();
    res.int(&format!("{path}.connects"), n as i64);
    res.int(&format!("{path}.echoed"), ok.conn_us.len() as i64);
    res.int(&format!("{path}.punched"), punched.len() as i64);
    res.int(&format!("{path}.relayed"), relayed.len() as i64);
    res.num(&format!("{path}.punched_share"), punched.len() as f64 / n as f64);
    if ok.conn_us.len() < n {
        let why = ok.failure.clone().unwrap_or_else(|| fin.why());
        res.text(&format!("{path}.failures"), format!("{} of {n} runs failed: {why}", n - ok.conn_us.len()));
    }
    for (k, q) in [("p50", 0.5), ("p90", 0.9)] {
        if let Some(v) = quantile(&punched, q) {
            res.num(&format!("{path}.punched_us.{k}"), v);
        }
    }
    for (k, q) in [("p50", 0.5), ("max", 1.0)] {
        if let Some(v) = quantile(&relayed, q) {
            res.num(&format!("{path}.fallback_us.{k}"), v);
        }
    }
    match punch_counters(ctx, &bed) {
        Ok(c) => {
            for (k, v) in c {
                res.num(&format!("{path}.broker.{k}"), v);
            }
        }
        Err(e) => res.error(&format!("{path}.broker"), e),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notes_pairs_come_first_and_the_full_run_has_each_pair_once() {
        assert_eq!(pairs(true), NOTES_PAIRS.to_vec());
        let full = pairs(false);
        assert_eq!(full.len(), 16);
        assert_eq!(&full[..6], &NOTES_PAIRS[..]);
        let mut dedup = full.clone();
        dedup.sort_by_key(|(a, b)| (a.as_str(), b.as_str()));
        dedup.dedup();
        assert_eq!(dedup.len(), 16);
        assert_eq!(key(NatKind::InvalidDrop, NatKind::Random), "invalid-drop/random");
    }
}
