//! GCB for UDP, the socket life cycles beyond one bound socket, end to end in
//! the NAT test bed: Python servers on a1 (realm A) under `scripts/gcb-run`,
//! clients that check every reply's bytes and the address it came from.
//!
//! * A socket `connect`ed to a peer the broker relays, and a second socket
//!   bound to the same port (SO_REUSEPORT), as iperf3's UDP server does: the
//!   connected peer's datagrams reach the connected socket, another peer's the
//!   second one, both answer from the proxy address, and closing the first
//!   leaves the second registered.
//! * A registered socket handed to an `exec`'d image, and one used by a
//!   forked child: the same proxy address there, and the echo works.
//! * A socket connected through a channel handed to an `exec`'d image: there
//!   it is still connected to its peer, `getpeername` and `recvfrom` name the
//!   peer (not the channel), and its replies reach the peer.
//!
//! Needs root and `cargo build --release` (libgcb.so, gcb-broker).

use std::path::Path;
use std::time::Duration;

use testbed::real::{Mode, RealBed, STARTUP};
use testbed::Proc;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// Sends each argument after the first (the server) in turn, waiting for its
/// reply; prints what came back and from where.
const CLIENT: &str = r#"
import socket, sys
ip, port = sys.argv[1].split(":")
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(20)
for word in sys.argv[2:]:
    c.sendto(word.encode(), (ip, int(port)))
    data, src = c.recvfrom(4096)
    print("GOT %s %s:%d" % (data.decode(), src[0], src[1]), flush=True)
"#;

/// Two sockets on port 7801: the first is connected to its first client, the
/// second (bound right after, like iperf3's next listener) serves the next.
const TWO_SOCKETS: &str = r#"
import socket
def bound():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", 7801))
    s.settimeout(60)
    return s
first = bound()
print("LISTEN udp %s:%d" % first.getsockname(), flush=True)
data, a = first.recvfrom(4096)
first.connect(a)
second = bound()
print("NAMES %s:%d %s:%d %s:%d" % (first.getsockname() + second.getsockname() + first.getpeername()), flush=True)
first.send(b"first:" + data)
data = first.recv(4096)
first.send(b"first:" + data)
data, b = second.recvfrom(4096)
first.close()
second.sendto(b"second:" + data, b)
data, b2 = second.recvfrom(4096)
second.sendto(b"second:" + data, b2)
print("SECOND SAW %s:%d %s:%d" % (b + b2), flush=True)
"#;

/// A registered socket on port 7802 that goes on in an exec'd image of this
/// script (`exec`) or in a forked child (`fork`), echoing two datagrams there.
const HAND_OVER: &str = r#"
import os, socket, sys
def serve(s, how):
    s.settimeout(60)
    print("CHILD %s:%d" % s.getsockname(), flush=True)
    for _ in range(2):
        data, peer = s.recvfrom(4096)
        s.sendto(how.encode() + b":" + data, peer)
if len(sys.argv) == 3:
    serve(socket.socket(fileno=int(sys.argv[2])), "exec")
    sys.exit(0)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7802))
print("LISTEN udp %s:%d" % s.getsockname(), flush=True)
if sys.argv[1] == "exec":
    os.set_inheritable(s.fileno(), True)
    os.execv(sys.executable, [sys.executable, sys.argv[0], "exec", str(s.fileno())])
pid = os.fork()
if pid == 0:
    serve(s, "fork")
    os._exit(0)
os.waitpid(pid, 0)
"#;

/// A socket on port 7803 connected to its first client (a channel), then
/// handed to an exec'd image of this script, which names its peer and
/// echoes two datagrams on it.
const CONNECTED_EXEC: &str = r#"
import os, socket, sys
if len(sys.argv) == 2:
    s = socket.socket(fileno=int(sys.argv[1]))
    s.settimeout(60)
    print("EXEC %s:%d %s:%d" % (s.getsockname() + s.getpeername()), flush=True)
    for _ in range(2):
        data, peer = s.recvfrom(4096)
        print("FROM %s:%d" % peer, flush=True)
        s.send(b"exec:" + data)
    sys.exit(0)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7803))
s.settimeout(60)
print("LISTEN udp %s:%d" % s.getsockname(), flush=True)
data, peer = s.recvfrom(4096)
s.connect(peer)
print("CONNECTED %s:%d" % peer, flush=True)
s.send(b"first:" + data)
os.set_inheritable(s.fileno(), True)
os.execv(sys.executable, [sys.executable, sys.argv[0], str(s.fileno())])
"#;

fn python() -> &'static Path {
    testbed::python3()
}

/// Runs the client on `host` against `proxy` with `words`; its GOT lines.
fn client(r: &RealBed, host: &str, shim: bool, proxy: &str, words: &[&str], server: &Proc) -> Vec<String> {
    let mut args = vec![python().to_str().unwrap(), "-c", CLIENT, proxy];
    args.extend_from_slice(words);
    let out = r.run_ok(host, shim, &args, None, CLIENT_TIMEOUT, server);
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.strip_prefix("GOT ")).map(str::to_string).collect()
}

fn replies(how: &str, words: &[&str], proxy: &str) -> Vec<String> {
    words.iter().map(|w| format!("{how}:{w} {proxy}")).collect()
}

