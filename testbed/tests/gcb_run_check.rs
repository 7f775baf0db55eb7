//! `scripts/gcb-run --check` in the NAT test bed: with `gcb-broker` running on the
//! broker host, a check on a1 (behind GA) exits 0 and names a proxy address on
//! the broker; with the broker stopped it exits 1 and says it did not answer.
//!
//! Needs root and `cargo build --release` (libgcb.so, gcb-broker).

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};
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

fn start_broker(bed: &TestBed) -> Proc {
    let broker = bed
        .spawn(
            "broker",
            &[
                built("gcb-broker").to_str().unwrap(),
                "--listen",
                "203.0.113.10:65432",
                "--public-ip",
                BROKER,
                "--port-range",
                "20000-20999",
            ],
        )
        .expect("gcb-broker");
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

fn check(bed: &TestBed, host: &str) -> (Output, String) {
    let mut c = bed.cmd(host, workspace_root().join("scripts/gcb-run"));
    for v in SHIM_VARS {
        c.env_remove(v);
    }
    // The check resolves python3 itself; make sure the test's interpreter is found.
    if let Some(dir) = testbed::python3().parent().filter(|d| d.is_absolute()) {
        let path = std::env::var("PATH").unwrap_or_default();
        c.env("PATH", format!("{}:{path}", dir.display()));
    }
    c.args(["--broker", BROKER, "--lib"]).arg(built("libgcb.so")).arg("--check");
    let out = testbed::run_with_timeout(c, CHECK_TIMEOUT).expect("gcb-run --check");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("gcb-run --check on {host}: {:?}\n{text}", out.status);
    (out, text)
}

#[test]
fn check_reports_broker_and_proxy_address() {
    require_root();
    let bed = TestBed::up().expect("test bed");
    let broker = start_broker(&bed);

    let (out, text) = check(&bed, "a1");
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

    broker.kill();
    drop(broker);
    let started = Instant::now();
    let (out, text) = check(&bed, "a1");
    assert_eq!(out.status.code(), Some(1), "gcb-run --check with the broker stopped:\n{text}");
    assert!(
        text.lines().any(|l| l.starts_with("gcb-run: broker 203.0.113.10:65432 did not answer (")),
        "no 'did not answer' line:\n{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(15), "the failing check took {:?}", started.elapsed());
    bed.down().expect("test bed down");
}
