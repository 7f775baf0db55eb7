//! What the tests of children, received listeners and real programs that
//! spawn (issue 12) share: the Python programs next to this file, echo runs
//! with the C `echo-client` (every byte checked), and the check that an
//! advertised address is still served and still listed by the broker.
//!
//! Every wait is bounded; a failure prints the server's and the broker's
//! stderr.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use testbed::real::{Mode, RealBed};
use testbed::{workspace_root, Proc};

pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

pub fn ctest(name: &str) -> PathBuf {
    let p = workspace_root().join("c-tests/build").join(name);
    assert!(p.exists(), "{} is missing: run `make -C c-tests` (scripts/test does)", p.display());
    p
}

/// A Python program of this directory.
pub fn script(name: &str) -> String {
    workspace_root().join("testbed/tests/spawn_support").join(name).to_str().unwrap().to_string()
}

/// Starts `args` on `host`, under the shim when `shim`, with a pipe to its stdin.
pub fn spawn_with_stdin(r: &RealBed, host: &str, shim: bool, args: &[&str]) -> (Proc, std::process::ChildStdin) {
    let mut c = r.cmd(host, args[0], shim);
    c.args(&args[1..]).stdin(Stdio::piped());
    let mut p = r.bed.spawn_cmd(c).unwrap_or_else(|e| panic!("{e}"));
    let stdin = p.take_stdin().expect("piped stdin");
    (p, stdin)
}

/// Writes one line to a program's stdin.
pub fn tell(stdin: &mut std::process::ChildStdin, line: &str) {
    use std::io::Write;
    stdin.write_all(format!("{line}\n").as_bytes()).and_then(|_| stdin.flush()).expect("write to the server's stdin");
}

/// Everything useful when a check fails.
pub fn context(r: &RealBed, server: &Proc) -> String {
    format!(
        "server stdout:\n{}\nserver stderr:\n{}\n{:?} daemon stderr:\n{}",
        server.stdout_seen().join("\n"),
        server.stderr_text(),
        r.mode,
        r.daemon.stderr_text()
    )
}

/// Waits for a stdout line starting with `prefix`, with the context on failure.
pub fn line(r: &RealBed, server: &Proc, prefix: &str, within: Duration) -> String {
    server.wait_line(prefix, within).unwrap_or_else(|e| panic!("{e}\n{}", context(r, server)))
}

/// One `echo-client` run from `host` (under the shim when `shim`) to `dest`
/// over `proto`; asserts that every byte came back (the client checks them,
/// and for UDP their order and source address) and returns the mean connect
/// time in µs.
pub fn echo(r: &RealBed, host: &str, shim: bool, proto: &str, dest: &str, extra: &[&str], server: &Proc) -> f64 {
    let cli = ctest("echo-client");
    let bytes = if proto == "udp" { "1200" } else { "20000" };
    let mut args = vec![cli.to_str().unwrap(), "--proto", proto, "--connect", dest, "--bytes", bytes, "--rounds", "3"];
    args.extend_from_slice(extra);
    let mut c = r.cmd(host, args[0], shim);
    c.args(&args[1..]);
    let out = testbed::run_with_timeout(c, CLIENT_TIMEOUT).unwrap_or_else(|e| panic!("{e}\n{}", context(r, server)));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "echo-client {proto} {extra:?} to {dest} from {host} (shim: {shim}) failed ({}):\n{stdout}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        context(r, server)
    );
    let summary = stdout.lines().find(|l| l.starts_with("SUMMARY ")).expect("SUMMARY line");
    let field = |k: &str| summary.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).map(str::to_string);
    assert_eq!(field("ok"), field("runs"), "{proto} to {dest} from {host}: {summary}");
    if proto == "udp" {
        assert_eq!(field("lost").as_deref(), Some("0"), "{summary}");
    }
    field("conn_us_mean").and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// The clients of these tests in GCB mode: a plain one on pub (the broker
/// relays from the proxy socket) and a GCB one in realm B (a relay between
/// two realms).
pub const CLIENTS: [(&str, bool); 2] = [("pub", false), ("b1", true)];

/// The clients for `r`'s mode: [`CLIENTS`], or in DPF mode a plain client on
/// pub, through GA's forward.
pub fn clients(r: &RealBed) -> &'static [(&'static str, bool)] {
    match r.mode {
        Mode::Gcb => &CLIENTS,
        Mode::Dpf | Mode::Pcp => &[("pub", false)],
    }
}

/// Asserts that `addrs` (`(proto, advertised, local)`) are all served from
/// the mode's clients and listed by the broker (or dpfd) with those public
/// and local addresses; prints what it measured under `label`.
pub fn still_served(r: &RealBed, server: &Proc, label: &str, addrs: &[(&str, &str, &str)]) {
    let regs = r.registrations();
    for &(proto, public, local) in addrs {
        let listed = regs.iter().any(|(p, proxy, l)| p == proto && proxy == public && l == local);
        assert!(listed, "{label}: {:?} does not list {proto} {public} for {local}: {regs:?}\n{}", r.mode, context(r, server));
    }
    let mut report = Vec::new();
    for &(proto, public, _) in addrs {
        for &(host, shim) in clients(r) {
            let start = Instant::now();
            let conn_us = echo(r, host, shim, proto, public, &[], server);
            report.push(format!("{proto} from {host}: connect {conn_us:.0} µs, run {} ms", start.elapsed().as_millis()));
        }
    }
    eprintln!("{label}: served and listed; {}", report.join("; "));
}

/// Waits (bounded) until the broker lists no registration for `public`.
pub fn wait_unlisted(r: &RealBed, server: &Proc, public: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let regs = r.registrations();
        if !regs.iter().any(|(_, proxy, _)| proxy == public) {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{public} still listed after {within:?}: {regs:?}\n{}", context(r, server));
        std::thread::sleep(Duration::from_millis(100));
    }
}
