//! UDP hole punching end to end in the NAT test bed (issue 13,
//! docs/hole-punching.md, "UDP"): the paper's C echo server on a1 (realm A,
//! behind GA, which answers strangers) and the echo client on b1 (realm B,
//! behind GB, which drops them), both under the shim, through `gcb-broker`.
//!
//! * Every datagram of a long stop-and-wait run echoes, whole and in order,
//!   and `recvfrom` names the server's proxy address for each (the client
//!   checks both, `MISMATCH-SRC` otherwise): the first ones through the
//!   relay, the rest over the punched path.
//! * Both shims log `via punched`; the broker counts one attempt and the
//!   connector's report of its direct path, and from that report on its
//!   relay counters stay where they were (at most the one datagram and its
//!   echo in flight) while the client goes on for thousands of rounds: the
//!   datagrams no longer pass through the broker.
//! * A client with `GCB_PUNCH=0` is relayed as before, every datagram
//!   through the broker.
//! * Behind gateways the default order cannot punch (the connector's GB
//!   answers strangers, GA drops them), a connected client's first connect
//!   goes to the relay once its wait is over; the listener's shim then lets
//!   the connector's Dummy go first, and the next client is punched. Every
//!   echo verified both times.
//! * A connected client (`--udp-connected`: `connect`, `send`, `recv`) waits
//!   in `connect` for its punch, and then every datagram, the first
//!   included, goes direct: all echoed, none relayed; so for a server in
//!   every readiness mode.
//! * A non-blocking connected client never waits in `connect`: it does not
//!   offer UDP punching, and goes to the relay at once (no punch attempt at
//!   the broker, every echo through it). A blocking one whose punch went
//!   unanswered does not wait again: the same process's next socket to that
//!   server goes to the relay at once.
//!
//! Needs root, `cargo build --release` (libgcb.so, gcb-broker) and
//! `make -C c-tests`.

use std::process::Command;
use std::time::Duration;

mod punch_support;

use punch_support::{counter, echo_server, shimmed};
use testbed::real::{Mode, RealBed};
use testbed::{run_with_timeout, wait_for, NatKind, NatKinds, Proc};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Stop-and-wait rounds of the punched client's one run: it must outlast
/// the punch (0.2 s) and the test's queries (a round took 40 us relayed on
/// the bed, so this is about a second on an idle machine, longer on a
/// loaded one).
const ROUNDS: u64 = 100_000;
/// The relayed client's.
const RELAYED_ROUNDS: u64 = 5000;

/// Datagrams the broker relayed, both ways.
fn relayed(r: &RealBed) -> u64 {
    counter(r, "udp_relayed_to_client") + counter(r, "udp_relayed_to_peer")
}

/// The UDP echo server on a1 under the shim, registered; its proxy address.
fn server(r: &RealBed, port: u16) -> (Proc, String) {
    server_in(r, port, "poll")
}

/// [`server`] in readiness mode `mode`.
fn server_in(r: &RealBed, port: u16, mode: &str) -> (Proc, String) {
    echo_server(r, "udp", port, mode, &[])
}

/// The echo client on b1 to `dest`, one run of `rounds` datagrams.
fn echo_client(r: &RealBed, dest: &str, rounds: u64, env: &[(&str, &str)]) -> Command {
    let mut c = shimmed(r, "b1", "echo-client", env);
    let rounds = rounds.to_string();
    c.args(["--proto", "udp", "--connect", dest, "--bytes", "200", "--rounds", &rounds]);
    c
}

/// Asserts the client's stdout shows every datagram echoed from `dest`.
fn all_echoed(stdout: &str, context: &str) {
    assert!(!stdout.contains("MISMATCH"), "an echo from the wrong address or with the wrong bytes:\n{context}");
    let summary = stdout.lines().find(|l| l.starts_with("SUMMARY ")).unwrap_or_else(|| panic!("no SUMMARY:\n{context}"));
    let field = |k: &str| summary.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).map(str::to_string);
    assert!(field("runs").is_some_and(|n| n != "0") && field("ok") == field("runs"), "every run ok: {summary}\n{context}");
    assert_eq!((field("lost").as_deref(), field("reordered").as_deref()), (Some("0"), Some("0")), "{summary}\n{context}");
}

