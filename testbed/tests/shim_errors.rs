//! The shim's failures reach the program as the errno of the call it made,
//! with one `GCB_LOG` line saying why, never a crash or a hang: in the NAT
//! test bed, a listener on a1 registers and is then killed with SIGKILL, so
//! the broker still holds its registration; a GCB connector in realm B (a
//! relay) and one on the public host (a reversal) each get an error from
//! `connect` within a bounded time and exactly one warning naming the
//! proxy address. With the broker stopped, `listen` still succeeds, with
//! one warning that the listener stays unregistered.
//!
//! Needs root and `cargo build --release` (libgcb.so, gcb-broker).

use std::time::Duration;

use testbed::{python3, release_bin, require_root, wait_for, TestBed};

const BROKER: &str = "203.0.113.10";
/// A connector waits for a reversed connection about 20 s before ETIMEDOUT.
const CONNECT_LIMIT: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(15);

/// Runs `script` under the shim on `host`; its stdout and the shim's log.
fn under_shim(bed: &TestBed, host: &str, script: &str) -> (String, String) {
    let mut c = bed.cmd(host, python3());
    c.env("LD_PRELOAD", release_bin("libgcb.so"))
        .env("GCB_INAGENT", BROKER)
        .env("GCB_LOG", "info")
        .env_remove("GCB_LOG_FILE")
        .args(["-c", script]);
    let out = testbed::run_with_timeout(c, CONNECT_LIMIT).expect("bounded run");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(!stderr.contains("panicked"), "the shim panicked on {host}:\n{stderr}");
    (stdout, stderr)
}

/// Connects to the proxy port and prints the outcome.
fn connect_script(port: u16) -> String {
    format!(
        "
import errno, socket
s = socket.socket()
try:
    s.connect(('{BROKER}', {port}))
    print('CONNECTED')
except OSError as e:
    print('ERRNO', errno.errorcode.get(e.errno, e.errno))
"
    )
}

#[test]
fn a_dead_listener_is_an_errno_and_one_line() {
    require_root();
    let bin = release_bin("gcb-broker");
    assert!(bin.exists(), "{} is missing: run `cargo build --release`", bin.display());
    let bed = TestBed::up().expect("test bed");
    let args = [bin.to_str().unwrap(), "--listen", "203.0.113.10:65432", "--port-range", "20000-20099"];
    let broker = bed.spawn("broker", &args).expect("gcb-broker");
    wait_for(STEP, "broker started", || broker.stderr_text().contains("started:").then_some(()));

    let kill_after_listen = "
import os, socket
s = socket.socket()
s.bind(('0.0.0.0', 7000))
s.listen()
print('LISTEN %s:%d' % s.getsockname(), flush=True)
os.kill(os.getpid(), 9)
";
    let (out, log) = under_shim(&bed, "a1", kill_after_listen);
    let proxy = out.trim().strip_prefix("LISTEN 203.0.113.10:").unwrap_or_else(|| panic!("not registered: {out}\n{log}"));
    let port: u16 = proxy.parse().unwrap();

    for (host, path) in [("b1", "relay"), ("pub", "reversal")] {
        let (out, log) = under_shim(&bed, host, &connect_script(port));
        let errno = out.trim().strip_prefix("ERRNO ").unwrap_or_else(|| panic!("{host}: connect did not fail: {out}\n{log}"));
        assert!(["ECONNREFUSED", "ETIMEDOUT", "ECONNRESET"].contains(&errno), "{host}: {errno}");
        let warnings: Vec<&str> = log.lines().filter(|l| l.starts_with("gcb: warning: ")).collect();
        assert_eq!(warnings.len(), 1, "{host}: one warning, not {warnings:?}\n{log}");
        let want = format!("gcb: warning: connect to 203.0.113.10:{port} by {path} failed: ");
        assert!(warnings[0].starts_with(&want), "{host}: {}\nwant {want}", warnings[0]);
    }

    broker.kill();
    drop(broker);
    let listen = "
import socket
s = socket.socket()
s.bind(('0.0.0.0', 7001))
s.listen()
print('LISTEN %s:%d' % s.getsockname())
";
    let (out, log) = under_shim(&bed, "b1", listen);
    assert_eq!(out.trim(), "LISTEN 0.0.0.0:7001", "{log}");
    let warnings: Vec<&str> = log.lines().filter(|l| l.starts_with("gcb: warning: ")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("stays unregistered"), "{}", warnings[0]);
    bed.down().expect("test bed down");
}
