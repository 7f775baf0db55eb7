//! What the hole-punching tests (`punch_tcp`, `punch_udp`) share: the C
//! test programs under the shim on a bed host, and the broker's counters.

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