#[test]
fn a_udp_echo_moves_from_the_relay_to_a_punched_path() {
    let nat = NatKinds::new(NatKind::Preserve, NatKind::Drop);
    let r = RealBed::up_with_nat(Mode::Gcb, 2, &["--log", "debug"], nat);
    let (server, listen) = server(&r, 7480);
    let client = r.bed.spawn_cmd(echo_client(&r, &listen, ROUNDS, &[])).expect("echo-client");
    let context = |what: &str| {
        format!(
            "{what}\nclient stdout:\n{}\nclient stderr:\n{}\nserver stderr:\n{}\nbroker stderr:\n{}",
            client.stdout_seen().join("\n"),
            client.stderr_text(),
            server.stderr_text(),
            r.daemon.stderr_text()
        )
    };
    wait_for(Duration::from_secs(30), "the connector's report of its punched path", || (counter(&r, "udp_punch_direct") == 1).then_some(()));
    let at_report = relayed(&r);
    assert!(client.try_wait().is_none(), "{}", context("the client ended before its path was punched: too few rounds"));
    let status = client.wait_timeout(CLIENT_TIMEOUT).unwrap_or_else(|| panic!("{}", context("the client did not finish")));
    let after = relayed(&r);
    let all = context(&format!("client exit {status}"));
    assert!(status.success(), "{all}");
    all_echoed(&client.stdout_seen().join("\n"), &all);
    assert!(client.stderr_text().contains(&format!("udp to {listen}: via punched")), "the client's shim: {all}");
    assert!(server.stderr_text().contains("via punched, reached at 203.0.113.2:"), "the server's shim: {all}");
    assert!(at_report > 0, "the first datagrams went through the relay: {all}");
    assert!(after <= at_report + 2, "relayed {at_report} by the report, {after} at the end: {all}");
    assert!(after < ROUNDS, "relayed {after} of {} datagrams: {all}", 2 * ROUNDS);
    assert_eq!(counter(&r, "udp_punch_attempts"), 1, "{all}");
    println!("preserve/drop: punched; {at_report} datagrams relayed by the connector's report, {after} at the end, of {}", 2 * (ROUNDS + 1));

    // Without punching on the client, every datagram goes through the broker.
    let before = relayed(&r);
    let out = run_with_timeout(echo_client(&r, &listen, RELAYED_ROUNDS, &[("GCB_PUNCH", "0")]), CLIENT_TIMEOUT).expect("echo-client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}\n{}\nserver:\n{}", String::from_utf8_lossy(&out.stderr), server.stderr_text());
    assert!(out.status.success(), "{all}");
    all_echoed(&stdout, &all);
    // The probe that measures the connection, then the rounds, both ways.
    assert_eq!(relayed(&r) - before, 2 * (RELAYED_ROUNDS + 1), "relayed both ways: {all}");
    assert_eq!((counter(&r, "udp_punch_attempts"), counter(&r, "punch_skipped_not_capable")), (1, 1), "{all}");
    drop(server);
    r.down();
}

/// One run of a connected echo client (`--udp-connected`) to `dest`, every
/// echo verified: the client's log, and everything for a failure message.
fn connected_run(r: &RealBed, server: &Proc, dest: &str, rounds: u64) -> (String, String) {
    connected_runs(r, server, dest, rounds, &[])
}

/// [`connected_run`] with more of the client's flags (`extra`).
fn connected_runs(r: &RealBed, server: &Proc, dest: &str, rounds: u64, extra: &[&str]) -> (String, String) {
    let mut c = echo_client(r, dest, rounds, &[]);
    c.arg("--udp-connected").args(extra);
    let out = run_with_timeout(c, CLIENT_TIMEOUT).expect("echo-client");
    let (stdout, log) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    let all = format!("{stdout}\n{log}\nserver:\n{}\nbroker:\n{}", server.stderr_text(), r.daemon.stderr_text());
    assert!(out.status.success(), "{all}");
    all_echoed(&stdout, &all);
    (log, all)
}

#[test]
fn a_connected_udp_echo_is_punched_from_its_first_datagram() {
    let nat = NatKinds::new(NatKind::Preserve, NatKind::Drop);
    let r = RealBed::up_with_nat(Mode::Gcb, 2, &["--log", "debug"], nat);
    let (server, listen) = server(&r, 7481);
    let (log, all) = connected_run(&r, &server, &listen, RELAYED_ROUNDS);
    assert!(log.contains(&format!("udp to {listen}: via punched")), "the client's shim: {all}");
    assert!(server.stderr_text().contains("via punched, reached at 203.0.113.2:"), "the server's shim: {all}");
    assert_eq!((counter(&r, "udp_punch_attempts"), counter(&r, "udp_punch_direct")), (1, 1), "{all}");
    assert_eq!(relayed(&r), 0, "not one datagram through the broker: {all}");
    drop(server);
    r.down();
}

