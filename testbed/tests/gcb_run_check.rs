//! `scripts/gcb-run --check` in the NAT test bed: with `gcb-broker` running on the
//! broker host, a check on a1 (behind GA) exits 0 and names a proxy address on
//! the broker, and a check of that broker and an absent one says so for each and
//! exits 1; with the broker at its registration limit it exits 1 and says the
//! broker answered but refused; with the broker stopped it exits 1 and says it did
//! not answer. With `dpfd` on GA, a check on a1 names a public port of GA, and
//! with dpfd stopped it says dpfd did not answer.
//!
//! Needs root and `cargo build --release` (libgcb.so, gcb-broker, dpfd).

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};
use testbed::daemons::{start_dpfd, DPFD};
use testbed::{release_bin, require_root, workspace_root, Proc, TestBed};

const BROKER: &str = "203.0.113.10";
const STARTUP: Duration = Duration::from_secs(15);
/// The check's own listener is bounded by `timeout 10`; leave room around it.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

const SHIM_VARS: [&str; 8] =
    ["GCB_INAGENT", "GCB_ROUTE", "GCB_REALM", "DPF_INAGENT", "GCB_LOG", "GCB_LOG_FILE", "GCB_HEARTBEAT_S", "LD_PRELOAD"];

fn built(name: &str) -> PathBuf {
    let p = release_bin(name);
    assert!(p.exists(), "{} is missing: run `cargo build --release`", p.display());
    p
}

