//! TCP hole punching end to end in the NAT test bed (issue 13,
//! docs/hole-punching.md): the paper's C echo server under the shim on a1
//! (realm A, behind GA) and the echo client under the shim on b1 (realm B,
//! behind GB), through `gcb-broker` on the broker host.
//!
//! * both gateways drop strangers' packets (`drop`, as most home routers
//!   do), so every punch succeeds on the bed (with a resetting gateway on one
//!   side a few percent fall back, see the bench's NAT-kind matrix): every
//!   server mode is reached over a punched connection, blocking and
//!   non-blocking connects alike; every byte echoes back, the client's shim
//!   logs `via punched`, the server sees the connection come from GB, and
//!   the broker counts each attempt a success and opens no relay;
//! * both gateways reset strangers (`preserve`, the bed's default): on the
//!   bed's zero-latency link the two SYNs must cross within microseconds
//!   (docs/nat-punching-notes.md), so a punch may fail; each connect is then
//!   either punched or relayed within the budget, with every byte, and the
//!   broker's counters add up (attempts = successes + fallbacks; a failed
//!   pair is relayed at once afterwards);
//! * GA maps ports at random (`random`): the broker relays at once, the
//!   connect costs less than 3 times a plain relayed one (medians of 7 each,
//!   taking turns, every one through the meeting), and the next connect
//!   between the two realms does not try again;
//! * the client with `GCB_PUNCH=0` (a shim that does not offer it): the
//!   connection is relayed as before, and the broker counts why it did not
//!   punch (`punch_skipped_not_capable`).
//!
//! Needs root, `cargo build --release` (libgcb.so, gcb-broker) and
//! `make -C c-tests`.

use std::time::Duration;

mod punch_support;

use punch_support::{conn_us_mean, counter, echo_server, shimmed, tcp_echo_from_b1};
use testbed::real::{Mode, RealBed};
use testbed::{run_with_timeout, NatKind, NatKinds, Proc};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A server on a1 under the shim, registered; its proxy address.
fn server(r: &RealBed, port: u16) -> (Proc, String) {
    echo_server(r, "tcp", port, "epoll", &[])
}

/// The echo client on b1 to `dest` (`punch_support::tcp_echo_from_b1`: every
/// byte back, the right peers); returns the client's stderr (the shim's log).
fn client(r: &RealBed, server: &Proc, dest: &str, extra: &[&str], env: &[(&str, &str)]) -> String {
    tcp_echo_from_b1(r, server, dest, extra, env).1
}