#[test]
fn a_connector_behind_an_answering_gateway_punches_once_the_listener_yields() {
    let nat = NatKinds::new(NatKind::Drop, NatKind::Preserve);
    let r = RealBed::up_with_nat(Mode::Gcb, 2, &["--log", "debug"], nat);
    let (server, listen) = server(&r, 7482);
    let connected = || connected_run(&r, &server, &listen, 200);
    let (log, all) = connected();
    assert!(log.contains(&format!("udp connect to {listen}: the punch did not answer")), "the listener first cannot punch here: {all}");
    // The listener's punch is over once its last Dummy went unanswered.
    wait_for(Duration::from_secs(30), "the listener's last Dummy", || server.stderr_text().contains(": its last Dummy sent").then_some(()));
    let (log, all) = connected();
    assert!(log.contains(&format!("udp to {listen}: via punched")), "the connector first punches: {all}");
    assert!(server.stderr_text().contains("went unanswered, so the connector's Dummy goes first"), "{all}");
    assert_eq!((counter(&r, "udp_punch_attempts"), counter(&r, "udp_punch_direct")), (2, 1), "{all}");
    drop(server);
    r.down();
}

#[test]
fn every_server_mode_is_reached_over_a_punched_path() {
    let nat = NatKinds::new(NatKind::Drop, NatKind::Drop);
    let r = RealBed::up_with_nat(Mode::Gcb, 2, &["--log", "debug"], nat);
    let modes = ["blocking", "select", "poll", "epoll", "epoll-et", "nonblock"];
    for (i, mode) in modes.iter().enumerate() {
        let (server, listen) = server_in(&r, 7490 + i as u16, mode);
        let (log, all) = connected_run(&r, &server, &listen, 500);
        assert!(log.contains(&format!("udp to {listen}: via punched")), "server mode {mode}: {all}");
        assert!(server.stderr_text().contains("via punched, reached at 203.0.113.2:"), "server mode {mode}: {all}");
        drop(server);
    }
    let n = modes.len() as u64;
    assert_eq!((counter(&r, "udp_punch_attempts"), counter(&r, "udp_punch_direct")), (n, n), "{}", r.daemon.stderr_text());
    assert_eq!(relayed(&r), 0, "not one datagram through the broker");
    r.down();
}

#[test]
fn a_nonblocking_connected_client_goes_to_the_relay_without_waiting() {
    // Gateways a blocking client is punched behind (the test above).
    let nat = NatKinds::new(NatKind::Preserve, NatKind::Drop);
    let r = RealBed::up_with_nat(Mode::Gcb, 2, &["--log", "debug"], nat);
    let (server, listen) = server(&r, 7483);
    let (log, all) = connected_runs(&r, &server, &listen, 200, &["--nonblock"]);
    assert!(log.contains(&format!("connect udp {listen} via relay at ")), "relayed from the start: {all}");
    assert!(!log.contains(&format!("udp connect to {listen}:")), "no wait for a punch: {all}");
    assert_eq!(counter(&r, "udp_punch_attempts"), 0, "no punch offered: {all}");
    assert!(relayed(&r) >= 400, "every datagram and echo through the broker: {all}");
    drop(server);
    r.down();
}

#[test]
fn a_missed_punch_is_not_waited_for_again_by_the_same_process() {
    // Gateways where the listener's first punch misses (the test above).
    let nat = NatKinds::new(NatKind::Drop, NatKind::Preserve);
    let r = RealBed::up_with_nat(Mode::Gcb, 2, &["--log", "debug"], nat);
    let (server, listen) = server(&r, 7484);
    // Two runs, each on a fresh socket, in one process.
    let (log, all) = connected_runs(&r, &server, &listen, 50, &["--runs", "2"]);
    let missed = format!("udp connect to {listen}: the punch did not answer");
    assert_eq!(log.matches(&missed).count(), 1, "the first socket waits, the second does not: {all}");
    assert!(log.contains(&format!("connect udp {listen} via relay at ")), "the second goes to the relay: {all}");
    assert_eq!(counter(&r, "udp_punch_attempts"), 1, "one punch offered: {all}");
    drop(server);
    r.down();
}
