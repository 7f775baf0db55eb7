//! Bulk data over a punched TCP connection between realm A and realm B
//! (issue 13, docs/hole-punching.md), with unmodified programs under the shim
//! on a1 (server) and b1 (client), both gateways dropping strangers' packets
//! so that the punch is reliable on the bed's zero-latency link: a resetting
//! gateway on either side leaves a few percent of punches to the relay there
//! (docs/nat-punching-notes.md, the bench's NAT-kind matrix):
//!
//! * 100 MB from b1 to a1 over a punched connection: the SHA-256 the server
//!   computed of what arrived is the payload's, the client's shim logged
//!   `via punched`, and the broker host's interface carried under 1% of the
//!   bytes (its kernel's rx + tx counters before and after). The same meter
//!   then watches a relayed 1 MB (a client that does not offer punching) and
//!   must see at least twice that on the broker's interface, so a meter that
//!   counted the wrong interface could not pass the first check;
//! * `iperf3` TCP forward and reverse (`-R`): every connection iperf3 makes
//!   (control and data) is punched per the client's shim log, iperf3's own
//!   byte counts agree, and the broker opened no relay at all;
//! * `iperf3` UDP forward and reverse: the client's connected UDP socket and
//!   the server's are both punched (their shims log `via punched`, the broker
//!   counts the punch and its direct path), the datagrams arrive (iperf3's
//!   report), and the broker host carries under 1% of the bytes; a relayed
//!   run beside it shows the meter sees a relay. Behind a client gateway
//!   that answers strangers (GB preserve, GA drop) the first test's punch
//!   misses (relayed, every datagram delivered) and the next one punches.
//!
//! Needs root and `cargo build --release` (libgcb.so, gcb-broker).

mod punch_support;

use std::time::Duration;

use testbed::json::{self, Value};
use testbed::real::{host_port, payload, Mode, RealBed};
use testbed::{python3, wait_for, NatKind, NatKinds};

const SIZE: usize = 100_000_000;
/// A transfer of 100 MB on a loaded 2-core machine, with both ends in Python.
const RUN: Duration = Duration::from_secs(180);

/// Accepts connections on PORT; for each, reads to the end of the stream and
/// answers (and prints) `GOT bytes sha256`.
const SERVER: &str = r#"
import hashlib, socket, sys
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", int(sys.argv[1])))
l.listen(4)
while True:
    c, _ = l.accept()
    h, n = hashlib.sha256(), 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        h.update(b)
        n += len(b)
    line = "GOT %d %s" % (n, h.hexdigest())
    c.sendall((line + "\n").encode())
    c.close()
    print(line, flush=True)
"#;

/// Sends the file to IP:PORT, ends its side, prints the server's answer.
const CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=60)
with open(sys.argv[1], "rb") as f:
    while True:
        b = f.read(1 << 20)
        if not b:
            break
        s.sendall(b)
s.shutdown(socket.SHUT_WR)
answer = b""
while True:
    b = s.recv(4096)
    if not b:
        break
    answer += b
print(answer.decode().strip(), flush=True)
"#;

fn up() -> RealBed {
    RealBed::up_with_nat(Mode::Gcb, 2, &punch_support::ROOMY_BUDGET, NatKinds::new(NatKind::Drop, NatKind::Drop))
}

/// Bytes received plus sent by every interface of the broker host but `lo`.
fn broker_if_bytes(r: &RealBed) -> u64 {
    let script = "for i in /sys/class/net/*; do [ \"${i##*/}\" = lo ] || echo $(cat $i/statistics/rx_bytes) $(cat $i/statistics/tx_bytes); done";
    let out = r.bed.run("broker", &["sh", "-c", script], Duration::from_secs(20)).expect("interface counters");
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<u64> = text.split_whitespace().map(|n| n.parse().unwrap_or_else(|_| panic!("counter {n:?} in {text:?}"))).collect();
    assert!(out.status.success() && !nums.is_empty(), "no interface counters on the broker host: {text:?}");
    nums.iter().sum()
}

/// The broker's outcome cache (`gcb-broker query --json`'s `punch_blocked`)
/// as `(proto, realm, realm)`.
fn punch_blocked(r: &RealBed) -> Vec<(String, String, String)> {
    let v = r.broker_query();
    let list = v.get("punch_blocked").and_then(Value::as_array).unwrap_or_else(|| panic!("no punch_blocked in {v:?}"));
    let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
    list.iter()
        .map(|b| {
            let realms = b.get("realms").and_then(Value::as_array).unwrap_or(&[]);
            (s(b.get("proto")), s(realms.first()), s(realms.get(1)))
        })
        .collect()
}

