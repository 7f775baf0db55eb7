//! A stranger at a UDP punch's ports (issue 13, docs/hole-punching.md,
//! "UDP"): the C echo server under the shim on a1 (realm A, behind GA), a
//! Python client under the shim on b1 (realm B, behind GB), both gateways
//! dropping strangers' packets, the broker punching.
//!
//! As in `punch_faults.rs` for TCP, the test makes the strongest stranger
//! there is and gives it all the time it needs: a stranger from any other
//! address is stopped by the gateways themselves (they drop what no flow of
//! their hosts expects), which would prove nothing about the punch. GA's
//! forward chain drops every UDP datagram from a1 to GB (an nft rule with a
//! counter, so the test sees the listener really punched), so the real
//! listener's Dummies never reach the connector while its side of the punch
//! runs normally. The client binds a fixed port, so its mapping is known
//! (GB keeps ports); a plain socket on GA, bound to the listener's mapping
//! (GA's address and the server's port, which GA keeps), sends to the
//! client's mapping from before the client starts. Its datagrams come from
//! exactly where the listener's would, so GB lets them in once the
//! connector's first Dummy opened its side: only the proof stands. To each
//! datagram it hears from the connector (its Dummies, carrying the
//! connector's proof) it answers with junk, with that Dummy sent back, and
//! with a `DummyAck` carrying the same proof.
//!
//! For a connected client socket (`connect`, `send`, `recvfrom`) and for an
//! unconnected one (`sendto`, `recvfrom`), the test asserts that the stranger
//! heard the connector's Dummies and that none carried the token; that the
//! client never logged `via punched` and the broker counted no direct path;
//! that the client got an echo of every datagram it sent, each named as the
//! server's proxy address; and that nothing the program received named as
//! the proxy was anything but those echoes (the stranger's junk reaches an
//! unconnected program, as it would without NAT, only under the stranger's
//! own address, and never a connected one).
//!
//! Needs root, `cargo build --release` (libgcb.so, gcb-broker) and
//! `make -C c-tests`.

use std::time::Duration;

use proto::gcb::{Message, Token};
use testbed::real::{host_port, Mode, RealBed};
use testbed::{python3, NatKind, NatKinds, Proc};

mod punch_support;

use punch_support::ctest;

const GA: &str = "203.0.113.1";
const GB: &str = "203.0.113.2";
const SERVER_PORT: u16 = 7486;
const STARTUP: Duration = Duration::from_secs(20);

/// Sends `STRANGER knock` from IP:PORT to IP:PORT every 20 ms for SECONDS;
/// to each datagram from the target it answers with junk, that datagram
/// sent back, and the `DummyAck` template (hex, argv 6) with that
/// datagram's last 8 bytes (a Dummy's token field) in its own.
const STRANGER: &str = r#"
import select, socket, sys, time
bip, bport, tip, tport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
end = time.monotonic() + float(sys.argv[5])
ack = bytes.fromhex(sys.argv[6])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((bip, bport))
print("STRANGER ready", flush=True)
sent = 0
while time.monotonic() < end:
    s.sendto(b"STRANGER knock", (tip, tport)); sent += 1
    r, _, _ = select.select([s], [], [], 0.02)
    if not r:
        continue
    try:
        d, src = s.recvfrom(65536)
    except OSError:
        continue
    print("STRANGER heard from=%s:%d %s" % (src[0], src[1], d.hex()), flush=True)
    if src != (tip, tport) or len(d) < 8:
        continue
    for forged in (b"STRANGER junk", d, ack[:-8] + d[-8:]):
        s.sendto(forged, (tip, tport)); sent += 1
print("STRANGER done sent=%d" % sent, flush=True)
"#;

/// Binds PORT, (with `connected`) connects to IP:PORT, and sends `ping N`
/// 40 times, 50 ms apart, each until its echo is back; prints every
/// datagram it receives with the name `recvfrom` gives.
const CLIENT: &str = r#"
import socket, sys, time
ip, port, mine, connected = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", mine))
if connected:
    s.connect((ip, port))
    print("PEER %s:%d" % s.getpeername(), flush=True)
s.settimeout(10)
for i in range(40):
    msg = b"ping %d" % i
    if connected:
        s.send(msg)
    else:
        s.sendto(msg, (ip, port))
    while True:
        d, src = s.recvfrom(2048)
        print("GOT from=%s:%d %s" % (src[0], src[1], d.hex()), flush=True)
        if d == msg:
            break
    time.sleep(0.05)
print("CLIENT done", flush=True)
"#;

