//! The test bed's WAN latency (`scripts/netns up --wan-hop --wan-delay-us N`,
//! `testbed/src/bin/wan-delay.rs`), which `scripts/bench` uses for Table 3
//! with punching at a real WAN's round trip:
//!
//! * every path to or from realm B takes at least 2N µs of round trip, and
//!   paths that do not cross the `wan` router take none of it;
//! * TCP and UDP pass whole (the c-tests echo checks every byte);
//! * tearing the bed down ends the wan-delay process.
//!
//! Needs root, `cargo build --release` (wan-delay) and `make -C c-tests`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use testbed::{require_root, run_with_timeout, wait_for, workspace_root, NatKinds, TestBed};

/// One-way delay: 2 ms, far above the bed's own round trips (tens of µs) and
/// their jitter under load.
const DELAY_US: u32 = 2000;
const PORT: u16 = 7400;

fn ctest(name: &str) -> PathBuf {
    let p = workspace_root().join("c-tests/build").join(name);
    assert!(p.exists(), "{} is missing: run `make -C c-tests` (scripts/test does)", p.display());
    p
}

/// The echo client's per-run connect times (µs), after checking that every
/// run succeeded with every byte (`SUMMARY ... ok=runs`, no loss).
fn echo(bed: &TestBed, host: &str, proto: &str, dest: &str, runs: u32) -> Vec<f64> {
    let runs_s = runs.to_string();
    let mut c = bed.cmd(host, ctest("echo-client"));
    c.args(["--proto", proto, "--connect", dest, "--bytes", "20000", "--rounds", "3", "--runs", &runs_s, "--timeout-ms", "5000"]);
    let out = run_with_timeout(c, Duration::from_secs(60)).unwrap_or_else(|e| panic!("echo-client on {host}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "echo-client {proto} on {host} to {dest} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary = stdout.lines().find(|l| l.starts_with("SUMMARY ")).unwrap_or_else(|| panic!("no SUMMARY:\n{stdout}"));
    assert!(summary.contains(&format!("runs={runs} ok={runs} ")), "{proto} from {host}: {summary}");
    assert!(summary.contains(" lost=0 "), "{proto} from {host}: {summary}");
    let times: Vec<f64> = stdout
        .lines()
        .filter(|l| l.starts_with("RUN "))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("conn_us="))?.parse().ok())
        .collect();
    assert_eq!(times.len(), runs as usize, "a connect time for every run:\n{stdout}");
    times
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

#[test]
fn the_wan_router_delays_realm_b_both_ways_and_passes_every_byte() {
    require_root();
    let bed = TestBed::up_with_nat(NatKinds::default().with_wan_delay_us(DELAY_US)).expect("bed");
    // The delay program runs in the wan namespace.
    let pids = Command::new("ip").args(["netns", "pids", &bed.netns("wan")]).output().expect("ip netns pids");
    let pids: Vec<u32> = String::from_utf8_lossy(&pids.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect();
    assert_eq!(pids.len(), 1, "one process (wan-delay) in the wan namespace: {pids:?}");
    let delay_pid = pids[0];
    let comm = std::fs::read_to_string(format!("/proc/{delay_pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "wan-delay");

    let port = PORT.to_string();
    let mut servers = Vec::new();
    for proto in ["tcp", "udp"] {
        let mut c = bed.cmd("pub", ctest("echo-server"));
        c.args(["--proto", proto, "--port", &port, "--mode", "epoll"]);
        let s = bed.spawn_cmd(c).expect("echo-server");
        s.wait_line(&format!("LISTEN {proto} "), Duration::from_secs(10)).expect("echo-server listens");
        servers.push(s);
    }
    let dest = format!("{}:{PORT}", bed.ip("pub"));
    let rtt_us = 2.0 * DELAY_US as f64;
    // TCP's connect is one round trip; UDP's first echo (the "connect" the
    // client times) is one too.
    for proto in ["tcp", "udp"] {
        let far = echo(&bed, "b1", proto, &dest, 5);
        let near = echo(&bed, "a1", proto, &dest, 5);
        assert!(min(&far) >= rtt_us, "{proto} from b1 crosses wan: every connect at least {rtt_us} µs, got {far:?}");
        assert!(min(&near) < rtt_us / 2.0, "{proto} from a1 does not cross wan: some connect under {} µs, got {near:?}", rtt_us / 2.0);
    }
    drop(servers);
    bed.down().expect("down");
    wait_for(Duration::from_secs(5), "wan-delay to end with its bed", || {
        (!std::path::Path::new(&format!("/proc/{delay_pid}")).exists()).then_some(())
    });
}
