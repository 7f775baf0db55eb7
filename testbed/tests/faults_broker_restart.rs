//! `gcb-broker` killed with SIGKILL under load and restarted (issue 8).
//!
//! Load at the moment of the kill, with a 2 s heartbeat and a 6 s broker
//! heartbeat timeout: a streaming relayed connection from realm B (GCB client),
//! a streaming connection from a plain client on pub (relayed from the proxy
//! socket), a streaming reversed connection from a GCB client on pub (direct
//! between the hosts, no broker in the path), and an idle registered listener.
//!
//! * Both ends of each relayed stream see the end (EOF or an error) within the
//!   heartbeat timeout; none hangs. The reversed stream keeps flowing.
//! * After the restart every listener registers again with its previous proxy
//!   address (the shim asks for the old port in answer to `ReregisterRequest`).
//! * New connections through every path (relay, plain, reversal, same realm)
//!   carry verified bytes within two heartbeat intervals of the restart, plus
//!   slack for a loaded machine.
//!
//! Needs root, `cargo build --release` and `make -C c-tests`.

#[path = "faults_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::{wait_for, wait_stderr_count, Faults, BROKER};

const HEARTBEAT_S: u64 = 2;

/// Waits for `p`'s `END` line; returns it.
fn end_of(p: &testbed::Proc, within: Duration, what: &str) -> String {
    p.wait_line("END ", within).unwrap_or_else(|e| panic!("{what} did not end within {within:?}: {e}\n{}", p.stderr_text()))
}

#[test]
fn broker_kill_under_load_and_restart() {
    let mut f = Faults::up(HEARTBEAT_S);
    let (server, proxy) = f.peer_server("a1", BROKER, 7200);
    let (idle, idle_proxy) = f.echo_server("a1", BROKER, 7201);
    assert!(proxy.starts_with("203.0.113.10:") && idle_proxy.starts_with("203.0.113.10:"), "{proxy} {idle_proxy}");

    let relayed = f.peer("b1", Some(BROKER), "stream", &proxy);
    let plain = f.peer("pub", None, "stream", &proxy);
    let reversed = f.peer("pub", Some(BROKER), "stream", &proxy);
    let mut accepted = Vec::new();
    for _ in 0..3 {
        accepted.push(server.wait_line("ACCEPT ", support::STARTUP).expect("ACCEPT"));
    }
    for (p, what) in [(&relayed, "relayed"), (&plain, "plain"), (&reversed, "reversed")] {
        p.wait_line("PROGRESS ", support::STARTUP).unwrap_or_else(|e| panic!("{what} stream: {e}\n{}", p.stderr_text()));
    }

    f.kill_broker(BROKER);
    let killed = Instant::now();
    let timeout = Duration::from_secs(3 * HEARTBEAT_S);
    let relayed_end = end_of(&relayed, timeout, "the relayed stream (connector)");
    let plain_end = end_of(&plain, timeout, "the plain stream (connector)");
    assert!(!relayed_end.starts_with("timeout") && !plain_end.starts_with("timeout"), "{relayed_end} / {plain_end}");
    // The listener's side: two of its three connections end, the reversed one does not.
    let mut ended = Vec::new();
    for _ in 0..2 {
        ended.push(end_of(&server, timeout.saturating_sub(killed.elapsed()) + Duration::from_secs(1), "a relayed stream (listener)"));
    }
    assert!(ended.iter().all(|e| !e.contains(" timeout ")), "{ended:?}");
    assert!(reversed.stdout_seen().iter().all(|l| !l.starts_with("END")), "the reversed stream has no broker in its path");
    reversed.wait_line("PROGRESS ", Duration::from_secs(10)).expect("the reversed stream keeps flowing");

    f.start_broker(BROKER, &[]);
    let restarted = Instant::now();
    let context = || format!("{}\nserver:\n{}\nidle:\n{}", f.broker_logs(), server.stderr_text(), idle.stderr_text());
    let bound = Duration::from_secs(2 * HEARTBEAT_S + 10);
    wait_stderr_count(&server, &format!("gcb: registered tcp 192.0.2.10:7200 as {proxy}\n"), 2, bound, &context);
    wait_stderr_count(&idle, &format!("gcb: registered tcp 192.0.2.10:7201 as {idle_proxy}\n"), 2, bound, &context);
    wait_for(bound, || format!("both back in the broker's table\n{}", context()), || {
        let regs = f.registrations(BROKER);
        (regs.contains(&proxy) && regs.contains(&idle_proxy)).then_some(())
    });
    for dest in [&proxy, &idle_proxy] {
        f.echo("b1", Some(BROKER), dest, &["--nonblock"], &context); // relay
        f.echo("pub", None, dest, &[], &context); // plain, relayed from the proxy socket
        f.echo("pub", Some(BROKER), dest, &[], &context); // reversal
        f.echo("a2", Some(BROKER), dest, &[], &context); // same realm
    }
    // Two heartbeat intervals, plus room for eight client processes on a busy machine.
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(2 * HEARTBEAT_S + 20), "new connections took {took:?} after the restart");
    let _ = reversed.terminate();
    drop((relayed, plain, reversed, server, idle));
    f.bed.down().expect("tear down");
}

