//! The daemons as the end-to-end tests start them in the test bed: `dpfd`
//! on gateway GA, serving realm A, with its public ports on GA's outside
//! address.

use std::path::Path;
use std::time::Duration;

use crate::{release_bin, wait_for, Proc, TestBed};

/// dpfd's command address on GA's private side.
pub const DPFD: &str = "192.0.2.1";
/// GA's public address, where dpfd's forwards are.
pub const GA_PUBLIC: &str = "203.0.113.1";
/// The public ports dpfd hands out.
pub const DPFD_PORTS: &str = "40000-40999";

/// Starts the built dpfd on GA with `mirror` and `extra` flags, and waits
/// (bounded by `within`) for its `started:` line.
pub fn start_dpfd(bed: &TestBed, mirror: &Path, extra: &[&str], within: Duration) -> Proc {
    let bin = release_bin("dpfd");
    assert!(bin.exists(), "{} is missing: run `cargo build --release`", bin.display());
    let mut args = vec![
        bin.to_str().unwrap(),
        "--listen",
        DPFD,
        "--public-ip",
        GA_PUBLIC,
        "--port-range",
        DPFD_PORTS,
        "--mirror",
        mirror.to_str().unwrap(),
    ];
    args.extend(extra);
    let dpfd = bed.spawn("ga", &args).expect("start dpfd");
    wait_for(within, "dpfd started", || {
        dpfd.stderr_text().contains("started: command port udp").then_some(())
    });
    dpfd
}