fn start_broker(bed: &TestBed, extra: &[&str]) -> Proc {
    let bin = built("gcb-broker");
    let mut args =
        vec![bin.to_str().unwrap(), "--listen", "203.0.113.10:65432", "--public-ip", BROKER, "--port-range", "20000-20999"];
    args.extend(extra);
    let broker = bed.spawn("broker", &args).expect("gcb-broker");
    let end = Instant::now() + STARTUP;
    loop {
        let out = bed.run("broker", &["ss", "-Hlun", "sport = :65432"], Duration::from_secs(5)).expect("ss");
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return broker;
        }
        if let Some(st) = broker.try_wait() {
            panic!("gcb-broker exited ({st}): {}", broker.stderr_text());
        }
        assert!(Instant::now() < end, "gcb-broker did not bind its command port: {}", broker.stderr_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `gcb-run --check` on `host` with `mode` (`--broker IP` or `--dpf IP`).
fn check(bed: &TestBed, host: &str, mode: [&str; 2]) -> (Output, String) {
    let mut c = bed.cmd(host, workspace_root().join("scripts/gcb-run"));
    for v in SHIM_VARS {
        c.env_remove(v);
    }
    // The check resolves python3 itself; make sure the test's interpreter is found.
    if let Some(dir) = testbed::python3().parent().filter(|d| d.is_absolute()) {
        let path = std::env::var("PATH").unwrap_or_default();
        c.env("PATH", format!("{}:{path}", dir.display()));
    }
    c.args(mode).arg("--lib").arg(built("libgcb.so")).arg("--check");
    let out = testbed::run_with_timeout(c, CHECK_TIMEOUT).expect("gcb-run --check");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("gcb-run --check on {host}: {:?}\n{text}", out.status);
    (out, text)
}

#[test]
fn check_reports_broker_and_proxy_address() {
    require_root();
    let bed = TestBed::up().expect("test bed");
    let broker = start_broker(&bed, &[]);

    let (out, text) = check(&bed, "a1", ["--broker", BROKER]);
    assert_eq!(out.status.code(), Some(0), "gcb-run --check with the broker up:\n{text}\nbroker stderr:\n{}", broker.stderr_text());
    let line = text
        .lines()
        .find(|l| l.starts_with("gcb-run: broker 203.0.113.10:65432 reachable; a listener here would be reached at "))
        .unwrap_or_else(|| panic!("no 'reachable' line:\n{text}"));
    let addr = line.rsplit(' ').next().unwrap();
    let port: u16 = addr
        .strip_prefix("203.0.113.10:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr} is not a proxy address on the broker: {line}"));
    assert!((20000..=20999).contains(&port), "proxy port {port} outside the broker's range: {line}");

    // Two brokers, one of them absent: a line each, and the check fails.
    let (out, text) = check(&bed, "a1", ["--broker", "203.0.113.10,203.0.113.20"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.lines().any(|l| l.starts_with("gcb-run: broker 203.0.113.10:65432 reachable; ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("gcb-run: broker 203.0.113.20:65432 did not answer (")), "{text}");

    broker.kill();
    drop(broker);
    let started = Instant::now();
    let (out, text) = check(&bed, "a1", ["--broker", BROKER]);
    assert_eq!(out.status.code(), Some(1), "gcb-run --check with the broker stopped:\n{text}");
    assert!(
        text.lines().any(|l| l.starts_with("gcb-run: broker 203.0.113.10:65432 did not answer (")),
        "no 'did not answer' line:\n{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(15), "the failing check took {:?}", started.elapsed());
    bed.down().expect("test bed down");
}

#[test]
fn check_tells_a_refusal_from_silence() {
    require_root();
    let bed = TestBed::up().expect("test bed");
    let broker = start_broker(&bed, &["--max-registrations", "1"]);
    // A listener under the shim on a2 takes the one registration.
    let mut holder = bed.cmd("a2", testbed::python3());
    holder
        .env("LD_PRELOAD", built("libgcb.so"))
        .env("GCB_INAGENT", BROKER)
        .env("GCB_LOG", "info")
        .args(["-c", "import socket,time\ns=socket.socket()\ns.bind(('0.0.0.0',0))\ns.listen()\nprint('LISTEN',flush=True)\ntime.sleep(60)"]);
    let holder = bed.spawn_cmd(holder).expect("holder");
    holder.wait_line("LISTEN", STARTUP).expect("the holder listens");
    let end = Instant::now() + STARTUP;
    while !broker.stderr_text().contains("registered tcp") {
        assert!(Instant::now() < end, "the holder did not register: {}", broker.stderr_text());
        std::thread::sleep(Duration::from_millis(50));
    }

    let (out, text) = check(&bed, "a1", ["--broker", BROKER]);
    assert_eq!(out.status.code(), Some(1), "gcb-run --check at the limit:\n{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("gcb-run: broker 203.0.113.10:65432 reachable but it refused to give a listener here an address ("))
        .unwrap_or_else(|| panic!("no 'refused' line:\n{text}"));
    assert!(line.contains("LimitReached"), "{line}");
    drop(holder);
    drop(broker);
    bed.down().expect("test bed down");
}

#[test]
fn check_reports_dpfd_and_forwarded_address() {
    require_root();
    let bed = TestBed::up().expect("test bed");
    let mirror = std::env::temp_dir().join(format!("gcb-run-check-{}.mirror", bed.prefix()));
    let dpfd = start_dpfd(&bed, &mirror, &[], STARTUP);

    let (out, text) = check(&bed, "a1", ["--dpf", DPFD]);
    assert_eq!(out.status.code(), Some(0), "gcb-run --check with dpfd up:\n{text}\ndpfd stderr:\n{}", dpfd.stderr_text());
    let line = text
        .lines()
        .find(|l| l.starts_with("gcb-run: dpfd 192.0.2.1:65433 reachable; a listener here would be reached at 203.0.113.1:"))
        .unwrap_or_else(|| panic!("no 'reachable' line:\n{text}"));
    let port: u16 = line.rsplit(':').next().unwrap().parse().unwrap_or_else(|_| panic!("no port: {line}"));
    assert!((40000..=40999).contains(&port), "public port {port} outside dpfd's range: {line}");

    dpfd.kill();
    drop(dpfd);
    let (out, text) = check(&bed, "a1", ["--dpf", DPFD]);
    assert_eq!(out.status.code(), Some(1), "gcb-run --check with dpfd stopped:\n{text}");
    assert!(text.lines().any(|l| l.starts_with("gcb-run: dpfd 192.0.2.1:65433 did not answer (")), "{text}");
    bed.down().expect("test bed down");
    let _ = std::fs::remove_file(&mirror);
}
