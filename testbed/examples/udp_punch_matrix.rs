//! Measures UDP hole punching with the real shims and broker on each pair of
//! gateway kinds (docs/hole-punching.md, "UDP"): the paper's C echo server
//! under the shim on a1 (behind GA, the listener), and CLIENTS connected echo
//! clients in a row on b1 (behind GB, the connector), each a new process, so
//! each `connect` asks the broker and punches anew. Per client: whether its
//! path was punched, and how long its `connect` waited for the punch (the
//! shim's log). A measuring tool, not a test; every echo is still checked by
//! the client itself (a run that lost or mismatched a datagram says so).
//!
//! ```
//! UDP_MATRIX_PAIRS="preserve/preserve,preserve/drop" UDP_MATRIX_HOP=1 \
//!     cargo run --release -p testbed --example udp_punch_matrix
//! ```
//!
//! `UDP_MATRIX_HOP=1` makes the beds with `--wan-hop`; `UDP_MATRIX_CLIENTS`
//! (default 5); `UDP_MATRIX_TTL` sets `GCB_PUNCH_TTL` on both sides.

use std::time::Duration;

#[path = "../tests/punch_support/mod.rs"]
mod punch_support;

use punch_support::{counter, echo_server, shimmed, MatrixPair};
use testbed::real::{Mode, RealBed};
use testbed::run_with_timeout;

fn main() {
    let (pairs, clients) = punch_support::matrix_from_env("UDP_MATRIX", 5);
    let ttl = std::env::var("UDP_MATRIX_TTL").ok();
    let env: Vec<(&str, &str)> = ttl.as_deref().map(|t| vec![("GCB_PUNCH_TTL", t)]).unwrap_or_default();
    println!("| GA (listener) / GB (connector) | punched | connect waits (s), in order |");
    println!("| --- | --- | --- |");
    for MatrixPair { label, nat } in pairs {
        let r = RealBed::up_with_nat(Mode::Gcb, 2, &[], nat);
        let (server, listen) = echo_server(&r, "udp", 7480, "poll", &env);
        let (mut punched, mut waits) = (0, Vec::new());
        for _ in 0..clients {
            let mut c = shimmed(&r, "b1", "echo-client", &env);
            c.args(["--proto", "udp", "--connect", &listen, "--bytes", "200", "--rounds", "200", "--udp-connected"]);
            let out = run_with_timeout(c, Duration::from_secs(60)).expect("echo-client");
            let (stdout, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            let ok = out.status.success() && !stdout.contains("MISMATCH") && stdout.contains(" lost=0 ");
            let direct = log.contains(&format!("udp to {listen}: via punched"));
            punched += usize::from(direct);
            // "udp connect to DEST: punched in N us", or the whole wait on a miss.
            let wait = log
                .lines()
                .find_map(|l| l.split(": punched in ").nth(1)?.split_whitespace().next()?.parse::<f64>().ok())
                .map(|us| format!("{:.2}", us / 1e6))
                .unwrap_or_else(|| if log.contains("the punch did not answer") { "miss".into() } else { "-".into() });
            waits.push(format!("{wait}{}", if ok { "" } else { " (echo failed)" }));
            // The listener's punch is over before the next client asks, as in a row of clients.
            std::thread::sleep(Duration::from_secs(2));
        }
        let attempts = counter(&r, "udp_punch_attempts");
        println!("| {label} | {punched}/{clients} ({attempts} attempts) | {} |", waits.join(", "));
        drop(server);
        r.down();
    }
}
