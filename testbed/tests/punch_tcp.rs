//! TCP hole punching end to end in the NAT test bed (issue 13,
//! docs/hole-punching.md): the paper's C echo server under the shim on a1
//! (realm A, behind GA) and the echo client under the shim on b1 (realm B,
//! behind GB), through `gcb-broker` on the broker host. The bed's gateways are
//! port-preserving masquerades, so the two sides punch through them:
//!
//! * both shims offer punching: every byte echoes back, the client's shim
//!   logs `via punched`, the server sees the connection come from GB, and
//!   `gcb-broker query --json` counts one attempt and one success;
//! * the client with `GCB_PUNCH=0` (a shim that does not offer it): the
//!   connection is relayed as before, and the broker counts why it did not
//!   punch (`punch_skipped_not_capable`).
//!
//! Needs root, `cargo build --release` (libgcb.so, gcb-broker) and
//! `make -C c-tests`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use testbed::real::{built, Mode, RealBed, BROKER};
use testbed::{run_with_timeout, workspace_root, Proc};

/// GB, realm B's public address: what the server sees as its peer.
const GB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const STARTUP: Duration = Duration::from_secs(15);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

fn ctest(name: &str) -> PathBuf {
    let p = workspace_root().join("c-tests/build").join(name);
    assert!(p.exists(), "{} is missing: run `make -C c-tests` (scripts/test does)", p.display());
    p
}

/// `program` on `host` under the shim, logging at debug, with `env` set.
fn shimmed(r: &RealBed, host: &str, program: &str, env: &[(&str, &str)]) -> Command {
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
fn counter(r: &RealBed, name: &str) -> u64 {
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

/// A server on a1 under the shim, registered; its proxy address.
fn server(r: &RealBed, port: u16) -> (Proc, String) {
    let p = port.to_string();
    let mut c = shimmed(r, "a1", "echo-server", &[]);
    c.args(["--proto", "tcp", "--port", &p, "--mode", "epoll"]);
    let server = r.bed.spawn_cmd(c).expect("echo-server");
    let listen = r.registered(&server, "tcp", &format!("{}:{port}", r.bed.ip("a1")));
    (server, listen)
}

/// The echo client on b1 to `dest`; asserts every byte came back and the
/// server accepted from realm B; returns the client's stderr (the shim's log).
fn client(r: &RealBed, server: &Proc, dest: &str, extra: &[&str], env: &[(&str, &str)]) -> String {
    let mut c = shimmed(r, "b1", "echo-client", env);
    c.args(["--proto", "tcp", "--connect", dest, "--bytes", "100000", "--rounds", "3"]).args(extra);
    let out = run_with_timeout(c, CLIENT_TIMEOUT).unwrap_or_else(|e| panic!("client: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let context = || {
        format!(
            "stdout:\n{stdout}\nclient stderr:\n{stderr}\nserver stderr:\n{}\nbroker stderr:\n{}",
            server.stderr_text(),
            r.daemon.stderr_text()
        )
    };
    assert!(out.status.success(), "echo-client {extra:?} failed ({}):\n{}", out.status, context());
    let summary = stdout.lines().find(|l| l.starts_with("SUMMARY ")).unwrap_or_else(|| panic!("no SUMMARY:\n{}", context()));
    let field = |k: &str| summary.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).map(str::to_string);
    assert_eq!(field("ok"), field("runs"), "{summary}\n{}", context());
    assert!(field("ok").is_some_and(|n| n != "0"), "{summary}");
    // The client reports the proxy address as its peer, whatever the path.
    for peer in stdout.lines().filter_map(|l| l.split_once(" PEER ").map(|(_, p)| p)) {
        assert_eq!(peer, dest, "the client's getpeername\n{}", context());
    }
    let rest = server.wait_line("ACCEPT PEER ", Duration::from_secs(5)).expect("ACCEPT PEER");
    let ip: Ipv4Addr = rest.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok()).expect("peer ip");
    assert_eq!(ip, GB, "the server's peer is realm B's mapping\n{}", context());
    stderr.into_owned()
}

#[test]
fn realm_b_punches_through_to_realm_a_and_every_byte_echoes() {
    let r = RealBed::up_with(Mode::Gcb, 2, &["--log", "debug"]);
    let (server, listen) = server(&r, 7461);
    let log = client(&r, &server, &listen, &[], &[]);
    let conntrack = |gw: &str| {
        let out = r.bed.run(gw, &["conntrack", "-L", "-p", "tcp"], STARTUP).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        format!("--- {gw} conntrack:\n{}", out.unwrap_or_else(|e| e))
    };
    assert!(
        log.contains(&format!("connect tcp {listen} via punched")),
        "the client's shim did not log `via punched`:\n{log}\nserver:\n{}\nbroker:\n{}\n{}\n{}",
        server.stderr_text(),
        r.daemon.stderr_text(),
        conntrack("ga"),
        conntrack("gb")
    );
    assert_eq!(counter(&r, "punch_attempts"), 1, "{}", r.daemon.stderr_text());
    assert_eq!(counter(&r, "punch_succeeded"), 1, "{}", r.daemon.stderr_text());
    assert_eq!(counter(&r, "relays_opened"), 0, "nothing went through the relay");
    drop(server);
    r.down();
}

#[test]
fn a_client_that_does_not_offer_punching_is_relayed() {
    let r = RealBed::up_with(Mode::Gcb, 2, &[]);
    let (server, listen) = server(&r, 7462);
    let log = client(&r, &server, &listen, &["--nonblock"], &[("GCB_PUNCH", "0")]);
    assert!(!log.contains("via punched"), "{log}");
    assert_eq!(counter(&r, "punch_attempts"), 0);
    assert_eq!(counter(&r, "punch_skipped_not_capable"), 1);
    assert_eq!(counter(&r, "decided_relay"), 1);
    assert_eq!(counter(&r, "relays_opened"), 1);
    drop(server);
    r.down();
}