#[test]
fn a_connected_socket_and_a_second_one_on_its_port() {
    let r = RealBed::up(Mode::Gcb);
    let server = r.spawn("a1", true, &[python().to_str().unwrap(), "-c", TWO_SOCKETS]);
    let proxy = server.wait_line("LISTEN udp ", STARTUP).unwrap_or_else(|e| panic!("{e}: {}", server.stderr_text()));
    assert!(proxy.starts_with("203.0.113.10:"), "{proxy}");
    // A plain client on pub talks to the first socket, which connects to it.
    let got = client(&r, "pub", false, &proxy, &["hello", "again"], &server);
    let detail = || format!("server:\n{}\nbroker:\n{}", server.stderr_text(), r.daemon.stderr_text());
    assert_eq!(got, replies("first", &["hello", "again"], &proxy), "{}", detail());
    let names = server.wait_line("NAMES ", STARTUP).unwrap();
    let names: Vec<&str> = names.split(' ').collect();
    assert_eq!(&names[..2], &[proxy.as_str(), proxy.as_str()], "both sockets report the proxy address: {}", detail());
    assert!(names[2].starts_with("203.0.113.20:"), "the connected peer is the client on pub: {names:?}");
    // A GCB client in realm B (relayed) reaches the second socket, also after
    // the first was closed.
    let got = client(&r, "b1", true, &proxy, &["b1", "b2"], &server);
    assert_eq!(got, replies("second", &["b1", "b2"], &proxy), "{}", detail());
    let seen = server.wait_line("SECOND SAW ", STARTUP).unwrap();
    assert!(seen.split(' ').all(|a| a.starts_with("203.0.113.2:")), "realm B's NAT address: {seen}");
    let broker = r.daemon.stderr_text();
    assert!(broker.contains("udp channel ") && broker.contains(" opened for "), "the first socket used a channel: {broker}");
    assert!(broker.contains("closed: closed by the client"), "closing the first closed its channel: {broker}");
    assert_eq!(server.stderr_text().matches("gcb: registered udp").count(), 1, "one registration for the port: {}", detail());
    drop(server);
    r.down();
}

fn hand_over(how: &str) {
    let r = RealBed::up(Mode::Gcb);
    let script = r.file("hand_over.py");
    std::fs::write(&script, HAND_OVER).expect("script");
    let server = r.spawn("a1", true, &[python().to_str().unwrap(), script.to_str().unwrap(), how]);
    let proxy = r.registered(&server, "udp", "192.0.2.10:7802");
    let child = server.wait_line("CHILD ", STARTUP).unwrap_or_else(|e| panic!("{e}: {}", server.stderr_text()));
    assert_eq!(child, proxy, "the {how} child reports the proxy address: {}", server.stderr_text());
    // Relayed both: a plain client on pub, and a GCB client in realm B.
    let got = client(&r, "pub", false, &proxy, &["one"], &server);
    assert_eq!(got, replies(how, &["one"], &proxy), "{}", server.stderr_text());
    let got = client(&r, "b1", true, &proxy, &["two"], &server);
    assert_eq!(got, replies(how, &["two"], &proxy), "{}", server.stderr_text());
    assert_eq!(server.stderr_text().matches("gcb: registered udp").count(), 1, "not registered again: {}", server.stderr_text());
    drop(server);
    r.down();
}

#[test]
fn a_registered_socket_across_exec() {
    hand_over("exec");
}

#[test]
fn a_registered_socket_in_a_forked_child() {
    hand_over("fork");
}

#[test]
fn a_socket_connected_through_a_channel_across_exec() {
    let r = RealBed::up(Mode::Gcb);
    let script = r.file("connected_exec.py");
    std::fs::write(&script, CONNECTED_EXEC).expect("script");
    let server = r.spawn("a1", true, &[python().to_str().unwrap(), script.to_str().unwrap()]);
    let proxy = server.wait_line("LISTEN udp ", STARTUP).unwrap_or_else(|e| panic!("{e}: {}", server.stderr_text()));
    let detail = || format!("server:\n{}\nbroker:\n{}", server.stderr_text(), r.daemon.stderr_text());
    let got = client(&r, "pub", false, &proxy, &["hello", "one", "two"], &server);
    let mut want = replies("first", &["hello"], &proxy);
    want.extend(replies("exec", &["one", "two"], &proxy));
    assert_eq!(got, want, "{}", detail());
    let peer = server.wait_line("CONNECTED ", STARTUP).unwrap();
    assert!(peer.starts_with("203.0.113.20:"), "connected to the client on pub: {peer}");
    let exec = server.wait_line("EXEC ", STARTUP).unwrap();
    assert_eq!(exec, format!("{proxy} {peer}"), "the exec'd image's getsockname and getpeername: {}", detail());
    for _ in 0..2 {
        let from = server.wait_line("FROM ", STARTUP).unwrap();
        assert_eq!(from, peer, "recvfrom in the exec'd image names the peer, not the channel: {}", detail());
    }
    assert_eq!(r.daemon.stderr_text().matches(" opened for ").count(), 1, "one channel, kept across exec: {}", detail());
    drop(server);
    r.down();
}