/// The same for GCB over UDP: proxy UDP sockets and relay rules come back.
#[test]
fn broker_kill_with_udp_rules_and_restart() {
    let mut f = Faults::up(HEARTBEAT_S);
    let srv = support::ctest("echo-server");
    let c = f.cmd("a1", Some(BROKER), &[srv.to_str().unwrap(), "--proto", "udp", "--port", "7210", "--mode", "epoll"]);
    let server = f.bed.spawn_cmd(c).expect("udp echo-server");
    let proxy = server.wait_line("LISTEN udp ", support::STARTUP).expect("LISTEN udp");
    assert!(proxy.starts_with("203.0.113.10:"), "the UDP socket advertised {proxy}");
    let cli = support::ctest("echo-client");
    let udp_echo = |f: &Faults| {
        let args = [cli.to_str().unwrap(), "--proto", "udp", "--connect", &proxy, "--bytes", "512", "--rounds", "5"];
        let out = testbed::run_with_timeout(f.cmd("b1", Some(BROKER), &args), support::CLIENT_TIMEOUT).expect("udp client");
        assert!(out.status.success(), "udp echo: {}\n{}", String::from_utf8_lossy(&out.stdout), f.broker_logs());
    };
    udp_echo(&f);
    f.kill_broker(BROKER);
    f.start_broker(BROKER, &[]);
    let context = || format!("{}\nserver:\n{}", f.broker_logs(), server.stderr_text());
    wait_stderr_count(&server, &format!("as {proxy}\n"), 2, Duration::from_secs(2 * HEARTBEAT_S + 10), &context);
    udp_echo(&f);
    drop(server);
    f.bed.down().expect("tear down");
}

/// A UDP server under the shim that connects its socket to its first client
/// (iperf3's UDP server does) and echoes on the connected socket until
/// `stop`; says which peer and fd it had at the start and at the end.
const CONNECTED_SERVER: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7220))
s.settimeout(120)
print("LISTEN udp %s:%d" % s.getsockname(), flush=True)
data, peer = s.recvfrom(65536)
s.connect(peer)
print("CONNECTED %s:%d %d" % (s.getpeername() + (s.fileno(),)), flush=True)
n = 0
while data != b"stop":
    s.send(b"echo:" + data)
    n += 1
    data = s.recv(65536)
print("DONE %s:%d %d %d" % (s.getpeername() + (s.fileno(), n)), flush=True)
s.send(b"done")
"#;

/// A plain client that sends a numbered datagram every 100 ms (iperf3 -u
/// style) until the file argv[2] exists, checks every echo byte for byte and
/// its source, and prints `REPLY seq sent_unix_ms ok|BAD`.
const STREAMING_CLIENT: &str = r#"
import os, socket, sys, time
ip, port = sys.argv[1].split(":")
dest = (ip, int(port))
def payload(n):
    return ("seq:%d:" % n).encode() + bytes((n * 7 + i) % 256 for i in range(200))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent, n, end = {}, 0, time.time() + 150
