//! The punched path under fault (issue 13, docs/hole-punching.md): the C
//! echo server under the shim on a1 (realm A), the echo client under the
//! shim on b1 (realm B, GB drops strangers' packets), the broker punching.
//!
//! * **A stranger at the predicted port gets nothing through.** On the bed a
//!   punch is over in a millisecond, so no stranger could be timed against a
//!   real one; and a stranger from any other address is stopped by GB itself
//!   (it drops what no connection of b1's expects), which would prove nothing
//!   about the punch. So the test makes the strongest stranger there is, and
//!   gives it all the time it needs. GA drops strangers too, so that each of
//!   the connector's SYNs to it waits out its attempt's 50 ms instead of
//!   drawing a reset: a connector whose every SYN is reset at once makes its
//!   1000 attempts within a quarter second, and would stop dialing before
//!   any stranger could start. GA's forward chain drops every TCP
//!   packet from a1 to GB (an nft rule with a counter, so the test sees the
//!   listener really dialed), which keeps the real listener's SYNs from ever
//!   reaching the connector while its side of the punch runs normally; the
//!   broker's budget is fixed at 3 s; and once the broker logs the meeting, a plain
//!   socket on GA, bound to the listener's mapping (GA's address and port as
//!   the broker saw them), dials the connector's mapping. Its packets come
//!   from exactly where the listener's would, so GB lets them in and the
//!   connector's address check passes: only the hello check stands. The
//!   stranger must get a connection (else the test fails: it would have
//!   checked nothing). In an early punch (the connector's rendezvous came
//!   with its `Connect`, as it does from this shim to its own broker) the
//!   connector says nothing on a punched connection before the listener's
//!   proof checked, so the stranger waits a moment for bytes that must not
//!   come, then speaks first: junk on its first connection; on its second a
//!   hello of the listener's role with a made-up proof; and on its third a
//!   hello of the listener's role carrying the token itself in the proof's
//!   place (which the test hands it from the broker's log, as if it had
//!   leaked). The test then asserts that the connector
//!   reported `Failed(CheckFailed)` to the broker, that each stranger
//!   connection got not a byte from the connector (neither its proof nor
//!   the token) before the connector closed it, that
//!   the program's connect ended on the relay with every echoed byte
//!   verified (junk from the stranger would fail that), and that nothing was
//!   punched.
//! * **A listener that died before the punch gives ECONNREFUSED, not a
//!   hang.** A SIGKILLed server leaves its registration at the broker (no
//!   `Unregister`; its heartbeats would take 6 s to be missed), so the broker
//!   still decides a punch (`punch_attempts` counts it) and sends
//!   `PunchConnect` to its holder; that draws an ICMP port unreachable, the
//!   broker fails the pairing with `NotRegistered`, and the connector's
//!   rendezvous hello is rejected with it: the program's connect fails with
//!   ECONNREFUSED within 3 s (the punch budget is 0.5 s at most, the pairing timeout
//!   10 s, the client's own bound 30 s), blocking and non-blocking alike.
//!   Then the same for a server stopped (SIGSTOP) before the connect and
//!   killed only once the broker has logged its punch decision: its
//!   `PunchConnect` lies unread until the kill, and the next retransmission
//!   (they go at 50, 150, 350, 750 and 1550 ms) draws the ICMP error. The
//!   attempt ends counted as vanished.
//!
//! Needs root, `cargo build --release` (libgcb.so, gcb-broker) and
//! `make -C c-tests`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use proto::gcb::Token;
use testbed::real::{Mode, RealBed};
use testbed::{python3, workspace_root, NatKind, NatKinds, Proc};

const GA: &str = "203.0.113.1";
const GB: &str = "203.0.113.2";
const STARTUP: Duration = Duration::from_secs(20);

fn ctest(name: &str) -> PathBuf {
    let p = workspace_root().join("c-tests/build").join(name);
    assert!(p.exists(), "{} is missing: run `make -C c-tests` (scripts/test does)", p.display());
    p
}

fn up(ga: NatKind, broker_args: &[&str]) -> RealBed {
    RealBed::up_with_nat(Mode::Gcb, 2, broker_args, NatKinds::new(ga, NatKind::Drop))
}

/// The echo server on a1 under the shim, registered; its proxy address.
fn server(r: &RealBed, port: u16) -> (Proc, String) {
    let mut c = r.cmd("a1", ctest("echo-server"), true);
    c.args(["--proto", "tcp", "--port", &port.to_string(), "--mode", "epoll"]);
    let server = r.bed.spawn_cmd(c).expect("echo-server");
    let public = r.registered(&server, "tcp", &format!("192.0.2.10:{port}"));
    (server, public)
}

/// The echo client on b1 under the shim, to `dest`, its connect bounded by
/// 30 s (far past anything the tests allow).
fn client(r: &RealBed, dest: &str, nonblock: bool) -> std::process::Command {
    let mut c = r.cmd("b1", ctest("echo-client"), true);
    c.args(["--proto", "tcp", "--connect", dest, "--bytes", "100000", "--rounds", "3", "--timeout-ms", "30000"]);
    if nonblock {
        c.arg("--nonblock");
    }
    c.env_remove("GCB_PUNCH");
    c
}

