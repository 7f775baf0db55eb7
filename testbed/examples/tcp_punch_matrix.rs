//! Measures TCP hole punching with the real shims and broker on each pair of
//! gateway kinds, on the plain bed or across the `--wan-hop` router
//! (docs/hole-punching.md, "Across a router"): the paper's C
//! echo server under the shim on a1 (behind GA, the listener), and CLIENTS
//! echo clients in a row on b1 (behind GB, the connector), each a new
//! process; the broker runs with `--punch-retry-s 0`, so no failure is
//! cached and every connect punches anew. Per pair: how many were punched,
//! how many of those at the connector's first attempt, the `connect` times
//! (the shim's log line), and the broker's counters. A measuring tool, not a
//! test; each client still checks every byte of its echo.
//!
//! ```
//! TCP_MATRIX_PAIRS="preserve/preserve,preserve/drop" TCP_MATRIX_HOP=1 \
//!     cargo run --release -p testbed --example tcp_punch_matrix
//! ```
//!
//! `TCP_MATRIX_HOP=1` makes the beds with `--wan-hop`; `TCP_MATRIX_CLIENTS`
//! (default 10).

use std::time::Duration;

#[path = "../tests/punch_support/mod.rs"]
mod punch_support;

use punch_support::{counter, echo_server, shimmed, MatrixPair};
use testbed::real::{Mode, RealBed};
use testbed::run_with_timeout;

/// The `N` of the first line of `log` that has `before` N `after`.
fn number_in(log: &str, before: &str, after: &str) -> Option<u64> {
    log.lines().find_map(|l| l.split(before).nth(1)?.split(after).next()?.trim().parse().ok())
}

fn main() {
    let (pairs, clients) = punch_support::matrix_from_env("TCP_MATRIX", 10);
    let env: [(&str, &str); 0] = [];
    println!("| GA (listener) / GB (connector) | punched | at the first attempt | punched connect p50 (us) | relayed connect (ms) | broker: attempts, succeeded, fallbacks |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for MatrixPair { label, nat } in pairs {
        let r = RealBed::up_with_nat(Mode::Gcb, 2, &["--punch-retry-s", "0"], nat);
        let (server, listen) = echo_server(&r, "tcp", 7490, "epoll", &env);
        let (mut punched_us, mut relayed_ms, mut first, mut failed) = (Vec::new(), Vec::new(), 0, 0);
        for _ in 0..clients {
            let mut c = shimmed(&r, "b1", "echo-client", &env);
            c.args(["--proto", "tcp", "--connect", &listen, "--bytes", "10000", "--rounds", "2"]);
            let out = run_with_timeout(c, Duration::from_secs(60)).expect("echo-client");
            let (stdout, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            if !out.status.success() || !stdout.contains(" ok=1 ") {
                failed += 1;
            }
            if let Some(us) = number_in(&log, &format!("connect tcp {listen} via punched in "), " us") {
                punched_us.push(us);
                first += usize::from(number_in(&log, "reported Punched after ", " attempts") == Some(1));
            } else if let Some(us) = log
                .lines()
                .find(|l| l.contains(&format!("connect tcp {listen} via relay")))
                .and_then(|l| number_in(l, " in ", " us"))
            {
                relayed_ms.push(format!("{:.0}", us as f64 / 1e3));
            }
        }
        punched_us.sort_unstable();
        let p50 = punched_us.get(punched_us.len() / 2).map_or("-".into(), |v| v.to_string());
        let fallbacks = r.punch_fallbacks();
        let broker = format!("{}, {}, {fallbacks}", counter(&r, "punch_attempts"), counter(&r, "punch_succeeded"));
        let failed = if failed > 0 { format!(" ({failed} echoes failed)") } else { String::new() };
        println!(
            "| {label} | {}/{clients}{failed} | {first} | {p50} | {} | {broker} |",
            punched_us.len(),
            if relayed_ms.is_empty() { "-".into() } else { relayed_ms.join(", ") }
        );
        drop(server);
        r.down();
    }
}
