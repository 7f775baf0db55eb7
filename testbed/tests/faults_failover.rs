//! Several brokers in `GCB_INAGENT` (issue 8): two `gcb-broker`s on the broker
//! host (203.0.113.10 and .11), Python servers under the shim in realm A.
//!
//! * Spread: each process registers with the broker its host name and pid pick
//!   (the shim's FNV-1a of both, mod 2); servers are started until both brokers
//!   have some, and every one must be on the broker its pid predicts.
//! * Failover: the first broker is killed with SIGKILL; each of its servers must
//!   log one move, report a new proxy address on the second broker through
//!   `getsockname`, and be reachable there by a plain client (relayed from the
//!   proxy socket) and a GCB client in realm B (relay), bytes verified. The
//!   servers of the second broker keep their addresses.
//!
//! Needs root, `cargo build --release` and `make -C c-tests`.

#[path = "faults_support/mod.rs"]
mod support;

use std::time::Duration;
use support::{wait_for, Faults, BROKER, BROKER2};

const HEARTBEAT_S: u64 = 1;
const BOTH: &str = "203.0.113.10,203.0.113.11";

/// The shim's choice for a process (`shim/src/gcb/brokers.rs`, `spread_seed`).
fn predicted(host: &[u8], pid: u32) -> &'static str {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.iter().chain(pid.to_le_bytes().iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    [BROKER, BROKER2][(h % 2) as usize]
}

fn ip_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(ip, _)| ip)
}

#[test]
fn clients_spread_over_brokers_and_fail_over() {
    let f = Faults::up(HEARTBEAT_S);
    f.second_address();
    let mut f = f;
    f.start_broker(BROKER2, &[]);
    // Same UTS namespace as the test bed's hosts: the host name the shim hashes.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let host = host.trim().as_bytes().to_vec();

    let mut servers = Vec::new();
    for i in 0..12u16 {
        let (p, name) = f.peer_server("a1", BOTH, 7100 + i);
        servers.push((p, name));
        let on = |b: &str| servers.iter().filter(|(_, n)| ip_of(n) == b).count();
        if on(BROKER) >= 1 && on(BROKER2) >= 1 && servers.len() >= 3 {
            break;
        }
    }
    for (p, name) in &servers {
        let regs = f.registrations_with_pid(ip_of(name));
        let pid = regs.iter().find(|(proxy, _)| proxy == name).map(|(_, pid)| *pid);
        let pid = pid.unwrap_or_else(|| panic!("{name} is not in its broker's registrations {regs:?}\n{}", p.stderr_text()));
        assert_eq!(ip_of(name), predicted(&host, pid), "pid {pid} registered as {name}");
    }
    let on_first: Vec<usize> = (0..servers.len()).filter(|&i| ip_of(&servers[i].1) == BROKER).collect();
    assert!(!on_first.is_empty() && on_first.len() < servers.len(), "12 processes all on one broker: {:?}", servers.iter().map(|s| &s.1).collect::<Vec<_>>());

    let f = f;
    let logs = || f.broker_logs();
    // Every server works before the failure.
    for (_, name) in &servers {
        f.echo("pub", None, name, &[], &logs);
    }

    f.kill_broker(BROKER);
    // Three silent intervals, then the next heartbeat tick moves the listener;
    // the slack is for a loaded machine.
    let bound = Duration::from_secs(4 * HEARTBEAT_S + 10);
    for &i in &on_first {
        let (p, old) = &servers[i];
        let new = p.wait_line("NAME ", bound).unwrap_or_else(|e| panic!("{old}: no new name: {e}\n{}", p.stderr_text()));
        assert_eq!(ip_of(&new), BROKER2, "{old} moved to {new}");
        let moves = p.stderr_text().matches("moves to broker 203.0.113.11:65432").count();
        assert_eq!(moves, 1, "one log line per move:\n{}", p.stderr_text());
        wait_for(Duration::from_secs(10), || format!("{new} registered on {BROKER2}"), || {
            f.registrations(BROKER2).contains(&new).then_some(())
        });
        f.echo("pub", None, &new, &[], &logs); // relayed from the new proxy socket
        f.echo("b1", Some(BOTH), &new, &["--nonblock"], &logs); // relay between realms
        f.echo("pub", Some(BOTH), &new, &[], &logs); // reversal
        servers[i].1 = new;
    }
    for (i, (p, name)) in servers.iter().enumerate() {
        if !on_first.contains(&i) {
            let names = p.stdout_seen().iter().filter(|l| l.starts_with("NAME ")).count();
            assert_eq!(names, 1, "{name} must keep its address: {:?}", p.stdout_seen());
            f.echo("b1", Some(BOTH), name, &[], &logs);
        }
    }
    drop(servers);
    f.bed.down().expect("tear down");
}
