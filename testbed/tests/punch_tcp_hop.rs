//! TCP hole punching across a routed hop (issue 13, docs/hole-punching.md;
//! the bed of `scripts/netns up --wan-hop`, docs/testbed.md): one router
//! between GB and the public switch, as on any real path.
//!
//! Both gateways drop strangers' packets (`drop` / `drop`), with the shim's
//! defaults (no low-TTL first SYN: docs/hole-punching.md, "Across a router,
//! and why the first SYN has no low TTL"). Where one gateway answers
//! strangers with a reset, a reset SYN can leave a conntrack entry that makes
//! that gateway renumber the other side's later SYNs, and about one punch in
//! ten to twenty falls back (docs/nat-punching-notes.md, "The fallbacks"):
//! those pairs are measured (the `tcp_punch_matrix` example), not tested
//! here, since a test that asserts no fallback there fails one run in four.
//! The paper's C echo server under the shim on a1 (behind GA) and
//! the echo client on b1 (behind GB), several connects in a row, blocking
//! and non-blocking: each is punched (the client's shim logs `via punched`),
//! every byte echoes back, both sides name the
//! right peer (the proxy address for the client, GB for the server); the
//! broker counts every attempt a success, no fallback and no relay.
//!
//! Needs root, `cargo build --release` (libgcb.so, gcb-broker) and
//! `make -C c-tests`.

use std::time::Duration;

mod punch_support;

use punch_support::{counter, echo_server, shimmed};
use testbed::real::{Mode, RealBed};
use testbed::{run_with_timeout, NatKind, NatKinds};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECTS: u64 = 5;

#[test]
fn echoes_across_the_hop_are_punched_every_time() {
    let nat = NatKinds::new(NatKind::Drop, NatKind::Drop).with_wan_hop();
    let r = RealBed::up_with_nat(Mode::Gcb, 2, &[&["--log", "debug"][..], &punch_support::ROOMY_BUDGET].concat(), nat);
    let (server, listen) = echo_server(&r, "tcp", 7495, "epoll", &[]);
    for i in 0..CONNECTS {
        let mut c = shimmed(&r, "b1", "echo-client", &[]);
        c.args(["--proto", "tcp", "--connect", &listen, "--bytes", "100000", "--rounds", "3"]);
        if i % 2 == 1 {
            c.arg("--nonblock");
        }
        let out = run_with_timeout(c, CLIENT_TIMEOUT).expect("echo-client");
        let (stdout, log) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        let all = || format!("connect {i}:\n{stdout}\n{log}\nserver:\n{}\nbroker:\n{}", server.stderr_text(), r.daemon.stderr_text());
        assert!(out.status.success(), "{}", all());
        // The client compares every byte it reads back with what it sent.
        let summary = stdout.lines().find(|l| l.starts_with("SUMMARY ")).unwrap_or_else(|| panic!("no SUMMARY: {}", all()));
        for kv in ["runs=1", "ok=1"] {
            assert!(summary.split_whitespace().any(|w| w == kv), "{kv} in {summary}: {}", all());
        }
        for peer in stdout.lines().filter_map(|l| l.split_once(" PEER ").map(|(_, p)| p)) {
            assert_eq!(peer, listen, "the client's getpeername: {}", all());
        }
        assert!(log.contains(&format!("connect tcp {listen} via punched")), "the client's shim: {}", all());
        let accepted = server.wait_line("ACCEPT PEER ", Duration::from_secs(10)).expect("ACCEPT PEER");
        assert!(accepted.starts_with("203.0.113.2:"), "the server's peer is GB: {accepted}: {}", all());
    }
    let broker = r.daemon.stderr_text();
    assert_eq!(counter(&r, "punch_attempts"), CONNECTS, "{broker}");
    assert_eq!(counter(&r, "punch_succeeded"), CONNECTS, "{broker}");
    for why in testbed::real::PUNCH_FALLBACKS {
        assert_eq!(counter(&r, &format!("punch_fallbacks_{why}")), 0, "no fallback ({why}): {broker}");
    }
    assert_eq!(counter(&r, "relays_opened"), 0, "nothing went through the relay: {broker}");
    drop(server);
    r.down();
}