/// [`client`], returning its stdout (the RUN and SUMMARY lines) and then its
/// stderr (the shim's log).
fn client_stdout(r: &RealBed, server: &Proc, dest: &str, extra: &[&str], env: &[(&str, &str)]) -> String {
    let mut c = shimmed(r, "b1", "echo-client", env);
    c.args(["--proto", "tcp", "--connect", dest, "--bytes", "100000", "--rounds", "3"]).args(extra);
    let out = run_with_timeout(c, CLIENT_TIMEOUT).unwrap_or_else(|e| panic!("client: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "echo-client {extra:?} failed ({}):\n{text}\nserver:\n{}\nbroker:\n{}", out.status, server.stderr_text(), r.daemon.stderr_text());
    let summary = text.lines().find(|l| l.starts_with("SUMMARY ")).unwrap_or_else(|| panic!("no SUMMARY:\n{text}"));
    let field = |k: &str| summary.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).map(str::to_string);
    assert_eq!(field("ok"), field("runs"), "{summary}\n{text}");
    text
}

/// `--mode` values of the echo server: every way a server waits for its
/// connections.
const SERVER_MODES: [&str; 6] = ["blocking", "select", "poll", "epoll", "epoll-et", "nonblock"];

/// The echo server on a1 in `mode`, registered; its proxy address.
fn server_in(r: &RealBed, port: u16, mode: &str) -> (Proc, String) {
    echo_server(r, "tcp", port, mode, &[])
}

#[test]
fn every_server_mode_is_reached_over_a_punched_connection() {
    let nat = NatKinds::new(NatKind::Drop, NatKind::Drop);
    let r = RealBed::up_with_nat(Mode::Gcb, 2, &[&["--log", "debug"][..], &punch_support::ROOMY_BUDGET].concat(), nat);
    let mut connects = 0;
    for (i, mode) in SERVER_MODES.iter().enumerate() {
        let (server, listen) = server_in(&r, 7470 + i as u16, mode);
        for extra in [&[][..], &["--nonblock"][..]] {
            let log = client(&r, &server, &listen, extra, &[]);
            connects += 1;
            assert!(
                log.contains(&format!("connect tcp {listen} via punched")),
                "server mode {mode}, client {extra:?}: the client's shim did not log `via punched`:\n{log}\nserver:\n{}\nbroker:\n{}",
                server.stderr_text(),
                r.daemon.stderr_text()
            );
        }
        drop(server);
    }
    assert_eq!(counter(&r, "punch_attempts"), connects, "{}", r.daemon.stderr_text());
    assert_eq!(counter(&r, "punch_succeeded"), connects, "{}", r.daemon.stderr_text());
    assert_eq!(counter(&r, "relays_opened"), 0, "nothing went through the relay");
    r.down();
}

#[test]
fn resetting_gateways_punch_or_fall_back_and_every_byte_arrives() {
    let r = RealBed::up_with(Mode::Gcb, 2, &["--log", "debug"]);
    let (server, listen) = server(&r, 7461);
    let (mut punched, mut relayed) = (0, 0);
    for _ in 0..5 {
        let log = client(&r, &server, &listen, &["--nonblock"], &[]);
        if log.contains(&format!("connect tcp {listen} via punched")) {
            punched += 1;
        } else {
            assert!(log.contains(&format!("connect tcp {listen} via relay")), "neither punched nor relayed:\n{log}");
            relayed += 1;
        }
    }
    println!("preserve/preserve: {punched} of 5 connects punched, {relayed} relayed");
    let attempts = counter(&r, "punch_attempts");
    let fallbacks = r.punch_fallbacks();
    let skipped = counter(&r, "punch_skipped_cached_failure");
    assert_eq!(counter(&r, "punch_succeeded"), punched, "{}", r.daemon.stderr_text());
    assert_eq!(attempts, punched + fallbacks, "every attempt ends punched or fallen back");
    assert_eq!(attempts + skipped, 5, "a connect not attempted was skipped for a cached failure");
    assert_eq!(counter(&r, "relays_opened"), relayed, "each relayed connect, and only those, is relayed");
    // A failed pair is relayed at once afterwards: after the first fallback
    // no attempt is made for the rest of the run.
    if fallbacks > 0 {
        assert_eq!(fallbacks, 1, "the first failure is cached");
    }
    drop(server);
    r.down();
}

#[test]
fn a_random_mapping_is_relayed_at_once_and_not_tried_again() {
    let nat = NatKinds::new(NatKind::Random, NatKind::Preserve);
    let r = RealBed::up_with_nat(Mode::Gcb, 2, &["--log", "debug"], nat);
    let (server, listen) = server(&r, 7463);
    // Five connects of a client that does not offer punching: the relay.
    client_stdout(&r, &server, &listen, &["--runs", "5"], &[("GCB_PUNCH", "0")]);
    // The first connect that could punch: the broker meets both sides, sees
    // GA renumbered the listener's port, and relays at once.
    let first_out = client_stdout(&r, &server, &listen, &[], &[]);
    assert!(first_out.contains(&format!("connect tcp {listen} via relay")), "{first_out}");
    assert_eq!(counter(&r, "punch_skipped_unpredictable_mapping"), 1, "{}", r.daemon.stderr_text());
    // Decided as a punch, ended at the meeting before anyone dialed.
    assert_eq!(counter(&r, "punch_attempts"), 1);
    assert_eq!(counter(&r, "punch_succeeded"), 0);
    // The second connect between the two realms goes to the relay without a meeting.
    let second_out = client_stdout(&r, &server, &listen, &[], &[]);
    assert!(second_out.contains(&format!("connect tcp {listen} via relay")), "{second_out}");
    assert_eq!(counter(&r, "punch_skipped_cached_failure"), 1, "{}", r.daemon.stderr_text());
    assert_eq!(counter(&r, "punch_skipped_unpredictable_mapping"), 1);
    assert_eq!(counter(&r, "punch_attempts"), 1, "not tried again");
    assert_eq!(counter(&r, "relays_opened"), 7, "five baseline connects and two fallbacks");
    drop(server);
    r.down();
}

/// The median over several connects of each kind, taking turns, so that one
/// slow moment of a loaded machine decides nothing.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[test]
fn a_random_mapping_falls_back_in_less_than_three_relay_connects() {
    // Without the outcome cache, so that every connect meets at the broker.
    let nat = NatKinds::new(NatKind::Random, NatKind::Preserve);
    let r = RealBed::up_with_nat(Mode::Gcb, 2, &["--punch-retry-s", "0"], nat);
    let (server, listen) = server(&r, 7464);
    let (mut relayed, mut fallen_back) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let out = client_stdout(&r, &server, &listen, &[], &[("GCB_PUNCH", "0")]);
        relayed.push(conn_us_mean(&out));
        let out = client_stdout(&r, &server, &listen, &[], &[]);
        assert!(out.contains(&format!("connect tcp {listen} via relay")), "{out}");
        fallen_back.push(conn_us_mean(&out));
    }
    assert_eq!(counter(&r, "punch_skipped_unpredictable_mapping"), 7, "each met at the broker: {}", r.daemon.stderr_text());
    let (relay_us, fallback_us) = (median(relayed.clone()), median(fallen_back.clone()));
    println!("random/preserve: relay connect median {relay_us:.0} us {relayed:?}, through the meeting {fallback_us:.0} us {fallen_back:?}");
    assert!(fallback_us < 3.0 * relay_us, "the fallback took {fallback_us:.0} us, the relay alone {relay_us:.0} us (medians of 7)");
    drop(server);
    r.down();
}

#[test]
fn a_client_that_does_not_offer_punching_is_relayed() {
    let r = RealBed::up_with(Mode::Gcb, 2, &[]);
    let (server, listen) = server(&r, 7462);
    let log = client(&r, &server, &listen, &["--nonblock"], &[("GCB_PUNCH", "0")]);
    assert!(!log.contains("via punched"), "{log}");
    assert_eq!(counter(&r, "punch_attempts"), 0);
    assert_eq!(counter(&r, "punch_skipped_not_capable"), 1);
    assert_eq!(counter(&r, "decided_relay"), 1);
    assert_eq!(counter(&r, "relays_opened"), 1);
    drop(server);
    r.down();
}