/// Dials IP:PORT from IP:PORT until it has had three connections or its
/// time is up; on each, reads what the connector says within 0.3 s (it
/// must say nothing), then sends junk (the first), a hello of the
/// listener's role with a made-up proof (the second), or one with the token
/// (hex, argv 6) in the proof's place (the third), and reads to the end.
const STRANGER: &str = r#"
import select, socket, sys, time
bip, bport, tip, tport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
end = time.monotonic() + float(sys.argv[5])
token = bytes.fromhex(sys.argv[6])
conns = attempts = 0
while time.monotonic() < end and conns < 3:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((bip, bport))
    except OSError:
        s.close(); time.sleep(0.005); continue
    s.setblocking(False)
    attempts += 1
    s.connect_ex((tip, tport))
    _, w, _ = select.select([], [s], [], 0.1)
    if not w or s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        s.close(); time.sleep(0.002); continue
    conns += 1
    s.setblocking(True); s.settimeout(0.3)
    first = b""
    try:
        while len(first) < 22:
            b = s.recv(22 - len(first))
            if not b:
                break
            first += b
    except OSError:
        pass
    s.settimeout(3)
    hello = b"GCBJ\x01\x02\x00\x00"
    addr = socket.inet_aton(bip) + bport.to_bytes(2, "big")
    if conns == 1:
        mine = bytes(range(1, 23))
    elif conns == 2:
        mine = hello + bytes(range(200, 208)) + addr
    else:
        mine = hello + token + addr
    try:
        s.sendall(mine)
    except OSError:
        pass
    rest, how = b"", "eof"
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            rest += b
    except socket.timeout:
        how = "timeout"
    except OSError:
        how = "reset"
    print("STRANGER conn=%d first=%s rest=%d end=%s" % (conns, first.hex(), len(rest), how), flush=True)
    s.close()
print("STRANGER done conns=%d attempts=%d" % (conns, attempts), flush=True)
"#;

/// The token (hex) and the observed mappings in the broker's `punch TOKEN:
/// connector IP:PORT (local …), listener IP:PORT (local …) are here` line.
fn meeting(broker_log: &str) -> Option<(String, String, String)> {
    let line = broker_log.lines().find(|l| l.contains("are here") && l.contains(": connector "))?;
    let token = line.split(": connector ").next()?.rsplit(' ').next()?.to_string();
    let connector = line.split(": connector ").nth(1)?.split_whitespace().next()?.to_string();
    let listener = line.split(", listener ").nth(1)?.split_whitespace().next()?.to_string();
    Some((token, connector, listener))
}

