//! What the hole-punching tests (`punch_tcp`, `punch_udp`) share: the C
//! test programs under the shim on a bed host, and the broker's counters.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use testbed::real::{built, RealBed, BROKER};
use testbed::workspace_root;

pub const STARTUP: Duration = Duration::from_secs(15);

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
    for v in ["GCB_INAGENT", "GCB_ROUTE", "GCB_REALM", "GCB_LOG_FILE", "GCB_PUNCH", "LD_PRELOAD"] {
        c.env_remove(v);
    }
    c.envs(env.iter().copied());
    c
}

/// The broker's counters from `gcb-broker query --json`.
pub fn counter(r: &RealBed, name: &str) -> u64 {
    let bin = built("gcb-broker");
    let target = format!("{BROKER}:65432");
    let out = r.bed.run("broker", &[bin.to_str().unwrap(), "query", &target, "--json"], STARTUP).expect("query");
    assert!(out.status.success(), "query failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let v = testbed::json::parse(&text).unwrap_or_else(|e| panic!("query --json: {e}: {text}"));
    match v.get("counters").and_then(|c| c.get(name)) {
        Some(testbed::json::Value::Num(n)) => *n as u64,
        other => panic!("no counter {name} in the query ({other:?}): {text}"),
    }
}
