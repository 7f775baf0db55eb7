//! What the hole-punching tests (`punch_tcp`, `punch_udp`, ...) share: the C
//! test programs under the shim on a bed host, a checked TCP echo across the
//! realms, and the broker's counters.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use testbed::real::{built, RealBed, BROKER};
use testbed::{NatKind, NatKinds, Proc};
use testbed::workspace_root;

/// Broker flags for a bed whose every TCP punch must succeed: a budget of
/// seconds instead of the default 200–500 ms, so a side that the loaded
/// 2-core CI machine schedules late still meets its peer. A punch that
/// cannot succeed still falls back and fails such a test.
pub const ROOMY_BUDGET: [&str; 4] = ["--punch-budget-ms", "3000", "--punch-budget-min-ms", "2000"];

pub fn ctest(name: &str) -> PathBuf {
    let p = workspace_root().join("c-tests/build").join(name);
    assert!(p.exists(), "{} is missing: run `make -C c-tests` (scripts/test does)", p.display());
    p
}

/// `program` on `host` under the shim, logging at debug, with `env` set.
pub fn shimmed(r: &RealBed, host: &str, program: &str, env: &[(&str, &str)]) -> Command {
    let mut c = r.bed.cmd(host, workspace_root().join("scripts/gcb-run"));
    c.args(["--broker", BROKER, "--heartbeat", "2", "--log", "debug", "--lib"]).arg(built("libgcb.so"));
    c.arg("--").arg(ctest(program));
    for v in ["GCB_INAGENT", "GCB_ROUTE", "GCB_REALM", "GCB_LOG_FILE", "GCB_PUNCH", "GCB_PUNCH_TTL", "GCB_STANDBY", "LD_PRELOAD"] {
        c.env_remove(v);
    }
    c.envs(env.iter().copied());
    c
}

/// How long one echo client may run.
const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The TCP echo client on b1 under the shim (with `env`) to `dest`, 100000
/// bytes three times per run, plus `extra` flags: asserts that it ended well
/// with every run's bytes echoed whole (the client compares them), that it
/// names `dest` as its peer, and that `server` accepted the connection from
/// realm B's mapping (GB). Returns its stdout (RUN and SUMMARY lines) and
/// its stderr (the shim's log).
pub fn tcp_echo_from_b1(r: &RealBed, server: &Proc, dest: &str, extra: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let mut c = shimmed(r, "b1", "echo-client", env);
    c.args(["--proto", "tcp", "--connect", dest, "--bytes", "100000", "--rounds", "3"]).args(extra);
    let out = testbed::run_with_timeout(c, CLIENT_TIMEOUT).unwrap_or_else(|e| panic!("client: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    let context = || format!("stdout:\n{stdout}\nclient stderr:\n{stderr}\nserver stderr:\n{}\nbroker stderr:\n{}", server.stderr_text(), r.daemon.stderr_text());
    assert!(out.status.success(), "echo-client {extra:?} failed ({}):\n{}", out.status, context());
    let summary = stdout.lines().find(|l| l.starts_with("SUMMARY ")).unwrap_or_else(|| panic!("no SUMMARY:\n{}", context()));
    let field = |k: &str| summary.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).map(str::to_string);
    assert_eq!(field("ok"), field("runs"), "{summary}\n{}", context());
    assert!(field("ok").is_some_and(|n| n != "0"), "{summary}");
    // The client reports the proxy address as its peer, whatever the path.
    for peer in stdout.lines().filter_map(|l| l.split_once(" PEER ").map(|(_, p)| p)) {
        assert_eq!(peer, dest, "the client's getpeername\n{}", context());
    }
    let rest = server.wait_line("ACCEPT PEER ", std::time::Duration::from_secs(5)).expect("ACCEPT PEER");
    let ip = rest.rsplit_once(':').map(|(ip, _)| ip);
    assert_eq!(ip, Some("203.0.113.2"), "the server's peer is realm B's mapping (GB)\n{}", context());
    (stdout, stderr)
}

/// The mean connect time of the client's runs, from its SUMMARY line.
pub fn conn_us_mean(stdout: &str) -> f64 {
    let summary = stdout.lines().find(|l| l.starts_with("SUMMARY ")).expect("SUMMARY");
    summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("conn_us_mean="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no conn_us_mean in {summary}"))
}

/// The C echo server on a1 under the shim (with `env`), serving `proto` on
/// `port` in readiness mode `mode`, and the proxy address it registered.
pub fn echo_server(r: &RealBed, proto: &str, port: u16, mode: &str, env: &[(&str, &str)]) -> (Proc, String) {
    let p = port.to_string();
    let mut c = shimmed(r, "a1", "echo-server", env);
    c.args(["--proto", proto, "--port", &p, "--mode", mode]);
    let server = r.bed.spawn_cmd(c).expect("echo-server");
    let listen = r.registered(&server, proto, &format!("{}:{port}", r.bed.ip("a1")));
    (server, listen)
}

/// The broker's counter `name`.
pub fn counter(r: &RealBed, name: &str) -> u64 {
    r.broker_counter(name)
}

/// One pair of gateway kinds a matrix example measures, and its table label.
pub struct MatrixPair {
    pub label: String,
    pub nat: NatKinds,
}

/// What a matrix example (`testbed/examples/*_punch_matrix.rs`) measures:
/// `{prefix}_PAIRS` (`A/B,...`, the listener's gateway kind first; default
/// the four pairs of preserve and drop), `{prefix}_HOP=1` for beds with
/// `--wan-hop` (labelled "(hop)"), and `{prefix}_CLIENTS` clients per pair
/// (default `clients`).
pub fn matrix_from_env(prefix: &str, clients: usize) -> (Vec<MatrixPair>, usize) {
    let var = |name: &str| std::env::var(format!("{prefix}_{name}")).ok();
    let hop = var("HOP").is_some_and(|v| v == "1");
    let clients = var("CLIENTS").and_then(|v| v.parse().ok()).unwrap_or(clients);
    let pairs = var("PAIRS").unwrap_or_else(|| "preserve/preserve,preserve/drop,drop/preserve,drop/drop".into());
    let pairs = pairs
        .split(',')
        .map(|pair| {
            let (a, b) = pair.split_once('/').expect("pairs are A/B");
            let nat = NatKinds::new(a.parse::<NatKind>().unwrap(), b.parse::<NatKind>().unwrap());
            match hop {
                true => MatrixPair { label: format!("{pair} (hop)"), nat: nat.with_wan_hop() },
                false => MatrixPair { label: pair.to_string(), nat },
            }
        })
        .collect();
    (pairs, clients)
}