fn nft(r: &RealBed, host: &str, args: &[&str]) {
    let mut all = vec!["nft"];
    all.extend_from_slice(args);
    let out = r.bed.run(host, &all, STARTUP).expect("nft");
    assert!(out.status.success(), "nft {args:?} on {host}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_stranger_at_the_listeners_mapping_gets_nothing_through() {
    // A fixed 3 s budget (the floor as high as the ceiling): the bed's round
    // trips alone would give the 200 ms floor, too short for a stranger
    // started on a loaded machine.
    let r = up(NatKind::Drop, &["--log", "debug", "--punch-budget-ms", "3000", "--punch-budget-min-ms", "3000"]);
    let (server, public) = server(&r, 7485);
    // The real listener's packets never leave realm A towards GB.
    nft(&r, "ga", &["add", "counter", "inet", "filter", "listener_to_gb"]);
    let rule = "insert rule inet filter forward ip saddr 192.0.2.10 ip daddr 203.0.113.2 meta l4proto tcp counter name listener_to_gb drop";
    nft(&r, "ga", &rule.split(' ').collect::<Vec<_>>());

    let client = r.bed.spawn_cmd(client(&r, &public, false)).expect("echo-client");
    let (token, connector, listener) = testbed::wait_for(STARTUP, "the broker logs the meeting", || meeting(&r.daemon.stderr_text()));
    let token = Token(u64::from_str_radix(&token, 16).unwrap_or_else(|_| panic!("the broker's token {token:?}")));
    let token_hex = format!("{:016x}", token.0);
    let (c_ip, c_port) = connector.rsplit_once(':').expect("connector IP:PORT");
    let (l_ip, l_port) = listener.rsplit_once(':').expect("listener IP:PORT");
    assert_eq!((c_ip, l_ip), (GB, GA), "the mappings the broker saw");
    // Until the connector's budget is nearly over.
    let mut c = r.bed.cmd("ga", python3());
    c.args(["-c", STRANGER, l_ip, l_port, c_ip, c_port, "2.8", &token_hex]);
    let stranger = r.bed.spawn_cmd(c).expect("stranger");

    let context = |client: &Proc| {
        format!(
            "client stdout: {:?}\nclient stderr:\n{}\nstranger: {:?} {}\nserver:\n{}\nbroker:\n{}",
            client.stdout_seen(),
            client.stderr_text(),
            stranger.stdout_seen(),
            stranger.stderr_text(),
            server.stderr_text(),
            r.daemon.stderr_text()
        )
    };
    let status = client.wait_timeout(Duration::from_secs(60)).unwrap_or_else(|| panic!("the client hung\n{}", context(&client)));
    stranger.wait_timeout(Duration::from_secs(20)).unwrap_or_else(|| panic!("the stranger hung\n{}", context(&client)));
    assert!(status.success(), "echo-client failed ({status})\n{}", context(&client));
    let out = client.stdout_seen();
    let summary = out.iter().find(|l| l.starts_with("SUMMARY ")).unwrap_or_else(|| panic!("no SUMMARY\n{}", context(&client)));
    assert!(summary.contains(" runs=1 ok=1 "), "every echoed byte verified: {summary}\n{}", context(&client));
    assert!(client.stderr_text().contains(&format!("connect tcp {public} via relay")), "the connect ended on the relay\n{}", context(&client));

    // The stranger did reach the connector's punch, and got only its hello,
    // with the connector's proof and never the token.
    let lines = stranger.stdout_seen();
    let conns: Vec<&String> = lines.iter().filter(|l| l.starts_with("STRANGER conn=")).collect();
    assert_eq!(conns.len(), 3, "the stranger tried junk, a made-up proof and the raw token\n{}", context(&client));
    for l in &conns {
        let first = l.split("first=").nth(1).and_then(|v| v.split(" rest=").next());
        assert_eq!(first, Some(""), "the connector said something before the listener's proof checked: {l}");
        assert!(l.contains(" rest=0 ") && !l.ends_with("end=timeout"), "the connector must close the stranger's connection after its bytes: {l}");
    }

    println!("stranger: {lines:?}");
    let broker = r.daemon.stderr_text();
    assert!(broker.contains("the Connector reported Failed(CheckFailed)"), "the connector's check failed\n{}", context(&client));
    assert!(r.bed.nft_counter("ga", "listener_to_gb").expect("counter") > 0, "the listener dialed, and GA held its packets back");
    assert_eq!(r.broker_counter("punch_attempts"), 1);
    assert_eq!(r.broker_counter("punch_succeeded"), 0, "nothing was punched");
    let fallbacks = r.broker_counter("punch_fallbacks_check_failed") + r.broker_counter("punch_fallbacks_timeout");
    assert_eq!(fallbacks, 1, "the first report to arrive names the fallback's reason\n{broker}");
    assert_eq!(r.broker_counter("relays_opened"), 1);
    drop((client, stranger, server));
    r.down();
}

/// Waits for the client started at `since` to exit; asserts it failed its
/// connect with ECONNREFUSED within `bound`.
fn refused_within(client: Proc, since: Instant, bound: Duration, context: &dyn Fn() -> String) {
    let status = client.wait_timeout(Duration::from_secs(60)).unwrap_or_else(|| panic!("the client hung\n{}", context()));
    let took = since.elapsed();
    let out = client.stdout_seen().join("\n");
    assert_eq!(status.code(), Some(3), "a failed connect: {out}\n{}\n{}", client.stderr_text(), context());
    assert!(out.contains("CONNECT-FAILED ECONNREFUSED"), "{out}\n{}\n{}", client.stderr_text(), context());
    println!("refused after {took:?}");
    assert!(took < bound, "refused only after {took:?}\n{}", context());
}

#[test]
fn a_listener_that_died_before_the_punch_is_refused_not_waited_for() {
    let r = up(NatKind::Preserve, &["--log", "debug"]);
    let context = || r.daemon.stderr_text();
    for (i, nonblock) in [false, true].into_iter().enumerate() {
        let (server, public) = server(&r, 7490 + i as u16);
        server.kill();
        let t = Instant::now();
        let client = r.bed.spawn_cmd(client(&r, &public, nonblock)).expect("echo-client");
        refused_within(client, t, Duration::from_secs(3), &context);
    }

    // Decided while the server lived (stopped), killed before it could meet.
    let (server, public) = server(&r, 7492);
    // SAFETY: a signal to our own child, by its PID.
    assert_eq!(unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGSTOP) }, 0);
    let client = r.bed.spawn_cmd(client(&r, &public, false)).expect("echo-client");
    let decided = format!("to {public} (listener 192.0.2.10:7492");
    testbed::wait_for(STARTUP, "the broker decides the punch", || {
        r.daemon.stderr_text().lines().any(|l| l.contains(&decided) && l.ends_with(": punch")).then_some(())
    });
    let t = Instant::now();
    server.kill();
    // The next retransmission of PunchConnect draws the ICMP error.
    refused_within(client, t, Duration::from_secs(3), &context);

    assert_eq!(r.broker_counter("punch_attempts"), 3, "{}", context());
    assert_eq!(r.broker_counter("punch_vanished"), 3, "each attempt ended, with no connection");
    assert_eq!(r.broker_counter("commands_failed_not_registered"), 3);
    assert_eq!(r.broker_counter("punch_succeeded"), 0);
    assert_eq!(r.broker_counter("relays_opened"), 0);
    r.down();
}
