//! UDP hole punching across a routed hop (issue 13, docs/hole-punching.md,
//! "UDP"; the bed of `scripts/netns up --wan-hop`, docs/testbed.md).
//!
//! On the plain bed the gateways are neighbours, and between two gateways
//! that both answer strangers (`preserve`) no UDP punch opens: the first
//! side's Dummy reaches the far gateway before the far side's mapping exists
//! and takes its port. With a router between the gateways, as on the
//! Internet, each side's first Dummy has a low TTL (2): it makes its own
//! gateway's mapping and dies at the router; the Dummies after it find both
//! mappings open.
//!
//! * The hop is real: from a1 a datagram with TTL 2 to GB's public address
//!   is mapped by GA and dies at the router (its time exceeded counted);
//!   the TTL 3 one sent after it is the first GB reads. The same from b1
//!   toward GA. `down` removes the router's namespace with the rest.
//! * A connected echo client on b1, with the server on a1, both gateways
//!   `preserve`: punched at the first attempt, every datagram echoed whole
//!   and in order from the server's proxy address, not one through the
//!   broker; both shims sent their first Dummy with TTL 2, and both died at
//!   the router.
//!
//! Needs root, `cargo build --release` (libgcb.so, gcb-broker) and
//! `make -C c-tests`.

use std::time::Duration;

mod punch_support;

use punch_support::{counter, echo_server, shimmed};
use testbed::real::{Mode, RealBed};
use testbed::{python3, run_with_timeout, wait_for, NatKind, NatKinds, TestBed};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(20);

/// Time-exceeded messages the router `wan` has sent.
fn time_exceeded(bed: &TestBed) -> u64 {
    let out = bed.run("wan", &["nstat", "-az", "IcmpOutTimeExcds"], STEP).expect("nstat");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("IcmpOutTimeExcds").and_then(|v| v.split_whitespace().next()?.parse().ok()))
        .unwrap_or_else(|| panic!("no IcmpOutTimeExcds in {text:?}"))
}

/// From `from` (port 7701), a datagram with TTL 2, then one with TTL 3, to
/// port 7700 of gateway `to`. Once the router counted a time exceeded for the
/// first, `from`'s gateway `near` has mapped it; the first datagram `to`
/// reads is the second (both took the same path, so the first would have
/// come before it).
fn low_ttl_dies_at_the_router(bed: &TestBed, from: &str, near: &str, to: &str) {
    let py = python3().to_str().unwrap();
    let recv = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',7700))\nprint('READY',flush=True)\nd,a=s.recvfrom(100)\nprint('GOT',d.decode(),a[0],flush=True)";
    let (receiver, _) = bed.spawn_server(to, &[py, "-c", recv], "READY", STEP).expect("receiver");
    let dest = bed.ip(to).to_string();
    let send = |ttl: u8| {
        let code = format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',7701))\ns.setsockopt(socket.IPPROTO_IP,socket.IP_TTL,{ttl})\ns.sendto(b'ttl{ttl}',('{dest}',7700))"
        );
        let out = bed.run(from, &[py, "-c", &code], STEP).expect("sender");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let before = time_exceeded(bed);
    send(2);
    wait_for(STEP, "the router's time exceeded for the TTL 2 datagram", || (time_exceeded(bed) > before).then_some(()));
    let ct = bed.run(near, &["conntrack", "-L", "-p", "udp", "--dport", "7700"], STEP).expect("conntrack");
    let ct = String::from_utf8_lossy(&ct.stdout).into_owned();
    assert!(ct.contains(&format!("dst={dest}")) && ct.contains("sport=7701"), "{near} mapped the TTL 2 datagram: {ct:?}");
    send(3);
    let got = receiver.wait_line("GOT ", STEP).expect("a datagram at the far gateway");
    assert_eq!(got, format!("ttl3 {}", bed.ip(near)), "from {from}: the TTL 2 datagram died before {to}");
}

#[test]
fn the_router_is_one_more_hop_between_the_gateways() {
    let bed = TestBed::up_with_nat(NatKinds::default().with_wan_hop()).expect("test bed");
    assert_eq!(bed.ip("wan").to_string(), "203.0.113.254");
    low_ttl_dies_at_the_router(&bed, "a1", "ga", "gb");
    low_ttl_dies_at_the_router(&bed, "b1", "gb", "ga");
    let wan = bed.netns("wan");
    bed.down().expect("down");
    let left = run_with_timeout(
        {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "list"]);
            c
        },
        STEP,
    )
    .expect("ip netns list");
    assert!(!String::from_utf8_lossy(&left.stdout).contains(&wan), "down removed {wan}");
}

#[test]
fn a_udp_echo_between_two_answering_gateways_is_punched_at_once() {
    let nat = NatKinds::new(NatKind::Preserve, NatKind::Preserve).with_wan_hop();
    let r = RealBed::up_with_nat(Mode::Gcb, 2, &["--log", "debug"], nat);
    let (server, listen) = echo_server(&r, "udp", 7480, "poll", &[]);
    let before = time_exceeded(&r.bed);

    let mut c = shimmed(&r, "b1", "echo-client", &[]);
    c.args(["--proto", "udp", "--connect", &listen, "--bytes", "200", "--rounds", "500", "--udp-connected"]);
    let out = run_with_timeout(c, CLIENT_TIMEOUT).expect("echo-client");
    let (stdout, log) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    let all = format!("{stdout}\n{log}\nserver:\n{}\nbroker:\n{}", server.stderr_text(), r.daemon.stderr_text());
    assert!(out.status.success(), "{all}");
    assert!(!stdout.contains("MISMATCH"), "an echo from the wrong address or with the wrong bytes: {all}");
    let summary = stdout.lines().find(|l| l.starts_with("SUMMARY ")).unwrap_or_else(|| panic!("no SUMMARY: {all}"));
    for kv in ["runs=1", "ok=1", "lost=0", "reordered=0"] {
        assert!(summary.split_whitespace().any(|w| w == kv), "{kv} in {summary}: {all}");
    }
    assert!(log.contains(&format!("udp to {listen}: via punched")), "the client's shim: {all}");
    assert!(!log.contains("the punch did not answer"), "punched while connect waited: {all}");
    assert!(server.stderr_text().contains("via punched, reached at 203.0.113.2:"), "the server's shim: {all}");
    for (side, text) in [("client", log.as_str()), ("server", &server.stderr_text())] {
        assert!(text.contains("its first Dummy sent with TTL 2"), "the {side}'s first Dummy had a low TTL: {all}");
    }
    assert!(time_exceeded(&r.bed) >= before + 2, "both first Dummies died at the router: {all}");
    assert_eq!((counter(&r, "udp_punch_attempts"), counter(&r, "udp_punch_direct")), (1, 1), "the first attempt: {all}");
    let relayed = counter(&r, "udp_relayed_to_client") + counter(&r, "udp_relayed_to_peer");
    assert_eq!(relayed, 0, "not one datagram through the broker: {all}");
    drop(server);
    r.down();
}
