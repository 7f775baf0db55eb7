//! `scripts/demo --ci`, the main job, end to end: the Condor-like pool across
//! the NAT test bed, and its loopback fallback without root.
//!
//! The assertions are on what the demo prints: every exchange's row (its path,
//! the bytes verified), the summary, and the broker's and dpfd's own tables. Each
//! path the paper describes must appear on the pair of hosts that forces it, so
//! a regression that sends, say, every connection through the relay fails here
//! even though the bytes still arrive.
//!
//! Needs root, `cargo build --release` (libgcb.so, gcb-broker, dpfd, pool-demo).

use std::process::Command;
use std::time::Duration;

use testbed::{release_bin, require_root, run_with_timeout, target_dir, workspace_root};

/// The demo takes well under a minute; this bounds a wedged run on a loaded machine.
const BOUND: Duration = Duration::from_secs(240);
/// Seven members: six workers each send two ads and one query and talk to five
/// peers over two protocols; the manager calls each worker back over both.
const EXCHANGES: usize = 6 * 3 + 6 * 5 * 2 + 6 * 2;

fn demo(cmd: Command) -> (bool, String) {
    for b in ["libgcb.so", "gcb-broker", "dpfd", "pool-demo"] {
        assert!(release_bin(b).exists(), "{b} is missing: run `cargo build --release --workspace`");
    }
    let out = run_with_timeout(cmd, BOUND).expect("scripts/demo");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn demo_cmd() -> Command {
    let mut c = Command::new(workspace_root().join("scripts/demo"));
    c.arg("--ci").env("CARGO_TARGET_DIR", target_dir()).current_dir(workspace_root());
    c
}

/// The table rows: `from to proto kind path time bytes result...`.
fn rows(text: &str) -> Vec<Vec<&str>> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() >= 8 && matches!(w[2], "tcp" | "udp") && matches!(w[3], "ad" | "query" | "echo"))
        .collect()
}

fn row<'a>(rows: &'a [Vec<&'a str>], from: &str, to: &str, proto: &str) -> &'a [&'a str] {
    rows.iter()
        .find(|w| w[0] == from && w[1] == to && w[2] == proto && w[3] == "echo")
        .unwrap_or_else(|| panic!("no row for {from} -> {to} {proto}"))
}

#[test]
fn the_pool_crosses_the_nat_test_bed_by_every_path() {
    require_root();
    let (ok, text) = demo(demo_cmd());
    assert!(ok, "scripts/demo --ci failed:\n{text}");
    let rows = rows(&text);
    assert_eq!(rows.len(), EXCHANGES, "one row per exchange:\n{text}");
    // Every exchange works, UDP across realms included: no failure is
    // excused, so a build whose UDP brokering regressed fails here.
    assert!(text.contains(&format!("summary: {EXCHANGES} exchanges, {EXCHANGES} ok, 0 failed\n")), "{text}");
    assert!(!text.contains("FAILED"), "{text}");
    for w in &rows {
        assert_eq!(w.get(8), Some(&"ok"), "{w:?}\n{text}");
    }
    assert!(text.contains("pool: every exchange that this build should manage worked"), "{text}");

    // Between realms A and B, TCP is punched or, when the punch falls back
    // (about one in five on the bed's resetting gateways), relayed.
    for (from, to) in [("b1", "a1"), ("a1", "b1")] {
        let w = row(&rows, from, to, "tcp");
        assert!(["punched", "relay"].contains(&w[4]), "{from} -> {to}: {w:?}\n{text}");
        assert_eq!((w[7], w[8]), ("131072", "ok"), "{from} -> {to}: {w:?}\n{text}");
    }
    // Each other path on the pair that forces it, with all 64 KiB verified both ways.
    for (from, to, path) in [
        ("pub", "a1", "reversal"),
        ("pub", "b1", "reversal"),
        ("a1", "a2", "same-realm"),
        ("a1", "pub", "direct"),
        ("pub", "a2dpf", "dpf-forward"),
        ("a1dpf", "a2dpf", "dpf-local"),
        ("a2dpf", "b1", "proxy"),
    ] {
        let w = row(&rows, from, to, "tcp");
        assert_eq!((w[4], w[7], w[8]), (path, "131072", "ok"), "{from} -> {to}: {w:?}\n{text}");
    }
    // UDP on the same pairs, 1000 bytes verified each way: into another realm
    // (relay), into a realm from the public host (reversal), within a realm,
    // to the public host, through DPF.
    for (from, to) in [("b1", "a1"), ("a1", "b1"), ("pub", "a1"), ("a1", "a2"), ("b1", "pub"), ("pub", "a2dpf")] {
        let w = row(&rows, from, to, "udp");
        assert_eq!((w[7], w[8]), ("2000", "ok"), "{from} -> {to} udp: {w:?}\n{text}");
    }
    // The daemons' own views: five TCP listeners registered, and a TCP forward
    // on GA for each DPF worker (client sockets may come and go beside them).
    let regs = text.lines().find_map(|l| l.trim().strip_prefix("registrations: ")).expect("gcb-broker query output");
    assert!(regs.parse::<usize>().unwrap() >= 5, "{text}");
    for local in ["192.0.2.10:", "192.0.2.11:"] {
        let forwarded = text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).any(|w| {
            w.len() >= 3 && w[0] == "tcp" && w[1].starts_with("203.0.113.1:") && w[2].starts_with(local)
        });
        assert!(forwarded, "no dpfd forward to {local} in its status:\n{text}");
    }
    assert!(text.contains("demo: tearing down"), "{text}");
}

/// A copy of what the demo needs without root, in a directory the unprivileged
/// user can read wherever the checkout lives (a home directory may be closed).
fn unprivileged_copy() -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("gcb-demo-nobody-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (from, to) in [
        (workspace_root().join("scripts/demo"), "scripts/demo"),
        (workspace_root().join("scripts/gcb-run"), "scripts/gcb-run"),
        (release_bin("libgcb.so"), "target/release/libgcb.so"),
        (release_bin("gcb-broker"), "target/release/gcb-broker"),
        (release_bin("pool-demo"), "target/release/pool-demo"),
        (release_bin("dpfd"), "target/release/dpfd"),
    ] {
        let to = dir.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
    for d in [dir.clone(), dir.join("scripts"), dir.join("target"), dir.join("target/release")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

#[test]
fn without_root_the_pool_runs_on_loopback() {
    require_root(); // to drop to an unprivileged user for the run
    let dir = unprivileged_copy();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(dir.join("scripts/demo")).arg("--ci");
    cmd.env("CARGO_TARGET_DIR", dir.join("target")).env("TMPDIR", "/tmp").current_dir(&dir);
    let (ok, text) = demo(cmd);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "scripts/demo --ci as nobody failed:\n{text}");
    assert!(text.starts_with("demo: not root, so no NAT test bed"), "{text}");
    let rows = rows(&text);
    assert_eq!(rows.len(), 3 * 3 + 3 * 2 * 2 + 3 * 2, "{text}");
    for w in &rows {
        // Loopback is never brokered: members reach each other at the proxy
        // addresses their TCP and UDP sockets registered, which the broker relays.
        assert_eq!((w[4], *w.last().unwrap()), ("proxy", "ok"), "{w:?}\n{text}");
    }
    // The manager and three workers, each with a TCP and a UDP socket.
    assert!(text.contains("registrations: 8"), "{text}");
}
