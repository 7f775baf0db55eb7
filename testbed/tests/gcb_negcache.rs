//! The shared negative cache end to end: a GCB client that finds no broker at a
//! plain public server spares the next client processes of the same host the
//! probe (shim/src/gcb/negcache/shared.rs), while a client in another network
//! namespace (another host of the test bed, which shares `/dev/shm`) still asks.
//!
//! Which clients probed is read from the shim's debug log; every client's bytes
//! are checked by the echo client itself (`SUMMARY ok=runs`).
//!
//! Needs root, `cargo build --release` and `make -C c-tests`.

use std::process::Command;
use std::time::Duration;
use testbed::{release_bin, require_root, workspace_root, Proc, TestBed};

const BROKER: &str = "203.0.113.10";
const PLAIN_SERVER: &str = "203.0.113.20:7800";
const TIMEOUT: Duration = Duration::from_secs(60);
const PROBE_LINE: &str = "203.0.113.20 has no broker";

fn ctest(name: &str) -> std::path::PathBuf {
    let p = workspace_root().join("c-tests/build").join(name);
    assert!(p.exists(), "{} is missing: run `make -C c-tests`", p.display());
    p
}

/// One GCB echo client on `host` to the plain server; returns its stderr after
/// checking that every byte came back.
fn gcb_client(bed: &TestBed, host: &str, server: &Proc) -> String {
    let mut c: Command = bed.cmd(host, workspace_root().join("scripts/gcb-run"));
    c.args(["--broker", BROKER, "--log", "debug", "--lib"]).arg(release_bin("libgcb.so")).arg("--");
    c.arg(ctest("echo-client"));
    c.args(["--proto", "tcp", "--connect", PLAIN_SERVER, "--bytes", "4096", "--rounds", "2"]);
    for v in ["GCB_ROUTE", "GCB_REALM", "DPF_INAGENT", "GCB_LOG_FILE", "LD_PRELOAD"] {
        c.env_remove(v);
    }
    let out = testbed::run_with_timeout(c, TIMEOUT).expect("echo-client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "client on {host}: {stdout}\n{stderr}\nserver:\n{}", server.stderr_text());
    let summary = stdout.lines().find(|l| l.starts_with("SUMMARY ")).expect("SUMMARY line");
    let field = |k: &str| summary.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).map(str::to_string);
    assert_eq!(field("ok"), field("runs"), "{summary}");
    assert_eq!(field("ok").as_deref(), Some("1"), "{summary}");
    stderr
}

#[test]
fn one_probe_per_host_and_minute_for_a_plain_server() {
    require_root();
    let bed = TestBed::up().expect("test bed");
    let broker = bed
        .spawn("broker", &[release_bin("gcb-broker").to_str().unwrap(), "--listen", "203.0.113.10:65432", "--public-ip", BROKER])
        .expect("gcb-broker");
    let server = bed
        .spawn("pub", &[ctest("echo-server").to_str().unwrap(), "--proto", "tcp", "--port", "7800"])
        .expect("echo-server");
    server.wait_line("LISTEN tcp ", Duration::from_secs(15)).expect("server listening");

    let first = gcb_client(&bed, "a1", &server);
    assert!(first.contains(PROBE_LINE), "the first client on a1 must ask 203.0.113.20's command port:\n{first}");
    for n in 2..=4 {
        let later = gcb_client(&bed, "a1", &server);
        assert!(
            !later.contains(PROBE_LINE) && !later.contains("Connect for 203.0.113.20"),
            "client {n} on a1 asked again although another process on a1 already learned there is no broker:\n{later}"
        );
    }
    let other_host = gcb_client(&bed, "a2", &server);
    assert!(
        other_host.contains(PROBE_LINE),
        "a client on a2 (another network namespace) must not use a1's answers:\n{other_host}"
    );
    drop(server);
    drop(broker);
    bed.down().expect("tear down");
}