while time.time() < end and not os.path.exists(sys.argv[2]):
    n += 1
    sent[n] = time.time()
    s.sendto(payload(n), dest)
    tick = time.time() + 0.1
    while time.time() < tick:
        s.settimeout(max(tick - time.time(), 0.001))
        try:
            data, src = s.recvfrom(65536)
        except socket.timeout:
            break
        k = int(data.split(b":")[2]) if data.startswith(b"echo:seq:") else 0
        ok = k in sent and data == b"echo:" + payload(k) and src == dest
        print("REPLY %d %d %s" % (k, int(sent.get(k, 0) * 1000), "ok" if ok else "BAD %r from %s" % (data[:40], src)), flush=True)
s.settimeout(0.2)
for _ in range(50):
    s.sendto(b"stop", dest)
    try:
        if s.recvfrom(65536)[0] == b"done":
            print("DONE", flush=True)
            break
    except socket.timeout:
        pass
"#;

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A connected UDP socket under the shim (its broker channel) keeps working
/// across a broker restart, with the same fd and `getpeername`: the shim asks
/// for the channel again when it registers again.
#[test]
fn broker_kill_with_a_connected_udp_socket_and_restart() {
    let mut f = Faults::up(HEARTBEAT_S);
    let py = testbed::python3().to_str().unwrap().to_string();
    let server = f.bed.spawn_cmd(f.cmd("a1", Some(BROKER), &[&py, "-u", "-c", CONNECTED_SERVER])).expect("server");
    let proxy = server.wait_line("LISTEN udp ", support::STARTUP).unwrap_or_else(|e| panic!("{e}"));
    assert!(proxy.starts_with("203.0.113.10:"), "the UDP socket advertised {proxy}");
    let stop = std::env::temp_dir().join(format!("faults-{}-udp-stop", f.bed.prefix()));
    let _ = std::fs::remove_file(&stop);
    let client = f.bed.spawn_cmd(f.cmd("pub", None, &[&py, "-u", "-c", STREAMING_CLIENT, &proxy, stop.to_str().unwrap()])).expect("client");
    let context = |f: &Faults| format!("{}\nserver:\n{}\nclient:\n{}", f.broker_logs(), server.stderr_text(), client.stderr_text());
    let connected = server.wait_line("CONNECTED ", support::STARTUP).unwrap_or_else(|e| panic!("{e}\n{}", context(&f)));
    assert!(connected.starts_with("203.0.113.20:"), "connected to the client on pub: {connected}");
    // The next REPLY line, verified; when its datagram was sent.
    let reply = |f: &Faults, within: Duration| {
        let line = client.wait_line("REPLY ", within).unwrap_or_else(|e| panic!("{e}\n{}", context(f)));
        let fields: Vec<&str> = line.splitn(3, ' ').collect();
        assert_eq!(fields[2], "ok", "an echo's bytes or source: {line}\n{}", context(f));
        fields[1].parse::<u64>().unwrap()
    };
    for _ in 0..3 {
        reply(&f, support::STARTUP);
    }

    f.kill_broker(BROKER);
    std::thread::sleep(Duration::from_secs(1));
    f.start_broker(BROKER, &[]);
    let (restarted, restarted_ms) = (Instant::now(), unix_ms());
    // Echoes of datagrams sent before the restart may still be queued.
    let bound = Duration::from_secs(2 * HEARTBEAT_S + 20);
    while reply(&f, bound.saturating_sub(restarted.elapsed())) < restarted_ms {}
    let took = restarted.elapsed();
    eprintln!("the first echo of a datagram sent after the broker restart came {took:?} after it");
    assert!(took < bound, "{took:?}\n{}", context(&f));
    for _ in 0..5 {
        reply(&f, support::STARTUP);
    }

    std::fs::write(&stop, b"").expect("stop file");
    let done = server.wait_line("DONE ", support::STARTUP).unwrap_or_else(|e| panic!("{e}\n{}", context(&f)));
    client.wait_line("DONE", support::STARTUP).unwrap_or_else(|e| panic!("{e}\n{}", context(&f)));
    let _ = std::fs::remove_file(&stop);
    assert!(done.starts_with(&connected), "the same fd and getpeername after the restart: {done} vs {connected}");
    assert!(server.stderr_text().contains(" reopened at "), "the shim asked for the channel again:\n{}", context(&f));
    assert_eq!(f.broker(BROKER).stderr_text().matches(" opened for ").count(), 1, "one channel on the new broker:\n{}", context(&f));
    drop((client, server));
    f.bed.down().expect("tear down");
}
