//! Hole punching across a WAN's latency (issue 13): the bed's default
//! gateways, both answering strangers with a reset (`preserve` / `preserve`),
//! with 20 ms each way between realm B and the rest (`scripts/netns up
//! --wan-hop --wan-delay-us 20000`, docs/testbed.md): a 40 ms round trip, as
//! across a continent. On the zero-latency bed those gateways are the
//! hardest pair (the two SYNs must leave within microseconds); here the
//! broker's start times, lined up from the measured round trips, must carry
//! the punch, and the budget, which follows the round trips, must hold it.
//! The broker runs as shipped (its budget, its outcome cache).
//!
//! * TCP: the paper's C echo server under the shim on a1, the echo client
//!   on b1, blocking and non-blocking connects in turn: each is punched,
//!   every byte echoes back, both sides name the right peer, and the connect
//!   took at least two of the WAN's round trips (the delay is there);
//! * UDP: a connected echo client is punched and every datagram comes back;
//! * the broker counts every punch a success, no fallback, no relay, and
//!   every TCP connector's rendezvous as one that came with its `Connect`,
//!   its hello in its SYN from the second on (a Fast Open cookie).
//!
//! Needs root, `cargo build --release` (libgcb.so, gcb-broker, wan-delay)
//! and `make -C c-tests`.

use std::time::Duration;

mod punch_support;

use punch_support::{conn_us_mean, counter, echo_server, shimmed, tcp_echo_from_b1};
use testbed::real::{Mode, RealBed};
use testbed::{run_with_timeout, wait_for, NatKind, NatKinds};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const ONE_WAY_US: u32 = 20_000;
const CONNECTS: u64 = 4;

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

#[test]
fn tcp_and_udp_are_punched_across_a_wan_between_resetting_gateways() {
    let nat = NatKinds::new(NatKind::Preserve, NatKind::Preserve).with_wan_delay_us(ONE_WAY_US);
    let r = RealBed::up_with_nat(Mode::Gcb, 2, &["--log", "debug"], nat);
    let rtt_us = 2.0 * ONE_WAY_US as f64;

    let (server, listen) = echo_server(&r, "tcp", 7496, "epoll", &[]);
    for i in 0..CONNECTS {
        let extra: &[&str] = if i % 2 == 1 { &["--nonblock", "--timeout-ms", "10000"] } else { &["--timeout-ms", "10000"] };
        let (stdout, log) = tcp_echo_from_b1(&r, &server, &listen, extra, &[]);
        let all = || format!("connect {i}:\n{stdout}\n{log}\nbroker:\n{}", r.daemon.stderr_text());
        let conn_us = conn_us_mean(&stdout);
        eprintln!("connect {i}: {conn_us:.0} us, {:.2} round trips", conn_us / rtt_us);
        assert!(conn_us >= 2.0 * rtt_us, "a brokered connect takes at least two of the WAN's round trips ({rtt_us} µs): {conn_us} µs: {}", all());
        assert!(log.contains(&format!("connect tcp {listen} via punched")), "the client's shim: {}", all());
    }

    let (userver, ulisten) = echo_server(&r, "udp", 7497, "epoll", &[]);
    let mut c = shimmed(&r, "b1", "echo-client", &[]);
    c.args(["--proto", "udp", "--udp-connected", "--connect", &ulisten, "--bytes", "1000", "--rounds", "10", "--timeout-ms", "10000"]);
    let out = run_with_timeout(c, CLIENT_TIMEOUT).expect("echo-client udp");
    let (stdout, log) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    let all = || format!("udp:\n{stdout}\n{log}\nserver:\n{}\nbroker:\n{}", userver.stderr_text(), r.daemon.stderr_text());
    assert!(out.status.success(), "{}", all());
    let summary = stdout.lines().find(|l| l.starts_with("SUMMARY ")).unwrap_or_else(|| panic!("no SUMMARY: {}", all()));
    assert_eq!((field(summary, "ok"), field(summary, "lost")), (Some("1"), Some("0")), "every datagram echoed: {}", all());
    assert!(log.contains(&format!("udp to {ulisten}: via punched")), "the client's shim: {}", all());
    wait_for(Duration::from_secs(30), "the connector's report of its punched UDP path", || (counter(&r, "udp_punch_direct") == 1).then_some(()));

    let broker = r.daemon.stderr_text();
    assert_eq!(counter(&r, "punch_attempts"), CONNECTS, "{broker}");
    assert_eq!(counter(&r, "punch_succeeded"), CONNECTS, "{broker}");
    assert_eq!(counter(&r, "punch_early"), CONNECTS, "every connector's rendezvous came with its Connect: {broker}");
    // The first from b1 had no Fast Open cookie for the broker yet: its
    // hello followed the decision. Every later one came in its SYN.
    assert_eq!(counter(&r, "punch_early_joined"), CONNECTS - 1, "{broker}");
    for why in testbed::real::PUNCH_FALLBACKS {
        assert_eq!(counter(&r, &format!("punch_fallbacks_{why}")), 0, "no fallback ({why}): {broker}");
    }
    assert_eq!(counter(&r, "udp_punch_attempts"), 1, "{broker}");
    assert_eq!(counter(&r, "relays_opened"), 0, "nothing went through the relay: {broker}");
    drop((server, userver));
    r.down();
}
