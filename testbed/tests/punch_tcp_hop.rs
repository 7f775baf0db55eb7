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

mod punch_support;

use punch_support::{counter, echo_server, tcp_echo_from_b1};
use testbed::real::{Mode, RealBed};
use testbed::{NatKind, NatKinds};

const CONNECTS: u64 = 5;

#[test]
fn echoes_across_the_hop_are_punched_every_time() {
    let nat = NatKinds::new(NatKind::Drop, NatKind::Drop).with_wan_hop();
    let r = RealBed::up_with_nat(Mode::Gcb, 2, &[&["--log", "debug"][..], &punch_support::ROOMY_BUDGET].concat(), nat);
    let (server, listen) = echo_server(&r, "tcp", 7495, "epoll", &[]);
    for i in 0..CONNECTS {
        let extra: &[&str] = if i % 2 == 1 { &["--nonblock"] } else { &[] };
        let (_, log) = tcp_echo_from_b1(&r, &server, &listen, extra, &[]);
        assert!(log.contains(&format!("connect tcp {listen} via punched")), "connect {i}: the client's shim:\n{log}\nbroker:\n{}", r.daemon.stderr_text());
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