fn nft(r: &RealBed, host: &str, args: &[&str]) {
    let mut all = vec!["nft"];
    all.extend_from_slice(args);
    let out = r.bed.run(host, &all, STARTUP).expect("nft");
    assert!(out.status.success(), "nft {args:?} on {host}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The token of the broker's `punch TOKEN: connector C, listener L` line for
/// these mappings.
fn punch_token(broker_log: &str, connector: &str, listener: &str) -> Option<String> {
    let tail = format!(": connector {connector}, listener {listener}");
    let line = broker_log.lines().find(|l| l.ends_with(&tail))?;
    Some(line.split(" punch ").nth(1)?.split(':').next()?.to_string())
}

/// One run of the client from `port` (connected or not) while a stranger
/// sits at the listener's mapping; asserts what the module docs say.
fn one_run(r: &RealBed, server: &Proc, public: &str, port: u16, connected: bool) {
    let ack_template: String = proto::gcb::encode(&Message::DummyAck { token: Token(0) }, 1).expect("encode").iter().map(|b| format!("{b:02x}")).collect();
    let mut c = r.bed.cmd("ga", python3());
    c.args(["-c", STRANGER, GA, &SERVER_PORT.to_string(), GB, &port.to_string(), "6", &ack_template]);
    let stranger = r.bed.spawn_cmd(c).expect("stranger");
    stranger.wait_line("STRANGER ready", STARTUP).unwrap_or_else(|e| panic!("{e}: {}", stranger.stderr_text()));

    let (ip, pport) = host_port(public);
    let mut c = r.cmd("b1", python3(), true);
    c.args(["-c", CLIENT, ip, pport, &port.to_string(), if connected { "1" } else { "0" }]);
    let out = testbed::run_with_timeout(c, Duration::from_secs(90)).unwrap_or_else(|e| panic!("client: {e}"));
    let (stdout, log) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    stranger.wait_timeout(Duration::from_secs(30)).unwrap_or_else(|| panic!("the stranger hung"));
    let heard: Vec<String> = stranger.stdout_seen().into_iter().filter(|l| l.starts_with("STRANGER heard ")).collect();
    let context = format!(
        "connected: {connected}\nclient stdout:\n{stdout}\nclient log:\n{log}\nstranger: {heard:?} {}\nserver:\n{}\nbroker:\n{}",
        stranger.stderr_text(),
        server.stderr_text(),
        r.daemon.stderr_text()
    );
    assert!(out.status.success(), "the client failed ({})\n{context}", out.status);
    assert!(stdout.contains("CLIENT done"), "{context}");
    if connected {
        assert!(stdout.contains(&format!("PEER {public}\n")), "getpeername names the proxy\n{context}");
    }

    // The stranger sat at the listener's mapping, as the broker saw it, and
    // heard the connector's Dummies, never the token.
    let connector = format!("{GB}:{port}");
    let listener = format!("{GA}:{SERVER_PORT}");
    let token = punch_token(&r.daemon.stderr_text(), &connector, &listener).unwrap_or_else(|| panic!("the broker punched between other mappings\n{context}"));
    let from_connector: Vec<&String> = heard.iter().filter(|l| l.contains(&format!("from={connector} "))).collect();
    assert!(!from_connector.is_empty(), "the stranger never heard the connector: it tested nothing\n{context}");
    for l in &from_connector {
        assert!(!l.ends_with(&token), "the token went to the stranger: {l}\n{context}");
    }

    // The program got every echo, named as the proxy, and nothing else under
    // that name; a connected one got nothing else at all.
    let got: Vec<(&str, String)> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("GOT from="))
        .map(|l| {
            let (from, hex) = l.split_once(' ').unwrap_or((l, ""));
            let bytes: Vec<u8> = (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0)).collect();
            (from, String::from_utf8_lossy(&bytes).into_owned())
        })
        .collect();
    let echoes: Vec<&String> = got.iter().filter(|(from, _)| *from == public).map(|(_, d)| d).collect();
    let want: Vec<String> = (0..40).map(|i| format!("ping {i}")).collect();
    assert_eq!(echoes, want.iter().collect::<Vec<_>>(), "every echo, in order, and nothing else named as the proxy\n{context}");
    let others: Vec<&(&str, String)> = got.iter().filter(|(from, _)| *from != public).collect();
    if connected {
        assert!(others.is_empty(), "a connected socket received from elsewhere: {others:?}\n{context}");
    }
    for (from, d) in &others {
        assert_eq!(*from, listener, "only the stranger's own address: {d:?}\n{context}");
    }
    assert!(!log.contains("via punched"), "the client's punch must not open to the stranger\n{context}");
    if connected {
        assert!(log.contains(&format!("udp connect to {public}: the punch did not answer")), "the connect went to the relay\n{context}");
    }
}

#[test]
fn a_stranger_at_the_listeners_mapping_gets_no_datagram_through() {
    let r = RealBed::up_with_nat(Mode::Gcb, 2, &["--log", "debug"], NatKinds::new(NatKind::Drop, NatKind::Drop));
    let mut c = r.cmd("a1", ctest("echo-server"), true);
    c.args(["--proto", "udp", "--port", &SERVER_PORT.to_string(), "--mode", "poll"]);
    let server = r.bed.spawn_cmd(c).expect("echo-server");
    let public = r.registered(&server, "udp", &format!("192.0.2.10:{SERVER_PORT}"));
    // The real listener's datagrams never leave realm A towards GB.
    nft(&r, "ga", &["add", "counter", "inet", "filter", "listener_to_gb"]);
    let rule = "insert rule inet filter forward ip saddr 192.0.2.10 ip daddr 203.0.113.2 meta l4proto udp counter name listener_to_gb drop";
    nft(&r, "ga", &rule.split(' ').collect::<Vec<_>>());

    one_run(&r, &server, &public, 7501, true);
    one_run(&r, &server, &public, 7502, false);
    assert!(r.bed.nft_counter("ga", "listener_to_gb").expect("counter") > 0, "the listener punched, and GA held its datagrams back");
    assert_eq!(r.broker_counter("udp_punch_attempts"), 2);
    assert_eq!(r.broker_counter("udp_punch_direct"), 0, "nothing was punched");
    drop(server);
    r.down();
}
