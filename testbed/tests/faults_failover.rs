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
//! * A UDP socket connected through a broker channel moves with its
//!   registration and gets a channel on the new broker once its client looks
//!   the server up again: echoes verified, same fd and `getpeername`.
//!
//! Needs root, `cargo build --release` and `make -C c-tests`.

#[path = "faults_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::{udp, wait_for, Faults, BROKER, BROKER2};

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

/// A test bed with a broker on each of the broker host's two addresses.
fn two_brokers() -> Faults {
    let mut f = Faults::up(HEARTBEAT_S);
    f.second_address();
    f.start_broker(BROKER2, &[]);
    f
}

#[test]
fn clients_spread_over_brokers_and_fail_over() {
    let f = two_brokers();
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

/// A UDP server connected to its client through a channel on the broker it
/// registered with; that broker is killed. The socket moves to the other
/// broker (a new proxy address, reported by `getsockname`), the client is
/// told the new address (as a Condor daemon learns it from the collector)
/// and the shim asks the new broker for the channel: echoes go on through
/// it, from the new proxy address, on the same fd with the same peer.
#[test]
fn connected_udp_socket_fails_over_with_its_channel() {
    let f = two_brokers();
    let (server, proxy) = udp::server(&f, BOTH, 7250, false);
    let first = ip_of(&proxy).to_string();
    let other = if first == BROKER { BROKER2 } else { BROKER };
    let tmp = |what: &str| std::env::temp_dir().join(format!("faults-{}-{what}", f.bed.prefix()));
    let (dest, stop) = (tmp("udp-dest"), tmp("udp-stop"));
    let tell = |addr: &str| {
        let next = dest.with_extension("next");
        std::fs::write(&next, addr).expect("dest file");
        std::fs::rename(&next, &dest).expect("dest file");
    };
    tell(&proxy);
    let stream = udp::Stream::start(&f, &format!("@{}", dest.display()), &stop);
    let context = |f: &Faults| format!("{}\nserver:\n{}\nclient:\n{}", f.broker_logs(), server.stderr_text(), stream.client.stderr_text());
    let connected = udp::line(&server, "CONNECTED parent ", support::STARTUP, &|| context(&f));
    for _ in 0..3 {
        stream.reply(support::STARTUP, &|| context(&f));
    }

    f.kill_broker(&first);
    let bound = Duration::from_secs(4 * HEARTBEAT_S + 10);
    let moved = udp::line(&server, "NAME parent ", bound, &|| context(&f));
    assert_eq!(ip_of(&moved), other, "{proxy} moved to {moved}");
    tell(&moved);
    let (told, told_ms) = (Instant::now(), udp::unix_ms());
    let took = stream.first_echo_after(told, told_ms, Duration::from_secs(2 * HEARTBEAT_S + 20), &|| context(&f));
    eprintln!("the first echo through the new broker came {took:?} after the client was told its address");
    for _ in 0..5 {
        stream.reply(support::STARTUP, &|| context(&f));
    }

    stream.stop(&|| context(&f));
    let done = udp::line(&server, "DONE parent ", support::STARTUP, &|| context(&f));
    assert!(done.starts_with(&connected), "the same fd and getpeername after the move: {done} vs {connected}");
    assert!(server.stderr_text().contains(" reopened at "), "the shim asked the new broker for the channel:\n{}", context(&f));
    assert_eq!(f.broker(other).stderr_text().matches(" opened for ").count(), 1, "one channel on the new broker:\n{}", context(&f));
    let _ = std::fs::remove_file(&dest);
    drop((stream, server));
    f.bed.down().expect("tear down");
}