/// Sends `file` from b1 under the shim (with `env`) to `public`; the
/// client's answer line from the server (`GOT bytes sha256`) and its stderr.
fn send(r: &RealBed, server: &testbed::Proc, file: &std::path::Path, public: &str, env: &[(&str, &str)]) -> (String, String) {
    let (ip, port) = host_port(public);
    let mut c = r.cmd("b1", python3(), true);
    c.args(["-c", CLIENT]).arg(file).args([ip, port]).env_remove("GCB_PUNCH").envs(env.iter().copied());
    let out = testbed::run_with_timeout(c, RUN).unwrap_or_else(|e| panic!("client: {e}\nserver:\n{}", server.stderr_text()));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(
        out.status.success(),
        "the client failed ({}):\n{stdout}\n{stderr}\nserver:\n{}\nbroker:\n{}",
        out.status,
        server.stderr_text(),
        r.daemon.stderr_text()
    );
    (stdout.trim().to_string(), stderr)
}

#[test]
fn a_punched_100_mb_transfer_bypasses_the_broker_host() {
    let r = up();
    let file = r.file("payload.bin");
    let want = payload(&file, SIZE, 13);
    let mut c = r.cmd("a1", python3(), true);
    c.args(["-c", SERVER, "7480"]);
    let server = r.bed.spawn_cmd(c).expect("server");
    let public = r.registered(&server, "tcp", "192.0.2.10:7480");

    let before = broker_if_bytes(&r);
    let (answer, log) = send(&r, &server, &file, &public, &[]);
    let carried = broker_if_bytes(&r) - before;
    assert_eq!(answer, format!("GOT {SIZE} {want}"), "what the server received\nclient log:\n{log}");
    assert!(log.contains(&format!("connect tcp {public} via punched")), "the client's shim did not log `via punched`:\n{log}\nbroker:\n{}", r.daemon.stderr_text());
    println!("100 MB punched: the broker host's interface carried {carried} bytes ({:.4}%)", carried as f64 * 100.0 / SIZE as f64);
    assert!(carried > 0, "the broker host's interface counted nothing: the meter reads the wrong place");
    assert!((carried as f64) < SIZE as f64 * 0.01, "the broker host carried {carried} bytes of a {SIZE}-byte transfer");
    assert_eq!((r.broker_counter("punch_attempts"), r.broker_counter("punch_succeeded")), (1, 1));
    assert_eq!(r.broker_counter("relays_opened"), 0);

    // The meter sees a relay: 1 MB through the broker is in and out of its host.
    let small = r.file("small.bin");
    let small_want = payload(&small, 1 << 20, 14);
    let before = broker_if_bytes(&r);
    let (answer, log) = send(&r, &server, &small, &public, &[("GCB_PUNCH", "0")]);
    let relayed = broker_if_bytes(&r) - before;
    assert_eq!(answer, format!("GOT {} {small_want}", 1 << 20));
    assert!(!log.contains("via punched"), "{log}");
    println!("1 MiB relayed: the broker host's interface carried {relayed} bytes");
    assert!(relayed >= 2 << 20, "a relayed MiB showed as only {relayed} bytes on the broker host's interface");
    assert_eq!(r.broker_counter("relays_opened"), 1);
    drop(server);
    r.down();
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut at = v;
    for k in path {
        at = at.get(k).unwrap_or_else(|| panic!("no {path:?} in iperf3's report; its error: {:?}", v.get("error")));
    }
    match at {
        Value::Num(n) => *n,
        other => panic!("{path:?} is {other:?}"),
    }
}

#[test]
fn iperf3_runs_over_punched_connections_both_ways() {
    let r = up();
    let server = r.spawn("a1", true, &["iperf3", "-s", "-p", "5201", "--forceflush"]);
    let public = r.registered(&server, "tcp", "192.0.2.10:5201");
    server.wait_line("Server listening on ", Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    let (ip, port) = host_port(&public);
    let mut connects = 0;
    for extra in [&[][..], &["-R"]] {
        let mut args = vec!["iperf3", "-c", ip, "-p", port, "-t", "2", "-J", "--connect-timeout", "20000"];
        args.extend_from_slice(extra);
        let out = r.run_ok("b1", true, &args, None, Duration::from_secs(60), &server);
        // Wait for iperf3 to listen again before the next test (real_iperf.rs).
        server.wait_line("Server listening on ", Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
        let log = String::from_utf8_lossy(&out.stderr);
        let paths: Vec<&str> = log.lines().filter_map(|l| l.split_once(&format!("connect tcp {public} via ")).map(|(_, p)| p)).collect();
        assert!(paths.len() >= 2, "iperf3 {extra:?}: a control and a data connection, logged: {paths:?}\n{log}");
        assert!(paths.iter().all(|p| p.starts_with("punched ")), "iperf3 {extra:?}: not every connection punched: {paths:?}\n{log}");
        connects += paths.len() as u64;
        let report = json::parse(&String::from_utf8_lossy(&out.stdout)).unwrap_or_else(|e| panic!("iperf3 {extra:?}: {e}"));
        let sent = num(&report, &["end", "sum_sent", "bytes"]);
        let received = num(&report, &["end", "sum_received", "bytes"]);
        println!("iperf3 {extra:?} punched: sent {sent} bytes, received {received}");
        assert!(received > 1e6, "iperf3 {extra:?}: only {received} bytes received");
        assert!(received <= sent && received >= sent * 0.9, "iperf3 {extra:?}: sent {sent}, received {received}");
    }
    assert_eq!(r.broker_counter("punch_attempts"), connects, "{}", r.daemon.stderr_text());
    assert_eq!(r.broker_counter("punch_succeeded"), connects, "{}", r.daemon.stderr_text());
    assert_eq!(r.broker_counter("relays_opened"), 0, "nothing went through the relay");
    drop(server);
    r.down();
}

/// Occurrences of `needle` in `text`.
fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// One iperf3 UDP test from b1 to `public` (with `extra` and the shim's
/// `env`): its JSON report, the client's stderr, and the bytes the broker
/// host's interface carried meanwhile.
fn iperf3_udp(r: &RealBed, server: &testbed::Proc, public: &str, extra: &[&str], env: &[(&str, &str)]) -> (Value, String, u64) {
    let (ip, port) = host_port(public);
    let mut c = r.cmd("b1", "iperf3", true);
    c.args(["-c", ip, "-p", port, "-u", "-b", "20M", "-t", "2", "-J", "--connect-timeout", "20000"]).args(extra);
    c.env_remove("GCB_PUNCH").envs(env.iter().copied());
    let before = broker_if_bytes(r);
    let out = testbed::run_with_timeout(c, Duration::from_secs(60)).unwrap_or_else(|e| panic!("iperf3 {extra:?}: {e}\nserver:\n{}", server.stderr_text()));
    let carried = broker_if_bytes(r) - before;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "iperf3 {extra:?} failed ({}):\n{stdout}\n{stderr}\nserver:\n{}\nbroker:\n{}", out.status, server.stderr_text(), r.daemon.stderr_text());
    // Wait for iperf3 to listen again before the next test (real_iperf.rs).
    server.wait_line("Server listening on ", Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    let report = json::parse(&stdout).unwrap_or_else(|e| panic!("iperf3 {extra:?}: {e}"));
    (report, stderr, carried)
}

/// iperf3 UDP between the realms (`-u`, 20 Mbit/s for 2 s, forward and
/// `-R`): the client's connected UDP socket waits for its punch, and the
/// server's, connected to the client's first datagram, is connected to the
/// client's mapping; every datagram of the test goes direct. iperf3's report
/// shows the datagrams arrived (loss under 10%, over a megabyte), both shims
/// logged `via punched` for the data socket, the broker counted the punch
/// and its direct path, and its host's interface carried under 1% of the
/// bytes. Then one run relayed (a client that does not offer punching), for
/// the meter and for comparison.
#[test]
fn iperf3_udp_runs_over_punched_paths_both_ways() {
    let r = up();
    let server = r.spawn("a1", true, &["iperf3", "-s", "-p", "5201", "--forceflush"]);
    let public = r.registered(&server, "tcp", "192.0.2.10:5201");
    server.wait_line("Server listening on ", Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    let punched_line = format!("udp to {public}: via punched, reached at ");
    for (i, extra) in [&[][..], &["-R"]].into_iter().enumerate() {
        let server_punched = count(&server.stderr_text(), ": via punched, reached at ");
        let (report, log, carried) = iperf3_udp(&r, &server, &public, extra, &[]);
        let context = || format!("client log:\n{log}\nserver:\n{}\nbroker:\n{}", server.stderr_text(), r.daemon.stderr_text());
        let (bytes, packets, lost) = (num(&report, &["end", "sum", "bytes"]), num(&report, &["end", "sum", "packets"]), num(&report, &["end", "sum", "lost_packets"]));
        let mbps = num(&report, &["end", "sum", "bits_per_second"]) / 1e6;
        println!("iperf3 -u {extra:?} punched: {packets} datagrams, {lost} lost, {bytes} bytes, {mbps:.1} Mbit/s; the broker host carried {carried} bytes");
        assert!(packets > 100.0 && bytes > 1e6, "iperf3 -u {extra:?}: {packets} datagrams, {bytes} bytes\n{}", context());
        assert!(lost <= packets / 10.0, "iperf3 -u {extra:?}: {lost} of {packets} lost\n{}", context());
        assert_eq!(count(&log, &punched_line), 1, "the client's UDP socket was punched\n{}", context());
        assert!(!log.contains("the punch did not answer"), "{}", context());
        assert_eq!(count(&server.stderr_text(), ": via punched, reached at "), server_punched + 1, "the server's UDP socket was punched\n{}", context());
        assert_eq!((r.broker_counter("udp_punch_attempts"), r.broker_counter("udp_punch_direct")), (i as u64 + 1, i as u64 + 1), "{}", context());
        assert!((carried as f64) < bytes * 0.01, "the broker host carried {carried} bytes of {bytes}\n{}", context());
    }
    assert_eq!(r.broker_counter("udp_relayed_to_client") + r.broker_counter("udp_relayed_to_peer"), 0, "no datagram of the tests was relayed");

    // Relayed: the meter sees the datagrams through the broker's host.
    let (report, log, carried) = iperf3_udp(&r, &server, &public, &[], &[("GCB_PUNCH", "0")]);
    let (bytes, packets, lost) = (num(&report, &["end", "sum", "bytes"]), num(&report, &["end", "sum", "packets"]), num(&report, &["end", "sum", "lost_packets"]));
    let mbps = num(&report, &["end", "sum", "bits_per_second"]) / 1e6;
    println!("iperf3 -u relayed: {packets} datagrams, {lost} lost, {bytes} bytes, {mbps:.1} Mbit/s; the broker host carried {carried} bytes");
    assert!(!log.contains("via punched"), "{log}");
    assert!(carried as f64 >= bytes, "a relayed run showed as only {carried} bytes on the broker host's interface ({bytes} sent)");
    drop(server);
    r.down();
}

#[test]
fn iperf3_udp_behind_an_answering_gateway_is_punched_from_the_second_test() {
    // The broker as shipped: a TCP control connection whose punch falls back
    // blocks the pair's TCP punches only, so the UDP ones are still tried.
    let r = RealBed::up_with_nat(Mode::Gcb, 2, &[], NatKinds::new(NatKind::Drop, NatKind::Preserve));
    let server = r.spawn("a1", true, &["iperf3", "-s", "-p", "5201", "--forceflush"]);
    let public = r.registered(&server, "tcp", "192.0.2.10:5201");
    server.wait_line("Server listening on ", Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    let arrived = |report: &Value, context: &dyn Fn() -> String| {
        let (packets, lost) = (num(report, &["end", "sum", "packets"]), num(report, &["end", "sum", "lost_packets"]));
        assert!(packets > 100.0 && lost <= packets / 10.0, "{lost} of {packets} lost\n{}", context());
    };
    let (report, log, _) = iperf3_udp(&r, &server, &public, &[], &[]);
    let context = || format!("client log:\n{log}\nserver:\n{}\nbroker:\n{}", server.stderr_text(), r.daemon.stderr_text());
    arrived(&report, &context);
    assert!(log.contains(&format!("udp connect to {public}: the punch did not answer")), "the listener first misses here\n{}", context());
    wait_for(Duration::from_secs(30), "the server's punch to be over", || server.stderr_text().contains(": its last Dummy sent").then_some(()));

    let (report, log, carried) = iperf3_udp(&r, &server, &public, &[], &[]);
    let context = || format!("client log:\n{log}\nserver:\n{}\nbroker:\n{}", server.stderr_text(), r.daemon.stderr_text());
    arrived(&report, &context);
    assert!(log.contains(&format!("udp to {public}: via punched, reached at ")), "the connector first punches\n{}", context());
    let bytes = num(&report, &["end", "sum", "bytes"]);
    assert!((carried as f64) < bytes * 0.01, "the broker host carried {carried} bytes of {bytes}\n{}", context());
    assert_eq!((r.broker_counter("udp_punch_attempts"), r.broker_counter("udp_punch_direct")), (2, 1), "{}", context());
    // The first test's miss is not cached as a UDP failure (the listener's
    // yield is what fixed it); a control connection's TCP fallback, if any,
    // is cached for TCP alone.
    let fallbacks = r.punch_fallbacks();
    let blocked = punch_blocked(&r);
    println!("TCP punches fallen back: {fallbacks}; the broker's outcome cache: {blocked:?}");
    assert!(blocked.iter().all(|(proto, ..)| proto == "tcp"), "{blocked:?}\n{}", context());
    drop(server);
    r.down();
}
